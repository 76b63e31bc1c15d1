"""The Guard against the lines import_logs.py's nginx_json parser crashes (or hangs) on.

Each crash case of docs/import_logs-facts.md §3 has a row here: the raw line crashes the parsing
code of the import_logs double (tests/doubles/import_logs.py, which mirrors the real script and is
checked against it by the contract tests), and the Guard's output for it is either quarantined
with the reason or normalised into a line the double takes without crashing. A hypothesis test
throws random objects with those keys and random value types at both, and a real run of the
double over a mixed batch shows the same end to end.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matomo_rt.guard import GuardResult, Quarantine, check_line, guard
from matomo_rt.matomo import importer

DOUBLE = Path(__file__).parent / "doubles" / "import_logs.py"
DOUBLE_CODE = DOUBLE.with_name("import_logs_double.py")  # what the DOUBLE script runs
GOOD: dict[str, Any] = {
    "ip": "203.0.113.7",
    "host": "www.example.org",
    "path": "/index.html",
    "query_string": "a=1",
    "status": "200",
    "referrer": "-",
    "user_agent": "Mozilla/5.0",
    "length": 512,
    "generation_time_milli": 0.042,
    "date": "2024-05-01T10:00:00+02:00",
}


def line(**fields: Any) -> bytes:
    """One nginx_json line (escape=json style); a field given as ``...`` is left out."""
    record = {**GOOD, **fields}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode() + b"\n"


def _load_double() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_logs_double", DOUBLE_CODE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOUBLE_MODULE = _load_double()


class Crash(Exception):
    """The double's parser (or the recorder it hands batches to) raised: a crash or a hang."""


def parse_with_double(data: bytes) -> tuple[Any, int]:
    """Run the double's own parsing and sending code over `data`, in this process.

    The recorder runs synchronously (an exception there would kill the recorder thread of the
    real importer, which then hangs), so every failure surfaces as :class:`Crash`. Returns the
    double's statistics and how many requests "Matomo" recorded.
    """
    d = DOUBLE_MODULE
    opts = d.build_parser().parse_args(
        [
            "--url=http://matomo.example",
            "--token-auth=t",
            "--log-format-name=nginx_json",
            "--enable-http-errors",
            "--enable-http-redirects",
            "-",
        ]
    )
    journal = d.Journal()
    journal.calls_path = journal.record_path = None
    imp = d.Importer(opts, d.Control({}), journal)
    imp.prepare()
    imp.obtain_token()

    def fatal(message: str, filename: Optional[str] = None, lineno: Optional[int] = None) -> None:
        raise Crash(f"Fatal error: {message}")

    def dispatch(hits: list[Any]) -> None:
        for hit in hits:
            hash(hit.ip)  # the real hand-over splits by hash(ip)
        imp.send(hits)

    imp.fatal = fatal
    imp.dispatch = dispatch
    source = d.LineSource(io.BytesIO(data), "utf-8", "replace")  # PYTHONIOENCODING=utf-8:replace
    try:
        imp.parse("(stdin)", source, 200)
    except Crash:
        raise
    except Exception as exc:
        raise Crash(f"{type(exc).__name__}: {exc}") from exc
    return imp.stats, journal.recorded


def assert_double_takes(data: bytes) -> None:
    """The double parses `data` without crashing and Matomo holds every request it sent."""
    stats, recorded = parse_with_double(data)
    assert stats.parsed == data.count(b"\n")
    assert recorded == stats.recorded, "Matomo dropped a bulk request the importer counted"


# -- the crash cases, one row each ------------------------------------------------------------

Q = "quarantined"
N = "normalised"
A = "accepted"  # passed on byte for byte

