"""One real-Matomo end-to-end scene: a real nginx writing the contrib log format, `matomo-rt` as a
real process reading its log, and the session's Matomo (contrib/demo/localmatomo.py) holding
what arrived, counted in its own tables per URL.

Each scene has its own site (a new host), so what one test sends never mixes with another's.
Every request has a unique path, so Matomo's rows per URL say directly what was lost (0 rows)
and what was duplicated (2 or more).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from contrib.demo.localmatomo import Matomo
from matomo_rt import status
from matomo_rt.config import load
from tests.e2e.harness import ROOT, Service, wait_for
from tests.e2e.nginx import Nginx, raw_get

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
#: Long enough for import_logs.py and Matomo's PHP server on a busy 2-core machine.
DEADLINE = 120.0


def access_line(host: str, path: str, **fields: Any) -> bytes:
    """A line in the contrib log format, for tests that write to the log themselves."""
    record = {
        "ip": "198.51.100.7",
        "host": host,
        "path": path,
        "status": "200",
        "referrer": "",
        "user_agent": BROWSER,
        "length": "3",
        "generation_time_milli": "0.001",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": "GET",
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode() + b"\n"


class Scene:
    """nginx + matomo-rt + one Matomo site, under `base` (traversable by nginx's workers)."""

    def __init__(self, base: Path, matomo: Matomo) -> None:
        self.base = base
        self.matomo = matomo
        self.host = f"t{secrets.token_hex(5)}.example"
        self.idsite = matomo.add_site(self.host)
        self.nginx = Nginx(base, base / "logs")
        self.log = self.nginx.access_log
        self.state = base / "state"
        self.config_path = base / "config.toml"
        self.token_file = base / "token"
        self.set_token(matomo.token)
        self.sent: list[str] = []  # paths, each once
        self.services: list[Service] = []

    # -- configuration ----------------------------------------------------------------------

    def set_token(self, token: str) -> None:
        tmp = self.token_file.with_suffix(".tmp")
        tmp.write_text(token)
        tmp.chmod(0o600)
        os.replace(tmp, self.token_file)

    def write_config(
        self,
        *,
        batch_lines: int = 50,
        interval: str = "1s",
        timeout: str = "5m",
        archive: bool = False,
        url: Optional[str] = None,
        extra_import: str = "",
        logs: Optional[str] = None,
    ) -> Path:
        """The scene's configuration; `logs` replaces its one `[[logs]]` (nginx's access log)."""
        q = json.dumps
        if logs is None:
            logs = f'[[logs]]\nname = "access"\npath = {q(str(self.log))}\n'
        text = f"""\
[matomo]
url = {q(url or self.matomo.url)}
path = {q(str(self.matomo.root))}
python = {q(sys.executable)}
php = "php"
token_auth_file = {q(str(self.token_file))}

[import]
interval = {q(interval)}
start_at = "beginning"
batch_lines = {batch_lines}
timeout = {q(timeout)}
{extra_import}

[archive]
enabled = {"true" if archive else "false"}
timeout = "10m"

[state]
dir = {q(str(self.state))}

[service]
stop_timeout = "60s"

{logs}"""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)
        return self.config_path

    # -- processes ----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("MATOMO_RT_CONFIG", "MATOMO_TOKEN_AUTH", "NOTIFY_SOCKET")
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "matomo_rt", "-c", str(self.config_path), *args]

    def start(self, *args: str) -> Service:
        """`matomo-rt ARGS` (default: run) in the background, stderr to a file."""
        argv = self.argv(*(args or ("run",)))
        stderr_path = self.base / f"matomo-rt-{len(self.services)}.stderr"
        with open(stderr_path, "wb") as err:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env(),
            )
        service = Service(popen, stderr_path, argv)
        self.services.append(service)
        return service

    def start_service(self) -> Service:
        service = self.start("run")
        service.wait_log("matomo-rt: INFO: running:", timeout=60)
        return service

    def run(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=self.env(),
            timeout=timeout,
        )

    def cleanup(self) -> None:
        for service in self.services:
            service.kill()
        self.nginx.stop()

    # -- traffic ------------------------------------------------------------------------------

    def request(self, path: Optional[str] = None, status_code: int = 200) -> str:
        """One GET through nginx with this scene's Host; remembered as sent."""
        path = path or f"/rt/{len(self.sent)}"
        code = raw_get(
            self.nginx.port,
            path.encode(),
            {b"Host": self.host.encode(), b"User-Agent": BROWSER.encode()},
        )
        assert code == status_code, (path, code)
        self.sent.append(path)
        return path

    def requests(self, count: int) -> list[str]:
        return [self.request() for _ in range(count)]

    def append(self, lines: Iterable[bytes], paths: Iterable[str]) -> None:
        """Write lines to the log ourselves (as nginx would, in one append); `paths` are the
        requests they must bring into Matomo."""
        with open(self.log, "ab") as fh:
            fh.write(b"".join(lines))
        self.sent.extend(paths)

    # -- observations -------------------------------------------------------------------------

    def held(self) -> Counter[str]:
        """Matomo's rows for this site, per path (the URL without the host)."""
        prefix = self.host
        return Counter(
            {url[len(prefix) :]: n for url, n in self.matomo.actions_per_url(self.idsite).items()}
        )

    def status(self) -> dict[str, Any]:
        (entry,) = status.collect(load(self.config_path))["logs"]
        return entry

    def caught_up(self) -> bool:
        entry = self.status()
        return entry["lag_bytes"] == 0 and entry["offset"] is not None

    def wait_held(self, count: Optional[int] = None, timeout: float = DEADLINE) -> Counter[str]:
        """Until Matomo holds at least `count` actions (default: one per request sent)."""
        want = len(self.sent) if count is None else count
        wait_for(
            lambda: sum(self.held().values()) >= want,
            timeout,
            f"{want} actions in Matomo",
            self.describe,
        )
        return self.held()

    def describe(self) -> str:
        held = self.held()
        return (
            f"Matomo holds {sum(held.values())} actions, {len(self.sent)} sent; "
            f"status {json.dumps(self.status(), default=str)}\n"
            + "\n".join(s.describe() for s in self.services)
        )

    def assert_exactly_once(self) -> None:
        held = self.held()
        lost = [p for p in self.sent if held[p] == 0]
        twice = {p: n for p, n in held.items() if n > 1}
        unknown = [p for p in held if p not in set(self.sent)]
        assert not lost and not twice and not unknown, (
            f"lost {len(lost)} {lost[:5]}, duplicated {len(twice)} {list(twice.items())[:5]}, "
            f"unknown {unknown[:5]}\n{self.describe()}"
        )

    def assert_at_least_once(self, max_duplicates: int) -> int:
        held = self.held()
        lost = [p for p in self.sent if held[p] == 0]
        duplicates = sum(n - 1 for n in held.values() if n > 1)
        assert not lost, f"lost {len(lost)}: {lost[:5]}\n{self.describe()}"
        assert duplicates <= max_duplicates, f"{duplicates} duplicates\n{self.describe()}"
        return duplicates
