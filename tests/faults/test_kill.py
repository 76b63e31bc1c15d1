"""SIGKILL of `matomo-rt import` at seeded random points, then restarts until caught up.

Kill points (chosen per kill by random.Random(seed)):
  random     after a random delay (covers reading, guarding, importing, committing);
  early      within the first 0.3 s (start-up, lock, reading the first batch);
  after_end  right after the n-th importer run wrote its "end" line: between the importer's
             exit and the commit (or during the commit);
  state_tmp  as soon as a state temp file appears in the state directory: while writing state.
The delay is the random variable here, not a wait for something to happen.

Guarantees checked after every kill: the state file is valid (load_state), the importer died
with us; after the restart: every written line recorded, duplicates at most one batch per kill.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import LONG, Rig, budget, seed

pytestmark = pytest.mark.e2e

BATCH = 50
LINES = 2000 if LONG else 600
MODES = ("random", "early", "after_end", "state_tmp")


def _kill_at(rig: Rig, proc, mode: str, rng: random.Random) -> str:
    """Kill `proc` at the point `mode` names; returns where it actually happened."""
    if mode == "early":
        time.sleep(rng.uniform(0.0, 0.3))
    elif mode == "random":
        time.sleep(rng.uniform(0.0, 2.0))
    elif mode == "after_end":
        ends_before = sum(1 for c in rig.calls() if c.get("event") == "end")
        target = ends_before + rng.randint(1, 4)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            if sum(1 for c in rig.calls() if c.get("event") == "end") >= target:
                break
    elif mode == "state_tmp":
        deadline = time.monotonic() + 5
        found = False
        while proc.poll() is None and time.monotonic() < deadline and not found:
            found = any(n.endswith(".tmp") for n in os.listdir(rig.state_dir))
    if proc.poll() is not None:
        return "exited"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return mode


def test_sigkill_at_random_points(tmp_path: Path, result) -> None:
    time_budget = budget(40.0, 600.0)
    base_seed = seed()
    started = time.monotonic()
    iterations = kills = written = lost_total = dups_total = 0
    worst_dup_per_kill = 0
    hits: dict[str, int] = {}
    leftover_tmp = 0
    while time.monotonic() - started < time_budget or iterations < 3:
        rng = random.Random(base_seed + iterations)
        rig = Rig(tmp_path / f"it{iterations}", batch_lines=BATCH)
        rig.write_hits(LINES)
        kills_here = 0
        for _ in range(rng.randint(1, 3)):
            mode = rng.choice(MODES)
            proc = rig.popen()
            where = _kill_at(rig, proc, mode, rng)
            if where == "exited":
                assert proc.returncode == 0, (
                    f"seed {base_seed + iterations}: exit {proc.returncode}: "
                    f"{proc.stderr.read().decode(errors='replace')}"
                )
                break
            kills_here += 1
            hits[where] = hits.get(where, 0) + 1
            rig.wait_importers_gone()
            rig.state()  # never corrupt: raises StateError if it were
            leftover_tmp += sum(1 for n in os.listdir(rig.state_dir) if n.endswith(".tmp"))
            # Lines may be appended while we were down.
            rig.write_hits(rng.randint(0, 2 * BATCH))
        done = rig.run()
        assert done.returncode == 0, done.stderr
        assert not [n for n in os.listdir(rig.state_dir) if n.endswith(".tmp")]
        lost, dups = rig.tally()
        assert lost == 0, f"seed {base_seed + iterations}: {lost} lines lost"
        assert dups <= BATCH * kills_here, (
            f"seed {base_seed + iterations}: {dups} duplicates after {kills_here} kills"
        )
        if kills_here:
            worst_dup_per_kill = max(worst_dup_per_kill, -(-dups // kills_here))
        iterations += 1
        kills += kills_here
        written += len(rig.written)
        lost_total += lost
        dups_total += dups
        if iterations >= 3 and time.monotonic() - started >= time_budget:
            break
    result(
        "SIGKILL of matomo-rt at random points, then restart",
        iterations=iterations,
        kills=kills,
        written=written,
        lost=lost_total,
        duplicated=dups_total,
        bound=f"<= 1 batch ({BATCH} lines) per kill; worst seen {worst_dup_per_kill}",
        notes=f"kill points {dict(sorted(hits.items()))}; seed {base_seed};"
        f" state temp files left by kills {leftover_tmp} (removed by the next commit)",
    )
