"""Apache httpd and Caddy on loopback ports with private config and state, numbered traffic
and logrotate's steps, for the format tests against the import_logs.py double
(tests/e2e/test_servers_end_to_end.py) and against the real Matomo
(tests/realmatomo/test_servers.py).

Both servers are the Debian packages' binaries, run in the foreground as the test's children.
Apache's log formats are read from Debian's own /etc/apache2/apache2.conf (what a user's server
has); Caddy writes its JSON access log and rolls it itself (`roll_size`), as users run it.

Deadlines are for a loaded two-core machine: each wait ends as soon as its condition holds.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.nginx import free_port

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
APACHE = shutil.which("apache2", path=_SBIN_PATH)
CADDY = shutil.which("caddy", path=_SBIN_PATH)
APACHE_CONF = Path("/etc/apache2/apache2.conf")
APACHE_MODULES = Path("/usr/lib/apache2/modules")

needs_apache = pytest.mark.skipif(
    APACHE is None or not APACHE_CONF.is_file(),
    reason="Apache httpd is not installed (apt install apache2)",
)
needs_caddy = pytest.mark.skipif(CADDY is None, reason="Caddy is not installed (apt install caddy)")

#: A server's start or graceful restart on a loaded machine (a restart re-reads the config and
#: starts new children; connections wait in the listen backlog meanwhile).
START_DEADLINE = 60.0
#: One request: it may wait in the backlog for a restarting server's new children.
REQUEST_TIMEOUT = 30.0


def get(
    port: int,
    target: str,
    host: str,
    agent: Optional[str] = "Mozilla/5.0",
    extra_headers: Sequence[tuple[str, str]] = (),
) -> int:
    """One GET on its own connection; the status. Reads until the server closes."""
    head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
    if agent is not None:
        head += f"User-Agent: {agent}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
    head += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b"\r\n", 1)[0].split()[1])


def debian_log_formats() -> str:
    """The LogFormat lines of Debian's apache2.conf (combined, vhost_combined, ...)."""
    text = APACHE_CONF.read_text(encoding="utf-8")
    return "\n".join(re.findall(r"^LogFormat .*$", text, re.MULTILINE))


#: What Apache's parent writes to its error log (at `notice`, whatever the LogLevel) once it
#: has (re)read its configuration and (re)opened its logs: after start-up and after each
#: graceful restart.
APACHE_READY = "resuming normal operations"


