"""Matomo down for 100 ticks while the log grows, then back: the backlog goes in, in order.

Runs the service's unit of work (Source.run_pass, one per tick) in this process so memory can
be measured with tracemalloc across the failing ticks; the importer is the double, unreachable.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from matomo_rt import config as config_mod
from matomo_rt.loghealth import MAX_BACKOFF_SECONDS
from matomo_rt.pipeline import open_sources
from tests.faults.harness import Rig

pytestmark = pytest.mark.e2e

BATCH = 50
TICKS = 100
PER_TICK = 10


def test_matomo_down_100_ticks_then_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result
) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH)
    for key, value in rig.env().items():
        if key.startswith(("IMPORT_DOUBLE_", "MATOMO_TOKEN")):
            monkeypatch.setenv(key, value)
    config = config_mod.load(rig.config)
    (source,) = open_sources(config)
    rig.set_control({"fail": "unreachable"})
    source.open()
    try:
        tracemalloc.start()
        sizes = []
        for tick in range(TICKS):
            rig.write_hits(PER_TICK)
            report = source.run_pass()
            assert report.error is not None and report.committed_lines == 0
            assert source.retry_at - source.clock() <= MAX_BACKOFF_SECONDS
            if tick in (9, TICKS - 1):
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
        growth = sizes[1] - sizes[0]
        tracemalloc.stop()
        assert growth < 1 << 20, f"memory grew {growth} bytes over {TICKS - 10} failed ticks"
        assert rig.recorded() == []
        assert source.stats["failed_batches"] == TICKS
        rig.set_control(None)
        passes = 0
        while True:
            report = source.run_pass()
            passes += 1
            assert report.error is None, report.error
            if report.caught_up:
                break
    finally:
        source.close()
    assert rig.recorded() == rig.written  # all of it, once, in order
    result(
        f"Matomo down for {TICKS} ticks while the log grows, then back",
        iterations=TICKS,
        written=len(rig.written),
        lost=0,
        duplicated=0,
        bound="0",
        notes=f"caught up in {passes} pass(es); heap growth over {TICKS - 10} failed ticks"
        f" {growth // 1024} KiB; retry delay capped at {MAX_BACKOFF_SECONDS:.0f} s",
    )
