"""One test per rule of the offset reader (DESIGN §2 rules 1-10) and of its state and lock (§3).

The property test explores random histories; these pin each rule down with a small, named
example, so a regression says which guarantee broke. Every file lives under tmp_path, and the
only clock that matters (mtimes, which order rotated generations) is set with os.utime.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from matomo_rt.store import STATE_FORMAT, load_state, save_state
from matomo_rt.tail import LockedError, Position, SourceLock, StateError
from matomo_rt.tail.identity import FINGERPRINT_BYTES, Fingerprint
from matomo_rt.tail.reader import Warning_
from tests.tail.logsim import LogSim, line_for
from tests.tail.stored import StoredReader

ROOT = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------------------


class Clock:
    """Strictly increasing mtimes in the past, so generation order never depends on timing."""

    def __init__(self) -> None:
        self.now = 1_700_000_000

    def touch(self, path: Path) -> None:
        self.now += 10
        os.utime(path, (self.now, self.now))


def lines(first: int, count: int, width: int = 40) -> bytes:
    """`count` unique lines numbered from `first`."""
    return b"".join(line_for(n, width) for n in range(first, first + count))


def reader_for(
    log: Path,
    state: Path,
    start_at: str = "beginning",
    chunk_bytes: int = 64,
    warnings: Optional[list[Warning_]] = None,
) -> StoredReader:
    """A fresh reader, as a new process would build it from the state file."""
    return StoredReader(
        log,
        state,
        start_at=start_at,
        chunk_bytes=chunk_bytes,
        on_warning=None if warnings is None else warnings.append,
    )


def take(
    log: Path,
    state: Path,
    max_lines: int = 1_000_000,
    max_bytes: int = 1 << 30,
    start_at: str = "beginning",
    warnings: Optional[list[Warning_]] = None,
) -> bytes:
    """Read everything there is, committing batch by batch; return the bytes handed on."""
    out = bytearray()
    for _ in range(100_000):
        reader = reader_for(log, state, start_at, warnings=warnings)
        batch = reader.read_batch(max_lines, max_bytes)
        out += b"".join(batch.chunks())
        reader.commit(batch.end)
        if batch.lines == 0:
            return bytes(out)
    raise AssertionError("the reader never ran dry")


def append(path: Path, data: bytes, clock: Optional[Clock] = None) -> None:
    with path.open("ab") as fh:
        fh.write(data)
    if clock is not None:
        clock.touch(path)


def kinds(warnings: list[Warning_]) -> list[str]:
    return [w.kind for w in warnings]


def stored_position(state: Path) -> Position:
    data = load_state(state)
    assert data is not None
    return Position.from_json(data["position"])


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """An empty live log in its own directory, as nginx creates it."""
    directory = tmp_path / "log"
    directory.mkdir()
    path = directory / "access.log"
    path.write_bytes(b"")
    return path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "source.state"


# -- rule 1: identity is inode + fingerprint -----------------------------------------------


def test_state_stores_inode_and_a_fingerprint_with_its_length(log: Path, state: Path) -> None:
    """Rule 1: both halves of the identity are stored, and N with the hash, to compare later."""
    append(log, lines(1, 5))
    take(log, state)
    st = log.stat()
    current = stored_position(state).current
    assert current is not None
    assert (current.dev, current.ino) == (st.st_dev, st.st_ino)
    assert current.fp == Fingerprint.of(log.read_bytes())
    assert current.fp.length == min(st.st_size, FINGERPRINT_BYTES)
    raw = json.loads(state.read_text())["position"]["current"]["fingerprint"]
    assert raw == {"length": current.fp.length, "sha256": current.fp.digest}


def test_fingerprint_grows_with_the_file_up_to_its_limit(log: Path, state: Path) -> None:
    """Rule 1: a fingerprint taken on a short file is extended, so later checks are stronger."""
    append(log, lines(1, 1))
    take(log, state)
    first = stored_position(state).current
    assert first is not None and first.fp.length == len(lines(1, 1))
    append(log, lines(2, 60))
    take(log, state)
    later = stored_position(state).current
    assert later is not None and later.fp.length == FINGERPRINT_BYTES


def test_same_inode_with_another_head_is_not_resumed(log: Path, state: Path) -> None:
    """Rule 1: inode reuse (same dev/ino, other content) must not resume at the stale offset.

    Rewriting the file in place is exactly what a reused inode looks like to the reader; the
    new content is longer than the old offset and has a line end right before it, so only the
    fingerprint can tell.
    """
    old = lines(1, 4)
    append(log, old)
    assert take(log, state) == old
    ino = log.stat().st_ino
    new = b"Z" * (len(old) - 1) + b"\n" + lines(100, 3)
    assert new[len(old) - 1 : len(old)] == b"\n"
    log.write_bytes(new)  # truncates and rewrites: same inode
    assert log.stat().st_ino == ino
    warnings: list[Warning_] = []
    assert take(log, state, warnings=warnings) == new
    assert kinds(warnings) == ["replaced"]


def test_delete_and_recreate_reads_the_new_file_whole(log: Path, state: Path) -> None:
    """Rule 1: rm + create (the inode may or may not be reused) reads the new file from 0."""
    append(log, lines(1, 6))
    take(log, state)
    log.unlink()
    new = lines(50, 2)  # shorter than the old offset
    log.write_bytes(new)
    assert take(log, state) == new
    bigger = lines(60, 30)  # and once more, longer than it
    log.unlink()
    log.write_bytes(bigger)
    assert take(log, state) == bigger


def test_rotated_file_with_a_known_inode_but_other_head_is_new(log: Path, state: Path) -> None:
    """Rule 1: a finished generation's inode now holding other content is not that generation."""
    clock = Clock()
    append(log, lines(1, 3), clock)
    take(log, state)
    rotated = log.with_name("access.log.1")
    log.rename(rotated)
    log.write_bytes(b"")
    assert take(log, state) == b""
    rewritten = lines(200, 8)  # larger than the stored offset, so only the head tells
    rotated.write_bytes(rewritten)
    clock.touch(rotated)
    assert take(log, state) == rewritten


