"""Checks for contrib/: the nginx log_format (against a real nginx), the logrotate config (real
logrotate runs against that nginx), the systemd units (systemd-analyze verify) and the cron file.

Tests that need a tool which is not installed, or cannot run here, skip with the reason.
"""

from __future__ import annotations

import contextlib
import grp
import gzip
import json
import os
import pwd
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e import nginx as e2e_nginx
from tests.e2e.nginx import (
    LOGROTATE,
    NGINX,
    START_DEADLINE,
    Nginx,
    _user_and_group_exist,
    raw_get,
    traversable_dir,
)

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
LOG_FORMAT_FILE = CONTRIB / "nginx" / "matomo-rt-log-format.conf"
LOGROTATE_FILE = CONTRIB / "logrotate" / "matomo-rt"
SYSTEMD_DIR = CONTRIB / "systemd"
CRON_FILE = CONTRIB / "cron" / "matomo-rt"

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
SYSTEMD_ANALYZE = shutil.which("systemd-analyze", path=_SBIN_PATH)

# The keys import_logs.py's nginx_json format reads (plus "method", read with
# --track-http-method).
EXPECTED_KEYS = {
    "ip",
    "host",
    "path",
    "status",
    "referrer",
    "user_agent",
    "length",
    "generation_time_milli",
    "date",
    "method",
}


needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


# --------------------------------------------------------------------------------------------
# A real nginx on a loopback port, configured with the contrib log_format (tests/e2e/nginx.py).
# --------------------------------------------------------------------------------------------

#: Test only: nginx's default escaping beside the contrib format, to show what escape=json avoids.
DEFAULT_ESCAPE_HTTP = """
    log_format default_escape '{"path":"$request_uri","user_agent":"$http_user_agent"}';
    access_log {path} default_escape;
"""


@pytest.fixture
def nginx_base():
    """A directory nginx's workers can traverse (they run as `nobody` and reopen logs)."""
    with traversable_dir() as base:
        yield base


@contextlib.contextmanager
def running_nginx(base: Path):
    http = DEFAULT_ESCAPE_HTTP.replace("{path}", str(base / "default-escape.log"))
    with e2e_nginx.running_nginx(base, http) as ngx:
        ngx.default_escape_log = base / "default-escape.log"
        yield ngx


def urllib_get(port: int, target: str, headers: dict[str, str | bytes]) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{target}")
    for name, value in headers.items():
        # http.client sends bytes header values unchanged (str ones are encoded as latin-1).
        req.add_header(name, value)  # type: ignore[arg-type]
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        e.read()
        e.close()
        return e.code


# Each case: how to send it, and the values the log line must carry afterwards.
LONG_UA = "LongAgent/1.0 " + ('q"b\\ é ' * 700) + "end"  # ~6 KB, under nginx's 8 KB buffer
CASES = [
    {
        "name": "plain",
        "via": "urllib",
        "target": "/plain?a=1&b=%22q%22",
        "headers": {
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "Referer": 'https://ref.example/?x="y"',
        },
        "status": "200",
        "host": "127.0.0.1",
        "path": "/plain?a=1&b=%22q%22",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "referrer": 'https://ref.example/?x="y"',
    },
    {
        "name": "percent-encoded utf-8",
        "via": "urllib",
        "target": "/caf%C3%A9?q=%E6%97%A5",
        "headers": {"User-Agent": 'Agent "quoted" \\back\\slash ü日本'.encode()},
        "status": "200",
        "host": "127.0.0.1",
        "path": "/caf%C3%A9?q=%E6%97%A5",
        "user_agent": 'Agent "quoted" \\back\\slash ü日本',
        "referrer": "",
    },
    {
        "name": "very long user agent",
        "via": "urllib",
        "target": "/long-ua",
        "headers": {"User-Agent": LONG_UA.encode()},
        "status": "200",
        "host": "127.0.0.1",
        "path": "/long-ua",
        "user_agent": LONG_UA,
        "referrer": "",
    },
    {
        "name": "raw utf-8 path, quotes, backslashes, control characters",
        "via": "raw",
        "target": '/raw/café/日本?q="a\\b"&u=ü'.encode(),
        "headers": {
            b"Host": b"Test.Example",
            b"User-Agent": 'tab\there unit\x1fsep "q" \\ ü'.encode(),
            b"Referer": "https://ref.example/página".encode(),
        },
        "status": "200",
        "host": "test.example",
        "path": '/raw/café/日本?q="a\\b"&u=ü',
        "user_agent": 'tab\there unit\x1fsep "q" \\ ü',
        "referrer": "https://ref.example/página",
    },
    {
        "name": "404 without user agent or referrer",
        "via": "raw",
        "target": b"/missing/page",
        "headers": {b"Host": b"test.example"},
        "status": "404",
        "host": "test.example",
        "path": "/missing/page",
        "user_agent": "",
        "referrer": "",
    },
    {
        "name": "invalid utf-8 byte",
        "via": "raw",
        "target": b"/bad/\xff\xfe",
        "headers": {b"Host": b"test.example"},
        "status": "200",
        "host": "test.example",
        "path": b"/bad/\xff\xfe".decode("utf-8", "surrogateescape"),
        "user_agent": "",
        "referrer": "",
        "invalid_utf8": True,
    },
]


