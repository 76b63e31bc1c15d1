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
"""

from __future__ import annotations

import array
import atexit
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import signal
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import sh

from matomo_rt.config import TOKEN_ENV
from matomo_rt.redact import describe_argv, one_line, redact

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

#: Seconds between SIGTERM and SIGKILL when we stop a child's process group.
DEFAULT_GRACE = 2.0

# sh pitfall: sh logs through the "sh" logger hierarchy. Its debug records carry the raw
# command line (``<Process pid ['/usr/bin/python3', ...]>``) and the first bytes of every
# stdin/stdout chunk, and an INFO record "process started" names the full command. A
# service that turns on DEBUG (``-v``) would print tokens and log data. We give sh's logs
# a floor of WARNING unless someone configured that logger on purpose, and we pass our own
# redacted ``_log_msg`` for the records that remain.
_sh_logger = logging.getLogger("sh")
if _sh_logger.level == logging.NOTSET:
    _sh_logger.setLevel(logging.WARNING)

# sh pitfall: with an N-byte ``_out_bufsize`` sh reads N bytes per read(); the "unbuffered"
# setting (0) reads ONE byte per system call, the default (1, line-buffered) splits every
# chunk into lines. A fixed block is what we want: we only look at the output at the end.
_READ_BLOCK = 64 * 1024

# Exit statuses sh must not turn into exceptions: all exit codes and all signals
# (sh reports "killed by signal N" as -N).
_ALL_STATUSES = range(-signal.NSIG, 256)

#: Never inherited by a child: a token in $MATOMO_TOKEN_AUTH is handed to import_logs.py alone,
#: through ``env_extra`` (matomo_rt.matomo.importer.child_env).
PRIVATE_ENV = frozenset([TOKEN_ENV])

# How often waiting loops look again (feeder waiting for pipe space, group-death polling).
_POLL_INTERVAL = 0.02


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


# --------------------------------------------------------------------------------------
# Public result and error types
# --------------------------------------------------------------------------------------


class ExecError(Exception):
    """The program could not be started: missing, not executable, bad working directory.

    The message is one redacted line naming the program, e.g.
    ``cannot run /usr/bin/php: no such file``. It never carries a chained exception: sh's
    exceptions embed the whole command line, so nothing of them is kept.
    """

    def __init__(self, message: str, *, program: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.program = program
        self.reason = reason


def _exec_error(program: str, reason: str, secrets: Sequence[str]) -> ExecError:
    """Build the one-line, redacted ExecError for ``program``."""
    program, reason = one_line(redact(program, secrets)), one_line(redact(reason, secrets))
    return ExecError(f"cannot run {program}: {reason}", program=program, reason=reason)


@dataclass(frozen=True)
class Completed:
    """What a finished child left behind.

    ``returncode`` is the exit code, or None when there is none to trust: the child was
    ended by a signal (``killed_signal`` says which), by our timeout (``timed_out``) or by
    :func:`kill_all_children`. Callers treat None as "outcome unknown".

    ``stdout``/``stderr`` hold at most ``max_output`` bytes each: the tail.

    ``argv`` is the raw command line; it and the output may contain secrets, so log
    :meth:`describe`, never the fields. ``repr()`` is redacted too (pytest prints reprs).
    """

    argv: tuple[str, ...]
    returncode: Optional[int]
    stdout: bytes
    stderr: bytes
    timed_out: bool
    killed_signal: Optional[int]
    duration: float
    #: Bytes of stdin the child read (None without stdin). 0 means it read none of its input,
    #: so it cannot have acted on any of it, whatever its exit.
    stdin_consumed: Optional[int] = None
    #: Secrets given to :func:`run`; used by ``repr()`` and added to :meth:`describe`'s.
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0 (which, for import_logs.py, is not yet success)."""
        return self.returncode == 0 and not self.timed_out

    def describe(self, secrets: Sequence[str] = ()) -> str:
        """One redacted line for logs: command, outcome, duration, output sizes.

        On failure the last non-empty line of stderr is appended: that is where a Python
        traceback or a PHP fatal error states its cause.
        """
        all_secrets = (*self.secrets, *secrets)
        if self.timed_out:
            how = f"timed out after {self.duration:.1f}s"
            if self.killed_signal:
                how += f", killed by {_signal_name(self.killed_signal)}"
        elif self.killed_signal:
            how = f"killed by {_signal_name(self.killed_signal)} after {self.duration:.2f}s"
        elif self.returncode is None:
            how = f"stopped after {self.duration:.2f}s"
        else:
            how = f"exit {self.returncode} in {self.duration:.2f}s"
        line = (
            f"{describe_argv(self.argv, all_secrets)}: {how}"
            f" (stdout {_size(len(self.stdout))}, stderr {_size(len(self.stderr))})"
        )
        if not self.ok:
            last = _last_line(self.stderr)
            if last:
                line += f"; stderr: {one_line(redact(last, all_secrets))}"
        return line

    def __repr__(self) -> str:
        return f"Completed({self.describe()})"