@pytest.mark.parametrize("role", ["current", "finished"])
def test_compressed_file_on_a_known_inode_is_checked_by_its_head(
    log: Path, state: Path, role: str
) -> None:
    """Rule 1: logrotate's `compress` frees the old inode; a later .gz may get it.

    Seen with the real logrotate (create + compress, three rotations while down): the .gz of a
    newer generation was taken for the one we knew by that inode, and lines were lost. Here the
    reused inode is made by rewriting our old file in place with a newer generation's .gz.
    """
    clock = Clock()
    append(log, lines(1, 3), clock)
    got = take(log, state)
    ours = log
    if role == "finished":  # read to its end under its rotated name
        ours = log.rename(log.with_name("access.log.1"))
        log.write_bytes(b"")
        got += take(log, state)
    else:  # the generation we are in, with unread lines
        append(log, lines(4, 3), clock)
    content = ours.read_bytes()
    ino = ours.stat().st_ino
    # Our generation, compressed by gzip(1) into a new inode...
    (log.parent / "access.log.3.gz").write_bytes(gzip.compress(content))
    clock.touch(log.parent / "access.log.3.gz")
    # ...and a newer generation's .gz on our freed inode.
    newer = lines(10, 1)
    reused = ours.rename(log.with_name("access.log.2.gz"))
    with reused.open("r+b") as fh:
        fh.truncate(0)
        fh.write(gzip.compress(newer))
    assert reused.stat().st_ino == ino
    clock.touch(reused)
    log.write_bytes(b"")
    append(log, lines(20, 2), clock)
    got += take(log, state)
    assert got == content + newer + lines(20, 2)


def test_an_inode_reused_after_an_empty_generation_is_not_that_generation(
    tmp_path: Path, log: Path, state: Path
) -> None:
    """Rule 1 (found by the property test once logsim modelled inode reuse): a generation
    renamed while empty has no fingerprint, only its inode. Once it is compressed its inode is
    free, and copytruncate's next copy of the live file may get it: that copy is not the empty
    generation grown by late lines, and the live file's lines must not be read from both."""
    sim = LogSim(log.parent, freed=tmp_path / "freed", clock=True)
    got = take(log, state)  # the first pass: an empty log
    sim.rotate_rename()  # renamed while empty
    got += take(log, state)
    sim.compress(log.with_name("access.log.1"))  # its inode is free
    sim.append(1)
    sim.reuse = [1]
    sim.copy_for_truncate()  # the copy takes the freed inode
    assert sim.reused == 1
    got += take(log, state)
    sim.truncate_after_copy()
    sim.append(2)
    got += take(log, state)
    assert got == b"".join(sim.expected)


def test_a_generation_empty_when_seen_then_deleted_is_said_gone(log: Path, state: Path) -> None:
    """Rule 1's other side: a generation with no fingerprint is not recognised by its inode,
    but when no file has that inode any more, lines written to it after the last pass may be
    gone with it, and the reader says so (it cannot know whether there were any)."""
    sim = LogSim(log.parent)
    clock = Clock()
    got = take(log, state)  # the first pass: an empty log
    sim.append(2)  # never read:
    rotated = sim.rotate_rename()
    rotated.unlink()  # `rotate 0`
    sim.append(1)
    clock.touch(sim.live)
    warnings: list[Warning_] = []
    got += take(log, state, warnings=warnings)
    assert got == b"".join(sim.expected[-1:])
    assert kinds(warnings) == ["lost"]
    assert "if any" in warnings[0].message


# -- rule 2: validate the resume point -----------------------------------------------------


def test_offset_beyond_size_is_truncation(log: Path, state: Path) -> None:
    """Rule 2: size < offset with no copy anywhere: warn, and read what is there from 0."""
    append(log, lines(1, 10))
    take(log, state)
    with log.open("r+b") as fh:
        fh.truncate(0)
    append(log, lines(20, 2))
    warnings: list[Warning_] = []
    assert take(log, state, warnings=warnings) == lines(20, 2)
    assert kinds(warnings) == ["truncated"]


