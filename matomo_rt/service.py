"""`matomo-rt run`: the scheduler that replaces both crons of the one-liner.

APScheduler owns time: one import job per log and one archive job, each never overlapping
itself (`max_instances=1`), collapsing missed runs into one (`coalesce`), with a generous misfire
grace (the default of 1 s silently drops late runs on a busy host). The job bodies (jobs.py) call
the very functions the one-shot commands call; this module decides when they run and keeps the
process around them: signals, stop and drain, reload, systemd. Signals only set flags or start a
thread: the work they ask for (stop after the running batch, reload) happens outside the handler.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from matomo_rt import execute
from matomo_rt.config import Config, ConfigError, import_problems
from matomo_rt.config import load as load_config
from matomo_rt.jobs import Jobs
from matomo_rt.pipeline import Source, open_sources
from matomo_rt.store import ensure_dir

log = logging.getLogger(__name__)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


class _SkippedTickFilter(logging.Filter):
    """APScheduler says a tick was skipped because the job still runs at WARNING, which looks
    like a fault: it is the normal sign of a long pass (a backlog, a slow Matomo). The service
    says so once at INFO (see Service._on_skipped); the scheduler's line goes to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "maximum number of running instances" in str(
            record.msg
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class Service(Jobs):
    """Holds the sources (and their locks) for the life of the process, and runs the jobs."""

    def __init__(self, config: Config, config_path: Path) -> None:
        super().__init__(config)
        self.config_path = config_path
        self.stopping = threading.Event()
        self.paused = threading.Event()
        self._active = 0
        self._importing = 0  # of which import jobs (they use the sources reload replaces)
        self._active_cond = threading.Condition()
        self._reload_lock = threading.Lock()
        # Signal numbers, from the handler to the thread that acts on them (see _on_signal).
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._main_done = threading.Event()
        self.scheduler = BlockingScheduler(
            executors={
                # Generous: a reload may add logs, and every log's job may be busy at once.
                "default": ThreadPoolExecutor(max_workers=max(len(config.logs) + 4, 32)),
                # Its own thread: busy imports must never delay the systemd watchdog ping.
                "watchdog": ThreadPoolExecutor(max_workers=1),
            },
            job_defaults={"max_instances": 1, "coalesce": True},
        )
        #: Jobs whose running pass outlasted a tick (said once per pass).
        self._overran: set[str] = set()
        scheduler_log = logging.getLogger("apscheduler.scheduler")
        if not any(isinstance(f, _SkippedTickFilter) for f in scheduler_log.filters):
            scheduler_log.addFilter(_SkippedTickFilter())
        self.scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)

    # -- scheduling ----------------------------------------------------------------------

    def _on_skipped(self, event: JobSubmissionEvent) -> None:
        """A tick came while the job's previous run still works: say so once per run."""
        with self._active_cond:
            if event.job_id in self._overran:
                return
            self._overran.add(event.job_id)
        what = "core:archive" if event.job_id == "archive" else event.job_id.split(":", 1)[-1]
        log.info(
            "%s: the running pass takes longer than the interval (a backlog or a slow Matomo);"
            " the next one starts when it is done",
            what,
        )

    def _job(self, name: str, func: Any, *args: Any) -> None:
        """Run a job body unless stopping/reloading; count it so stop and reload can wait."""
        importing = int(func == self._import_tick)
        with self._active_cond:  # check and count at once: _wait_idle must see this job
            if self.stopping.is_set() or self.paused.is_set():
                return
            if importing and args[0] is not self.sources.get(args[0].name):
                return  # handed out before a reload closed its source; the new job runs on
            self._active += 1
            self._importing += importing
        try:
            func(*args)
        except Exception:
            log.exception("%s: unexpected error (the job runs again at its next time)", name)
        finally:
            with self._active_cond:
                self._active -= 1
                self._importing -= importing
                self._overran.discard(_job_id(name))
                self._active_cond.notify_all()
            self._after_job()

    def _watchdog(self) -> None:
        sd_notify("WATCHDOG=1")

    def _after_job(self) -> None:
        """Publish what the job changed, and a status line for systemd."""
        self._publish()
        sd_notify(f"STATUS=watching {len(self.sources)} logs")

    # -- lifecycle -----------------------------------------------------------------------

    def _open(self, config: Config) -> dict[str, Source]:
        problems = import_problems(config)
        if problems:
            raise ConfigError(problems)
        ensure_dir(config.state.dir)
        opened: dict[str, Source] = {}
        try:
            for source in open_sources(config):
                source.open()
                opened[source.name] = source
        except BaseException:
            for source in opened.values():
                source.close()
            raise
        return opened

    def _schedule(self) -> None:
        config = self.config
        interval = config.import_.interval
        for source in self.sources.values():
            self.scheduler.add_job(
                self._job,
                IntervalTrigger(seconds=interval),
                args=(f"import {source.name}", self._import_tick, source),
                id=f"import:{source.name}",
                name=f"import {source.name}",
                misfire_grace_time=max(int(interval * 10), 60),
                next_run_time=_now(),
                replace_existing=True,
            )
        if config.archive.enabled:
            self.scheduler.add_job(
                self._job,
                CronTrigger.from_crontab(config.archive.schedule),
                args=("archive", self._archive_tick),
                id="archive",
                name="core:archive",
                misfire_grace_time=3600,
                replace_existing=True,
            )
        watchdog_usec = os.environ.get("WATCHDOG_USEC")
        if watchdog_usec and watchdog_usec.isdigit():
            self.scheduler.add_job(
                self._watchdog,
                IntervalTrigger(seconds=max(int(watchdog_usec) / 2e6, 0.5)),
                id="watchdog",
                executor="watchdog",
                replace_existing=True,
                misfire_grace_time=60,
            )

    def run(self) -> int:
        self.sources = self._open(self.config)
        self._schedule()
        try:
            self._start_metrics_server()
        except Exception as exc:  # metrics.MetricsError: one line naming the address
            log.error("%s", exc)
            for source in self.sources.values():
                source.close()
            return 1
        threading.Thread(target=self._signal_loop, name="signals", daemon=True).start()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        log.info(
            "running: %d logs every %gs%s",
            len(self.sources),
            self.config.import_.interval,
            f", core:archive at '{self.config.archive.schedule}'"
            if self.config.archive.enabled
            else ", archiving disabled",
        )
        sd_notify("READY=1")
        try:
            self.scheduler.start()
        finally:
            self._main_done.set()
            self._drain()
            self._stop_metrics_server()
            for source in self.sources.values():
                source.close()
        log.info("stopped")
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        # The handler runs in the main thread between two bytecodes of whatever it was doing,
        # which may hold a lock: APScheduler's main loop submitting a job holds
        # ThreadPoolExecutor's _shutdown_lock (and starts threads in there), so calling
        # scheduler.shutdown() here deadlocked the service on SIGTERM. SimpleQueue.put is
        # reentrant (documented as safe in signal handlers); everything else happens in
        # _signal_loop's thread.
        self._signals.put(signum)

    def _signal_loop(self) -> None:
        while True:
            signum = self._signals.get()
            if signum == signal.SIGHUP:
                if not self.stopping.is_set():
                    threading.Thread(target=self.reload, name="reload", daemon=True).start()
            else:
                self._stop(signum)

    def _stop(self, signum: int) -> None:
        if self.stopping.is_set():
            return
        log.info("%s: finishing the running batch, then stopping", signal.Signals(signum).name)
        self.stopping.set()
        sd_notify("STOPPING=1")
        while not self._main_done.is_set():
            try:
                self.scheduler.shutdown(wait=False)
                return
            except SchedulerNotRunningError:
                time.sleep(0.05)  # a signal right at start-up: the scheduler starts in a moment

    def _wait_idle(self, timeout: float, imports_only: bool = False) -> bool:
        deadline = time.monotonic() + timeout
        with self._active_cond:
            while self._importing if imports_only else self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._active_cond.wait(left)
        return True

    def _drain(self) -> None:
        """Let running jobs finish their batch (bounded by stop_timeout), then stop children."""
        if not self._wait_idle(self.config.service.stop_timeout):
            log.warning(
                "service.stop_timeout (%gs) passed with a batch still running: stopping the"
                " importer; the batch is uncertain: %s",
                self.config.service.stop_timeout,
                "on_uncertain = skip moves past it now"
                if self.config.import_.on_uncertain == "skip"
                else "on_uncertain = resend sends it again at the next start",
            )
            execute.kill_all_children()
            self._wait_idle(10.0)

    # -- reload --------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config; an invalid one keeps the running config and says why."""
        with self._reload_lock:
            sd_notify("RELOADING=1")
            try:
                new = load_config(self.config_path)
                problems = import_problems(new)
                if problems:
                    raise ConfigError(problems)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload: %s", problem)
                log.error("reload: keeping the running configuration")
                sd_notify("READY=1")
                return False
            self.paused.set()
            try:
                if not self._wait_idle(self.config.service.stop_timeout, imports_only=True):
                    # Closing the sources under a running batch would lose its commit (the
                    # batch is then sent twice) while its importer runs on without our lock.
                    log.error(
                        "reload: a batch still runs after service.stop_timeout (%gs); keeping"
                        " the running configuration: send SIGHUP again once it is done",
                        self.config.service.stop_timeout,
                    )
                    sd_notify("READY=1")
                    return False
                for job in self.scheduler.get_jobs():
                    job.remove()
                for source in self.sources.values():
                    source.close()
                self.sources = {}
                try:
                    self.sources = self._open(new)
                    self.config = new
                    self._archive_configured(new)
                except Exception as exc:
                    log.error("reload: %s; keeping the running configuration", exc)
                    try:
                        self.sources = self._open(self.config)
                    except Exception as again:
                        # Neither config can take its logs (a lock taken meanwhile?): a
                        # service that imports nothing must not look alive. Stop; systemd's
                        # Restart= brings it back.
                        log.critical("reload: cannot reopen the logs either (%s); stopping", again)
                        self._signals.put(signal.SIGTERM)
                        return False
                self._stop_metrics_server()
                try:
                    self._start_metrics_server()
                except Exception as exc:
                    log.error("reload: %s; metrics endpoint off until the next reload", exc)
                self._schedule()
            finally:
                self.paused.clear()
            log.info("reloaded %s: %d logs", self.config_path, len(self.sources))
            sd_notify("READY=1")
            return True


def _job_id(name: str) -> str:
    """The scheduler's job id of a job named by _schedule ("import access" -> "import:access")."""
    return "archive" if name == "archive" else name.replace(" ", ":", 1)


def _now() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def run_service(config: Config, config_path: Path) -> int:
    return Service(config, config_path).run()
