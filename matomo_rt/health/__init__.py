"""Health: never "all fine" while nothing arrives.

One verdict per log and for core:archive, shared by `status`, the metrics, `run`'s log lines
and the exit codes, so they never disagree. Its parts, each owning its own:

- :mod:`.verdict`: the vocabulary (problem kinds, Problem, Verdict, the [health] settings);
- :mod:`.facts`: what a verdict looks at and how the service records it (LogHealth, log_facts,
  ArchiveFacts), and :mod:`.probes`: what a process sees now (probe_file, probe_state_dir);
- :mod:`.judge`: facts -> verdict (judge_log, judge_archive);
- :mod:`.announce`: the service's log of a change of health, said once.

Callers use this package's names (``health.judge_log``, ``health.LOG_MISSING``).
"""

from matomo_rt.health.facts import (
    AUTH_PAUSE_SECONDS,
    WINDOW_LINES,
    ArchiveFacts,
    LogFacts,
    LogHealth,
    log_facts,
    pause_until,
)
from matomo_rt.health.judge import (
    CONTRIB_LOG_FORMAT,
    MIN_WINDOW_LINES,
    MISSING_GRACE_SECONDS,
    describe_file,
    judge_archive,
    judge_log,
    wrong_format,
)
from matomo_rt.health.probes import probe_file, probe_state_dir
from matomo_rt.health.verdict import (
    ARCHIVE_FAILED,
    ARCHIVE_FAILING,
    ARCHIVE_PROBLEMS,
    ARCHIVE_STALE,
    AUTH_PAUSED,
    IMPORT_FAILING,
    LOG_MISSING,
    LOG_NOT_A_FILE,
    LOG_PROBLEMS,
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

__all__ = [
    "ARCHIVE_FAILED",
    "ARCHIVE_FAILING",
    "ARCHIVE_PROBLEMS",
    "ARCHIVE_STALE",
    "AUTH_PAUSED",
    "AUTH_PAUSE_SECONDS",
    "CONTRIB_LOG_FORMAT",
    "IMPORT_FAILING",
    "LOG_MISSING",
    "LOG_NOT_A_FILE",
    "LOG_PROBLEMS",
    "LOG_UNREADABLE",
    "MIN_WINDOW_LINES",
    "MISSING_GRACE_SECONDS",
    "NEVER_READ",
    "STALLED",
    "STATE_UNREADABLE",
    "STATE_UNWRITABLE",
    "UNMATCHED_HOSTS",
    "WINDOW_LINES",
    "WRONG_FORMAT",
    "ArchiveFacts",
    "LogFacts",
    "LogHealth",
    "Problem",
    "Settings",
    "Verdict",
    "describe_file",
    "judge_archive",
    "judge_log",
    "log_facts",
    "pause_until",
    "probe_file",
    "probe_state_dir",
    "wrong_format",
]
