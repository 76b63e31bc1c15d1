"""Contract tests: our import_logs.py double must behave like Matomo's real import_logs.py.

Why: every other test of matomo-rt trusts tests/doubles/import_logs.py to print the same summary,
crash on the same lines, give the same ``--skip=N`` and exit the same way as the real script. Here
each scenario runs twice -- the real script against tests/doubles/fake_matomo.py, the double with
the equivalent IMPORT_DOUBLE_CONTROL -- and the observable results are compared: exit code, stdout
(timings normalised), the shape of stderr (timestamps dropped, tracebacks reduced to their final
exception line) and how many lines Matomo ended up holding.

The real script is found through MATOMO_RT_IMPORT_LOGS (a path to import_logs.py from
matomo-org/matomo-log-analytics or <matomo>/misc/log-analytics/). Without it the module is skipped.
All scenarios run concurrently (each real run takes over a second: the script polls its queue
once a second before printing its summary), so the whole file takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent / "doubles"))
from fake_matomo import FakeMatomo

REAL = os.environ.get("MATOMO_RT_IMPORT_LOGS", "")
DOUBLE = Path(__file__).parent / "doubles" / "import_logs.py"
TOKEN = "fake-token"

pytestmark = [
    pytest.mark.skipif(
        not (REAL and Path(REAL).is_file()),
        reason="set MATOMO_RT_IMPORT_LOGS to a real import_logs.py to run the contract tests",
    ),
    # The module fixture runs every scenario on both sides: once, on one xdist worker.
    pytest.mark.xdist_group("contract"),
]
#: Scenarios run side by side, but not all at once: 160 interpreters on 2 cores outlast DEADLINE.
PARALLEL_RUNS = 8


def line(host: str = "example.com", **fields: Any) -> str:
    """One nginx_json log line; a field given as ``...`` is left out."""
    record: dict[str, Any] = {
        "ip": "203.0.113.7",
        "host": host,
        "path": "/index.html",
        "status": "200",
        "referrer": "-",
        "user_agent": "Mozilla/5.0",
        "length": 512,
        "generation_time_milli": 0.042,
        "date": "2024-05-01T10:00:00+02:00",
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def data(*lines: str) -> bytes:
    return "".join(x + "\n" for x in lines).encode()


@dataclass
class Scenario:
    """One situation, described for both sides."""

    name: str
    stdin: bytes
    args: list[str] = field(default_factory=list)
    fake: dict[str, Any] = field(default_factory=dict)  # FakeMatomo(**fake)
    control: dict[str, Any] = field(default_factory=dict)  # IMPORT_DOUBLE_CONTROL
    real_token: Optional[str] = TOKEN
    double_token: Optional[str] = TOKEN
    env: dict[str, str] = field(default_factory=dict)
    unreachable: bool = False
    hangs: bool = False
    hang_marker: Optional[str] = None  # stderr text showing the hang has begun
    interrupt: bool = False  # once hung, send SIGINT and report how it ends
    format_name: bool = True


@dataclass
class Outcome:
    code: Any  # int, or "hang"
    stdout: str
    stderr: str
    held: int  # lines/hits Matomo holds afterwards


#: A hang is declared once its evidence is seen -- the text the dying thread prints, or (for a
#: busy loop) a second of CPU burnt -- and the process still has not exited a moment later.
HANG_GRACE = 0.5
DEADLINE = 60.0


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _argv(script: str, url: str, token: Optional[str], sc: Scenario) -> list[str]:
    argv = [sys.executable, script, f"--url={url}", "--retry-delay=0"]
    if token is not None:
        argv.append(f"--token-auth={token}")
    if sc.format_name:
        argv.append("--log-format-name=nginx_json")
    return [*argv, *sc.args, "-"]


def _cpu_seconds(pid: int) -> float:
    """CPU time used so far (Linux /proc): evidence of a busy loop, not of slowness."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_WITH_SIGINT_DEFAULT = (
    "import os,signal,sys;signal.signal(signal.SIGINT,signal.SIG_DFL);"
    "os.execv(sys.argv[1],sys.argv[1:])"
)


