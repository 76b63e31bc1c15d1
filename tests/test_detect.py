"""Format detection: real lines of each server's format, named with import_logs.py's names.

The lines are written from each format's definition (Apache's LogFormat strings in Debian's
apache2.conf, Caddy's and Traefik's JSON access logs), and nginx's come from a real nginx. When
MATOMO_RT_IMPORT_LOGS points to the real import_logs.py, its own patterns must agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

from matomo_rt import detect
from matomo_rt.detect import (
    CADDY_JSON,
    COMBINED,
    COMMON,
    NGINX_JSON,
    TRAEFIK_JSON,
    VHOST_COMBINED,
    VHOST_COMMON,
    detect_file,
    detect_lines,
    formats_of,
    mismatch,
    sample_lines,
)
from tests.e2e.nginx import needs_nginx, raw_get, running_nginx, traversable_dir

# Apache, Debian's apache2.conf: LogFormat "%h %l %u %t \"%r\" %>s %O \"%{Referer}i\"
# \"%{User-Agent}i\"" combined; common stops after %O; vhost_combined starts with "%v:%p ".
APACHE_COMBINED = (
    '192.0.2.10 - - [27/Nov/2026:10:00:00 +0100] "GET /caf%C3%A9?q=1 HTTP/1.1" 200 5123 '
    '"https://ref.example/page" "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101"'
)
APACHE_COMBINED_USER_V6 = (
    '2001:db8::1 - alice [27/Nov/2026:10:00:01 -0700] "POST /login HTTP/2.0" 302 0 "-" "curl/8.5.0"'
)
APACHE_COMMON = '192.0.2.10 - - [27/Nov/2026:10:00:00 +0100] "GET /index.html HTTP/1.1" 200 5123'
APACHE_COMMON_NO_BODY = '198.51.100.7 - bob [27/Nov/2026:10:00:02 +0000] "HEAD / HTTP/1.0" 304 -'
APACHE_VHOST_COMBINED = (
    'www.example.org:443 192.0.2.10 - - [27/Nov/2026:10:00:00 +0100] "GET / HTTP/1.1" 200 '
    '5123 "-" "Mozilla/5.0"'
)
VHOST_COMMON_LINE = (
    'shop.example.org 192.0.2.10 - - [27/Nov/2026:10:00:00 +0100] "GET / HTTP/1.1" 404 -'
)
# The contrib log_format (contrib/nginx/matomo-rt-log-format.conf), escape=json.
NGINX_CONTRIB = json.dumps(
    {
        "ip": "192.0.2.1",
        "host": "example.com",
        "path": "/caf\u00e9?q=1",
        "status": "200",
        "referrer": "",
        "user_agent": "curl/8.5.0",
        "length": "2",
        "generation_time_milli": "0.000",
        "date": "2026-11-27T10:00:00+00:00",
        "method": "GET",
    },
    ensure_ascii=False,
)
# The same format without escape=json: nginx writes bytes above 0x7E as \xHH (not JSON).
NGINX_HEX_ESCAPED = (
    '{"ip":"192.0.2.1","host":"example.com","path":"/caf\\xC3\\xA9","status":"200",'
    '"referrer":"-","user_agent":"curl","length":"2","generation_time_milli":"0.000",'
    '"date":"2026-11-27T10:00:00+00:00"}'
)
# Caddy 2.6.2 (Debian 12), `log { format json }`, as written by a real caddy.
CADDY_262 = (
    '{"level":"info","ts":1796136220.833995,"logger":"http.log.access.log0","msg":"handled '
    'request","request":{"remote_ip":"127.0.0.1","remote_port":"40688","proto":"HTTP/1.1",'
    '"method":"GET","host":"127.0.0.1:18765","uri":"/caf%C3%A9?q=1","headers":{"User-Agent":'
    '["Mozilla/5.0 test"],"Accept":["*/*"],"Referer":["http://ref.example/"]}},"user_id":"",'
    '"duration":0.000025427,"size":2,"status":200,"resp_headers":{"Server":["Caddy"],'
    '"Content-Type":["text/plain; charset=utf-8"]}}'
)
# Caddy >= 2.7 adds request.client_ip (what import_logs.py's caddy_json reads).
CADDY_27 = CADDY_262.replace('"remote_port"', '"client_ip":"127.0.0.1","remote_port"')
# Traefik's JSON access log (accessLog.format=json) with the User-Agent header kept.
TRAEFIK = json.dumps(
    {
        "ClientAddr": "192.0.2.1:54321",
        "ClientHost": "192.0.2.1",
        "ClientPort": "54321",
        "ClientUsername": "-",
        "DownstreamContentSize": 5,
        "DownstreamStatus": 200,
        "Duration": 1234567,
        "RequestHost": "example.com",
        "RequestMethod": "GET",
        "RequestPath": "/",
        "RequestProtocol": "HTTP/1.1",
        "RouterName": "web@docker",
        "entryPointName": "web",
        "level": "info",
        "msg": "",
        "request_User-Agent": "curl/8.5.0",
        "time": "2026-11-27T10:00:00Z",
    }
)
OTHER_JSON = json.dumps({"t": "2026-11-27T10:00:00Z", "remote": "192.0.2.1", "uri": "/"})
W3C_LINE = (
    "2026-11-27 10:00:00 192.0.2.1 GET /index.html - 80 - 198.51.100.1 Mozilla/5.0 200 0 0 15"
)

SAMPLES = {
    APACHE_COMBINED: COMBINED,
    APACHE_COMBINED_USER_V6: COMBINED,
    APACHE_COMMON: COMMON,
    APACHE_COMMON_NO_BODY: COMMON,
    APACHE_VHOST_COMBINED: VHOST_COMBINED,
    VHOST_COMMON_LINE: VHOST_COMMON,
    NGINX_CONTRIB: NGINX_JSON,
    NGINX_HEX_ESCAPED: NGINX_JSON,
    CADDY_262: CADDY_JSON,
    CADDY_27: CADDY_JSON,
    TRAEFIK: TRAEFIK_JSON,
}


def lines(*texts: str, times: int = 1) -> list[bytes]:
    return [t.encode() for t in texts] * times


@pytest.mark.parametrize("line,expected", SAMPLES.items(), ids=lambda v: str(v)[:30])
def test_each_format_is_named_as_import_logs_names_it(line: str, expected: str) -> None:
    found = detect_lines(lines(line, times=3))
    assert found.format == expected
    assert found.share == 1.0 and found.lines == 3
    assert found.description == detect.DESCRIPTIONS[expected]


def test_a_combined_line_also_parses_as_common_but_is_combined() -> None:
    assert formats_of(APACHE_COMBINED.encode()) == (COMBINED, COMMON)
    assert formats_of(APACHE_VHOST_COMBINED.encode()) == (VHOST_COMBINED, VHOST_COMMON)
    found = detect_lines(lines(APACHE_COMBINED, times=4))
    assert found.share_of(COMMON) == 1.0 and found.share_of(NGINX_JSON) == 0.0


@pytest.mark.parametrize(
    "line,description",
    [
        (OTHER_JSON, "JSON of a shape import_logs.py does not read"),
        (W3C_LINE, "no format import_logs.py can be told to read"),
        ("hello world", "no format import_logs.py can be told to read"),
        ('{"ip": "192.0.2.1", "path": "/"', "no format import_logs.py can be told to read"),
    ],
)
def test_unknown_shapes_have_no_format_but_a_description(line: str, description: str) -> None:
    found = detect_lines(lines(line, times=2))
    assert found.format is None
    assert found.description.startswith(description)
    assert found.example == (line if len(line) <= 80 else line[:79] + "…")


def test_an_empty_log_says_so() -> None:
    found = detect_lines([])
    assert found.format is None and found.lines == 0
    assert "empty" in found.description
    assert mismatch(NGINX_JSON, found) is None


def test_the_majority_wins_and_the_share_is_what_the_format_parses() -> None:
    found = detect_lines(lines(APACHE_COMBINED, times=150) + lines(NGINX_CONTRIB, times=50))
    assert found.format == COMBINED
    assert found.share == 0.75
    assert found.share_of(NGINX_JSON) == 0.25
    assert found.summary() == f"{detect.DESCRIPTIONS[COMBINED]}, 150 of 200 recent lines"


def test_no_format_of_a_majority_is_unknown() -> None:
    found = detect_lines(lines(APACHE_COMBINED, NGINX_CONTRIB, "junk", "junk"))
    assert found.format is None


# -- mismatch: what check and the health verdict say ------------------------------------------


def test_a_combined_log_read_as_nginx_json_is_wrong_with_both_fixes() -> None:
    found = detect_lines(lines(APACHE_COMBINED, times=200))
    assert mismatch(NGINX_JSON, found) == (
        f"is {detect.DESCRIPTIONS[COMBINED]} (200 of the last 200 lines), not nginx_json — "
        'set format = "combined" for this log with its site (idsite = N): its lines name no '
        "host, or log in nginx JSON with the log_format of contrib/nginx/matomo-rt-log-format.conf"
    )


def test_a_caddy_log_gets_the_format_only() -> None:
    found = detect_lines(lines(CADDY_27, times=3))
    assert mismatch(NGINX_JSON, found) == (
        "is Caddy's JSON access log (3 of the last 3 lines), not nginx_json — "
        'set format = "caddy_json" for this log'
    )
    found = detect_lines(lines(APACHE_VHOST_COMBINED, times=3))
    text = mismatch(COMBINED, found)
    assert text is not None and text.endswith('— set format = "vhost_combined" for this log')


def test_a_log_in_its_format_is_fine_and_unknown_formats_are_not_judged() -> None:
    found = detect_lines(lines(NGINX_CONTRIB, times=200))
    assert mismatch(NGINX_JSON, found) is None
    assert mismatch("w3c_extended", found) is None


def test_a_few_foreign_lines_are_a_mixed_log() -> None:
    found = detect_lines(lines(NGINX_CONTRIB, times=170) + lines(APACHE_COMBINED, times=30))
    text = mismatch(NGINX_JSON, found)
    assert text is not None
    assert text.startswith(
        f"30 of the last 200 lines are not nginx_json (30 {detect.DESCRIPTIONS[COMBINED]}, "
        "e.g. '192.0.2.10 - - [27/Nov/2026"
    )
    assert text.endswith("— make the server write one format to this log")
    found = detect_lines(lines(NGINX_CONTRIB, times=190) + lines(APACHE_COMBINED, times=10))
    assert mismatch(NGINX_JSON, found) is None


def test_an_unknown_log_shows_an_example_line() -> None:
    found = detect_lines(lines(OTHER_JSON, times=5))
    text = mismatch(COMBINED, found)
    assert text is not None
    assert text.startswith("is not ncsa_extended: JSON of a shape")
    assert repr(OTHER_JSON) in text
    assert text.endswith("— make the server write ncsa_extended, or set format_regex to its layout")


# -- reading the tail of a file ----------------------------------------------------------------


def test_sample_lines_takes_complete_recent_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    body = "".join(f"{APACHE_COMMON} {n}\n" for n in range(500))
    log.write_text(body + '{"partial": ')  # the server is writing the last line
    got = sample_lines(log, max_bytes=10_000, max_lines=50)
    assert len(got) == 50
    assert got[-1].endswith(b" 499") and got[0].endswith(b" 450")
    got = sample_lines(log, max_bytes=1_000, max_lines=500)
    assert got and all(line.startswith(b"192.0.2.10 - - [") for line in got)  # no cut line
    assert detect_file(log).format == COMMON


def test_detect_file_raises_for_an_unreadable_log(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        detect_file(tmp_path / "missing.log")


# -- real nginx -------------------------------------------------------------------------------


@needs_nginx
def test_real_nginx_lines_contrib_json_and_default_combined() -> None:
    """nginx writes the contrib JSON format and its default `combined` for the same requests."""
    with traversable_dir() as base:
        combined_log = base / "logs" / "combined.log"
        with running_nginx(base, extra_http=f"access_log {combined_log};") as ngx:
            for n in range(3):
                assert raw_get(ngx.port, f"/p/{n}?q=caf%C3%A9".encode(), {b"Host": b"a.test"})
            assert raw_get(ngx.port, b"/missing/x", {b"Host": b"a.test", b"Referer": b"r"}) == 404
        json_found = detect_file(ngx.access_log)
        combined_found = detect_file(combined_log)
    assert (json_found.format, json_found.lines, json_found.share) == (NGINX_JSON, 4, 1.0)
    assert (combined_found.format, combined_found.lines, combined_found.share) == (COMBINED, 4, 1.0)


# -- the real import_logs.py agrees ------------------------------------------------------------

REAL = os.environ.get("MATOMO_RT_IMPORT_LOGS", "")


def _real_formats() -> Any:
    spec = importlib.util.spec_from_file_location("real_import_logs", REAL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FORMATS


@pytest.mark.skipif(
    not Path(REAL).is_file(), reason="set MATOMO_RT_IMPORT_LOGS to a real import_logs.py"
)
def test_line_formats_agree_with_the_real_patterns() -> None:
    """Every line format said to parse a sample parses it in import_logs.py, and vice versa."""
    real = _real_formats()
    line_formats = (VHOST_COMBINED, COMBINED, VHOST_COMMON, COMMON)
    for line in [*SAMPLES, OTHER_JSON, W3C_LINE]:
        ours = {f for f in formats_of(line.encode()) if f in line_formats}
        theirs = {f for f in line_formats if real[f].match(line)}
        assert ours == theirs, line
    # JSON: what import_logs.py's own detection calls caddy and traefik is named the same here.
    assert real[CADDY_JSON].check_format_line(CADDY_27)
    assert real[TRAEFIK_JSON].check_format_line(TRAEFIK)
    assert real[NGINX_JSON].check_format_line(NGINX_CONTRIB)
