"""`matomo-rt check` as a real process in the situations a new user ran into (issue 10).

Each test builds the exact situation — files owned and moded as on a Debian host, the service's
user and groups as contrib/systemd/matomo-rt.service sets them (User=www-data, Group=www-data,
SupplementaryGroups=adm), a web server without Matomo, a real nginx in its default format — runs
`matomo-rt check` and asserts its exit code and the failing line. As root the check runs as
www-data through `runuser`, the command README's quick start gives; without root the
permission rows use modes the current user cannot pass, or are skipped.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from site import getsitepackages
from typing import Optional

import pytest

from tests.e2e.nginx import free_port, needs_nginx, raw_get, running_nginx, traversable_dir
from tests.test_check import TOKEN, CheckMatomo, hit

ROOT = Path(__file__).resolve().parents[2]
SERVICE_USER, SERVICE_GROUP, LOG_GROUP = "www-data", "www-data", "adm"
DEADLINE = 60.0

pytestmark = pytest.mark.e2e  # real nginx, and matomo-rt as real processes


def _ids(user: str, group: str) -> Optional[tuple[int, int]]:
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


AS_ROOT = os.geteuid() == 0 and shutil.which("runuser") is not None
HAVE_SERVICE_USER = AS_ROOT and _ids(SERVICE_USER, SERVICE_GROUP) and _ids("root", LOG_GROUP)
needs_service_user = pytest.mark.skipif(
    not HAVE_SERVICE_USER,
    reason=f"needs root, runuser, user {SERVICE_USER} and group {LOG_GROUP} (Debian's)",
)


@functools.cache
def _interpreter() -> str:
    """A Python of this version that the service user can run (a pyenv one under /root is not)."""
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"]
    if not HAVE_SERVICE_USER:
        return sys.executable
    for python in candidates:
        probe = subprocess.run(
            ["runuser", "-u", SERVICE_USER, "--", python, "-c", "pass"],
            capture_output=True,
            timeout=DEADLINE,
        )
        if probe.returncode == 0:
            _compile_for_the_service_user(python)
            return python
    pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} {SERVICE_USER} can run")


def _search_path() -> str:
    """PYTHONPATH for another interpreter: this checkout, then this one's installed packages.

    Not this interpreter's standard library: the other one has its own, built for it.
    """
    return os.pathsep.join([str(ROOT), *getsitepackages()])


def _compile_for_the_service_user(python: str) -> None:
    """Import every matomo_rt module once, as root, into the suite's bytecode cache.

    Under the cache prefix tests/conftest.py sets, the service user can read bytecode but not
    write it: without this, each `check` it ran compiled the standard library anew (0.3 s of CPU).
    """
    if python == sys.executable or not os.environ.get("PYTHONPYCACHEPREFIX"):
        return  # the suite's own interpreter has compiled it all already, or nothing is cached
    every_module = (
        "import importlib,pkgutil,matomo_rt\n"
        "for m in pkgutil.walk_packages(matomo_rt.__path__,'matomo_rt.'):\n"
        "    m.name.endswith('__main__') or importlib.import_module(m.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": _search_path()}
    done = subprocess.run(
        [python, "-c", every_module], env=env, capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr


@dataclass
class Site:
    """A Debian-like host in one directory: Matomo, a log, the token, state, config."""

    base: Path
    config: Path
    matomo: Path
    log: Path
    token: Path
    state: Path
    bin: Path
    url: str

    def write_config(self, url: Optional[str] = None, matomo_path: Optional[Path] = None) -> None:
        self.config.write_text(
            textwrap.dedent(
                f"""\
                [matomo]
                url = "{url or self.url}"
                path = "{matomo_path or self.matomo}"
                python = "{_interpreter()}"
                php = "{self.bin / "php"}"
                token_auth_file = "{self.token}"

                [state]
                dir = "{self.state}"

                [[logs]]
                name = "access"
                path = "{self.log}"
                """
            )
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MATOMO", "NOTIFY"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["MATOMO_RT_CONFIG"] = str(self.config)
        return env

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=DEADLINE, cwd=self.base
        )

    def check_as_service(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`matomo-rt check` as the unit runs the service (as root), else as this user."""
        if HAVE_SERVICE_USER:
            prefix = ["runuser", "-u", SERVICE_USER, "-g", SERVICE_GROUP, "-G", LOG_GROUP, "--"]
        else:
            prefix = []
        return self.run([*prefix, "matomo-rt", *extra, "check"])


