"""core:archive: turn recorded visits into reports, on its own slower schedule.

Matomo's console has no lock of its own, and two archivers at once waste hours of CPU on a busy
Matomo, so runs are serialised by our flock. Exit 1 with "error or warning logs detected" means
the run finished but logged warnings: a warning, not a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from matomo_rt import execute, health
from matomo_rt.config import Config, ConfigError
from matomo_rt.matomo.importer import clip
from matomo_rt.store import SourceLock, StateError, ensure_dir, load_state, save_state

log = logging.getLogger(__name__)

SUCCESS, WARNING, FAILURE, TIMEOUT = "success", "warning", "failure", "timeout"
_WARNING_TEXT = "error or warning logs detected"


@dataclass(frozen=True)
class Counts:
    """Runs, failures and the last success's time: archive.state.json's once written, or the
    service's runs whose record the disk refused (for the next written record to add)."""

    runs: int = 0
    failures: int = 0
    last_success: Optional[float] = None


@dataclass(frozen=True)
class ArchiveResult:
    outcome: str
    reason: str
    duration: float
    #: Why the run is not in archive.state.json (the disk refused it), or None. Not raised:
    #: core:archive has worked by then, and its outcome must still reach the caller.
    unrecorded: Optional[str] = None
    #: The counts archive.state.json says now (this run and any carried in), None if unrecorded.
    recorded: Optional[Counts] = None


def build_argv(php: str, console: Path, url: str, flags: tuple[str, ...]) -> list[str]:
    # --no-ansi: Symfony colours its output even into a pipe, which garbles logged reasons.
    return [php, str(console), "core:archive", "--no-ansi", f"--url={url}", *flags]


def classify(
    returncode: Optional[int], stdout: str, stderr: str, timed_out: bool
) -> tuple[str, str]:
    """(outcome, reason) of one core:archive run."""
    if timed_out:
        return TIMEOUT, "core:archive ran longer than archive.timeout and was stopped"
    if returncode == 0:
        return SUCCESS, ""
    last = _failure_line(stderr) or _failure_line(stdout)
    if returncode == 1 and _WARNING_TEXT in stdout + stderr:
        return WARNING, "core:archive finished but logged warnings or errors (see its output)"
    if returncode is None:
        return FAILURE, "core:archive was killed"
    return FAILURE, f"core:archive exited {returncode}: {last}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CAUSE = re.compile(r"exception|SQLSTATE|error", re.IGNORECASE)


def _failure_line(text: str) -> str:
    """The line that says why: after an exception Symfony ends with its usage text, so the
    last line is useless; the first line naming an exception or error is the cause."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    for line in lines:
        if _CAUSE.search(line) and "error or warning logs detected" not in line:
            return clip(line, 300)
    return clip(lines[-1], 300) if lines else ""


def archive_paths(config: Config) -> tuple[Path, Path]:
    return config.state.dir / "archive.state.json", config.state.dir / "archive.lock"


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def _previous(state_path: Path) -> dict[str, Any]:
    """The last runs' record. A damaged one is moved aside (kept for inspection) and started
    anew, loudly: it only counts runs, and core:archive has already worked when this is read,
    so refusing to record that would make every run fail after the fact, forever."""
    try:
        return load_state(state_path) or {}
    except StateError as exc:
        if not state_path.is_file():
            raise  # unreadable (permissions) rather than damaged: say so, write nothing
        aside = state_path.with_name(state_path.name + ".damaged")
        try:
            os.replace(state_path, aside)
        except OSError:
            raise exc from None
        log.error(
            "%s: damaged (%s); moved to %s and writing a new one: the archive run counts restart"
            " at 0",
            state_path,
            str(exc).split(": ", 1)[-1].split(";")[0],
            aside,
        )
        return {}


class _Progress:
    """While core:archive runs: its elapsed time, so a one-shot run is not minutes of silence.

    On a terminal one line is rewritten every second; elsewhere (cron, a pipe) a log line every
    PROGRESS_EVERY seconds.
    """

    PROGRESS_EVERY = 10.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.done = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="archive-progress", daemon=True)

    def _run(self) -> None:
        every = 1.0 if self.tty else self.PROGRESS_EVERY
        while not self.done.wait(every):
            elapsed = time.monotonic() - self.started
            if self.tty:
                sys.stderr.write(f"\rcore:archive: running for {elapsed:.0f}s ")
                sys.stderr.flush()
            else:
                log.info("core:archive: still running (%.0fs)", elapsed)

    def __enter__(self) -> _Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        if self.tty and time.monotonic() - self.started >= 1.0:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _num(value: object) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def load_facts(config: Config) -> health.ArchiveFacts:
    """What the archive state says, for the service's memory (read once, at start)."""
    state_path, _ = archive_paths(config)
    try:
        document = load_state(state_path) or {}
    except (StateError, OSError) as exc:
        return health.ArchiveFacts(config.archive.enabled, state_error=str(exc))
    run = document.get("last_run")
    run = run if isinstance(run, dict) else {}
    return health.ArchiveFacts(
        config.archive.enabled,
        runs=int(_num(document.get("runs")) or 0),
        failures=int(_num(document.get("failures")) or 0),
        last_outcome=str(run["outcome"]) if "outcome" in run else None,
        last_reason=str(run.get("reason", "")),
        last_end=_num(run.get("end")),
        last_success=_num(document.get("last_success")),
        last_duration=_num(run.get("duration")),
    )


