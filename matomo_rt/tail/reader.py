"""The offset reader: every complete line appended to a log, once, across rotations.

A pass plans before it reads. Planning finds every file that still holds unread lines — lines
written to a renamed generation before nginx reopened, the rest of the generation we were in
(renamed, compressed or copied away), generations rotated since, and the live file — and orders
them oldest first. Reading then moves bytes through one reused buffer and yields chunks of
complete lines, each with the position reached after it. The reader takes a position and
returns positions; it writes nothing: its caller owns the position and makes it durable once
the lines are safe.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections import namedtuple
from pathlib import Path

from matomo_rt.tail.identity import (
    FINGERPRINT_BYTES,
    Fingerprint,
    IdentityChanged,
    compression_of,
    open_log,
    read_head,
)
from matomo_rt.tail.position import Generation, Position

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import BinaryIO, Callable, Optional

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
#: Names beside a log that are ours or an editor's, never a rotated generation of it.
_NOT_GENERATIONS = (".offset", ".lock", ".tmp", ".state", ".swp", "~")
#: A compressed generation that still fails to decompress after this long is broken, not
#: still being written by logrotate.
COMPRESS_GRACE_SECONDS = 60.0
#: How often a pass re-plans when files move under it before leaving it to the next pass.
PLAN_ATTEMPTS = 5
#: How much of a skipped over-long line is kept for the operator.
OVERSIZED_HEAD_BYTES = 64 * 1024


class ReaderError(Exception):
    """The log cannot be read at all (permission, not a file); the message names it."""


class Warning_(namedtuple("Warning_", "kind message")):
    """A loss or oddity worth an operator's attention; kind is a stable metrics label.

    (This module avoids dataclasses: importing them costs `matomo-rt tail` start-up time.)
    """

    __slots__ = ()


class _Candidate:
    """A file beside the log that may be one of its generations."""

    __slots__ = ("_head", "compression", "dev", "ino", "mtime_ns", "name", "path", "size")

    def __init__(
        self,
        path: str,
        name: str,
        dev: int,
        ino: int,
        size: int,
        mtime_ns: int,
        compression: Optional[str],
    ) -> None:
        self.path, self.name, self.dev, self.ino = path, name, dev, ino
        self.size, self.mtime_ns, self.compression = size, mtime_ns, compression
        self._head: Optional[bytes] = None

    def head(self) -> bytes:
        """The file's first bytes, read from the very file that was stat()ed."""
        if self._head is None:
            try:
                self._head = read_head(self.path, self.compression, (self.dev, self.ino))
            except (IdentityChanged, FileNotFoundError):
                raise _Replan from None  # renamed since the directory was listed
            except OSError:
                self._head = b""
        return self._head


_GENERATION_NUMBER = re.compile(r"\.(\d+)(?:\.(?:gz|bz2|xz))?$")


def _age_key(cand: _Candidate) -> tuple[int, int, str]:
    """Oldest first: by last write (logrotate keeps it when compressing), then by name.

    Names break ties between files written within one clock tick: `.2` is older than `.1`,
    and dated names sort by their date.
    """
    m = _GENERATION_NUMBER.search(cand.name)
    return (cand.mtime_ns, -int(m.group(1)) if m else 0, cand.name)


