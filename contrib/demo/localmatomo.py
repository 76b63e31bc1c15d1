"""A private, throwaway Matomo on loopback: for the real-Matomo tests and the demo.

From a Matomo release (an official `matomo-5.x.zip`, a `.tar.xz`/`.tar.gz` whose top folder is
`matomo/`, or an unpacked Matomo directory, which is copied and never changed) it builds, under
one scratch directory:

* a private MariaDB (`mariadb-install-db` + `mariadbd` with their own defaults file, datadir,
  socket, port and pid file; as user `mysql` when run as root);
* PHP's built-in web server (`php -S`, PHP_CLI_SERVER_WORKERS workers) serving Matomo;
* a Matomo installed through its web installer over HTTP, kept off the internet, with the
  settings that make results measurable (no browser-triggered archiving, today's archive
  refreshed by every core:archive) and an auth token.

Every process is started in its own session and stopped by its process group. Standard library
only: `contrib/demo/run` uses it without pytest, `tests/realmatomo/` with it.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PHP_MODULES = ("pdo_mysql", "mbstring", "xml", "gd", "curl", "intl", "zip")
PREFIX = "matomo_"
LOGIN = "admin"
START_DEADLINE = 60.0

#: What `config:set` writes once the install is done: no browser-triggered archiving, today's
#: archive outdated after 1 s (so every core:archive refreshes it), nothing from the internet.
SETTINGS = {
    "General.enable_browser_archiving_triggering": "0",
    "General.browser_archiving_disabled_enforce": "1",
    "General.time_before_today_archive_considered_outdated": "1",
    "General.enable_internet_features": "0",
    "General.enable_update_communication": "0",
    "General.enable_auto_update": "0",
}


class Missing(Exception):
    """A piece this needs is absent (a package, the Matomo release): the reason says which."""


class SetupError(Exception):
    """Something started but did not work; the message carries what it printed."""


def requirements(source: Optional[str]) -> Path:
    """The Matomo release to use, once every piece is known to be present; else Missing."""
    if not source:
        raise Missing("set MATOMO_RT_MATOMO to a Matomo release (.zip, .tar.xz) or directory")
    path = Path(source).expanduser()
    if not path.exists():
        raise Missing(f"MATOMO_RT_MATOMO={source}: no such file or directory")
    for tool in ("php", "mariadbd", "mariadb-install-db", "mariadb"):
        if shutil.which(tool, path=_SBIN) is None:
            raise Missing(f"{tool} is not installed (apt install php8.2-cli mariadb-server)")
    have = subprocess.run(["php", "-m"], capture_output=True, text=True).stdout.lower().split()
    absent = [m for m in PHP_MODULES if m not in have]
    if absent:
        packages = " ".join(f"php8.2-{m.replace('pdo_', '')}" for m in absent)
        raise Missing(f"PHP lacks {', '.join(absent)} (apt install {packages})")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("mysql")
        except KeyError:
            raise Missing("there is no user `mysql` to run MariaDB as") from None
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready: Any, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise SetupError(f"{what} did not start (exit {proc.poll()}):\n{text}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_group(proc: Optional[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL it after `grace` seconds."""
    if proc is None:
        return
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            # php -S workers outlive their parent: the group must be empty, not just the leader.
            os.killpg(proc.pid, 0)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            pass
        else:
            continue
        if proc.poll() is not None:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break


def unpack(source: Path, dest: Path) -> Path:
    """Matomo's files under `dest`/matomo: from a zip, a tarball, or a copied directory."""
    target = dest / "matomo"
    if source.is_dir():
        inner = source / "matomo" if (source / "matomo" / "index.php").exists() else source
        if not (inner / "index.php").exists():
            raise Missing(f"{source} holds no Matomo (no index.php)")

        def ignore(directory: str, names: list[str]) -> set[str]:
            """Not the original's install: its config and its tmp/ (caches, sessions)."""
            if Path(directory) == inner:
                return {"tmp"} & set(names)
            if Path(directory) == inner / "config":
                return {"config.ini.php"} & set(names)
            return set()

        shutil.copytree(inner, target, symlinks=True, ignore=ignore)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            z.extractall(dest)
    elif tarfile.is_tarfile(source):
        subprocess.run(["tar", "-xf", str(source), "-C", str(dest)], check=True)
    else:
        raise Missing(f"{source} is not a zip, a tarball or a directory")
    if not (target / "index.php").exists():
        raise Missing(f"{source} has no matomo/index.php (not a Matomo release?)")
    (target / "tmp").mkdir(exist_ok=True)
    return target