class Apache:
    """apache2 -DFOREGROUND with one site and CustomLog lines given by the test.

    `server_name` is the virtual host's ServerName: what `%v` (vhost_combined) writes.
    """

    def __init__(
        self, base: Path, custom_logs: list[tuple[Path, str]], server_name: str = "test.example"
    ) -> None:
        self.base = base
        self.custom_logs = custom_logs
        self.server_name = server_name
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def _conf(self) -> Path:
        b = self.base
        (b / "htdocs").mkdir(exist_ok=True)
        (b / "htdocs" / "index.html").write_text("ok\n")
        (b / "run").mkdir(exist_ok=True)
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        logs = "\n".join(f"CustomLog {path} {fmt}" for path, fmt in self.custom_logs)
        mods = "".join(
            f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so\n"
            for name in ("mpm_event", "authz_core", "dir")
        )
        conf = b / "httpd.conf"
        conf.write_text(
            f"ServerRoot {b}\nListen 127.0.0.1:{self.port}\nPidFile {b}/run/httpd.pid\n"
            f"DefaultRuntimeDir {b}/run\nErrorLog {b}/error.log\n{mods}{user}"
            f"ServerName {self.server_name}\nDocumentRoot {b}/htdocs\nDirectoryIndex index.html\n"
            f"<Directory {b}/htdocs>\n  Require all granted\n</Directory>\n"
            f"{debian_log_formats()}\n{logs}\n"
        )
        return conf

    def start(self) -> None:
        assert APACHE is not None
        self.port = free_port()
        conf = self._conf()
        self.proc = subprocess.Popen(
            [APACHE, "-f", str(conf), "-DFOREGROUND"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready(1, "Apache started")
        wait_for(self._listening, START_DEADLINE, "Apache listening", self.error_log)

    def _wait_ready(self, count: int, what: str) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"Apache exited: {self.error_log()}")
            return self.error_log().count(APACHE_READY) >= count

        wait_for(ready, START_DEADLINE, what, self.error_log)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Apache exited: {self.error_log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def error_log(self) -> str:
        path = self.base / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def reopen_logs(self) -> None:
        """A graceful restart (SIGUSR1, `apache2ctl graceful`), returned once Apache has
        reopened its logs: it says so in its error log. (Its parent acts on the signal at its
        next once-a-second maintenance tick, later on a loaded machine.)"""
        assert self.proc is not None
        done = self.error_log().count(APACHE_READY)
        self.proc.send_signal(signal.SIGUSR1)
        self._wait_ready(done + 1, "Apache's graceful restart")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGWINCH)  # graceful stop: requests finish, logs flushed
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def running_apache(
    base: Path, custom_logs: list[tuple[Path, str]], server_name: str = "test.example"
) -> Iterator[Apache]:
    server = Apache(base, custom_logs, server_name)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Caddy:
    """`caddy run` with a Caddyfile: one site that answers 200, a JSON access log that Caddy
    rolls at `roll_size` (gzipped, named `<log>-<time>.gz`).

    The site is `http://SITE_HOST:PORT`, bound to loopback: Caddy matches the Host header
    without its port, and logs it as sent (`request.host`).
    """

    def __init__(
        self,
        base: Path,
        access_log: Path,
        roll_size: str = "1MiB",
        site_host: str = "127.0.0.1",
    ) -> None:
        self.base = base
        self.access_log = access_log
        self.roll_size = roll_size
        self.site_host = site_host
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        assert CADDY is not None
        self.port = free_port()
        conf = self.base / "Caddyfile"
        conf.write_text(
            "{\n\tadmin off\n\tauto_https off\n"
            f"\tstorage file_system {self.base / 'data'}\n}}\n"
            f"http://{self.site_host}:{self.port} {{\n\tbind 127.0.0.1\n"
            '\trespond "ok" 200\n\tlog {\n'
            f"\t\toutput file {self.access_log} {{\n\t\t\troll_size {self.roll_size}\n"
            "\t\t\troll_keep 100\n\t\t}\n\t\tformat json\n\t}\n}\n"
        )
        env = {
            **os.environ,
            "HOME": str(self.base),
            "XDG_DATA_HOME": str(self.base / "data"),
            "XDG_CONFIG_HOME": str(self.base / "config"),
        }
        self.stderr = self.base / "caddy.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [CADDY, "run", "--config", str(conf), "--adapter", "caddyfile"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=self.base,
            )
        wait_for(self._listening, START_DEADLINE, "Caddy listening", self.stderr.read_text)

    @property
    def host(self) -> str:
        """The Host header for the site."""
        return f"{self.site_host}:{self.port}"

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Caddy exited: {self.stderr.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_caddy(base: Path, access_log: Path, site_host: str = "127.0.0.1") -> Iterator[Caddy]:
    server = Caddy(base, access_log, site_host=site_host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- traffic and rotation -------------------------------------------------------------------

AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", 'Agent "quoted" \\slash', None, "Ünïcødé/1.0"]
_NUMBER = re.compile(r"(?:[?&]n=|/missing/)(\d+)")


def request_number(text: str) -> Optional[int]:
    """The number a Traffic request carries (`?n=N` or `/missing/N`), in a log line or a URL."""
    m = _NUMBER.search(text)
    return int(m.group(1)) if m else None


class Traffic:
    """Numbered requests, a 404 now and then, user agents of every kind (or none).

    `pad` adds a header of that many bytes to each request: servers that log request headers
    (Caddy) then reach a size-based roll with fewer requests.
    """

    def __init__(self, port: int, host: str, missing: int = 404, pad: int = 0) -> None:
        self.port, self.host, self.missing = port, host, missing
        self.headers = [("X-Pad", "p" * pad)] if pad else []
        self.sent: list[int] = []

    def send(self, count: int) -> None:
        for _ in range(count):
            n = len(self.sent)
            # (not `q=`: Matomo takes q, s, search, keyword… as a site search, without URL)
            target = f"/missing/{n}" if n % 7 == 3 else f"/?n={n}&v=%22x%22"
            code = get(self.port, target, self.host, AGENTS[n % len(AGENTS)], self.headers)
            assert code == (self.missing if n % 7 == 3 else 200), (target, code)
            self.sent.append(n)

    def until_logged_in(self, path: Path) -> None:
        """Send until a request lands in `path` (after a rotation: the server reopened)."""

        def landed() -> bool:
            if path.exists() and path.stat().st_size > 0:
                return True
            self.send(1)
            return False

        wait_for(landed, START_DEADLINE, f"a request logged in the new {path.name}")


def rotate(log: Path) -> None:
    """logrotate's steps with delaycompress: .1 -> .2.gz (compressed), live -> .1."""
    one = log.with_name(log.name + ".1")
    if one.exists():
        two = log.with_name(log.name + ".2.gz")
        with open(one, "rb") as src, gzip.open(two, "wb") as dst:
            shutil.copyfileobj(src, dst)
        one.unlink()
    log.rename(one)