def send_case(port: int, case: dict) -> int:
    if case["via"] == "urllib":
        return urllib_get(port, case["target"], case["headers"])
    return raw_get(port, case["target"], case["headers"])


def import_logs_view(raw_line: bytes) -> dict:
    """What import_logs.py's nginx_json reader does to a line before json.loads."""
    text = raw_line.decode("utf-8", "surrogateescape")
    return json.loads(text.replace("\\x", "\\u00"))


ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


@needs_nginx
def test_nginx_log_format_writes_valid_json_lines(nginx_base):
    with running_nginx(nginx_base) as ngx:
        for case in CASES:
            assert send_case(ngx.port, case) == int(case["status"]), case["name"]
    raw_lines = ngx.access_log.read_bytes().splitlines()
    assert len(raw_lines) == len(CASES)

    by_path = {}
    for raw in raw_lines:
        if b"/bad/" not in raw:
            raw.decode("utf-8")  # strict: valid UTF-8 whenever the client sent valid UTF-8
        obj = json.loads(raw.decode("utf-8", "surrogateescape"))
        assert isinstance(obj, dict)
        assert set(obj) == EXPECTED_KEYS
        assert all(isinstance(v, str) for v in obj.values()), obj
        assert obj["ip"] == "127.0.0.1"
        assert obj["method"] == "GET"
        assert re.fullmatch(r"\d{3}", obj["status"])
        assert re.fullmatch(r"\d+", obj["length"])
        # $request_time: seconds with millisecond resolution; import_logs.py multiplies by 1000.
        assert re.fullmatch(r"\d+\.\d{3}", obj["generation_time_milli"])
        assert float(obj["generation_time_milli"]) < START_DEADLINE
        assert ISO_DATE.match(obj["date"]), obj["date"]
        datetime.fromisoformat(obj["date"])
        by_path[obj["path"]] = (raw, obj)

    for case in CASES:
        raw, obj = by_path[case["path"]]
        for key in ("status", "host", "user_agent", "referrer"):
            assert obj[key] == case[key], (case["name"], key)
        if case["status"] == "200":
            assert obj["length"] == "3"  # "ok\n"

        # The same line as import_logs.py's nginx_json reader sees it.
        seen = import_logs_view(raw)
        assert seen["path"] == case["path"], case["name"]
        assert seen["user_agent"] == case["user_agent"], case["name"]
        assert seen["status"][0] in "2345"
        assert int(float(seen["generation_time_milli"]) * 1000) >= 0
        datetime.strptime(seen["date"][:19], "%Y-%m-%dT%H:%M:%S")


@needs_nginx
def test_default_escaping_would_garble_utf8_but_escape_json_does_not(nginx_base):
    case = next(c for c in CASES if c["name"].startswith("raw utf-8"))
    with running_nginx(nginx_base) as ngx:
        assert send_case(ngx.port, case) == 200
    json_line = ngx.access_log.read_bytes().strip()
    default_line = ngx.default_escape_log.read_bytes().strip()

    assert b"\\x" not in json_line
    assert import_logs_view(json_line)["path"] == '/raw/café/日本?q="a\\b"&u=ü'

    # Default escaping writes é as \xC3\xA9; import_logs.py turns that into two code points.
    assert b"\\xC3\\xA9" in default_line
    garbled = import_logs_view(default_line)["path"]
    assert garbled.startswith("/raw/cafÃ©/")
    assert garbled != case["path"]


# --------------------------------------------------------------------------------------------
# logrotate: the contrib config, pointed at the test nginx, rotating for real.
# --------------------------------------------------------------------------------------------


def _logrotate_copy(ngx: Nginx, dest: Path) -> Path:
    text = LOGROTATE_FILE.read_text(encoding="utf-8")
    assert "/var/log/nginx/*.log {" in text
    assert "invoke-rc.d nginx rotate >/dev/null 2>&1" in text
    text = text.replace("/var/log/nginx/*.log {", f"{ngx.log_dir}/*.log {{", 1)
    # Reopen this nginx, not the system's one; same signal as Debian's init script sends.
    text = text.replace(
        "invoke-rc.d nginx rotate >/dev/null 2>&1", f"kill -USR1 {ngx.master_pid()}"
    )
    if os.geteuid() != 0 or not _user_and_group_exist("www-data", "adm"):
        me, mine = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
        text = text.replace("create 0640 www-data adm", f"create 0640 {me} {mine}")
    dest.write_text(text, encoding="utf-8")
    dest.chmod(0o644)
    return dest


def _markers(data: bytes) -> list[str]:
    return [json.loads(line)["path"] for line in data.splitlines()]


