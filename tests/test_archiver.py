"""core:archive's outcome, as seen on a real Matomo 5.0.2 (helper check, 2026-11-27)."""

from __future__ import annotations

from pathlib import Path

from matomo_rt.archiver import FAILURE, SUCCESS, TIMEOUT, WARNING, build_argv, classify

USAGE = "\x1b[32mcore:archive [--url URL] [--skip-idsites [SKIP-IDSITES]]\x1b[39m\n"


def test_argv_asks_for_no_colours() -> None:
    argv = build_argv("php", Path("/m/console"), "https://m.example", ("--force-all-websites",))
    assert argv == [
        "php",
        "/m/console",
        "core:archive",
        "--no-ansi",
        "--url=https://m.example",
        "--force-all-websites",
    ]


def test_the_cause_not_symfonys_usage_text_is_the_reason() -> None:
    """Database down: exit 255, the exception in the middle, Symfony's usage text last."""
    stderr = "\nIn Mysql.php line 1:\n\n  SQLSTATE[HY000] [2002] Connection refused\n\n" + USAGE
    stdout = "ERROR [2026-11-27] Uncaught exception: Abstract.php(119): SQLSTATE[HY000] [2002]\n"
    outcome, reason = classify(255, stdout, stderr, timed_out=False)
    assert outcome == FAILURE
    assert "SQLSTATE[HY000] [2002] Connection refused" in reason and "\x1b" not in reason


def test_warning_success_and_timeout() -> None:
    assert classify(1, "Error: error or warning logs detected, exit 1\n", "", False)[0] == WARNING
    assert classify(0, "done", "", False) == (SUCCESS, "")
    assert classify(None, "", "", True)[0] == TIMEOUT
    assert classify(1, "", 'The "--bogus" option does not exist.', False)[0] == FAILURE
