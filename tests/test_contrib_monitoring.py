"""contrib/prometheus and contrib/grafana match the metrics: the alert rules pass `promtool
check rules` and their unit tests, cover every problem of the health verdict, and, like the
dashboard, name only metrics the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from matomo_rt import health, metrics
from matomo_rt.health import ArchiveFacts
from matomo_rt.pipeline import Source
from tests.test_status import NOW, commit_lines, make_config

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "matomo-rt.rules.yml"
RULES_TEST = ROOT / "tests" / "prometheus" / "matomo-rt.rules.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "matomo-rt.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)
_METRIC = re.compile(r"\bmatomo_rt_[a-z_]+")


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULES_TEST.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_problem_of_the_verdict_has_an_alert() -> None:
    text = RULES.read_text()
    alerted = set(re.findall(r'matomo_rt_(?:archive_)?problem\{problem="(\w+)"\} == 1', text))
    assert alerted == set(health.LOG_PROBLEMS) | set(health.ARCHIVE_PROBLEMS)


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name of a full exposition (a log with every fact, a past archive run)."""
    config = make_config(tmp_path)
    window = health.LogHealth()
    window.note_batch(NOW - 30, 100, 10, 80, 5, ("x.example",))
    stats = {
        "last_success": NOW - 60,
        "last_error": {"time": NOW - 5, "outcome": "failed", "reason": "x"},
        "last_import_duration": 1.0,
        "health": window.to_json(),
    }
    commit_lines(config, "access", 1, stats)
    archive = ArchiveFacts(
        True, runs=1, last_outcome="success", last_end=NOW, last_success=NOW, last_duration=1.0
    )
    with Source(config, config.log("access"), token="tok", clock=lambda: NOW) as source:
        collector = metrics.ServiceCollector(
            lambda: [source], lambda: archive, lambda: config.health, clock=lambda: NOW
        )
        text = metrics.render(metrics.registry(collector))
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_rules_name_only_exported_metrics(tmp_path: Path) -> None:
    named = set(_METRIC.findall(RULES.read_text()))
    assert named and named <= exported_names(tmp_path), named - exported_names(tmp_path)


def test_the_dashboard_is_valid_and_names_only_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs and all(t.get("refId") for p in dashboard["panels"] for t in p["targets"])
    named = {m for e in exprs for m in _METRIC.findall(e)}
    exported = exported_names(tmp_path)
    assert named <= exported, named - exported
    # Every panel on the grid once, within Grafana's 24 columns.
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])
    # The health verdict is on it, and every counter family.
    for name in ("matomo_rt_healthy", "matomo_rt_problem", "matomo_rt_archive_healthy"):
        assert name in named
