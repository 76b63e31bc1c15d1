"""Health: one function from facts to a verdict, per log and for the service.

`status`, the metrics, `run`'s log lines and the exit codes all ask `judge_log` and
`judge_archive`, so they never disagree. The facts a verdict needs beyond the counters (a recent
window of lines, since when nothing was imported, the file's problem, the backoff) are kept by
:class:`LogHealth`: the service holds it in memory and persists it in the log's state document
(stats.health), where `status`, a separate process, reads the same facts back.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Optional

#: Problem kinds: stable names, used as the `problem` label of the metrics and in alert rules.
STATE_UNREADABLE = "state_unreadable"
LOG_MISSING = "log_missing"
LOG_UNREADABLE = "log_unreadable"
LOG_NOT_A_FILE = "log_not_a_file"
NEVER_READ = "never_read"
WRONG_FORMAT = "wrong_format"
STALLED = "stalled"
UNMATCHED_HOSTS = "unmatched_hosts"
AUTH_PAUSED = "auth_paused"
IMPORT_FAILING = "import_failing"
LOG_PROBLEMS = (
    STATE_UNREADABLE,
    LOG_MISSING,
    LOG_UNREADABLE,
    LOG_NOT_A_FILE,
    NEVER_READ,
    WRONG_FORMAT,
    STALLED,
    UNMATCHED_HOSTS,
    AUTH_PAUSED,
    IMPORT_FAILING,
)
ARCHIVE_FAILING = "archive_failing"
ARCHIVE_STALE = "archive_stale"
ARCHIVE_PROBLEMS = (ARCHIVE_FAILING, ARCHIVE_STALE)

#: How long imports pause after Matomo refused the token (unless the token changes).
AUTH_PAUSE_SECONDS = 3600.0
#: A log that was read before may vanish for a moment while it is rotated (renamed, then
#: reopened by the web server): missing for longer than this is a problem.
MISSING_GRACE_SECONDS = 60.0
#: The recent window: the last batches holding at least this many lines.
WINDOW_LINES = 200
#: Fewer recent lines than this say nothing about the format.
MIN_WINDOW_LINES = 10
#: Archive outcomes that count as a failed run (a "warning" run did archive).
ARCHIVE_FAILED = ("failure", "timeout")
CONTRIB_LOG_FORMAT = "contrib/nginx/matomo-rt-log-format.conf"


@dataclass(frozen=True)
class Settings:
    """The [health] table: when a fact becomes a problem."""

    stalled_after: float = 3600.0
    wrong_format_share: float = 0.5
    unmatched_share: float = 0.01
    archive_stale_after: float = 3 * 3600.0


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str  # what is wrong, naming the thing at fault
    fix: str  # what to do about it

    def line(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


@dataclass(frozen=True)
class Verdict:
    name: str
    problems: tuple[Problem, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.problems

    def kinds(self) -> frozenset[str]:
        return frozenset(p.kind for p in self.problems)


# ------------------------------------------------------------------------------------------
# The recorded facts of one log
# ------------------------------------------------------------------------------------------


def probe_file(path: os.PathLike[str] | str) -> Optional[tuple[str, str]]:
    """(problem kind, reason) when this process cannot read the log at `path`, else None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return LOG_MISSING, "no such file"
        if exc.errno == errno.EACCES:
            return LOG_UNREADABLE, "permission denied (on a parent directory)"
        return LOG_UNREADABLE, (exc.strerror or str(exc)).lower()
    if not stat.S_ISREG(st.st_mode):
        return LOG_NOT_A_FILE, "not a regular file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return LOG_MISSING, "no such file"
        return LOG_UNREADABLE, (exc.strerror or str(exc)).lower()
    os.close(fd)
    return None


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def pause_until(stats: dict[str, Any], key: Optional[str], now: float) -> Optional[float]:
    """When the authentication pause recorded in `stats` ends, if it holds at `now` for `key`
    (today's URL and token; None when this process cannot read the token); else None.

    The pause is recorded under the key of the token Matomo refused: another token lifts it,
    and so does a successful import after it began.
    """
    pause = stats.get("auth_pause")
    if not isinstance(pause, dict) or (key is not None and pause.get("key") != key):
        return None
    until = _num(pause.get("until"))
    if until is None or now >= until:
        return None
    last_success = _num(stats.get("last_success"))
    if last_success is not None and last_success > until - AUTH_PAUSE_SECONDS:
        return None
    return until


