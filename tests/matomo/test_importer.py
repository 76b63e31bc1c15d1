"""import_logs.py as a function: the argv we build and what its output means.

The output strings are golden copies of what import_logs.py prints (docs/import_logs-facts.md §6,
and the double that the contract tests hold to the real script): the summary, the fatal errors
with their `--skip=N` hint, the start-up tracebacks of `--idsite`, argparse's usage error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from matomo_rt.matomo import importer
from matomo_rt.matomo.importer import (
    AUTH,
    FAILED,
    LAUNCHER,
    PARTIAL,
    REFUSED,
    SUCCESS,
    UNCERTAIN,
    USAGE,
    build_argv,
    child_env,
    classify,
    parse_summary,
)

SCRIPT = Path("/srv/matomo/misc/log-analytics/import_logs.py")
URL = "https://matomo.example.org"
DEFAULT_FLAGS = ("--enable-http-errors", "--enable-http-redirects")
STAMP = "2024-06-01 12:00:00,123: [INFO] "

# -- argv ---------------------------------------------------------------------------------------


def test_argv_has_fixed_options_then_flags_then_stdin() -> None:
    argv = build_argv("python3", SCRIPT, URL, DEFAULT_FLAGS)
    assert argv == [
        "python3",
        "-c",
        LAUNCHER,
        str(SCRIPT),
        f"--url={URL}",
        "--log-format-name=nginx_json",
        "--recorders=1",
        "--enable-http-errors",
        "--enable-http-redirects",
        "-",
    ]


def test_nginx_json_is_always_given_even_without_flags() -> None:
    argv = build_argv("/usr/bin/python3", SCRIPT, URL, ())
    assert argv.count("--log-format-name=nginx_json") == 1
    assert argv[-1] == "-"


@pytest.mark.parametrize(
    ("recorders", "flags", "expected"),
    [
        (1, (), ["--recorders=1"]),
        (4, (), ["--recorders=4"]),
        (1, ("--recorders=3",), ["--recorders=3"]),  # a configured flag wins, given once
        (2, ("--recorders", "5"), ["--recorders", "5"]),
    ],
)
def test_recorders(recorders: int, flags: tuple[str, ...], expected: list[str]) -> None:
    argv = build_argv("python3", SCRIPT, URL, flags, recorders=recorders)
    found = [
        a for i, a in enumerate(argv) if a.startswith("--recorders") or argv[i - 1] == "--recorders"
    ]
    assert found == expected


def test_idsite_and_dry_run_come_after_the_flags_and_stdin_is_last() -> None:
    argv = build_argv("python3", SCRIPT, URL, ("--enable-bots",), idsite=7, dry_run=True)
    assert argv[-4:] == ["--enable-bots", "--idsite=7", "--dry-run", "-"]
    argv = build_argv("python3", SCRIPT, URL, (), idsite=None, dry_run=False)
    assert not any(a.startswith(("--idsite", "--dry-run")) for a in argv)


def test_no_token_in_argv_but_in_the_child_environment() -> None:
    token = "0123456789abcdef0123456789abcdef"
    argv = build_argv("python3", SCRIPT, URL, DEFAULT_FLAGS, idsite=1, dry_run=True)
    assert not any("token" in a.lower() and a != LAUNCHER for a in argv)
    assert not any(token in a for a in argv)
    env = child_env(token)
    assert env == {"PYTHONIOENCODING": "utf-8:replace", importer.TOKEN_ENV_CHILD: token}
    assert child_env(None) == {"PYTHONIOENCODING": "utf-8:replace"}
    assert child_env("") == {"PYTHONIOENCODING": "utf-8:replace"}


@pytest.mark.parametrize("token", ["s3cr3t-token", None])
def test_launcher_hands_the_token_to_the_script_only(tmp_path: Path, token: Optional[str]) -> None:
    """The launcher runs the script as __main__ with --token-auth appended to its sys.argv."""
    script = tmp_path / "import_logs.py"
    script.write_text(
        "import json, os, sys\n"
        "print(json.dumps({'name': __name__, 'argv': sys.argv, 'path0': sys.path[0],"
        " 'env': os.environ.get('MATOMO_RT_TOKEN_AUTH')}))\n"
    )
    argv = build_argv(sys.executable, script, URL, ("--enable-bots",))
    env = {k: v for k, v in os.environ.items() if k != importer.TOKEN_ENV_CHILD}
    env.update(child_env(token))
    out = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=True)
    seen = json.loads(out.stdout)
    assert seen["name"] == "__main__"
    assert seen["path0"] == str(tmp_path)  # the script's own imports work
    assert seen["env"] is None  # popped before the script runs
    expected = [str(script), *argv[4:]]
    if token:
        expected.append(f"--token-auth={token}")
    assert seen["argv"] == expected


# -- the summary --------------------------------------------------------------------------------

FACTS_SUMMARY = """
Logs import summary
-------------------

    7 requests imported successfully
    1 requests were downloads
    8 requests ignored:
        1 HTTP errors
        1 HTTP redirects
        3 invalid log lines
        0 filtered log lines
        1 requests did not match any known site
        0 requests did not match any --hostname
        1 requests done by bots, search engines...
        1 requests to static resources (css, js, images, ico, ttf...)
        0 requests to file downloads did not match any --download-extensions

