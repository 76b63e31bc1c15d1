"""Log formats: the registry, the `format`/`format_regex` keys, the importer's argv, the Guard
per family, and an import pass per format through the import_logs.py double."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from matomo_rt import formats, shapes
from matomo_rt.config import ConfigError, load
from matomo_rt.guard import check_line, checker, guard
from matomo_rt.matomo import importer
from tests.test_pipeline import Rig, make_rig, one_pass

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "doubles" / "import_logs.py"

BASE = """
[matomo]
url = "https://matomo.example.org"
path = "/srv/matomo"

[[logs]]
path = "/var/log/access.log"
"""


def load_text(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    return exc.value.problems


def combined(i: int, status: int = 200, host: str = "") -> bytes:
    """The i-th request as Apache/nginx write it in `combined` (vhost_combined with `host`)."""
    prefix = f"{host}:80 " if host else ""
    return (
        f'{prefix}198.51.100.{i % 250} - - [01/Jun/2024:12:00:{i % 60:02d} +0200] "GET /page/{i}'
        f' HTTP/1.1" {status} {100 + i} "-" "Mozilla/5.0"\n'
    ).encode()


def caddy(i: int, **changes: Any) -> bytes:
    """The i-th request as Caddy's JSON access log writes it; ``...`` drops a key."""
    entry: dict[str, Any] = {
        "level": "info",
        "ts": 1717243200.5 + i,
        "logger": "http.log.access",
        "msg": "handled request",
        "request": {
            "remote_ip": "127.0.0.1",
            "client_ip": f"198.51.100.{i % 250}",
            "proto": "HTTP/1.1",
            "method": "GET",
            "host": "www.example.org",
            "uri": f"/page/{i}",
            "headers": {"User-Agent": ["Mozilla/5.0"]},
        },
        "bytes_read": 0,
        "user_id": "",
        "duration": 0.0012,
        "size": 100 + i,
        "status": 200,
        "resp_headers": {},
    }
    for key, value in changes.items():
        if value is ...:
            del entry[key]
        else:
            entry[key] = value
    return json.dumps(entry).encode() + b"\n"


# -- registry ----------------------------------------------------------------------------------


def test_registry_lists_exactly_what_the_importer_offers() -> None:
    """The double's --help, and the real script's when MATOMO_RT_IMPORT_LOGS names one."""
    scripts = [DOUBLE]
    real = os.environ.get("MATOMO_RT_IMPORT_LOGS")
    if real and Path(real).is_file():
        scripts.append(Path(real))
    for script in scripts:
        text = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert formats.names_in_help(text) == set(formats.FORMATS), script


def test_aliases_resolve_to_the_importer_names() -> None:
    assert formats.resolve("combined").name == "ncsa_extended"
    assert formats.resolve("vhost_combined").name == "common_complete"
    assert formats.resolve("caddy_json").family == formats.JSON
    with pytest.raises(KeyError):
        formats.resolve("apache")


def test_custom_regex_needs_the_groups_the_importer_reads() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        formats.custom("(?P<ip>")
    with pytest.raises(ValueError, match=r"\(\?P<status>…\), \(\?P<date>…\)"):
        formats.custom(r"(?P<ip>\S+) (?P<path>\S+)")
    fmt = formats.custom(r"(?P<ip>\S+) (?P<date>\S+) (?P<path>\S+) (?P<status>\d+)")
    assert fmt.has_host is False and fmt.argv() == [f"--log-format-regex={fmt.regex}"]