@dataclass
class LogHealth:
    """What one log's verdict needs beyond its counters; persisted as stats["health"]."""

    #: Recent batches, oldest first: [time, lines, quarantined, imported, unmatched].
    window: list[list[float]] = field(default_factory=list)
    #: When lines were first read after the last import (None: something was imported since).
    waiting_since: Optional[float] = None
    last_imported: Optional[float] = None
    #: When lines were last read (a quiet site after one ignored request is not stalled).
    last_read: Optional[float] = None
    #: Host names of the last batch that had requests matching no site, and when.
    unmatched_hosts: list[str] = field(default_factory=list)
    unmatched_time: Optional[float] = None
    #: The live file's problem as the service sees it: {"kind", "reason", "since"}.
    file: Optional[dict[str, Any]] = None
    retry_at: Optional[float] = None
    failures: int = 0
    #: While the window says wrong format: what the log's recent lines look like, with the
    #: fix (matomo_rt.detect's "what — fix"), found once when the share crossed the line.
    detected: Optional[str] = None

    @classmethod
    def from_json(cls, raw: Any) -> LogHealth:
        """From the state document; anything damaged starts empty rather than crash."""
        if not isinstance(raw, dict):
            return cls()
        window = [
            [float(x) for x in row]
            for row in raw.get("window") or []
            if isinstance(row, list) and len(row) == 5 and all(_num(x) is not None for x in row)
        ]
        file = raw.get("file")
        if not (
            isinstance(file, dict)
            and file.get("kind") in (LOG_MISSING, LOG_UNREADABLE, LOG_NOT_A_FILE)
        ):
            file = None
        hosts = raw.get("unmatched_hosts")
        return cls(
            window=window,
            waiting_since=_num(raw.get("waiting_since")),
            last_imported=_num(raw.get("last_imported")),
            last_read=_num(raw.get("last_read")),
            unmatched_hosts=[h for h in hosts if isinstance(h, str)][:10]
            if isinstance(hosts, list)
            else [],
            unmatched_time=_num(raw.get("unmatched_time")),
            file=file,
            retry_at=_num(raw.get("retry_at")),
            failures=_int(raw.get("failures")),
            detected=raw["detected"] if isinstance(raw.get("detected"), str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "waiting_since": self.waiting_since,
            "last_imported": self.last_imported,
            "last_read": self.last_read,
            "unmatched_hosts": self.unmatched_hosts,
            "unmatched_time": self.unmatched_time,
            "file": self.file,
            "retry_at": self.retry_at,
            "failures": self.failures,
            "detected": self.detected,
        }

    def note_batch(
        self,
        now: float,
        lines: int,
        quarantined: int,
        imported: int,
        unmatched: int = 0,
        hosts: tuple[str, ...] = (),
        pass_imported: bool = False,
    ) -> None:
        """A commit: into the window (same-minute commits share a row). `pass_imported`: the
        same pass imported lines in an earlier commit (workers commit their imports before
        the batch's lines)."""
        if lines <= 0 and imported <= 0:
            return
        row = [now, lines, quarantined, imported, unmatched]
        last = self.window[-1] if self.window else None
        if last is not None and int(last[0] // 60) == int(now // 60):
            self.window[-1] = [now, *(a + b for a, b in zip(last[1:], row[1:]))]
        else:
            self.window.append(row)
        while len(self.window) > 1 and sum(r[1] for r in self.window[1:]) >= WINDOW_LINES:
            del self.window[0]
        if imported > 0:
            self.last_imported = now
        if lines > 0:
            self.last_read = now
        if imported > 0 or pass_imported:
            self.waiting_since = None
        elif lines > 0 and self.waiting_since is None:
            self.waiting_since = now
        if hosts:
            self.unmatched_hosts = sorted(hosts)[:10]
            self.unmatched_time = now

    def note_file(self, now: float, problem: Optional[tuple[str, str]]) -> bool:
        """The live file's problem now (None: readable); True when that changed."""
        if problem is None:
            changed = self.file is not None
            self.file = None
            return changed
        kind, reason = problem
        if self.file is not None and self.file.get("kind") == kind:
            return False
        self.file = {"kind": kind, "reason": reason, "since": now}
        return True


# ------------------------------------------------------------------------------------------
# Facts -> verdict
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFacts:
    """Everything the verdict on one log looks at, wherever it came from."""

    name: str
    path: str
    state_error: Optional[str] = None
    has_state: bool = True
    #: A position on a file exists (something was read, or the first plan saw the file).
    ever_positioned: bool = True
    health: LogHealth = field(default_factory=LogHealth)
    lag_bytes: Optional[int] = None
    last_success: Optional[float] = None
    last_error: Optional[dict[str, Any]] = None
    auth_pause_until: Optional[float] = None
    #: The format the log is read in (logs[].format), named by the wrong-format verdict.
    log_format: str = "nginx_json"
    #: The file's problem as this process sees it now (missing and not-a-file look the same
    #: to every user; unreadable is the service's word, from `health.file`).
    file_now: Optional[tuple[str, str]] = None


def log_facts(
    name: str,
    path: str,
    document: Optional[dict[str, Any]],
    *,
    state_error: Optional[str] = None,
    file_now: Optional[tuple[str, str]] = None,
    lag_bytes: Optional[int] = None,
    token_key: Optional[str] = None,
    recorded: Optional[LogHealth] = None,
    log_format: str = "nginx_json",
    now: float,
) -> LogFacts:
    """The facts of one log from its state document: the service's (in memory) and
    `status`'s (read from the file) are the same document, so both reach the same verdict."""
    if not document:
        return LogFacts(
            name,
            path,
            state_error,
            has_state=False,
            ever_positioned=False,
            file_now=file_now,
            log_format=log_format,
        )
    stats = document.get("stats")
    stats = stats if isinstance(stats, dict) else {}
    position = document.get("position")
    position = position if isinstance(position, dict) else {}
    error = stats.get("last_error")
    return LogFacts(
        name,
        path,
        state_error,
        has_state=True,
        ever_positioned=bool(position.get("current") or position.get("finished")),
        health=recorded if recorded is not None else LogHealth.from_json(stats.get("health")),
        lag_bytes=lag_bytes,
        last_success=_num(stats.get("last_success")),
        last_error=error if isinstance(error, dict) else None,
        auth_pause_until=pause_until(stats, token_key, now),
        file_now=file_now,
        log_format=log_format,
    )


def _share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def judge_log(facts: LogFacts, now: float, settings: Settings = Settings()) -> Verdict:
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
    if file_problem is not None:
        problems.append(file_problem)
    elif not facts.has_state:
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
        and (_num(error.get("time")) or 0) > (facts.last_success or 0)
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
        since = _num(recorded.get("since")) or now
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


@dataclass(frozen=True)
class ArchiveFacts:
    enabled: bool
    state_error: Optional[str] = None
    runs: int = 0
    last_outcome: Optional[str] = None
    last_reason: str = ""
    last_end: Optional[float] = None
    last_success: Optional[float] = None
    failures: int = 0
    last_duration: Optional[float] = None


def judge_archive(facts: ArchiveFacts, now: float, settings: Settings = Settings()) -> Verdict:
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
    if facts.enabled and facts.runs:
        last = facts.last_success
        if last is None or now - last >= settings.archive_stale_after:
            what = "never" if last is None else f"{_ago(now - last)} ago"
            problems.append(
                Problem(
                    ARCHIVE_STALE,
                    f"no successful core:archive run since {what}",
                    "check that the service (or the archive timer) runs and archive.schedule",
                )
            )
    return Verdict("archive", tuple(problems))
