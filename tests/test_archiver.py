"""core:archive's outcome, as seen on a real Matomo 5.0.2 (helper check, 2026-11-27)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from matomo_rt import archiver, store
from matomo_rt.archiver import FAILURE, SUCCESS, TIMEOUT, WARNING, build_argv, classify, run_archive
from matomo_rt.config import load
from matomo_rt.metrics import render
from matomo_rt.service import Service
from tests.e2e.test_health import unable_to_override_permissions

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


def refuse_archive_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk under archive.state.json: its write fails as the kernel fails it (ENOSPC);
    the service's other files are written as usual."""
    real = store.atomic_write

    def write(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == "archive.state.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(store, "atomic_write", write)


def test_a_record_the_disk_refuses_does_not_hide_what_core_archive_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """core:archive has worked when its record is refused: the result says both."""
    config = load(archive_config(tmp_path))
    refuse_archive_writes(monkeypatch)
    result = run_archive(config)
    assert result.outcome == SUCCESS
    assert result.unrecorded is not None
    assert "archive.state.json: cannot write state: No space left on device" in result.unrecorded


def test_the_service_keeps_a_run_the_disk_refused_says_it_once_and_its_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full state disk at archive time: the run reaches the service's memory (metrics), the
    refused record is one ERROR (no traceback, none per job), reminded at most every
    REMIND_SECONDS, counted, a problem of the archive's verdict, and one INFO once written."""
    path = archive_config(tmp_path)
    service = Service(load(path), path)
    refuse_archive_writes(monkeypatch)
    with caplog.at_level(logging.INFO):
        service._job("archive", service._archive_tick)
        service._job("archive", service._archive_tick)
    said = [r for r in caplog.records if r.name.startswith("matomo_rt")]
    assert not [r for r in said if r.exc_info], caplog.text
    assert "unexpected error" not in caplog.text
    errors = [r.getMessage() for r in said if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("archive: state cannot be written since ")
    assert "No space left on device" in errors[0]
    text = render(service.metrics)
    assert sample(text, "matomo_rt_archive_runs_total") == 2
    assert sample(text, "matomo_rt_archive_last_success") == 1
    assert sample(text, "matomo_rt_archive_state_write_failures_total") == 2
    assert sample(text, 'matomo_rt_archive_problem{problem="state_unwritable"}') == 1

    service._announce_archive.remind_seconds = 0.0  # as if REMIND_SECONDS had passed
    caplog.clear()
    with caplog.at_level(logging.INFO):
        service._job("archive", service._archive_tick)
    assert "ERROR" in caplog.text and "archive: still: state cannot be written" in caplog.text

    monkeypatch.undo()  # space freed
    caplog.clear()
    with caplog.at_level(logging.INFO):
        service._job("archive", service._archive_tick)
    assert "archive: recovered: the state is written again" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    text = render(service.metrics)
    assert sample(text, 'matomo_rt_archive_problem{problem="state_unwritable"}') == 0
    assert sample(text, "matomo_rt_archive_state_write_failures_total") == 3
    assert sample(text, "matomo_rt_archive_runs_total") == 4


def archive_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """How the console double's next runs end ("ok" or "fail")."""
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"mode": mode}))
    monkeypatch.setenv("ARCHIVE_DOUBLE_CONTROL", str(control))


def archive_state(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "state" / "archive.state.json").read_text())


def test_runs_the_disk_refused_are_in_the_file_once_it_accepts_writes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run recorded, then a full disk refuses the record of a failed and a successful run,
    then space is freed and a failed run is recorded: the file says 4 runs, 2 failures and the
    refused success's time, as the service's memory (metrics) does, not 2 runs counted from the
    file's stale numbers."""
    path = archive_config(tmp_path)
    service = Service(load(path), path)
    archive_mode(tmp_path, monkeypatch, "ok")
    service._job("archive", service._archive_tick)
    assert archive_state(tmp_path)["runs"] == 1
    with monkeypatch.context() as full:
        refuse_archive_writes(full)
        archive_mode(tmp_path, full, "fail")
        service._job("archive", service._archive_tick)
        archive_mode(tmp_path, full, "ok")
        service._job("archive", service._archive_tick)
    refused_success = service.archive.last_success
    assert service.archive.unwritable is not None
    archive_mode(tmp_path, monkeypatch, "fail")
    service._job("archive", service._archive_tick)  # the disk accepts the record again
    document = archive_state(tmp_path)
    assert (document["runs"], document["failures"]) == (4, 2)
    assert document["last_success"] == refused_success
    assert document["last_run"]["outcome"] == FAILURE
    assert (service.archive.runs, service.archive.failures) == (4, 2)
    assert service.archive.last_success == refused_success
    assert service.archive.unwritable is None
    text = render(service.metrics)
    assert sample(text, "matomo_rt_archive_runs_total") == 4
    assert sample(text, "matomo_rt_archive_failures_total") == 2
    # Recorded now: the next run counts from the file alone, not the same runs twice.
    archive_mode(tmp_path, monkeypatch, "ok")
    service._job("archive", service._archive_tick)
    assert archive_state(tmp_path)["runs"] == service.archive.runs == 5


def test_one_shot_runs_between_refused_and_accepted_service_records_are_all_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's record is refused twice (its user may not write the state dir, say), a
    one-shot `matomo-rt archive` from cron records a run meanwhile, then the service's record
    is written: 1 + 2 + 1 + 1 runs, none lost to the other's count."""
    path = archive_config(tmp_path)
    config = load(path)
    service = Service(config, path)
    service._job("archive", service._archive_tick)
    with monkeypatch.context() as refused:
        refuse_archive_writes(refused)
        service._job("archive", service._archive_tick)
        service._job("archive", service._archive_tick)
    assert run_archive(config).unrecorded is None  # the one-shot run, between service runs
    assert archive_state(tmp_path)["runs"] == 2
    service._job("archive", service._archive_tick)
    assert archive_state(tmp_path)["runs"] == 5
    assert service.archive.runs == 5


def test_a_lock_that_cannot_be_had_is_one_line_not_a_traceback_every_hour(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """archive.lock cannot be opened (here a directory stands in its place): core:archive does
    not run, and the service says why once, as the archive's state_unwritable."""
    path = archive_config(tmp_path)
    config = load(path)
    _, lock_path = archiver.archive_paths(config)
    lock_path.mkdir(parents=True)
    service = Service(config, path)
    with caplog.at_level(logging.INFO):
        service._job("archive", service._archive_tick)
        service._job("archive", service._archive_tick)
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "core:archive did not run: " in errors[0]
    assert "archive.lock: cannot open lock file: Is a directory" in errors[0]
    assert sample(render(service.metrics), "matomo_rt_archive_runs_total") == 0


def test_a_one_shot_archive_whose_record_is_refused_says_so_and_exits_73(tmp_path: Path) -> None:
    """`matomo-rt archive` from cron, state.dir not writable for its user: core:archive's own
    outcome is said, then one line naming the file and the fix; exit 73, no traceback."""
    prefix = unable_to_override_permissions()
    path = archive_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "archive.lock").touch()  # an earlier run made it
    state.chmod(0o555)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "matomo_rt", "-c", str(path), "archive"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        state.chmod(0o755)
    assert done.returncode == 73, done.stderr
    assert "INFO: core:archive done in " in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert "archive.state.json: cannot write state: Permission denied" in error
    assert "make it writable" in error
    assert "Traceback" not in done.stderr
    assert not (state / "archive.state.json").exists()


def sample(text: str, name: str) -> Optional[float]:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None
