"""The one place that starts processes: import_logs.py, ``php console core:archive``.

Everything that can go wrong with a child process is handled here, once:

* the program is resolved and checked before anything is forked, so a missing or
  non-executable program is an :class:`ExecError` with one clear, redacted line;
* stdout/stderr are pipes, never a pseudo-terminal (``sh`` defaults to a pty for stdout,
  which would switch on import_logs.py's interactive progress output), captured
  separately and bounded (the tail is kept: summaries are printed last);
* stdin is streamed from an iterable of byte chunks by our own feeder thread;
* the child runs in its own session/process group; a timeout, an interrupt or
  :func:`kill_all_children` signals the whole group (SIGTERM, a short grace, SIGKILL),
  so helpers the child started do not survive it;
* ``PR_SET_PDEATHSIG`` makes the kernel kill the child if we are killed with SIGKILL;
* a non-zero exit is a result (:class:`Completed`), not an exception;
* secrets never reach a message, a log line or an exception produced here (masked by
  :mod:`matomo_rt.redact`), and the ``sh`` library's own exceptions (which embed the full
  command line and output) never propagate.

Processes are started with ``sh`` (``sh.Command``, ``_bg=True``): it forks, sets up the
session and the output pipes, reads stdout/stderr in its threads and reaps the child. Where
its defaults or internals are unsafe for a long-running service we take over, and say why
at each place (search for "sh pitfall"): the stdin feeding (our thread, our pipe), the
timeout (a group kill instead of sh's SIGKILL to the leader only), and the chdir + exec
step (done in our preexec function: sh leaks descriptors when exec fails).

This module runs a started child to its end (stdin, timeout, what it left behind);
:mod:`.start` starts it, :mod:`.groups` knows the running children and stops their process
groups, :mod:`.result` holds :class:`Completed` and :class:`ExecError`.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import select
import termios
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Optional

from matomo_rt.config import TOKEN_ENV
from matomo_rt.execute.groups import (
    DEFAULT_GRACE,
    Child,
    group_alive,
    kill_all_children,
    register,
    running_children,
    stop_groups,
    unregister,
)
from matomo_rt.execute.result import Completed, ExecError, exec_error
from matomo_rt.execute.start import resolve, start, wait
from matomo_rt.redact import describe_argv, redact

__all__ = [
    "DEFAULT_GRACE",
    "Completed",
    "ExecError",
    "kill_all_children",
    "redact",
    "run",
    "running_children",
]

log = logging.getLogger(__name__)

#: Bytes a child's stdin is fed in at a time: big enough for few syscalls, small enough to stop
#: quickly when the child dies (pipeline and workers cut their input into pieces of this size).
STDIN_CHUNK = 1 << 20
#: Never inherited by a child: a token in $MATOMO_TOKEN_AUTH is handed to import_logs.py alone,
#: through ``env_extra`` (matomo_rt.matomo.importer.child_env).
PRIVATE_ENV = frozenset([TOKEN_ENV])


def _feed(
    fd: int, chunks: Iterable[bytes], child: Child, stop: threading.Event, grace: float
) -> None:
    """Write ``chunks`` to the child's stdin (``fd``, non-blocking), then close it.

    sh pitfall: sh's own stdin thread ignores the byte count os.write() returns (a write
    interrupted by a signal after a partial transfer silently loses the rest of the chunk),
    swallows exceptions raised by the iterable (the child then waits for EOF forever) and
    is only safe with chunks <= PIPE_BUF, which is slow. So we hand sh the read end of our
    own pipe and feed it here.

    The child closing stdin early (EPIPE) is not an error: it is its exit code that says
    what happened. If the iterable raises, the child is stopped *before* its stdin is
    closed, so it never mistakes a truncated batch for a complete one; run() re-raises.
    """
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    sent = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    n = 0
                if n:
                    sent += n
                    child.stdin_sent = sent
                    view = view[n:]
                    continue
                while not poller.poll(100):  # wait for room, but notice a stop request
                    if stop.is_set():
                        return
            if stop.is_set():
                return
    except BrokenPipeError:
        log.debug("pid %d closed its stdin after %d bytes", child.pid, sent)
    except BaseException as e:
        child.source_error = e
        child.killed_by_us = True
        log.debug("stdin source failed (%s): stopping pid %d", type(e).__name__, child.pid)
        stop_groups([child.pgid], grace)
    finally:
        os.close(fd)


def run(
    argv: Sequence[str],
    *,
    stdin: Optional[Iterable[bytes]] = None,
    env_extra: Mapping[str, str] = {},
    timeout: float,
    secrets: Sequence[str] = (),
    cwd: Optional[str] = None,
    max_output: int = 16 * 1024 * 1024,
    grace: float = DEFAULT_GRACE,
) -> Completed:
    """Run ``argv`` (an argument list, never a shell string) to completion.

    ``stdin``: byte chunks streamed to the child while its output is read, so neither side
    can block the other; None gives the child an immediately-closed stdin. If the iterable
    raises, the child is stopped and the exception is re-raised here.

    ``env_extra`` is added to (not substituted for) our environment less PRIVATE_ENV; its
    PATH, if any, is also the one the program is looked up in.

    ``timeout`` bounds the whole run: then the child's process group gets SIGTERM, and
    SIGKILL ``grace`` seconds later; the result has ``timed_out=True, returncode=None``.
    (sh's own ``_timeout`` sends one signal to the leader only: helpers would survive.)
    Processes the child leaves behind in its group after exiting are stopped too (warning).

    Raises :class:`ExecError` if the program cannot be started. A non-zero exit is not an
    exception. ``secrets`` are masked in every message and log line produced here.
    """
    argv = tuple(argv)
    if not argv:
        raise ValueError("run() needs a program")
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, got {type(arg).__name__}")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if max_output <= 0:
        raise ValueError("max_output must be positive")
    for key, value in env_extra.items():
        # sh's own check would put the value, maybe a token, in its error message.
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env_extra entries must be str: {redact(str(key), secrets)}")
    secrets = tuple(s for s in secrets if s)
    program = argv[0]
    label = describe_argv(argv, secrets)

    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    env.update(env_extra)
    if cwd is not None and not os.path.isdir(cwd):
        why = "not a directory" if os.path.exists(cwd) else "no such directory"
        raise exec_error(program, f"working directory {cwd}: {why}", secrets)
    path = resolve(program, env.get("PATH", os.defpath), cwd, secrets)
    started = start(argv, path, env, cwd, label, secrets, max_output)
    running, stdin_read, stdin_write = started.running, started.stdin_read, started.stdin_write
    out, err = started.out, started.err

    process = running.process
    child = Child(pid=process.pid, pgid=process.pgid, label=label)
    register(child)
    log.debug("started pid %d: %s", child.pid, label)

    stop_feeding, finished = threading.Event(), threading.Event()

    def watchdog() -> None:
        if finished.wait(timeout):
            return
        if process.exit_code is None:  # still running (not just draining its output)
            child.timed_out = True
            child.killed_by_us = True
            log.debug("pid %d timed out after %.1fs: stopping its group", child.pid, timeout)
            stop_groups([child.pgid], grace)

    threads = [threading.Thread(target=watchdog, name=f"timeout for pid {child.pid}", daemon=True)]
    if stdin is None:
        os.close(stdin_write)
    else:
        feeder = threading.Thread(
            target=_feed,
            args=(stdin_write, _iterate(stdin), child, stop_feeding, grace),
            name=f"stdin feeder for pid {child.pid}",
            daemon=True,
        )
        threads.append(feeder)
    started_threads: list[threading.Thread] = []
    consumed: Optional[int] = None
    try:
        try:
            for thread in threads:
                thread.start()
                started_threads.append(thread)
        except RuntimeError as e:  # "can't start new thread": memory or a thread limit
            child.killed_by_us = True
            stop_groups([child.pgid], grace)
            wait(running)
            if stdin is not None and len(started_threads) < 2:
                os.close(stdin_write)  # the feeder that owns it never ran
            raise exec_error(program, f"cannot start a thread ({e})", secrets) from None
        try:
            wait(running)
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, SystemExit from a signal handler):
            # the child must not outlive this call.
            child.killed_by_us = True
            stop_groups([child.pgid], grace)
            wait(running)
            raise
    finally:
        finished.set()
        stop_feeding.set()
        for thread in started_threads:
            thread.join(grace + 1.0)
        unregister(child)
        if stdin is not None:
            unread = _unread(stdin_read)  # before reading stdin_sent: errs towards "read"
            consumed = None if unread is None else max(child.stdin_sent - unread, 0)
        os.close(stdin_read)

    status = process.exit_code
    duration = time.monotonic() - started.since
    if not child.killed_by_us and group_alive(child.pgid):
        log.warning("%s exited but left processes in its group: stopping them", label)
        stop_groups([child.pgid], grace)

    killed_signal = -status if status is not None and status < 0 else None
    returncode = None if child.killed_by_us or killed_signal else status
    result = Completed(
        argv=argv,
        returncode=returncode,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        timed_out=child.timed_out,
        killed_signal=killed_signal,
        duration=duration,
        stdin_consumed=consumed,
        secrets=secrets,
    )
    for name, tail in (("stdout", out), ("stderr", err)):
        if tail.total > max_output:
            log.debug(
                "pid %d: kept the last %d of %d %s bytes", child.pid, max_output, tail.total, name
            )
    log.debug("pid %d ended: %s", child.pid, result.describe())
    if child.source_error is not None:
        raise child.source_error
    return result


def _unread(fd: int) -> Optional[int]:
    """Bytes in the pipe of read end ``fd`` that nobody read (FIONREAD); None if unknown."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count, True)
    except OSError:
        return None
    return count[0]


def _iterate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Iterate lazily, so that even ``iter()`` failing happens in the feeder thread."""
    yield from chunks
