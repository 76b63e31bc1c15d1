"""Facts -> verdict: one function per subject (a log, core:archive), so that `status`, the
metrics, `run`'s log lines and the exit codes never disagree.

Each problem names the thing at fault and what to do; the thresholds are the [health] settings.
"""

from __future__ import annotations

import time
from typing import Optional

from matomo_rt.health.facts import ArchiveFacts, LogFacts, LogHealth, number
from matomo_rt.health.verdict import (
    ARCHIVE_FAILED,
    ARCHIVE_FAILING,
    ARCHIVE_STALE,
    AUTH_PAUSED,
    IMPORT_FAILING,
    LOG_MISSING,
    LOG_NOT_A_FILE,
    LOG_UNREADABLE,
    NEVER_READ,
    STALLED,
    STATE_UNREADABLE,
    STATE_UNWRITABLE,
    UNMATCHED_HOSTS,
    WRONG_FORMAT,
    Problem,
    Settings,
    Verdict,
)

#: A log that was read before may vanish for a moment while it is rotated (renamed, then
#: reopened by the web server): missing for longer than this is a problem.
MISSING_GRACE_SECONDS = 60.0
#: Fewer recent lines than this say nothing about the format.
MIN_WINDOW_LINES = 10
CONTRIB_LOG_FORMAT = "contrib/nginx/matomo-rt-log-format.conf"
#: The [health] settings when none are given.
DEFAULTS = Settings()


def _share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def judge_log(facts: LogFacts, now: float, settings: Settings = DEFAULTS) -> Verdict:
    """The verdict on one log: every problem, each with what to do."""
    problems: list[Problem] = []
    path = facts.path
    if facts.state_error:
        problems.append(
            Problem(STATE_UNREADABLE, f"state file unreadable: {facts.state_error}", "")
        )
        return Verdict(facts.name, tuple(problems))
    h = facts.health
    file_problem = _file_problem(facts, now)
    if facts.unwritable is not None:
        problems.append(_unwritable(facts, now))
    if file_problem is not None:
        problems.append(file_problem)
    elif not facts.has_state and facts.unwritable is None:
        problems.append(
            Problem(
                NEVER_READ,
                f"{path}: never read (no state yet)",
                "start the service (`systemctl start matomo-rt`) or run `matomo-rt import`",
            )
        )
    lines = sum(r[1] for r in h.window)
    quarantined = sum(r[2] for r in h.window)
    if wrong_format(h, settings):
        fix = "set the log's format (logs[].format) to the one the web server writes"
        if facts.log_format == "nginx_json":
            fix = f"use the log_format of {CONTRIB_LOG_FORMAT} in nginx, or {fix}"
        looks = ""
        if h.detected:
            what, _, detected_fix = h.detected.partition(" — ")
            looks = f": it {what}" if what.startswith("is ") else f": {what}"
            fix = detected_fix or fix
        problems.append(
            Problem(
                WRONG_FORMAT,
                f"{path}: {quarantined:,.0f} of the last {lines:,.0f} lines quarantined or "
                f"unparseable ({_share(quarantined, lines)}): the log is not in its format "
                f"({facts.log_format}){looks}",
                fix,
            )
        )
    unmatched = sum(r[4] for r in h.window)
    if lines and unmatched and unmatched / lines >= settings.unmatched_share:
        hosts = ", ".join(h.unmatched_hosts) or "?"
        problems.append(
            Problem(
                UNMATCHED_HOSTS,
                f"{unmatched:,.0f} of the last {lines:,.0f} requests ({_share(unmatched, lines)}) "
                f"matched no Matomo site (hosts: {hosts})",
                "add the site (or the host as an alias URL) in Matomo, or set "
                "--idsite-fallback=ID or idsite in the log's config",
            )
        )
    if facts.auth_pause_until is not None and facts.auth_pause_until > now:
        problems.append(
            Problem(
                AUTH_PAUSED,
                f"imports paused for {_ago(facts.auth_pause_until - now)} more: Matomo refused "
                "the token",
                "put a valid token_auth (with write access to the sites) in "
                "matomo.token_auth_file: the pause lifts as soon as it changes",
            )
        )
    error = facts.last_error
    if (
        AUTH_PAUSED not in {p.kind for p in problems}
        and error is not None
        and (number(error.get("time")) or 0) > (facts.last_success or 0)
    ):
        retry = ""
        if h.retry_at is not None and h.retry_at > now:
            retry = f"; next attempt in {_ago(h.retry_at - now)} ({h.failures} failures in a row)"
        reason = " ".join(str(error.get("reason", "")).split())
        problems.append(
            Problem(
                IMPORT_FAILING,
                f"import failing ({error.get('outcome', '?')}): {reason}{retry}",
                "fix what the reason names; the batch is kept and retried, nothing is lost",
            )
        )
    stalled = _stalled(facts, now, settings)
    # A stall is news only when nothing above already explains it.
    if stalled is not None and {p.kind for p in problems} <= {UNMATCHED_HOSTS}:
        problems.append(stalled)
    return Verdict(facts.name, tuple(problems))


def _since(since: Optional[float], now: float) -> str:
    if since is None:
        return ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    return f" since {stamp} ({_ago(max(now - since, 0.0))} ago)"


def _unwritable(facts: LogFacts, now: float) -> Problem:
    """Nothing can be committed: the position stays in memory, nothing more is imported."""
    when = _since(facts.unwritable_since or facts.last_written, now)
    return Problem(
        STATE_UNWRITABLE,
        f"state cannot be written{when}: {facts.unwritable}",
        "free space on the file system of state.dir, or make state.dir writable for the"
        " service's user (and its file system read-write); nothing is lost: the service keeps"
        " the position in memory, imports nothing more until it is written, and says when",
    )