def test_resume_point_must_follow_a_line_end(log: Path, state: Path) -> None:
    """Rule 2: same head (past the fingerprint) but no "\\n" before the offset: never a cut line."""
    head = lines(1, 40, width=60)  # longer than the fingerprint
    assert len(head) > FINGERPRINT_BYTES
    append(log, head)
    take(log, state)
    offset = len(head)
    # Same first FINGERPRINT_BYTES, then other lines, arranged so byte offset-1 is not "\n".
    new = head[:FINGERPRINT_BYTES] + b"y" * (offset - FINGERPRINT_BYTES + 5) + b"\n"
    new += lines(300, 2)
    assert new[offset - 1 : offset] != b"\n"
    assert Fingerprint.of(head).matches(new)
    log.write_bytes(new)
    warnings: list[Warning_] = []
    assert take(log, state, warnings=warnings) == new
    assert kinds(warnings) == ["replaced"]


# -- rule 3: rotation by identity, under any name -------------------------------------------


@pytest.mark.parametrize(
    "rotated_name",
    [
        "access.log.1",
        "access.log.0",
        "access.log-20261127",
        "access.log-2026112719",
        "access.log.old",
    ],
)
def test_rotated_generation_is_found_under_any_name(
    log: Path, state: Path, rotated_name: str
) -> None:
    """Rule 3: finish the old file from the stored offset, then read the new live file."""
    clock = Clock()
    append(log, lines(1, 3), clock)
    assert take(log, state) == lines(1, 3)
    append(log, lines(4, 2), clock)
    log.rename(log.with_name(rotated_name))
    log.write_bytes(b"")
    append(log, lines(6, 2), clock)
    assert take(log, state) == lines(4, 4)


def test_several_rotations_between_two_runs_are_all_read(log: Path, state: Path) -> None:
    """Rule 3: every generation rotated while we were away is read, oldest first."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = take(log, state)
    for _ in range(4):  # .1 .. .4: the first one holds the tail of what we were reading
        sim.append(3)
        clock.touch(sim.live)
        sim.rotate_rename()
    sim.append(2)
    clock.touch(sim.live)
    got += take(log, state)
    assert got == b"".join(sim.expected)


def test_several_dated_rotations_between_two_runs_are_read_in_date_order(
    log: Path, state: Path
) -> None:
    """Rule 3: dated names (hourly here) written within one mtime tick still sort by date."""
    sim = LogSim(log.parent)
    sim.append(2)
    got = take(log, state)
    for _ in range(3):
        sim.append(2)
        sim.rotate_dateext(hourly=True)
    same = 1_700_000_000
    for p in log.parent.iterdir():
        os.utime(p, (same, same))  # one tick: only the names can order them
    sim.append(1)
    got += take(log, state)
    assert got == b"".join(sim.expected)


def test_lines_written_to_a_renamed_file_before_reopen_are_read(log: Path, state: Path) -> None:
    """Rule 3: nginx writes to `.1` until it reopens; a finished generation is looked at again."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = take(log, state)
    first = sim.rotate_rename()
    clock.touch(first)
    got += take(log, state)
    sim.append_to(first, 2)  # late lines, after we finished it
    clock.touch(first)
    sim.append(2)
    clock.touch(sim.live)
    got += take(log, state)
    assert got == b"".join(sim.expected)


def test_late_lines_in_a_renamed_file_that_was_empty_keep_the_live_position(
    log: Path, state: Path
) -> None:
    """Rule 3 (found by the property test): a generation renamed while empty is nothing to
    remember; the reader moves on into the new live file (the generation it was in is gone).
    When nginx then writes to the renamed file before it reopens, those lines are late lines
    of an older generation: the position in the live file stays, its lines are not read
    again."""
    sim = LogSim(log.parent)
    clock = Clock()
    got = take(log, state)  # the first pass: an empty log
    sim.rotate_rename(".gz", delay=False)  # the generation we were in is gone (compressed)
    sim.rotate_rename()  # and the next one renamed while still empty
    clock.touch(log.with_name("access.log.1"))
    sim.append(2)
    clock.touch(sim.live)
    reader = reader_for(log, state)
    batch = reader.read_batch(1, 1 << 20)  # one line of the live file
    reader.commit(batch.end)
    got += b"".join(batch.chunks())
    sim.append_to(log.with_name("access.log.1"), 1)  # before nginx reopened
    reader = reader_for(log, state)
    batch = reader.read_batch(1, 1 << 20)  # the late line, and the batch is full
    reader.commit(batch.end)
    got += b"".join(batch.chunks())
    got += take(log, state)
    assert sorted(got.splitlines(keepends=True)) == sorted(sim.expected)


