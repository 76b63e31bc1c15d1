"""What this process can see now of the files a verdict is about: can the log be read, can the
state directory be written (and by whom).

The service probes its log at each tick and records what it saw (facts.LogHealth); `status`,
another process with other rights, probes the state directory on the service's behalf, from
the credentials of the process holding the log's lock.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from typing import Optional

from matomo_rt.health.verdict import LOG_MISSING, LOG_NOT_A_FILE, LOG_UNREADABLE


def probe_file(path: os.PathLike[str] | str) -> Optional[tuple[str, str]]:
    """(problem kind, reason) when this process cannot read the log at `path`, else None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return LOG_MISSING, "no such file"
        if exc.errno == errno.EACCES:
            return LOG_UNREADABLE, "permission denied (on a parent directory)"
        return LOG_UNREADABLE, (exc.strerror or str(exc)).lower()
    if not stat.S_ISREG(st.st_mode):
        return LOG_NOT_A_FILE, "not a regular file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return LOG_MISSING, "no such file"
        return LOG_UNREADABLE, (exc.strerror or str(exc)).lower()
    os.close(fd)
    return None


#: Less free space than this on the state directory's file system: a state write fails.
MIN_FREE_BYTES = 64 * 1024
_CAP_DAC_OVERRIDE = 1
_CAP_SYS_RESOURCE = 24  # may use the blocks a file system reserves for root
_ALL_CAPS = (1 << 64) - 1


def probe_state_dir(
    directory: os.PathLike[str] | str,
    pid: Optional[int],
    state_file: Optional[os.PathLike[str] | str] = None,
) -> Optional[str]:
    """Why the process `pid` (the one holding a log's lock: the service) cannot write in the
    state directory, as far as another process can tell: a read-only file system, no space or
    inodes left for it, no write permission for its user. None when it looks writable.

    `status` runs apart from the service and cannot see its memory; this is how it still
    says "state cannot be written". With no holder (an `import` from cron between two runs)
    the owner of `state_file`, who wrote it last, stands for the next writer. ACLs, quotas
    and groups given only by the service manager are not looked at.
    """
    try:
        fs = os.statvfs(directory)
    except OSError:
        return None  # a state directory that cannot be read is its own problem
    if fs.f_flag & os.ST_RDONLY:
        return f"{directory}: read-only file system"
    creds, who = (_credentials(pid), f"pid {pid}") if pid is not None else (None, "")
    if creds is None and state_file is not None:  # no holder, or /proc hides it
        creds, who = _owner_credentials(state_file), f"the owner of {state_file}"
    if creds is None:
        return None
    uid, gids, caps = creds
    privileged = uid == 0 or bool(caps >> _CAP_SYS_RESOURCE & 1)
    free = (fs.f_bfree if privileged else fs.f_bavail) * fs.f_frsize
    if free < MIN_FREE_BYTES:
        return f"{directory}: no space left on device ({free:,} bytes free)"
    if fs.f_files and (fs.f_ffree if privileged else fs.f_favail) == 0:
        return f"{directory}: no inodes left on device"
    if caps >> _CAP_DAC_OVERRIDE & 1:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    if uid == st.st_uid:
        need = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid in gids:
        need = stat.S_IWGRP | stat.S_IXGRP
    else:
        need = stat.S_IWOTH | stat.S_IXOTH
    if st.st_mode & need != need:
        return f"{directory}: no write permission for uid {uid} ({who})"
    return None


def _owner_credentials(path: os.PathLike[str] | str) -> Optional[tuple[int, frozenset[int], int]]:
    """The credentials of the user owning `path`, from the user and group databases (root:
    every capability)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    gids = {st.st_gid}
    try:
        user = pwd.getpwuid(st.st_uid)
        gids.update(os.getgrouplist(user.pw_name, user.pw_gid))
    except (KeyError, OSError):
        pass
    return st.st_uid, frozenset(gids), _ALL_CAPS if st.st_uid == 0 else 0


def _credentials(pid: int) -> Optional[tuple[int, frozenset[int], int]]:
    """(file-system uid, groups, effective capabilities) of process `pid`, from /proc."""
    try:
        fields = dict(
            line.split(":", 1)
            for line in open(f"/proc/{pid}/status", encoding="utf-8")
            if ":" in line
        )
        uid = int(fields["Uid"].split()[3])
        gids = {int(fields["Gid"].split()[3]), *map(int, fields["Groups"].split())}
        caps = int(fields["CapEff"].strip(), 16)
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return uid, frozenset(gids), caps
