"""Load: a large backlog while a writer appends 2,000 lines/s; caught up, peak RSS bounded.

CI: 200,000 lines of backlog and 10 s of writing; MATOMO_RT_FAULTS_LONG=1: 1,000,000 and 30 s.
Peak RSS is the kernel's VmHWM of each `matomo-rt import` process, polled until it exits.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.faults.harness import LONG, Rig, hit
from tests.faults.test_log import _watch_peak

pytestmark = pytest.mark.e2e

BACKLOG = 1_000_000 if LONG else 200_000
RATE = 2000
SECONDS = 30 if LONG else 10
RSS_BOUND_MIB = 256


def test_backlog_while_writing(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=10_000)
    rig.write_hits(BACKLOG, tag="backlog")
    written_live: list[bytes] = []

    def writer() -> None:
        step = RATE // 20
        start = time.monotonic()
        with open(rig.log, "ab", buffering=0) as f:
            for n in range(SECONDS * 20):
                lines = [hit(n * step + i, tag="live") for i in range(step)]
                f.write(b"".join(lines))
                written_live.extend(lines)
                # pacing of the load generator: 20 appends a second
                delay = start + (n + 1) / 20 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    thread = threading.Thread(target=writer)
    started = time.monotonic()
    thread.start()
    runs, peak = 0, 0
    first_pass = None
    while True:
        writing = thread.is_alive()
        proc = rig.popen()
        get_peak = _watch_peak(proc.pid)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        runs += 1
        peak = max(peak, get_peak())
        if first_pass is None:
            first_pass = time.monotonic() - started
        if not writing:
            break
    elapsed = time.monotonic() - started
    thread.join()
    rig.written.extend(written_live)
    lost, dups = rig.tally()
    assert (lost, dups) == (0, 0)
    assert rig.recorded() == rig.written  # in order
    assert peak < RSS_BOUND_MIB * 1024, f"peak RSS {peak} KiB"
    result(
        f"load: {BACKLOG:,} line backlog + {RATE:,} lines/s for {SECONDS} s",
        iterations=runs,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
        notes=f"peak RSS {peak / 1024:.0f} MiB (bound {RSS_BOUND_MIB} MiB); first pass (backlog and"
        f" what was written meanwhile) {first_pass:.1f} s; {runs} passes, {elapsed:.1f} s",
    )
