"""A batch imported by K import_logs.py processes side by side, committed per partition.

`--skip=N` is exact only with one recorder, so parallelism lives one level up: the batch's
guarded lines are split by visitor (matomo_rt.partition) into K partitions, one import_logs.py
with one recorder imports each, and each outcome is exact: all of its lines, the first N, or none
(unknown only when a run was killed). Each outcome is committed as it arrives, into the open
batch (matomo_rt.openbatch) that the state holds until every partition is done. A retry reads
the same lines again, splits them the same way and sends only what each partition lacks; K stays
what the batch was opened with. So a failing worker costs only its own partition, and
duplicates come only from runs killed in flight.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, Optional

from matomo_rt.execute import STDIN_CHUNK
from matomo_rt.guard import checker, guard
from matomo_rt.matomo import importer
from matomo_rt.openbatch import OpenBatch, digest
from matomo_rt.partition import split, visitor_key
from matomo_rt.store import StateError
from matomo_rt.tail import Batch

if TYPE_CHECKING:
    from matomo_rt.pipeline import PassReport, Source

log = logging.getLogger(__name__)

#: Combining outcomes: the most serious one names the batch's outcome.
_SEVERITY = (
    importer.SUCCESS,
    importer.PARTIAL,
    importer.FAILED,
    importer.REFUSED,
    importer.UNCERTAIN,
    importer.USAGE,
    importer.AUTH,
)


#: A new batch gets one worker per this many lines (or per batch_lines, if fewer), up to
#: `workers`: every import_logs.py run costs a start-up and up to a second of polling at its
#: end, whatever it imports, so a live log's few new lines keep one importer.
LINES_PER_WORKER = 1000


def workers_for(configured: int, batch_lines: int, lines: int) -> int:
    """How many importers a new batch of `lines` lines gets (1: the unpartitioned path)."""
    return max(1, min(configured, lines // min(LINES_PER_WORKER, batch_lines)))


def _stdin(lines: Sequence[bytes], finished: list[bool]) -> Iterator[bytes]:
    """The importer's stdin in large pieces; `finished` tells whether it took all of them."""
    piece: list[bytes] = []
    size = 0
    for line in lines:
        piece.append(line)
        size += len(line)
        if size >= STDIN_CHUNK:
            yield b"".join(piece)
            piece, size = [], 0
    if piece:
        yield b"".join(piece)
    finished.append(True)


def _run(source: Source, lines: list[bytes]) -> importer.ImportResult:
    finished: list[bool] = []
    result = source._run_importer(_stdin(lines, finished), lambda: len(lines), one_recorder=True)
    if result.outcome == importer.SUCCESS and not finished:
        return importer.ImportResult(
            importer.UNCERTAIN,
            result.returncode,
            reason="import_logs.py exited before reading all of its lines",
        )
    return result


class _Tally:
    """What the runs of one pass over a batch added up to."""

    def __init__(self) -> None:
        self.outcome = importer.SUCCESS
        self.reason: Optional[str] = None
        self.result: Optional[importer.ImportResult] = None
        self.uncertain = False

    def add(self, worker: str, result: importer.ImportResult) -> None:
        if _SEVERITY.index(result.outcome) > _SEVERITY.index(self.outcome):
            self.outcome = result.outcome
            self.reason = f"{worker}: {result.reason}"
            self.result = result
        if result.outcome == importer.UNCERTAIN:
            self.uncertain = True


def import_batch(
    source: Source, batch: Batch, report: PassReport, opened: Optional[OpenBatch]
) -> bool:
    """Import `batch` with K importers side by side; commit each partition as it ends.

    True when the whole batch is done (the position moved past it), False when a partition
    still lacks lines: the state then holds the open batch and the error is recorded.
    """
    assert source.reader is not None
    lines = list(batch.iter_lines())
    fmt = source.log_config.log_format
    checked = guard(lines, checker(fmt))
    sums = digest(batch)
    imp = source.config.import_
    k = opened.workers if opened else workers_for(imp.workers, imp.batch_lines, batch.lines)
    parts = split(checked.lines, k, visitor_key(fmt, (*imp.flags, *source.log_config.flags)))
    sizes = [len(p) for p in parts]
    if opened is not None:
        if (opened.lines, opened.digest, opened.sizes) != (batch.lines, sums, sizes):
            return _reopen(source, opened, report)
        if opened.workers != source.config.import_.workers:
            log.info(
                "%s: finishing the open batch with the %d workers it was started with"
                " (import.workers is now %d)",
                source.name,
                opened.workers,
                source.config.import_.workers,
            )
        state = opened
    else:
        state = OpenBatch(k, batch.lines, sums, batch.end, sizes, [0] * k)
    pending = [p for p in range(k) if state.done[p] < state.sizes[p]]
    tally = _Tally()
    if pending:
        _run_partitions(source, checked.lines, parts, state, pending, tally, report)
    if state.complete:
        return _close(source, batch, checked, state, tally, report)
    _fail(source, batch, state, tally, report)
    return False