NGINX_DEFAULT = (
    b'{"ip":"203.0.113.7","host":"www.example.org","path":"/caf\\xC3\\xA9",'
    b'"status":"200","referrer":"-","user_agent":"Mozilla \\x22quoted\\x22",'
    b'"generation_time_milli":0.042,"date":"2024-05-01T10:00:00+02:00"}\n'
)
ESCAPE_JSON = line(path='/caf\u00e9 "q" \\ \u0001', user_agent='Mozilla "quoted"')
INVALID_UTF8 = line(path="/page").replace(b"/page", b"/p\xff\xfeage")
HUGE_INT = int("1" + "0" * 400)


def with_literal(key: str, literal: str) -> bytes:
    """A line whose `key` is a JSON literal json.dumps cannot write (such as 1e400)."""
    return line(**{key: ...})[:-2] + f', "{key}": {literal}}}\n'.encode()


def gtm_unknown(obj: dict[str, Any]) -> bool:
    """import_logs.py's own "unknown" generation time."""
    return obj["generation_time_milli"] == "-"


#: (id, raw line, what the Guard does, reason fragment or check on the normalised object,
#:  what the raw line does to the importer: "crash" (or hang), "lost" (Matomo drops the bulk
#:  request it is in while the importer counts it imported), None (harmless))
CASES: list[tuple[str, bytes, str, Any, Optional[str]]] = [
    ("status-number", line(status=404), N, lambda o: o["status"] == "404", "crash"),
    ("status-empty", line(status=""), Q, "status is empty", "crash"),
    ("status-missing", line(status=...), Q, "status is missing", "crash"),
    ("status-null", line(status=None), Q, "status is missing or null", "crash"),
    ("status-float", line(status=200.0), Q, "status is a float", "crash"),
    ("path-missing", line(path=...), Q, "path is missing", "crash"),
    ("path-number", line(path=7), Q, "path is a int", "crash"),
    ("ip-missing", line(ip=...), Q, "ip is missing", "crash"),
    ("ip-list", line(ip=["203.0.113.7"]), Q, "ip is a list", "crash"),
    ("date-missing", line(date=...), Q, "date is missing", "crash"),
    ("date-number", line(date=1714550400), Q, "date is a int", "crash"),
    ("date-null", line(date=None), Q, "date is missing or null", "crash"),
    ("date-zone-overflow", line(date="2024-05-01T10:00:00+9999999999"), Q, "out of range", "crash"),
    ("date-year-1", line(date="0001-01-01T00:00:00+01:00"), Q, "out of range", "crash"),
    ("date-unparsable", line(date="yesterday"), A, None, None),
    ("user_agent-null", line(user_agent=None), N, lambda o: "user_agent" not in o, "crash"),
    ("user_agent-number", line(user_agent=5), N, lambda o: o["user_agent"] == "5", "crash"),
    ("user_agent-list", line(user_agent=["x"]), Q, "user_agent is a list", "crash"),
    ("referrer-null", line(referrer=None), N, lambda o: "referrer" not in o, None),
    ("referrer-number", line(referrer=3), N, lambda o: o["referrer"] == "3", "crash"),
    ("host-null", line(host=None), N, lambda o: o["host"] == "", "crash"),
    ("host-number", line(host=42), N, lambda o: o["host"] == "42", "crash"),
    ("host-missing", line(host=...), N, lambda o: o["host"] == "", "crash"),  # hangs the real one
    ("host-list", line(host=["a"]), Q, "host is a list", "crash"),
    ("query_string-number", line(query_string=5), N, lambda o: o["query_string"] == "5", "crash"),
    ("query_string-dict", line(query_string={"a": 1}), Q, "query_string is a dict", "crash"),
    ("query_string-null", line(query_string=None), N, lambda o: "query_string" not in o, None),
    ("length-null", line(length=None), N, lambda o: "length" not in o, "crash"),
    ("length-list", line(length=[1]), Q, "length is a list", "crash"),
    ("length-1e400", with_literal("length", "1e400"), N, lambda o: "length" not in o, "crash"),
    ("length-text", line(length="-"), A, None, None),
    ("gtm-missing", line(generation_time_milli=...), N, gtm_unknown, "crash"),
    ("gtm-null", line(generation_time_milli=None), N, gtm_unknown, "crash"),
    ("gtm-inf", line(generation_time_milli=float("inf")), N, gtm_unknown, "crash"),
    ("gtm-1e400", with_literal("generation_time_milli", "1e400"), N, gtm_unknown, "crash"),
    ("gtm-inf-text", line(generation_time_milli="inf"), N, gtm_unknown, "crash"),
    ("gtm-huge-int", line(generation_time_milli=HUGE_INT), N, gtm_unknown, "crash"),
    ("gtm-list", line(generation_time_milli=[1]), Q, "generation_time_milli is a list", "crash"),
    ("gtm-text", line(generation_time_milli="fast"), A, None, None),
    ("json-list", b"[1, 2]\n", Q, "a JSON list, not an object", "crash"),
    ("json-string", b'"GET /"\n', Q, "a JSON str, not an object", "crash"),
    ("json-number", b"42\n", Q, "a JSON int, not an object", "crash"),
    ("json-null", b"null\n", Q, "a JSON NoneType, not an object", "crash"),
    ("invalid-json", b'{"ip": "203.0.113.7", \n', Q, "not valid JSON", None),
    ("trailing-garbage", line()[:-1] + b" x\n", Q, "not valid JSON", None),
    ("bad-x-escape", line(path="/a").replace(b"/a", b"/a\\xZZ"), Q, "not valid JSON", None),
    ("empty-line", b"\n", Q, "empty line", None),
    ("blank-line", b"  \t\n", Q, "empty line", None),
    ("lone-surrogate-host", line(host="a\ud800.example"), Q, "lone surrogate", "crash"),
    ("lone-surrogate-path", line(path="/p\udc80"), Q, "lone surrogate", "lost"),
    ("userid-infinity", with_literal("userid", "Infinity"), Q, "userid holds NaN", "lost"),
    ("userid-nan-list", with_literal("userid", "[NaN]"), Q, "userid holds NaN", "lost"),
    ("userid-number", line(userid=42), A, None, None),
    ("paired-surrogates", line(path="/\U0001f600"), A, None, None),
    ("invalid-utf8", INVALID_UTF8, A, None, None),
    ("nginx-default-escaping", NGINX_DEFAULT, A, None, None),
    ("escape-json", ESCAPE_JSON, A, None, None),
    ("good", line(), A, None, None),
]


