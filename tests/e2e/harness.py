"""Running `matomo-rt` for real in end-to-end tests.

A :class:`Rig` is a scratch installation in one directory: a Matomo directory holding a copy of
the `console` double, the import_logs.py double (tests/doubles/import_logs.py) recording what
"Matomo" holds, a state directory, and a config file. It starts `matomo-rt` as a subprocess
(`python -m matomo_rt -c CONFIG ...`) with stderr going to a file the test can read, and cleans
up every process it started (and any importer they left) at the end.

Nothing here sleeps and hopes: :func:`wait_for` polls an observable condition (the record file,
the double's call log, the service's stderr, a state file, /proc) until a deadline, and says
what it waited for when the deadline passes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

ROOT = Path(__file__).resolve().parents[2]
DOUBLES = ROOT / "tests" / "doubles"
IMPORT_DOUBLE = DOUBLES / "import_logs.py"
CONSOLE_DOUBLE = DOUBLES / "console"
MATOMO_URL = "http://127.0.0.1:9"  # never contacted: the doubles simulate Matomo
TOKEN = "e2e0token0000000000000000000000"

#: Variables of the test runner's environment that would change what the child does.
_SCRUB = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "MATOMO_RT_CONFIG",
    "MATOMO_TOKEN_AUTH",
    "IMPORT_DOUBLE_RECORD",
    "IMPORT_DOUBLE_CALLS",
    "IMPORT_DOUBLE_CONTROL",
    "ARCHIVE_DOUBLE_CALLS",
    "ARCHIVE_DOUBLE_CONTROL",
)

POLL = 0.02


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    details: Optional[Callable[[], str]] = None,
) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(POLL)


def pid_gone(pid: int) -> bool:
    """Whether `pid` no longer runs: no /proc entry, or a zombie (dead, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    fields = stat[stat.rfind(b")") + 2 :].split()
    return not fields or fields[0] in (b"Z", b"X")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def access_line(
    path: str,
    *,
    host: str = "site.example",
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) e2e",
    status: str = "200",
    ip: str = "192.0.2.10",
    date: str = "2026-03-01T12:00:00+01:00",
) -> bytes:
    """One access-log line in the contrib log_format's shape (every value a JSON string)."""
    obj = {
        "ip": ip,
        "host": host,
        "path": path,
        "status": status,
        "referrer": "",
        "user_agent": user_agent,
        "length": "3",
        "generation_time_milli": "0.001",
        "date": date,
        "method": "GET",
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def append(path: Path, lines: Sequence[bytes]) -> None:
    """Append complete lines in one write, as a web server appends to its log."""
    with open(path, "ab") as fh:
        fh.write(b"".join(lines))


# ----------------------------------------------------------------------------------------
# Delivery checks
# ----------------------------------------------------------------------------------------


def _show(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    return text if len(text) <= 160 else text[:157] + "..."


def _differences(recorded: Sequence[bytes], written: Sequence[bytes]) -> str:
    counts = Counter(recorded)
    wanted = set(written)
    missing = [line for line in written if line not in counts]
    duplicated = [line for line, n in counts.items() if n > 1]
    unknown = [line for line in counts if line not in wanted]
    parts = [f"{len(recorded)} lines recorded, {len(written)} written"]
    for label, lines in (("missing", missing), ("duplicated", duplicated), ("unknown", unknown)):
        if lines:
            parts.append(f"{len(lines)} {label}, first: {_show(lines[0])}")
    return "; ".join(parts)


def assert_exactly_once(recorded: Sequence[bytes], written: Sequence[bytes]) -> None:
    """Matomo holds every written line once, in the order written."""
    if list(recorded) == list(written):
        return
    detail = _differences(recorded, written)
    if Counter(recorded) == Counter(written):
        detail += "; same lines, different order"
    raise AssertionError(f"not exactly once, in order: {detail}")


def assert_delivered(
    recorded: Sequence[bytes], written: Sequence[bytes], max_duplicates: int
) -> None:
    """At least once, first deliveries in order, at most `max_duplicates` lines twice."""
    assert len(set(written)) == len(written), "test bug: written lines must be unique"
    counts = Counter(recorded)
    missing = [line for line in written if line not in counts]
    unknown = [line for line in counts if line not in set(written)]
    assert not missing and not unknown, _differences(recorded, written)
    duplicates = len(recorded) - len(counts)
    assert duplicates <= max_duplicates, (
        f"{duplicates} duplicate lines, more than one batch ({max_duplicates}): "
        + _differences(recorded, written)
    )
    first: list[bytes] = []
    seen: set[bytes] = set()
    for line in recorded:
        if line not in seen:
            seen.add(line)
            first.append(line)
    assert first == list(written), "first deliveries are not in the order written"


# ----------------------------------------------------------------------------------------
# matomo-rt as a process
# ----------------------------------------------------------------------------------------

Needle = Union[str, "re.Pattern[str]"]


class Service:
    """One `matomo-rt` process; stderr goes to a file the test reads while it runs."""

    def __init__(self, popen: subprocess.Popen, stderr_path: Path, argv: list[str]) -> None:
        self.popen = popen
        self.stderr_path = stderr_path
        self.argv = argv

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        state = "running" if self.popen.poll() is None else f"exit {self.popen.returncode}"
        return f"matomo-rt pid {self.pid} ({state}) stderr:\n{self.log()}"

    def _count(self, needle: Needle) -> int:
        text = self.log()
        if isinstance(needle, str):
            return text.count(needle)
        return len(needle.findall(text))

    def wait_log(self, needle: Needle, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `needle` appears `count` times in stderr; fails early if we exited."""

        def seen() -> bool:
            if self._count(needle) >= count:
                return True
            if self.popen.poll() is not None and self._count(needle) < count:
                raise AssertionError(f"exited before logging {needle!r}\n{self.describe()}")
            return False

        wait_for(seen, timeout, f"{needle!r} x{count} in the log", self.describe)
        return self.log()

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit within {timeout:g}s\n{self.describe()}") from None

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


class Rig:
    """A scratch matomo-rt installation with doubles for import_logs.py and the console."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.matomo = base / "matomo"
        self.matomo.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CONSOLE_DOUBLE, self.matomo / "console")
        self.state = base / "state"
        self.logs = base / "logs"
        self.logs.mkdir(exist_ok=True)
        self.record = base / "import-record.jsonl"
        self.calls_path = base / "import-calls.jsonl"
        self.control = base / "import-control.json"
        self.archive_calls_path = base / "archive-calls.jsonl"
        self.archive_control = base / "archive-control.json"
        self.config_path = base / "config.toml"
        self.services: list[Service] = []

    # -- configuration ----------------------------------------------------------------

    def config_text(
        self,
        logs: Iterable[tuple[str, Path]],
        *,
        interval: str = "1s",
        start_at: str = "beginning",
        batch_lines: int = 100,
        import_timeout: str = "60s",
        stop_timeout: str = "5s",
        archive_enabled: bool = True,
        archive_schedule: str = "5 * * * *",
        archive_timeout: str = "30s",
        extra_import: str = "",
        extra: str = "",
        token_file: Optional[Path] = None,
    ) -> str:
        q = json.dumps  # a JSON string is a TOML basic string
        token_line = f"token_auth_file = {q(str(token_file))}" if token_file else ""
        text = f"""\
[matomo]
url = {q(MATOMO_URL)}
path = {q(str(self.matomo))}
import_logs = {q(str(IMPORT_DOUBLE))}
python = {q(sys.executable)}
php = {q(sys.executable)}
{token_line}

[import]
interval = {q(interval)}
start_at = {q(start_at)}
batch_lines = {batch_lines}
timeout = {q(import_timeout)}
{extra_import}
[archive]
enabled = {"true" if archive_enabled else "false"}
schedule = {q(archive_schedule)}
timeout = {q(archive_timeout)}

[state]
dir = {q(str(self.state))}

[service]
stop_timeout = {q(stop_timeout)}
"""
        for name, path in logs:
            text += f"\n[[logs]]\nname = {q(name)}\npath = {q(str(path))}\n"
        return text + extra

    def write_config(self, logs: Iterable[tuple[str, Path]], **options: Any) -> Path:
        """Write the config atomically (a reload must never read a half-written file)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.config_text(logs, **options), encoding="utf-8")
        os.replace(tmp, self.config_path)
        return self.config_path

    def set_control(self, data: Optional[dict[str, Any]]) -> None:
        """What the import double's simulated Matomo does from its next run on."""
        _write_json(self.control, data)

    def set_archive_control(self, data: Optional[dict[str, Any]]) -> None:
        _write_json(self.archive_control, data)

    # -- processes --------------------------------------------------------------------

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(
            MATOMO_TOKEN_AUTH=TOKEN,
            IMPORT_DOUBLE_RECORD=str(self.record),
            IMPORT_DOUBLE_CALLS=str(self.calls_path),
            IMPORT_DOUBLE_CONTROL=str(self.control),
            ARCHIVE_DOUBLE_CALLS=str(self.archive_calls_path),
            ARCHIVE_DOUBLE_CONTROL=str(self.archive_control),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "matomo_rt", "-c", str(self.config_path), *args]

    def start(
        self, *args: str, env: Optional[dict[str, str]] = None, prefix: Sequence[str] = ()
    ) -> Service:
        """Start `matomo-rt ARGS` (default: run) in the background, behind `prefix` (a
        command such as setpriv that runs it)."""
        argv = [*prefix, *self.argv(*(args or ("run",)))]
        stderr_path = self.base / f"matomo-rt-{len(self.services)}.stderr"
        with open(stderr_path, "wb") as err:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.base,
                env=self.env(env),
            )
        service = Service(popen, stderr_path, argv)
        self.services.append(service)
        return service

    def start_service(self, env: Optional[dict[str, str]] = None) -> Service:
        """`matomo-rt run`, returned once it logged that it runs."""
        service = self.start("run", env=env)
        service.wait_log("matomo-rt: INFO: running:")
        return service

    def run(
        self, *args: str, timeout: float = 30.0, prefix: Sequence[str] = ()
    ) -> subprocess.CompletedProcess:
        """A one-shot command, to completion."""
        return subprocess.run(
            [*prefix, *self.argv(*args)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            cwd=self.base,
            env=self.env(),
            timeout=timeout,
        )

    # -- observations -----------------------------------------------------------------

    def recorded(self) -> list[bytes]:
        """Every line the import double recorded (Matomo holds), in order.

        Complete lines only: the double may be appending a batch while we read.
        """
        try:
            data = self.record.read_bytes()
        except FileNotFoundError:
            return []
        return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)

    def wait_recorded(self, count: int, timeout: float = 15.0) -> list[bytes]:
        wait_for(
            lambda: len(self.recorded()) >= count,
            timeout,
            f"{count} recorded lines",
            lambda: f"{len(self.recorded())} recorded\n" + self._describe_services(),
        )
        return self.recorded()

    def calls(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.calls_path)

    def importer_starts(self) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c.get("event") == "start"]

    def importer_ends(self) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c.get("event") == "end"]

    def archive_runs(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.archive_calls_path)

    def _describe_services(self) -> str:
        return "\n".join(s.describe() for s in self.services)

    # -- cleanup ----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Kill every process we started, then any importer double they left running."""
        for service in self.services:
            service.kill()
        ended = {c.get("pid") for c in self.importer_ends()}
        for call in self.importer_starts():
            pid = call.get("pid")
            if not isinstance(pid, int) or pid in ended or pid_gone(pid):
                continue
            if IMPORT_DOUBLE.name.encode() in _cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _write_json(path: Path, data: Optional[dict[str, Any]]) -> None:
    if data is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    # A line being appended right now may be incomplete: only whole lines count.
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
