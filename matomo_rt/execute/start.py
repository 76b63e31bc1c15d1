"""Starting one child: find the program, fork it through ``sh``, say precisely why it did not start.

``sh`` (``sh.Command``, ``_bg=True``) forks, sets up the session and the output pipes, reads
stdout/stderr in its threads and reaps the child. Where its defaults are unsafe for a service we
take over, and say why at each place (search for "sh pitfall"): the chdir + exec step is done in
our preexec function (sh leaks descriptors when exec fails), stdin is a pipe of ours (fed by
matomo_rt.execute), and the output goes to bounded sinks (:class:`Tail`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from matomo_rt.execute.result import exec_error
from matomo_rt.redact import redact

if TYPE_CHECKING:
    import sh  # imported where a child starts: `status`, `tail`, `check` start faster

log = logging.getLogger(__name__)


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


class Tail:
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


def resolve(program: str, path_env: str, cwd: Optional[str], secrets: Sequence[str]) -> str:
    """Absolute path of the program, or ExecError saying precisely why not.

    sh resolves names with the *parent's* PATH and says only "not found"; we use the PATH
    the child will get and say what is wrong.
    """
    if "/" in program:
        base = cwd if cwd is not None else os.getcwd()
        candidate = os.path.abspath(os.path.join(base, program))
        if not os.path.exists(candidate):
            raise exec_error(program, "no such file", secrets)
        if os.path.isdir(candidate):
            raise exec_error(program, "is a directory", secrets)
        if not os.access(candidate, os.X_OK):
            raise exec_error(program, "permission denied (not executable)", secrets)
        return candidate
    for directory in path_env.split(os.pathsep):
        candidate = os.path.abspath(os.path.join(directory or ".", program))
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise exec_error(program, "not found in PATH", secrets)


@dataclass
class Started:
    """A child that runs: sh's handle, both ends of its stdin pipe, its output sinks."""

    running: sh.RunningCommand
    #: Kept open until the child has ended: what is left unread in the pipe then says how
    #: much input the child consumed (matomo_rt.execute._unread).
    stdin_read: int
    #: Non-blocking; the caller feeds and closes it.
    stdin_write: int
    out: Tail
    err: Tail
    #: time.monotonic() just before the fork.
    since: float


def start(
    argv: Sequence[str],
    path: str,
    env: Mapping[str, str],
    cwd: Optional[str],
    label: str,
    secrets: Sequence[str],
    max_output: int,
) -> Started:
    """Fork and exec ``path`` with ``argv``; ExecError (redacted, one line) if it did not start."""
    program = argv[0]
    out, err = Tail(max_output), Tail(max_output)
    try:
        stdin_read, stdin_write = os.pipe()
    except OSError as e:  # EMFILE, ENFILE: the child never existed
        raise exec_error(program, os_reason(e), secrets) from None
    try:
        report_read, report_write = os.pipe()
    except OSError as e:
        os.close(stdin_read)
        os.close(stdin_write)
        raise exec_error(program, os_reason(e), secrets) from None
    os.set_blocking(stdin_write, False)
    started = time.monotonic()
    failure: Optional[str] = None
    import sh  # asyncio and more: ~40 ms that commands starting no process never pay

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
        failure = "no such file"  # vanished since resolve() looked
    except sh.ForkException:
        failure = "failed between fork and exec"  # only sh's own steps are left to fail
    except OSError as e:  # fork() itself: EAGAIN, ENOMEM; sh's own pipes: EMFILE
        failure = os_reason(e)
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
        wait(running)  # it exited 127 right after reporting; reap it
        failure = _start_failure_reason(report, path, cwd)
    if failure is not None:
        os.close(stdin_read)
        os.close(stdin_write)
        log.debug("cannot start %s: %s", label, redact(failure, secrets))
        raise exec_error(program, failure, secrets)
    return Started(running, stdin_read, stdin_write, out, err, started)


def os_reason(e: OSError) -> str:
    return f"cannot start a process: {os.strerror(e.errno or 0).lower()}"


def _read_all(fd: int) -> bytes:
    """Read until EOF (the child's report pipe: EOF comes with its exec or its exit)."""
    parts = []
    while True:
        part = os.read(fd, 4096)
        if not part:
            return b"".join(parts)
        parts.append(part)


def wait(running: sh.RunningCommand) -> None:
    """Wait for the child and sh's reader threads; never let an sh exception out."""
    # Neither is raised with _ok_code covering every status and no sh _timeout; caught so
    # that a change in sh cannot leak its message (full argv and output) to our callers.
    import sh

    with contextlib.suppress(sh.ErrorReturnCode, sh.TimeoutException):
        running.wait()