def carried(facts: health.ArchiveFacts) -> Counts:
    """What the service knows that archive.state.json may lack, for run_archive to record."""
    return Counts(facts.unrecorded_runs, facts.unrecorded_failures, facts.last_success)


def after_run(
    facts: health.ArchiveFacts, result: ArchiveResult, ended: float
) -> health.ArchiveFacts:
    """The facts once `result` is in: what the service knows without re-reading the state.

    A recorded run's counts are the file's (one-shot runs included), so memory and file agree;
    an unrecorded one is counted in memory and carried until a record is written."""
    failed = result.outcome in (FAILURE, TIMEOUT)
    if result.recorded is not None:
        counts, unrecorded_runs, unrecorded_failures = result.recorded, 0, 0
    else:
        counts = Counts(
            facts.runs + 1,
            facts.failures + failed,
            facts.last_success if failed else ended,
        )
        unrecorded_runs = facts.unrecorded_runs + 1
        unrecorded_failures = facts.unrecorded_failures + failed
    return dataclasses.replace(
        facts,
        state_error=None,
        runs=counts.runs,
        failures=counts.failures,
        last_outcome=result.outcome,
        last_reason=result.reason,
        last_end=ended,
        last_duration=result.duration,
        last_success=counts.last_success,
        unrecorded_runs=unrecorded_runs,
        unrecorded_failures=unrecorded_failures,
    )


def after_write(
    facts: health.ArchiveFacts, refused: Optional[str], now: float
) -> health.ArchiveFacts:
    """The facts once the record was written (`refused` None) or the disk refused it: the
    verdict's state_unwritable, since the first refused write, and the refused writes' count."""
    if refused is None:
        return dataclasses.replace(facts, unwritable=None, unwritable_since=None)
    return dataclasses.replace(
        facts,
        unwritable=refused,
        unwritable_since=facts.unwritable_since if facts.unwritable is not None else now,
        write_failures=facts.write_failures + 1,
    )


def _record(
    state_path: Path,
    started: float,
    ended: float,
    outcome: str,
    reason: str,
    carried: Counts = Counts(),
) -> Counts:
    """Add one run, and the `carried` runs whose records the disk refused, to
    archive.state.json; the counts written. StateError if it cannot be read or written.

    The file's counts plus the carried ones, not the larger of file and memory: a one-shot
    `matomo-rt archive` may have recorded runs the service never saw, and neither's may be
    lost to the other's. The last success is the later of the file's and the carried one."""
    previous = _previous(state_path)
    failed = outcome in (FAILURE, TIMEOUT)
    known = (_num(previous.get("last_success")), carried.last_success)
    counts = Counts(
        _count(previous.get("runs")) + carried.runs + 1,
        _count(previous.get("failures")) + carried.failures + failed,
        max((t for t in known if t is not None), default=None) if failed else ended,
    )
    record: dict[str, Any] = {
        "last_run": {
            "start": started,
            "end": ended,
            "outcome": outcome,
            "reason": reason,
            "duration": ended - started,
        },
        "runs": counts.runs,
        "failures": counts.failures,
    }
    if counts.last_success is not None:
        record["last_success"] = counts.last_success
    save_state(state_path, record)
    return counts


def run_archive(
    config: Config, progress: bool = False, carried: Counts = Counts()
) -> ArchiveResult:
    """Run core:archive once (never two at once) and record the outcome for `status`.

    `progress`: show the elapsed time while it runs (the one-shot command does). `carried`:
    the service's runs not yet in the file (see `carried()`); the one-shot command has none
    and counts from the file alone. A record the disk refuses is the result's `unrecorded`,
    for the caller to say (once, for the service); StateError only when the state directory
    or the lock cannot be had: nothing ran.
    """
    matomo = config.matomo
    if matomo.url is None or matomo.console is None:
        raise ConfigError([f"{config.source.name}: matomo.url and matomo.path: needed to archive"])
    state_path, lock_path = archive_paths(config)
    ensure_dir(config.state.dir)  # a first run from cron must not need it made by hand
    with SourceLock(lock_path):
        argv = build_argv(matomo.php, matomo.console, matomo.url, config.archive.flags)
        started = time.time()
        if progress:
            log.info("core:archive: started (it may take minutes on a large Matomo)")
        try:
            with _Progress() if progress else contextlib.nullcontext():
                done = execute.run(argv, timeout=config.archive.timeout, cwd=str(matomo.path))
            log.debug("%s", done.describe())
            for line in done.stdout.decode("utf-8", "replace").splitlines()[-20:]:
                log.debug("core:archive: %s", line)
            outcome, reason = classify(
                done.returncode,
                done.stdout.decode("utf-8", "replace"),
                done.stderr.decode("utf-8", "replace"),
                done.timed_out,
            )
        except execute.ExecError as exc:
            outcome, reason = FAILURE, str(exc)
        ended = time.time()
        unrecorded: Optional[str] = None
        recorded: Optional[Counts] = None
        try:
            recorded = _record(state_path, started, ended, outcome, reason, carried)
        except StateError as exc:
            unrecorded = str(exc)
        result = ArchiveResult(outcome, reason, ended - started, unrecorded, recorded)
    if outcome == SUCCESS:
        log.info("core:archive done in %.1fs", result.duration)
    elif outcome == WARNING:
        log.warning("%s", reason)
    else:
        log.error("%s", reason)
    return result
