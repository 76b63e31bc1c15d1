"""The fault suite with `import.workers` = 1, 2 and 4: K importers per batch, committed per
partition.

- SIGKILL of `matomo-rt import` at seeded random points (while K importers run, right after one
  of them ended, while the state is written), then restarts until caught up;
- seeded random faults per pass: one worker's POST fails (`--skip=N`), one hangs until its
  timeout, Matomo refuses one worker's requests, Matomo is down;
- Matomo down for a while as the log grows, then back.

Nothing may be lost; duplicates come only from runs killed in flight (a kill, a timeout), at
most one batch (K x batch_lines) per such event; each visitor's hits stay in the log's order.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest

from matomo_rt import config as config_mod
from matomo_rt.matomo import importer
from matomo_rt.pipeline import open_sources
from tests.faults.harness import LONG, Rig, budget, hit, seed

pytestmark = pytest.mark.e2e

BATCH = 25
LINES = 1500 if LONG else 300
KS = (1, 2, 4)


def hits(rig: Rig, count: int) -> list[bytes]:
    """`count` new lines from 60 visitors, each line unique."""
    start = len(rig.written)
    lines = [hit(i, ip=f"203.0.113.{i % 60}") for i in range(start, start + count)]
    rig.append(lines)
    return lines


def make_rig(path: Path, k: int, **kwargs) -> Rig:
    return Rig(path, batch_lines=BATCH, extra=f"workers = {k}", **kwargs)


def visitor_order_kept(recorded: list[bytes]) -> bool:
    """Each visitor's first copies of its hits arrived in the log's order."""
    seen: set[bytes] = set()
    by_ip: dict[str, list[int]] = defaultdict(list)
    for line in recorded:
        if line in seen:
            continue
        seen.add(line)
        record = json.loads(line)
        by_ip[record["ip"]].append(int(record["path"].rsplit("/", 1)[1]))
    return all(seq == sorted(seq) for seq in by_ip.values())


@pytest.mark.parametrize("k", KS)
def test_sigkill_with_workers_at_random_points(tmp_path: Path, result, k: int) -> None:
    time_budget = budget(12.0, 200.0)
    base_seed = seed() + 1000 * k
    started = time.monotonic()
    iterations = kills = lost_total = dups_total = worst = 0
    written = 0
    while iterations < 2 or time.monotonic() - started < time_budget:
        rng = random.Random(base_seed + iterations)
        rig = make_rig(tmp_path / f"it{iterations}", k)
        hits(rig, LINES)

        def after_kill(rig: Rig = rig, rng: random.Random = rng) -> None:
            rig.state()  # never damaged
            hits(rig, rng.randint(0, 2 * BATCH))

        modes = ("random", "after_end", "state_tmp")
        kills_here = len(
            rig.kill_rounds(rng.randint(1, 3), rng, modes, after_kill=after_kill, ends=6)
        )
        done = rig.run()
        assert done.returncode == 0, done.stderr
        lost, dups = rig.tally()
        assert lost == 0, f"seed {base_seed + iterations}: {lost} lines lost"
        assert dups <= k * BATCH * kills_here, (
            f"seed {base_seed + iterations}: {dups} duplicates after {kills_here} kills"
        )
        assert visitor_order_kept(rig.recorded())
        assert (rig.state() or {}).get("open_batch") is None
        if kills_here:
            worst = max(worst, -(-dups // kills_here))
        iterations += 1
        kills += kills_here
        written += len(rig.written)
        lost_total += lost
        dups_total += dups
    result(
        f"workers = {k}: SIGKILL of matomo-rt at random points, then restart",
        iterations=iterations,
        written=written,
        lost=lost_total,
        duplicated=dups_total,
        bound=f"<= 1 batch ({k} x {BATCH} lines) per kill; worst seen {worst}",
        notes=f"{kills} kills; seed {base_seed}",
    )


FAULTS = ("fatal", "hang", "refuse", "down")


@pytest.mark.parametrize("k", KS)
def test_random_worker_faults_per_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result, k: int
) -> None:
    """Each pass (one batch), a fault: a random request of what is left fails or hangs (so a
    random worker does), Matomo refuses every request, or is down; then the next pass.
    Duplicates only from the hung runs: at most what each had sent. Passes run in this process
    (the service's unit of work); the importers are real processes."""
    rng = random.Random(seed() + 7 * k)
    rig = make_rig(tmp_path, k, timeout="1s", flags=("--recorder-max-payload-size=5",))
    for key, value in rig.env().items():
        if key.startswith(("IMPORT_DOUBLE_", "MATOMO_TOKEN")):
            monkeypatch.setenv(key, value)
    hits(rig, 6 * k * BATCH)
    seen: dict[str, int] = dict.fromkeys(FAULTS, 0)
    hung_recorded = 0
    (source,) = open_sources(config_mod.load(rig.config))
    with source:
        for _ in range(40 if LONG else 12):
            held = set(rig.recorded())
            pending = [line for line in rig.written if line not in held]
            if not pending:
                break
            fault = rng.choice(FAULTS)
            victim = json.loads(rng.choice(pending))["path"]
            rig.set_control(
                {
                    "fatal": {"fatal_at_path": victim},
                    "hang": {"hang_at_path": victim},
                    "refuse": {"fail": "refuse_all"},
                    "down": {"fail": "unreachable"},
                }[fault]
            )
            before = len(rig.recorded())
            report = source.run_pass(max_batches=1)
            if report.outcome == importer.UNCERTAIN:
                hung_recorded += len(rig.recorded()) - before  # more than the hung run sent
            seen[fault] += 1
            if rng.random() < 0.3:
                hits(rig, rng.randint(1, k * BATCH))
        rig.set_control(None)
        while not source.run_pass().caught_up:
            pass
    lost, dups = rig.tally()
    assert lost == 0
    assert dups <= hung_recorded
    assert visitor_order_kept(rig.recorded())
    assert (rig.state() or {}).get("open_batch") is None
    result(
        f"workers = {k}: random per-pass faults (one worker's POST fails or hangs; Matomo"
        " refuses every request, or is down)",
        iterations=sum(seen.values()),
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0 lost; dup <= what the hung runs had sent",
        notes=f"faults {seen}; seed {seed() + 7 * k}",
    )


@pytest.mark.parametrize("k", KS)
def test_matomo_down_then_back_with_workers(tmp_path: Path, result, k: int) -> None:
    rig = make_rig(tmp_path, k)
    rig.set_control({"fail": "unreachable"})
    for _ in range(5):
        hits(rig, k * BATCH)
        done = rig.run()
        assert done.returncode == 1 and "Connection refused" in done.stderr
    assert rig.recorded() == []
    rig.set_control(None)
    done = rig.run()
    assert done.returncode == 0, done.stderr
    assert rig.tally() == (0, 0)
    assert visitor_order_kept(rig.recorded())
    result(
        f"workers = {k}: Matomo down for 5 runs while the log grows, then back",
        iterations=5,
        written=len(rig.written),
        lost=0,
        duplicated=0,
        bound="0",
    )
