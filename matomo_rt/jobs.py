"""What the service's scheduled jobs do, and the memory they keep.

An import tick runs one pass of a log, an archive tick one core:archive run; after each job, a
change of health is said once and the metrics are published from memory (textfile, HTTP). When
jobs run, and the process around them (signals, stop, reload, systemd), is service.py's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Optional

from matomo_rt import archiver, health, metrics
from matomo_rt.archiver import run_archive
from matomo_rt.config import Config
from matomo_rt.health.announce import Announcer
from matomo_rt.pipeline import Source
from matomo_rt.store import LockedError
from matomo_rt.tail import ReaderError, StateError
from matomo_rt.token import TokenFile

log = logging.getLogger(__name__)

#: Import failures and the authentication pause are logged by the pass, as they happen.
_LOGGED_WHERE_THEY_HAPPEN = frozenset({health.IMPORT_FAILING, health.AUTH_PAUSED})


class Jobs:
    """The job bodies over the sources and the facts in memory; service.Service runs them."""

    #: Set by the service (stop, reload): a pass ends after its running batch.
    stopping: threading.Event
    paused: threading.Event

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sources: dict[str, Source] = {}
        self.metrics_server: Any = None
        self.tokens: Optional[TokenFile] = None
        self._tokens_lock = threading.Lock()
        #: What the last core:archive run did (read from its state once, then kept here).
        self.archive = dataclasses.replace(archiver.load_facts(config), watched_since=time.time())
        self.metrics = metrics.registry(
            metrics.ServiceCollector(
                lambda: list(self.sources.values()),
                lambda: self.archive,
                lambda: self.config.health,
            )
        )
        #: A change of health is logged once (per log, and for core:archive).
        self._announce_logs = Announcer(log)
        self._announce_archive = Announcer(log)
        self._textfile_failing = False

    # -- import --------------------------------------------------------------------------

    def _import_tick(self, source: Source) -> None:
        try:
            self._import_pass(source)
        finally:
            self._log_health(source)

    def _token(self) -> Optional[str]:
        """The token as the file says now (one stat per tick; re-read when it changed)."""
        with self._tokens_lock:
            if self.tokens is None or self.tokens.matomo != self.config.matomo:
                self.tokens = TokenFile(self.config.matomo, self.config.source)
            return self.tokens.current()

    def _log_health(self, source: Source) -> None:
        """Log a change of the log's health once: ERROR on the way in, INFO on recovery."""
        if source.reader is None:
            return
        self._announce_logs.changes(
            source.name, source.verdict(), time.time(), quiet=_LOGGED_WHERE_THEY_HAPPEN
        )

    def _import_pass(self, source: Source) -> None:
        token = self._token()
        if token != source.token:  # fixed in place: lifts an authentication pause at once
            source.token = token
            source.retry_at = 0.0
        if time.time() < source.retry_at:
            return  # backing off after a failure
        # A reload, like a stop, waits for the running batch only, not the rest of a backlog.
        try:
            report = source.run_pass(
                should_stop=lambda: self.stopping.is_set() or self.paused.is_set()
            )
        except (StateError, ReaderError) as exc:
            # A user-fixable problem (permissions, disk full, a damaged state file): one line,
            # and back off instead of a traceback every interval. A write the disk refused is
            # the verdict's (state_unwritable): said once, not at every retry.
            if not (isinstance(exc, StateError) and source.write_failure is not None):
                log.error("%s: %s", source.name, exc)
            source.back_off()
            return
        if report.batches:  # failures were logged, once, where they happened
            log.info(
                "%s: %d lines in %d batches, %d imported, %d quarantined",
                source.name,
                report.lines_read,
                report.batches,
                report.imported,
                report.quarantined,
            )
        elif report.error:
            log.debug("%s: %s", source.name, report.error)

    # -- core:archive --------------------------------------------------------------------

    def _archive_tick(self) -> None:
        try:
            result = run_archive(self.config, carried=archiver.carried(self.archive))
        except LockedError as exc:  # a one-shot `matomo-rt archive` (cron) runs right now
            log.warning("core:archive: skipped this run: %s", exc)
            return
        except StateError as exc:
            # The state directory or the lock cannot be had (read-only, full, permissions):
            # core:archive did not run. The verdict's state_unwritable says it, once.
            refused = f"core:archive did not run: {exc}"
            self.archive = archiver.after_write(self.archive, refused, time.time())
            return
        now = time.time()
        # The run is in memory whatever the disk said, so the service's metrics and log know
        # it worked (or failed); a refused record is the verdict's (said once, reminded).
        self.archive = archiver.after_write(
            archiver.after_run(self.archive, result, now), result.unrecorded, now
        )

    def _archive_configured(self, config: Config) -> None:
        """A reload took `config`: core:archive on or off, as it says."""
        self.archive = dataclasses.replace(
            self.archive,
            enabled=config.archive.enabled,
            # Archiving just switched on: expected from now, not from the start.
            watched_since=self.archive.watched_since if self.archive.enabled else time.time(),
        )

    def _log_archive_health(self) -> None:
        """A change of core:archive's health, once (its failures are logged as they happen)."""
        now = time.time()
        verdict = health.judge_archive(self.archive, now, self.config.health)
        self._announce_archive.changes("archive", verdict, now, quiet={health.ARCHIVE_FAILING})

    # -- publishing ----------------------------------------------------------------------

    def _publish(self) -> None:
        """After each job: a change of core:archive's health, and the metrics textfile."""
        self._log_archive_health()
        if self.config.metrics.textfile is not None:
            try:
                metrics.write_textfile(self.config.metrics.textfile, metrics.render(self.metrics))
            except Exception as exc:  # metrics must never stop imports
                # Rewritten after every job: say it once (a full disk would say it every
                # second), and once more when it works again.
                if not self._textfile_failing:
                    log.warning("%s (said once, until it is written again)", exc)
                self._textfile_failing = True
            else:
                if self._textfile_failing:
                    log.info("metrics.textfile: written again")
                self._textfile_failing = False

    def _start_metrics_server(self) -> None:
        if self.config.metrics.listen is None:
            return
        self.metrics_server = metrics.MetricsServer(
            self.config.metrics.listen, lambda: metrics.render(self.metrics)
        )
        self.metrics_server.start()

    def _stop_metrics_server(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