def _last_line(data: bytes, limit: int = 300) -> str:
    for raw in reversed(data[-64 * 1024 :].splitlines()):
        text = raw.decode("utf-8", "replace").strip()
        if text:
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return ""


# --------------------------------------------------------------------------------------
# Registry of running children
# --------------------------------------------------------------------------------------


@dataclass
class _Child:
    """A running child and what we did to it (shared between run() and its helpers)."""

    pid: int
    pgid: int
    label: str  # redacted, for log lines
    killed_by_us: bool = False
    timed_out: bool = False
    source_error: Optional[BaseException] = None
    stdin_sent: int = 0  # bytes written into the child's stdin pipe


_children: dict[int, _Child] = {}
_children_lock = threading.Lock()


def running_children() -> list[tuple[int, int]]:
    """(pid, process group) of every child started by :func:`run` that has not ended."""
    with _children_lock:
        return [(c.pid, c.pgid) for c in _children.values()]


def _group_alive(pgid: int) -> bool:
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


def _stop_groups(pgids: Sequence[int], grace: float) -> None:
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
        pending = [p for p in pending if _group_alive(p)]
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
    child must never outlive us unnoticed. The :func:`run` calls waiting on these children
    return a :class:`Completed` with ``returncode=None``.
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
    _stop_groups([c.pgid for c in victims], grace)


atexit.register(kill_all_children)