class _Step(namedtuple("_Step", "role gen path limit", defaults=(None,))):
    """One file to read in this pass: `role` says how reading it moves the position.

    role: "finished" (late lines of a finished generation), "rotated" or "live"; gen.offset is
    where reading starts; limit: read no further (the live file's size when planned).
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
    moved = gen._replace(offset=offset)
    if role == "finished":
        return base.with_finished(moved)
    return base.with_current(moved)


class Chunk(namedtuple("Chunk", "data span")):
    """Complete lines (`data`: a view into the reader's buffer, valid until the next chunk)."""

    __slots__ = ()


class Batch:
    """A bounded run of complete lines and the positions they lead to; nothing committed."""

    def __init__(self, start: Position, end: Position) -> None:
        self.start = start
        self.end = end
        self.segments: list[tuple[bytes, Span]] = []
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
        on_oversized: Optional[Callable[[bytes, int], None]] = None,
    ) -> None:
        """`not_ours`: names beside the log (state, lock, offset files) that are never one of
        its generations, nor is anything whose name starts with one of them."""
        self.log_path = Path(log_path)
        self.not_ours = tuple(not_ours)
        self.start_at = start_at
        self.chunk_bytes = chunk_bytes
        # Longer lines are skipped (head kept via on_oversized) instead of held in memory.
        self.max_line_bytes = max_line_bytes
        self._on_oversized = on_oversized
        # Names of other logs in this directory that start with this log's name
        # (access.log.json beside access.log): they and their rotations are not ours.
        self.other_logs = tuple(
            n for n in other_logs if n != self.log_path.name and n.startswith(self.log_path.name)
        )
        self.warnings: list[Warning_] = []
        self._on_warning = on_warning

    def _warn(self, kind: str, message: str) -> None:
        warning = Warning_(kind, message)
        self.warnings.append(warning)
        log.warning("%s: %s", self.log_path, message)
        if self._on_warning is not None:
            self._on_warning(warning)

    # -- planning ------------------------------------------------------------------------

    def _stat_live(self) -> Optional[_Candidate]:
        path = str(self.log_path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise ReaderError(
                f"{path}: permission denied (add the user to the log's group)"
            ) from None
        except NotADirectoryError:
            raise ReaderError(f"{path}: a parent of the log path is not a directory") from None
        if not stat.S_ISREG(st.st_mode):
            raise ReaderError(f"{path}: not a regular file")
        if not os.access(path, os.R_OK):
            raise ReaderError(f"{path}: permission denied (add the user to the log's group)")
        return _Candidate(
            path, self.log_path.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, None
        )

    def _siblings(self) -> list[_Candidate]:
        directory = self.log_path.parent
        base = self.log_path.name
        found: list[_Candidate] = []
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return found
        except PermissionError:
            raise ReaderError(
                f"{directory}: permission denied listing the log's directory"
            ) from None
        for name in names:
            if name == base or not name.startswith(base):
                continue
            if name.startswith(self.other_logs) or name.startswith(self.not_ours):
                continue
            if name.endswith(_NOT_GENERATIONS) or name.startswith("."):
                continue
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
                continue
            found.append(
                _Candidate(
                    path,
                    name,
                    st.st_dev,
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                    compression_of(name),
                )
            )
        return found

    def plan(self, pos: Position) -> tuple[list[_Step], Position]:
        """The files to read, oldest first, and the position once planning is recorded.

        A rotation while planning (a name that now points at another file) starts the plan
        again; if files keep moving, this pass reads nothing and the next one tries again.
        """
        for _ in range(PLAN_ATTEMPTS):
            try:
                return self._plan_once(pos)
            except _Replan:
                continue
        log.debug("%s: files kept moving while planning; next pass", self.log_path)
        return [], pos

    def _plan_once(self, pos: Position) -> tuple[list[_Step], Position]:
        live = self._stat_live()
        cands = self._siblings()
        if not pos.initialized:
            return self._plan_first_run(live, cands)

        claimed: set[tuple[int, int]] = set()
        known_fps: list[Fingerprint] = []
        steps: list[_Step] = []

        def unclaimed() -> Iterable[_Candidate]:
            return (c for c in cands if (c.dev, c.ino) not in claimed)

        def claim(c: _Candidate) -> None:
            claimed.add((c.dev, c.ino))

        def relocate(gen: Generation) -> Optional[_Candidate]:
            """The generation's file under its new name or compressed form, by fingerprint."""
            if gen.fp.length == 0:
                return None
            for c in unclaimed():
                if gen.fp.matches(c.head()):
                    return c
            return None

        # Finished generations: recognise them, pick up lines written after their rename.
        finished: list[Generation] = []
        for gen in pos.finished:
            c = next((c for c in cands if gen.same_file(c.dev, c.ino)), None)
            if c is not None and not _head_ok(gen, c):
                # Inode reused by an unrelated file: also a .gz, since `compress` frees the
                # inode of the file it compressed and a later .gz or live file may get it.
                c = None
            moved = c is None
            if c is None:
                c = relocate(gen)
            if c is None:
                continue  # gone everywhere: forget it
            claim(c)
            known_fps.append(gen.fp)
            gen = _extend(_moved(gen, c), c.head())
            finished.append(gen)
            if gen.offset is not None and (
                moved or (c.compression is None and c.size > gen.offset)
            ):
                steps.append(_Step("finished", gen, c.path))
        pos = Position(True, pos.current, tuple(finished))

        # The generation we were in.
        live_is_current = False
        live_step: Optional[_Step] = None
        current = pos.current
        if current is not None:
            offset = current.offset or 0
            if live is not None and current.same_file(live.dev, live.ino):
                head = live.head()
                if _head_ok(current, live) and _resume_ok(live, offset):
                    live_is_current = True
                    gen = _extend(current._replace(name=live.name), head)
                    known_fps.append(gen.fp)
                    live_step = _Step("live", gen, live.path, limit=live.size)
                    pos = pos.with_current(gen)
                else:
                    copy = relocate(current)
                    if copy is not None:
                        claim(copy)
                        known_fps.append(current.fp)
                        self._warn(
                            "copytruncate",
                            # A renamed-and-compressed generation frees its inode, which the
                            # next `create` may reuse: that looks the same, and loses nothing.
                            "truncated in place (copytruncate), or replaced by a new file on the"
                            f" same inode; finishing the old content, now {copy.name}, from the"
                            " stored offset. With copytruncate, lines written between the copy"
                            " and the truncation are lost: prefer rename + reopen in logrotate",
                        )
                        gen = _extend(_moved(current, copy), copy.head())
                        steps.append(_Step("rotated", gen, copy.path))
                    elif live.size < offset:
                        self._warn(
                            "truncated",
                            f"truncated from {offset} to {live.size} bytes and no copy was"
                            " found; lines after the old offset are lost",
                        )
                    else:
                        self._warn(
                            "replaced",
                            "replaced by a new file with the same inode; reading it from the"
                            " start. Unread lines of the old file, if any, are lost",
                        )
            else:
                c = next((c for c in cands if current.same_file(c.dev, c.ino)), None)
                if c is not None and not _head_ok(current, c):
                    c = None  # inode reused (see above)
                if c is None:
                    c = relocate(current)
                if c is not None:
                    claim(c)
                    known_fps.append(current.fp)
                    if c.compression is None and not _resume_ok(c, offset):
                        self._warn(
                            "truncated",
                            f"rotated generation {c.name} is shorter than the stored offset"
                            f" {offset}; reading on from its end",
                        )
                        offset = c.size
                    gen = _extend(_moved(current, c), c.head())._replace(offset=offset)
                    steps.append(_Step("rotated", gen, c.path))
                elif (
                    live is not None
                    and current.fp.length >= min(FINGERPRINT_BYTES, offset, live.size)
                    and current.fp.length
                    and current.fp.matches(live.head())
                    and _resume_ok(live, offset)
                ):
                    # Same content under a new identity: a remount (st_dev), a restore, an
                    # edit that rewrote the file. Resuming is right; re-reading would duplicate.
                    self._warn(
                        "identity",
                        f"file identity changed but its content matches; resuming at byte {offset}",
                    )
                    live_is_current = True
                    gen = _extend(_moved(current, live), live.head())
                    known_fps.append(gen.fp)
                    live_step = _Step("live", gen, live.path, limit=live.size)
                    pos = pos.with_current(gen)
                else:
                    self._warn(
                        "lost",
                        f"the generation read up to byte {offset} (last seen as"
                        f" {current.name}) is gone; lines written after that byte, if any,"
                        " were not read",
                    )
                    pos = pos.with_current(None)

        # Generations rotated since: everything beside the log we do not know, oldest first.
        fresh = [c for c in unclaimed() if c.head() and not _any_match(known_fps, c.head())]
        for c in sorted(fresh, key=_age_key):
            gen = Generation(c.dev, c.ino, Fingerprint.of(c.head()), 0, c.name, c.compression)
            steps.append(_Step("rotated", gen, c.path))

        if live is not None and not live_is_current:
            head = live.head()
            if not _any_match(known_fps, head):
                gen = Generation(live.dev, live.ino, Fingerprint.of(head), 0, live.name)
                live_step = _Step("live", gen, live.path, limit=live.size)
        # The live file is always last: every older generation is finished before it.
        if live_step is not None:
            steps.append(live_step)
        return steps, pos

    def seek_position(self, to: str) -> Position:
        """A fresh position at "start", "end" or a byte offset of the live file.

        Everything beside the log counts as already read, as on a first run.
        """
        live = self._stat_live()
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
            if start and not _resume_ok(live, start):
                raise ValueError(f"byte {start} is not the start of a line")
        else:
            raise ValueError("use start, end or a byte offset")
        for _ in range(PLAN_ATTEMPTS):
            try:
                _, pos = self._plan_first_run(live, self._siblings(), start)
                return pos
            except _Replan:
                live = self._stat_live() or live
        raise ReaderError(f"{self.log_path}: files kept moving (a rotation?); try again")

    def _plan_first_run(
        self, live: Optional[_Candidate], cands: list[_Candidate], start_at: Optional[int] = -1
    ) -> tuple[list[_Step], Position]:
        """What exists now is history: remember it, and start the live file per start_at."""
        history = tuple(
            Generation(
                c.dev,
                c.ino,
                Fingerprint.of(c.head()),
                c.size if c.compression is None else None,
                c.name,
                c.compression,
            )
            for c in cands
            if c.head()
        )
        pos = Position(True, None, history)
        if live is None:
            return [], pos
        if start_at == -1:  # first run: as configured
            start_at = 0 if self.start_at == "beginning" else None
        start = _last_line_end(live) if start_at is None else start_at
        gen = Generation(live.dev, live.ino, Fingerprint.of(live.head()), start, live.name)
        pos = pos.with_current(gen)
        return [_Step("live", gen, live.path, limit=live.size)], pos

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
            if step.role == "rotated":
                gen = (reached.current or step.gen) if reached is not base else step.gen
                pos = reached.with_finished(gen).with_current(None)
            else:
                pos = reached
            reading.position = pos

    def _read_step(self, step: _Step, base: Position, buf: bytearray) -> Iterator[Chunk]:
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

    def _not_ready(self, step: _Step, exc: BaseException) -> None:
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
        self, step: _Step, base: Position, buf: bytearray, fh: BinaryIO, offset: int
    ) -> Iterator[Chunk]:
        gen = step.gen
        if gen.compression is None:
            fh.seek(offset)
        else:
            skipped = _skip(fh, offset, buf)
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
                self._oversized(step, offset, length, head)
                after = _advance(pos, step.role, gen, end)
                span = Span(step.role, pos, gen, offset, end, 0, after)
                yield Chunk(memoryview(b""), span)
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

    def _oversized(self, step: _Step, offset: int, length: int, head: bytes) -> None:
        self._warn(
            "oversized",
            f"{step.path}: a line of {length} bytes at byte {offset} is longer than"
            f" {self.max_line_bytes} bytes; skipped (its first {len(head)} bytes are kept)",
        )
        if self._on_oversized is not None:
            self._on_oversized(head, length)

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


