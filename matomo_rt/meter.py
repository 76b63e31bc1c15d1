"""Progress over a known number of bytes, for the long steps of a one-shot command.

`import-files` checks every file before it imports one (a file's identity is its decompressed
length: a whole read through its compression) and then imports them: on weeks of `.gz` files
each step takes minutes, and neither may look like a hang. On a terminal a bar with ETA is
rewritten in place; elsewhere (cron, a pipe, a log file) a line every PROGRESS_EVERY seconds,
so a log shows that it moves without one line per batch.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

PROGRESS_EVERY = 10.0  # seconds between progress lines when not on a terminal
TTY_EVERY = 0.2  # seconds between redraws of the terminal bar
BAR_WIDTH = 24


def eta(seconds: float) -> str:
    """About how long: "45s", "12m", "3h 20m"."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"


class Meter:
    """`done` of `total` bytes for one step named `label`, on `err`."""

    def __init__(
        self,
        err: TextIO,
        total: int,
        label: str,
        prefix: str = "import-files",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.err = err
        self.tty = hasattr(err, "isatty") and err.isatty()
        self.total = max(total, 1)
        self.label = label
        self.prefix = prefix
        self.clock = clock
        self.started = clock()
        self.last: Optional[float] = None  # when something was last written
        self.done = 0
        self.detail = ""

    def update(self, done: int, detail: str = "", force: bool = False) -> None:
        """Show `done` bytes (with `detail`: which file, how fast) when it is time to."""
        self.done, self.detail = min(done, self.total), detail
        now = self.clock()
        every = TTY_EVERY if self.tty else PROGRESS_EVERY
        if not force and (now - (self.started if self.last is None else self.last)) < every:
            return
        self.last = now
        self._write(now)

    def finish(self) -> None:
        """The final state, if anything was shown: a terminal's bar is ended by a newline, a
        log gets the closing line after its periodic ones."""
        if self.last is None:
            return
        self._write(self.clock())
        if self.tty:
            self.err.write("\n")
            self.err.flush()

    def text(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        parts = [
            f"{self.label} {100.0 * self.done / self.total:3.0f}%"
            f" {self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} MB"
        ]
        if self.detail:
            parts.append(self.detail)
        if left > 0 and rate > 0:
            parts.append(f"{eta(left / rate)} left")
        return ", ".join(parts)

    def _write(self, now: float) -> None:
        text = self.text(now)
        if self.tty:
            filled = int(BAR_WIDTH * self.done / self.total)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.err.write(f"\r[{bar}] {text}   ")
        else:
            self.err.write(f"{self.prefix}: {text}\n")
        self.err.flush()
