"""Property: whatever the writer and logrotate do, what the reader commits is what was written.

Random appends (with unfinished last lines), every kind of rotation (several between two reads),
late writes to a renamed file, a renamed file compressed by hand, delete-and-recreate, and
reader crashes between reading and committing. Rotations are the separate steps they are:
rename, then later nginx's reopen (late writes until then); copytruncate's copy, then later its
truncate, with appends, reads and crashes in between. Inode reuse and mtimes are the
simulator's (logsim's `freed` and `clock`), drawn by hypothesis rather than left to the
filesystem and the clock, so a failure replays: any file created may take the inode of one
deleted or compressed earlier, and two writes may share an mtime. After a catch-up, the
committed lines equal the written ones: none lost (but those written between a copy and its
truncate, which copytruncate itself may lose), none twice.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.tail.logsim import LogSim
from tests.tail.stored import StoredReader

COMPRESSION = st.sampled_from([None, ".gz", ".bz2", ".xz"])
#: For each file an operation creates: 0 a new inode, k the inode of the k-th latest deleted file.
REUSE = st.lists(st.integers(0, 3), max_size=2)


class ReaderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="matomo-rt-prop-"))
        self.sim = LogSim(self.tmp, freed=self.tmp / "freed", clock=True)
        self.state = self.tmp / "state.json"
        self.committed: list[bytes] = []
        self.renamed_last = False  # nginx may still write to `.1` until it reopens

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(scheme=st.sampled_from(["numbered", "dateext", "dateext-hourly"]))
    def choose_scheme(self, scheme: str) -> None:
        """The service was running before the log saw traffic: its first pass saw nothing."""
        self.scheme = scheme
        self._take(1, 1, commit=True)

    def reader(self) -> StoredReader:
        return StoredReader(self.sim.live, self.state, start_at="beginning", chunk_bytes=64)

    def _take(self, batch_lines: int, batch_bytes: int, commit: bool) -> int:
        reader = self.reader()
        batch = reader.read_batch(batch_lines, batch_bytes)
        if commit:
            self.committed.extend(batch.iter_lines())
            reader.commit(batch.end)
        return batch.lines

    @rule(lines=st.integers(0, 6), partial=st.booleans(), width=st.integers(30, 150))
    def append(self, lines: int, partial: bool, width: int) -> None:
        self.sim.append(lines, partial, width)

    def copy_pending(self) -> bool:
        return self.sim.copied is not None

    @rule()
    def same_tick(self) -> None:
        """The next write lands within the same tick of the clock as the last one."""
        self.sim.same_tick()

    @precondition(lambda self: not self.copy_pending())
    @rule(compress=COMPRESSION, delay=st.booleans(), reuse=REUSE)
    def rotate(self, compress: str | None, delay: bool, reuse: list[int]) -> None:
        self.sim.reuse = reuse
        if self.scheme == "numbered":
            self.sim.rotate_rename(compress, delay)
            self.renamed_last = not compress or delay
        else:
            self.sim.rotate_dateext(compress, hourly=self.scheme == "dateext-hourly")

    @precondition(lambda self: self.renamed_last and not self.copy_pending())
    @rule(lines=st.integers(1, 3))
    def late_write_to_renamed(self, lines: int) -> None:
        first = self.sim.dir / f"{self.sim.live.name}.1"
        # nginx writes whole lines: a renamed file ends in a newline unless nginx crashed.
        if first.exists() and first.read_bytes()[-1:] in (b"", b"\n"):
            self.sim.append_to(first, lines)

    @precondition(lambda self: self.renamed_last and not self.copy_pending())
    @rule(compress=COMPRESSION.filter(bool), reuse=REUSE)
    def compress_renamed_by_hand(self, compress: str, reuse: list[int]) -> None:
        """`gzip access.log.1`: late lines and all, while the position may be anywhere."""
        first = self.sim.dir / f"{self.sim.live.name}.1"
        if first.exists():
            self.sim.reuse = reuse
            self.sim.compress(first, compress)
            self.renamed_last = False

    @precondition(lambda self: self.scheme == "numbered" and not self.copy_pending())
    @rule(reuse=REUSE)
    def copytruncate(self, reuse: list[int]) -> None:
        """Copy and truncate with nothing in between (the usual, quick case)."""
        self.sim.reuse = reuse
        self.sim.rotate_copytruncate()
        self.renamed_last = False

    @precondition(lambda self: self.scheme == "numbered" and not self.copy_pending())
    @rule(reuse=REUSE)
    def copy_for_truncate(self, reuse: list[int]) -> None:
        """copytruncate's copy; its truncate comes later, maybe after reads and crashes."""
        self.sim.reuse = reuse
        self.sim.copy_for_truncate()
        self.renamed_last = False

    @precondition(lambda self: self.copy_pending())
    @rule()
    def truncate_after_copy(self) -> None:
        self.sim.truncate_after_copy()

    @precondition(lambda self: not self.copy_pending())
    @rule(reuse=REUSE)
    def delete_and_recreate_after_catch_up(self, reuse: list[int]) -> None:
        self.catch_up()
        self.sim.reuse = reuse
        self.sim.delete_and_recreate()
        self.renamed_last = False

    @rule(batch_lines=st.integers(1, 7), batch_bytes=st.integers(1, 400))
    def read_and_commit(self, batch_lines: int, batch_bytes: int) -> None:
        self._take(batch_lines, batch_bytes, commit=True)

    @rule(batch_lines=st.integers(1, 7), batch_bytes=st.integers(1, 400))
    def read_then_crash(self, batch_lines: int, batch_bytes: int) -> None:
        self._take(batch_lines, batch_bytes, commit=False)

    @rule()
    def catch_up(self) -> None:
        for _ in range(10_000):
            if self._take(50, 1 << 20, commit=True) == 0:
                break
        if self.sim.reused:  # how often the search checks a history with inode reuse
            event("caught up after a file took a freed inode")
        # Every complete line so far is committed once, and nothing else; copytruncate may
        # lose the lines written between its copy and its truncate (but never doubles them).
        sim = self.sim
        maybe = sim.window | set(
            sim.expected[len(sim.expected) if sim.copied is None else sim.copied :]
        )
        assert sorted(c for c in self.committed if c not in maybe) == sorted(
            e for e in self.sim.expected if e not in maybe
        )

    @invariant()
    def never_twice(self) -> None:
        assert len(set(self.committed)) == len(self.committed), "a line was committed twice"

    @invariant()
    def only_written_lines(self) -> None:
        written = set(self.sim.expected)
        stray = [line for line in self.committed if line not in written]
        assert not stray, f"committed lines never written (cut or merged): {stray[:3]}"


# How many examples: the hypothesis profile (tests/conftest.py; HYPOTHESIS_PROFILE=ci for more).
ReaderMachine.TestCase.settings = settings(stateful_step_count=40)
TestReaderProperties = ReaderMachine.TestCase


def test_logsim_gives_a_created_file_the_inode_of_a_deleted_one_when_told(tmp_path: Path) -> None:
    """The model of inode reuse the property test relies on: a compressed generation's freed
    inode goes to the next live file when `reuse` says so, and to no file otherwise."""
    sim = LogSim(tmp_path, freed=tmp_path / "freed", clock=True)
    sim.append(2)
    freed = sim.live.stat().st_ino
    sim.rotate_rename(".gz", delay=False)  # the generation's inode is freed by compression
    assert sim.live.stat().st_ino != freed
    sim.reuse = [1]
    sim.rotate_rename()
    assert sim.live.stat().st_ino == freed and sim.live.read_bytes() == b""
    mtimes = [p.stat().st_mtime_ns for p in (sim.live, tmp_path / "access.log.2.gz")]
    assert mtimes[0] > mtimes[1]  # the logical clock: later writes, later mtimes