@dataclass
class MariaDB:
    """mariadbd with its own files under `base`; clients connect over its socket as root."""

    base: Path
    port: int = 0
    proc: Optional[subprocess.Popen] = None

    @property
    def defaults(self) -> Path:
        return self.base / "my.cnf"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    def _write_defaults(self) -> None:
        me = pwd.getpwuid(os.geteuid()).pw_name
        user = "mysql" if os.geteuid() == 0 else me
        self.defaults.write_text(
            f"""[mysqld]
user = {user}
datadir = {self.base / "data"}
socket = {self.socket}
pid-file = {self.base / "mysqld.pid"}
log-error = {self.base / "mysqld.err"}
port = {self.port}
bind-address = 127.0.0.1
skip-name-resolve
max_allowed_packet = 64M
innodb_buffer_pool_size = 64M
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci

[client]
socket = {self.socket}
user = root
"""
        )
        self.defaults.chmod(0o644)

    def start(self) -> None:
        self.base.mkdir(parents=True)
        self.base.chmod(0o755)
        (self.base / "data").mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.base, "mysql")
            shutil.chown(self.base / "data", "mysql")
        me = pwd.getpwuid(os.geteuid()).pw_name
        for _attempt in range(3):
            self.port = free_port()
            self._write_defaults()
            if not (self.base / "data" / "mysql").exists():
                done = subprocess.run(
                    [
                        "mariadb-install-db",
                        f"--defaults-file={self.defaults}",
                        "--auth-root-authentication-method=socket",
                        f"--auth-root-socket-user={me}",
                        "--skip-test-db",
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PATH": _SBIN},
                )
                if done.returncode != 0:
                    raise SetupError(f"mariadb-install-db failed:\n{done.stdout}{done.stderr}")
            with open(self.base / "mysqld.out", "wb") as out:
                self.proc = subprocess.Popen(
                    [
                        shutil.which("mariadbd", path=_SBIN) or "mariadbd",
                        f"--defaults-file={self.defaults}",
                        # Throwaway data: stop without flushing, it never starts again. (Not
                        # in the defaults file: mariadb-install-db must flush what it made.)
                        "--innodb-fast-shutdown=2",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                _wait(
                    "mariadbd",
                    lambda: _listening(self.port) and self.socket.exists(),
                    self.proc,
                    self.base / "mysqld.err",
                )
                return
            except SetupError:
                err = (self.base / "mysqld.err").read_text(errors="replace")
                _stop_group(self.proc)
                self.proc = None
                if "Address already in use" not in err:
                    raise
        raise SetupError("mariadbd could not bind a free loopback port in 3 attempts")

    def sql(self, query: str, database: str = "") -> list[list[str]]:
        """Run SQL as root over the socket; rows of tab-separated columns."""
        argv = ["mariadb", f"--defaults-file={self.defaults}", "--batch", "--skip-column-names"]
        done = subprocess.run(
            [*argv, *([database] if database else []), "-e", query],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SetupError(f"SQL failed: {query[:200]}\n{done.stderr}")
        return [line.split("\t") for line in done.stdout.splitlines()]

    def stop(self) -> None:
        _stop_group(self.proc, grace=30.0)
        self.proc = None


@dataclass
class Matomo:
    """One installed Matomo: its directory, URL, database, superuser and token."""

    base: Path
    root: Path
    db: MariaDB
    port: int = 0
    url: str = ""
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    db_password: str = field(default_factory=lambda: secrets.token_hex(12))
    token: str = ""
    login: str = LOGIN
    php: Optional[subprocess.Popen] = None
    workers: int = 4

    # -- processes ---------------------------------------------------------------------

    def start_php(self, port: int = 0) -> None:
        """php -S on a free loopback port, or on `port` again (Matomo back at the same URL:
        retried while the old socket lingers)."""
        log = self.base / "php-server.log"
        deadline = time.monotonic() + START_DEADLINE
        while True:
            self.port = port or free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with open(log, "ab") as out:
                start = out.tell()
                self.php = subprocess.Popen(
                    ["php", "-S", f"127.0.0.1:{self.port}", "-t", str(self.root)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env={**os.environ, "PHP_CLI_SERVER_WORKERS": str(self.workers)},
                    start_new_session=True,
                )
            try:
                _wait("php -S", lambda: _listening(self.port), self.php, log)
                return
            except SetupError:
                _stop_group(self.php)
                self.php = None
                with open(log, "rb") as fh:
                    fh.seek(start)
                    said = fh.read().decode(errors="replace")
                if "Address already in use" not in said or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop_php(self) -> None:
        """Matomo goes away: its web server stops (the database keeps running)."""
        _stop_group(self.php)
        self.php = None

    def stop(self) -> None:
        """Stop what we started (php -S, then MariaDB), by process group."""
        self.stop_php()
        self.db.stop()

    # -- HTTP ---------------------------------------------------------------------------

    def _post(self, opener: Any, query: str, form: Optional[dict[str, str]]) -> str:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with opener.open(f"{self.url}/index.php?{query}", data=data, timeout=120) as r:
            return r.read().decode("utf-8", "replace")

    def api(self, method: str, **params: Any) -> Any:
        """A reporting API call, the token in the POST body (never in the URL); JSON answer."""
        form = {"module": "API", "method": method, "format": "json", "token_auth": self.token}
        form.update({k: str(v) for k, v in params.items()})
        text = self._post(urllib.request.build_opener(), "", form)
        try:
            answer = json.loads(text)
        except ValueError:
            raise SetupError(f"{method}: not JSON: {text[:300]}") from None
        if isinstance(answer, dict) and answer.get("result") == "error":
            raise SetupError(f"{method}: {answer.get('message')}")
        return answer

    # -- install --------------------------------------------------------------------------

    def install(self) -> None:
        """Matomo's web installer over HTTP, with a cookie jar, as a browser would drive it."""
        # Off the internet during the install too; deleted before config:set (see settings()).
        common = self.root / "config" / "common.config.ini.php"
        common.write_text("[General]\nenable_internet_features = 0\n")
        self.db.sql(
            "CREATE DATABASE matomo CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;"
            f"CREATE USER 'matomo'@'127.0.0.1' IDENTIFIED BY '{self.db_password}';"
            "GRANT ALL ON matomo.* TO 'matomo'@'127.0.0.1';"
        )
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

        def step(action: str, form: Optional[dict[str, str]] = None) -> str:
            return self._post(opener, f"module=Installation&action={action}", form)

        step("welcome")
        step("systemCheck")
        step(
            "databaseSetup",
            {
                "host": f"127.0.0.1:{self.db.port}",
                "username": "matomo",
                "password": self.db_password,
                "dbname": "matomo",
                "tables_prefix": PREFIX,
                "adapter": "PDO\\MYSQL",
                "type": "InnoDB",
            },
        )
        step("tablesCreation")
        step(
            "setupSuperUser",
            {
                "login": self.login,
                "password": self.password,
                "password_bis": self.password,
                "email": "admin@example.org",
            },
        )
        step(
            "firstWebsiteSetup",
            {
                "siteName": "first",
                "url": "http://first.example",
                "timezone": "UTC",
                "ecommerce": "0",
            },
        )
        step("finished", {"submit": "1"})
        config = self.root / "config" / "config.ini.php"
        if not config.exists() or "installation_in_progress" in config.read_text():
            log = (self.base / "php-server.log").read_text(errors="replace")[-2000:]
            raise SetupError(f"Matomo's installer did not finish:\n{log}")

    def make_token(self) -> None:
        form = {
            "module": "API",
            "method": "UsersManager.createAppSpecificTokenAuth",
            "format": "json",
            "userLogin": self.login,
            "passwordConfirmation": self.password,
            "description": "matomo-rt tests",
        }
        text = self._post(urllib.request.build_opener(), "", form)
        try:
            self.token = json.loads(text)["value"]
        except (ValueError, KeyError, TypeError):
            raise SetupError(f"no token from Matomo: {text[:300]}") from None

    def console(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["php", str(self.root / "console"), "--no-ansi", *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=timeout,
        )

    def settings(self) -> None:
        """The measurable settings (see SETTINGS), in the config file and in the UI's store."""
        # config:set skips a value equal to the merged defaults, which the install-time file
        # would make every one of these: it goes first.
        (self.root / "config" / "common.config.ini.php").unlink(missing_ok=True)
        done = self.console("config:set", *(f"{k}={v}" for k, v in SETTINGS.items()))
        if done.returncode != 0:
            raise SetupError(f"config:set failed:\n{done.stdout}{done.stderr}")
        self.api(
            "CoreAdminHome.setArchiveSettings",
            enableBrowserTriggerArchiving="0",
            todayArchiveTimeToLive="1",
        )

    # -- what Matomo holds ------------------------------------------------------------------

    def add_site(self, host: str) -> int:
        answer = self.api(
            "SitesManager.addSite", siteName=host, **{"urls[0]": f"http://{host}"}, timezone="UTC"
        )
        return int(answer["value"] if isinstance(answer, dict) else answer)

    def actions_per_url(self, idsite: int) -> Counter[str]:
        """Matomo's own rows: recorded actions of a site per URL (`host/path`, no scheme)."""
        rows = self.db.sql(
            f"SELECT a.name, COUNT(*) FROM {PREFIX}log_link_visit_action v"
            f" JOIN {PREFIX}log_action a ON a.idaction = v.idaction_url"
            f" WHERE v.idsite = {int(idsite)} GROUP BY a.name",
            "matomo",
        )
        return Counter({name: int(n) for name, n in rows})

    def unblock(self) -> None:
        """Forget failed logins (brute-force protection blocks an IP after 20 in an hour)."""
        self.db.sql(f"DELETE FROM {PREFIX}brute_force_log", "matomo")


def start(source: Path, base: Path) -> Matomo:
    """Unpack, start MariaDB and php -S, install, configure, make a token. Stops what it
    started if a step fails."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # mysql must reach its datadir below
    db = MariaDB(base / "mariadb")
    matomo = Matomo(base=base, root=unpack(source, base), db=db)
    try:
        db.start()
        matomo.start_php()
        matomo.install()
        matomo.make_token()
        matomo.settings()
    except BaseException:
        matomo.stop()
        raise
    return matomo
