"""`matomo-rt tail` as a real process, against the cases where logtail and pygtail fail.

Measured with Debian's logtail 1.4.2 and pygtail 0.14.0: a partial last line is split across
runs; a rotated file gzipped before the next run is skipped (logtail) or crashes every run
(pygtail); two rotations between runs lose the middle generation; `-YYYYMMDDHH` dateext is
missed; copytruncate and inode reuse resume at a stale offset and emit a cut line. Each has a
test here that runs the installed command line, plus its contract as a logtail drop-in: stdout
carries only log lines, `-t` saves nothing, logtail's own offset file is taken over, exit codes.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest

from tests.tail.logsim import LogSim, line_for

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "matomo-rt"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "matomo_rt"]

pytestmark = pytest.mark.e2e  # runs the matomo-rt command as a real process


class Clock:
    """Strictly increasing mtimes in the past: rotated generations are ordered by mtime."""

    def __init__(self) -> None:
        self.now = 1_700_000_000

    def touch(self, path: Path) -> None:
        self.now += 10
        os.utime(path, (self.now, self.now))


def tail(
    log: Path, offset: Optional[Path], *extra: str, expect: int = 0
) -> subprocess.CompletedProcess[bytes]:
    """Run `matomo-rt tail -f LOG -o OFFSET`; check the exit code."""
    argv = [*CLI, "tail", "-f", str(log)]
    if offset is not None:
        argv += ["-o", str(offset)]
    proc = subprocess.run([*argv, *extra], capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == expect, proc.stderr.decode(errors="replace")
    return proc


def out(log: Path, offset: Path) -> bytes:
    return tail(log, offset).stdout


@pytest.fixture
def sim(tmp_path: Path) -> LogSim:
    directory = tmp_path / "log"
    directory.mkdir()
    return LogSim(directory)


@pytest.fixture
def offset(tmp_path: Path) -> Path:
    return tmp_path / "access.offset"


def written(sim: LogSim) -> bytes:
    return b"".join(sim.expected)


# -- what logtail and pygtail get wrong ---------------------------------------------------------


def test_partial_last_line_is_not_split_across_runs(sim: LogSim, offset: Path) -> None:
    """logtail/pygtail print half a line now and the other half next run; we print it whole."""
    sim.append(2, partial=True)
    first = out(sim.live, offset)
    assert first == b"".join(sim.expected)  # the two complete lines, not the fragment
    assert out(sim.live, offset) == b""
    sim.append(1)
    second = out(sim.live, offset)
    assert first + second == written(sim)
    assert second.startswith(sim.expected[2]) and sim.expected[2].count(b"\n") == 1


def test_rotated_file_gzipped_before_the_next_run_is_read(sim: LogSim, offset: Path) -> None:
    """logtail skips the gzipped rest, pygtail crashes on every run; we read on inside it."""
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = out(sim.live, offset)
    sim.append(4)
    clock.touch(sim.live)
    sim.rotate_rename(compress=".gz", delay=False)
    sim.append(2)
    clock.touch(sim.live)
    got += out(sim.live, offset)
    got += out(sim.live, offset)  # and the run after that neither crashes nor repeats
    assert got == written(sim)


def test_two_rotations_between_runs_keep_the_middle_generation(sim: LogSim, offset: Path) -> None:
    """logtail/pygtail look at `.1` only; the generation that became `.2` is lost there."""
    clock = Clock()
    sim.append(2)
    clock.touch(sim.live)
    got = out(sim.live, offset)
    sim.append(2)
    clock.touch(sim.live)
    sim.rotate_rename()
    sim.append(3)  # the middle generation
    clock.touch(sim.live)
    sim.rotate_rename()
    sim.append(1)
    clock.touch(sim.live)
    got += out(sim.live, offset)
    assert got == written(sim)
    middle = sim.expected[4:7]
    assert all(got.count(line) == 1 for line in middle)


def test_hourly_dateext_generation_is_found(sim: LogSim, offset: Path) -> None:
    """logtail knows `.1` and `-YYYYMMDD`; a `-YYYYMMDDHH` generation is found by identity."""
    clock = Clock()
    sim.append(2)
    clock.touch(sim.live)
    got = out(sim.live, offset)
    sim.append(3)
    clock.touch(sim.live)
    rotated = sim.rotate_dateext(hourly=True)
    assert len(rotated.name) == len("access.log-YYYYMMDDHH")
    sim.append(1)
    clock.touch(sim.live)
    got += out(sim.live, offset)
    assert got == written(sim)


def test_copytruncate_resumes_in_the_copy_without_a_cut_line(sim: LogSim, offset: Path) -> None:
    """logtail/pygtail resume at the old offset in the truncated file and print a cut line."""
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = out(sim.live, offset)
    sim.append(2)
    clock.touch(sim.live)
    copy = sim.rotate_copytruncate()
    clock.touch(copy)
    sim.append(6)  # the live file grows past the old offset again
    clock.touch(sim.live)
    proc = tail(sim.live, offset)
    got += proc.stdout
    assert got == written(sim)
    assert b"copytruncate" in proc.stderr


def test_inode_reuse_does_not_resume_at_a_stale_offset(sim: LogSim, offset: Path) -> None:
    """A new file on the old inode (here: rewritten in place) is read from its start, whole.

    The new content is longer than the old offset and has a line end right before it, so
    only the fingerprint tells the files apart, as with a real reused inode.
    """
    sim.append(3)
    got = out(sim.live, offset)
    ino = sim.live.stat().st_ino
    old_offset = sim.live.stat().st_size
    new = b"Z" * (old_offset - 1) + b"\n" + b"".join(line_for(n) for n in range(100, 106))
    sim.live.write_bytes(new)
    assert sim.live.stat().st_ino == ino
    got += out(sim.live, offset)
    assert got == written(sim) + new


def test_delete_and_recreate_is_read_from_the_start(sim: LogSim, offset: Path) -> None:
    """rm + create (the filesystem is free to hand out the same inode again)."""
    sim.append(3)
    got = out(sim.live, offset)
    sim.delete_and_recreate()
    sim.append(5, width=70)
    got += out(sim.live, offset)
    assert got == written(sim)


# -- the drop-in contract ----------------------------------------------------------------------


def test_warnings_go_to_stderr_never_stdout(sim: LogSim, offset: Path) -> None:
    """A pipeline reading stdout must only ever see log lines."""
    sim.append(5)
    out(sim.live, offset)
    with sim.live.open("r+b") as fh:
        fh.truncate(0)  # truncated, no copy: a warning
    sim.expected.clear()
    sim.append(1)
    proc = tail(sim.live, offset)
    assert proc.stdout == written(sim)
    assert b"truncated" in proc.stderr and b"WARNING" in proc.stderr


def test_first_run_prints_the_whole_file_like_logtail(sim: LogSim, offset: Path) -> None:
    sim.append(4)
    assert out(sim.live, offset) == written(sim)
    assert out(sim.live, offset) == b""


def test_start_at_end_skips_what_is_there(sim: LogSim, offset: Path) -> None:
    sim.append(4, partial=True)
    assert tail(sim.live, offset, "--start-at", "end").stdout == b""
    sim.append(1)
    assert out(sim.live, offset) == b"".join(sim.expected[4:])


def test_default_offset_file_and_positional_arguments(sim: LogSim) -> None:
    """`tail FILE [OFFSET]` as logtail accepts it; the default offset file is FILE.offset."""
    sim.append(2)
    proc = subprocess.run(
        [*CLI, "tail", str(sim.live)], capture_output=True, cwd=ROOT, timeout=60, check=True
    )
    assert proc.stdout == written(sim)
    assert sim.live.with_name("access.log.offset").exists()
    sim.append(1)
    other = sim.dir / "elsewhere.offset"
    proc = subprocess.run(
        [*CLI, "tail", str(sim.live), str(other)],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert proc.stdout == written(sim)  # a new offset file starts at the beginning
    assert other.exists()


def test_t_does_not_save_the_offset(sim: LogSim, offset: Path) -> None:
    """`-t` prints what is new and leaves the offset where it was."""
    sim.append(2)
    assert tail(sim.live, offset, "-t").stdout == written(sim)
    assert not offset.exists()
    out(sim.live, offset)
    saved = offset.read_bytes()
    sim.append(2)
    assert tail(sim.live, offset, "-t").stdout == b"".join(sim.expected[2:])
    assert offset.read_bytes() == saved
    assert out(sim.live, offset) == b"".join(sim.expected[2:])


def test_logtail_offset_file_is_taken_over(sim: LogSim, offset: Path) -> None:
    """Switching from logtail keeps the position: "inode\\noffset\\n" is read, then replaced."""
    sim.append(5)
    done = len(b"".join(sim.expected[:3]))
    offset.write_text(f"{sim.live.stat().st_ino}\n{done}\n")
    proc = tail(sim.live, offset)
    assert proc.stdout == b"".join(sim.expected[3:])
    assert b"logtail" in proc.stderr
    assert offset.read_bytes().startswith(b"{")  # our own format from now on
    sim.append(1)
    assert out(sim.live, offset) == sim.expected[5]


def test_logtail_offset_into_a_rotated_file_is_taken_over(sim: LogSim, offset: Path) -> None:
    """logtail stopped inside what is now `.1`: finish it from there, then the live file."""
    clock = Clock()
    sim.append(4)
    clock.touch(sim.live)
    done = len(b"".join(sim.expected[:2]))
    offset.write_text(f"{sim.live.stat().st_ino}\n{done}\n")
    sim.rotate_rename()
    sim.append(2)
    clock.touch(sim.live)
    assert out(sim.live, offset) == b"".join(sim.expected[2:])


def test_t_leaves_a_logtail_offset_file_alone(sim: LogSim, offset: Path) -> None:
    """`-t` on logtail's offset file must neither save nor destroy logtail's position."""
    sim.append(4)
    done = len(b"".join(sim.expected[:1]))
    logtail_offset = f"{sim.live.stat().st_ino}\n{done}\n"
    offset.write_text(logtail_offset)
    assert tail(sim.live, offset, "-t").stdout == b"".join(sim.expected[1:])
    assert offset.read_text() == logtail_offset
    assert out(sim.live, offset) == b"".join(sim.expected[1:])


def test_broken_pipe_keeps_the_offset(sim: LogSim, offset: Path) -> None:
    """Output that was not delivered is not committed: the next run prints it again."""
    sim.append(2000, width=100)  # more than a pipe holds
    proc = subprocess.Popen(
        [*CLI, "tail", "-f", str(sim.live), "-o", str(offset)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader of the pipeline died before reading anything
    _, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert not offset.exists()
    assert out(sim.live, offset) == written(sim)


def test_broken_pipe_keeps_a_logtail_offset(sim: LogSim, offset: Path) -> None:
    """Taking over logtail's offset and failing to deliver must not fall back to line 1."""
    sim.append(2000, width=100)
    done = len(b"".join(sim.expected[:1000]))
    logtail_offset = f"{sim.live.stat().st_ino}\n{done}\n"
    offset.write_text(logtail_offset)
    proc = subprocess.Popen(
        [*CLI, "tail", "-f", str(sim.live), "-o", str(offset)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert offset.read_text() == logtail_offset
    assert out(sim.live, offset) == b"".join(sim.expected[1000:])


_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from matomo_rt.tail import SourceLock
    with SourceLock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_second_instance_exits_75_naming_the_pid(sim: LogSim, offset: Path) -> None:
    """One process per offset file: the second says who holds it and exits EX_TEMPFAIL."""
    sim.append(2)
    lock = offset.with_name(offset.name + ".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        proc = tail(sim.live, offset, expect=75)
        assert proc.stdout == b""
        assert f"pid {holder.pid}".encode() in proc.stderr
    finally:
        holder.communicate(timeout=10)
    assert out(sim.live, offset) == written(sim)


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"format": 7}', b"12 34 56\n"])
def test_corrupt_offset_file_is_a_loud_error(sim: LogSim, offset: Path, content: bytes) -> None:
    """Never a silent restart from 0: no output, the file untouched, the way out named."""
    sim.append(3)
    offset.write_bytes(content)
    proc = subprocess.run(
        [*CLI, "tail", "-f", str(sim.live), "-o", str(offset)],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode not in (0, 1)
    assert proc.stdout == b""
    assert b"matomo-rt seek" in proc.stderr
    assert offset.read_bytes() == content


def test_missing_log_exits_66(tmp_path: Path, offset: Path) -> None:
    proc = tail(tmp_path / "nope.log", offset, expect=66)
    assert proc.stdout == b"" and b"nope.log" in proc.stderr


def test_multi_member_gzip_generation_is_read(sim: LogSim, offset: Path) -> None:
    """A .gz of several members (as `gzip -c >>` makes) is one stream to read on in."""
    clock = Clock()
    sim.append(2)
    clock.touch(sim.live)
    got = out(sim.live, offset)
    sim.append(3)
    clock.touch(sim.live)
    rotated = sim.live.with_name("access.log.1.gz")
    data = sim.live.read_bytes()
    rotated.write_bytes(gzip.compress(data[:50]) + gzip.compress(data[50:]))
    clock.touch(rotated)
    sim.live.write_bytes(b"")
    sim.append(1)
    clock.touch(sim.live)
    got += out(sim.live, offset)
    assert got == written(sim)


def test_logtail_offset_inside_a_line_skips_the_fragment(tmp_path: Path) -> None:
    """logtail printed a partial last line and saved its offset inside it: the rest of that
    line is a fragment, not a line; matomo-rt goes on from the next line, not from byte 0."""
    log = tmp_path / "access.log"
    offset = tmp_path / "access.log.offset"
    log.write_bytes(b"a1\na2\na3\npart")
    offset.write_text(f"{log.stat().st_ino}\n13\n")
    with log.open("ab") as fh:
        fh.write(b"ial\nb1\n")
    assert tail(log, offset).stdout == b"b1\n"
