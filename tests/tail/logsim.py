"""A small simulator of a log being written and rotated the ways logrotate rotates it.

It knows which lines it wrote to which generation, so tests can compare what the reader
handed on with the truth. Compressed generations keep the mtime of their source, as logrotate
does, because the reader orders generations by it.

Two things the filesystem and the clock decide can be taken over, so that a property test
replays exactly (hypothesis cannot shrink or replay what it does not decide):

* inode reuse: with `freed`, a deleted file's inode is kept (the file moves into that
  directory) and a file created later takes it when `reuse` says so, as ext4 or tmpfs may do
  with a freed inode. Without it, deleted files are unlinked and reuse is up to the kernel.
* mtimes: with `clock`, every file written gets the next tick of a logical clock (or the same
  tick again after `same_tick()`: two writes within one tick of the real clock).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
from pathlib import Path
from typing import Optional

COMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def line_for(number: int, width: int = 40) -> bytes:
    """A unique line whose first bytes already differ from every other line's."""
    tag = hashlib.sha1(str(number).encode()).hexdigest()[:10]
    body = f'{tag}-{number:07d} {{"path": "/p/{number}"}}'
    return (body + "x" * max(0, width - len(body))).encode() + b"\n"


class LogSim:
    """Writes `access.log` in `directory` and rotates it; records every line written."""

    def __init__(
        self,
        directory: Path,
        name: str = "access.log",
        freed: Optional[Path] = None,
        clock: bool = False,
    ) -> None:
        self.dir = directory
        self.live = directory / name
        self.freed = freed
        self.spare: list[Path] = []  # files in `freed`, most recently deleted last
        self.reuse: list[int] = []  # per file created next: 0 a new inode, k the k-th latest freed
        self.reused = 0  # how many files took a freed inode (for tests of the model)
        self.deleted = 0
        self.now: Optional[int] = 1_700_000_000 * 10**9 if clock else None
        self.tie = False
        if freed is not None:
            freed.mkdir(exist_ok=True)
        self._create(self.live)
        self.counter = 0
        self.dated = 0
        self.partial: Optional[bytes] = None  # rest of a line not yet written
        self.expected: list[bytes] = []  # complete lines, in the order they became complete
        self.open_fragment: Optional[bytes] = None  # written part of the unfinished line
        self.copied: Optional[int] = None  # len(expected) when copytruncate copied, until truncate
        self.window: set[bytes] = set()  # lines written between a copy and its truncate

    # the filesystem and the clock --------------------------------------------------------
    def same_tick(self) -> None:
        """The next file written gets the mtime of the last one (logical clock only)."""
        self.tie = True

    def _stamp(self, path: Path) -> None:
        """Set `path`'s mtime from the logical clock (a no-op without one)."""
        if self.now is None:
            return
        if not self.tie:
            self.now += 10**9
        self.tie = False
        os.utime(path, ns=(self.now, self.now))

    def _create(self, path: Path) -> None:
        """A new empty file at `path`: a new inode, or one a deleted file had (`reuse`)."""
        k = self.reuse.pop(0) if self.reuse else 0
        if 0 < k <= len(self.spare):
            self.spare.pop(-k).rename(path)
            with path.open("r+b") as fh:
                fh.truncate(0)
            self.reused += 1
        else:
            path.write_bytes(b"")
        self._stamp(path)

    def _delete(self, path: Path) -> None:
        """Remove `path` from the log's directory; its inode is kept for reuse with `freed`."""
        if self.freed is None:
            path.unlink()
            return
        self.deleted += 1
        spare = self.freed / str(self.deleted)
        path.rename(spare)
        self.spare.append(spare)

    # writing ---------------------------------------------------------------------------
    def append(self, lines: int, partial: bool = False, width: int = 40) -> None:
        with self.live.open("ab") as fh:
            if self.open_fragment is not None and self.partial is not None:
                fh.write(self.partial)
                self.expected.append(self.open_fragment + self.partial)
                self.open_fragment = self.partial = None
            for _ in range(lines):
                self.counter += 1
                line = line_for(self.counter, width)
                fh.write(line)
                self.expected.append(line)
            if partial:
                self.counter += 1
                line = line_for(self.counter, width)
                cut = max(12, len(line) // 2)
                fh.write(line[:cut])
                self.open_fragment, self.partial = line[:cut], line[cut:]
        self._stamp(self.live)

    def append_to(self, path: Path, lines: int) -> None:
        """Lines nginx writes to a renamed file before it reopens its log."""
        with path.open("ab") as fh:
            for _ in range(lines):
                self.counter += 1
                line = line_for(self.counter)
                fh.write(line)
                self.expected.append(line)
        self._stamp(path)

    def _close_fragment(self) -> None:
        """A rotated file will not grow: its unterminated last line counts as complete."""
        if self.open_fragment is not None:
            self.expected.append(self.open_fragment + b"\n")
            self.open_fragment = self.partial = None

    # rotating --------------------------------------------------------------------------
    def numbered(self) -> list[Path]:
        out = []
        for p in self.dir.iterdir():
            rest = p.name[len(self.live.name) :]
            if p.name.startswith(self.live.name) and rest[:1] == "." and rest[1:2].isdigit():
                out.append(p)
        return out

    def _shift(self) -> None:
        def number(p: Path) -> int:
            return int(p.name[len(self.live.name) + 1 :].split(".")[0])

        for p in sorted(self.numbered(), key=number, reverse=True):
            n = number(p)
            suffix = p.name[len(self.live.name) + 1 + len(str(n)) :]
            p.rename(self.dir / f"{self.live.name}.{n + 1}{suffix}")

    def compress(self, path: Path, suffix: str = ".gz") -> Path:
        target = path.with_name(path.name + suffix)
        self._create(target)
        with path.open("rb") as src, COMPRESSORS[suffix](target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        st = path.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        self._delete(path)
        return target

    def rotate_rename(self, compress: Optional[str] = None, delay: bool = True) -> Path:
        """rename + create; `compress` now, or on the next rotation with delaycompress."""
        self._close_fragment()
        self._shift()
        rotated = self.dir / f"{self.live.name}.1"
        self.live.rename(rotated)
        self._create(self.live)
        if compress:
            if delay:
                second = self.dir / f"{self.live.name}.2"
                if second.exists():
                    self.compress(second, compress)
            else:
                rotated = self.compress(rotated, compress)
        return rotated

    def rotate_dateext(self, compress: Optional[str] = None, hourly: bool = False) -> Path:
        self._close_fragment()
        self.dated += 1
        stamp = f"2026112{self.dated // 24 % 10}{self.dated % 24:02d}" if hourly else None
        stamp = stamp or f"2026{self.dated:04d}"
        rotated = self.dir / f"{self.live.name}-{stamp}"
        self.live.rename(rotated)
        self._create(self.live)
        if compress:
            rotated = self.compress(rotated, compress)
        return rotated

    def rotate_copytruncate(self) -> Path:
        """logrotate's copytruncate with nothing written between its copy and its truncate."""
        self._close_fragment()
        copy = self.copy_for_truncate()
        self.truncate_after_copy()
        return copy

    def copy_for_truncate(self) -> Path:
        """The first half of copytruncate: shift the numbered generations, copy the live file
        to `.1`. Until `truncate_after_copy`, the copy and the live file hold the same lines,
        and lines written meanwhile are only in the live file."""
        if self.open_fragment is not None:
            self.append(0)  # nginx finishes the line it is writing before logrotate copies
        self._shift()
        copy = self.dir / f"{self.live.name}.1"
        self._create(copy)
        shutil.copy2(self.live, copy)  # into the created file (its inode), with the mtime
        self.copied = len(self.expected)
        return copy

    def truncate_after_copy(self) -> None:
        """The second half: empty the live file. Lines written since the copy go with it unless
        a reader took them in time: they may be missing, never twice (copytruncate's window)."""
        if self.copied is not None:
            self.window.update(self.expected[self.copied :])
        self.copied = None
        self.open_fragment = self.partial = None  # a half-written line dies with the truncate
        with self.live.open("r+b") as fh:
            fh.truncate(0)
        self._stamp(self.live)

    def delete_and_recreate(self) -> None:
        """rm + create: an unfinished last line of the deleted file is gone with it."""
        self.open_fragment = self.partial = None
        self._delete(self.live)
        self._create(self.live)
