"""The one-shot commands (`import`, …): the same functions the service's jobs call."""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

from matomo_rt import health
from matomo_rt.config import Config, ConfigError, import_problems
from matomo_rt.matomo import importer
from matomo_rt.meter import eta
from matomo_rt.openbatch import load_open
from matomo_rt.pipeline import PassReport, Source, open_sources
from matomo_rt.store import StateError, ensure_dir
from matomo_rt.tail import LockedError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 78
EXIT_DATAERR, EXIT_NOINPUT, EXIT_TEMPFAIL, EXIT_NOPERM = 65, 66, 75, 77
PROGRESS_MIN_BYTES = 64 << 20


class _Progress:
    """A one-line progress display on a terminal, for a large backlog only."""

    def __init__(self, source: Source) -> None:
        lag = source.lag_bytes() or 0
        self.total = lag
        self.enabled = sys.stderr.isatty() and lag >= PROGRESS_MIN_BYTES
        self.source = source
        self.started = time.monotonic()

    def __call__(self, report: PassReport) -> None:
        if not self.enabled:
            return
        left = self.source.lag_bytes() or 0
        done = max(self.total - left, 0)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        # The rate of everything committed so far: with import.workers, all of them together.
        rate = done / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        left_text = f", {eta(left / rate)} left" if rate > 0 and left > 0 else ""
        sys.stderr.write(
            f"\r{self.source.name}: {done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB ({pct:.0f}%),"
            f" {report.lines_read:,} lines, {report.lines_read / elapsed:,.0f} lines/s"
            f"{left_text}   "
        )
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def run_import(config: Config, names: Optional[list[str]], dry_run: bool = False) -> int:
    """Import every (named) log until caught up; the worst outcome decides the exit code."""
    problems = import_problems(config)
    if problems:
        raise ConfigError(problems)
    ensure_dir(config.state.dir)  # a first run from cron must not need it made by hand
    codes = []
    for source in open_sources(config, names, dry_run):
        try:
            source.open()
        except LockedError as exc:
            log.error("%s", exc)
            codes.append(EXIT_TEMPFAIL)
            continue
        try:
            codes.append(_import_one(source))
        finally:
            source.close()
    return max(codes, default=EXIT_OK, key=_severity)


def _import_one(source: Source) -> int:
    progress = _Progress(source)
    total = PassReport(source.name)
    while True:
        report = source.run_pass(on_batch=progress)
        total.batches += report.batches
        total.lines_read += report.lines_read
        total.imported += report.imported
        total.quarantined += report.quarantined
        if report.error is not None or report.caught_up:
            break
    progress.finish()
    if report.file_problem is not None:
        # README: 66 for a log that is missing or unreadable; rotated files found beside a
        # missing one were imported above all the same.
        kind, reason = report.file_problem
        path = str(source.log_config.path)
        log.error("%s: %s", source.name, health.describe_file(kind, reason, path).line())
        return EXIT_NOINPUT
    if report.error is not None:
        log.error("%s: %s", source.name, report.error)
        if report.outcome == importer.AUTH:
            return EXIT_NOPERM
        if report.outcome == importer.USAGE:
            return EXIT_CONFIG
        return EXIT_FAILURE
    log.info(
        "%s: caught up: %d lines read, %d imported, %d quarantined, %d batches",
        source.name,
        total.lines_read,
        total.imported,
        total.quarantined,
        total.batches,
    )
    for problem in source.verdict().problems:
        if problem.kind == health.WRONG_FORMAT:
            log.error("%s: %s", source.name, problem.line())
            return EXIT_DATAERR
    return EXIT_OK


def _severity(code: int) -> int:
    return {
        EXIT_OK: 0,
        EXIT_TEMPFAIL: 1,
        EXIT_FAILURE: 2,
        EXIT_DATAERR: 2,
        EXIT_NOINPUT: 3,
        EXIT_NOPERM: 4,
        EXIT_CONFIG: 5,
    }.get(code, 2)


def run_seek(config: Config, name: str, to: str) -> int:
    """Move one log's committed position; its statistics are kept."""
    ensure_dir(config.state.dir)
    source = Source(config, config.log(name))
    try:
        source.open()
    except LockedError as exc:
        log.error("%s (stop it before seeking)", exc)
        return EXIT_TEMPFAIL
    try:
        try:
            opened = load_open(source)
        except StateError:
            opened = None  # damaged: seek moves past it all the same
        try:
            position = source.seek(to)
        except ValueError as exc:
            log.error("seek --to %s: %s", to, exc)
            return 2
        if opened is not None:
            log.warning(
                "%s: the open batch of %d lines is left behind: %d of its requests are not in"
                " Matomo and will not be sent",
                name,
                opened.lines,
                opened.pending,
            )
        current = position.current
        if to == "oldest":
            log.info(
                "%s: next import starts at the oldest generation beside %s, then the live file",
                name,
                config.log(name).path,
            )
        else:
            log.info(
                "%s: next import starts at byte %s of %s",
                name,
                current.offset if current else 0,
                config.log(name).path,
            )
    finally:
        source.close()
    return EXIT_OK
