"""`matomo-rt tail`: the reader alone, as a drop-in for logtail/logtail2.

New complete lines go to stdout in large writes; the offset is committed only after every byte
was written, so a broken pipe or a crash repeats lines rather than losing them.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

from matomo_rt.store import SourceLock, StateError, load_state, save_state
from matomo_rt.tail.identity import Fingerprint, read_head
from matomo_rt.tail.position import Generation, Position, stored_position
from matomo_rt.tail.reader import LogReader

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Optional

LOGTAIL_OFFSET_SUFFIX = ".offset"


def default_offset_file(log: Path) -> Path:
    """Where logtail keeps its offset, so switching tools keeps the position."""
    return log.with_name(log.name + LOGTAIL_OFFSET_SUFFIX)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def from_logtail_offset(log: Path, offset_file: Path) -> Optional[Position]:
    """Continue where logtail stopped: its offset file holds "inode\\noffset\\n".

    Returns None when the file is not in logtail's format (or the inode is gone).
    """
    try:
        fields = offset_file.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(fields) != 2 or not all(f.isdigit() for f in fields):
        return None
    ino, offset = int(fields[0]), int(fields[1])
    candidates = [log, *sorted(log.parent.glob(log.name + "*"))]
    for path in candidates:
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_ino == ino and path.suffix not in (".gz", ".bz2", ".xz"):
            offset = _line_start_at_or_after(path, offset)
            gen = Generation(
                st.st_dev, ino, Fingerprint.of(read_head(str(path))), offset, path.name
            )
            return Position(initialized=True, current=gen)
    return None


def _line_start_at_or_after(path: Path, offset: int) -> int:
    """logtail prints a partial last line and saves the offset inside it: the rest of that line
    would come out as a fragment. Skip to the next line start (if it is there yet)."""
    if offset <= 0:
        return offset
    with path.open("rb") as fh:
        fh.seek(offset - 1)
        if fh.read(1) == b"\n":
            return offset
        rest = fh.read(1 << 20)
    newline = rest.find(b"\n")
    return offset if newline < 0 else offset + newline + 1


def run_tail(
    log: Path,
    offset_file: Optional[Path],
    start_at: str = "beginning",
    test_mode: bool = False,
    out_fd: int = 1,
) -> int:
    """Print what is new in `log` since the offset in `offset_file`; returns an exit code."""
    offset_file = offset_file or default_offset_file(log)
    with SourceLock(offset_file.with_name(offset_file.name + ".lock")):
        try:
            position = stored_position(load_state(offset_file), offset_file)
        except StateError:
            logtail_position = from_logtail_offset(log, offset_file)
            if logtail_position is None:
                raise
            position = logtail_position
            print(f"matomo-rt: {offset_file}: continuing from logtail's offset", file=sys.stderr)
        # logtail's file stays until our first commit replaces it: with -t, or when the output
        # fails, the next run still starts from logtail's offset.
        if not log.exists() and not position.initialized:
            print(f"matomo-rt: {log}: no such file", file=sys.stderr)
            return 66
        reader = LogReader(log, start_at=start_at, not_ours=(offset_file.name,))
        reading = reader.read(position)
        try:
            for chunk in reading:
                _write_all(out_fd, chunk.data)
        except BrokenPipeError:
            return 1
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                return 1
            raise
        if not test_mode:
            document = {
                "log": str(log),
                "position": reading.position.to_json(),
                "updated": time.time(),
            }
            save_state(offset_file, document)
    return 0