Website import summary
----------------------

    7 requests imported to 1 sites
        1 sites already existed
        0 sites were created:

    1 distinct hostnames did not match any existing site:
            unknown.example.org

        TIPs:
         - if one of these hosts is an alias host for one of the websites
           in Matomo, you can add this host as an "Alias URL" in Settings > Websites.
         - use --add-sites-new-hosts if you wish to automatically create
           one website for each of these hosts in Matomo rather than discarding
           these requests.
         - use --idsite-fallback to force all these log lines with a new hostname
           to be recorded in a specific idsite @EXAMPLE@
         - use --idsite to force all lines in the specified log files
           to be all recorded in the specified idsite
         - or you can also manually create a new Website in Matomo with the URL set to this hostname


Performance summary
-------------------

    Total time: 1 seconds
    Requests imported per second: 6.98 requests per second

Processing your log data
------------------------

    In order for your logs to be processed by Matomo, you may need to run the following command:
     ./console core:archive --force-all-websites --url='http://127.0.0.1:46625'

""".replace("@EXAMPLE@", "(for example for troubleshooting/visualizing the data)")


def summary(
    imported: int = 4,
    no_site: int = 0,
    invalid: int = 0,
    hosts: tuple[str, ...] = (),
    created: tuple[tuple[str, int], ...] = (),
) -> str:
    """A summary as import_logs.py prints it (empty sections as it prints them)."""
    created_lines = "\n".join(f"            {h} (ID: {i})" for h, i in created)
    host_lines = "\n".join(f"            {h}" for h in hosts)
    tips = "\n        TIPs:\n         - if one of these hosts ...\n" if hosts else ""
    return f"""
Logs import summary
-------------------

    {imported} requests imported successfully
    0 requests were downloads
    {no_site + invalid} requests ignored:
        0 HTTP errors
        0 HTTP redirects
        {invalid} invalid log lines
        0 filtered log lines
        {no_site} requests did not match any known site
        0 requests did not match any --hostname
        0 requests done by bots, search engines...
        0 requests to static resources (css, js, images, ico, ttf...)
        0 requests to file downloads did not match any --download-extensions

Website import summary
----------------------

    {imported} requests imported to 1 sites
        1 sites already existed
        {len(created)} sites were created:
{created_lines}
    {len(hosts)} distinct hostnames did not match any existing site:
{host_lines}
{tips}

Performance summary
-------------------

    Total time: 1 seconds
    Requests imported per second: 4.0 requests per second

Processing your log data
------------------------

    In order for your logs to be processed by Matomo, you may need to run the following command:
     ./console core:archive --force-all-websites --url='{URL}'

