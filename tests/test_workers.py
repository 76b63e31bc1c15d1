"""K importers side by side on one batch, committed per partition (matomo_rt.workers).

Against the import_logs.py double, as real processes: one worker fails with `--skip=N`, hangs
until its timeout, or is refused by Matomo, while the others finish; Matomo is down and back.
After each, the next pass sends only what the failed partition lacks: nothing lost, and
duplicates only from a run killed in flight. The record file is what Matomo holds.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from typing import Any

import pytest

from matomo_rt.commands import run_seek
from matomo_rt.config import Config
from matomo_rt.matomo import importer
from matomo_rt.partition import json_ip, split
from matomo_rt.pipeline import open_sources
from matomo_rt.store import StateError
from tests.test_pipeline import (
    Rig,
    disk_full_after_the_batch_went_out,
    lines_of,
    make_rig,
    one_pass,
)

SMALL_POSTS = ("--enable-http-errors", "--enable-http-redirects", "--recorder-max-payload-size=2")


@pytest.fixture
def rig(tmp_path, monkeypatch) -> Rig:
    return make_rig(tmp_path, monkeypatch)


def partitions(data: list[bytes], k: int) -> list[list[bytes]]:
    """The lines each of k workers gets (the test log has no line the Guard changes)."""
    return [[data[i] for i in part] for part in split(data, k, json_ip)]


def path_of(line: bytes) -> str:
    return json.loads(line)["path"]


def tally(written: list[bytes], recorded: list[bytes]) -> tuple[int, int]:
    want, got = Counter(written), Counter(recorded)
    assert set(got) <= set(want), "recorded a line never written"
    lost = sum(max(n - got[x], 0) for x, n in want.items())
    dups = sum(max(n - want[x], 0) for x, n in got.items())
    return lost, dups


def in_visitor_order(recorded: list[bytes]) -> bool:
    """Each visitor's hits were recorded in the order of the log."""
    by_ip: dict[str, list[int]] = defaultdict(list)
    for line in recorded:
        record = json.loads(line)
        by_ip[record["ip"]].append(int(record["path"].rsplit("/", 1)[1]))
    return all(seq == sorted(seq) for seq in by_ip.values())


def open_batch(rig: Rig) -> Any:
    return rig.state_doc().get("open_batch")


def state_format(rig: Rig) -> int:
    return rig.state_doc()["format"]


def one_worker_fails(rig: Rig, victim: int) -> tuple[Config, list[bytes], list[list[bytes]]]:
    """Two workers on 20 lines; worker `victim` fails at its 3rd line: the batch stays open."""
    config = rig.write_config(batch_lines=10, workers=2, flags=SMALL_POSTS)
    data = lines_of(0, 20)
    rig.append(data)
    parts = partitions(data, 2)
    rig.set_control(fatal_at_path=path_of(parts[victim][2]))
    assert one_pass(config).outcome == importer.PARTIAL
    return config, data, parts


@pytest.mark.parametrize("k", [2, 4])
def test_a_backlog_is_split_by_visitor_and_imported_once(rig: Rig, k: int) -> None:
    config = rig.write_config(batch_lines=10, workers=k)
    data = lines_of(0, 10 * k)  # one batch of k runs' worth
    rig.append(data)
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert report.batches == 1 and report.committed_lines == report.imported == len(data)
    assert len(rig.starts()) == k  # k importers
    assert all("--recorders=1" in c["argv"] for c in rig.starts())
    assert tally(data, rig.recorded()) == (0, 0)
    assert in_visitor_order(rig.recorded())
    assert rig.offset() == rig.log.stat().st_size
    assert open_batch(rig) is None and state_format(rig) == 1
    assert rig.stats()["worker_runs"] == {"success": k}
    assert rig.stats()["lines_read"] == len(data)


def test_a_small_batch_keeps_one_importer(rig: Rig) -> None:
    """A live log's few new lines: one run, not K start-ups."""
    config = rig.write_config(batch_lines=10, workers=4)
    data = lines_of(0, 7)
    rig.append(data)
    assert one_pass(config).outcome == importer.SUCCESS
    assert len(rig.starts()) == 1 and rig.recorded() == data