def wrong_format(h: LogHealth, settings: Settings) -> bool:
    """Whether the recent window is mostly held back: the log is in another format."""
    lines = sum(r[1] for r in h.window)
    quarantined = sum(r[2] for r in h.window)
    return lines >= MIN_WINDOW_LINES and quarantined / lines >= settings.wrong_format_share


def _file_problem(facts: LogFacts, now: float) -> Optional[Problem]:
    """Missing and not-a-file look the same to every process; unreadable is the service's
    word (status may run as root and read what the service cannot)."""
    recorded = facts.health.file
    if facts.file_now is not None and facts.file_now[0] != LOG_UNREADABLE:
        kind, reason = facts.file_now
    elif recorded is not None and recorded.get("kind") == LOG_UNREADABLE:
        kind, reason = LOG_UNREADABLE, str(recorded.get("reason", ""))
    else:
        return None
    since = now
    if recorded is not None and recorded.get("kind") == kind:
        since = number(recorded.get("since")) or now
    if kind == LOG_MISSING and facts.ever_positioned and now - since < MISSING_GRACE_SECONDS:
        return None  # being rotated, most likely
    return describe_file(kind, reason, facts.path, now - since)


def describe_file(kind: str, reason: str, path: str, for_seconds: float = 0.0) -> Problem:
    """The problem of a log file that is missing, unreadable or not a file, with the fix."""
    since = f" (for {_ago(for_seconds)})" if for_seconds >= 60 else ""
    if kind == LOG_MISSING:
        return Problem(
            LOG_MISSING,
            f"{path}: no such file{since}",
            "check logs.path in the config and the web server's access_log line",
        )
    if kind == LOG_NOT_A_FILE:
        return Problem(
            LOG_NOT_A_FILE, f"{path}: not a regular file", "point logs.path at the log file"
        )
    return Problem(
        LOG_UNREADABLE,
        f"{path}: cannot be read by the service: {reason}{since}",
        "add the service's user to the log's group (adm on Debian: SupplementaryGroups=adm) "
        "or make the log readable by it",
    )


def _stalled(facts: LogFacts, now: float, settings: Settings) -> Optional[Problem]:
    """Lines arrive but nothing reaches Matomo for longer than health.stalled_after."""
    h = facts.health
    limit = settings.stalled_after
    still_arriving = h.last_read is not None and now - h.last_read < limit
    if h.waiting_since is not None and now - h.waiting_since >= limit and still_arriving:
        return Problem(
            STALLED,
            f"lines read for {_ago(now - h.waiting_since)} but none imported",
            "see `matomo-rt status` totals (ignored, quarantined) and import_logs.py's reasons "
            "with `matomo-rt -v import`",
        )
    if facts.lag_bytes and facts.last_success is not None and now - facts.last_success >= limit:
        return Problem(
            STALLED,
            f"{facts.lag_bytes:,} bytes waiting, nothing imported for "
            f"{_ago(now - facts.last_success)}",
            "is the service running (`systemctl status matomo-rt`)? see its log",
        )
    return None


def judge_archive(facts: ArchiveFacts, now: float, settings: Settings = DEFAULTS) -> Verdict:
    """The verdict on core:archive: failing, or no success for archive_stale_after."""
    problems = []
    if facts.state_error:
        problems.append(
            Problem(ARCHIVE_FAILING, f"archive state unreadable: {facts.state_error}", "")
        )
    elif facts.last_outcome in ARCHIVE_FAILED:
        reason = " ".join(facts.last_reason.split())
        problems.append(
            Problem(
                ARCHIVE_FAILING,
                f"the last core:archive run failed ({facts.last_outcome}): {reason}",
                "run `matomo-rt -v archive` to see core:archive's output",
            )
        )
    if facts.unwritable is not None:
        when = _since(facts.unwritable_since, now)
        problems.append(
            Problem(
                STATE_UNWRITABLE,
                f"state cannot be written{when}: {facts.unwritable}",
                "free space on the file system of state.dir, or make state.dir writable for the"
                " service's user; meanwhile the service's metrics show the runs (`status`"
                " shows the last one recorded)",
            )
        )
    stale = _archive_stale(facts, now, settings.archive_stale_after)
    if stale is not None:
        problems.append(stale)
    return Verdict("archive", tuple(problems))


def _archive_stale(facts: ArchiveFacts, now: float, after: float) -> Optional[Problem]:
    """No successful run for `after`: counted from the last success, or, when none ever
    succeeded, from the service's start (a run that never happens records nothing)."""
    if not facts.enabled:
        return None
    last = facts.last_success
    if last is not None:
        if now - last < after:
            return None
        what = f"no successful core:archive run since {_ago(now - last)} ago"
    elif facts.runs:
        runs = f"{facts.runs:,} run{'s' if facts.runs > 1 else ''}"
        what = f"no core:archive run has ever succeeded ({runs})"
    elif facts.watched_since is not None and now - facts.watched_since >= after:
        what = (
            "no core:archive run has succeeded since the service started"
            f" {_ago(now - facts.watched_since)} ago"
        )
        return Problem(
            ARCHIVE_STALE,
            what,
            "check archive.schedule, and run `matomo-rt -v archive` to see whether core:archive"
            " can run at all",
        )
    else:
        return None
    return Problem(
        ARCHIVE_STALE,
        what,
        "check that the service (or the archive timer) runs and archive.schedule",
    )