@pytest.mark.parametrize(
    ("raw", "action", "expect", "harm"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_crash_case(raw: bytes, action: str, expect: Any, harm: Optional[str]) -> None:
    """Each line import_logs.py chokes on is normalised or quarantined, never passed on as is."""
    if harm == "crash":
        with pytest.raises(Crash):
            parse_with_double(raw)
    elif harm == "lost":
        stats, recorded = parse_with_double(raw)
        assert recorded < stats.recorded
    else:
        assert_double_takes(raw)
    out, reason = check_line(raw)
    if action == Q:
        assert out is None
        assert expect in reason
        return
    assert out is not None and reason == ""
    if action == A:
        assert out is raw
    else:
        assert out != raw and out.endswith(b"\n") and out.count(b"\n") == 1
        assert expect(json.loads(out))
    assert_double_takes(out)


def test_normalising_keeps_every_other_field() -> None:
    raw = line(status=301, user_agent=None, path="/caf\u00e9")
    out, _ = check_line(raw)
    assert out is not None
    assert json.loads(out) == {
        **{k: v for k, v in GOOD.items() if k != "user_agent"},
        "status": "301",
        "path": "/caf\u00e9",
    }


def test_normalised_nginx_default_escapes_read_as_the_importer_reads_them() -> None:
    """A line that needs normalising and carries \\xHH: the importer sees the same text."""
    raw = NGINX_DEFAULT.replace(b'"status":"200"', b'"status":200')
    out, _ = check_line(raw)
    assert out is not None
    assert json.loads(out)["path"] == "/caf\u00c3\u00a9"  # \xC3\xA9 read as two code points
    assert json.loads(out)["user_agent"] == 'Mozilla "quoted"'


def test_guard_maps_sent_lines_back_to_batch_lines() -> None:
    """`--skip=N` counts the lines the importer got; the offset counts the batch's lines."""
    lines = [line(), b"garbage\n", line(status=200), b"\n", line(), line()]
    result = guard(lines)
    assert isinstance(result, GuardResult)
    assert result.origin == [0, 2, 4, 5]
    assert [(i, r) for i, r, _ in result.quarantined] == [
        (1, "not valid JSON"),
        (3, "empty line"),
    ]
    assert [raw for _, _, raw in result.quarantined] == [b"garbage\n", b"\n"]
    assert result.normalised == 1
    assert result.lines[0] is lines[0] and result.lines[2] is lines[4]
    assert result.original_lines_before(0) == 0
    assert result.original_lines_before(1) == 2  # first sent line, then the garbage
    assert result.original_lines_before(2) == 4
    assert result.original_lines_before(4) == -1  # all of them


def test_quarantine_records_are_json_lines_with_a_recoverable_raw_line(tmp_path: Path) -> None:
    path = tmp_path / "web.quarantine.jsonl"
    held = [
        ("not valid JSON", b"\xff\xfe not json \\x41\n"),
        ("status is empty", line(status="")),
        ("empty line", b"\n"),
    ]
    q = Quarantine(path, "web")
    size = q.write(held, 0)
    assert q.write([], size) == size == path.stat().st_size == q.size()
    text = path.read_bytes()
    assert text.isascii()
    records = [json.loads(x) for x in text.splitlines()]
    assert [r["reason"] for r in records] == [reason for reason, _ in held]
    assert {r["log"] for r in records} == {"web"}
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", r["time"]) for r in records)
    for record, (_, raw) in zip(records, held):
        assert record["line"].encode("utf-8", "surrogateescape") + b"\n" == raw
    assert os.stat(path).st_mode & 0o007 == 0  # log data: not for every user


def test_quarantine_write_keeps_only_the_committed_bytes_then_appends(tmp_path: Path) -> None:
    """Entries past the committed length (a torn append, or one whose commit never happened)
    are dropped before new ones are appended; a file an operator shortened is kept as it is."""
    path = tmp_path / "web.quarantine.jsonl"
    q = Quarantine(path, "web")
    committed = q.write([("a", b"one\n")], 0)
    with path.open("ab") as fh:
        fh.write(b'{"time": "torn')
    size = q.write([("b", b"two\n")], committed)
    assert [json.loads(x)["line"] for x in path.read_bytes().splitlines()] == ["one", "two"]
    path.write_bytes(b"")  # the operator emptied it
    assert q.write([("c", b"three\n")], size) == q.size()
    assert [json.loads(x)["line"] for x in path.read_bytes().splitlines()] == ["three"]


# -- random objects ---------------------------------------------------------------------------

KEYS = (
    "status", "path", "ip", "date", "host", "user_agent", "referrer", "query_string", "length",
    "generation_time_milli", "userid", "method", "timezone",
)  # fmt: skip
_text = st.text(st.characters(exclude_categories=()), max_size=8)  # surrogates included
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.sampled_from(["", "-", '"', "inf", "-inf", "1e400", "NaN", "\\x41", "200", "1.5"]),
)
_value = st.one_of(
    _scalar, st.lists(_scalar, max_size=2), st.dictionaries(_text, _scalar, max_size=2)
)
_zone = st.one_of(
    st.sampled_from(["", "+00:00", "+02:00", "-05:30", "Z", "+99:99", "-99:99", "+9999999999"]),
    st.text(st.sampled_from("+-0123456789:"), max_size=12),
)
_date = st.builds(
    lambda year, moment, zone: f"{year:04d}-{moment}{zone}",
    st.integers(1, 9999),
    st.sampled_from(["01-01T00:00:00", "06-15T12:30:00", "12-31T23:59:59"]),
    _zone,
)
_typical: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(["200", "301", "304", "404", "500", 200, 404]),
    "path": st.sampled_from(["/", "/index.html", "/a.css", "/robots.txt", "/f.pdf", ""]),
    "ip": st.sampled_from(["203.0.113.7", "::1", ""]),
    "date": _date,
    "host": st.sampled_from(["www.example.org", "", ".", '"q"', "Example.ORG."]),
    "user_agent": st.sampled_from(["Mozilla/5.0", "Googlebot/2.1", '"quoted"', ""]),
    "referrer": st.sampled_from(["-", "https://ref.example/", '"x"']),
    "query_string": st.sampled_from(["", "-", "a=1&b=2"]),
}


