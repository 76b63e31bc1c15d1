"""The verdict's vocabulary: problem kinds, a problem with its fix, a verdict, and the [health]
settings that say when a fact becomes a problem.

The kinds are stable names: the `problem` label of the metrics and the alert rules use them.
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_UNREADABLE = "state_unreadable"
STATE_UNWRITABLE = "state_unwritable"
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
    STATE_UNWRITABLE,
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
ARCHIVE_PROBLEMS = (ARCHIVE_FAILING, ARCHIVE_STALE, STATE_UNWRITABLE)

#: Archive outcomes that count as a failed run (a "warning" run did archive).
ARCHIVE_FAILED = ("failure", "timeout")


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
