"""Metrics from the service's memory: prometheus_client's exposition of each Source's
statistics, health and backoff and of the last core:archive run; the atomic textfile; the
/metrics endpoint."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from matomo_rt import health, metrics
from matomo_rt.config import Config
from matomo_rt.health import ArchiveFacts
from matomo_rt.pipeline import Source
from tests.test_status import NOW, commit_lines, make_config


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def exposition(
    config: Config, names: tuple[str, ...], archive: Optional[ArchiveFacts] = None
) -> str:
    sources = [Source(config, config.log(n), token="tok", clock=lambda: NOW) for n in names]
    for source in sources:
        source.open()
    try:
        collector = metrics.ServiceCollector(
            lambda: sources,
            lambda: archive or ArchiveFacts(True),
            lambda: config.health,
            clock=lambda: NOW,
        )
        return metrics.render(metrics.registry(collector))
    finally:
        for source in sources:
            source.close()


def log_sample(text: str, name: str, log: str = "access", **labels: str) -> Any:
    key = (name, tuple(sorted({"log": log, **labels}.items())))
    return samples(text).get(key)


def test_the_promised_metrics_with_their_types_from_memory(tmp_path: Path) -> None:
    config = make_config(tmp_path, names=("access", "other"))
    error = {"time": NOW - 5, "outcome": "failed", "reason": "x"}
    stats = {
        "lines_read": 2,
        "imported": 2,
        "refused": 1,
        "unmatched": 3,
        "last_success": NOW - 10,
        "last_error": error,
        "last_import_duration": 1.25,
    }
    commit_lines(config, "access", 2, stats)
    commit_lines(config, "other", 1, {"last_success": NOW - 10})
    archive = ArchiveFacts(
        True,
        runs=3,
        failures=1,
        last_outcome="success",
        last_end=NOW - 120,
        last_success=NOW - 120,
        last_duration=10.0,
    )
    text = exposition(config, ("access", "other"), archive)
    kinds = types(text)
    for name in (
        "matomo_rt_lines_read",
        "matomo_rt_imported",
        "matomo_rt_ignored",
        "matomo_rt_quarantined",
        "matomo_rt_refused",
        "matomo_rt_unmatched",
        "matomo_rt_failed_batches",
        "matomo_rt_uncertain_batches",
        "matomo_rt_archive_runs",
        "matomo_rt_archive_failures",
    ):
        assert kinds[name] == "counter", name
    for name in (
        "matomo_rt_lag_bytes",
        "matomo_rt_last_success_timestamp_seconds",
        "matomo_rt_last_error_timestamp_seconds",
        "matomo_rt_last_import_duration_seconds",
        "matomo_rt_auth_paused",
        "matomo_rt_backoff_seconds",
        "matomo_rt_healthy",
        "matomo_rt_problem",
        "matomo_rt_archive_last_run_timestamp_seconds",
        "matomo_rt_archive_last_duration_seconds",
        "matomo_rt_archive_last_success",
        "matomo_rt_archive_healthy",
        "matomo_rt_archive_problem",
    ):
        assert kinds[name] == "gauge", name
    assert log_sample(text, "matomo_rt_lines_read_total") == 2
    assert log_sample(text, "matomo_rt_refused_total") == 1
    assert log_sample(text, "matomo_rt_unmatched_total") == 3
    assert log_sample(text, "matomo_rt_lines_read_total", "other") == 0
    assert log_sample(text, "matomo_rt_lag_bytes") == 0
    assert log_sample(text, "matomo_rt_last_success_timestamp_seconds") == NOW - 10
    assert log_sample(text, "matomo_rt_last_import_duration_seconds") == 1.25
    assert log_sample(text, "matomo_rt_auth_paused") == 0
    # The last error is newer than the last success: failing, so unhealthy.
    assert log_sample(text, "matomo_rt_healthy") == 0
    assert log_sample(text, "matomo_rt_problem", problem=health.IMPORT_FAILING) == 1
    assert log_sample(text, "matomo_rt_problem", problem=health.WRONG_FORMAT) == 0
    assert log_sample(text, "matomo_rt_healthy", "other") == 1
    # Never failed: no sample rather than a misleading 0.
    assert log_sample(text, "matomo_rt_last_error_timestamp_seconds", "other") is None
    got = samples(text)
    assert got[("matomo_rt_archive_runs_total", ())] == 3
    assert got[("matomo_rt_archive_failures_total", ())] == 1
    assert got[("matomo_rt_archive_last_success", ())] == 1
    assert got[("matomo_rt_archive_last_duration_seconds", ())] == 10.0
    assert got[("matomo_rt_archive_healthy", ())] == 1


def test_every_problem_kind_has_a_sample_so_alerts_see_0_and_1(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"last_success": NOW - 10})
    text = exposition(config, ("access",))
    for kind in health.LOG_PROBLEMS:
        assert log_sample(text, "matomo_rt_problem", problem=kind) == 0, kind
    for kind in health.ARCHIVE_PROBLEMS:
        assert samples(text)[("matomo_rt_archive_problem", (("problem", kind),))] == 0


def test_the_gauges_follow_the_verdict_the_service_holds(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    h = health.LogHealth()
    h.note_batch(NOW - 30, 100, 90, 10)
    commit_lines(config, "access", 1, {"last_success": NOW - 10, "health": h.to_json()})
    text = exposition(config, ("access",))
    assert log_sample(text, "matomo_rt_problem", problem=health.WRONG_FORMAT) == 1
    assert log_sample(text, "matomo_rt_recent_quarantined_ratio") == 0.9
    assert log_sample(text, "matomo_rt_healthy") == 0


def test_a_state_the_disk_refuses_is_counted_and_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matomo_rt.logstate
    from matomo_rt.tail import StateError

    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"last_success": NOW - 120})

    def refused(path: Any, document: Any) -> None:
        raise StateError(f"{path}: cannot write state: Read-only file system")

    monkeypatch.setattr(matomo_rt.logstate, "save_state", refused)
    with Source(config, config.log("access"), token="tok", clock=lambda: NOW) as source:
        with pytest.raises(StateError):  # caught up, a minute after the last success
            source.run_pass()
        source.retry_at = 0.0
        assert "no import until the position can be saved" in str(source.run_pass().error)
        collector = metrics.ServiceCollector(
            lambda: [source], lambda: ArchiveFacts(True), lambda: config.health, clock=lambda: NOW
        )
        text = metrics.render(metrics.registry(collector))
    assert types(text)["matomo_rt_state_write_failures"] == "counter"
    assert log_sample(text, "matomo_rt_state_write_failures_total") == 2
    assert log_sample(text, "matomo_rt_problem", problem=health.STATE_UNWRITABLE) == 1
    assert log_sample(text, "matomo_rt_healthy") == 0


def test_the_collector_reads_no_state_file(tmp_path: Path, monkeypatch) -> None:
    """From memory: after opening, the state files may vanish and the metrics stay."""
    config = make_config(tmp_path)
    commit_lines(config, "access", 3, {"lines_read": 3, "last_success": NOW - 1})
    source = Source(config, config.log("access"), token="tok", clock=lambda: NOW).open()
    try:
        for path in config.state.dir.iterdir():
            if path.suffix == ".json":
                path.unlink()
        collector = metrics.ServiceCollector(
            lambda: [source], lambda: ArchiveFacts(True), lambda: config.health
        )
        text = metrics.render(metrics.registry(collector))
    finally:
        source.close()
    assert log_sample(text, "matomo_rt_lines_read_total") == 3


# -- textfile ------------------------------------------------------------------------------


def test_textfile_needs_a_prom_name(tmp_path: Path) -> None:
    with pytest.raises(metrics.MetricsError, match=r"\*\.prom"):
        metrics.write_textfile(tmp_path / "metrics.txt", "x 1\n")


def test_textfile_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "matomo_rt.prom"
    metrics.write_textfile(target, "a 1\n")
    with open(target) as old:  # a reader of the old file keeps a whole old file
        metrics.write_textfile(target, "a 2\n")
        assert old.read() == "a 1\n"
    assert target.read_text() == "a 2\n"
    assert target.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matomo_rt.prom"]


def test_textfile_in_an_impossible_place_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(metrics.MetricsError) as exc:
        metrics.write_textfile(tmp_path / "file" / "m.prom", "a 1\n")
    assert str(tmp_path / "file") in str(exc.value) and "\n" not in str(exc.value)


# -- HTTP ----------------------------------------------------------------------------------


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_server_serves_metrics_and_404_elsewhere(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"lines_read": 1})
    text = exposition(config, ("access",))
    with metrics.MetricsServer("127.0.0.1:0", lambda: text) as server:
        host, port = server.address
        code, ctype, body = fetch(f"http://{host}:{port}/metrics")
        assert code == 200
        assert ctype.startswith("text/plain; version=0.0.4")
        assert log_sample(body, "matomo_rt_lines_read_total") == 1
        code, _, _ = fetch(f"http://{host}:{port}/")
        assert code == 404
        code, _, _ = fetch(f"http://{host}:{port}/metrics/x")
        assert code == 404
    with pytest.raises(OSError):  # stopped: the port is closed
        socket.create_connection((host, port), timeout=2).close()


def test_metrics_server_answers_500_when_rendering_fails() -> None:
    def broken() -> str:
        raise RuntimeError("boom")

    with metrics.MetricsServer("127.0.0.1:0", broken) as server:
        host, port = server.address
        code, _, body = fetch(f"http://{host}:{port}/metrics")
        assert code == 500 and "boom" not in body


def test_metrics_server_bind_error_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = metrics.MetricsServer(f"127.0.0.1:{port}", lambda: "")
        with pytest.raises(metrics.MetricsError) as exc:
            server.start()
    message = str(exc.value)
    assert f"127.0.0.1:{port}" in message and "\n" not in message
