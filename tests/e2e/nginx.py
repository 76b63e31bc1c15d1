"""A real nginx on a loopback port with the contrib log_format, requests with exact bytes, and
logrotate configs derived from contrib/logrotate/matomo-rt, for the end-to-end tests.

nginx is the Debian package's binary (/usr/sbin/nginx), run in the foreground as the test's
child. Started as root, its workers run as `nobody` and reopen the log files themselves on
SIGUSR1, so its directories must be traversable by others: pytest's tmp_path is 0700, hence
:func:`traversable_dir`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
LOG_FORMAT_FILE = CONTRIB / "nginx" / "matomo-rt-log-format.conf"
LOGROTATE_FILE = CONTRIB / "logrotate" / "matomo-rt"

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
NGINX = shutil.which("nginx", path=_SBIN_PATH)
LOGROTATE = shutil.which("logrotate", path=_SBIN_PATH)

START_DEADLINE = 10.0
STOP_DEADLINE = 10.0

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt install nginx)")
needs_logrotate = pytest.mark.skipif(
    LOGROTATE is None, reason="logrotate is not installed (apt install logrotate)"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def traversable_dir(prefix: str = "matomo-rt-nginx-") -> Iterator[Path]:
    """A scratch directory (0711) nginx's unprivileged workers can reach files under."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o711)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def contrib_access_log_line(path: Path) -> str:
    """The (commented-out) access_log line of the contrib file, pointed at `path`."""
    text = LOG_FORMAT_FILE.read_text(encoding="utf-8")
    m = re.search(r"^#\s*(access_log\s+)(\S+)(\s+matomo_json;)\s*$", text, re.MULTILINE)
    assert m, "contrib log_format file lacks the `access_log ... matomo_json;` example line"
    return f"{m.group(1)}{path}{m.group(3)}"


class Nginx:
    """nginx in the foreground (`daemon off`): the process we start is the master."""

    def __init__(self, base: Path, log_dir: Path, extra_http: str = "") -> None:
        self.base = base
        self.log_dir = log_dir
        self.access_log = log_dir / "access.log"
        self.pid_file = base / "nginx.pid"
        self.error_log = base / "error.log"
        self.extra_http = extra_http
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def _write_conf(self) -> Path:
        temp = self.base / "temp"
        conf = f"""
daemon off;
master_process on;
worker_processes 1;
pid {self.pid_file};
error_log {self.error_log} info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

    include {LOG_FORMAT_FILE};
    {contrib_access_log_line(self.access_log)}
    {self.extra_http}

    server {{
        listen 127.0.0.1:{self.port};
        server_name test.example;
        location / {{ return 200 "ok\\n"; }}
        location /missing/ {{ return 404; }}
    }}
}}
"""
        path = self.base / "nginx.conf"
        path.write_text(conf, encoding="utf-8")
        return path

    def start(self) -> None:
        assert NGINX is not None
        (self.base / "temp").mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            conf = self._write_conf()
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.base), "-c", str(conf), "-e", str(self.error_log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready():
                return
            _, err = self.proc.communicate(timeout=STOP_DEADLINE)
            self.proc = None
            errors = err.decode(errors="replace") + self.error_log_text()
            if "Address already in use" not in errors:
                pytest.fail(f"nginx did not start:\n{errors}")
        pytest.fail("nginx could not bind a free loopback port in 3 attempts")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"nginx not listening after {START_DEADLINE}s:\n{self.error_log_text()}")

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Graceful stop (SIGQUIT): workers finish and write their log lines, then exit."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("nginx did not stop on SIGQUIT within the deadline")
        if proc.stderr is not None:
            proc.stderr.close()

    def master_pid(self) -> int:
        # The pid file may not be written yet when the port already accepts connections.
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The master's children (the workers), from /proc."""
        master = self.master_pid()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2 :].split()[1]) == master:
                pids.append(int(entry.name))
        return pids

    def writes_to_current_log(self) -> bool:
        """Whether every worker holds the file now at `access_log` open (it has reopened its
        logs since the last rotation): a request it serves from now on is logged there."""
        try:
            current = os.stat(self.access_log)
        except FileNotFoundError:
            return False
        workers = self.worker_pids()
        return bool(workers) and all(
            _holds_open(pid, (current.st_dev, current.st_ino)) for pid in workers
        )

    def wait_reopened(self) -> None:
        """Until every worker writes to the current access log.

        logrotate's postrotate `kill -USR1` returns at once; the master then reopens and tells
        its workers, which reopen when they next wake. Until then a worker logs into the old
        file, which logrotate may already have gzipped and deleted (`compress` alone).
        """
        deadline = time.monotonic() + STOP_DEADLINE
        while not self.writes_to_current_log():
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"nginx workers did not reopen {self.access_log} within {STOP_DEADLINE}s:\n"
                    + self.error_log_text()
                )
            time.sleep(0.02)