@needs_nginx
@pytest.mark.skipif(LOGROTATE is None, reason="logrotate is not installed")
def test_logrotate_config_rotates_and_nginx_reopens(nginx_base, tmp_path):
    state = tmp_path / "logrotate.state"
    with running_nginx(nginx_base) as ngx:
        conf = _logrotate_copy(ngx, tmp_path / "logrotate.conf")
        debug = subprocess.run(
            [LOGROTATE, "--debug", "--state", str(state), str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert debug.returncode == 0, debug.stderr
        assert "error" not in debug.stderr.lower(), debug.stderr

        sent = []

        def request(tag: str) -> None:
            target = f"/rotate/{tag}"
            assert urllib_get(ngx.port, target, {"User-Agent": "rotate-test"}) == 200
            sent.append(target)

        request("before-1")
        # nginx writes the log line after the response: with notifempty, rotating before it
        # lands would skip the rotation.
        deadline = time.monotonic() + START_DEADLINE
        while ngx.access_log.stat().st_size == 0:
            assert time.monotonic() < deadline, "nginx did not log the first request"
            time.sleep(0.01)
        for generation in (1, 2):
            done = subprocess.run(
                [LOGROTATE, "--force", "--state", str(state), str(conf)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            # nginx reopens asynchronously: request until a line lands in the new file.
            deadline = time.monotonic() + START_DEADLINE
            n = 0
            while not ngx.access_log.exists() or ngx.access_log.stat().st_size == 0:
                assert time.monotonic() < deadline, "nginx did not reopen its log after USR1"
                n += 1
                request(f"after-{generation}-{n}")

    logs = sorted(p.name for p in ngx.log_dir.iterdir())
    # delaycompress: the newest generation stays plain, the one before is compressed.
    assert logs == ["access.log", "access.log.1", "access.log.2.gz"], logs
    mode = (ngx.log_dir / "access.log").stat().st_mode & 0o777
    assert mode == 0o640

    seen = (
        _markers(gzip.decompress((ngx.log_dir / "access.log.2.gz").read_bytes()))
        + _markers((ngx.log_dir / "access.log.1").read_bytes())
        + _markers(ngx.access_log.read_bytes())
    )
    # Rename + reopen: every request in exactly one generation, in order.
    assert seen == sent


# --------------------------------------------------------------------------------------------
# systemd units
# --------------------------------------------------------------------------------------------

UNIT_NAMES = [
    "matomo-rt.service",
    "matomo-rt-import.service",
    "matomo-rt-import.timer",
    "matomo-rt-archive.service",
    "matomo-rt-archive.timer",
]


def _unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD_DIR / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_unit_settings():
    s = _unit_settings("matomo-rt.service")
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/usr/local/bin/matomo-rt -c /etc/matomo-rt/config.toml run"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["KillMode"] == ["mixed"]
    assert s["StateDirectory"] == ["matomo-rt"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["CapabilityBoundingSet"] == [""]
    for name, command in (
        ("matomo-rt-import.service", "import"),
        ("matomo-rt-archive.service", "archive"),
    ):
        one = _unit_settings(name)
        assert one["Type"] == ["oneshot"]
        assert one["ExecStart"] == [
            f"/usr/local/bin/matomo-rt -c /etc/matomo-rt/config.toml {command}"
        ]
    assert _unit_settings("matomo-rt-import.service")["SuccessExitStatus"] == ["75"]
    assert _unit_settings("matomo-rt-archive.timer")["OnCalendar"] == ["*-*-* *:05:00"]


def _systemd_analyze_verify(files: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *[str(f) for f in files]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    # Can systemd-analyze verify run here at all (containers, no /run/systemd...)?
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    probe = probe_dir / "matomo-rt-probe.service"
    probe.write_text("[Unit]\nDescription=probe\n[Service]\nType=oneshot\nExecStart=/bin/true\n")
    res = _systemd_analyze_verify([probe], probe_dir)
    if res.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {res.stderr.strip()[:500]}")

    units = tmp_path / "units"
    units.mkdir()
    for name in UNIT_NAMES:
        text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
        # verify checks that ExecStart= binaries exist; matomo-rt isn't installed here.
        text = text.replace("/usr/local/bin/matomo-rt ", "/bin/true ")
        (units / name).write_text(text, encoding="utf-8")
    res = _systemd_analyze_verify([units / n for n in UNIT_NAMES], units)
    assert res.returncode == 0, res.stderr
    # Unknown keys or bad values are only warnings (exit 0): treat any output as a failure.
    assert res.stderr.strip() == "", res.stderr
    assert res.stdout.strip() == "", res.stdout


# --------------------------------------------------------------------------------------------
# cron
# --------------------------------------------------------------------------------------------


def test_cron_file():
    # Debian's cron ignores files in /etc/cron.d whose names contain a dot.
    assert "." not in CRON_FILE.name
    text = CRON_FILE.read_text(encoding="utf-8")
    assert text.endswith("\n")  # cron ignores an unterminated last line
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, line
        jobs.append(fields)
    schedule = {" ".join(f[:5]): f for f in jobs}
    assert set(schedule) == {"* * * * *", "5 * * * *"}
    import_job, archive_job = schedule["* * * * *"], schedule["5 * * * *"]
    assert import_job[5] == archive_job[5] == "www-data"  # the user column
    assert " import" in import_job[6]
    assert " archive" in archive_job[6]
    assert "%" not in import_job[6] + archive_job[6]  # % means newline in crontabs
