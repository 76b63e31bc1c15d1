"""The facts a health verdict looks at, and how the service records them.

Beyond the counters of its state document, a log's verdict needs a recent window of lines,
since when nothing was imported, the file's problem and the backoff: :class:`LogHealth` keeps
them. The service holds it in memory and persists it in the log's state document
(stats.health), where `status`, a separate process, reads the same facts back; `log_facts`
turns either document into the same :class:`LogFacts`. Nothing here judges: that is
matomo_rt.health.judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from matomo_rt.health.verdict import LOG_MISSING, LOG_NOT_A_FILE, LOG_UNREADABLE

#: How long imports pause after Matomo refused the token (unless the token changes).
AUTH_PAUSE_SECONDS = 3600.0
#: The recent window: the last batches holding at least this many lines.
WINDOW_LINES = 200


def number(value: Any) -> Optional[float]:
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
    until = number(pause.get("until"))
    if until is None or now >= until:
        return None
    last_success = number(stats.get("last_success"))
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
            if isinstance(row, list) and len(row) == 5 and all(number(x) is not None for x in row)
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
            waiting_since=number(raw.get("waiting_since")),
            last_imported=number(raw.get("last_imported")),
            last_read=number(raw.get("last_read")),
            unmatched_hosts=[h for h in hosts if isinstance(h, str)][:10]
            if isinstance(hosts, list)
            else [],
            unmatched_time=number(raw.get("unmatched_time")),
            file=file,
            retry_at=number(raw.get("retry_at")),
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
    #: Why the state cannot be written (the disk refused a write), or None.
    unwritable: Optional[str] = None
    #: Since when (the service's first failed write); None: unknown (`status` is not the
    #: process that failed), then `last_written` says since when nothing was committed.
    unwritable_since: Optional[float] = None
    #: When the state document was last written (its "updated").
    last_written: Optional[float] = None


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
    unwritable: Optional[str] = None,
    unwritable_since: Optional[float] = None,
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
            unwritable=unwritable,
            unwritable_since=unwritable_since,
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
        last_success=number(stats.get("last_success")),
        last_error=error if isinstance(error, dict) else None,
        auth_pause_until=pause_until(stats, token_key, now),
        file_now=file_now,
        log_format=log_format,
        unwritable=unwritable,
        unwritable_since=unwritable_since,
        last_written=number(document.get("updated")),
    )


@dataclass(frozen=True)
class ArchiveFacts:
    """What core:archive did (its state, or the service's memory of it)."""

    enabled: bool
    state_error: Optional[str] = None
    runs: int = 0
    last_outcome: Optional[str] = None
    last_reason: str = ""
    last_end: Optional[float] = None
    last_success: Optional[float] = None
    failures: int = 0
    last_duration: Optional[float] = None
    #: Since when a run is expected: the service's start (None: no service runs). A
    #: core:archive that never succeeded is stale once archive_stale_after has passed since.
    watched_since: Optional[float] = None
    #: Why the last run could not be recorded (the disk refused archive.state.json or its
    #: lock), or None; since when (the first refused write), and how many were refused.
    unwritable: Optional[str] = None
    unwritable_since: Optional[float] = None
    write_failures: int = 0
    #: Runs (and failures among them) in this memory whose record the disk refused: the next
    #: record written adds them to archive.state.json's counts, so the file catches up.
    unrecorded_runs: int = 0
    unrecorded_failures: int = 0