def test_visitor_key_per_format() -> None:
    assert formats.visitor_key(formats.resolve("combined"), combined(7)) == b"198.51.100.7"
    vhost = formats.resolve("vhost_combined")
    assert formats.visitor_key(vhost, combined(7, host="a.example")) == b"198.51.100.7"
    assert formats.visitor_key(formats.resolve("caddy_json"), caddy(3)) == b"198.51.100.3"
    nginx = formats.resolve("nginx_json")
    assert formats.visitor_key(nginx, b'{"ip": "203.0.113.9"}') == b"203.0.113.9"
    elb = b"2024-06-01T12:00:00.1Z my-elb 203.0.113.4:5555 10.0.0.1:80 0.1 0.2 0.3 200 200 0 9"
    assert formats.visitor_key(formats.resolve("elb"), elb) == b"203.0.113.4"
    w3c = formats.resolve("iis")
    flags = ("--w3c-fields=#Fields: date time s-ip cs-method c-ip",)
    line = b"2024-06-01 12:00:00 10.0.0.1 GET 203.0.113.5"
    assert formats.visitor_key(w3c, line, flags) == b"203.0.113.5"
    assert formats.visitor_key(nginx, b"not json") == b"not json"  # stable, never a crash


# -- configuration -----------------------------------------------------------------------------


def test_format_defaults_to_nginx_json_and_aliases_are_stored_resolved(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)
    assert config.logs[0].format == "nginx_json"
    assert config.logs[0].log_format.argv() == ["--log-format-name=nginx_json"]
    config = load_text(tmp_path, BASE + 'format = "vhost_combined"\n')
    assert config.logs[0].format == "common_complete"


def test_unknown_format_names_the_key_and_the_choices(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, BASE + 'format = "apache"\n')
    assert problem.startswith("config.toml: logs[0].format: 'apache' is not a format")
    assert "combined" in problem and "caddy_json" in problem and "format_regex" in problem


def test_formats_without_a_host_need_idsite_at_load_time(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, BASE + 'format = "combined"\n')
    assert problem.startswith("config.toml: logs[0].format: ncsa_extended lines carry no host")
    assert "logs[0].idsite" in problem
    assert load_text(tmp_path, BASE + 'format = "combined"\nidsite = 3\n').logs[0].idsite == 3
    hostname = BASE + 'format = "common"\nflags = ["--log-hostname=www.example.org"]\n'
    assert load_text(tmp_path, hostname).logs[0].format == "common"


def test_format_regex_is_validated_with_its_key(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, BASE + "format_regex = '(?P<ip>\\S+'\n")
    assert problem.startswith("config.toml: logs[0].format_regex: not a valid regular expression")
    [problem] = problems(tmp_path, BASE + "format_regex = '(?P<ip>\\S+) (?P<path>\\S+)'\n")
    assert "logs[0].format_regex: needs the named groups" in problem
    regex = r"(?P<host>\S+) (?P<ip>\S+) \[(?P<date>[^]]+)\] (?P<path>\S+) (?P<status>\d+)"
    config = load_text(tmp_path, BASE + f"format_regex = '{regex}'\n")
    assert config.logs[0].log_format.argv() == [f"--log-format-regex={regex}"]
    both = BASE + 'format = "combined"\nidsite = 1\n' + f"format_regex = '{regex}'\n"
    assert any("not both" in p for p in problems(tmp_path, both))


def test_w3c_formats_need_their_fields_line(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, BASE + 'format = "iis"\n')
    assert problem.startswith("config.toml: logs[0].format: iis lines are laid out")
    assert "--w3c-fields" in problem
    with_host = BASE + 'format = "iis"\nflags = ["--w3c-fields=#Fields: date time cs-host c-ip"]\n'
    assert load_text(tmp_path, with_host).logs[0].format == "iis"
    without = BASE + 'format = "iis"\nflags = ["--w3c-fields=#Fields: date time c-ip"]\n'
    assert "carry no host" in problems(tmp_path, without)[0]


def test_format_flags_are_refused_in_flags(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, BASE + 'flags = ["--log-format-name=common"]\n')
    assert "logs[0].flags: --log-format-name: set the log's format" in problem


def test_argv_carries_the_format() -> None:
    argv = importer.build_argv(
        "python3", Path("/m/import_logs.py"), "https://m", (), format_args=["--log-format-name=s3"]
    )
    assert argv[4:6] == ["--url=https://m", "--log-format-name=s3"] and argv[-1] == "-"


# -- the Guard per family ------------------------------------------------------------------------


