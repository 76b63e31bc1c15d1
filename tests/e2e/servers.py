"""Apache httpd and Caddy on loopback ports with private config and state, for the format tests.

Both are the Debian packages' binaries, run in the foreground as the test's children. Apache's
log formats are read from Debian's own /etc/apache2/apache2.conf (what a user's server has);
Caddy writes its JSON access log and rolls it itself (`roll_size`), as users run it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
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


def get(port: int, target: str, host: str, agent: Optional[str] = "Mozilla/5.0") -> int:
    """One GET on its own connection; the status. Reads until the server closes."""
    head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
    if agent is not None:
        head += f"User-Agent: {agent}\r\n"
    head += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b"\r\n", 1)[0].split()[1])


def debian_log_formats() -> str:
    """The LogFormat lines of Debian's apache2.conf (combined, vhost_combined, ...)."""
    text = APACHE_CONF.read_text(encoding="utf-8")
    return "\n".join(re.findall(r"^LogFormat .*$", text, re.MULTILINE))


class Apache:
    """apache2 -DFOREGROUND with one site and CustomLog lines given by the test."""

    def __init__(self, base: Path, custom_logs: list[tuple[Path, str]]) -> None:
        self.base = base
        self.custom_logs = custom_logs
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
            f"ServerName test.example\nDocumentRoot {b}/htdocs\nDirectoryIndex index.html\n"
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
        wait_for(self._listening, 10, "Apache listening", self.error_log)

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
        """A graceful restart (SIGUSR1, `apache2ctl graceful`): logs are opened anew."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

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
def running_apache(base: Path, custom_logs: list[tuple[Path, str]]) -> Iterator[Apache]:
    server = Apache(base, custom_logs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Caddy:
    """`caddy run` with a Caddyfile: one site that answers 200, a JSON access log that Caddy
    rolls at `roll_size` (gzipped, named `<log>-<time>.gz`)."""

    def __init__(self, base: Path, access_log: Path, roll_size: str = "1MiB") -> None:
        self.base = base
        self.access_log = access_log
        self.roll_size = roll_size
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        assert CADDY is not None
        self.port = free_port()
        conf = self.base / "Caddyfile"
        conf.write_text(
            "{\n\tadmin off\n\tauto_https off\n"
            f"\tstorage file_system {self.base / 'data'}\n}}\n"
            f'http://127.0.0.1:{self.port} {{\n\trespond "ok" 200\n\tlog {{\n'
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
        wait_for(self._listening, 15, "Caddy listening", lambda: self.stderr.read_text())

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

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
def running_caddy(base: Path, access_log: Path) -> Iterator[Caddy]:
    server = Caddy(base, access_log)
    server.start()
    try:
        yield server
    finally:
        server.stop()