# -- rule 4: compressed before we got to it -------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("batch_lines", [1_000_000, 1])
def test_generation_compressed_before_we_finished_it(
    log: Path, state: Path, suffix: str, batch_lines: int
) -> None:
    """Rule 4: found by its decompressed head, read on from the stored offset (also one line
    per batch, each batch a new process: a restart mid-way through it)."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = take(log, state)
    sim.append(4)
    clock.touch(sim.live)
    rotated = sim.rotate_rename(compress=suffix, delay=False)
    assert rotated.name == f"access.log.1{suffix}"
    sim.append(2)
    clock.touch(sim.live)
    got += take(log, state, max_lines=batch_lines)
    assert got == b"".join(sim.expected)


def test_compressed_generations_rotated_while_down_are_read_in_order(
    log: Path, state: Path
) -> None:
    """Rule 4: with delaycompress, two rotations later our generation is `.2.gz`, one is `.1`."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = take(log, state)
    for _ in range(3):
        sim.append(3)
        clock.touch(sim.live)
        sim.rotate_rename(compress=".gz", delay=True)
    assert sorted(p.name for p in log.parent.iterdir()) == [
        "access.log",
        "access.log.1",
        "access.log.2.gz",
        "access.log.3.gz",
    ]
    got += take(log, state)
    assert got == b"".join(sim.expected)


@pytest.mark.parametrize("suffix", [None, ".gz", ".bz2", ".xz"])
def test_late_lines_of_a_finished_generation_are_read_to_the_end_batch_by_batch(
    log: Path, state: Path, suffix: Optional[str]
) -> None:
    """Rule 4 with rule 3's late lines: a generation we finished got lines after its rename and
    was then compressed (delaycompress, one rotation later). Reading them one line per batch,
    each batch a new process, must resume mid-way through the compressed file: the position
    records whether a finished generation was read to its end or only partly."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = take(log, state)
    first = sim.rotate_rename()
    clock.touch(first)
    got += take(log, state)  # .1 finished at its end, the new live file empty
    sim.append_to(first, 4)  # nginx has not reopened yet: late lines, unread
    clock.touch(first)
    sim.rotate_rename(compress=suffix, delay=True)  # .1 -> .2 (compressed), live -> .1
    clock.touch(log.with_name("access.log.1"))
    sim.append(2)
    clock.touch(sim.live)
    got += take(log, state, max_lines=1)
    assert sorted(got.splitlines(keepends=True)) == sorted(sim.expected)
    assert len(got.splitlines()) == len(sim.expected)


@pytest.mark.parametrize("suffix", [None, ".gz", ".xz"])
def test_a_restart_mid_way_through_a_compressed_generation_resumes_it(
    log: Path, state: Path, suffix: Optional[str]
) -> None:
    """Rule 4: late lines of a generation renamed while empty, compressed by hand (`gzip
    access.log.1`) while the position is in the live file: each batch reads one line and
    commits, as a restart would. The rest of the compressed file is read, and the live file's
    lines are not read again."""
    sim = LogSim(log.parent)
    clock = Clock()
    got = take(log, state)  # the first pass: an empty log
    sim.rotate_rename(".gz", delay=False)  # the generation we were in is gone (compressed)
    sim.rotate_rename()  # and the next one renamed while still empty
    renamed = log.with_name("access.log.1")
    clock.touch(renamed)
    sim.append(3)
    clock.touch(sim.live)
    reader = reader_for(log, state)
    batch = reader.read_batch(1, 1 << 20)  # one line of the live file
    reader.commit(batch.end)
    got += b"".join(batch.chunks())
    sim.append_to(renamed, 4)  # before nginx reopened
    clock.touch(renamed)
    if suffix is not None:
        sim.compress(renamed, suffix)
    got += take(log, state, max_lines=1)
    assert sorted(got.splitlines(keepends=True)) == sorted(sim.expected)
    assert len(got.splitlines()) == len(sim.expected)


# -- rule 5: copytruncate ------------------------------------------------------------------


def test_copytruncate_finishes_the_copy_then_reads_the_live_file(log: Path, state: Path) -> None:
    """Rule 5: same inode, size < offset: the rest comes from the copy, then the live file."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(5)
    clock.touch(sim.live)
    got = take(log, state)
    sim.append(3)
    clock.touch(sim.live)
    copy = sim.rotate_copytruncate()
    clock.touch(copy)
    sim.append(1)
    clock.touch(sim.live)
    warnings: list[Warning_] = []
    got += take(log, state, warnings=warnings)
    assert got == b"".join(sim.expected)
    assert kinds(warnings) == ["copytruncate"]
    message = warnings[0].message
    assert "cannot tell" in message and "rename" in message  # the window, and the better way


def test_copytruncate_when_the_live_file_regrew_past_the_offset(log: Path, state: Path) -> None:
    """Rule 5: after the truncation nginx wrote more than the old offset: still no cut line."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(2)
    clock.touch(sim.live)
    got = take(log, state)
    sim.append(1)
    clock.touch(sim.live)
    copy = sim.rotate_copytruncate()
    clock.touch(copy)
    sim.append(20)
    clock.touch(sim.live)
    got += take(log, state)
    assert got == b"".join(sim.expected)


def test_a_second_copy_made_before_its_truncate_is_not_read_twice(log: Path, state: Path) -> None:
    """Rule 5 with a race (issue 9, item 1): a copytruncate, then a second one caught between
    its copy and its truncate. The new `.1` holds the same lines as the live file: the lines
    written since the first truncate come once, from one of them, never from both."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(8)
    clock.touch(sim.live)
    got = take(log, state)
    copy = sim.rotate_copytruncate()  # access.log -> .1, truncate
    clock.touch(copy)
    sim.append(6)  # r8..r13
    clock.touch(sim.live)
    sim.copy_for_truncate()  # .1 -> .2, access.log -> .1; the truncate has not happened yet
    got += take(log, state)
    assert got == b"".join(sim.expected)
    sim.truncate_after_copy()
    sim.append(2)
    clock.touch(sim.live)
    got += take(log, state)
    assert got == b"".join(sim.expected)