def _cautious(source: Source) -> bool:
    """After a failure, one importer tries first: a Matomo that is down, or refuses the token,
    then sees one run (three failed logins, not 3 x K) until one succeeds."""
    if source.consecutive_failures:
        return True
    stats = source.stats
    error = stats.get("last_error")
    if not isinstance(error, dict):
        return False
    try:
        return float(error.get("time") or 0) > float(stats.get("last_success") or 0)
    except (TypeError, ValueError):
        return False


def _run_partitions(
    source: Source,
    sent: list[bytes],
    parts: list[list[int]],
    state: OpenBatch,
    pending: list[int],
    tally: _Tally,
    report: PassReport,
) -> None:
    """Run the pending partitions (side by side) and commit each outcome as it arrives."""
    k = state.workers
    waves = [pending[:1], pending[1:]] if _cautious(source) and len(pending) > 1 else [pending]
    unsaved: Optional[StateError] = None
    for wave in waves:
        if not wave:
            continue
        with ThreadPoolExecutor(max_workers=len(wave), thread_name_prefix="worker") as pool:
            futures: dict[Future[importer.ImportResult], int] = {}
            for p in wave:
                todo = [sent[i] for i in parts[p][state.done[p] :]]
                futures[pool.submit(_run, source, todo)] = p
            for future in as_completed(futures):
                p = futures[future]
                result = future.result()
                try:
                    _record_run(source, state, p, result, tally, report, f"worker {p + 1}/{k}")
                except StateError as exc:
                    # The disk refused: the Source keeps it in memory and writes it before
                    # importing anything more; record the runs still ending the same way.
                    unsaved = unsaved or exc
        if unsaved is not None:
            raise unsaved
        if tally.outcome != importer.SUCCESS:
            return  # the cautious first run failed: the others wait for the next pass


def _record_run(
    source: Source,
    state: OpenBatch,
    p: int,
    result: importer.ImportResult,
    tally: _Tally,
    report: PassReport,
    worker: str,
) -> None:
    """Move partition p's count past what Matomo holds and make it durable at once."""
    assert source.reader is not None
    if result.outcome == importer.REFUSED:  # refused on every retry, perhaps: say the way out
        result = dataclasses.replace(result, reason=source.refused_reason(result.reason, state.end))
    tally.add(worker, result)
    report.unmatched_hosts.update(result.unmatched_hosts)
    todo = state.sizes[p] - state.done[p]
    held = 0
    if result.outcome == importer.SUCCESS:
        held = todo
        if result.refused_hits:
            log.warning(
                "%s: %s: Matomo refused %d of %d requests (see import_logs.py's log lines)",
                source.name,
                worker,
                result.refused_hits,
                result.imported,
            )
        source._warn_unmatched(result)
    elif result.outcome in (importer.PARTIAL, importer.AUTH) and result.skip:
        held = min(result.skip, todo)
    elif result.outcome == importer.UNCERTAIN:
        if source.config.import_.on_uncertain == "skip":
            log.warning(
                "%s: %s: %s; on_uncertain = skip: moving past its %d lines, some of which may"
                " not be in Matomo",
                source.name,
                worker,
                result.reason,
                todo,
            )
            held = todo
        else:
            log.warning(
                "%s: %s: %s; on_uncertain = resend: its %d lines will be sent again, so"
                " requests recorded before the failure may be counted twice",
                source.name,
                worker,
                result.reason,
                todo,
            )
    if result.outcome not in (importer.SUCCESS, importer.UNCERTAIN):
        log.error(
            "%s: %s: import failed (%s): %s; %d of its %d lines are in Matomo",
            source.name,
            worker,
            result.outcome,
            result.reason,
            held,
            todo,
        )
    state.done[p] += held
    # An uncertain share moved past (skip) is not counted: nobody knows what Matomo holds of it.
    imported = {importer.SUCCESS: result.held, importer.UNCERTAIN: 0}.get(result.outcome, held)
    report.imported += imported
    runs = dict(source.stats.get("worker_runs") or {})
    runs[result.outcome] = int(runs.get(result.outcome) or 0) + 1
    # Nothing of it in Matomo yet: no need to hold the batch (or its K) open.
    opened = state.to_json() if any(state.done) else None
    source._commit(
        source.position,
        document={"open_batch": opened},
        add_imported=imported,
        add_refused=result.refused_hits,
        add_ignored=result.ignored if result.outcome == importer.SUCCESS else 0,
        add_unmatched=result.counts.get("no_site", 0),
        unmatched_hosts=result.unmatched_hosts,
        add_invalid=result.counts.get("invalid", 0) if result.outcome == importer.SUCCESS else 0,
        last_import_duration=source._last_duration,
        worker_runs=runs,
    )