def _holds_open(pid: int, identity: tuple[int, int]) -> bool:
    """Whether process `pid` has a file with this (st_dev, st_ino) open."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == identity:
            return True
    return False


@contextlib.contextmanager
def running_nginx(base: Path, extra_http: str = "") -> Iterator[Nginx]:
    ngx = Nginx(base, base / "logs", extra_http)
    ngx.start()
    try:
        yield ngx
    finally:
        ngx.stop()


def raw_get(port: int, target: bytes, headers: dict[bytes, bytes]) -> int:
    """GET with exactly these bytes (urllib refuses non-ASCII targets); the status code.

    Reads until nginx closes the connection, which it does after writing the access log line
    (the log phase runs when the request is freed, before the connection is closed).
    """
    head = b"GET " + target + b" HTTP/1.1\r\n"
    for name, value in headers.items():
        head += name + b": " + value + b"\r\n"
    head += b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    status_line = b"".join(chunks).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


# --------------------------------------------------------------------------------------------
# logrotate
# --------------------------------------------------------------------------------------------

#: Rotation modes the end-to-end tests run, each a variation of the contrib config's block.
ROTATION_MODES = ("create", "dateext", "compress_delaycompress", "compress", "copytruncate")
DATEFORMAT = "-%Y%m%d%H%M%S"  # one generation per second, so tests can rotate often


def _user_and_group_exist(user: str, group: str) -> bool:
    try:
        pwd.getpwnam(user)
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


def contrib_logrotate_directives() -> list[str]:
    """The directives of the contrib file's (uncommented) block, comments dropped."""
    text = LOGROTATE_FILE.read_text(encoding="utf-8")
    m = re.search(r"^/var/log/nginx/\*\.log \{\n(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert m, "contrib logrotate file lacks its `/var/log/nginx/*.log { ... }` block"
    return [
        line.strip()
        for line in m.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def logrotate_conf(mode: str, log_dir: Path, nginx_master: int) -> str:
    """The contrib block pointed at `log_dir` and the test nginx, varied for `mode`.

    create                  rename + create + reopen, no compression
    dateext                 the contrib block with `dateext` (and DATEFORMAT) switched on
    compress_delaycompress  the contrib block as shipped
    compress                compress without delaycompress: generations are gzipped at once
    copytruncate            the contrib file's alternative: copy, then truncate in place
    """
    assert mode in ROTATION_MODES, mode
    directives = contrib_logrotate_directives()
    for expected in ("compress", "delaycompress", "sharedscripts", "postrotate", "endscript"):
        assert expected in directives, f"contrib logrotate block lost `{expected}`"
    reopen = "invoke-rc.d nginx rotate >/dev/null 2>&1"
    assert reopen in directives, "contrib logrotate block no longer reopens nginx this way"
    # Reopen this nginx, not the system's: the same signal Debian's init script sends.
    directives[directives.index(reopen)] = f"kill -USR1 {nginx_master}"
    create = next(d for d in directives if d.startswith("create "))
    if os.geteuid() != 0 or not _user_and_group_exist("www-data", "adm"):
        me = pwd.getpwuid(os.geteuid()).pw_name
        mine = grp.getgrgid(os.getegid()).gr_name
        directives[directives.index(create)] = f"create 0640 {me} {mine}"

    if mode == "create":
        directives = [d for d in directives if d not in ("compress", "delaycompress")]
    elif mode == "dateext":
        directives += ["dateext", f"dateformat {DATEFORMAT}"]
    elif mode == "compress":
        directives.remove("delaycompress")
    elif mode == "copytruncate":
        start, end = directives.index("sharedscripts"), directives.index("endscript")
        directives = [d for d in directives[:start] + directives[end + 1 :]]
        directives = [d for d in directives if not d.startswith("create ")] + ["copytruncate"]
    body = "".join(f"\t{d}\n" for d in directives)
    return f"{log_dir}/*.log {{\n{body}}}\n"


class Logrotate:
    """`logrotate -f -s STATE CONF` for one mode, against one nginx."""

    def __init__(self, mode: str, ngx: Nginx, work: Path) -> None:
        assert LOGROTATE is not None
        self.mode = mode
        self.ngx = ngx
        self.conf = work / f"logrotate-{mode}.conf"
        self.state = work / "logrotate.state"
        self.conf.write_text(logrotate_conf(mode, ngx.log_dir, ngx.master_pid()), "utf-8")
        self.conf.chmod(0o644)  # logrotate ignores group/world-writable configs
        self.last_done = 0.0

    def argv(self) -> list[str]:
        assert LOGROTATE is not None
        return [LOGROTATE, "-f", "-s", str(self.state), str(self.conf)]

    def _distinct_second(self) -> None:
        """dateext names generations by the second: the next rotation must start in a later
        second than the last one ended in. (A margin: logrotate's time() may read the coarse
        clock, a few milliseconds behind time.time().)"""
        if self.mode == "dateext":
            wait_until = int(self.last_done) + 1.05
            while time.time() < wait_until:
                time.sleep(0.01)

    def start(self) -> subprocess.Popen:
        self._distinct_second()
        return subprocess.Popen(
            self.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(self, proc: subprocess.Popen) -> None:
        """logrotate done, and nginx (signalled by postrotate) writing to the new file."""
        out, err = proc.communicate(timeout=30)
        self.last_done = time.time()
        assert proc.returncode == 0, f"logrotate failed ({proc.returncode}):\n{out}{err}"
        assert "error" not in err.lower(), err
        if self.mode != "copytruncate":  # the others signal nginx to reopen its logs
            self.ngx.wait_reopened()

    def rotate(self) -> None:
        self.finish(self.start())