def _chown(path: Path, user: str, group: str) -> None:
    if HAVE_SERVICE_USER:
        shutil.chown(path, user, group)


@pytest.fixture
def site() -> Iterator[Site]:
    with (
        traversable_dir("matomo-rt-check-") as base,
        CheckMatomo(sites={"example.com": 1}, token=TOKEN) as fake,
    ):
        base.chmod(0o755)
        matomo = base / "matomo"
        (matomo / "misc" / "log-analytics").mkdir(parents=True)
        (matomo / "misc" / "log-analytics" / "import_logs.py").write_text("# importer\n")
        (matomo / "console").write_text("<?php\n")
        (matomo / "tmp").mkdir()
        _chown(matomo / "tmp", SERVICE_USER, SERVICE_GROUP)  # Matomo's files: the web user's
        bin_dir = base / "bin"
        bin_dir.mkdir()
        php = bin_dir / "php"
        php.write_text("#!/bin/sh\necho 'PHP 8.2.7 (cli) (built: Jun  1 2023)'\n")
        # `matomo-rt` on PATH, runnable by the service user too (the venv's may not be).
        launcher = bin_dir / "matomo-rt"
        launcher.write_text(
            f'#!/bin/sh\nPYTHONPATH="{_search_path()}" PYTHONDONTWRITEBYTECODE=1 '
            f'exec "{_interpreter()}" -m matomo_rt "$@"\n'
        )
        for script in (php, launcher):
            script.chmod(0o755)
        logs = base / "log"
        logs.mkdir()
        log = logs / "access.log"  # as /var/log/nginx/access.log: group adm, 0640
        log.write_text("".join(hit("example.com", n) + "\n" for n in range(5)))
        log.chmod(0o640)
        _chown(log, "root", LOG_GROUP)
        token = base / "token"  # as README's quick start makes it: root:www-data 0640
        token.write_text(TOKEN + "\n")
        token.chmod(0o640)
        _chown(token, "root", SERVICE_GROUP)
        state = base / "state"  # systemd's StateDirectory=: owned by the service user
        state.mkdir()
        _chown(state, SERVICE_USER, SERVICE_GROUP)
        config = base / "config.toml"
        s = Site(base, config, matomo, log, token, state, bin_dir, fake.url)
        s.write_config()
        yield s