class _Replan(Exception):
    """A file changed identity while planning; plan again."""


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


def _head_ok(gen: Generation, cand: _Candidate) -> bool:
    """Does the file still start as the generation did? (Empty at the time: nothing to check.)"""
    return gen.fp.length == 0 or gen.fp.matches(cand.head())


def _resume_ok(cand: _Candidate, offset: int) -> bool:
    """The resume point is inside the file and right after a line end."""
    if offset == 0:
        return True
    if cand.size < offset:
        return False
    try:
        fd = _open_same(cand)
    except FileNotFoundError:
        raise _Replan from None
    except OSError:
        return False
    try:
        return os.pread(fd, 1, offset - 1) == b"\n"
    finally:
        os.close(fd)


def _open_same(cand: _Candidate) -> int:
    """A descriptor of the very file `cand` describes; _Replan if its name moved on."""
    fd = os.open(cand.path, os.O_RDONLY)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (cand.dev, cand.ino):
        os.close(fd)
        raise _Replan
    return fd


def _extend(gen: Generation, head: bytes) -> Generation:
    """A longer fingerprint once the file has more head bytes (same prefix, verified)."""
    if len(head) > gen.fp.length and (gen.fp.length == 0 or gen.fp.matches(head)):
        return gen._replace(fp=Fingerprint.of(head))
    return gen


def _moved(gen: Generation, cand: _Candidate) -> Generation:
    return gen._replace(dev=cand.dev, ino=cand.ino, name=cand.name, compression=cand.compression)


def _any_match(fps: list[Fingerprint], head: bytes) -> bool:
    return any(fp.matches(head) for fp in fps)


def _last_line_end(cand: _Candidate) -> int:
    """Offset just after the last newline in the file (0 if none): where "end" starts."""
    size = cand.size
    try:
        fd = _open_same(cand)
    except FileNotFoundError:
        raise _Replan from None
    try:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            block = os.pread(fd, pos - start, start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
        return 0
    finally:
        os.close(fd)
