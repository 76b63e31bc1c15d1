"""SIGKILL of `matomo-rt import-files` at seeded random points over plain and compressed files,
re-run until it finishes: every line recorded, duplicates at most one batch per kill (the batch
in flight, which Matomo may have committed), and a further run imports nothing.

Kill points (random.Random(seed) per iteration): `random` (a delay: surveying, reading,
importing, committing), `after_end` (right after the n-th importer run ended: between its exit
and the commit), `state_tmp` (while a state file is being written).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
import time
from pathlib import Path

import pytest

from matomo_rt.store import load_state
from tests.faults.harness import LONG, Rig, budget, hit, seed, tally

pytestmark = pytest.mark.e2e

BATCH = 40
LINES_PER_FILE = 400 if LONG else 150
MODES = ("random", "after_end", "state_tmp")
OPENERS = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _history(rig: Rig, rng: random.Random) -> tuple[list[Path], list[bytes]]:
    """Four to seven closed files, each compressed one way or not, with unique lines."""
    directory = rig.tmp / "history"
    directory.mkdir()
    files, written = [], []
    for n in range(rng.randint(4, 7)):
        suffix = rng.choice(list(OPENERS))
        lines = [hit(i, f"f{n}") for i in range(rng.randint(LINES_PER_FILE // 2, LINES_PER_FILE))]
        path = directory / f"site.log.{n}{suffix}"
        with OPENERS[suffix](path, "wb") as fh:
            fh.write(b"".join(lines))
        os.utime(path, (1_000_000 - n, 1_000_000 - n))  # .6 oldest ... .0 newest
        files.append(path)
        written += lines
    return files, written


def _states_valid(rig: Rig) -> None:
    for name in os.listdir(rig.state_dir):
        if name.startswith("history-") and name.endswith(".state.json"):
            load_state(rig.state_dir / name)  # raises StateError if damaged


def test_import_files_killed_at_random_points(tmp_path: Path, result) -> None:
    time_budget = budget(45.0, 600.0)
    base_seed = seed()
    started = time.monotonic()
    iterations = kills = written_total = dups_total = lost_total = 0
    hits: dict[str, int] = {}
    while iterations < 3 or time.monotonic() - started < time_budget:
        rng = random.Random(base_seed + iterations)
        rig = Rig(tmp_path / f"it{iterations}", batch_lines=BATCH)
        files, written = _history(rig, rng)
        args = ("import-files", *map(str, files))
        kills_here = 0
        for _ in range(20):
            proc = rig.popen(*args)
            where = rig.kill_at(proc, rng.choice(MODES), rng, patience=2.0)
            if where == "exited":
                assert proc.returncode == 0, proc.stderr.read().decode(errors="replace")
                break
            kills_here += 1
            hits[where] = hits.get(where, 0) + 1
            rig.wait_importers_gone()
            _states_valid(rig)
        done = rig.run(*args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("already imported") == len(files), done.stdout
        lost, dups = tally(written, rig.recorded())
        assert lost == 0, f"seed {base_seed + iterations}: {lost} lines lost"
        assert dups <= BATCH * kills_here, f"seed {base_seed + iterations}: {dups} duplicates"
        before = len(rig.recorded())
        again = rig.run(*args)
        assert again.returncode == 0 and len(rig.recorded()) == before
        iterations += 1
        kills += kills_here
        written_total += len(written)
        lost_total += lost
        dups_total += dups
    result(
        "SIGKILL of import-files (plain, .gz, .bz2, .xz) at random points, then re-run",
        iterations=iterations,
        kills=kills,
        written=written_total,
        lost=lost_total,
        duplicated=dups_total,
        bound=f"<= 1 batch ({BATCH} lines) per kill; a further run imports nothing",
        notes=f"kill points {dict(sorted(hits.items()))}; seed {base_seed}",
    )