def test_guard_for_text_lines_holds_back_nul_bytes_only() -> None:
    check = checker(formats.resolve("combined"))
    assert check(combined(1)) == (combined(1), "")
    assert check(b"garbage the importer counts as invalid\n") == (
        b"garbage the importer counts as invalid\n",
        "",
    )
    assert check(b"\xff\xfe not utf-8\n")[0] is not None  # the importer replaces it
    assert check(b"\0\0\0\0\n") == (None, shapes.check_text(b"\0")[1])


def test_guard_for_bracketed_dates_holds_back_an_overflowing_zone() -> None:
    check = checker(formats.resolve("common"))
    line = b'1.2.3.4 - - [01/Jan/0001:00:30:00 +2359] "GET / HTTP/1.1" 200 1\n'
    assert check(line) == (None, "date is out of range once its time zone is applied")
    odd_zone = b'1.2.3.4 - - [01/Jan/2024:00:30:00 +02x0] "GET / HTTP/1.1" 200 1\n'
    assert check(odd_zone)[0] is odd_zone  # only invalid to the importer


def test_guard_for_caddy_quarantines_what_crashes_the_importer() -> None:
    check = checker(formats.resolve("caddy_json"))
    assert check(caddy(1)) == (caddy(1), "")
    assert check(caddy(1, request=...))[1] == "no request object: not a Caddy access log entry"
    assert check(caddy(1, ts=...))[1].startswith("ts is missing")
    assert check(caddy(1, ts=1e300))[1].startswith("ts is missing")
    assert check(caddy(1, duration="fast"))[1].startswith("duration")
    assert check(caddy(1, status=...))[1] == "status is missing or empty"
    assert check(b"[1]\n")[1] == "a JSON list, not an object"
    assert check(b'{"ts": 1, "msg": "runtime log"}\n')[1].startswith("no request object")


def test_guard_for_caddy_normalises_a_missing_user_agent_and_user_id() -> None:
    entry = json.loads(caddy(2, user_id=...))
    entry["request"]["headers"] = {"Referer": [7]}
    good, reason = checker(formats.resolve("caddy_json"))(json.dumps(entry).encode() + b"\n")
    assert reason == "" and good is not None
    fixed = json.loads(good)
    assert fixed["request"]["headers"] == {"User-Agent": [""]}
    assert fixed["user_id"] == ""


def test_guard_for_caddy_reads_the_client_of_caddy_2_6_from_remote_ip() -> None:
    """Debian 12's Caddy 2.6 writes remote_ip only; import_logs.py crashes without client_ip."""
    entry = json.loads(caddy(4))
    entry["request"]["remote_ip"] = entry["request"].pop("client_ip")
    good, reason = checker(formats.resolve("caddy_json"))(json.dumps(entry).encode() + b"\n")
    assert reason == "" and good is not None
    assert json.loads(good)["request"]["client_ip"] == "198.51.100.4"


def test_guard_for_traefik_needs_a_status() -> None:
    check = checker(formats.resolve("traefik_json"))
    good = b'{"ClientHost": "1.2.3.4", "DownstreamStatus": 200, "time": "2024-06-01T12:00:00Z"}\n'
    assert check(good) == (good, "")
    assert check(b'{"ClientHost": "1.2.3.4"}\n')[1] == "DownstreamStatus is missing or empty"
    late = b'{"DownstreamStatus": 200, "time": "9999-12-31T23:59:00-23:59"}\n'
    assert check(late)[1].startswith("time is out of range")


def test_nginx_json_keeps_its_own_check() -> None:
    assert checker(formats.resolve("nginx_json")) is check_line
    assert checker(None) is check_line
    assert guard([b"[1]\n"], checker(formats.resolve("nginx_json"))).quarantined


# -- an import pass per format, through the double ---------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return make_rig(tmp_path, monkeypatch)


def _with_format(rig: Rig, keys: str, **kwargs: Any) -> Any:
    rig.write_config(**kwargs)
    rig.config_path.write_text(rig.config_path.read_text() + keys)
    return load(rig.config_path)


