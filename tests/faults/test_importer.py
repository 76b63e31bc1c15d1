"""import_logs.py failing in each way DESIGN §3/§4 names, through `matomo-rt import`.

Each case: a first run under the fault (exit code, error line, what was committed), then the
fault is cleared and a second run catches up; lost and duplicated are counted over both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import Rig, hit, one_line_error

pytestmark = pytest.mark.e2e

BATCH = 50
LINES = 200
#: Small bulk POSTs (10 requests), so a batch is several POSTs and --skip=N lands mid-batch.
POSTS = ("--recorder-max-payload-size=10",)
CRASHER = Path(__file__).with_name("crashing_import_logs.py")


def _caught_up(rig: Rig) -> tuple[int, int]:
    done = rig.run()
    assert done.returncode == 0, done.stderr
    return rig.tally()


def test_exits_1_before_sending(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH, flags=POSTS)
    rig.write_hits(LINES)
    rig.set_control({"fail": "unreachable"})
    first = rig.run()
    assert first.returncode == 1, first.stderr
    errors = one_line_error(first.stderr)
    assert errors and any("Connection refused" in e or "failed" in e for e in errors), errors
    assert rig.recorded() == [] and rig.committed_offset() == 0
    rig.set_control(None)
    lost, dups = _caught_up(rig)
    assert (lost, dups) == (0, 0)
    assert rig.recorded() == rig.written  # in order
    result(
        "importer exits 1 before sending (Matomo unreachable)",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
    )


def test_fatal_with_skip_mid_batch(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH, flags=POSTS)
    rig.write_hits(LINES)
    rig.set_control({"fail": {"fatal_after_lines": 25}})
    first = rig.run()
    assert first.returncode == 1, first.stderr
    one_line_error(first.stderr)
    # Line numbers count per importer run: in the first batch the POST of lines 20-29
    # failed, --skip=20: exactly lines 0..19 are held and committed.
    assert rig.recorded() == rig.written[:20]
    assert rig.stats()["lines_read"] == 20
    assert rig.committed_offset() == sum(len(x) for x in rig.written[:20])
    rig.set_control(None)
    lost, dups = _caught_up(rig)
    assert (lost, dups) == (0, 0)
    assert rig.recorded() == rig.written
    result(
        "importer fatal error with --skip=N mid-batch",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0 (N is exact)",
    )


def test_hang_times_out(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH, flags=POSTS, timeout="2s")
    rig.write_hits(LINES)
    rig.set_control({"fail": {"hang_after_lines": 25}})
    first = rig.run(timeout=60)
    assert first.returncode == 1, first.stderr
    errors = one_line_error(first.stderr)
    assert any("timed out" in e for e in errors), errors
    stats = rig.stats()
    assert stats.get("lines_read", 0) == 0 and stats["uncertain_batches"] == 1
    assert len(rig.recorded()) == 25  # POSTs 0-19 and half of the one in flight
    rig.wait_importers_gone()
    rig.set_control(None)
    lost, dups = _caught_up(rig)
    assert lost == 0 and dups == 25 <= BATCH  # the uncertain batch was sent again
    result(
        "importer hangs (timeout), on_uncertain = resend",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound=f"<= 1 batch ({BATCH})",
    )


def test_refuses_every_hit(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH, flags=POSTS)
    rig.write_hits(LINES)
    rig.set_control({"fail": "refuse_all"})
    first = rig.run()
    assert first.returncode == 1, first.stderr
    errors = one_line_error(first.stderr)
    assert any("refused all" in e for e in errors), errors
    assert rig.committed_offset() == 0
    rig.set_control(None)
    lost, dups = _caught_up(rig)
    assert (lost, dups) == (0, 0)
    result(
        "Matomo refuses every hit (token without write access)",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
    )


def test_bad_token_pauses(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH, flags=POSTS)
    rig.write_hits(LINES)
    rig.set_control({"valid_tokens": ["good-token"]})
    rig.token = "bad-token"
    first = rig.run()
    assert first.returncode == 77, first.stderr
    errors = one_line_error(first.stderr)
    assert any("token" in e for e in errors), errors
    assert "bad-token" not in first.stderr
    assert rig.committed_offset() == 0
    calls = len(rig.calls())
    again = rig.run()  # the same token: Matomo is not called again (failed-login blocking)
    assert again.returncode == 77 and len(rig.calls()) == calls, again.stderr
    rig.token = "good-token"  # a new token lifts the pause
    lost, dups = _caught_up(rig)
    assert (lost, dups) == (0, 0)
    result(
        "bad token (HTTP 401): paused, no retry until the token changes",
        iterations=2,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
    )


def test_crash_on_a_line_the_guard_passes(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH, flags=POSTS, import_logs=CRASHER)
    rig.write_hits(120)
    poison = hit(0, tag="crash-here")
    rig.append([poison], keep=False)
    retries = 3
    for _ in range(retries):
        run = rig.run()
        assert run.returncode == 1, run.stderr
        errors = one_line_error(run.stderr)
        assert any("crashed" in e for e in errors), errors
    # Batches before the poison line's batch are committed; that batch is resent each time.
    assert rig.stats()["lines_read"] == 100
    lost, dups = rig.tally()
    assert lost == 0 and dups <= BATCH * retries, (lost, dups)
    assert poison not in rig.recorded()
    result(
        "importer crashes on a line the Guard passes (stuck batch, resent)",
        iterations=retries,
        written=len(rig.written) + 1,
        lost=lost,
        duplicated=dups,
        bound=f"<= 1 batch ({BATCH}) per retry",
        notes="the poison line blocks its batch until the operator acts (seek/quarantine)",
    )