@st.composite
def log_lines(draw: st.DrawFn) -> bytes:
    """A JSON object with some of the keys import_logs.py reads, each of a random type, as
    escape=json would write it, with raw UTF-8, or with nginx's default \\xHH escaping."""
    obj: dict[str, Any] = {}
    for key in KEYS:
        presence = draw(st.sampled_from(["typical", "typical", "random", "absent"]))
        if presence == "absent":
            continue
        typical = _typical.get(key)
        obj[key] = draw(typical if typical is not None and presence == "typical" else _value)
    style = draw(st.sampled_from(["ascii", "utf-8", "nginx"]))
    text = json.dumps(obj, ensure_ascii=style == "ascii")
    data = text.encode("utf-8", "surrogatepass")
    if style == "nginx":
        data = re.sub(rb"[\x80-\xff]", lambda m: b"\\x%02X" % m.group()[0], data)
    return data + b"\n"


@given(st.lists(log_lines(), min_size=1, max_size=4))
def test_guard_output_never_crashes_the_importer(lines: list[bytes]) -> None:
    """Whatever the keys' types, what the Guard lets through is parsed, sent and recorded."""
    result = guard(lines)
    assert len(result.lines) + len(result.quarantined) == len(lines)
    for out in result.lines:
        assert out.endswith(b"\n") and out.count(b"\n") == 1
    if result.lines:
        assert_double_takes(b"".join(result.lines))


