"""Tests of the test doubles themselves (no real Matomo or import_logs.py needed).

Why: the rest of matomo-rt's tests trust these doubles to behave like the real programs. The
contract tests (tests/test_contract_import_logs.py) compare the import_logs double with the real
script when one is available; these tests pin the double's documented interface -- exit codes,
summary text, skip hint, record file, control keys -- so they hold on every machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_matomo import FakeMatomo, php_json_encode

HERE = Path(__file__).parent

DOUBLE = HERE / "import_logs.py"
CONSOLE = HERE / "console"
TOKEN = "secret-token"
DEADLINE = 30.0


def line(host: str = "example.com", **fields: Any) -> str:
    record: dict[str, Any] = {
        "ip": "198.51.100.4",
        "host": host,
        "path": "/page",
        "status": "200",
        "referrer": "-",
        "user_agent": "Mozilla/5.0",
        "length": 100,
        "generation_time_milli": 0.01,
        "date": "2024-06-01T12:00:00+00:00",
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def data(*lines: str) -> bytes:
    return "".join(x + "\n" for x in lines).encode()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    record: bytes
    calls: list[dict[str, Any]]


class Double:
    """Runs the import_logs double in a temporary directory with a given control."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.record = tmp / "record"
        self.calls = tmp / "calls"
        self.control = tmp / "control.json"
        self.started: list[subprocess.Popen[bytes]] = []

    def env(self, control: Optional[dict[str, Any]], extra: Optional[dict[str, str]]) -> dict:
        if control is not None:
            self.control.write_text(json.dumps(control))
        return {
            **os.environ,
            "IMPORT_DOUBLE_RECORD": str(self.record),
            "IMPORT_DOUBLE_CALLS": str(self.calls),
            "IMPORT_DOUBLE_CONTROL": str(self.control),
            **(extra or {}),
        }

    def argv(self, args: list[str], token: Optional[str], fmt: bool) -> list[str]:
        argv = [sys.executable, str(DOUBLE), "--url=http://matomo.test", "--retry-delay=0"]
        if token is not None:
            argv.append(f"--token-auth={token}")
        if fmt:
            argv.append("--log-format-name=nginx_json")
        return [*argv, *args, "-"]

    def run(
        self,
        stdin: bytes,
        args: Optional[list[str]] = None,
        control: Optional[dict[str, Any]] = None,
        token: Optional[str] = TOKEN,
        env: Optional[dict[str, str]] = None,
        fmt: bool = True,
    ) -> Run:
        proc = subprocess.run(
            self.argv(args or [], token, fmt),
            input=stdin,
            capture_output=True,
            env=self.env(control, env),
            timeout=DEADLINE,
        )
        return self.result(proc.returncode, proc.stdout, proc.stderr)

    def result(self, code: int, out: bytes, err: bytes) -> Run:
        record = self.record.read_bytes() if self.record.exists() else b""
        calls = (
            [json.loads(x) for x in self.calls.read_text().splitlines()]
            if self.calls.exists()
            else []
        )
        return Run(code, out.decode(errors="replace"), err.decode(errors="replace"), record, calls)

    def start(
        self, stdin: bytes, args: Optional[list[str]] = None, control: Optional[dict] = None
    ) -> subprocess.Popen[bytes]:
        # A Ctrl-C must reach the double as it reaches an importer started from a terminal. A
        # suite started as `cmd &` from a script runs with SIGINT ignored, a child inherits that,
        # and Python then never raises KeyboardInterrupt (the hang test waited 30 s and failed):
        # the child gets SIGINT at its default, which a caught signal becomes across exec.
        caught = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(
                self.argv(args or [], TOKEN, True),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env(control, None),
            )
        finally:
            signal.signal(signal.SIGINT, caught)
        self.started.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        proc.stdin = None  # written and closed: communicate() must not touch it
        return proc


@pytest.fixture
def double(tmp_path: Path) -> Iterator[Double]:
    runner = Double(tmp_path)
    yield runner
    for proc in runner.started:  # a failed hang test must not leave its double waiting forever
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def normalise(stdout: str) -> str:
    import re

    stdout = re.sub(r"Total time: \d+ seconds", "Total time: N seconds", stdout)
    return re.sub(r"per second: \S+ requests", "per second: R requests", stdout)