@pytest.mark.parametrize("k", [1, 2, 4])
def test_one_worker_fails_with_skip_and_the_retry_sends_only_its_rest(rig: Rig, k: int) -> None:
    config = rig.write_config(batch_lines=10, workers=k, flags=SMALL_POSTS)
    data = lines_of(0, 10 * k)
    rig.append(data)
    parts = partitions(data, k)
    victim = max(range(k), key=lambda p: len(parts[p]))
    # POSTs of 2: the one holding the victim's 4th and 5th line fails: --skip=4 there.
    rig.set_control(fatal_at_path=path_of(parts[victim][4]))
    report = one_pass(config)
    assert report.outcome == importer.PARTIAL and "HTTP Error 500" in (report.error or "")
    held = [x for p in range(k) if p != victim for x in parts[p]] + parts[victim][:4]
    assert sorted(rig.recorded()) == sorted(held)
    if k == 1:  # the unpartitioned path: the position moves past the 4 lines
        assert rig.offset() == len(b"".join(data[:4]))
    else:
        assert rig.offset() == 0  # the batch is open
        assert open_batch(rig)["done"][victim] == 4 and state_format(rig) == 2
        assert [d == s for d, s in zip(open_batch(rig)["done"], open_batch(rig)["sizes"])] == [
            p != victim for p in range(k)
        ]

    rig.clear_control()
    starts = len(rig.starts())
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert len(rig.starts()) == starts + 1  # only the victim's partition again
    ends = [c for c in rig.call_log() if c["event"] == "end"]
    assert ends[-1]["recorded"] == len(parts[victim]) - 4  # its rest, nothing else
    assert tally(data, rig.recorded()) == (0, 0)
    assert in_visitor_order(rig.recorded())
    assert rig.offset() == rig.log.stat().st_size
    assert open_batch(rig) is None and state_format(rig) == 1
    assert rig.stats()["lines_read"] == len(data)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("policy", ["resend", "skip"])
def test_one_worker_hangs_until_its_timeout(rig: Rig, k: int, policy: str) -> None:
    config = rig.write_config(
        batch_lines=10, workers=k, flags=SMALL_POSTS, timeout="2s", on_uncertain=policy
    )
    data = lines_of(0, 10 * k)
    rig.append(data)
    parts = partitions(data, k)
    victim = max(range(k), key=lambda p: len(parts[p]))
    rig.set_control(hang_at_path=path_of(parts[victim][3]))  # its 2nd POST: line 2 recorded
    report = one_pass(config)
    assert report.outcome == importer.UNCERTAIN and "timed out" in (report.error or "")
    assert report.uncertain == 1 and rig.stats()["uncertain_batches"] == 1
    # Nobody knows what Matomo holds of the hung share: under either policy it is not imported.
    assert rig.stats().get("imported", 0) == report.imported == len(data) - len(parts[victim])
    assert sorted(rig.recorded()) == sorted(
        [x for p in range(k) if p != victim for x in parts[p]] + parts[victim][:3]
    )
    rig.clear_control()
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    lost, dups = tally(data, rig.recorded())
    if policy == "resend":
        # Only the hung run's lines come twice: those it had sent before it hung.
        assert (lost, dups) == (0, 3)
        assert Counter(rig.recorded()) - Counter(data) == Counter(parts[victim][:3])
    else:
        # Nothing twice; what the hung run had not sent is missing (at most its partition).
        assert (lost, dups) == (len(parts[victim]) - 3, 0)
    assert rig.offset() == rig.log.stat().st_size and open_batch(rig) is None


@pytest.mark.parametrize("k", [2, 4])
def test_one_worker_refused_by_matomo(rig: Rig, k: int) -> None:
    config = rig.write_config(batch_lines=10, workers=k)
    data = lines_of(0, 10 * k)
    rig.append(data)
    parts = partitions(data, k)
    victim = 0
    rig.set_control(refuse_paths=[path_of(x) for x in parts[victim]])
    report = one_pass(config)
    assert report.outcome == importer.REFUSED and "write access" in (report.error or "")
    assert sorted(rig.recorded()) == sorted(x for p in range(1, k) for x in parts[p])
    assert open_batch(rig)["done"][victim] == 0
    assert rig.stats()["worker_runs"] == {"success": k - 1, "refused": 1}

    rig.clear_control()
    assert one_pass(config).outcome == importer.SUCCESS
    assert tally(data, rig.recorded()) == (0, 0)


