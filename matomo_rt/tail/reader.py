"""The offset reader: every complete line appended to a log, once, across rotations.

A pass plans before it reads (tail/plan.py: every file that still holds unread lines, oldest
first). Reading then moves bytes through one reused buffer and yields chunks of
complete lines, each with the position reached after it. The reader takes a position and
returns positions; it writes nothing: its caller owns the position and makes it durable once
the lines are safe.
"""

from __future__ import annotations

import logging
import os
import time
from collections import namedtuple
from pathlib import Path

from matomo_rt.tail import plan as planning
from matomo_rt.tail.identity import IdentityChanged, open_log
from matomo_rt.tail.plan import ReaderError, Replan, Step
from matomo_rt.tail.position import Generation, Position

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO, Callable, Optional

__all__ = ["Batch", "Chunk", "LogReader", "ReaderError", "Reading", "Span", "Warning_"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
#: A compressed generation that still fails to decompress after this long is broken, not
#: still being written by logrotate.
COMPRESS_GRACE_SECONDS = 60.0
#: How much of a skipped over-long line is kept for the operator.
OVERSIZED_HEAD_BYTES = 64 * 1024


class Warning_(namedtuple("Warning_", "kind message")):
    """A loss or oddity worth an operator's attention; kind is a stable metrics label.

    (This module avoids dataclasses: importing them costs `matomo-rt tail` start-up time.)
    """

    __slots__ = ()


class Span(namedtuple("Span", "role base gen start file_end length after")):
    """Where a chunk of lines came from, to turn "after N bytes of it" into a Position.

    file_end is the file offset after the chunk: one less than the data when a "\n" was added.
    """

    __slots__ = ()

    def position_after(self, nbytes: int) -> Position:
        if nbytes >= self.length:
            return self.after
        return _advance(self.base, self.role, self.gen, min(self.start + nbytes, self.file_end))


def _advance(base: Position, role: str, gen: Generation, offset: int) -> Position:
    """`base` with `gen` read up to `offset`, not (yet) known to be read to its end."""
    moved = gen._replace(offset=offset, complete=False)
    if role == "finished":
        return base.with_finished(moved)
    return base.with_current(moved)


def _read_to_end(reached: Position, base: Position, step: Step) -> Position:
    """The position once `step` was read to its end (`reached`: after its last chunk): a
    rotated or finished generation is recorded complete, so it is not opened again (unless
    it grows, for an uncompressed one)."""
    if step.role == "live":
        return reached
    if step.role == "rotated":
        gen = reached.current if reached is not base and reached.current else step.gen
        if not gen.fp.length:  # empty: nothing to recognise it by (plan.find)
            return reached.with_current(None)
        return reached.with_finished(gen._replace(complete=True)).with_current(None)
    gen = next((g for g in reached.finished if g.fp == step.gen.fp), step.gen)
    return reached.with_finished(gen._replace(complete=True))


class Chunk(namedtuple("Chunk", "data span oversized", defaults=(None,))):
    """Complete lines (`data`: a view into the reader's buffer, valid until the next chunk).

    `oversized`: (head, length) of a line longer than the reader's limit that this chunk steps
    over (its data is then empty); what to do with it is the caller's, with its commit.
    """

    __slots__ = ()


class Batch:
    """A bounded run of complete lines and the positions they lead to; nothing committed."""

    def __init__(self, start: Position, end: Position) -> None:
        self.start = start
        self.end = end
        self.segments: list[tuple[bytes, Span]] = []
        #: Lines skipped as oversized: (batch lines before it, its head, its length).
        self.oversized: list[tuple[int, bytes, int]] = []
        self.lines = 0
        self.nbytes = 0

    def chunks(self) -> Iterator[bytes]:
        for data, _ in self.segments:
            yield data

    def iter_lines(self) -> Iterator[bytes]:
        for data, _ in self.segments:
            start = 0
            while start < len(data):
                nl = data.index(b"\n", start) + 1
                yield data[start:nl]
                start = nl

    def oversized_before(self, count: int) -> list[tuple[bytes, int]]:
        """(head, length) of the oversized lines a commit of the first `count` lines passes
        (`position_after_lines(count)` stops before one that follows line `count`)."""
        return [(head, length) for before, head, length in self.oversized if before < count]

    def position_after_lines(self, count: int) -> Position:
        """The position after the first `count` lines of this batch (all of it if more)."""
        if count <= 0:
            return self.start
        for data, span in self.segments:
            n = data.count(b"\n")
            if count > n:
                count -= n
                continue
            cut = -1
            for _ in range(count):
                cut = data.index(b"\n", cut + 1)
            return span.position_after(cut + 1)
        return self.end


class Reading:
    """The chunks of one pass from a position; `position` is where those read so far lead
    (where the whole pass leads once they are exhausted)."""

    def __init__(self, position: Position) -> None:
        self.position = position
        self._chunks: Iterator[Chunk] = iter(())

    def __iter__(self) -> Iterator[Chunk]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()  # type: ignore[attr-defined]


class LogReader:
    """Reads one log (and its rotated generations) from a position its caller keeps."""

    def __init__(
        self,
        log_path: Path,
        start_at: str = "end",
        chunk_bytes: int = CHUNK_BYTES,
        on_warning: Optional[Callable[[Warning_], None]] = None,
        other_logs: tuple[str, ...] = (),
        not_ours: tuple[str, ...] = (),
        max_line_bytes: Optional[int] = None,
        imported: Optional[Callable[[bytes], bool]] = None,
    ) -> None:
        """`not_ours`: names beside the log (state, lock, offset files) that are never one of
        its generations, nor is anything whose name starts with one of them. `imported`: true
        for the head of a file `import-files` imported, which start_at = "oldest" leaves out."""
        self.imported = imported
        self.log_path = Path(log_path)
        self.start_at = start_at
        self.chunk_bytes = chunk_bytes
        # Longer lines are skipped (head kept in the chunk) instead of held in memory.
        self.max_line_bytes = max_line_bytes
        # Names of other logs in this directory that start with this log's name
        # (access.log.json beside access.log): they and their rotations are not ours.
        others = (n for n in other_logs if n != self.log_path.name)
        self._exclude = (*(n for n in others if n.startswith(self.log_path.name)), *not_ours)
        self.warnings: list[Warning_] = []
        self._on_warning = on_warning

    def _warn(self, kind: str, message: str) -> None:
        warning = Warning_(kind, message)
        self.warnings.append(warning)
        log.warning("%s: %s", self.log_path, message)
        if self._on_warning is not None:
            self._on_warning(warning)

    def plan(self, position: Position) -> tuple[list[Step], Position]:
        """The files to read from `position`, oldest first, and the position once planned."""
        return planning.plan(
            self.log_path, position, self.start_at, self._exclude, self._warn, self.imported
        )

    def seek_position(self, to: str) -> Position:
        """A fresh position at "oldest" (every generation beside the log, then the live file),
        "start", "end" or a byte offset of the live file.

        Except for "oldest", everything beside the log counts as already read, as on a first run.
        """
        if to == "oldest":
            for _ in range(planning.PLAN_ATTEMPTS):
                try:
                    cands = planning.siblings(self.log_path, self._exclude)
                    return planning.oldest(cands, self.imported)
                except Replan:
                    continue
            raise ReaderError(f"{self.log_path}: files kept moving (a rotation?); try again")
        live = planning.stat_live(self.log_path)
        if live is None:
            raise ReaderError(f"{self.log_path}: no such file")
        if to == "start":
            start: Optional[int] = 0
        elif to == "end":
            start = None
        elif to.isdigit():
            start = int(to)
            if not 0 <= start <= live.size:
                raise ValueError(f"{start} is outside the file (0..{live.size} bytes)")
            if start and not planning.resume_ok(live, start):
                raise ValueError(f"byte {start} is not the start of a line")
        else:
            raise ValueError("use oldest, start, end or a byte offset")
        for _ in range(planning.PLAN_ATTEMPTS):
            try:
                _, pos = planning.first_run(
                    live, planning.siblings(self.log_path, self._exclude), start
                )
                return pos
            except Replan:
                live = planning.stat_live(self.log_path) or live
        raise ReaderError(f"{self.log_path}: files kept moving (a rotation?); try again")

    # -- reading -------------------------------------------------------------------------

    def read(self, position: Position) -> Reading:
        """Chunks of complete lines from `position` onwards (nothing is read until iterated)."""
        reading = Reading(position)
        reading._chunks = self._chunks(position, reading)
        return reading

    def _chunks(self, position: Position, reading: Reading) -> Iterator[Chunk]:
        steps, pos = self.plan(position)
        reading.position = pos
        buf = bytearray(self.chunk_bytes)
        for step in steps:
            base = pos if step.role == "finished" else pos.with_current(step.gen)
            reached = base
            try:
                for chunk in self._read_step(step, base, buf):
                    reached = chunk.span.after
                    reading.position = reached
                    yield chunk
            except _NotReady:
                return
            pos = _read_to_end(reached, base, step)
            reading.position = pos

    def _read_step(self, step: Step, base: Position, buf: bytearray) -> Iterator[Chunk]:
        gen = step.gen
        offset = gen.offset or 0
        try:
            fh = open_log(step.path, gen.compression, (gen.dev, gen.ino))
        except (FileNotFoundError, IdentityChanged):
            if step.role == "live":
                return  # rotated since planning: the next pass follows it
            raise _NotReady from None
        except PermissionError:
            raise ReaderError(f"{step.path}: permission denied") from None
        with fh:
            try:
                yield from self._read_open(step, base, buf, fh, offset)
            except Exception as exc:
                # A compressed file that ends early or is damaged (EOFError, zlib.error,
                # lzma.LZMAError, ...) may still be being written by logrotate.
                if gen.compression is None or isinstance(exc, PermissionError):
                    if isinstance(exc, OSError):
                        raise ReaderError(f"{step.path}: read failed: {exc}") from None
                    raise
                self._not_ready(step, exc)

    def _not_ready(self, step: Step, exc: BaseException) -> None:
        try:
            age = time.time() - os.stat(step.path).st_mtime
        except OSError:
            age = 0.0
        if age > COMPRESS_GRACE_SECONDS:
            self._warn(
                "corrupt",
                f"{step.path}: cannot decompress ({exc}); newer lines wait behind it: repair or"
                " remove it",
            )
        else:
            log.debug("%s: not fully written yet (%s); next pass", step.path, exc)
        raise _NotReady

    def _read_open(
        self, step: Step, base: Position, buf: bytearray, fh: BinaryIO, offset: int
    ) -> Iterator[Chunk]:
        gen = step.gen
        if gen.compression is None:
            fh.seek(offset)
        else:
            skipped = _skip(fh, offset, buf)
            if skipped < offset and step.copy:
                return  # the bytes past the copy were read from the live file
            if skipped < offset:
                self._warn(
                    "truncated",
                    f"{step.path}: holds {skipped} bytes, less than the stored offset {offset}",
                )
                return
        remaining = None if step.limit is None else max(step.limit - offset, 0)
        fill = 0
        pos = base
        while True:
            want = len(buf) - fill
            if remaining is not None:
                want = min(want, remaining)
            view = memoryview(buf)
            n = fh.readinto(view[fill : fill + want]) if want > 0 else 0  # type: ignore[attr-defined]
            n = n or 0
            fill += n
            if remaining is not None:
                remaining -= n
            cut = buf.rfind(b"\n", 0, fill) + 1
            if cut:
                after = _advance(pos, step.role, gen, offset + cut)
                span = Span(step.role, pos, gen, offset, offset + cut, cut, after)
                data = view[:cut]
                yield Chunk(data, span)
                data.release()
                view.release()
                buf[: fill - cut] = buf[cut:fill]
                fill -= cut
                offset += cut
                pos = after
            else:
                view.release()
            if n == 0:
                break
            if fill == len(buf) and self.max_line_bytes and fill >= self.max_line_bytes:
                # No log line is this long: skip it with bounded memory, keeping its head.
                head = bytes(buf[: min(fill, OVERSIZED_HEAD_BYTES)])
                length, fill, remaining, complete = _skip_line(fh, buf, fill, remaining)
                if not complete and step.role == "live":
                    return  # its end is not written yet: the next pass reads it again
                end = offset + length
                self._warn(
                    "oversized",
                    f"{step.path}: a line of {length} bytes at byte {offset} is longer than"
                    f" {self.max_line_bytes} bytes; skipped (its first {len(head)} bytes are"
                    " kept)",
                )
                after = _advance(pos, step.role, gen, end)
                span = Span(step.role, pos, gen, offset, end, 0, after)
                yield Chunk(memoryview(b""), span, (head, length))
                offset, pos = end, after
                if not complete:
                    break
                continue
            if fill == len(buf):
                buf.extend(bytes(len(buf)))  # one line longer than the buffer: grow
        if fill and step.role != "live":
            # A rotated file will not grow: its unterminated last line is complete.
            data = bytes(buf[:fill]) + b"\n"
            after = _advance(pos, step.role, gen, offset + fill)
            span = Span(step.role, pos, gen, offset, offset + fill, fill + 1, after)
            yield Chunk(memoryview(data), span)
        if len(buf) > self.chunk_bytes:
            del buf[self.chunk_bytes :]

    def read_batch(self, start: Position, max_lines: int, max_bytes: int) -> Batch:
        """Up to `max_lines` complete lines / `max_bytes` bytes from `start`.

        A single line longer than `max_bytes` is returned alone, so a log never stalls on it.
        """
        batch = Batch(start=start, end=start)
        stream = self.read(start)
        for chunk in stream:
            data = bytes(chunk.data)
            n = data.count(b"\n")
            room_lines = max_lines - batch.lines
            room_bytes = max_bytes - batch.nbytes
            if n <= room_lines and len(data) <= room_bytes:
                if chunk.oversized is not None:
                    batch.oversized.append((batch.lines, *chunk.oversized))
                batch.segments.append((data, chunk.span))
                batch.lines += n
                batch.nbytes += len(data)
                batch.end = chunk.span.after
                continue
            cut = _cut(data, room_lines, room_bytes, allow_oversize=batch.lines == 0)
            if cut:
                piece = data[:cut]
                batch.segments.append((piece, chunk.span))
                batch.lines += piece.count(b"\n")
                batch.nbytes += cut
                batch.end = chunk.span.position_after(cut)
            break
        else:
            batch.end = stream.position
        stream.close()
        return batch


class _NotReady(Exception):
    """A generation cannot be read to its end yet; stop this pass before it."""


def _cut(data: bytes, max_lines: int, max_bytes: int, allow_oversize: bool) -> int:
    """Bytes of `data` to take: whole lines, within both limits."""
    cut = 0
    lines = 0
    while lines < max_lines:
        nl = data.find(b"\n", cut)
        if nl < 0 or (nl + 1 > max_bytes and not (allow_oversize and lines == 0)):
            break
        cut = nl + 1
        lines += 1
    return cut


def _skip_line(
    fh: BinaryIO, buf: bytearray, fill: int, remaining: Optional[int]
) -> tuple[int, int, Optional[int], bool]:
    """Read past the rest of a line whose first `fill` bytes fill `buf`.

    Returns (its length, bytes after it now at the start of buf, remaining, whether its newline
    was found). Memory stays at the buffer's size however long the line is.
    """
    length = fill
    while True:
        want = len(buf) if remaining is None else min(len(buf), remaining)
        with memoryview(buf) as view:
            n = (fh.readinto(view[:want]) if want > 0 else 0) or 0  # type: ignore[attr-defined]
        if remaining is not None:
            remaining -= n
        if n == 0:
            return length, 0, remaining, False
        newline = buf.find(b"\n", 0, n)
        if newline >= 0:
            rest = n - newline - 1
            buf[:rest] = buf[newline + 1 : n]
            return length + newline + 1, rest, remaining, True
        length += n


def _skip(fh: BinaryIO, count: int, buf: bytearray) -> int:
    """Read and drop `count` bytes of a decompressing stream; returns how many there were."""
    done = 0
    view = memoryview(buf)
    try:
        while done < count:
            n = fh.readinto(view[: min(len(buf), count - done)])  # type: ignore[attr-defined]
            if not n:
                break
            done += n
    finally:
        view.release()
    return done