def wait_for(predicate: Any, what: str) -> None:
    """Wait for a condition the double is known to reach; fail loudly if it never does."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------------- command line


def test_unknown_flag_is_a_usage_error(double: Double) -> None:
    run = double.run(data(line()), args=["--no-such-flag"])
    assert run.code == 2
    assert run.stderr.splitlines()[-1] == (
        "import_logs.py: error: unrecognized arguments: --no-such-flag"
    )
    assert run.stderr.startswith("usage: import_logs.py [-h]")
    assert [c["event"] for c in run.calls] == ["start", "end"] and run.calls[1]["exit"] == 2


def test_url_is_required(double: Double) -> None:
    proc = subprocess.run(
        [sys.executable, str(DOUBLE), "--token-auth=x", "-"],
        input=b"",
        capture_output=True,
        env=double.env({}, None),
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.decode()
        .splitlines()[-1]
        .endswith("the following arguments are required: --url")
    )


def test_real_option_names_are_accepted(double: Double) -> None:
    options = [
        "--debug",
        "--debug-tracker",
        "--api-url=http://api.test",
        "--tracker-endpoint-path=/matomo.php",
        "--show-progress-delay=1",
        "--config=/nonexistent",
        "--hostname=*",
        "--exclude-path=/nothing/*",
        "--useragent-exclude=nobody",
        "--enable-static",
        "--enable-bots",
        "--enable-http-errors",
        "--enable-http-redirects",
        "--enable-reverse-dns",
        "--strip-query-string",
        "--query-string-delimiter=?",
        "--recorders=1",
        "--recorder-max-payload-size=10",
        "--encoding=utf8",
        "--add-download-extensions=foo",
        "--title-category-delimiter=/",
        "--track-http-method=1",
        "--retry-max-attempts=2",
        "--request-timeout=5",
        "--include-host=example.com",
        "--add-to-date=0",
        "--request-suffix=a=b",
        "--accept-invalid-ssl-certificate",
        "--php-binary=php",
        "--auth-user=u",
        "--auth-password=p",
        "--w3c-time-taken-millisecs",
        "--exclude-older-than=2000-01-01 00:00:00 +0000",
        "--tok=abbreviations-work-like-argparse",
    ]
    run = double.run(data(line()), args=options)
    assert run.code == 0, run.stderr
    assert "    1 requests imported successfully" in run.stdout
    assert run.calls[0]["token_auth"] == TOKEN  # the call log reads the spelled-out option


def test_without_a_token_the_config_file_is_needed(double: Double) -> None:
    run = double.run(data(line()), token=None)
    assert run.code == 1
    assert run.stderr.startswith("Fatal error: the configuration file")
    assert "could not be read. Please check permission." in run.stderr


# ------------------------------------------------------------------------- summary, records

EXPECTED_SUMMARY = """
Logs import summary
-------------------

    2 requests imported successfully
    0 requests were downloads
    3 requests ignored:
        1 HTTP errors
        0 HTTP redirects
        1 invalid log lines
        0 filtered log lines
        1 requests did not match any known site
        0 requests did not match any --hostname
        0 requests done by bots, search engines...
        0 requests to static resources (css, js, images, ico, ttf...)
        0 requests to file downloads did not match any --download-extensions

Website import summary
----------------------

    2 requests imported to 1 sites
        1 sites already existed
        0 sites were created:

    1 distinct hostnames did not match any existing site:
            elsewhere.example

        TIPs:
         - if one of these hosts is an alias host for one of the websites
           in Matomo, you can add this host as an "Alias URL" in Settings > Websites.
         - use --add-sites-new-hosts if you wish to automatically create
           one website for each of these hosts in Matomo rather than discarding
           these requests.
         - use --idsite-fallback to force all these log lines with a new hostname
<LONG TIP LINE>
         - use --idsite to force all lines in the specified log files
           to be all recorded in the specified idsite
         - or you can also manually create a new Website in Matomo with the URL set to this hostname


Performance summary
-------------------

    Total time: N seconds
    Requests imported per second: R requests per second

Processing your log data
------------------------

    In order for your logs to be processed by Matomo, you may need to run the following command:
     ./console core:archive --force-all-websites --url='http://matomo.test'

