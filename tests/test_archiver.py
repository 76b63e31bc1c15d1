"""core:archive's outcome, as seen on a real Matomo 5.0.2 (helper check, 2026-11-27)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from matomo_rt import archiver
from matomo_rt.archiver import FAILURE, SUCCESS, TIMEOUT, WARNING, build_argv, classify, run_archive
from matomo_rt.config import load

CONSOLE = Path(__file__).resolve().parent / "doubles" / "console"

USAGE = "\x1b[32mcore:archive [--url URL] [--skip-idsites [SKIP-IDSITES]]\x1b[39m\n"


def test_argv_asks_for_no_colours() -> None:
    argv = build_argv("php", Path("/m/console"), "https://m.example", ("--force-all-websites",))
    assert argv == [
        "php",
        "/m/console",
        "core:archive",
        "--no-ansi",
        "--url=https://m.example",
        "--force-all-websites",
    ]


def test_the_cause_not_symfonys_usage_text_is_the_reason() -> None:
    """Database down: exit 255, the exception in the middle, Symfony's usage text last."""
    stderr = "\nIn Mysql.php line 1:\n\n  SQLSTATE[HY000] [2002] Connection refused\n\n" + USAGE
    stdout = "ERROR [2026-11-27] Uncaught exception: Abstract.php(119): SQLSTATE[HY000] [2002]\n"
    outcome, reason = classify(255, stdout, stderr, timed_out=False)
    assert outcome == FAILURE
    assert "SQLSTATE[HY000] [2002] Connection refused" in reason and "\x1b" not in reason


def test_warning_success_and_timeout() -> None:
    assert classify(1, "Error: error or warning logs detected, exit 1\n", "", False)[0] == WARNING
    assert classify(0, "done", "", False) == (SUCCESS, "")
    assert classify(None, "", "", True)[0] == TIMEOUT
    assert classify(1, "", 'The "--bogus" option does not exist.', False)[0] == FAILURE


def test_a_one_shot_archive_says_it_started_and_how_long_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Off a terminal (cron, a pipe): an INFO line every PROGRESS_EVERY seconds instead of
    minutes of silence (shortened here; 10 s in use)."""
    root = Path(__file__).resolve().parent
    matomo = tmp_path / "matomo"
    matomo.mkdir()
    shutil.copy2(root / "doubles" / "console", matomo / "console")
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"mode": "ok", "seconds": 1.0}))
    monkeypatch.setenv("ARCHIVE_DOUBLE_CONTROL", str(control))
    monkeypatch.setenv("ARCHIVE_DOUBLE_CALLS", str(tmp_path / "calls.jsonl"))
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'[matomo]\nurl = "http://127.0.0.1:9"\npath = "{matomo}"\nphp = "{sys.executable}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    monkeypatch.setattr(archiver._Progress, "PROGRESS_EVERY", 0.2)
    with caplog.at_level(logging.INFO, logger="matomo_rt.archiver"):
        result = archiver.run_archive(load(config_path), progress=True)
    assert result.outcome == archiver.SUCCESS
    assert "core:archive: started" in caplog.text
    assert "core:archive: still running (" in caplog.text
    assert "core:archive done in" in caplog.text


def test_core_archive_does_not_inherit_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token in $MATOMO_TOKEN_AUTH is for import_logs.py: `php console` must not get it."""
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", "tok-s3cret")
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("ARCHIVE_DOUBLE_CALLS", str(calls))
    matomo = tmp_path / "matomo"
    matomo.mkdir()
    (matomo / "console").symlink_to(CONSOLE)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[matomo]\nurl = "https://m.example"\npath = "{matomo}"\nphp = "{sys.executable}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    assert run_archive(load(path)).outcome == SUCCESS
    (entry,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert entry["exit"] == 0 and entry["token_env"] == {}


def archive_config(tmp_path: Path) -> Path:
    matomo = tmp_path / "matomo"
    matomo.mkdir()
    (matomo / "console").symlink_to(CONSOLE)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[matomo]\nurl = "https://m.example"\npath = "{matomo}"\nphp = "{sys.executable}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    return path


@pytest.mark.parametrize(
    ("damage", "aside"),
    [(b"{not json", True), (b'{"format": 99}', True), (b'{"format": 1, "runs": "x"}', False)],
)
def test_a_damaged_archive_state_is_moved_aside_and_written_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: bytes, aside: bool
) -> None:
    """core:archive worked: its outcome must be recorded, not lost to a raise after the fact,
    and the damaged file is kept for inspection (status promises the next run writes anew)."""
    config = load(archive_config(tmp_path))
    state = tmp_path / "state" / "archive.state.json"
    state.parent.mkdir()
    state.write_bytes(damage)
    assert run_archive(config).outcome == SUCCESS
    document = json.loads(state.read_text())
    assert document["runs"] == 1 and document["last_run"]["outcome"] == SUCCESS
    if aside:
        assert (tmp_path / "state" / "archive.state.json.damaged").read_bytes() == damage
        assert "archive.state.json.damaged" in caplog.text
    assert run_archive(config).outcome == SUCCESS
    assert json.loads(state.read_text())["runs"] == 2