@pytest.mark.parametrize("suffix", [None, ".gz"])
def test_copytruncate_says_only_what_the_reader_knows(
    log: Path, state: Path, suffix: Optional[str]
) -> None:
    """Rule 5 (issue 9): lines written between the copy and the truncate that the reader took
    from the live file in time are not lost, and the reader cannot know whether any others
    were written: the warning says it cannot tell, never that lines were lost. A copy that
    holds less than the reader read (it read past the copy before the truncate) is no
    "truncated" file either, compressed or not."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(3)
    clock.touch(sim.live)
    got = take(log, state)
    sim.append(2)
    copy = sim.copy_for_truncate()
    clock.touch(copy)
    sim.append(2)  # in the window: only in the live file
    clock.touch(sim.live)
    got += take(log, state)  # read in time
    sim.truncate_after_copy()
    if suffix is not None:
        clock.touch(sim.compress(copy, suffix))
    sim.append(1)
    clock.touch(sim.live)
    warnings: list[Warning_] = []
    got += take(log, state, warnings=warnings)
    assert got == b"".join(sim.expected)  # nothing lost, nothing twice
    assert kinds(warnings) == ["copytruncate"]
    message = warnings[0].message
    assert "lost" not in message
    assert "cannot tell" in message and "rename" in message


# -- rule 6: partial last lines -------------------------------------------------------------


def test_partial_last_line_of_the_live_file_waits_until_complete(log: Path, state: Path) -> None:
    """Rule 6: never hand on an unterminated line of a file that may still grow."""
    append(log, lines(1, 2) + b'{"half": ')
    assert take(log, state) == lines(1, 2)
    assert take(log, state) == b""
    append(log, b'"line"}\n')
    assert take(log, state) == b'{"half": "line"}\n'


def test_unterminated_last_line_of_a_rotated_file_gets_a_newline(log: Path, state: Path) -> None:
    """Rule 6: a rotated file will not grow, so its last line is complete: hand it on, once."""
    sim = LogSim(log.parent)
    clock = Clock()
    sim.append(2, partial=True)
    clock.touch(sim.live)
    got = take(log, state)
    sim.rotate_rename()  # the fragment stays in `.1` for good
    sim.append(1)
    clock.touch(sim.live)
    got += take(log, state)
    got += take(log, state)
    assert got == b"".join(sim.expected)
    assert got.count(sim.expected[2]) == 1 and sim.expected[2].endswith(b"\n")


# -- rule 7: bytes, large reads, one reused buffer ------------------------------------------


def test_bytes_pass_through_unchanged(log: Path, state: Path) -> None:
    """Rule 7: bytes, not text: invalid UTF-8, NUL, CR and a line longer than the buffer."""
    data = (
        b'{"ua": "\xff\xfe\xc3("}\n'
        + b"nul\x00inside\n"
        + b"crlf\r\n"
        + b"L" * 1000  # chunk_bytes is 64: the buffer must grow for it
        + b"\n"
        + b"\xe2\x82\xac euro\n"
    )
    append(log, data)
    assert take(log, state) == data


def test_large_reads_into_one_reused_buffer(log: Path, state: Path) -> None:
    """Rule 7: a big file comes in chunk_bytes-sized chunks of whole lines, from one buffer."""
    chunk_bytes = 64 * 1024
    data = lines(1, 20_000, width=100)  # ~2 MiB
    append(log, data)
    reader = StoredReader(log, state, start_at="beginning", chunk_bytes=chunk_bytes)
    sizes: list[int] = []
    buffers: set[int] = set()
    out = bytearray()
    for chunk in reader.read():
        buffers.add(id(chunk.data.obj))
        sizes.append(len(chunk.data))
        out += chunk.data
    assert bytes(out) == data
    assert len(buffers) == 1
    assert len(sizes) <= len(data) // (chunk_bytes - 200) + 1
    assert all(size > chunk_bytes - 200 for size in sizes[:-1])


# -- rule 8: warnings go to the log, never into the data ------------------------------------


def test_warnings_go_to_the_log_and_callback_never_into_the_data(
    log: Path, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule 8: a warning reaches the log, the callback and `warnings`, and no batch."""
    sim = LogSim(log.parent)
    sim.append(4)
    got = take(log, state)
    sim.append(2)
    sim.rotate_copytruncate()
    sim.append(1)
    seen: list[Warning_] = []
    reader = reader_for(log, state, warnings=seen)
    with caplog.at_level(logging.WARNING, logger="matomo_rt.tail.reader"):
        batch = reader.read_batch(1000, 1 << 20)
    got += b"".join(batch.chunks())
    assert got == b"".join(sim.expected)
    assert [w.kind for w in seen] == ["copytruncate"] == [w.kind for w in reader.warnings]
    assert any("copytruncate" in r.getMessage() for r in caplog.records)
    assert all(line in sim.expected for line in batch.iter_lines())