def _run(argv: list[str], sc: Scenario, env: dict[str, str]) -> tuple[Any, str, str]:
    """Run one side; for a scenario that hangs, return "hang" once the hang is evident."""
    if sc.interrupt:  # SIGINT at its default, as in a terminal: not ignored if the suite's was
        argv = [sys.executable, "-c", _WITH_SIGINT_DEFAULT, *argv]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **sc.env, **env},
        cwd=tempfile.gettempdir(),
    )
    if not sc.hangs:
        try:
            out, err = proc.communicate(sc.stdin, timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()  # a test that gives up must not leave the script running
            proc.communicate()
            raise
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    chunks: list[bytes] = []

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(sc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass

    def drain() -> None:
        assert proc.stderr is not None
        for piece in iter(lambda: proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            chunks.append(piece)

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    code: Any = "hang"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        seen = b"".join(chunks).decode("utf-8", "replace")
        evident = sc.hang_marker in seen if sc.hang_marker else _cpu_seconds(proc.pid) >= 0.5
        try:
            proc.wait(timeout=HANG_GRACE if evident else 0.05)
            code = proc.returncode
            break
        except subprocess.TimeoutExpired:
            if evident:
                break
    if code == "hang" and sc.interrupt:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    out = proc.stdout.read() if proc.stdout else b""
    proc.wait()
    for t in threads:
        t.join()
    return code, out.decode("utf-8", "replace"), b"".join(chunks).decode("utf-8", "replace")


def run_real(sc: Scenario) -> Outcome:
    with FakeMatomo(token=TOKEN, **sc.fake) as matomo:
        url = _closed_port_url() if sc.unreachable else matomo.url
        code, out, err = _run(_argv(REAL, url, sc.real_token, sc), sc, {})
        return Outcome(code, out, err, len(matomo.hits()))


def run_double(sc: Scenario, workdir: Path) -> Outcome:
    control = workdir / f"{sc.name}.control.json"
    record = workdir / f"{sc.name}.record"
    control.write_text(json.dumps({"valid_tokens": [TOKEN], **sc.control}))
    env = {"IMPORT_DOUBLE_CONTROL": str(control), "IMPORT_DOUBLE_RECORD": str(record)}
    url = "http://127.0.0.1:9"  # never contacted
    code, out, err = _run(_argv(str(DOUBLE), url, sc.double_token, sc), sc, env)
    held = len(record.read_bytes().splitlines()) if record.exists() else 0
    return Outcome(code, out, err, held)


# ------------------------------------------------------------------------------ normalisation


def norm_stdout(text: str) -> str:
    text = re.sub(r"Total time: \d+ seconds", "Total time: N seconds", text)
    text = re.sub(r"imported per second: \S+ requests", "imported per second: R requests", text)
    return re.sub(r"--url='[^']*'", "--url='URL'", text)


def stderr_shape(text: str) -> list[str]:
    """stderr without timestamps, each traceback reduced to its final exception line."""
    lines = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: ", "", x) for x in text.splitlines()]
    lines = [re.sub(r"file/\S+ could not", "file<PATH> could not", x) for x in lines]
    shape: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("Traceback (most recent call last):"):
            shape.append(lines[i])
            i += 1
            continue
        last = ""
        i += 1
        while i < len(lines):
            current = lines[i]
            chained = current.startswith(("During handling", "The above exception", "Traceback"))
            if current.startswith(" ") or current == "" or chained:
                i += 1
                continue
            last = current
            i += 1
            rest = [x for x in lines[i:] if x.strip()]
            if not (rest and rest[0].startswith(("During handling", "The above exception"))):
                break
        shape += ["<traceback>", last]
    return [x for x in shape if x.strip()]


# ------------------------------------------------------------------------------ scenarios

GOOD = line()
MIXED = data(
    GOOD,
    line(host="unknown.example.org"),
    "this is not json",
    line(status="404"),
    line(status="301"),
    line(status="304"),
    line(path="/style.css"),
    line(path="/files/report.pdf"),
    line(user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)"),
    line(date="yesterday"),
    line(date="2024-05-01T10:00:00Z"),
    line(host="Example.COM", path="/a?b=c"),
    line(user_agent="caf\\xC3\\xA9").replace("\\\\x", "\\x"),
    GOOD,
)
SITES = {"example.com": 1, "seven.example": 7}

CRASH_LINES = {
    "status_number": line(status=200),
    "status_null": line(status=None),
    "status_empty": line(status=""),
    "status_missing": line(status=...),
    "path_missing": line(path=...),
    "path_null": line(path=None),
    "ip_missing": line(ip=...),
    "user_agent_null": line(user_agent=None),
    "referrer_number": line(referrer=5),
    "length_null": line(length=None),
    "length_list": line(length=[1]),
    "gtm_missing": line(generation_time_milli=...),
    "gtm_null": line(generation_time_milli=None),
    "gtm_infinity": line().replace("0.042", "Infinity"),
    "date_missing": line(date=...),
    "date_null": line(date=None),
    "date_number": line(date=20240501),
    "host_null": line(host=None),
    "value_number": "42",
    "value_list": "[1, 2]",
    "value_string": '"GET /"',
    "value_null": "null",
}
TOLERATED_LINES = {
    "user_agent_missing": line(user_agent=...),
    "referrer_null": line(referrer=None),
    "length_missing": line(length=...),
    "length_dash": line(length="-"),
    "gtm_text": line(generation_time_milli="n/a"),
    "gtm_nan": line().replace("0.042", "NaN"),
    "host_empty": line(host=""),
    "ip_null": line(ip=None),
    "query_string_text": line(query_string="a=1"),
    "bad_hex_escape": line(user_agent="A").replace('"A"', '"\\xZZ"'),
    "control_char": line(user_agent="a-b").replace("a-b", "a\x0bb"),
    "blank": "   ",
}

BAD_UTF8 = GOOD.encode() + b"\n" + line(path="/caf-X").encode().replace(b"-X", b"\xe9") + b"\n"


def clf(host: str = "", tail: str = ' "-" "Mozilla/5.0"', **fields: str) -> str:
    """One Apache-style line (combined; vhost_combined with `host`; common with tail="")."""
    f = {"ip": "203.0.113.7", "date": "01/May/2024:10:00:00 +0200", "path": "/index.html"}
    f.update({"status": "200", "length": "512"})
    f.update(fields)
    prefix = f"{host} " if host else ""
    request = f'"GET {f["path"]} HTTP/1.1"'
    return f"{prefix}{f['ip']} - - [{f['date']}] {request} {f['status']} {f['length']}{tail}"


def caddy(**changes: Any) -> str:
    """One Caddy JSON access log entry; a key given as ``...`` is left out."""
    entry: dict[str, Any] = {
        "level": "info",
        "ts": 1714550400.25,
        "logger": "http.log.access",
        "msg": "handled request",
        "request": {
            "client_ip": "203.0.113.7",
            "method": "GET",
            "host": "example.com",
            "uri": "/index.html?a=1",
            "headers": {"User-Agent": ["Mozilla/5.0"], "Referer": ["http://r.example/"]},
        },
        "user_id": "",
        "duration": 0.0042,
        "size": 512,
        "status": 200,
        "resp_headers": {},
    }
    for key, value in changes.items():
        if value is ...:
            del entry[key]
        elif key == "headers":
            entry["request"]["headers"] = value
        else:
            entry[key] = value
    return json.dumps(entry)


APACHE = data(
    clf(),
    clf(status="404", path="/missing"),
    clf(status="301"),
    clf(path="/style.css"),
    clf(date="31/Foo/2024:10:00:00 +0200"),
    clf(date="01/May/2024:10:00:00 +02x0"),
    "not a log line",
    GOOD,
    clf(ip="2001:db8::1", path="/a?b=c"),
)
VHOST = data(
    clf("example.com:443"),
    clf("seven.example"),
    clf("unknown.example"),
    clf(""),
    clf("Example.COM", status="500"),
)
CADDY = data(
    caddy(),
    caddy(status=404),
    caddy(headers={"User-Agent": ["Mozilla/5.0"]}),
    caddy(user_id="alice"),
    "not json",
    caddy(headers={"User-Agent": ["Mozilla/5.0"], "Referer": []}),
    caddy(),
)


def named(name: str, stdin: bytes, fmt: str, *args: str, **kw: Any) -> Scenario:
    """A scenario in another format than nginx_json."""
    return Scenario(name, stdin, args=[f"--log-format-name={fmt}", *args], format_name=False, **kw)


FORMAT_SCENARIOS: list[Scenario] = [
    named("combined", APACHE, "ncsa_extended", "--idsite=1"),
    named("combined_enable_all", APACHE, "ncsa_extended", "--idsite=1", "--enable-http-errors"),
    named("combined_needs_idsite", APACHE, "ncsa_extended"),
    named("common", data(clf(tail=""), clf(), "junk"), "common", "--idsite=1"),
    named("common_log_hostname", data(clf(tail="")), "common", "--log-hostname=example.com"),
    named(
        "vhost_combined", VHOST, "common_complete", fake={"sites": SITES}, control={"sites": SITES}
    ),
    named("common_vhost", data(clf("example.com", tail="")), "common_vhost"),
    named("caddy", CADDY, "caddy_json", fake={"sites": SITES}, control={"sites": SITES}),
    named("caddy_foreign_json", data(caddy(), GOOD), "caddy_json"),
    named("caddy_no_user_agent", data(caddy(), caddy(headers={})), "caddy_json"),
    named("caddy_missing_ts", data(caddy(), caddy(ts=...), caddy()), "caddy_json"),
    named("caddy_runtime_line", data(caddy(), '{"level":"info","msg":"serving"}'), "caddy_json"),
    Scenario(
        "custom_regex",
        data("example.com 203.0.113.7 [01/May/2024:10:00:00 +0200] /a 200", "junk"),
        args=[
            r"--log-format-regex=(?P<host>\S+) (?P<ip>\S+) \[(?P<date>\S+) (?P<timezone>\S+)\]"
            r" (?P<path>\S+) (?P<status>\d+)"
        ],
        format_name=False,
    ),
    Scenario(
        "custom_regex_no_host",
        data("203.0.113.7 2024-05-01T10:00:00 /a 200"),
        args=[r"--log-format-regex=(?P<ip>\S+) (?P<date>\S+) (?P<path>\S+) (?P<status>\d+)"],
        format_name=False,
    ),
    Scenario(
        "custom_regex_date_format",
        data("203.0.113.7 2024-05-01T10:00:00 /a 200"),
        args=[
            r"--log-format-regex=(?P<ip>\S+) (?P<date>\S+) (?P<path>\S+) (?P<status>\d+)",
            "--log-date-format=%Y-%m-%dT%H:%M:%S",
            "--idsite=1",
        ],
        format_name=False,
    ),
]

SCENARIOS: list[Scenario] = [
    *FORMAT_SCENARIOS,
    Scenario("mixed", MIXED, fake={"sites": SITES}, control={"sites": SITES}),
    Scenario(
        "mixed_enable_all",
        MIXED,
        args=["--enable-http-errors", "--enable-http-redirects", "--enable-static"],
        fake={"sites": SITES},
        control={"sites": SITES},
    ),
    Scenario("idsite", MIXED, args=["--idsite=7"], fake={"sites": SITES}, control={"sites": SITES}),
    Scenario(
        "idsite_unknown",
        MIXED,
        args=["--idsite=99"],
        fake={"sites": SITES},
        control={"sites": SITES},
    ),
    Scenario(
        "idsite_fallback",
        MIXED,
        args=["--idsite-fallback=7"],
        fake={"sites": SITES},
        control={"sites": SITES},
    ),
    Scenario(
        "add_sites",
        data(GOOD, line(host="new.example"), line(host="new.example"), line(host="other.example")),
        args=["--add-sites-new-hosts"],
        fake={"sites": SITES},
        control={"sites": SITES},
    ),
    Scenario("dry_run", MIXED, args=["--dry-run"], fake={"sites": SITES}, control={"sites": SITES}),
    Scenario(
        "batches_and_skip",
        data(*[line(path=f"/p{i}") for i in range(9)]),
        args=["--recorder-max-payload-size=2", "--skip=3"],
    ),
    Scenario(
        "debug_request_limit",
        data(*[line(path=f"/p{i}") for i in range(9)]),
        args=["--debug-request-limit=4"],
    ),
    Scenario("empty_input", b""),
    Scenario(
        "fatal_after_first_post",
        data(GOOD, "junk", GOOD, line(status="404"), GOOD, GOOD, GOOD),
        args=["--recorder-max-payload-size=2"],
        fake={"fail_tracking_after_posts": 1},
        control={"fail": {"fatal_after_lines": 3}},
    ),
    Scenario(
        "fatal_retry_attempts",
        data(GOOD, GOOD),
        args=["--retry-max-attempts=1"],
        fake={"fail_tracking_after_posts": 0},
        control={"fail": {"fatal_after_lines": 0}},
    ),
    Scenario("wrong_token", data("junk", GOOD, GOOD), real_token="wrong", double_token="wrong"),
    Scenario(
        "wrong_token_idsite",
        data(GOOD),
        args=["--idsite=1"],
        real_token="wrong",
        double_token="wrong",
    ),
    Scenario("wrong_token_dry_run", data(GOOD), args=["--dry-run"], real_token="wrong"),
    Scenario("unreachable", data("junk", GOOD), unreachable=True, control={"fail": "unreachable"}),
    Scenario(
        "unreachable_idsite",
        data(GOOD),
        args=["--idsite=1"],
        unreachable=True,
        control={"fail": "unreachable"},
    ),
    Scenario(
        "refused_not_superuser",
        data(GOOD, line(host="nowhere.example"), GOOD),
        fake={"mode": "reject_all", "superuser": False, "sites": SITES},
        control={"fail": "refuse_all", "sites": SITES},
    ),
    Scenario(
        "refused_superuser",
        data(GOOD, line(host="nowhere.example"), GOOD),
        fake={"mode": "reject_all", "superuser": True, "sites": SITES},
        control={"fail": "refuse_all", "superuser": True, "sites": SITES},
    ),
    Scenario("no_token", data(GOOD), real_token=None, double_token=None),
    Scenario("usage_unknown_flag", data(GOOD), args=["--no-such-flag"]),
    Scenario("usage_bad_int", data(GOOD), args=["--recorders=many"]),
    Scenario("usage_bad_date", data(GOOD), args=["--exclude-older-than=2024-01-01"]),
    Scenario("invalid_format_name", data(GOOD), args=["--log-format-name=bogus"]),
    Scenario(
        "no_format_name_loses_lines",
        data(*[line(path=f"/p{i}") for i in range(20)]),
        format_name=False,
    ),
    Scenario(
        "no_format_name_few_lines_hang", data(GOOD, GOOD, GOOD), format_name=False, hangs=True
    ),
    Scenario(
        "non_json_answer_hang",
        data(GOOD, GOOD),
        fake={"mode": "non_json"},
        hangs=True,
        hang_marker="AttributeError: 'str' object has no attribute 'decode'",
        control={"fail": "hang"},
    ),
    Scenario(
        "non_json_answer_then_sigint",
        data(GOOD, GOOD),
        fake={"mode": "non_json"},
        hangs=True,
        hang_marker="AttributeError: 'str' object has no attribute 'decode'",
        interrupt=True,
        control={"fail": "hang"},
    ),
    Scenario(
        "host_missing_hang",
        data(GOOD, line(host=...)),
        hangs=True,
        hang_marker="AttributeError: 'Hit' object has no attribute 'host'",
    ),
    Scenario(
        "query_string_number_hang",
        data(line(query_string=5)),
        hangs=True,
        hang_marker="TypeError: can only concatenate str",
    ),
    Scenario("host_missing_with_idsite", data(GOOD, line(host=...)), args=["--idsite=1"]),
    Scenario(
        "filters",
        data(
            GOOD,
            line(host="other.net"),
            line(path="/private/x"),
            line(user_agent="Mozilla/4.0 legacy"),
            line(host="skip.com"),
            line(date="2024-05-01T10:30:00+02:00"),
            line(path="/a.zip"),
            line(path="/a.mp3"),
            line(path="/a.pdf"),
        ),
        args=[
            "--hostname=*.com",
            "--exclude-path=/private/*",
            "--useragent-exclude=MOZILLA/4",
            "--exclude-host=skip.com",
            "--exclude-newer-than=2024-05-01 08:15:00 +0000",
            "--download-extensions=pdf,zip",
        ],
    ),
    Scenario("log_hostname", data(GOOD, line(host=...)), args=["--log-hostname=example.com"]),
    Scenario("lowercase_path_null", data(GOOD, line(path=None)), args=["--force-lowercase-path"]),
    Scenario("ignore_missing_group", data(GOOD), args=["--ignore-groups=userid"]),
    Scenario(
        "single_hit_posts_fatal",
        data(GOOD, "junk", GOOD, GOOD),
        args=["--disable-bulk-tracking", "--recorder-max-payload-size=2"],
        fake={"fail_tracking_after_posts": 1},
        control={"fail": {"fatal_after_lines": 1}},
    ),
    Scenario(
        "two_recorders_fatal",
        data(*[line(path=f"/p{i}") for i in range(7)]),
        args=["--recorders=2", "--recorder-max-payload-size=2"],
        fake={"fail_tracking_after_posts": 1},
        control={"fail": {"fatal_after_lines": 4}},
    ),
    Scenario(
        "partly_refused_superuser",
        data(GOOD, line(host="a.example"), GOOD, line(host="b.example")),
        args=["--idsite-fallback=42"],
        fake={"sites": SITES, "superuser": True},
        control={"sites": SITES, "superuser": True, "refuse_lines": [1, 3]},
    ),
    Scenario(
        "surrogate_host_fatal",
        GOOD.encode() + b"\n" + line(host="caf-X").encode().replace(b"-X", b"\xe9") + b"\n",
        env={"PYTHONIOENCODING": "utf-8:surrogateescape"},
    ),
    Scenario(
        "surrogate_error_page_title_hang",
        line(status="404", path="/caf-X").encode().replace(b"-X", b"\xe9") + b"\n",
        args=["--enable-http-errors"],
        env={"PYTHONIOENCODING": "utf-8:surrogateescape"},
        hangs=True,
        hang_marker="UnicodeEncodeError",
    ),
    Scenario("utf8_strict", BAD_UTF8, env={"PYTHONIOENCODING": "utf-8"}),
    Scenario("utf8_replace", BAD_UTF8, env={"PYTHONIOENCODING": "utf-8:replace"}),
    Scenario("utf8_surrogateescape", BAD_UTF8, env={"PYTHONIOENCODING": "utf-8:surrogateescape"}),
    *[Scenario(f"crash_{k}", data(GOOD, v, GOOD)) for k, v in CRASH_LINES.items()],
    Scenario("tolerated", data(GOOD, *TOLERATED_LINES.values(), GOOD)),
]
BY_NAME = {sc.name: sc for sc in SCENARIOS}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Outcome, Outcome]]:
    """Run every scenario on both sides at once."""
    workdir = tmp_path_factory.mktemp("contract")
    ordered = sorted(SCENARIOS, key=lambda sc: not sc.hangs)  # the slowest start first
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        real = {sc.name: pool.submit(run_real, sc) for sc in ordered}
        double = {sc.name: pool.submit(run_double, sc, workdir) for sc in ordered}
        return {name: (real[name].result(), double[name].result()) for name in real}


def _compare(real: Outcome, double: Outcome) -> None:
    assert double.code == real.code, (real.stderr, double.stderr)
    assert norm_stdout(double.stdout) == norm_stdout(real.stdout)
    assert stderr_shape(double.stderr) == stderr_shape(real.stderr)
    assert double.held == real.held


@pytest.mark.parametrize("name", [sc.name for sc in SCENARIOS if sc.name != "utf8_strict"])
def test_double_matches_real(name: str, outcomes: dict[str, tuple[Outcome, Outcome]]) -> None:
    real, double = outcomes[name]
    _compare(real, double)


def test_strict_utf8_crashes_alike(outcomes: dict[str, tuple[Outcome, Outcome]]) -> None:
    """The decode error's byte position depends on read chunking: compare the error type only."""
    real, double = outcomes["utf8_strict"]
    assert real.code == double.code == 1
    assert stderr_shape(real.stderr)[-1].startswith("UnicodeDecodeError: 'utf-8' codec")
    assert stderr_shape(double.stderr)[-1].startswith("UnicodeDecodeError: 'utf-8' codec")
    assert real.held == double.held == 0


def test_facts_the_parser_relies_on(outcomes: dict[str, tuple[Outcome, Outcome]]) -> None:
    """Spot checks of the real script's output, in the words of docs/import_logs-facts.md."""
    real, _ = outcomes["mixed"]
    assert "\nLogs import summary\n-------------------\n\n" in real.stdout
    # "imported successfully" counts every request handed to Matomo, the unmatched host's too
    assert "    7 requests imported successfully\n" in real.stdout
    assert "        1 requests did not match any known site\n" in real.stdout
    assert "        3 invalid log lines\n" in real.stdout
    assert real.held == 6
    assert "    1 distinct hostnames did not match any existing site:\n" in real.stdout
    assert "            unknown.example.org\n" in real.stdout
    fatal, _ = outcomes["fatal_after_first_post"]
    assert fatal.code == 1
    assert (
        'You can restart the import of "(stdin)" from the point it failed by specifying '
        "--skip=4 on the command line." in fatal.stderr
    )
    refused, _ = outcomes["refused_not_superuser"]
    assert "The Matomo tracker identified 2 invalid requests." in refused.stderr
    assert refused.code == 0 and refused.held == 0


def test_sigint_ends_a_hung_import_on_both_sides(
    outcomes: dict[str, tuple[Outcome, Outcome]],
) -> None:
    """Ctrl-C stops a hung import_logs.py; also when the suite itself was started with SIGINT
    ignored (`cmd &` in a script), which a child would otherwise inherit."""
    real, double = outcomes["non_json_answer_then_sigint"]
    assert real.code != "hang" and double.code != "hang", (real.code, double.code)
    assert double.code == real.code
