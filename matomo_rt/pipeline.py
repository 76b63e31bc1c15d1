"""One import pass for one log: read -> guard -> import -> commit.

The offset moves only past lines Matomo holds (or that were quarantined, with their reason):
after a clean import the whole batch, after `--skip=N` exactly the lines before N, after an
outcome nobody can know (the importer killed mid-batch) what `on_uncertain` says. Everything
else keeps the offset, so the same batch is offered again later. The position, statistics and
quarantine it commits are matomo_rt.logstate's, the health facts it feeds matomo_rt.loghealth's.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from matomo_rt import execute, health, openbatch, workers
from matomo_rt.config import Config, ConfigError, import_problems, load_token
from matomo_rt.guard import GuardResult, checker, guarded_chunks
from matomo_rt.loghealth import WatchedLog
from matomo_rt.logstate import MAX_LINE_BYTES
from matomo_rt.matomo import importer
from matomo_rt.tail import Batch, Position

log = logging.getLogger(__name__)

AUTH_PAUSE_SECONDS = health.AUTH_PAUSE_SECONDS
QUIET_SUCCESS_SECONDS = 60.0
#: A pass's outcome when the live file cannot be read (see PassReport.file_problem).
FILE_PROBLEM = "file"


@dataclass
class PassReport:
    """What one pass over one log did; the CLI and the service report it."""

    log: str
    batches: int = 0
    lines_read: int = 0
    imported: int = 0
    quarantined: int = 0
    committed_lines: int = 0
    uncertain: int = 0
    outcome: str = "idle"
    error: Optional[str] = None
    caught_up: bool = False
    unmatched_hosts: set[str] = field(default_factory=set)
    #: (problem kind, reason) when the live file is missing or cannot be read.
    file_problem: Optional[tuple[str, str]] = None


class Source(WatchedLog):
    """A log's state and the import pass over it: read a batch from the position, guard it,
    hand it to import_logs.py (or to matomo_rt.workers on a backlog), commit what the outcome
    allows."""

    def run_pass(
        self,
        max_batches: Optional[int] = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Optional[Callable[[PassReport], None]] = None,
    ) -> PassReport:
        """Import batches until caught up, stopped, a failure, or `max_batches`."""
        assert self.reader is not None, "open() the source first"
        report = PassReport(self.name)
        unsaved = self._save_unsaved()
        if unsaved:
            report.outcome, report.error = importer.FAILED, unsaved
            self.back_off()
            return report
        paused = self.auth_paused()
        if paused:
            report.outcome, report.error = importer.AUTH, paused
            return report
        self._pass_imported = 0
        report.file_problem = health.probe_file(self.log_config.path)
        if self.health.note_file(self.clock(), report.file_problem):
            self._save_health()
        if report.file_problem is not None and report.file_problem[0] != health.LOG_MISSING:
            # Unreadable or not a file: nothing to read until someone fixes it. No backoff:
            # the check costs a stat, and the fix is seen at the next tick.
            kind, reason = report.file_problem
            report.outcome = FILE_PROBLEM
            report.error = health.describe_file(kind, reason, str(self.log_config.path)).line()
            return report
        limit = max_batches or self.config.import_.max_batches_per_tick
        while report.batches < limit and not should_stop():
            imp = self.config.import_
            opened = openbatch.load_open(self)
            if opened is not None:  # the same lines again, split the same way
                batch = self.reader.read_batch(self.position, opened.lines, 1 << 62)
            else:  # up to one importer run's worth per worker
                batch = self.reader.read_batch(
                    self.position, imp.workers * imp.batch_lines, imp.workers * imp.batch_bytes
                )
            if batch.lines == 0 and opened is None:
                now = self.clock()
                quiet_since = now - float(self.stats.get("last_success") or 0)
                readable = report.file_problem is None
                # Only oversized lines (skipped while reading): quarantined with this commit.
                held = self.held_back(batch, GuardResult(), 0, whole=True)
                extra: dict[str, Any] = {"add_quarantined": len(held)} if held else {}
                report.quarantined += len(held)
                if readable and report.batches == 0 and quiet_since >= QUIET_SUCCESS_SECONDS:
                    # Caught up is a success too: a quiet site must not look stuck to
                    # monitoring (but a missing log is no success). Recorded at most once a
                    # minute to spare the disk.
                    self._commit(batch.end, quarantine=held, last_success=now, **extra)
                elif batch.end != self.position:
                    self._commit(batch.end, quarantine=held, **extra)
                report.caught_up = True
                if report.outcome == "idle":
                    report.outcome = importer.SUCCESS
                break
            report.batches += 1
            report.lines_read += batch.lines
            self._mark_in_flight(batch)
            try:
                if (
                    opened is not None
                    or workers.workers_for(imp.workers, imp.batch_lines, batch.lines) > 1
                ):
                    done = workers.import_batch(self, batch, report, opened)
                else:
                    done = self._import_batch(batch, report)
            finally:
                self._clear_in_flight()
            if not done:
                break
            if on_batch is not None:
                on_batch(report)
        if report.error is None:
            self.consecutive_failures = 0
            self.retry_at = 0.0
            self.health.failures, self.health.retry_at = 0, None
        else:
            self.back_off()
        return report

    def _import_batch(self, batch: Batch, report: PassReport) -> bool:
        """Hand one batch to the importer and commit what its outcome allows."""
        checked = GuardResult()
        stdin = guarded_chunks(
            batch.iter_lines(), checked, execute.STDIN_CHUNK, checker(self.log_config.log_format)
        )
        first = next(stdin, None)
        if first is None:  # every line quarantined: nothing to import
            held = self.held_back(batch, checked, batch.lines, whole=True)
            self._commit(
                batch.end, quarantine=held, add_lines_read=batch.lines, add_quarantined=len(held)
            )
            report.quarantined += len(held)
            report.committed_lines += batch.lines
            return True
        result = self._run_importer(itertools.chain([first], stdin), lambda: checked.sent)
        if not checked.complete:
            # import_logs.py stopped reading early: finish the line maps for the commit.
            try:
                for _ in stdin:
                    pass
            except ValueError:  # the feeder thread still holds the generator
                pass
            if result.outcome == importer.SUCCESS:
                result = importer.ImportResult(
                    importer.UNCERTAIN,
                    result.returncode,
                    reason="import_logs.py exited before reading the whole batch",
                )
        if result.outcome == importer.REFUSED:
            result = dataclasses.replace(
                result, reason=self.refused_reason(result.reason, batch.end)
            )
        report.outcome = result.outcome
        report.unmatched_hosts.update(result.unmatched_hosts)
        if result.outcome == importer.SUCCESS:
            self._commit_prefix(batch, checked, checked.sent, result, report)
            if result.refused_hits:
                log.warning(
                    "%s: Matomo refused %d of %d requests (see import_logs.py's log lines)",
                    self.name,
                    result.refused_hits,
                    result.imported,
                )
            self._warn_unmatched(result)
            return True
        if result.outcome in (importer.PARTIAL, importer.AUTH) and result.skip:
            self._commit_prefix(batch, checked, result.skip, result, report)
        if result.outcome == importer.UNCERTAIN:
            report.uncertain += 1
            if self.config.import_.on_uncertain == "skip":
                log.warning(
                    "%s: %s; on_uncertain = skip: moving past the batch (%d lines), some of"
                    " which may not be in Matomo",
                    self.name,
                    result.reason,
                    batch.lines,
                )
                self._commit_prefix(batch, checked, checked.sent, result, report, uncertain=True)
                report.error = result.reason
                return False
            log.warning(
                "%s: %s; on_uncertain = resend: the batch (%d lines) will be sent again, so"
                " requests recorded before the failure may be counted twice",
                self.name,
                result.reason,
                batch.lines,
            )
        report.error = result.reason
        extra: dict[str, Any] = {}
        if result.outcome == importer.UNCERTAIN:
            extra["add_uncertain_batches"] = 1
        if result.outcome == importer.AUTH:
            extra["auth_pause"] = self.auth_pause()
            log.error(
                "%s: Matomo refused the token (%s); no more imports for an hour or until the"
                " token changes",
                self.name,
                result.reason,
            )
        else:
            log.error("%s: import failed (%s): %s", self.name, result.outcome, result.reason)
        self._record_error(result.outcome, result.reason, **extra)
        return False

    def refused_reason(self, reason: Optional[str], end: Position) -> str:
        """`reason` for a batch Matomo refused whole, naming the way past the batch ending at
        `end`: requests older than Matomo accepts are refused on every retry (the workers path
        says the same of the batch it holds open)."""
        return (
            f"{reason}; if they are older than Matomo accepts, no retry will change that: move"
            f" past this batch with {self._seek_past(end)}"
        )

    def _seek_past(self, position: Position) -> str:
        """The command that moves this log's position to `position`, quoted."""
        end = position.current
        try:
            st = os.stat(self.log_config.path)
            live = end is not None and end.same_file(st.st_dev, st.st_ino)
        except OSError:
            live = False
        if live and end is not None and end.offset is not None:
            return f"`matomo-rt seek --log {self.name} --to {end.offset}`"
        return f"`matomo-rt seek --log {self.name} --to end` (it is in a rotated file: this skips"
        " the rest of the backlog too)"

    def _run_importer(
        self, stdin: Iterator[bytes], sent: Callable[[], int], one_recorder: bool = False
    ) -> importer.ImportResult:
        """One import_logs.py run; `sent()` counts its input lines once it is done.

        `one_recorder`: a partition's run (matomo_rt.workers), whose --skip=N must be exact
        whatever import.recorders says.
        """
        matomo = self.config.matomo
        script = matomo.import_logs_script
        if matomo.url is None or script is None:
            raise ConfigError(import_problems(self.config))
        flags = (*self.config.import_.flags, *self.log_config.flags)
        if one_recorder:
            flags = tuple(f for f in flags if f.split("=", 1)[0] != "--recorders")
        argv = importer.build_argv(
            matomo.python,
            script,
            matomo.url,
            flags,
            recorders=1 if one_recorder else self.config.import_.recorders,
            idsite=self.log_config.idsite,
            dry_run=self.dry_run,
            format_args=self.log_config.log_format.argv(),
        )
        secrets = [self.token] if self.token else []
        started = time.monotonic()
        try:
            done = execute.run(
                argv,
                stdin=stdin,
                env_extra=importer.child_env(self.token),
                timeout=self.config.import_.timeout,
                secrets=secrets,
            )
        except execute.ExecError as exc:
            return importer.ImportResult(importer.FAILED, None, reason=str(exc))
        except Exception as exc:  # feeding stdin failed: the child was stopped mid-batch
            reason = f"feeding import_logs.py failed ({exc.__class__.__name__})"
            return importer.ImportResult(importer.UNCERTAIN, None, reason=reason)
        finally:
            self._last_duration = time.monotonic() - started
        log.debug("%s: %s", self.name, done.describe(secrets))
        return importer.classify(
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            execute.redact(done.stderr.decode("utf-8", "replace"), secrets),
            sent(),
            timed_out=done.timed_out,
            read_input=done.stdin_consumed != 0,
        )

    def _commit_prefix(
        self,
        batch: Batch,
        checked: GuardResult,
        sent: int,
        result: importer.ImportResult,
        report: PassReport,
        uncertain: bool = False,
    ) -> None:
        """Commit the batch lines before the `sent`-th line given to the importer."""
        before = checked.original_lines_before(sent)
        lines = batch.lines if before < 0 else before
        position = batch.end if before < 0 else batch.position_after_lines(before)
        held = self.held_back(batch, checked, lines, whole=before < 0)
        quarantined = len(held)
        now = self.clock()
        # Uncertain: nobody knows what Matomo holds of them, so they are not counted imported.
        imported = result.held if result.outcome == importer.SUCCESS else 0 if uncertain else sent
        updates: dict[str, Any] = {
            "add_lines_read": lines,
            "add_imported": imported,
            "add_refused": result.refused_hits,
            "add_unmatched": result.counts.get("no_site", 0),
            "unmatched_hosts": result.unmatched_hosts,
            "add_ignored": result.ignored,
            # Lines the format could not parse: a high share means the wrong `format`.
            "add_invalid": result.counts.get("invalid", 0),
            "add_quarantined": quarantined,
            "add_normalised": checked.normalised,
        }
        if result.outcome == importer.SUCCESS:
            updates["last_success"] = now
            updates["last_import_duration"] = self._last_duration
        if uncertain:
            updates["add_uncertain_batches"] = 1
            updates["last_error"] = {
                "time": now,
                "outcome": result.outcome,
                "reason": result.reason,
            }
        self._commit(position, quarantine=held, **updates)
        report.committed_lines += lines
        report.quarantined += quarantined
        report.imported += imported

    def held_back(
        self, batch: Batch, checked: GuardResult, lines: int, whole: bool = False
    ) -> list[tuple[str, bytes]]:
        """Quarantine entries for a commit of the first `lines` batch lines (`whole`: of the
        whole batch): the Guard's held-back lines and the oversized lines the reader skipped.
        They are written with that commit, never before it (a retry would write them again)."""
        held = [(reason, raw) for index, reason, raw in checked.quarantined if index < lines]
        skipped = (
            [(b, n) for _, b, n in batch.oversized] if whole else batch.oversized_before(lines)
        )
        held += [(f"line of {n} bytes, longer than {MAX_LINE_BYTES}", b) for b, n in skipped]
        return held

    def _warn_unmatched(self, result: importer.ImportResult) -> None:
        if result.unmatched_hosts:
            log.warning(
                "%s: %d requests matched no Matomo site (hosts: %s). Add the site (or the host as"
                " an alias URL), or set --add-sites-new-hosts or --idsite-fallback=ID in flags",
                self.name,
                result.counts.get("no_site", 0),
                ", ".join(sorted(result.unmatched_hosts)[:10]),
            )


def open_sources(
    config: Config, names: Optional[list[str]] = None, dry_run: bool = False
) -> list[Source]:
    """Sources for the named logs (all by default), with the token loaded once."""
    token = load_token(config.matomo, config.source)
    chosen = [config.log(n) for n in names] if names else list(config.logs)
    return [Source(config, log_config, token, dry_run) for log_config in chosen]
