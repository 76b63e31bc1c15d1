"""See matomo-rt work: a private Matomo, nginx writing the contrib log format, `matomo-rt run`.

Started by contrib/demo/run (which installs what is missing). Everything lives in one scratch
directory and listens on loopback only; Ctrl-C stops what this started and removes the
directory. The Matomo part is localmatomo.py, the same code the real-Matomo tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

import localmatomo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LOG_FORMAT = ROOT / "contrib" / "nginx" / "matomo-rt-log-format.conf"
RELEASE_URL = "https://builds.matomo.org/matomo.zip"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "matomo-rt-demo"
HOST = "demo.example"
PAGES = ["/", "/blog/", "/blog/first-post", "/blog/second-post", "/about", "/contact", "/shop"]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
]


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def release(given: Optional[str]) -> Path:
    """The Matomo to install: the one given, else the latest release zip (downloaded once)."""
    if given:
        return Path(given).expanduser()
    target = CACHE / "matomo.zip"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        say(f"downloading {RELEASE_URL} (once; cached in {CACHE})")
        tmp = target.with_suffix(".part")
        with urllib.request.urlopen(RELEASE_URL, timeout=300) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out)
        os.replace(tmp, target)
    return target


class Nginx:
    """nginx in the foreground in its own session, logging with the contrib log format."""

    def __init__(self, base: Path, port: int) -> None:
        self.base, self.port = base, port
        self.log = base / "logs" / "access.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        (self.base / "logs").mkdir(parents=True)
        (self.base / "temp").mkdir()
        temp = self.base / "temp"
        conf = self.base / "nginx.conf"
        conf.write_text(
            f"""daemon off;
pid {self.base / "nginx.pid"};
error_log {self.base / "error.log"};
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    include {LOG_FORMAT};
    access_log {self.log} matomo_json;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{ return 200 "hello from the matomo-rt demo\\n"; }}
        location /missing/ {{ return 404; }}
    }}
}}
"""
        )
        nginx = shutil.which("nginx", path=os.pathsep.join([os.environ["PATH"], "/usr/sbin"]))
        errors = self.base / "error.log"
        self.proc = subprocess.Popen(
            [nginx or "nginx", "-p", str(self.base), "-c", str(conf), "-e", str(errors)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise localmatomo.SetupError(f"nginx did not start; see {self.base / 'error.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def visit(port: int, path: str, agent: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": HOST, "User-Agent": agent}
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError:
        pass  # a 404 is traffic too


def traffic(port: int, count: int) -> None:
    for _ in range(count):
        page = random.choice(PAGES) if random.random() > 0.1 else f"/missing/{random.randint(1, 9)}"
        visit(port, page, random.choice(AGENTS))


def write_config(base: Path, matomo: localmatomo.Matomo, log: Path) -> Path:
    token = base / "token"
    token.write_text(matomo.token)
    token.chmod(0o600)
    q = json.dumps
    config = base / "config.toml"
    config.write_text(
        f"""# The demo's matomo-rt configuration (see config.example.toml for every key).
[matomo]
url = {q(matomo.url)}
path = {q(str(matomo.root))}
python = {q(sys.executable)}
token_auth_file = {q(str(token))}

[import]
interval = "5s"
start_at = "beginning"

[archive]
schedule = "* * * * *"

[state]
dir = {q(str(base / "state"))}

[[logs]]
name = "access"
path = {q(str(log))}
"""
    )
    return config


def matomo_rt() -> list[str]:
    script = Path(sys.executable).parent / "matomo-rt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "matomo_rt"]


def caught_up(config: Path, deadline: float = 120.0) -> None:
    """Until `matomo-rt status` shows the log read to its end (or the deadline passed): the
    first requests are in Matomo when the demo says where to look."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done = subprocess.run(
            [*matomo_rt(), "-c", str(config), "status", "--json"], capture_output=True, text=True
        )
        try:
            logs = json.loads(done.stdout)["logs"]
        except (ValueError, KeyError):
            logs = []
        if logs and all(e.get("lag_bytes") == 0 and e.get("last_success") for e in logs):
            return
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(prog="contrib/demo/run", description=__doc__)
    parser.add_argument(
        "matomo",
        nargs="?",
        default=os.environ.get("MATOMO_RT_MATOMO"),
        help="a Matomo release zip, .tar.xz or directory (default: download the latest)",
    )
    parser.add_argument("--port", type=int, default=0, help="nginx's port (default: a free one)")
    args = parser.parse_args()

    try:
        source = localmatomo.requirements(str(release(args.matomo)))
    except (localmatomo.Missing, OSError) as exc:
        say(f"cannot start: {exc}")
        return 1
    base = Path(tempfile.mkdtemp(prefix="matomo-rt-demo-"))
    base.chmod(0o755)  # nginx's and MariaDB's unprivileged processes reach files below
    matomo: Optional[localmatomo.Matomo] = None
    nginx = Nginx(base / "nginx", args.port or localmatomo.free_port())
    service: Optional[subprocess.Popen] = None
    # Ctrl-C, and SIGTERM like it (even where SIGINT came in ignored, as in a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        say(f"installing Matomo from {source} into {base} (a minute or so)")
        matomo = localmatomo.start(source, base / "matomo-install")
        idsite = matomo.add_site(HOST)
        say(f"Matomo runs at {matomo.url}; site {idsite} is {HOST}")
        nginx.start()
        say(f"nginx serves http://127.0.0.1:{nginx.port}/ and logs to {nginx.log}")
        config = write_config(base, matomo, nginx.log)
        service = subprocess.Popen(
            [*matomo_rt(), "-c", str(config), "run"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        traffic(nginx.port, 60)
        caught_up(config)
        status = " ".join([*matomo_rt(), "-c", str(config), "status"])
        print(
            f"""
Matomo:     {matomo.url}/  login {matomo.login}  password {matomo.password}
            (Visitors > Overview of site "{HOST}"; reports are archived every minute)
nginx:      http://127.0.0.1:{nginx.port}/  (requests with Host: {HOST} count for the site)
            curl -H 'Host: {HOST}' http://127.0.0.1:{nginx.port}/hello
its log:    {nginx.log}
matomo-rt:  {status}
            config {config}
Sending a few requests every 10 seconds. Ctrl-C stops everything and removes {base}.
""",
            flush=True,
        )
        while service.poll() is None:
            time.sleep(10)
            traffic(nginx.port, random.randint(1, 5))
        say(f"matomo-rt exited {service.returncode}")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except (localmatomo.SetupError, localmatomo.Missing, OSError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                service.kill()
        nginx.stop()
        if matomo is not None:
            matomo.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