def failures(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[FAIL]")]


def test_all_fine_as_the_service_runs(site: Site) -> None:
    """The baseline every other test changes one thing of."""
    done = site.check_as_service()
    assert done.returncode == 0, done.stdout + done.stderr
    assert failures(done.stdout) == []
    assert "[ok] log access: nginx JSON" in done.stdout


@needs_service_user
def test_the_readme_check_command_runs_as_the_service_does(site: Site) -> None:
    """README's quick start command, run literally: the token (group www-data) and the log
    (group adm) are both readable, as they are for the systemd unit."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"^\s+(runuser [^#\n]*matomo-rt check)\s", readme, re.MULTILINE)
    assert found, "README's quick start has no `runuser … matomo-rt check` line"
    command = found.group(1).split()
    assert command[:7] == ["runuser", "-u", SERVICE_USER, "-g", SERVICE_GROUP, "-G", LOG_GROUP]
    done = site.run(command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[ok] token file {site.token} (mode 0640)" in done.stdout
    assert f"[ok] log access: {site.log} is readable" in done.stdout
    assert "[ok] Matomo accepted the token" in done.stdout


@needs_service_user
def test_token_file_exists_but_is_unreadable(site: Site) -> None:
    """The old README command (`-g adm`: no group www-data) cannot read the token file; check
    says whose file it is and how to run as the service does, not "create it"."""
    done = site.run(["runuser", "-u", SERVICE_USER, "-g", LOG_GROUP, "--", "matomo-rt", "check"])
    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = failures(done.stdout)
    assert failure.startswith(
        f"[FAIL] config.toml: matomo.token_auth_file: {site.token}: exists but is not readable "
        f"by user {SERVICE_USER} (uid "
    )
    assert "groups adm)" in failure and "owner root:www-data, mode 0640" in failure
    assert "runuser -u www-data -g www-data -G adm -- matomo-rt check" in failure
    assert "create it" not in failure
    assert TOKEN not in done.stdout + done.stderr


def test_matomo_tmp_not_writable_by_the_service_user(site: Site) -> None:
    tmp = site.matomo / "tmp"
    if HAVE_SERVICE_USER:
        shutil.chown(tmp, "root", "root")  # e.g. Matomo unpacked as root
    else:
        tmp.chmod(0o555)
    try:
        done = site.check_as_service()
    finally:
        tmp.chmod(0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = failures(done.stdout)
    user = SERVICE_USER if HAVE_SERVICE_USER else pwd.getpwuid(os.geteuid()).pw_name
    assert failure.startswith(f"[FAIL] Matomo's tmp/: user {user} (uid ")
    assert f"cannot create files in {tmp} (permission denied; owner " in failure
    assert "core:archive would fail" in failure and "archive.enabled = false" in failure


def test_matomo_path_without_import_logs(site: Site) -> None:
    (site.matomo / "misc" / "log-analytics" / "import_logs.py").unlink()
    done = site.check_as_service()
    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = failures(done.stdout)
    script = site.matomo / "misc" / "log-analytics" / "import_logs.py"
    assert failure == (
        f"[FAIL] config.toml: matomo.path: {script}: no such file (import_logs.py): set "
        "matomo.import_logs to the script's path — Matomo releases ship it as "
        "misc/log-analytics/import_logs.py; else get it from "
        "https://github.com/matomo-org/matomo-log-analytics"
    )
    # `import` refuses to start with the same words (exit 78, invalid configuration).
    imported = site.run(["matomo-rt", "import"])
    assert imported.returncode == 78
    assert "matomo.import_logs" in imported.stderr and "matomo-log-analytics" in imported.stderr


def _serves_404(port: int) -> bool:
    try:
        return raw_get(port, b"/", {b"Host": b"x"}) == 404
    except OSError:
        return False


@pytest.fixture
def php_without_matomo(site: Site) -> Iterator[str]:
    """PHP's built-in server on an empty document root: a web server with no Matomo."""
    php = shutil.which("php")
    if php is None:
        pytest.skip("php is not installed (apt install php-cli)")
    docroot = site.base / "www"
    docroot.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [php, "-S", f"127.0.0.1:{port}", "-t", str(docroot)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not _serves_404(port):
            assert proc.poll() is None and time.monotonic() < deadline, "php -S did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=DEADLINE)


def test_matomo_url_with_a_wrong_sub_path(site: Site, php_without_matomo: str) -> None:
    url = f"{php_without_matomo}/matomo-wrong"
    site.write_config(url=url)
    done = site.check_as_service()
    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = failures(done.stdout)
    assert failure.startswith(
        f"[FAIL] no Matomo answers at {url}: {url}/index.php is HTTP 404 (404 Not Found: The "
        "requested resource /matomo-wrong/index.php?module=API&method=API.getMatomoVersion"
        "&format=json was not found on this server.) — set matomo.url to Matomo's base URL"
    )
    assert "<" not in done.stdout and "background-color" not in done.stdout


@needs_nginx
def test_a_log_in_nginx_default_combined_format(site: Site) -> None:
    """nginx left on its default `combined` format: check names the format and the fix."""
    with traversable_dir() as base:
        combined = base / "logs" / "combined.log"
        with running_nginx(base, extra_http=f"access_log {combined};") as ngx:
            for n in range(3):
                assert raw_get(ngx.port, f"/p/{n}".encode(), {b"Host": b"example.com"}) == 200
        site.log.write_bytes(combined.read_bytes())
    done = site.check_as_service()
    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = failures(done.stdout)
    assert failure == (
        f"[FAIL] log access: {site.log} is combined (nginx's default, Apache's `combined`) "
        '(3 of the last 3 lines), not nginx_json — set format = "combined" for this log with its '
        "site (idsite = N): its lines name no host, or log in nginx JSON with the log_format of "
        "contrib/nginx/matomo-rt-log-format.conf"
    )