def _close(
    source: Source,
    batch: Batch,
    checked: Any,
    state: OpenBatch,
    tally: _Tally,
    report: PassReport,
) -> bool:
    """Every partition is done (or skipped, on_uncertain = skip): quarantine, move the
    position past the batch, forget it. False when a skipped run makes the pass stop."""
    held = source.held_back(batch, checked, batch.lines, whole=True)
    quarantined = len(held)
    now = source.clock()
    updates: dict[str, Any] = {}
    if tally.uncertain:  # skipped: said and counted, as for one importer
        updates["add_uncertain_batches"] = 1
        updates["last_error"] = {"time": now, "outcome": tally.outcome, "reason": tally.reason}
    else:
        updates["last_success"] = now
    source._commit(
        state.end,
        document={"open_batch": None},
        quarantine=held,
        add_lines_read=batch.lines,
        add_quarantined=quarantined,
        add_normalised=checked.normalised,
        **updates,
    )
    report.committed_lines += batch.lines
    report.quarantined += quarantined
    report.outcome = tally.outcome if tally.uncertain else importer.SUCCESS
    if tally.uncertain:
        report.uncertain += 1
        report.error = tally.reason
        return False
    return True


def _fail(
    source: Source, batch: Batch, state: OpenBatch, tally: _Tally, report: PassReport
) -> None:
    """Some partition still lacks lines: keep the batch open, record why."""
    report.outcome = tally.outcome
    report.error = tally.reason or "the batch is not complete"
    if tally.uncertain:
        report.uncertain += 1
    extra: dict[str, Any] = {"add_uncertain_batches": 1} if tally.uncertain else {}
    if tally.outcome == importer.AUTH:
        extra["auth_pause"] = source.auth_pause()
        log.error(
            "%s: Matomo refused the token (%s); no more imports for an hour or until the"
            " token changes",
            source.name,
            report.error,
        )
    done = sum(state.done)
    total = sum(state.sizes)
    log.error(
        "%s: %d of %d partitions of the batch (%d lines) are done, %d of %d requests; the"
        " rest is retried",
        source.name,
        sum(1 for d, s in zip(state.done, state.sizes) if d >= s),
        state.workers,
        batch.lines,
        done,
        total,
    )
    source._record_error(tally.outcome, report.error, **extra)


def _reopen(source: Source, opened: OpenBatch, report: PassReport) -> bool:
    """The open batch's lines cannot be read again as they were (the file holding them was
    removed or changed): the finished partitions cannot be told apart any more. The lines
    now there are imported as a new batch; requests may be counted twice, and that is said."""
    assert source.reader is not None
    done = sum(opened.done)
    log.warning(
        "%s: the open batch (%d lines, %d of its requests in Matomo) cannot be read again as"
        " it was; importing what is there now as a new batch: up to %d requests may be"
        " counted twice",
        source.name,
        opened.lines,
        done,
        done,
    )
    report.uncertain += 1
    source._commit(source.position, document={"open_batch": None}, add_uncertain_batches=1)
    return True