@pytest.mark.parametrize(
    ("keys", "make"),
    [
        ('format = "combined"\nidsite = 1\n', lambda i: combined(i)),
        ('format = "vhost_combined"\n', lambda i: combined(i, host="www.example.org")),
        ('format = "caddy_json"\n', caddy),
    ],
    ids=["combined", "vhost_combined", "caddy_json"],
)
def test_each_format_is_imported_exactly_once(rig: Rig, keys: str, make: Any) -> None:
    config = _with_format(rig, keys, batch_lines=4)
    data = [make(i) for i in range(10)]
    rig.append(data)
    report = one_pass(config)
    assert report.error is None and report.caught_up
    assert rig.recorded() == data
    assert rig.stats()["imported"] == 10 and rig.stats()["invalid"] == 0
    argv = rig.starts()[0]["argv"]
    assert f"--log-format-name={config.logs[0].format}" in argv
    assert one_pass(config).batches == 0 and rig.recorded() == data


def test_lines_the_format_cannot_parse_are_counted_as_invalid(rig: Rig) -> None:
    """nginx JSON lines read as `combined`: every line invalid, counted, none quarantined."""
    config = _with_format(rig, 'format = "combined"\nidsite = 1\n')
    rig.append([b'{"ip": "1.2.3.4", "path": "/"}\n'] * 3 + [combined(1)])
    report = one_pass(config)
    assert report.error is None
    stats = rig.stats()
    assert (stats["invalid"], stats["imported"], stats.get("quarantined", 0)) == (3, 1, 0)
    assert stats["lines_read"] == 4


def test_a_custom_regex_reaches_the_importer(rig: Rig) -> None:
    regex = (
        r"(?P<host>\S+) (?P<ip>\S+) \[(?P<date>\S+) (?P<timezone>\S+)\] "
        r"(?P<path>\S+) (?P<status>\d+)"
    )
    config = _with_format(rig, f"format_regex = '{regex}'\n")
    data = [
        f"www.example.org 10.0.0.{i} [01/Jun/2024:12:00:00 +0000] /p/{i} 200\n".encode()
        for i in range(5)
    ]
    rig.append(data)
    assert one_pass(config).error is None
    assert rig.recorded() == data
    assert f"--log-format-regex={regex}" in rig.starts()[0]["argv"]


def test_check_compares_the_format_with_the_scripts_own_list(tmp_path: Path) -> None:
    """An older import_logs.py without caddy_json: `check` fails that log, names the choices."""
    import io

    from matomo_rt.check import Checklist
    from matomo_rt.check_programs import check_formats

    old = tmp_path / "import_logs.py"
    old.write_text(
        "import sys\nprint('--log-format-name  Access log format to detect (supported are:"
        " common, ncsa_extended, nginx_json). When not')\n"
    )
    text = BASE.replace(
        'path = "/srv/matomo"', f'import_logs = "{old}"\npython = "{sys.executable}"'
    )
    text += 'format = "caddy_json"\n\n[[logs]]\nname = "apache"\npath = "/var/log/a.log"\n'
    text += 'format = "combined"\nidsite = 2\n'
    out = io.StringIO()
    c = Checklist(out)
    check_formats(c, load_text(tmp_path, text), timeout=30)
    assert c.failures == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[FAIL] log access.log: format caddy_json is not one this")
    assert "(common, ncsa_extended, nginx_json)" in lines[0]
    assert lines[1] == "[ok] log apache: import_logs.py reads format ncsa_extended"


def test_workers_import_other_formats_once_with_their_guard(rig: Rig) -> None:
    """import.workers with a Caddy log: its Guard, its format on argv, every line once."""
    config = _with_format(rig, 'format = "caddy_json"\n', batch_lines=10, workers=2)
    assert config.import_.workers == 2
    data = [caddy(i) for i in range(20)]
    rig.append([*data[:5], caddy(99, request=...), *data[5:]])
    report = one_pass(config)
    assert report.error is None and report.caught_up
    assert sorted(rig.recorded()) == sorted(data)
    assert all("--log-format-name=caddy_json" in c["argv"] for c in rig.starts())
    assert rig.stats()["quarantined"] == 1