"""

# Longer than our line limit, hence spliced in.
EXPECTED_SUMMARY = EXPECTED_SUMMARY.replace(
    "<LONG TIP LINE>",
    "           to be recorded in a specific idsite"
    " (for example for troubleshooting/visualizing the data)",
)


def test_summary_text_is_exact(double: Double) -> None:
    stdin = data(line(), line(host="elsewhere.example"), "not json", line(status="500"))
    run = double.run(stdin, control={"sites": {"example.com": 1}})
    assert run.code == 0
    assert run.stderr == ""
    assert normalise(run.stdout) == EXPECTED_SUMMARY


def test_record_holds_the_original_bytes_of_what_matomo_holds(double: Double) -> None:
    kept = [line(path="/one"), line(user_agent="caf\\xC3\\xA9").replace("\\\\x", "\\x")]
    stdin = data(kept[0], line(host="elsewhere.example"), "junk", kept[1])
    run = double.run(stdin, control={"sites": {"example.com": 1}})
    assert run.code == 0
    assert run.record == data(*kept)
    assert run.calls[0] == {
        "event": "start",
        "pid": run.calls[0]["pid"],
        "argv": run.calls[0]["argv"],
        "token_auth": TOKEN,
        "token_env": run.calls[0]["token_env"],
    }
    assert run.calls[1] == {"event": "end", "pid": run.calls[0]["pid"], "exit": 0, "recorded": 2}


def test_a_record_torn_by_a_killed_importer_is_cut_back_not_completed(double: Double) -> None:
    # A SIGKILL during an append can leave part of a POST's record; like Matomo, which never
    # holds half a hit, the next importer drops that torn tail instead of finishing it.
    done = line(path="/done")
    double.record.write_bytes(data(done) + line(path="/torn")[:20].encode())
    run = double.run(data(line(path="/next")))
    assert run.code == 0
    assert run.record == data(done, line(path="/next"))


def test_dry_run_records_nothing_but_reports_imported(double: Double) -> None:
    run = double.run(data(line(), line()), args=["--dry-run"])
    assert run.code == 0
    assert run.record == b""
    assert "    2 requests imported successfully" in run.stdout
    assert "    2 requests imported to 0 sites" in run.stdout


def test_sites_idsite_fallback_and_creation(double: Double) -> None:
    stdin = data(line(), line(host="new.example"), line(host="new.example"))
    sites = {"example.com": 1}
    created = double.run(stdin, args=["--add-sites-new-hosts"], control={"sites": sites})
    assert "        1 sites were created:\n            new.example (ID: 2)\n" in created.stdout
    assert "    3 requests imported to 2 sites" in created.stdout
    fallback = double.run(stdin, args=["--idsite-fallback=9"], control={"sites": sites})
    assert "    0 distinct hostnames did not match any existing site:" in fallback.stdout
    fixed = double.run(stdin, args=["--idsite=1"], control={"sites": sites})
    assert "    3 requests imported to 1 sites" in fixed.stdout
    unknown = double.run(stdin, args=["--idsite=5"], control={"sites": sites})
    assert unknown.code == 1
    assert unknown.stderr == (
        "Fatal error: cannot get the main URL of this site: An unexpected website was found in "
        "the request: website id was set to '5' .\n"
    )


def test_lines_before_format_detection_are_lost_without_format_name(double: Double) -> None:
    lines = [line(path=f"/p{i}") for i in range(20)]
    run = double.run(data(*lines), fmt=False)
    assert run.code == 0
    assert run.record == data(*lines[17:])


# ------------------------------------------------------------------------- failures


def test_fatal_after_lines_gives_the_skip_hint_of_the_failed_post(double: Double) -> None:
    lines = [line(path=f"/p{i}") for i in range(10)]
    run = double.run(
        data(*lines),
        args=["--recorder-max-payload-size=3"],
        control={"fail": {"fatal_after_lines": 5}},
    )
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr.endswith(
        'Fatal error: HTTP Error 500 Internal Server Error, response: {"status":"error",'
        '"tracked":0,"invalid":0}\n'
        'You can restart the import of "(stdin)" from the point it failed by specifying '
        "--skip=3 on the command line.\n\n"
    )
    assert run.record == data(*lines[:3])  # the POST of lines 3..5 failed as a whole
    assert run.calls[-1] == {"event": "end", "pid": run.calls[0]["pid"], "exit": 1, "recorded": 3}


def test_skip_hint_counts_every_input_line(double: Double) -> None:
    stdin = data(line(), "junk", line(status="404"), line(), line())
    run = double.run(
        stdin, args=["--recorder-max-payload-size=1"], control={"fatal_after_lines": 2}
    )
    assert "--skip=3 on the command line." in run.stderr
    assert run.record == data(line())
    assert run.stderr.count("Error when connecting to Matomo: HTTP Error 500") == 3


def test_refuse_all_stores_nothing_and_still_exits_0(double: Double) -> None:
    run = double.run(data(line(), line(), line()), control={"fail": "refuse_all"})
    assert run.code == 0
    assert run.record == b""
    assert run.stderr.endswith(": [INFO] The Matomo tracker identified 3 invalid requests.\n")
    assert "    3 requests imported successfully" in run.stdout


def test_refusals_named_to_a_super_user(double: Double) -> None:
    run = double.run(
        data(line(path="/a"), line(path="/b"), line(path="/c")),
        control={"refuse_lines": [0, 2], "superuser": True},
    )
    assert run.code == 0
    assert run.record == data(line(path="/b"))
    assert "The Matomo tracker identified 2 invalid requests on lines: 0, 2" in run.stderr
    assert run.stdout.startswith(
        "\nInvalid log lines\n-----------------\n\nThe following lines were not tracked by "
        "Matomo, either due to a malformed tracker request or error in the tracker:\n\n0, 2\n\n"
        "Logs import summary\n"
    )


@pytest.mark.parametrize("control", [{"fail": "auth"}, {"valid_tokens": ["other"]}])
def test_refused_token(double: Double, control: dict[str, Any]) -> None:
    run = double.run(data("junk", line()), control=control)
    assert run.code == 1
    assert "[INFO] Error when connecting to Matomo: HTTP Error 401: Unauthorized" in run.stderr
    assert run.stderr.endswith(
        'Fatal error: HTTP Error 401 Unauthorized, response: {"result":"error","message":"Unable'
        ' to authenticate with the provided token. It is either invalid or expired."}\n'
        'You can restart the import of "(stdin)" from the point it failed by specifying '
        "--skip=1 on the command line.\n\n"
    )
    assert run.record == b""


def test_refused_token_with_idsite_is_a_startup_traceback(double: Double) -> None:
    run = double.run(data(line()), args=["--idsite=1"], control={"fail": "auth"})
    assert run.code == 1
    assert "Traceback (most recent call last):" in run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        "MatomoHttpBase.Error: HTTP Error 401 Unauthorized, response: "
    )


def test_unreachable(double: Double) -> None:
    run = double.run(data(line()), control={"fail": "unreachable"})
    assert run.code == 1
    assert "Error when connecting to Matomo: <urlopen error [Errno 111] Connection refused>" in (
        run.stderr
    )
    assert "Fatal error: [Errno 111] Connection refused\n" in run.stderr
    assert "--skip=0 on the command line." in run.stderr
    nothing_to_send = double.run(data("junk"), control={"fail": "unreachable"})
    assert nothing_to_send.code == 0  # Matomo is only contacted for the first kept request


def test_a_bad_line_crashes_like_the_real_one(double: Double) -> None:
    stdin = data(line(), line(status=404), line())
    run = double.run(stdin, args=["--recorder-max-payload-size=1"])
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr.splitlines()[-1] == "TypeError: 'int' object is not subscriptable"
    assert run.record == data(line())


def test_pythonioencoding_decides_what_invalid_utf8_does(double: Double) -> None:
    bad = line(path="/caf-X").encode().replace(b"-X", b"\xe9") + b"\n"
    strict = double.run(bad, env={"PYTHONIOENCODING": "utf-8"})
    assert strict.code == 1 and "UnicodeDecodeError" in strict.stderr.splitlines()[-1]
    replaced = double.run(bad, env={"PYTHONIOENCODING": "utf-8:replace"})
    assert replaced.code == 0 and replaced.record == bad
    escaped = double.run(bad, env={"PYTHONIOENCODING": "utf-8:surrogateescape"})
    assert escaped.code == 0 and "    1 requests imported successfully" in escaped.stdout
    assert escaped.record == replaced.record  # ...same file: record appends
    assert escaped.calls[-1]["recorded"] == 0  # Matomo's JSON decoder dropped the batch


def test_hang_kills_the_recorder_and_waits_forever(double: Double) -> None:
    proc = double.start(data(line(), line()), control={"fail": "hang"})
    assert proc.stderr is not None
    err = b""
    while b"AttributeError" not in err:
        chunk = proc.stderr.read1(4096)  # type: ignore[attr-defined]
        assert chunk, "the double exited instead of hanging"
        err += chunk
    assert err.startswith(b"Exception in thread Thread-1 (_run_bulk):\n")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)
    proc.send_signal(signal.SIGINT)  # like the real one: summary of what was done, exit 0
    out, _ = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0
    assert "    0 requests imported successfully" in out.decode()
    assert not double.record.exists()


def test_hang_after_lines_records_then_blocks(double: Double) -> None:
    lines = [line(path=f"/p{i}") for i in range(5)]
    proc = double.start(data(*lines), control={"hang_after_lines": 2})

    def events() -> list[str]:
        text = double.calls.read_text() if double.calls.exists() else ""
        return [json.loads(x)["event"] for x in text.splitlines(keepends=True) if x.endswith("\n")]

    wait_for(lambda: "hang" in events(), "the hang event")
    assert proc.poll() is None  # it says it waits forever, and it does
    assert double.record.read_bytes() == data(*lines[:2])
    proc.kill()
    proc.communicate()
    assert events() == ["start", "hang"]  # killed: no end line


# ------------------------------------------------------------------------- console double


def console(tmp: Path, *args: str, control: Optional[dict] = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ARCHIVE_DOUBLE_CALLS": str(tmp / "archive_calls")}
    if control is not None:
        (tmp / "archive_control.json").write_text(json.dumps(control))
        env["ARCHIVE_DOUBLE_CONTROL"] = str(tmp / "archive_control.json")
    return subprocess.Popen(
        [sys.executable, str(CONSOLE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def archive_calls(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "archive_calls"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("mode", "extra", "code", "warned"),
    [
        ("ok", [], 0, False),
        ("warning", [], 1, True),
        ("warning", ["--ignore-warn"], 0, False),
        ("fail", [], 1, False),
    ],
)
def test_console_modes(
    tmp_path: Path, mode: str, extra: list[str], code: int, warned: bool
) -> None:
    proc = console(tmp_path, "core:archive", "--url=http://m.test", *extra, control={"mode": mode})
    out, _ = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == code
    assert ("Error: error or warning logs detected, exit 1" in out.decode()) is warned
    (call,) = archive_calls(tmp_path)
    assert call["argv"] == ["core:archive", "--url=http://m.test", *extra]
    assert call["exit"] == code and call["start"] <= call["end"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["core:archive", "--nope"], 'The "--nope" option does not exist.'),
        (["core:archive", "--url"], 'The "--url" option requires a value.'),
        (["core:archive", "--force-all-websites=1"], "option does not accept a value."),
        (["core:archiv"], 'Command "core:archiv" is not defined.'),
    ],
)
def test_console_input_errors_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    proc = console(tmp_path, *args)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert message in err.decode()


def test_console_accepts_core_archive_options(tmp_path: Path) -> None:
    proc = console(
        tmp_path,
        "core:archive",
        "--url=http://m.test",
        "--force-idsites=1,2",
        "--skip-idsites",
        "3",
        "--force-periods=day",
        "--concurrent-requests-per-website=2",
        "--disable-scheduled-tasks",
        "--force-all-websites",
        "-vv",
        "--matomo-domain=m.test",
    )
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0


def test_console_hang_is_recorded_when_terminated(tmp_path: Path) -> None:
    proc = console(tmp_path, "core:archive", "--url=http://m.test", control={"mode": "hang"})
    assert proc.stdout is not None
    assert b"INIT" in proc.stdout.readline() + proc.stdout.readline()
    proc.terminate()
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGTERM
    (call,) = archive_calls(tmp_path)
    assert call["signal"] == "SIGTERM" and call["mode"] == "hang"


def test_console_seconds_sets_the_duration(tmp_path: Path) -> None:
    proc = console(tmp_path, "core:archive", control={"mode": "ok", "seconds": 0.3})
    proc.communicate(timeout=DEADLINE)
    (call,) = archive_calls(tmp_path)
    assert call["end"] - call["start"] >= 0.3


# ------------------------------------------------------------------------- fake Matomo


def _post(url: str, body: bytes, ctype: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, body, {"Content-Type": ctype})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_fake_matomo_api_and_tracking() -> None:
    with FakeMatomo(sites={"example.com": 4}, token="t") as matomo:
        form = b"module=API&format=json&method=SitesManager.getSitesIdFromSiteUrl&url=example.com"
        assert _post(
            matomo.url + "/", form + b"&token_auth=t", "application/x-www-form-urlencoded"
        ) == (
            200,
            [{"idsite": 4}],
        )
        assert (
            _post(matomo.url + "/", form + b"&token_auth=bad", "application/x-www-form-urlencoded")[
                0
            ]
            == 401
        )
        body = {
            "token_auth": "t",
            "requests": [{"idsite": 4, "cip": "1.2.3.4"}, None, {"idsite": 9}],
        }
        status, answer = _post(
            matomo.url + "//piwik.php?queuedtracking=0",
            json.dumps(body).encode(),
            "application/json",
        )
        assert (status, answer) == (
            200,
            {"status": "success", "tracked": 2, "invalid": 1, "invalid_indices": [2]},
        )
        assert matomo.hits() == [{"idsite": 4, "cip": "1.2.3.4"}]
        assert matomo.api_methods() == ["SitesManager.getSitesIdFromSiteUrl"] * 2
    assert php_json_encode({"a": "b/c"}) == '{"a":"b\\/c"}'
