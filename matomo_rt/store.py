"""Durable state files and the per-source lock.

A state file is the only record of what Matomo already holds, so it is replaced atomically (temp
file in the same directory, fsync, rename, fsync the directory) and a damaged one is a loud error,
never a silent restart from zero: that would import the whole log a second time.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any, Optional

STATE_FORMAT = 1
#: A document holding an open partitioned batch (matomo_rt.workers) is written as format 2: a
#: matomo-rt that predates it would ignore the batch and send its finished partitions again, so
#: it must refuse the file loudly instead. Both load here.
OPEN_BATCH_FORMAT = 2
READABLE_FORMATS = (STATE_FORMAT, OPEN_BATCH_FORMAT)


class StateError(Exception):
    """The state file cannot be read or written; the message says which and the way out."""


class LockedError(Exception):
    """Another process works on this source; the message names it."""


def load_state(path: Path) -> Optional[dict[str, Any]]:
    """The stored document, or None when there is none yet (a first run)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise StateError(f"{path}: permission denied reading the state file") from None
    except IsADirectoryError:
        raise StateError(f"{path}: is a directory, expected a state file") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise StateError(
            f"{path}: state file is corrupt (not JSON); inspect it, then move it aside and set "
            "the position with `matomo-rt seek`"
        ) from None
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise StateError(
            f"{path}: state format {found!r} is not one of {READABLE_FORMATS}; written by"
            " another version? "
            "move it aside and set the position with `matomo-rt seek`"
        )
    return data


def save_state(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace `path` with `data` (plus the format marker)."""
    version = OPEN_BATCH_FORMAT if data.get("open_batch") else STATE_FORMAT
    document = {**data, "format": version}
    payload = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
    _remove_stale_temps(path)
    try:
        atomic_write(path, payload)
    except OSError as exc:
        hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise StateError(f"{path}: cannot write state: {exc.strerror}{hint}") from None


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never a mix:
    temp file in the same directory, fsync, rename, fsync of the directory. Raises OSError."""
    directory = path.parent
    # Not tempfile.mkstemp: importing tempfile costs `matomo-rt tail` start-up time.
    tmp = str(directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files a killed writer left (only the lock holder writes `path`)."""
    try:
        stale = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return
    for tmp in stale:
        try:
            tmp.unlink()
        except OSError:
            pass


def ensure_dir(directory: Path) -> None:
    """Create the state directory if needed; a one-line StateError if that is impossible."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"{directory}: cannot create the state directory: {exc.strerror}"
        ) from None


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


class SourceLock:
    """A non-blocking flock held for as long as one process works on one source.

    The holder's pid is written into the file so a second instance can say who holds it. The
    lock dies with the process, so a crash never leaves a stale lock behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{self.path}: held by pid {holder}; another matomo-rt works on this source"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SourceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