@given(st.binary(max_size=60))
def test_guard_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    raw = data.replace(b"\n", b" ") + b"\n"
    out, reason = check_line(raw)
    assert (out is None) != (reason == "")
    if out is not None:
        assert_double_takes(out)


# -- the real process -------------------------------------------------------------------------


def test_a_guarded_batch_goes_through_the_import_logs_process(tmp_path: Path) -> None:
    """Every crash case in one batch: the double, as a real process, imports the Guard's output."""
    raw = [case[1] for case in CASES]
    result = guard(raw)
    record = tmp_path / "record"
    env = {
        **os.environ,
        **importer.child_env(None),
        "IMPORT_DOUBLE_RECORD": str(record),
        "IMPORT_DOUBLE_CALLS": str(tmp_path / "calls"),
    }
    env.pop("IMPORT_DOUBLE_CONTROL", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(DOUBLE),
            "--url=http://matomo.example",
            "--token-auth=t",
            "--log-format-name=nginx_json",
            "--enable-http-errors",
            "--enable-http-redirects",
            "-",
        ],
        input=b"".join(result.lines),
        capture_output=True,
        env=env,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    outcome = importer.classify(
        proc.returncode, proc.stdout.decode(), proc.stderr.decode(), len(result.lines)
    )
    assert outcome.outcome == importer.SUCCESS
    recorded = record.read_bytes().splitlines(keepends=True)
    assert len(recorded) == outcome.imported > 0
    assert set(recorded) <= set(result.lines)
    # Nothing was lost silently: each line is recorded, counted by the importer, or quarantined.
    assert outcome.imported + outcome.ignored == len(result.lines)
    assert len(result.lines) + len(result.quarantined) == len(raw)