# -- rule 9: first run -----------------------------------------------------------------------


def test_start_at_end_starts_after_the_last_complete_line(log: Path, state: Path) -> None:
    """Rule 9: "end" skips what is there, but a partial last line is later read whole."""
    append(log, lines(1, 3) + b"partial-")
    assert take(log, state, start_at="end") == b""
    append(log, b"rest\n" + lines(10, 1))
    assert take(log, state, start_at="end") == b"partial-rest\n" + lines(10, 1)


def test_start_at_beginning_reads_the_live_file_from_0(log: Path, state: Path) -> None:
    """Rule 9: "beginning" reads every complete line of the live file."""
    append(log, lines(1, 3) + b"partial")
    assert take(log, state, start_at="beginning") == lines(1, 3)


def test_first_run_takes_rotated_files_as_history(log: Path, state: Path) -> None:
    """Rule 9: generations present on a first run are history, but late lines in them count."""
    clock = Clock()
    rotated = log.with_name("access.log.1")
    rotated.write_bytes(lines(1, 3))
    clock.touch(rotated)
    append(log, lines(10, 2), clock)
    assert take(log, state, start_at="beginning") == lines(10, 2)
    append(rotated, lines(4, 1), clock)
    assert take(log, state) == lines(4, 1)


def test_default_start_is_the_end(log: Path, state: Path) -> None:
    """Rule 9: the documented default of the reader is "end" (history is not imported)."""
    append(log, lines(1, 3))
    reader = StoredReader(log, state)
    assert reader.read_batch(100, 1 << 20).lines == 0


# -- rule 10: forget what is gone ------------------------------------------------------------


def test_identities_of_deleted_generations_are_forgotten(log: Path, state: Path) -> None:
    """Rule 10: the finished list shrinks when logrotate deletes old generations."""
    sim = LogSim(log.parent)
    clock = Clock()
    for _ in range(3):
        sim.append(2)
        clock.touch(sim.live)
        sim.rotate_rename()
    sim.append(1)
    take(log, state)
    assert len(stored_position(state).finished) == 3
    for name in ("access.log.2", "access.log.3"):
        (log.parent / name).unlink()
    take(log, state)
    finished = stored_position(state).finished
    assert [g.name for g in finished] == ["access.log.1"]
    (log.parent / "access.log.1").unlink()
    take(log, state)
    assert stored_position(state).finished == ()


# -- reading is separate from committing -----------------------------------------------------


def test_reading_without_commit_rereads_the_same_lines(log: Path, state: Path) -> None:
    """A batch that was not committed (importer failed, crash) comes back whole next time."""
    append(log, lines(1, 5))
    reader = reader_for(log, state)
    first = reader.read_batch(3, 1 << 20)
    again = reader.read_batch(3, 1 << 20)
    fresh = reader_for(log, state).read_batch(3, 1 << 20)
    assert list(first.iter_lines()) == list(again.iter_lines()) == list(fresh.iter_lines())
    assert list(first.iter_lines()) == [line_for(n) for n in (1, 2, 3)]
    assert not state.exists()


def test_position_after_lines_commits_exactly_that_many(log: Path, state: Path) -> None:
    """A partial import (`--skip=N`) commits exactly N lines, across generations and chunks."""
    clock = Clock()
    append(log, lines(1, 1), clock)
    take(log, state)
    append(log, lines(2, 3) + b"tail-of-rotated", clock)  # the last one gets a newline
    log.rename(log.with_name("access.log.1"))
    log.write_bytes(b"")
    append(log, lines(10, 4), clock)
    all_lines = list(reader_for(log, state).read_batch(100, 1 << 20).iter_lines())
    assert len(all_lines) == 8
    base = state.read_bytes()
    for n in range(len(all_lines) + 1):
        state.write_bytes(base)
        reader = reader_for(log, state)
        batch = reader.read_batch(100, 1 << 20)
        reader.commit(batch.position_after_lines(n))
        rest = take(log, state)
        assert rest == b"".join(all_lines[n:]), f"after committing {n} lines"


# -- batch bounds -----------------------------------------------------------------------------


def test_batches_are_bounded_in_lines(log: Path, state: Path) -> None:
    """A backlog is a sequence of small hand-offs of at most batch_lines lines."""
    append(log, lines(1, 10))
    sizes = []
    for _ in range(4):
        reader = reader_for(log, state)
        batch = reader.read_batch(4, 1 << 20)
        sizes.append(batch.lines)
        reader.commit(batch.end)
    assert sizes == [4, 4, 2, 0]


def test_batches_are_bounded_in_bytes(log: Path, state: Path) -> None:
    """At most batch_bytes, in whole lines; the limit is never exceeded by a normal line."""
    data = lines(1, 10)  # 41 bytes each
    append(log, data)
    reader = reader_for(log, state)
    batch = reader.read_batch(1000, 100)
    assert batch.lines == 2 and batch.nbytes == 82 == len(b"".join(batch.chunks()))


