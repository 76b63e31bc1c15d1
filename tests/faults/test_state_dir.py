"""The state directory full (a small tmpfs mounted by the test) or read-only.

Needs root (mount); skipped with the reason otherwise. Checks: a clear one-line error naming
the state file or directory, the previous state file intact, and recovery once space returns.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.faults.harness import Rig, one_line_error

pytestmark = pytest.mark.e2e

BATCH = 50


def _mount_tmpfs(directory: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _umount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Fill the file system until ENOSPC; returns the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def test_state_dir_full(tmp_path: Path, result) -> None:
    state = tmp_path / "state"
    _mount_tmpfs(state, "256k")
    try:
        rig = Rig(tmp_path, batch_lines=BATCH, state_dir=state)
        rig.write_hits(120)
        assert rig.run().returncode == 0
        before = rig.state_file.read_bytes()
        rig.write_hits(120)
        filler = _fill(state)
        full = rig.run()
        assert full.returncode == 73, full.stderr
        errors = one_line_error(full.stderr)
        assert len(errors) == 1, errors
        assert str(rig.state_file) in errors[0] and "disk full" in errors[0], errors
        assert rig.state_file.read_bytes() == before  # intact, still the last commit
        assert not [n for n in os.listdir(state) if n.endswith(".tmp")]
        filler.unlink()
        again = rig.run()
        assert again.returncode == 0, again.stderr
        lost, dups = rig.tally()
        # The batch imported before the commit failed is sent again: one batch at most.
        assert lost == 0 and dups <= BATCH, (lost, dups)
    finally:
        _umount(state)
    result(
        "state directory full (tmpfs), then space returns",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound=f"<= 1 batch ({BATCH})",
        notes=errors[0].split(": ERROR: ", 1)[1],
    )


def test_state_dir_read_only(tmp_path: Path, result) -> None:
    state = tmp_path / "state"
    _mount_tmpfs(state, "1m")
    try:
        rig = Rig(tmp_path, batch_lines=BATCH, state_dir=state)
        rig.write_hits(120)
        assert rig.run().returncode == 0
        before = rig.state_file.read_bytes()
        rig.write_hits(120)
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        ro = rig.run()
        assert ro.returncode == 73, ro.stderr
        errors = one_line_error(ro.stderr)
        assert len(errors) == 1 and "Read-only file system" in errors[0], errors
        assert rig.state_file.read_bytes() == before
        subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
        again = rig.run()
        assert again.returncode == 0, again.stderr
        lost, dups = rig.tally()
        assert lost == 0 and dups <= BATCH, (lost, dups)
    finally:
        _umount(state)
    result(
        "state directory read-only, then writable again",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound=f"<= 1 batch ({BATCH})",
        notes=errors[0].split(": ERROR: ", 1)[1],
    )