"""


def test_parse_summary_reads_every_count_of_the_golden_summary() -> None:
    parsed = parse_summary(FACTS_SUMMARY)
    assert parsed is not None
    counts, hosts = parsed
    assert counts == {
        "imported": 7,
        "downloads": 1,
        "ignored": 8,
        "http_errors": 1,
        "http_redirects": 1,
        "invalid": 3,
        "filtered": 0,
        "no_site": 1,
        "hostname_skipped": 0,
        "bots": 1,
        "static": 1,
        "downloads_skipped": 0,
    }
    assert hosts == ("unknown.example.org",)


def test_parse_summary_lists_unmatched_hosts_not_created_sites() -> None:
    text = summary(
        imported=9,
        no_site=3,
        hosts=("a.example", "b.example"),
        created=(("new.example", 3),),
    )
    parsed = parse_summary(text)
    assert parsed is not None
    assert parsed[1] == ("a.example", "b.example")
    assert parsed[0]["no_site"] == 3


def test_parse_summary_without_unmatched_hosts() -> None:
    parsed = parse_summary(summary(imported=4))
    assert parsed == (parsed[0], ()) and parsed[0]["imported"] == 4


def test_parse_summary_after_progress_and_invalid_lines_sections() -> None:
    text = (
        "Parsing log (stdin)...\n"
        "3 lines parsed, 0 lines recorded, 0 records/sec (avg), 0 records/sec (current)\n"
        "\nInvalid log lines\n-----------------\n\nThe following lines were not tracked by "
        "Matomo, either due to a malformed tracker request or error in the tracker:\n\n0, 2\n"
        + summary(imported=3)
    )
    parsed = parse_summary(text)
    assert parsed is not None and parsed[0]["imported"] == 3


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Parsing log (stdin)...\n",
        "\nLogs import summary\n-------------------\n\n",  # cut off before the counts
        FACTS_SUMMARY.replace("Logs import summary", "Logs import"),
    ],
)
def test_no_summary(text: str) -> None:
    assert parse_summary(text) is None


# -- outcomes -----------------------------------------------------------------------------------


def fatal(message: str, skip: Optional[int]) -> str:
    """stderr of a fatal error: the retries, the message, the --skip hint."""
    lines = [
        f"{STAMP}Error when connecting to Matomo: HTTP Error 500: Internal Server Error",
        f"{STAMP}Retrying request, attempt number 2",
        f"{STAMP}Max number of attempts reached, server is unreachable!",
        f"Fatal error: {message}",
    ]
    if skip is not None:
        lines.append(
            'You can restart the import of "(stdin)" from the point it failed by specifying '
            f"--skip={skip} on the command line.\n"
        )
    return "\n".join(lines) + "\n"


def traceback_ending(last: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "import_logs.py", line 2742, in <module>\n'
        "    main()\n"
        '  File "import_logs.py", line 1040, in _call\n'
        "    raise MatomoHttpBase.Error(message, code)\n"
        f"{last}\n"
    )


HTTP_500 = (
    'HTTP Error 500 Internal Server Error, response: {"status":"error","tracked":0,"invalid":0}'
)
HTTP_401 = (
    'HTTP Error 401 Unauthorized, response: {"result":"error","message":"Unable to authenticate '
    'with the provided token. It is either invalid or expired."}'
)
REFUSED_LINE = f"{STAMP}The Matomo tracker identified {{n}} invalid requests."


def test_success() -> None:
    result = classify(0, FACTS_SUMMARY, "", 16)
    assert result.outcome == SUCCESS
    assert result.returncode == 0
    assert result.imported == 7 and result.ignored == 8
    assert result.unmatched_hosts == ("unknown.example.org",)
    assert result.refused_hits == 0 and result.skip is None


def test_partial_fatal_error_commits_the_lines_before_the_failed_post() -> None:
    result = classify(1, "", fatal(HTTP_500, 400), 1000)
    assert result.outcome == PARTIAL
    assert result.skip == 400
    assert result.reason == HTTP_500


def test_skip_beyond_the_lines_sent_is_capped() -> None:
    assert classify(1, "", fatal(HTTP_500, 5000), 1000).skip == 1000


def test_skip_zero_is_a_failure() -> None:
    result = classify(1, "", fatal(HTTP_500, 0), 1000)
    assert result.outcome == FAILED and result.skip == 0


def test_unreachable_is_a_failure() -> None:
    result = classify(1, "", fatal("[Errno 111] Connection refused", 0), 10)
    assert result.outcome == FAILED
    assert result.reason == "[Errno 111] Connection refused"


def test_bad_request_is_partial_or_failed_by_its_skip() -> None:
    message = "Server returned status 400 (Bad Request).\nIs the BulkTracking plugin disabled?"
    assert classify(1, "", fatal(message, 200), 400).outcome == PARTIAL
    assert classify(1, "", fatal(message, 0), 400).outcome == FAILED


def test_fatal_without_hint_is_a_failure() -> None:
    stderr = (
        "Fatal error: cannot get the main URL of this site: An unexpected website was found in "
        "the request: website id was set to '9' .\n"
    )
    result = classify(1, "", stderr, 10)
    assert result.outcome == FAILED and result.skip is None


@pytest.mark.parametrize("skip", [0, 600])
def test_wrong_token_is_auth(skip: int) -> None:
    """The lines before the refused request (if any) were recorded: the pipeline commits them."""
    result = classify(1, "", fatal(HTTP_401, skip), 1000)
    assert result.outcome == AUTH
    assert result.skip == skip
    assert "401" in result.reason


def test_idsite_start_up_traceback_401_is_auth() -> None:
    stderr = f"{STAMP}Error when connecting to Matomo: HTTP Error 401: Unauthorized\n"
    stderr += traceback_ending(f"MatomoHttpBase.Error: {HTTP_401}")
    result = classify(1, "", stderr, 10)
    assert result.outcome == AUTH
    assert result.reason.startswith("MatomoHttpBase.Error: HTTP Error 401")


def test_idsite_start_up_traceback_connection_refused_is_failed() -> None:
    stderr = traceback_ending("MatomoHttpBase.Error: [Errno 111] Connection refused")
    result = classify(1, "", stderr, 10)
    assert result.outcome == FAILED
    assert result.reason == "MatomoHttpBase.Error: [Errno 111] Connection refused"


def test_crash_mid_batch_is_uncertain() -> None:
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "import_logs.py", line 2540, in parse\n'
        "TypeError: 'int' object is not subscriptable\n"
    )
    result = classify(1, "", stderr, 10)
    assert result.outcome == UNCERTAIN
    assert "crashed" in result.reason and "not subscriptable" in result.reason


def test_refused_every_hit() -> None:
    stderr = REFUSED_LINE.format(n=3) + "\n" + REFUSED_LINE.format(n=1) + "\n"
    result = classify(0, summary(imported=4), stderr, 4)
    assert result.outcome == REFUSED
    assert result.refused_hits == 4
    assert "write access" in result.reason


def test_some_refused_is_success_with_a_count() -> None:
    result = classify(0, summary(imported=4), REFUSED_LINE.format(n=1), 4)
    assert result.outcome == SUCCESS
    assert result.refused_hits == 1


def test_refused_counts_against_imported_minus_unmatched_hosts() -> None:
    # 5 "imported", of which 2 matched no site: Matomo got 3 hits and refused all 3.
    out = summary(imported=5, no_site=2, hosts=("x.example",))
    assert classify(0, out, REFUSED_LINE.format(n=3), 5).outcome == REFUSED
    assert classify(0, out, REFUSED_LINE.format(n=2), 5).outcome == SUCCESS
    # Nothing reached a site at all: not a refusal.
    assert classify(0, summary(imported=5, no_site=5), "", 5).outcome == SUCCESS


def test_superuser_refusal_lists_lines() -> None:
    stderr = f"{STAMP}The Matomo tracker identified 2 invalid requests on lines: 0, 3\n"
    result = classify(0, summary(imported=4), stderr, 4)
    assert result.outcome == SUCCESS and result.refused_hits == 2
    assert classify(0, summary(imported=2), stderr, 2).outcome == REFUSED


def test_exit_2_is_a_usage_error_naming_the_flag() -> None:
    stderr = (
        "usage: import_logs.py [-h] [--auth-user AUTH_USER]\n"
        "                      file [file ...]\n"
        "import_logs.py: error: unrecognized arguments: --bogus\n"
    )
    result = classify(2, "", stderr, 10)
    assert result.outcome == USAGE
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.reason


@pytest.mark.parametrize(("timed_out", "word"), [(True, "timed out"), (False, "was killed")])
def test_no_exit_status_is_uncertain(timed_out: bool, word: str) -> None:
    result = classify(None, "", "", 10, timed_out=timed_out)
    assert result.outcome == UNCERTAIN
    assert result.returncode is None
    assert word in result.reason


def test_exit_0_without_summary_is_uncertain() -> None:
    result = classify(0, "Parsing log (stdin)...\n", "", 10)
    assert result.outcome == UNCERTAIN
    assert "without printing its summary" in result.reason


HTML_401 = (
    "2026-11-27 21:01:51,000: [INFO] Error when connecting to Matomo: HTTP Error 401:"
    " Unauthorized\n"
    "Fatal error: HTTP Error 401 Unauthorized, response: <!DOCTYPE html>\n"
    "<html><head><title>Matomo &rsaquo; Error</title><style>body { color: red }</style></head>\n"
    "<body><p>Unable to authenticate with the provided token. It is either invalid or expired."
    "</p>\n</body></html>\n"
    'You can restart the import of "(stdin)" from the point it failed by specifying --skip=0'
    " on the command line.\n\n"
)


def test_matomo_5_html_error_page_gives_a_readable_reason() -> None:
    """Matomo 5.0.2 (seen on a real install) answers a refused token with an HTML page: the
    reason must carry its message, not `<!DOCTYPE html>`."""
    result = importer.classify(1, "", HTML_401, 10)
    assert result.outcome == importer.AUTH and result.skip == 0
    assert "Unable to authenticate with the provided token" in result.reason
    assert "<" not in result.reason and "color: red" not in result.reason


def test_a_blocked_host_says_how_to_unblock_it() -> None:
    stderr = (
        'Fatal error: HTTP Error 401 Unauthorized, response: {"result":"error","message":"You are'
        " currently not allowed to log in because you had too many failed logins, try again"
        ' later."}\nYou can restart the import of "(stdin)" from the point it failed by'
        " specifying --skip=0 on the command line.\n"
    )
    result = importer.classify(1, "", stderr, 10)
    assert result.outcome == importer.AUTH
    assert "login:unblock-blocked-ips" in result.reason


def test_a_long_reason_is_cut_between_words_and_says_so() -> None:
    """A reason longer than the limit ends at a word with an ellipsis, never in a word."""
    words = " ".join(f"word{n:03d}" for n in range(200))
    stderr = f"Fatal error: HTTP Error 500 Internal Server Error, response: {words}\n"
    result = importer.classify(1, "", stderr, 10)
    assert result.reason.endswith(" …"), result.reason[-40:]
    last = result.reason[: -len(" …")].rsplit(" ", 1)[-1]
    assert re.fullmatch(r"word\d{3}", last), last
    assert len(result.reason) <= 502


@pytest.mark.parametrize(
    ("returncode", "stderr", "timed_out"),
    [
        (1, "Traceback (most recent call last):\nSyntaxError: invalid syntax\n", False),
        (None, "", True),
        (None, "", False),
        (0, "", False),
    ],
)
def test_nothing_read_is_never_uncertain(
    returncode: Optional[int], stderr: str, timed_out: bool
) -> None:
    """An importer that read none of its input sent none of it: a plain failure, so that
    on_uncertain = "skip" never moves past a batch nothing sent."""
    read = classify(returncode, "", stderr, 3, timed_out=timed_out)
    assert read.outcome == UNCERTAIN
    unread = classify(returncode, "", stderr, 3, timed_out=timed_out, read_input=False)
    assert unread.outcome == FAILED and "before reading its input" in unread.reason


@pytest.mark.parametrize(
    "message",
    [
        # A PHP error page that names the parameter: not an authentication failure.
        "HTTP Error 500 Internal Server Error, response: <html><body>Undefined index: token_auth"
        " in /var/www/matomo/core/Tracker.php</body></html>",
        'HTTP Error 400 Bad Request, response: {"message":"token_auth is not a valid parameter"}',
        # A proxy's basic auth in front of Matomo: not Matomo's failed login.
        "HTTP Error 401 Unauthorized, response: <html><title>401 Authorization Required</title>"
        "</html>",
    ],
    ids=["500-naming-token_auth", "400-naming-token_auth", "401-from-a-proxy"],
)
def test_only_a_refused_token_is_auth(message: str) -> None:
    """AUTH pauses imports for an hour: only Matomo refusing the token (401/403 with its token
    wording) may cause it, not any fatal error that mentions a token."""
    assert classify(1, "", fatal(message, 0), 10).outcome == FAILED
    traceback = traceback_ending(f"MatomoHttpBase.Error: {message}")
    assert classify(1, "", traceback, 10).outcome == FAILED


def test_a_403_with_the_token_wording_is_auth() -> None:
    message = (
        'HTTP Error 403 Forbidden, response: {"result":"error","message":"Unable to authenticate'
        ' with the provided token."}'
    )
    assert classify(1, "", fatal(message, 0), 10).outcome == AUTH


#: The shape of Matomo 5's HTML error page (our own markup with the same structure: a title, an
#: "An error occurred" heading, the message in an h2, back links, a list of help links).
ERROR_PAGE = (
    '<!DOCTYPE html>\n<html>\n<head>\n\t<meta charset="utf-8">\n'
    "\t<title>Matomo &rsaquo; Error</title>\n"
    '\t<link rel="stylesheet" type="text/css" href="plugins/x.css" />\n</head>\n'
    '<body id="simple">\n<div class="logo"><img title="Matomo" alt="Matomo" src="logo.svg"/>'
    '</div>\n<div class="box">\n\t<div class="header">\n\t\t<h1>An error occurred</h1>\n'
    '\t</div>\n\t<div class="content">\n'
    "<h2>Unable to authenticate with the provided token. It is either invalid or expired.</h2>"
    '<p><a href="javascript:window.history.back();">Go Back</a> | <a href="index.php">Go to'
    ' Matomo</a></p> <ul>\n<li><a href="https://matomo.org">Matomo.org homepage</a></li>\n'
    '<li><a href="https://matomo.org/faq/">Frequently Asked Questions</a></li>\n</ul>'
    "\n\t</div>\n</div>\n<script>if (a < b) { x(); }</script>\n</body>\n</html>\n"
)
READABLE_401 = (
    "HTTP Error 401 Unauthorized, response: Unable to authenticate with the provided token. It"
    " is either invalid or expired."
)


def test_an_html_error_page_gives_matomos_message_whole() -> None:
    """The reason is the page's message, complete: not its title cut after five letters
    ("response: Matom"), not its navigation links, never markup."""
    result = classify(1, "", fatal(f"HTTP Error 401 Unauthorized, response: {ERROR_PAGE}", 0), 9)
    assert result.outcome == AUTH
    assert result.reason == READABLE_401


def test_an_html_error_page_in_the_idsite_start_up_traceback() -> None:
    stderr = traceback_ending(
        f"MatomoHttpBase.Error: HTTP Error 401 Unauthorized, response: {ERROR_PAGE}"
    )
    result = classify(1, "", stderr, 10)
    assert result.outcome == AUTH
    assert result.reason == f"MatomoHttpBase.Error: {READABLE_401}"
