"""The health verdict: each fact becomes the problem it is (with the fix), and only then; the
recorded facts survive the state document; the service and `status` agree."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from matomo_rt import health
from matomo_rt.health import ArchiveFacts, LogFacts, LogHealth, Settings, judge_archive, judge_log

NOW = 1_800_000_000.0


def facts(**kw) -> LogFacts:
    kw.setdefault("last_success", NOW - 10)
    return LogFacts("access", "/var/log/nginx/access.log", **kw)


def window(lines: int, quarantined: int = 0, imported: int = 0, unmatched: int = 0) -> LogHealth:
    h = LogHealth()
    h.note_batch(NOW - 30, lines, quarantined, imported, unmatched, ("other.example",))
    return h


def kinds(verdict: health.Verdict) -> set[str]:
    return set(verdict.kinds())


def test_a_fresh_healthy_log_has_no_problem() -> None:
    assert judge_log(facts(health=window(100, imported=100)), NOW).healthy


@pytest.mark.parametrize(
    ("quarantined", "wrong"), [(0, False), (49, False), (50, True), (100, True)]
)
def test_the_quarantined_share_of_the_window_names_a_wrong_format(
    quarantined: int, wrong: bool
) -> None:
    verdict = judge_log(facts(health=window(100, quarantined, 100 - quarantined)), NOW)
    assert (health.WRONG_FORMAT in kinds(verdict)) is wrong
    if wrong:
        [problem] = verdict.problems
        assert "not in its format (nginx_json)" in problem.message
        assert "contrib/nginx/matomo-rt-log-format.conf" in problem.fix


def test_what_the_lines_look_like_names_the_fix_when_known() -> None:
    h = window(100, 100, 0)
    h.detected = (
        "is combined (nginx's default) (100 of the last 100 lines), not nginx_json"
        ' — set format = "combined" for this log'
    )
    [problem] = judge_log(facts(health=h), NOW).problems
    assert problem.message.endswith(
        ": it is combined (nginx's default) (100 of the last 100 lines), not nginx_json"
    )
    assert problem.fix == 'set format = "combined" for this log'


def test_too_few_lines_say_nothing_about_the_format() -> None:
    assert judge_log(facts(health=window(health.MIN_WINDOW_LINES - 1, 9)), NOW).healthy


def test_the_window_keeps_recent_lines_only_so_a_fixed_format_recovers() -> None:
    h = LogHealth()
    h.note_batch(NOW - 7200, 300, 300, 0)
    assert health.WRONG_FORMAT in kinds(judge_log(facts(health=h), NOW))
    h.note_batch(NOW - 60, 300, 0, 300)
    assert sum(r[1] for r in h.window) < 300 + health.WINDOW_LINES
    assert health.WRONG_FORMAT not in kinds(judge_log(facts(health=h), NOW))


def test_lines_read_without_imports_for_stalled_after_is_stalled() -> None:
    h = LogHealth()
    h.note_batch(NOW - 3601, 50, 0, 0)
    h.note_batch(NOW - 100, 50, 0, 0)  # still nothing imported: the first read counts
    verdict = judge_log(facts(health=h), NOW)
    assert kinds(verdict) == {health.STALLED}
    assert "lines read for 1h but none imported" in verdict.problems[0].message
    assert judge_log(facts(health=h), NOW, Settings(stalled_after=7200)).healthy
    h.note_batch(NOW - 5, 1, 0, 1)
    assert judge_log(facts(health=h), NOW).healthy


def test_a_quiet_site_after_one_ignored_request_is_not_stalled() -> None:
    h = LogHealth()
    h.note_batch(NOW - 7200, 1, 0, 0)  # a bot's request, ignored; nothing since
    assert judge_log(facts(health=h), NOW).healthy


def test_an_earlier_import_of_the_same_pass_is_no_stall() -> None:
    h = LogHealth()
    h.note_batch(NOW - 7200, 0, 0, 40)  # a worker's partition committed its imports
    h.note_batch(NOW - 7200, 50, 0, 0, pass_imported=True)  # then the batch's lines
    assert h.waiting_since is None


def test_bytes_waiting_with_no_success_for_stalled_after_is_stalled() -> None:
    verdict = judge_log(facts(lag_bytes=5000, last_success=NOW - 4000), NOW)
    assert kinds(verdict) == {health.STALLED}
    assert "5,000 bytes waiting" in verdict.problems[0].message
    assert judge_log(facts(lag_bytes=5000, last_success=NOW - 100), NOW).healthy


def test_hosts_matching_no_site_are_named_with_their_share() -> None:
    verdict = judge_log(facts(health=window(100, imported=90, unmatched=10)), NOW)
    [problem] = verdict.problems
    assert problem.kind == health.UNMATCHED_HOSTS
    assert "10 of the last 100 requests (10%) matched no Matomo site" in problem.message
    assert "other.example" in problem.message
    quiet = Settings(unmatched_share=0.2)
    assert judge_log(facts(health=window(100, imported=90, unmatched=10)), NOW, quiet).healthy


def test_an_active_auth_pause_is_a_problem_and_hides_the_failure_it_caused() -> None:
    error = {"time": NOW - 5, "outcome": "auth", "reason": "HTTP 401"}
    verdict = judge_log(facts(auth_pause_until=NOW + 600, last_error=error), NOW)
    assert kinds(verdict) == {health.AUTH_PAUSED}
    assert "matomo.token_auth_file" in verdict.problems[0].fix


def test_a_failure_newer_than_the_last_success_is_failing_with_its_backoff() -> None:
    h = LogHealth(retry_at=NOW + 120, failures=3)
    error = {"time": NOW - 5, "outcome": "failed", "reason": "Connection\nrefused"}
    verdict = judge_log(facts(health=h, last_error=error, last_success=NOW - 60), NOW)
    [problem] = verdict.problems
    assert problem.kind == health.IMPORT_FAILING
    assert "Connection refused; next attempt in 2m (3 failures in a row)" in problem.message
    recovered = facts(health=h, last_error=error, last_success=NOW - 1)
    assert judge_log(recovered, NOW).healthy


def test_a_missing_log_never_read_is_a_problem_at_once() -> None:
    missing = (health.LOG_MISSING, "no such file")
    verdict = judge_log(facts(file_now=missing, ever_positioned=False), NOW)
    assert kinds(verdict) == {health.LOG_MISSING}
    assert "check logs.path" in verdict.problems[0].fix


def test_a_log_read_before_may_be_missing_for_a_rotation_s_moment() -> None:
    missing = (health.LOG_MISSING, "no such file")
    h = LogHealth()
    h.note_file(NOW - 10, missing)
    assert judge_log(facts(file_now=missing, health=h), NOW).healthy
    h = LogHealth()
    h.note_file(NOW - health.MISSING_GRACE_SECONDS - 1, missing)
    verdict = judge_log(facts(file_now=missing, health=h), NOW)
    assert kinds(verdict) == {health.LOG_MISSING}
    assert "(for 1m)" in verdict.problems[0].message


def test_unreadable_is_the_service_s_word_not_the_caller_s() -> None:
    h = LogHealth()
    h.note_file(NOW - 5, (health.LOG_UNREADABLE, "permission denied"))
    verdict = judge_log(facts(health=h), NOW)  # a caller (root) who can read it
    assert kinds(verdict) == {health.LOG_UNREADABLE}
    assert "SupplementaryGroups=adm" in verdict.problems[0].fix
    # A caller who cannot read it but the service can: not a problem.
    unreadable_here = (health.LOG_UNREADABLE, "permission denied")
    assert judge_log(facts(file_now=unreadable_here), NOW).healthy


def test_no_state_at_all_is_never_read() -> None:
    verdict = judge_log(facts(has_state=False, ever_positioned=False), NOW)
    assert kinds(verdict) == {health.NEVER_READ}
    assert "start the service" in verdict.problems[0].fix


def test_a_state_error_is_the_only_problem_shown() -> None:
    verdict = judge_log(facts(state_error="corrupt", lag_bytes=10, last_success=None), NOW)
    assert kinds(verdict) == {health.STATE_UNREADABLE}


def test_probe_file_names_missing_not_a_file_and_unreadable(tmp_path: Path) -> None:
    assert health.probe_file(tmp_path / "nope")[0] == health.LOG_MISSING
    assert health.probe_file(tmp_path)[0] == health.LOG_NOT_A_FILE
    log = tmp_path / "access.log"
    log.write_text("x\n")
    assert health.probe_file(log) is None
    if os.geteuid() != 0:  # root reads any file; the e2e test drops the capability instead
        log.chmod(0)
        assert health.probe_file(log) == (health.LOG_UNREADABLE, "permission denied")


def test_recorded_facts_survive_the_state_document() -> None:
    h = window(30, 2, 20, 1)
    h.note_file(NOW, (health.LOG_UNREADABLE, "permission denied"))
    h.retry_at, h.failures = NOW + 60, 2
    assert LogHealth.from_json(h.to_json()) == h
    assert LogHealth.from_json({"window": [["x"]], "failures": -1, "file": {"kind": 1}}) == (
        LogHealth()
    )
    assert LogHealth.from_json("damaged") == LogHealth()


def test_pause_until_lifts_with_another_token_or_a_later_success() -> None:
    stats = {"auth_pause": {"until": NOW + 600, "key": "k1"}}
    assert health.pause_until(stats, "k1", NOW) == NOW + 600
    assert health.pause_until(stats, None, NOW) == NOW + 600  # cannot tell: still paused
    assert health.pause_until(stats, "k2", NOW) is None
    assert health.pause_until(stats, "k1", NOW + 600) is None
    later = {**stats, "last_success": NOW + 600 - health.AUTH_PAUSE_SECONDS + 1}
    assert health.pause_until(later, "k1", NOW) is None


def test_archive_failing_and_stale() -> None:
    ok = ArchiveFacts(True, runs=3, last_outcome="success", last_success=NOW - 60)
    assert judge_archive(ok, NOW).healthy
    failed = ArchiveFacts(True, runs=3, last_outcome="failure", last_reason="exited 1: boom")
    assert kinds(judge_archive(failed, NOW)) == {health.ARCHIVE_FAILING, health.ARCHIVE_STALE}
    stale = ArchiveFacts(True, runs=3, last_outcome="warning", last_success=NOW - 4 * 3600)
    verdict = judge_archive(stale, NOW)
    assert kinds(verdict) == {health.ARCHIVE_STALE}
    assert "since 4h ago" in verdict.problems[0].message
    assert judge_archive(ArchiveFacts(True), NOW).healthy  # never ran: not stale yet
    assert judge_archive(ArchiveFacts(False, runs=3, last_success=NOW - 10**6), NOW).healthy


def test_an_archive_that_never_succeeded_is_stale_counted_from_the_service_s_start() -> None:
    """core:archive never ran to success (never ran at all: a schedule that does not fire, an
    archive job that fails before it records a run): stale once archive_stale_after has passed
    since the service started watching, not only after a first recorded run."""
    never = ArchiveFacts(True, watched_since=NOW - 4 * 3600)
    verdict = judge_archive(never, NOW)
    assert kinds(verdict) == {health.ARCHIVE_STALE}
    [problem] = verdict.problems
    assert "no core:archive run has succeeded since the service started 4h ago" in problem.message
    assert "matomo-rt -v archive" in problem.fix and "archive.schedule" in problem.fix
    assert judge_archive(ArchiveFacts(True, watched_since=NOW - 60), NOW).healthy
    assert judge_archive(ArchiveFacts(False, watched_since=NOW - 10**6), NOW).healthy
    # A success before the service started counts as usual.
    earlier = ArchiveFacts(True, runs=1, last_success=NOW - 60, watched_since=NOW - 4 * 3600)
    assert judge_archive(earlier, NOW).healthy


def test_a_state_that_cannot_be_written_is_a_problem_since_its_first_failure() -> None:
    """The service keeps its position in memory and imports nothing more: never "all fine"."""
    unwritable = "state.json: cannot write state: No space left on device"
    verdict = judge_log(facts(unwritable=unwritable, unwritable_since=NOW - 300), NOW)
    [problem] = verdict.problems
    assert problem.kind == health.STATE_UNWRITABLE
    assert problem.message.startswith("state cannot be written since ")
    assert "(5m ago): state.json: cannot write state: No space left on device" in problem.message
    assert "state.dir" in problem.fix and "nothing is lost" in problem.fix


def test_status_which_cannot_know_the_first_failure_gives_the_last_write() -> None:
    verdict = judge_log(
        facts(unwritable="read-only file system", last_written=NOW - 7200),
        NOW,
    )
    [problem] = verdict.problems
    assert problem.kind == health.STATE_UNWRITABLE
    assert "(2h ago): read-only file system" in problem.message


def test_an_unwritable_state_explains_the_stall() -> None:
    stalled = facts(lag_bytes=5000, last_success=NOW - 4000)
    assert kinds(judge_log(stalled, NOW)) == {health.STALLED}
    both = facts(
        lag_bytes=5000,
        last_success=NOW - 4000,
        unwritable="no space",
        unwritable_since=NOW - 3900,
    )
    assert kinds(judge_log(both, NOW)) == {health.STATE_UNWRITABLE}


def test_a_change_of_health_is_said_once_and_an_unwritable_state_is_recalled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from matomo_rt.health.announce import REMIND_SECONDS, Announcer

    said = Announcer(logging.getLogger("matomo_rt.test_announce"))
    unwritable = health.Problem(health.STATE_UNWRITABLE, "state cannot be written", "fix it")
    missing = health.Problem(health.LOG_MISSING, "no such file", "check logs.path")
    failing = health.Problem(health.IMPORT_FAILING, "import failing", "")
    bad = health.Verdict("access", (unwritable, missing, failing))

    def lines() -> list[str]:
        return [f"{r.levelname}: {r.getMessage()}" for r in caplog.records]

    with caplog.at_level(logging.INFO, logger="matomo_rt.test_announce"):
        for at in (0, 60, REMIND_SECONDS - 1):
            said.changes("access", bad, NOW + at, quiet={health.IMPORT_FAILING})
        assert lines() == [
            "ERROR: access: state cannot be written; fix it",
            "ERROR: access: no such file; check logs.path",
        ]
        caplog.clear()
        said.changes("access", bad, NOW + REMIND_SECONDS, quiet={health.IMPORT_FAILING})
        said.changes("access", bad, NOW + REMIND_SECONDS + 60, quiet={health.IMPORT_FAILING})
        assert lines() == ["ERROR: access: still: state cannot be written; fix it"]
        caplog.clear()
        said.changes("access", health.Verdict("access"), NOW + REMIND_SECONDS + 120)
        assert lines() == [
            "INFO: access: recovered: imports succeed again",
            "INFO: access: recovered: the log file is back",
            "INFO: access: recovered: the state is written again",
        ]
