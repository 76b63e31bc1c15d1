"""What a child process left behind (:class:`Completed`), or why it never ran (:class:`ExecError`).

Both are safe to log: :meth:`Completed.describe`, ``repr()`` and every ExecError message are one
line with the secrets masked (:mod:`matomo_rt.redact`).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from matomo_rt.redact import describe_argv, one_line, redact


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


def exec_error(program: str, reason: str, secrets: Sequence[str]) -> ExecError:
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
