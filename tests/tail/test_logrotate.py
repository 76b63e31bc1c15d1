"""Real `logrotate` runs against `matomo-rt tail`: every line written comes out once, in order.

Each scenario writes lines, rotates with the Debian logrotate (`logrotate -f -s STATUS CONF`,
all in tmp_path) in one configuration — create, nocreate, dateext daily and hourly, compress,
delaycompress, copytruncate — and runs the real command line between and around rotations:
with one rotation between two reads, several, a rotation right before a read, and rotations
plus compression while it was "down". The concatenated output must equal what was written.

logrotate names dated generations after today's date and refuses to rotate onto an existing
name, so after each run a newly dated file is renamed to an earlier date, as if it had been
rotated on an earlier day (or hour). mtimes, which order generations, come from os.utime.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Optional

import pytest

from matomo_rt.store import load_state
from matomo_rt.tail import Position
from tests.tail.logsim import LogSim

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "matomo-rt"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "matomo_rt"]
LOGROTATE = shutil.which(
    "logrotate", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        LOGROTATE is None, reason="logrotate is not installed (apt install logrotate)"
    ),
]

#: Warnings that mean lines were (or may have been) lost: none is acceptable here, since
#: nothing writes during a rotation. (The copytruncate warning only names the window.)
_LOSS = (
    b"is gone",
    b"no copy was found",
    b"replaced by a new file with the same inode",
    b"shorter than the stored offset",
    b"less than the stored offset",
    b"cannot decompress",
)
_DATED = re.compile(r"^access\.log-(\d{8}|\d{10})((?:\.gz)?)$")


class Rotation:
    """A log in tmp_path, a logrotate configuration for it, and `matomo-rt tail` reading it."""

    def __init__(self, tmp_path: Path, directives: str, dated: Optional[str] = None) -> None:
        self.dir = tmp_path / "log"
        self.dir.mkdir()
        self.sim = LogSim(self.dir)
        self.conf = tmp_path / "logrotate.conf"
        body = "\n".join(f"    {d}" for d in ["rotate 30", *directives.split(";")])
        self.conf.write_text(f"{self.sim.live} {{\n{body}\n}}\n")
        # logrotate ignores a group-writable config and refuses a group-writable log directory,
        # whatever the umask of the test run.
        self.conf.chmod(0o644)
        self.dir.chmod(0o755)
        self.status = tmp_path / "logrotate.status"
        self.offset = tmp_path / "access.offset"
        self.output = bytearray()
        self.dated = dated  # "%Y%m%d" or "%Y%m%d%H": the names to age after each run
        self.aged: set[str] = set()
        self.mtime = 1_700_000_000
        self.rotations = 0

    def write(self, lines: int, partial: bool = False) -> None:
        """nginx appends; the file's mtime moves on strictly."""
        self.sim.append(lines, partial)
        self.mtime += 10
        os.utime(self.sim.live, (self.mtime, self.mtime))

    def rotate(self) -> None:
        assert self.sim.open_fragment is None, "a test bug: rotating with a half-written line"
        proc = subprocess.run(
            [LOGROTATE, "-f", "-s", str(self.status), str(self.conf)],  # type: ignore[list-item]
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        self.rotations += 1
        if self.dated is not None:
            self._age_dated()

    def _age_dated(self) -> None:
        """Give the generation just rotated the date it would have had, earlier on."""
        for path in sorted(self.dir.iterdir()):
            m = _DATED.match(path.name)
            if m is None or m.group(1) in self.aged:
                continue
            step = timedelta(hours=1) if self.dated == "%Y%m%d%H" else timedelta(days=1)
            stamp = (datetime(2025, 1, 1) + step * len(self.aged)).strftime(self.dated)
            assert len(stamp) == len(m.group(1))
            self.aged.add(stamp)
            path.rename(self.dir / f"access.log-{stamp}{m.group(2)}")

    def tail(self) -> None:
        proc = subprocess.run(
            [*CLI, "tail", "-f", str(self.sim.live), "-o", str(self.offset)],
            capture_output=True,
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        for loss in _LOSS:
            assert loss not in proc.stderr, proc.stderr.decode(errors="replace")
        self.output += proc.stdout

    def names(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir())

    def finished(self) -> int:
        data = load_state(self.offset)
        assert data is not None
        return len(Position.from_json(data["position"]).finished)

    def check(self) -> None:
        """Everything written came out exactly once, in the order it was written."""
        self.tail()
        got = bytes(self.output).splitlines(keepends=True)
        assert len(got) == len(set(got)), "a line came out twice"
        assert got == self.sim.expected


def play(r: Rotation) -> None:
    """The same history for every configuration: reads around one and several rotations."""
    r.write(3)
    r.tail()  # first run: the whole live file
    r.write(2, partial=True)
    r.tail()  # the half line waits
    r.write(2)  # completes it
    r.rotate()  # one rotation between reads: the rest of our generation is in the rotated file
    r.write(2)
    r.tail()
    r.write(1)
    r.tail()
    # Down for a while: several rotations (with compression where configured) between reads.
    for lines in (3, 1, 4):
        r.write(lines)
        r.rotate()
    r.write(2)
    r.tail()
    r.write(2)
    r.rotate()  # a rotation right before a read: the live file is new and empty
    r.tail()
    r.write(1)
    r.tail()
    r.check()
    assert r.rotations == 5


CONFIGS = {
    "create": ("create", None),
    "nocreate": ("nocreate;missingok", None),
    "dateext-daily": ("create;dateext", "%Y%m%d"),
    "dateext-hourly": ("create;dateext;dateformat -%Y%m%d%H", "%Y%m%d%H"),
    "compress": ("create;compress", None),
    "delaycompress": ("create;compress;delaycompress", None),
    "dateext-compress": ("create;dateext;compress", "%Y%m%d"),
    "dateext-hourly-delaycompress": (
        "create;dateext;dateformat -%Y%m%d%H;compress;delaycompress",
        "%Y%m%d%H",
    ),
    "copytruncate": ("copytruncate", None),
    "copytruncate-compress": ("copytruncate;compress", None),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_line_once_across_real_rotations(tmp_path: Path, name: str) -> None:
    directives, dated = CONFIGS[name]
    r = Rotation(tmp_path, directives, dated)
    play(r)
    rotated = [n for n in r.names() if n != "access.log"]
    assert len(rotated) == 5
    if "compress" in directives:  # with delaycompress, all but the newest
        plain = [n for n in rotated if not n.endswith(".gz")]
        assert len(plain) == (1 if "delaycompress" in directives else 0)
    if dated is not None:
        assert all(_DATED.match(n) for n in rotated)


def test_compressed_while_down_offset_inside_the_gz(tmp_path: Path) -> None:
    """The generation we were reading is rotated and gzipped (no delaycompress) before the
    next run, then shifted to `.3.gz` by two more: read on inside it from the stored offset."""
    r = Rotation(tmp_path, "create;compress")
    r.write(4)
    r.tail()
    r.write(3)  # unread tail of the generation we are in
    r.rotate()
    r.write(2)
    r.rotate()
    r.write(2)
    r.rotate()
    assert r.names() == [
        "access.log",
        "access.log.1.gz",
        "access.log.2.gz",
        "access.log.3.gz",
    ]
    r.check()


def test_two_copytruncates_between_reads(tmp_path: Path) -> None:
    """Our position is in the older copy (`.2`): finish it, then `.1`, then the live file."""
    r = Rotation(tmp_path, "copytruncate")
    r.write(3)
    r.tail()
    r.write(2)
    r.rotate()
    r.write(3)
    r.rotate()
    r.write(1)
    r.check()


def test_deleted_generations_are_forgotten(tmp_path: Path) -> None:
    """With `rotate 2`, logrotate deletes old generations; the state does not keep them."""
    r = Rotation(tmp_path, "create;rotate 2")
    for _ in range(6):
        r.write(2)
        r.tail()
        r.write(1)
        r.rotate()
        r.tail()
        assert r.finished() <= 2
    assert r.names() == ["access.log", "access.log.1", "access.log.2"]
    r.check()
