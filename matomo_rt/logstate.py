"""One log's durable record: its lock, position, statistics and quarantine (the commit).

The LogState alone owns the state document: the position and the statistics are committed
together in one atomic write, with the quarantine entries of the lines the position moves past
(written first, never twice). A batch handed to import_logs.py is marked in the document while
it is there, so a process killed mid-import leaves a trace the next start counts. What this
process learns of the log's health is matomo_rt.loghealth's; what a pass does with the
position (read, guard, import) is matomo_rt.pipeline's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from matomo_rt import ledger
from matomo_rt.config import Config, LogConfig
from matomo_rt.guard import Quarantine
from matomo_rt.store import load_state, save_state
from matomo_rt.tail import Batch, LogReader, SourceLock, StateError
from matomo_rt.tail.position import Position, stored_position

log = logging.getLogger(__name__)

#: State key present while a batch is with import_logs.py (see LogState._mark_in_flight).
IN_FLIGHT = "in_flight"
#: Longer lines are quarantined (their first 64 KiB) without being held in memory. nginx's
#: longest line (8 KiB request line, referrer and user agent, JSON-escaped) is far below.
MAX_LINE_BYTES = 1 << 20

_Self = TypeVar("_Self", bound="LogState")


def _count(value: Any) -> int:
    """A counter from the state file; a hand-damaged one restarts at 0 rather than crash."""
    return value if type(value) is int and value >= 0 else 0


def state_paths(config: Config, log_config: LogConfig) -> tuple[Path, Path, Path]:
    """State file, lock file and quarantine file of one log, all in the state directory."""
    base = config.state.dir / log_config.name
    return (
        base.with_name(base.name + ".state.json"),
        base.with_name(base.name + ".lock"),
        base.with_name(base.name + ".quarantine.jsonl"),
    )


def _unread(document: dict[str, Any], position: Position, before: Position) -> list[dict[str, Any]]:
    """The generations `position` counts as read without reading them (those `before` did
    not know: it read them, or some of them), added to those already listed."""
    known = document.get(ledger.UNREAD_HISTORY)
    listed = list(known) if isinstance(known, list) else []
    seen = [*before.finished, *([before.current] if before.current else [])]
    for gen in position.finished:
        fp = gen.fp.to_json()
        if fp not in listed and not any(
            old.fp == gen.fp or old.same_file(gen.dev, gen.ino) for old in seen
        ):
            listed.append(fp)
    return listed


class LogState:
    """One configured log's record: its lock, reader, quarantine, position and statistics.

    Open it (taking the lock) for as long as this process works on the log; the service keeps
    it open, the one-shot commands for one pass. It alone owns the state document (the
    position and the statistics, committed together in one atomic write); the reader is handed
    a position and hands back positions.
    """

    def __init__(
        self,
        config: Config,
        log_config: LogConfig,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.log_config = log_config
        self.name = log_config.name
        self.dry_run = dry_run
        self.clock = clock
        self.state_path, self.lock_path, quarantine_path = state_paths(config, log_config)
        self.quarantine = Quarantine(quarantine_path, self.name)
        self.lock = SourceLock(self.lock_path)
        self.reader: Optional[LogReader] = None
        self._last_duration = 0.0  # seconds the last import_logs.py run took
        #: The state document as last written (or kept in memory while the disk refuses it).
        self.document: dict[str, Any] = {}
        #: Where the next batch starts: past every line Matomo holds.
        self.position = Position()
        #: Bytes of the quarantine file the state file knows of (entries of committed batches).
        self.quarantine_bytes = 0
        #: Quarantine entries of committed batches not yet durable (the disk refused them).
        self.pending: list[tuple[str, bytes]] = []
        self.unsaved = False
        #: Since when and why the disk refuses this log's writes (None: the last one worked),
        #: and how many writes it refused: the verdict and the metrics say so.
        self.write_failure: Optional[tuple[float, str]] = None
        self.write_failures = 0

    # -- lifecycle ---------------------------------------------------------------------

    def open(self: _Self) -> _Self:
        self.lock.acquire()
        try:
            document = load_state(self.state_path)
            self.position = stored_position(document, self.state_path)
            self.document = {k: v for k, v in (document or {}).items() if k != "format"}
            self.reader = LogReader(
                self.log_config.path,
                start_at=self.config.start_at(self.log_config),
                other_logs=tuple(
                    other.path.name
                    for other in self.config.logs
                    if other.path.parent == self.log_config.path.parent
                ),
                not_ours=(self.state_path.name, self.lock_path.name, self.quarantine.path.name),
                max_line_bytes=MAX_LINE_BYTES,
                imported=ledger.imported_head(self.config.state.dir),
            )
            self.quarantine_bytes = self._committed_quarantine()
            if IN_FLIGHT in self.document and not self.dry_run:
                self._count_dead_batch(self.document[IN_FLIGHT])
        except BaseException:
            self.lock.release()  # a start that fails holds nothing: the next one may go on
            raise
        return self

    def _count_dead_batch(self, flight: Any) -> None:
        """A batch was with import_logs.py when the process that sent it died (SIGKILL, a
        crash, a power cut): part of it may be in Matomo. Count it, say so, apply on_uncertain."""
        lines = flight.get("lines") if isinstance(flight, dict) else None
        skip = self.config.import_.on_uncertain == "skip"
        end = self.position
        if skip:
            try:
                end = Position.from_json(flight["end"])
            except (KeyError, TypeError, ValueError, AttributeError):
                skip = False  # no usable end: resending loses nothing
        log.warning(
            "%s: matomo-rt stopped while import_logs.py had a batch of %s lines; requests of it"
            " may be in Matomo already. on_uncertain = %s: %s",
            self.name,
            lines if isinstance(lines, int) else "?",
            self.config.import_.on_uncertain,
            "moving past it, some of its lines may be missing"
            if skip
            else "sending it again, some of its requests may be counted twice",
        )
        stats = self.stats
        stats["uncertain_batches"] = _count(stats.get("uncertain_batches")) + 1
        document = {k: v for k, v in self.document.items() if k != IN_FLIGHT}
        self.position = end
        self._save(end, {**document, "stats": stats})

    def _mark_in_flight(self, batch: Batch) -> None:
        """Record that `batch` goes to import_logs.py now, so that a process killed before its
        outcome is committed leaves a trace the next start counts (an uncertain batch)."""
        if self.dry_run:
            return
        flight = {"since": self.clock(), "lines": batch.lines, "end": batch.end.to_json()}
        self._save(self.position, {**self.document, IN_FLIGHT: flight})

    def _clear_in_flight(self) -> None:
        """The batch's outcome is committed (or kept in memory while the disk refuses it)."""
        if IN_FLIGHT not in self.document or self.dry_run:
            return
        document = {k: v for k, v in self.document.items() if k != IN_FLIGHT}
        try:
            self._save(self.position, document)
        except StateError:
            self.document = document  # the next successful write goes without it
            self.unsaved = True

    def _committed_quarantine(self) -> int:
        """Bytes of the quarantine file that belong to committed batches.

        Entries past what the state file records were written for a batch whose commit never
        happened (the process died before its state write): that batch is read and its lines
        quarantined again, so they are dropped now rather than written twice.
        """
        size = self.quarantine.size()
        record = self.document.get("quarantine")
        known = record.get("bytes") if isinstance(record, dict) else None
        if type(known) is not int or known >= size or self.dry_run:
            return size  # a state from before this record, or an operator shortened the file
        log.info(
            "%s: dropping %d bytes of quarantine entries of a batch that was not committed;"
            " its lines are read again",
            self.name,
            size - known,
        )
        return self.quarantine.write((), known)

    def seek(self, to: str) -> Position:
        """Move the position to "start", "end" or a byte of the live file; statistics kept.

        ValueError for a `to` that is not a place in the file.
        """
        assert self.reader is not None, "open() the source first"
        position = self.reader.seek_position(to)
        unread = _unread(self.document, position, self.position)
        # An open batch (matomo_rt.openbatch) ends here: what follows the new position is new
        # lines, not that batch's retry.
        self.document = {k: v for k, v in self.document.items() if k != "open_batch"}
        self._commit(position, document={ledger.UNREAD_HISTORY: unread})
        return position

    def close(self) -> None:
        self.reader = None
        self.lock.release()

    def __enter__(self: _Self) -> _Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- statistics --------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        stats = self.document.get("stats")
        return dict(stats) if isinstance(stats, dict) else {}

    def _save(self, position: Position, document: dict[str, Any]) -> None:
        """Write the position and `document` (statistics and other keys) in one atomic write;
        StateError if the disk refuses it."""
        document = {
            **document,
            "log": str(self.log_config.path),
            "position": position.to_json(),
            "updated": time.time(),
        }
        try:
            save_state(self.state_path, document)
        except StateError as exc:
            self._write_refused(exc)
            raise
        self.document = document
        self.write_failure = None

    def _write_refused(self, exc: StateError) -> None:
        self.write_failures += 1
        if self.write_failure is None:
            self.write_failure = (self.clock(), str(exc))

    def _commit(
        self,
        position: Position,
        document: Optional[dict[str, Any]] = None,
        quarantine: Sequence[tuple[str, bytes]] = (),
        **updates: Any,
    ) -> None:
        """Make `position`, the `quarantine` entries of the lines it moves past, the statistics'
        `updates` and other `document` keys durable.

        On StateError (the disk refused the quarantine file or the state) all of it is kept in
        memory: Matomo may hold lines the disk does not know about, so they are never offered
        again from this process; the next pass writes them before it imports anything.
        """
        extra = {**(document or {})}
        if (
            position.initialized
            and not self.position.initialized
            and self.config.start_at(self.log_config) != "oldest"
        ):
            # The first run leaves the generations beside the log unread: `import-files` may
            # import them, and must know them from those this log reads itself.
            extra.setdefault(ledger.UNREAD_HISTORY, _unread(self.document, position, self.position))
        stats = self.stats
        for key, value in updates.items():
            if key.startswith("add_"):
                name = key[4:]
                stats[name] = _count(stats.get(name)) + int(value)
            else:
                stats[key] = value
        extra["stats"] = stats
        self.position = position
        self.document = {**self.document, **extra}
        if self.dry_run:
            return
        self.pending.extend(quarantine)
        self._flush()

    def _flush(self) -> None:
        """Write the pending quarantine entries (after the committed bytes of the file: a torn
        or uncommitted append is dropped, none is written twice), then the state recording the
        file's new committed length, the position and the statistics."""
        try:
            size = self.quarantine_bytes
            if self.pending:
                try:
                    size = self.quarantine.write(self.pending, size)
                except StateError as exc:
                    self._write_refused(exc)
                    raise
            self._save(self.position, {**self.document, "quarantine": {"bytes": size}})
        except StateError:
            self.unsaved = True
            raise
        if self.pending:
            for reason, _ in self.pending[:3]:
                log.warning(
                    "%s: quarantined a line: %s (%s)", self.name, reason, self.quarantine.path
                )
        self.pending = []
        self.quarantine_bytes = size
        self.unsaved = False

    def _save_unsaved(self) -> Optional[str]:
        """Retry writing what the disk refused; the reason while it still fails."""
        if not self.unsaved:
            return None
        try:
            self._flush()
        except StateError as exc:
            return f"{exc}; no import until the position can be saved"
        return None

    def _record_error(self, outcome: str, reason: str, **extra: Any) -> None:
        """Keep the offset, remember the error for `status`."""
        error = {"time": self.clock(), "outcome": outcome, "reason": reason}
        self._commit(self.position, last_error=error, add_failed_batches=1, **extra)