# --------------------------------------------------------------------------------------
# Parent-death signal (Linux)
# --------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Optional[Callable[..., int]]:
    """libc's prctl, resolved once in the parent (the forked child must not load libraries).

    ``ctypes.util.find_library`` is avoided on purpose: it runs ldconfig/gcc.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def _make_preexec(
    parent_pid: int,
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Optional[str],
    report_fd: int,
) -> Callable[[], None]:
    """Build the function sh runs in the forked child just before its own exec.

    It does the chdir and the exec itself (sh's exec is never reached) and reports a
    failure as ``b"stage errno"`` on ``report_fd`` (close-on-exec: the parent reads EOF
    when the exec succeeds), then exits 127.

    sh pitfall: when chdir or exec fails in sh's child, sh raises ForkException (the
    child's traceback, naming the command) *and leaks four pipe descriptors* in the parent.
    A misconfigured interpreter retried every minute would exhaust the fd limit in hours.
    Doing the exec here also passes arguments through ``os.execve`` (file system encoding
    with surrogateescape) instead of sh's strict encoding.

    Only simple system calls here: the parent has threads, and after fork only the
    forking thread exists in the child (no logging, no locks).
    """

    def preexec() -> None:
        stage = "setup"
        try:
            # sh pitfall: with ``_bg=True`` sh sets SIGHUP to SIG_IGN in the child, and
            # an ignored signal stays ignored across exec. Give the child the default back.
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            if _prctl is not None:
                # The kernel sends SIGKILL to the child when the *thread* that forked it
                # ends. run() blocks that thread until the child is reaped, so in practice:
                # when we die, even by SIGKILL, where none of our Python code runs.
                _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0)
                # We may have died between fork() and prctl(): then nobody would send it.
                if os.getppid() != parent_pid:
                    os.kill(os.getpid(), signal.SIGKILL)
            if cwd is not None:
                stage = "chdir"
                os.chdir(cwd)
            # What sh's _close_fds would have done after us: only 0, 1, 2 survive exec.
            stage = "close"
            _close_fds_except(report_fd)
            stage = "exec"
            os.execve(path, list(argv), env)
        except OSError as e:
            os.write(report_fd, f"{stage} {e.errno or 0}".encode())
        except BaseException:
            os.write(report_fd, f"{stage} 0".encode())
        os._exit(127)

    return preexec


def _close_fds_except(keep: int) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        try:
            fds = [int(name) for name in os.listdir("/dev/fd")]
        except OSError:
            fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):  # e.g. listdir's own, already closed
                os.close(fd)


def _start_failure_reason(report: bytes, path: str, cwd: Optional[str]) -> str:
    """Turn the child's ``b"stage errno"`` report into a short reason."""
    stage, _, number = report.decode("ascii", "replace").partition(" ")
    code = int(number) if number.isdigit() else 0
    if stage == "chdir":
        return f"working directory {cwd}: {os.strerror(code).lower()}"
    if stage != "exec":
        return f"failed before exec ({stage}: {os.strerror(code).lower() if code else 'error'})"
    if code == errno.ENOENT:
        if os.path.exists(path):
            return "no such file (is the interpreter on its #! line missing?)"
        return "no such file"
    if code == errno.EACCES:
        return "permission denied"
    return os.strerror(code).lower()


# --------------------------------------------------------------------------------------
# Output capture and stdin feeding
# --------------------------------------------------------------------------------------


class _Tail:
    """File-like sink for sh that keeps only the last ``limit`` bytes written to it.

    sh passes bytes to any object with ``write`` and no ``encoding`` attribute. (A
    callable ``_out`` would get *str* whenever the chunk happens to decode, bytes otherwise.)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        data = b"".join(self._chunks)
        return data[-self.limit :] if len(data) > self.limit else data


def _feed(
    fd: int, chunks: Iterable[bytes], child: _Child, stop: threading.Event, grace: float
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
        _stop_groups([child.pgid], grace)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Program resolution
# --------------------------------------------------------------------------------------


def _resolve(program: str, path_env: str, cwd: Optional[str], secrets: Sequence[str]) -> str:
    """Absolute path of the program, or ExecError saying precisely why not.

    sh resolves names with the *parent's* PATH and says only "not found"; we use the PATH
    the child will get and say what is wrong.
    """
    if "/" in program:
        base = cwd if cwd is not None else os.getcwd()
        candidate = os.path.abspath(os.path.join(base, program))
        if not os.path.exists(candidate):
            raise _exec_error(program, "no such file", secrets)
        if os.path.isdir(candidate):
            raise _exec_error(program, "is a directory", secrets)
        if not os.access(candidate, os.X_OK):
            raise _exec_error(program, "permission denied (not executable)", secrets)
        return candidate
    for directory in path_env.split(os.pathsep):
        candidate = os.path.abspath(os.path.join(directory or ".", program))
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise _exec_error(program, "not found in PATH", secrets)


# --------------------------------------------------------------------------------------
# run()
# --------------------------------------------------------------------------------------


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
        raise _exec_error(program, f"working directory {cwd}: {why}", secrets)
    path = _resolve(program, env.get("PATH", os.defpath), cwd, secrets)

    out, err = _Tail(max_output), _Tail(max_output)
    try:
        stdin_read, stdin_write = os.pipe()
    except OSError as e:  # EMFILE, ENFILE: the child never existed
        raise _exec_error(program, _os_reason(e), secrets) from None
    try:
        report_read, report_write = os.pipe()
    except OSError as e:
        os.close(stdin_read)
        os.close(stdin_write)
        raise _exec_error(program, _os_reason(e), secrets) from None
    os.set_blocking(stdin_write, False)
    started = time.monotonic()
    failure: Optional[str] = None
    try:
        command = sh.Command(path)
        running = command(
            *argv[1:],
            _in=stdin_read,  # an fd: sh dup2()s it to the child's stdin, no sh stdin thread
            _out=out,
            _err=err,
            _out_bufsize=_READ_BLOCK,
            _err_bufsize=_READ_BLOCK,
            _tty_in=False,
            _tty_out=False,  # sh pitfall: default is a pty on stdout
            _new_session=True,  # own session and process group: killpg reaches helpers
            # chdir, environment and exec happen in here (see _make_preexec for why)
            _preexec_fn=_make_preexec(os.getpid(), path, argv, env, cwd, report_write),
            _ok_code=_ALL_STATUSES,
            _bg=True,  # return at once, so we can register the child before waiting
            _bg_exc=False,  # sh pitfall: else a bg thread prints sh's exception (full argv)
            _no_pipe=True,
            _log_msg=lambda ran, call_args, pid=None: f"<{label} pid {pid}>",
        )
    except sh.CommandNotFound:
        failure = "no such file"  # vanished since _resolve() looked
    except sh.ForkException:
        failure = "failed between fork and exec"  # only sh's own steps are left to fail
    except OSError as e:  # fork() itself: EAGAIN, ENOMEM; sh's own pipes: EMFILE
        failure = _os_reason(e)
    except Exception as e:  # anything else from sh: its messages may hold argv or env
        failure = f"failed to start ({type(e).__name__})"
    finally:
        # The read end stays open here until the child has ended: what is left unread in the
        # pipe then says how much input the child consumed (see _unread).
        os.close(report_write)
        # From here on, exceptions are raised outside the except blocks: not even
        # __context__ keeps a reference to sh's exception and its command line.
    try:
        report = b"" if failure is not None else _read_all(report_read)
    finally:
        os.close(report_read)
    if report:
        _wait(running)  # it exited 127 right after reporting; reap it
        failure = _start_failure_reason(report, path, cwd)
    if failure is not None:
        os.close(stdin_read)
        os.close(stdin_write)
        log.debug("cannot start %s: %s", label, redact(failure, secrets))
        raise _exec_error(program, failure, secrets)

    process = running.process
    child = _Child(pid=process.pid, pgid=process.pgid, label=label)
    with _children_lock:
        _children[child.pid] = child
    log.debug("started pid %d: %s", child.pid, label)

    stop_feeding, finished = threading.Event(), threading.Event()

    def watchdog() -> None:
        if finished.wait(timeout):
            return
        if process.exit_code is None:  # still running (not just draining its output)
            child.timed_out = True
            child.killed_by_us = True
            log.debug("pid %d timed out after %.1fs: stopping its group", child.pid, timeout)
            _stop_groups([child.pgid], grace)

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
            _stop_groups([child.pgid], grace)
            _wait(running)
            if stdin is not None and len(started_threads) < 2:
                os.close(stdin_write)  # the feeder that owns it never ran
            raise _exec_error(program, f"cannot start a thread ({e})", secrets) from None
        try:
            _wait(running)
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, SystemExit from a signal handler):
            # the child must not outlive this call.
            child.killed_by_us = True
            _stop_groups([child.pgid], grace)
            _wait(running)
            raise
    finally:
        finished.set()
        stop_feeding.set()
        for thread in started_threads:
            thread.join(grace + 1.0)
        with _children_lock:
            _children.pop(child.pid, None)
        if stdin is not None:
            unread = _unread(stdin_read)  # before reading stdin_sent: errs towards "read"
            consumed = None if unread is None else max(child.stdin_sent - unread, 0)
        os.close(stdin_read)

    status = process.exit_code
    duration = time.monotonic() - started
    if not child.killed_by_us and _group_alive(child.pgid):
        log.warning("%s exited but left processes in its group: stopping them", label)
        _stop_groups([child.pgid], grace)

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


def _os_reason(e: OSError) -> str:
    return f"cannot start a process: {os.strerror(e.errno or 0).lower()}"


def _unread(fd: int) -> Optional[int]:
    """Bytes in the pipe of read end ``fd`` that nobody read (FIONREAD); None if unknown."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count, True)
    except OSError:
        return None
    return count[0]


def _read_all(fd: int) -> bytes:
    """Read until EOF (the child's report pipe: EOF comes with its exec or its exit)."""
    parts = []
    while True:
        part = os.read(fd, 4096)
        if not part:
            return b"".join(parts)
        parts.append(part)


def _iterate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Iterate lazily, so that even ``iter()`` failing happens in the feeder thread."""
    yield from chunks


def _wait(running: sh.RunningCommand) -> None:
    """Wait for the child and sh's reader threads; never let an sh exception out."""
    # Neither is raised with _ok_code covering every status and no sh _timeout; caught so
    # that a change in sh cannot leak its message (full argv and output) to our callers.
    with contextlib.suppress(sh.ErrorReturnCode, sh.TimeoutException):
        running.wait()
