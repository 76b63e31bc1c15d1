"""Say a change of health once: an ERROR when a problem appears, an INFO when it is over.

The service judges every log after each tick; logging the verdict itself would repeat the same
ERROR every interval (noise at 3 a.m.). A problem that stops every commit (the state cannot be
written) is repeated at most every REMIND_SECONDS while it lasts, so a log read hours later
still shows that it went on.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from matomo_rt.health.verdict import (
    ARCHIVE_FAILING,
    ARCHIVE_STALE,
    AUTH_PAUSED,
    IMPORT_FAILING,
    LOG_MISSING,
    LOG_NOT_A_FILE,
    LOG_UNREADABLE,
    STALLED,
    STATE_UNWRITABLE,
    UNMATCHED_HOSTS,
    WRONG_FORMAT,
    Verdict,
)

#: At most this often, a problem in REMINDED is logged again while it lasts.
REMIND_SECONDS = 30 * 60.0
REMINDED = frozenset({STATE_UNWRITABLE})
RECOVERED = {
    LOG_MISSING: "the log file is back",
    LOG_UNREADABLE: "the log file is readable again",
    LOG_NOT_A_FILE: "the log is a file again",
    WRONG_FORMAT: "recent lines are in the expected format again",
    STALLED: "requests reach Matomo again",
    UNMATCHED_HOSTS: "recent requests all match a Matomo site",
    AUTH_PAUSED: "the authentication pause is over",
    IMPORT_FAILING: "imports succeed again",
    STATE_UNWRITABLE: "the state is written again",
    ARCHIVE_FAILING: "core:archive succeeds again",
    ARCHIVE_STALE: "core:archive succeeds again",
}


class Announcer:
    """The problems last said per subject (a log's name, or "archive"), to log changes only."""

    def __init__(self, logger: logging.Logger, remind_seconds: float = REMIND_SECONDS) -> None:
        self.log = logger
        self.remind_seconds = remind_seconds
        self._problems: dict[str, frozenset[str]] = {}
        self._said: dict[tuple[str, str], float] = {}

    def changes(self, name: str, verdict: Verdict, now: float, quiet: Collection[str] = ()) -> None:
        """Log what changed since the last verdict on `name`. `quiet`: kinds whose start is
        logged where it happens (a failed import, a refused token); their end is said here."""
        before = self._problems.get(name, frozenset())
        for problem in verdict.problems:
            key = (name, problem.kind)
            if problem.kind in quiet:
                continue
            if problem.kind not in before:
                self.log.error("%s: %s", name, problem.line())
                self._said[key] = now
            elif problem.kind in REMINDED and now - self._said.get(key, now) >= self.remind_seconds:
                self.log.error("%s: still: %s", name, problem.line())
                self._said[key] = now
        said: list[str] = []
        for kind in sorted(before - verdict.kinds()):
            self._said.pop((name, kind), None)
            message = RECOVERED.get(kind, kind)
            if message not in said:
                said.append(message)
                self.log.info("%s: recovered: %s", name, message)
        self._problems[name] = verdict.kinds()
