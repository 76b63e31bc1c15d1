"""Closed log files for `import-files`: their content identity, their time order, and a
reader of their lines (through .gz, .bz2, .xz) from a committed position.

A file's identity is its content — the fingerprint of its decompressed head and its
decompressed length (matomo_rt.ledger) — so a renamed or (re)compressed file is the same file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from matomo_rt import ledger
from matomo_rt.pipeline import MAX_LINE_BYTES
from matomo_rt.tail.identity import (
    FINGERPRINT_BYTES,
    Fingerprint,
    compression_of,
    open_log,
)
from matomo_rt.tail.position import Generation, Position
from matomo_rt.tail.reader import Batch, Span

READ_BYTES = 1 << 20
OVERSIZED_HEAD = 64 * 1024  # what is kept of a line longer than MAX_LINE_BYTES


@dataclass(frozen=True)
class HistoryFile:
    """One closed file and its content identity."""

    path: Path
    dev: int
    ino: int
    mtime_ns: int
    compression: Optional[str]
    head: bytes
    length: int  # decompressed bytes

    @property
    def key(self) -> str:
        """The identity: the same for a renamed, compressed or copied file."""
        return ledger.history_key(self.head, self.length)

    @property
    def generation(self) -> Generation:
        fp = Fingerprint.of(self.head)
        return Generation(self.dev, self.ino, fp, 0, self.path.name, self.compression)


def survey(path: Path, on_read: Optional[Callable[[int], None]] = None) -> HistoryFile:
    """Identity of `path`, read through its compression; OSError/ValueError name the problem.

    `on_read` is told, after each piece, how many bytes of the file on disk were read: the
    whole file is read, which takes a while for a large compressed one."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    compression = compression_of(path.name)
    head = b""
    length = 0
    with open_log(str(path), compression, (st.st_dev, st.st_ino)) as fh:
        try:
            while True:
                piece = fh.read(READ_BYTES)
                if not piece:
                    break
                if len(head) < FINGERPRINT_BYTES:
                    head += piece[: FINGERPRINT_BYTES - len(head)]
                length += len(piece)
                if on_read is not None:  # the descriptor's offset: compressed bytes consumed
                    on_read(os.lseek(fh.fileno(), 0, os.SEEK_CUR))
        except (EOFError, OSError) as exc:
            if isinstance(exc, PermissionError):
                raise
            raise ValueError(f"cannot decompress ({exc}): a damaged or unfinished file") from None
        except Exception as exc:  # zlib.error, lzma.LZMAError
            raise ValueError(f"cannot decompress ({exc}): a damaged or unfinished file") from None
    return HistoryFile(path, st.st_dev, st.st_ino, st.st_mtime_ns, compression, head, length)


def time_order(files: list[HistoryFile]) -> list[HistoryFile]:
    """Oldest first: by last write (logrotate keeps it when compressing), then `.2` before `.1`."""

    def key(f: HistoryFile) -> tuple[int, int, str]:
        number = 0
        stem = f.path.name
        if f.compression:
            stem = stem[: -len(f.compression)]
        tail = stem.rsplit(".", 1)[-1]
        if tail.isdigit():
            number = -int(tail)
        return (f.mtime_ns, number, f.path.name)

    return sorted(files, key=key)


# -- reading one closed file ---------------------------------------------------------------


class FileReader:
    """Batches of complete lines of one closed (possibly compressed) file from a position.

    The open file is kept between batches, so a compressed file is decompressed once, not once
    per batch. A last line without a newline is complete (the file is closed) and gets one.
    """

    def __init__(self, f: HistoryFile) -> None:
        self.file = f
        self._fh: Any = None
        self._next = -1  # file offset of `_pending`'s first byte
        self._pending = b""

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh, self._next, self._pending = None, -1, b""

    def _open_at(self, offset: int) -> None:
        if self._fh is not None and self._next == offset:
            return
        self.close()
        f = self.file
        self._fh = open_log(str(f.path), f.compression, (f.dev, f.ino))
        if f.compression is None:
            self._fh.seek(offset)
        else:
            left = offset
            while left > 0:
                piece = self._fh.read(min(left, READ_BYTES))
                if not piece:
                    break
                left -= len(piece)
        self._next = offset

    def _read(self) -> bytes:
        return self._fh.read(READ_BYTES) or b""

    def read_batch(self, start: Position, max_lines: int, max_bytes: int) -> Batch:
        """Up to `max_lines` lines / `max_bytes` bytes (at least one line) from `start`."""
        gen = start.current or self.file.generation
        offset = gen.offset or 0
        batch = Batch(start=start, end=start)
        if offset >= self.file.length:
            return batch
        self._open_at(offset)
        data, self._pending = self._pending, b""
        cut = lines = skipped = 0  # skipped: bytes of over-long lines before data[0]
        added_newline = False
        while True:
            nl = data.find(b"\n", cut)
            if nl < 0:
                if len(data) - cut > MAX_LINE_BYTES:
                    if lines:
                        break  # the long line starts the next batch
                    length, data = self._skip_line(data, batch)
                    skipped += length
                    continue
                more = self._read()
                if more:
                    data += more
                    continue
                if cut < len(data):  # the closed file's unterminated last line
                    data += b"\n"
                    added_newline = True
                    cut = len(data)
                    lines += 1
                break
            if nl + 1 - cut > MAX_LINE_BYTES:  # no web server writes such a line
                if lines:
                    break  # the long line starts the next batch
                batch.oversized.append((0, data[:OVERSIZED_HEAD], nl + 1))
                skipped += nl + 1
                data = data[nl + 1 :]
                continue
            if lines and nl + 1 > max_bytes:
                break
            cut = nl + 1
            lines += 1
            if lines >= max_lines or cut >= max_bytes:
                break
        body = data[:cut]
        self._pending = b"" if added_newline else data[cut:]
        end = offset + skipped + cut - (1 if added_newline else 0)
        self._next = end
        after = start.with_current(gen._replace(offset=end))
        if body:
            span = Span("live", start, gen, offset + skipped, end, len(body), after)
            batch.segments.append((body, span))
            batch.lines, batch.nbytes = lines, len(body)
        batch.end = after
        return batch

    def _skip_line(self, head: bytes, batch: Batch) -> tuple[int, bytes]:
        """Read past an over-long line (its head is quarantined with the batch's commit);
        its length and the bytes after it."""
        length = len(head)
        while True:
            more = self._read()
            nl = more.find(b"\n")
            if not more or nl >= 0:
                length += nl + 1 if more else 0
                batch.oversized.append((0, head[:OVERSIZED_HEAD], length))
                return length, more[nl + 1 :] if more else b""
            length += len(more)