@pytest.mark.parametrize("k", [2, 4])
def test_a_partition_matomo_refuses_names_the_way_past_its_batch(
    rig: Rig, k: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition Matomo refuses every time (requests older than it accepts) keeps its batch
    open forever: the error names the seek that ends that batch, as on the single path, and
    that seek works: the next pass imports only the lines written after the batch."""
    config = rig.write_config(batch_lines=10, workers=k)
    data = lines_of(0, 10 * k)
    rig.append(data)
    parts = partitions(data, k)
    rig.set_control(refuse_paths=[path_of(x) for x in parts[0]])
    with caplog.at_level(logging.ERROR):
        report = one_pass(config)
    assert report.outcome == importer.REFUSED and open_batch(rig)["done"][0] == 0
    end = len(b"".join(data))
    hint = f"matomo-rt seek --log web --to {end}"
    assert hint in (report.error or "") and hint in caplog.text
    caplog.clear()
    assert "older than Matomo accepts" in (report.error or "")
    assert rig.stats()["last_error"]["reason"] == report.error
    before = rig.recorded()

    later = lines_of(10 * k, 10 * k + 5)
    rig.append(later)
    with caplog.at_level(logging.WARNING):
        assert run_seek(config, "web", str(end)) == 0
    assert f"{len(parts[0])} of its requests are not in Matomo" in caplog.text
    assert open_batch(rig) is None
    rig.clear_control()
    assert one_pass(config).caught_up
    assert rig.recorded() == before + later


@pytest.mark.parametrize("k", [2, 4])
def test_matomo_down_then_back(rig: Rig, k: int) -> None:
    """Down: every run fails before sending; nothing held, no batch left open. After that
    failure one importer tries first, so a Matomo that is still down sees one run."""
    config = rig.write_config(batch_lines=10, workers=k)
    data = lines_of(0, 10 * k)
    rig.append(data)
    rig.set_control(fail="unreachable")
    report = one_pass(config)
    assert report.outcome == importer.FAILED and "Connection refused" in (report.error or "")
    assert len(rig.starts()) == k and rig.recorded() == []
    assert rig.offset() == 0 and open_batch(rig) is None

    report = one_pass(config)  # still down: one careful run
    assert report.outcome == importer.FAILED and len(rig.starts()) == k + 1

    rig.clear_control()
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert len(rig.starts()) == 2 * k + 1  # the careful one, then the rest side by side
    assert tally(data, rig.recorded()) == (0, 0)
    assert rig.offset() == rig.log.stat().st_size


def test_the_workers_of_an_open_batch_do_not_change(rig: Rig, caplog) -> None:
    config, data, _ = one_worker_fails(rig, victim=1)
    assert open_batch(rig)["workers"] == 2

    rig.clear_control()
    more = lines_of(20, 60)
    rig.append(more)
    config = rig.write_config(batch_lines=10, workers=4, flags=SMALL_POSTS)
    with caplog.at_level(logging.INFO, logger="matomo_rt.workers"):
        report = one_pass(config)
    assert "with the 2 workers it was started with" in caplog.text
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert tally(data + more, rig.recorded()) == (0, 0)
    # The open batch's rest (1 run), then the new lines with 4 workers.
    assert len(rig.starts()) == 2 + 1 + 4


def test_an_open_batch_whose_lines_changed_is_imported_again_and_said(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry must find the same bytes; if the file was replaced under it, the finished
    partitions cannot be told apart: everything is sent again, counted as uncertain."""
    config, data, _ = one_worker_fails(rig, victim=0)
    before = len(rig.recorded())
    doc = rig.state_doc()
    doc["open_batch"]["digest"] = "0" * 64  # as if other bytes were there now
    (rig.state / "web.state.json").write_text(json.dumps(doc))

    rig.clear_control()
    with caplog.at_level(logging.WARNING):
        report = one_pass(config)
    assert "cannot be read again as it was" in caplog.text
    assert report.outcome == importer.SUCCESS and report.uncertain == 1
    lost, dups = tally(data, rig.recorded())
    assert lost == 0 and dups == before
    assert rig.stats()["uncertain_batches"] == 1 and open_batch(rig) is None


def test_a_damaged_open_batch_is_a_loud_error(rig: Rig) -> None:
    config = rig.write_config(batch_lines=10, workers=2)
    rig.append(lines_of(0, 5))
    assert one_pass(config).outcome == importer.SUCCESS
    doc = rig.state_doc()
    doc["open_batch"] = {"version": 1, "workers": 2, "lines": "ten"}
    doc["format"] = 2
    (rig.state / "web.state.json").write_text(json.dumps(doc))
    with pytest.raises(StateError, match="open batch in the state file is damaged"):
        one_pass(config)


def test_a_state_without_an_open_batch_from_the_previous_version_loads(rig: Rig) -> None:
    """Version 1 state (no open_batch key, format 1) resumes with K workers."""
    config = rig.write_config(batch_lines=10, workers=1)
    data = lines_of(0, 5)
    rig.append(data)
    assert one_pass(config).outcome == importer.SUCCESS
    doc = rig.state_doc()
    assert doc["format"] == 1 and "open_batch" not in doc
    more = lines_of(5, 45)
    rig.append(more)
    config = rig.write_config(batch_lines=10, workers=4)
    assert one_pass(config).caught_up
    assert tally(data + more, rig.recorded()) == (0, 0)


def test_status_and_metrics_show_worker_outcomes_and_the_open_batch(rig: Rig) -> None:
    from matomo_rt import status
    from tests.test_metrics import exposition, log_sample

    config, _, parts = one_worker_fails(rig, victim=1)

    [entry] = status.collect(config)["logs"]
    assert entry["worker_runs"] == {"success": 1, "partial": 1}
    pending = len(parts[1]) - 2
    assert entry["open_batch"] == {
        "workers": 2,
        "lines": 20,
        "partitions_done": 1,
        "requests_done": len(parts[0]) + 2,
        "requests": 20,
    }
    text = status.render_text(status.collect(config))
    assert re.search(r"worker runs +1 partial, 1 success\n", text)
    assert f"1 done, {len(parts[0]) + 2} of 20 requests in Matomo" in text
    metrics = exposition(config, ("web",))
    assert log_sample(metrics, "matomo_rt_worker_runs_total", "web", outcome="partial") == 1
    assert log_sample(metrics, "matomo_rt_open_batch_pending_requests", "web") == pending

    rig.clear_control()
    assert one_pass(config).caught_up
    [entry] = status.collect(config)["logs"]
    assert entry["open_batch"] is None
    assert entry["worker_runs"] == {"success": 2, "partial": 1}
    metrics = exposition(config, ("web",))
    assert log_sample(metrics, "matomo_rt_open_batch_pending_requests", "web") == 0


def test_outcomes_the_disk_refused_are_kept_and_never_sent_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state write fails (disk full) as the first worker ends: the other worker's outcome
    is still taken into memory, nothing more is imported until it is saved, nothing twice."""

    config = rig.write_config(batch_lines=10, workers=2, flags=SMALL_POSTS)
    data = lines_of(0, 20)
    rig.append(data)
    parts = partitions(data, 2)
    rig.set_control(fatal_at_path=path_of(parts[1][4]))  # the batch stays open
    failing = disk_full_after_the_batch_went_out(monkeypatch)
    (source,) = open_sources(config)
    with source:
        with pytest.raises(StateError):
            source.run_pass()
        assert len(rig.starts()) == 2
        report = source.run_pass()  # still failing: no import at all
        assert report.error and "no import until" in report.error and len(rig.starts()) == 2
        failing[0] = False
        rig.clear_control()
        assert source.run_pass().caught_up
    assert tally(data, rig.recorded()) == (0, 0)
    assert len(rig.starts()) == 3  # the failed worker's rest only


def test_seek_leaves_no_open_batch_behind(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """`seek` moves past an open batch for good: what comes after is imported once, as new
    lines, not mistaken for the batch's retry ("may be counted twice", an uncertain batch)."""
    config, data, _ = one_worker_fails(rig, victim=0)
    assert open_batch(rig) is not None
    before = rig.recorded()

    with caplog.at_level(logging.WARNING):
        assert run_seek(config, "web", "end") == 0
    assert open_batch(rig) is None and state_format(rig) == 1
    assert "left behind" in caplog.text  # what seek abandons is said

    later = lines_of(20, 40)
    rig.append(later)
    rig.clear_control()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = one_pass(config)
    assert "counted twice" not in caplog.text and "cannot be read again" not in caplog.text
    assert report.outcome == importer.SUCCESS and report.uncertain == 0 and report.caught_up
    assert rig.recorded()[len(before) :] and tally(data + later, rig.recorded())[1] == 0
    assert sorted(rig.recorded()[len(before) :]) == sorted(later)
    assert rig.stats().get("uncertain_batches", 0) == 0