def test_a_line_longer_than_batch_bytes_comes_alone_and_never_stalls(
    log: Path, state: Path
) -> None:
    """An oversize line is handed on by itself; the lines after it follow in the next batches."""
    big = b"B" * 500 + b"\n"
    append(log, lines(1, 1) + big + lines(2, 2))
    got = []
    for _ in range(5):
        reader = reader_for(log, state)
        batch = reader.read_batch(1000, 100)
        got.append(list(batch.iter_lines()))
        reader.commit(batch.end)
    assert got == [[line_for(1)], [big], [line_for(2), line_for(3)], [], []]


# -- §3: the state file ------------------------------------------------------------------------


def test_state_is_versioned_atomic_and_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§3: temp file in the same directory, fsync it, rename over, fsync the directory."""
    target = tmp_path / "s.state"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: object) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_state(target, {"position": {"x": 1}})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    temp = events[0][1]
    assert Path(temp).parent == tmp_path and temp != str(target)
    assert events[1][1] == f"{temp} -> {target}"
    assert events[2][1] == str(tmp_path)
    assert json.loads(target.read_text()) == {"format": STATE_FORMAT, "position": {"x": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.state"]


def test_failed_state_write_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§3: a write that fails before the rename leaves the old file intact and no temp file."""
    target = tmp_path / "s.state"
    save_state(target, {"n": 1})
    before = target.read_bytes()

    def full(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StateError, match="disk full"):
        save_state(target, {"n": 2})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.state"]


@pytest.mark.parametrize(
    "content",
    [
        b"",  # a crash on a filesystem that lost the data
        b'{"format": 1, "position": {"curr',  # cut short
        b"\x00\x00\x00\x00",
        b'{"format": 99, "position": {}}',  # another version
        b"[1, 2]",
        b'{"format": 1, "position": {"current": {"dev": 1}}}',  # damaged inside
        b'{"format": 1}',
    ],
)
def test_corrupt_state_is_a_loud_error_never_a_restart(
    log: Path, state: Path, content: bytes
) -> None:
    """§3: a damaged state file names `matomo-rt seek`; it is never replaced by a fresh start."""
    append(log, lines(1, 3))
    state.write_bytes(content)
    with pytest.raises(StateError) as exc:
        reader_for(log, state)
    assert "matomo-rt seek" in str(exc.value) and str(state) in str(exc.value)
    assert state.read_bytes() == content


# -- §3: one process per source -----------------------------------------------------------------

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


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A lock file held by another process until the test ends; yields (path, pid)."""
    lock = tmp_path / "source.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        yield lock, proc.pid
    finally:
        proc.communicate(timeout=10)


def test_second_instance_is_refused_and_told_the_pid(held_lock: tuple[Path, int]) -> None:
    """§3: a non-blocking flock; the second process learns who holds it."""
    lock, pid = held_lock
    with pytest.raises(LockedError, match=rf"pid {pid}\b"):
        SourceLock(lock).acquire()


def test_lock_dies_with_its_holder(tmp_path: Path) -> None:
    """§3: a crashed holder leaves no stale lock behind."""
    lock = tmp_path / "source.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    proc.kill()
    proc.communicate(timeout=10)
    with SourceLock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"


def test_lock_is_per_source(tmp_path: Path) -> None:
    """§3: two sources lock independently; the same source twice does not."""
    first, other = SourceLock(tmp_path / "a.lock"), SourceLock(tmp_path / "b.lock")
    first.acquire()
    other.acquire()  # another source: free
    try:
        with pytest.raises(LockedError):
            SourceLock(tmp_path / "a.lock").acquire()
    finally:
        first.release()
        other.release()
    with SourceLock(tmp_path / "a.lock"):  # released: free again
        pass


@pytest.mark.parametrize("moment", ["while planning", "between planning and reading"])
def test_a_rotation_mid_pass_is_not_mistaken_for_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Rule 1 with a race: nginx's log is rotated after the reader stat()ed it. The file read
    must be the file stat()ed (identity from the open descriptor), or the old generation would be
    taken for a new one and imported again from byte 0."""
    import matomo_rt.tail.plan
    import matomo_rt.tail.reader

    log = tmp_path / "access.log"
    state = tmp_path / "state.json"
    log.write_bytes(lines(1, 4))
    first = StoredReader(log, state, start_at="beginning")
    first.commit(first.read_batch(100, 1 << 20).end)
    with log.open("ab") as fh:
        fh.write(lines(5, 4))

    def rotate() -> None:
        log.rename(tmp_path / "access.log.1")
        log.write_bytes(lines(9, 12))  # longer than the old offset

    # Planning reads heads (plan.py); reading opens the files (reader.py).
    module, target = (
        (matomo_rt.tail.plan, "read_head")
        if moment == "while planning"
        else (matomo_rt.tail.reader, "open_log")
    )
    real = getattr(module, target)
    done: list[bool] = []

    def racing(path: str, *args: object) -> object:
        if not done and path == str(log):
            done.append(True)
            rotate()
        return real(path, *args)

    monkeypatch.setattr(module, target, racing)
    got: list[bytes] = []
    for _ in range(5):
        reader = StoredReader(log, state, start_at="beginning")
        batch = reader.read_batch(100, 1 << 20)
        got.extend(batch.iter_lines())
        reader.commit(batch.end)
    assert done, "the race was not staged"
    assert b"".join(got) == lines(5, 4) + lines(9, 12)


