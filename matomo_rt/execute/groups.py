"""Process groups of running children: who is running, and stopping a group for good.

Every child runs in its own session and process group, so a signal to the group reaches the
helpers it started too. :func:`kill_all_children` runs at interpreter exit: a child must never
outlive us unnoticed.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when we stop a child's process group.
DEFAULT_GRACE = 2.0

# How often waiting loops look again (group-death polling).
_POLL_INTERVAL = 0.02


@dataclass
class Child:
    """A running child and what we did to it (shared between run() and its helpers)."""

    pid: int
    pgid: int
    label: str  # redacted, for log lines
    killed_by_us: bool = False
    timed_out: bool = False
    source_error: Optional[BaseException] = None
    stdin_sent: int = 0  # bytes written into the child's stdin pipe


_children: dict[int, Child] = {}
_children_lock = threading.Lock()


def register(child: Child) -> None:
    """Count `child` as running until :func:`unregister`."""
    with _children_lock:
        _children[child.pid] = child


def unregister(child: Child) -> None:
    with _children_lock:
        _children.pop(child.pid, None)


def running_children() -> list[tuple[int, int]]:
    """(pid, process group) of every child started by ``execute.run`` that has not ended."""
    with _children_lock:
        return [(c.pid, c.pgid) for c in _children.values()]


def group_alive(pgid: int) -> bool:
    """Does process group ``pgid`` still have a member that is not a zombie?

    ``killpg(pgid, 0)`` also succeeds for zombies (our own not-yet-reaped child, or a
    grandchild re-parented to a PID 1 that does not reap), which would make every stop wait
    the full grace. On Linux we look at /proc instead.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not sys.platform.startswith("linux"):
        return True
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def stop_groups(pgids: Sequence[int], grace: float) -> None:
    """SIGTERM every group, wait up to ``grace`` for them to go, then SIGKILL the rest."""
    pending = []
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
            pending.append(pgid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if group_alive(p)]
        if pending:
            time.sleep(_POLL_INTERVAL)
    for pgid in pending:
        try:
            os.killpg(pgid, signal.SIGKILL)
            log.debug("process group %d ignored SIGTERM for %.1fs: sent SIGKILL", pgid, grace)
        except ProcessLookupError:
            pass


def kill_all_children(grace: float = DEFAULT_GRACE) -> None:
    """Stop the process group of every running child (SIGTERM, ``grace`` s, SIGKILL).

    For the service's fatal exit and for interpreter exit (registered with atexit): a
    child must never outlive us unnoticed. The ``execute.run`` calls waiting on these children
    return a ``Completed`` with ``returncode=None``.
    """
    with _children_lock:
        victims = list(_children.values())
        for child in victims:
            child.killed_by_us = True
    if not victims:
        return
    log.info("stopping %d running child process(es)", len(victims))
    for child in victims:
        log.debug("stopping pid %d (group %d): %s", child.pid, child.pgid, child.label)
    stop_groups([c.pgid for c in victims], grace)


atexit.register(kill_all_children)
