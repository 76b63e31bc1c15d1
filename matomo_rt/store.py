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
#: A document holding an open partitioned batch (matomo_rt.openbatch) is written as format 2: a
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


def describe_process(pid: Optional[int]) -> str:
    """'pid 123 (matomo-rt run)': who holds a lock, for the message that says so."""
    if pid is None:
        return "another process (its pid is unknown)"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    words = [os.path.basename(a) if i == 0 else a for i, a in enumerate(argv)]
    command = " ".join(w.decode(errors="replace") for w in words if w)
    if len(command) > 200:
        command = command[:197] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def process_started(pid: int) -> Optional[float]:
    """When process `pid` started (Unix time), from /proc; None if it is gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        # Field 22 (starttime, in clock ticks after boot); the command name before it, in
        # parentheses, may hold spaces: count from the last ")".
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def lock_holder(lock_path: Path) -> tuple[bool, Optional[int]]:
    """(held, pid): whether a process holds the flock on `lock_path`, and which, if known.

    Looks in /proc/locks first, which takes no lock at all: probing with flock() would hold a
    shared lock for an instant, long enough to make a starting `import` or service believe
    another instance runs. The probe is the fallback where /proc/locks cannot answer.
    """
    try:
        st = os.stat(lock_path)
    except OSError:
        return False, None  # no lock file: nobody ever held it (or it is unreadable)
    file_pid = _pid_in(lock_path)
    entries = _proc_flocks()
    if entries is not None:
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
        inode_only = False
        for entry_dev, ino, pid in entries:
            if ino != st.st_ino:
                continue
            if entry_dev == dev:
                return True, pid or file_pid
            inode_only = True
        if not inode_only:
            return False, None
        # Same inode on a device /proc/locks names differently (overlayfs reports the
        # underlying device to stat()): ask flock itself.
    return _probe(lock_path, file_pid)


def _pid_in(lock_path: Path) -> Optional[int]:
    try:
        text = lock_path.read_bytes()[:64].decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_flocks() -> Optional[list[tuple[str, int, int]]]:
    """(major:minor, inode, pid) of every flock() lock on the system; None if unreadable."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    found = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:123456 0 EOF" ("->" marks a waiter)
        if "->" in fields:
            continue
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, ino = fields[5].rsplit(":", 2)
            found.append((f"{int(major, 16):02x}:{int(minor, 16):02x}", int(ino), int(fields[4])))
        except ValueError:
            continue
    return found


def _probe(lock_path: Path, file_pid: Optional[int]) -> tuple[bool, Optional[int]]:
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True, file_pid
    except OSError:
        return False, None
    finally:
        os.close(fd)  # releases the shared lock at once, if we got it
    return False, None


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
            os.close(fd)
            _, pid = lock_holder(self.path)
            raise LockedError(
                f"{self.path}: held by {describe_process(pid)}; another matomo-rt works on this"
                " source"
            ) from None
        # Write, then cut: a reader never sees the file empty between the two.
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
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