def test_same_content_under_a_new_identity_resumes(tmp_path: Path) -> None:
    """A remount changes st_dev, a restore or `sed -i` the inode; the content is the same, so
    the reader resumes instead of reading the whole file again."""
    log = tmp_path / "access.log"
    state = tmp_path / "state.json"
    log.write_bytes(lines(1, 5))
    first = StoredReader(log, state, start_at="beginning")
    first.commit(first.read_batch(100, 1 << 20).end)
    document = json.loads(state.read_text())
    document["position"]["current"]["dev"] += 1  # as after a remount
    state.write_text(json.dumps(document))
    with log.open("ab") as fh:
        fh.write(lines(6, 1))
    reader = StoredReader(log, state, start_at="beginning")
    batch = reader.read_batch(100, 1 << 20)
    assert b"".join(batch.iter_lines()) == lines(6, 1)
    assert [w.kind for w in reader.warnings] == ["identity"]


def test_another_log_whose_name_starts_with_ours_is_not_a_generation(tmp_path: Path) -> None:
    """access.log.json beside access.log is its own log, not a rotation of access.log."""
    log = tmp_path / "a.log"
    other = tmp_path / "a.log.json"
    state = tmp_path / "state.json"
    log.write_bytes(lines(1, 1))
    other.write_bytes(b"OTHER1\n")
    names = ("a.log", "a.log.json")
    first = StoredReader(log, state, start_at="beginning", other_logs=names)
    first.commit(first.read_batch(100, 1 << 20).end)
    with other.open("ab") as fh:
        fh.write(b"OTHER2\n")
    with log.open("ab") as fh:
        fh.write(lines(2, 1))
    batch = StoredReader(log, state, start_at="beginning", other_logs=names).read_batch(
        100, 1 << 20
    )
    assert b"".join(batch.iter_lines()) == lines(2, 1)


def test_a_position_of_the_wrong_shape_is_a_loud_error(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    save_state(state, {"log": "x", "position": []})
    with pytest.raises(StateError, match="matomo-rt seek"):
        StoredReader(tmp_path / "access.log", state)


@pytest.mark.parametrize("rotated", [False, True])
def test_a_line_longer_than_the_limit_is_skipped_with_bounded_memory(
    tmp_path: Path, rotated: bool
) -> None:
    """No web server writes a line of megabytes; the reader skips it in buffer-sized reads
    (keeping its head for the quarantine) instead of holding it whole, and goes on."""
    log = tmp_path / "access.log"
    state = tmp_path / "state.json"
    huge = b"{" + b"x" * (5 * 65536) + b"}\n"
    log.write_bytes(lines(1, 2) + huge + lines(3, 2))
    if rotated:
        log.rename(tmp_path / "access.log.1")
        with (tmp_path / "access.log.1").open("ab") as fh:
            fh.write(b"{" + b"y" * (3 * 65536))  # an unterminated over-long last line
        log.write_bytes(lines(5, 1))
    start = Position(True, None, ()) if rotated else Position()
    reader = StoredReader(log, state, start_at="beginning", chunk_bytes=65536, max_line_bytes=65536)
    buffers: list[int] = []
    got = []
    seen: list[tuple[bytes, int]] = []
    for chunk in reader.read(start):
        buffers.append(len(chunk.data.obj))  # the buffer behind the view never grows
        got.append(bytes(chunk.data))
        if chunk.oversized is not None:
            assert chunk.data == b""
            seen.append(chunk.oversized)
    assert b"".join(got) == lines(1, 4) + (lines(5, 1) if rotated else b"")
    assert [length for _, length in seen] == [len(huge)] + ([3 * 65536 + 1] if rotated else [])
    assert seen[0][0].startswith(b"{xxx") and len(seen[0][0]) <= 64 * 1024
    assert max(buffers) <= 65536
    assert [w.kind for w in reader.warnings].count("oversized") == len(seen)


def test_a_batch_knows_which_oversized_lines_a_partial_commit_passes(
    log: Path, state: Path
) -> None:
    """An oversized line is the caller's to quarantine with the commit that moves past it: a
    commit of the lines before it stops before it, one more line includes it."""
    huge = b"{" + b"x" * 200 + b"}\n"
    append(log, lines(1, 2) + huge + lines(3, 2))
    reader = StoredReader(log, state, start_at="beginning", chunk_bytes=64, max_line_bytes=64)
    batch = reader.read_batch(100, 1 << 20)
    assert batch.lines == 4 and [(b, n) for b, _, n in batch.oversized] == [(2, len(huge))]
    assert batch.oversized_before(2) == [] and len(batch.oversized_before(3)) == 1
    reader.commit(batch.position_after_lines(2))
    again = StoredReader(log, state, start_at="beginning", chunk_bytes=64, max_line_bytes=64)
    retry = again.read_batch(100, 1 << 20)
    assert [(b, n) for b, _, n in retry.oversized] == [(0, len(huge))]
    assert list(retry.iter_lines()) == [line_for(3), line_for(4)]
