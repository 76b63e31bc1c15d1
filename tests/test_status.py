"""`status`: read every log's state without locks, survive a damaged one, say who
holds a lock, and give the health verdict with what to do."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from matomo_rt import status, store
from matomo_rt.config import Config, StateConfig, load
from matomo_rt.loghealth import auth_key
from matomo_rt.logstate import state_paths
from matomo_rt.pipeline import AUTH_PAUSE_SECONDS
from matomo_rt.store import save_state
from matomo_rt.tail import LogReader, Position

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0


def line(n: int, host: str = "example.com") -> bytes:
    return (
        json.dumps(
            {
                "ip": "192.0.2.1",
                "host": host,
                "path": f"/page/{n}",
                "status": "200",
                "date": "2026-11-27T10:00:00+00:00",
                "generation_time_milli": "0.01",
            }
        ).encode()
        + b"\n"
    )


def make_config(
    tmp_path: Path, names: tuple[str, ...] = ("access",), token: Optional[str] = "tok"
) -> Config:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    logs = "".join(
        f'\n[[logs]]\nname = "{name}"\npath = "{tmp_path / (name + ".log")}"\n' for name in names
    )
    token_line = ""
    if token is not None:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        token_line = f'token_auth_file = "{token_file}"\n'
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [matomo]
            url = "https://matomo.example.org"
            path = "{tmp_path / "matomo"}"
            """
        )
        + token_line
        + f'\n[state]\ndir = "{state}"\n'
        + logs
    )
    return load(path)


def commit_lines(
    config: Config, name: str, lines: int, stats: Optional[dict[str, Any]] = None
) -> None:
    """Write `lines` lines to the log, read them with a real LogReader and commit them (with
    `stats`) in a state document shaped as the Source writes it."""
    log_config = config.log(name)
    with open(log_config.path, "ab") as fh:
        for n in range(lines):
            fh.write(line(n))
    state_path = state_paths(config, log_config)[0]
    reader = LogReader(log_config.path, start_at="beginning")
    batch = reader.read_batch(Position(), 10_000, 1 << 20)
    assert batch.lines == lines
    document = {
        "log": str(log_config.path),
        "position": batch.end.to_json(),
        "updated": time.time(),
        "stats": stats or {},
    }
    save_state(state_path, document)


def entry_of(report: dict[str, Any], name: str = "access") -> dict[str, Any]:
    [entry] = [e for e in report["logs"] if e["name"] == name]
    return entry


# -- collect -------------------------------------------------------------------------------


def test_offset_lag_and_totals_come_from_the_committed_state(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    stats = {
        "lines_read": 3,
        "imported": 2,
        "ignored": 1,
        "quarantined": 0,
        "normalised": 1,
        "failed_batches": 0,
        "uncertain_batches": 0,
        "last_success": NOW - 180,
    }
    commit_lines(config, "access", 3, stats)
    committed = (tmp_path / "access.log").stat().st_size
    with open(tmp_path / "access.log", "ab") as fh:
        fh.write(line(3) + line(4))
    size = (tmp_path / "access.log").stat().st_size

    report = status.collect(config, now=NOW)
    entry = entry_of(report)
    assert entry["error"] is None
    assert entry["state"] == "ok"
    assert entry["offset"] == committed
    assert entry["file"] == "access.log"
    assert entry["size"] == size
    assert entry["lag_bytes"] == size - committed
    assert entry["totals"] == {k: stats.get(k, 0) for k in status.TOTALS}
    assert entry["last_success"] == NOW - 180
    assert entry["running"] is False
    assert status.status_exit_code(report) == 0
    text = status.render_text(report)
    assert "3m ago" in text
    assert f"{size - committed:,} bytes" in text
    assert "all fine" in text
    json.loads(json.dumps(report))  # `status --json` is plain JSON


def test_a_rotated_live_file_counts_whole_as_lag(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    commit_lines(config, "access", 2)
    os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
    (tmp_path / "access.log").write_bytes(line(9))
    entry = entry_of(status.collect(config, now=NOW))
    assert entry["lag_bytes"] == len(line(9))


def test_missing_state_and_missing_log_are_reported_not_raised(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    entry = entry_of(status.collect(config, now=NOW))
    assert entry["state"] == "missing"
    assert entry["size"] is None and entry["lag_bytes"] is None
    assert entry["log_problem"] == "no such file"
    text = status.render_text(status.collect(config, now=NOW))
    assert "no such file" in text and "first run" in text


def test_last_error_newer_than_last_success_fails_the_exit_code(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    error = {"time": NOW - 60, "outcome": "failed", "reason": "Fatal error: boom\nsecond line"}
    commit_lines(config, "access", 1, {"last_success": NOW - 600, "last_error": error})
    report = status.collect(config, now=NOW)
    assert entry_of(report)["last_error"]["reason"].startswith("Fatal error: boom")
    assert status.status_exit_code(report) == 1
    text = status.render_text(report)
    assert "1m ago" in text and "Fatal error: boom second line" in text
    assert "1 problem:\n  access: import failing (failed): Fatal error: boom second line" in text
    assert "what to do: " in text


def test_an_error_followed_by_a_success_is_fine(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    error = {"time": NOW - 600, "outcome": "failed", "reason": "boom"}
    commit_lines(config, "access", 1, {"last_success": NOW - 60, "last_error": error})
    report = status.collect(config, now=NOW)
    assert status.status_exit_code(report) == 0
    assert "since recovered" in status.render_text(report)


def test_an_active_auth_pause_is_shown_and_fails_the_exit_code(tmp_path: Path) -> None:
    config = make_config(tmp_path, token="tok")
    key = auth_key(config.matomo.url, "tok")
    pause = {"until": NOW + 1800, "key": key}
    commit_lines(config, "access", 1, {"auth_pause": pause})
    report = status.collect(config, now=NOW)
    assert entry_of(report)["auth_pause"] == {"until": NOW + 1800}
    assert status.status_exit_code(report) == 1
    assert "AUTH PAUSE" in status.render_text(report)
    assert "in 30m" in status.render_text(report)


@pytest.mark.parametrize(
    "why",
    ["expired", "token changed", "import succeeded since"],
)
def test_a_lifted_auth_pause_is_not_reported(tmp_path: Path, why: str) -> None:
    config = make_config(tmp_path, token="new-token")
    key = auth_key(config.matomo.url, "new-token")
    stats: dict[str, Any] = {"auth_pause": {"until": NOW + 1800, "key": key}}
    if why == "expired":
        stats["auth_pause"]["until"] = NOW - 1
    elif why == "token changed":
        stats["auth_pause"]["key"] = auth_key(config.matomo.url, "old-token")
    else:
        stats["last_success"] = NOW + 1800 - AUTH_PAUSE_SECONDS + 5
    commit_lines(config, "access", 1, stats)
    report = status.collect(config, now=NOW)
    assert entry_of(report)["auth_pause"] is None
    assert status.status_exit_code(report) == 0


def test_a_corrupt_state_file_shows_the_way_out_and_spares_the_other_logs(tmp_path: Path) -> None:
    config = make_config(tmp_path, names=("broken", "good"))
    commit_lines(config, "good", 2, {"lines_read": 2})
    state_paths(config, config.log("broken"))[0].write_text("{not json")
    report = status.collect(config, now=NOW)
    broken, good = entry_of(report, "broken"), entry_of(report, "good")
    assert broken["state"] == "error"
    assert "matomo-rt seek" in broken["error"]
    assert "\n" not in broken["error"]
    assert good["error"] is None and good["totals"]["lines_read"] == 2
    assert status.status_exit_code(report) == 1
    text = status.render_text(report)
    assert "STATE ERROR" in text and "matomo-rt seek" in text


def test_a_state_file_of_another_format_is_an_error_too(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    state_paths(config, config.log("access"))[0].write_text('{"format": 99}')
    entry = entry_of(status.collect(config, now=NOW))
    assert "format 99" in entry["error"] and "matomo-rt seek" in entry["error"]


def test_a_state_dir_that_cannot_exist_is_an_error_not_a_crash(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = dataclasses.replace(config, state=StateConfig(blocker / "state"))
    report = status.collect(config, now=NOW)
    assert "not a directory" in entry_of(report)["error"]
    assert "not a directory" in report["archive"]["error"]
    assert status.status_exit_code(report) == 1


def statvfs_says(monkeypatch: pytest.MonkeyPatch, **fields: int) -> None:
    """os.statvfs answers as the real one, but with `fields` (a full or read-only disk)."""
    real = os.statvfs
    names = [n for n in dir(real("/")) if n.startswith("f_")]

    def statvfs(path: Any) -> Any:
        st = real(path)
        return types.SimpleNamespace(**{**{n: getattr(st, n) for n in names}, **fields})

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_read_only_state_dir_is_unwritable_since_the_last_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status cannot see the service's memory: it finds the cause itself, and gives the last
    write as the time since when nothing was committed."""
    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"last_success": NOW - 10})
    written = store.load_state(state_paths(config, config.log("access"))[0])["updated"]
    statvfs_says(monkeypatch, f_flag=os.ST_RDONLY)
    report = status.collect(config, now=written + 600)
    [problem] = entry_of(report)["problems"]
    assert problem["kind"] == "state_unwritable"
    assert problem["message"].endswith(f"(10m ago): {config.state.dir}: read-only file system")
    assert status.status_exit_code(report) == 1
    assert "what to do: free space on the file system of state.dir" in status.render_text(report)


def test_a_full_disk_is_unwritable_for_the_service_that_holds_the_lock(
    lock_holder: tuple[Config, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = lock_holder
    commit_lines(config, "access", 1, {"last_success": NOW - 10})
    statvfs_says(monkeypatch, f_bavail=0, f_bfree=0)
    [problem] = entry_of(status.collect(config, now=NOW))["problems"]
    assert problem["kind"] == "state_unwritable"
    assert "no space left on device (0 bytes free)" in problem["message"]


def test_a_state_dir_the_service_may_not_write_is_unwritable(tmp_path: Path) -> None:
    """The lock holder's own credentials decide, not status's (which may run as root)."""
    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"last_success": NOW - 10})
    lock = state_paths(config, config.log("access"))[1]
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    code = (
        "import sys; from pathlib import Path; from matomo_rt.store import SourceLock\n"
        "lock = SourceLock(Path(sys.argv[1])); lock.acquire(); print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", code, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert entry_of(status.collect(config, now=NOW))["healthy"]
        config.state.dir.chmod(0o555)
        [problem] = entry_of(status.collect(config, now=NOW))["problems"]
        assert problem["kind"] == "state_unwritable"
        denied = f"{config.state.dir}: no write permission for uid {os.geteuid()}"
        assert denied in problem["message"]
    finally:
        config.state.dir.chmod(0o755)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_without_a_running_service_the_state_file_s_owner_must_be_able_to_write(
    tmp_path: Path,
) -> None:
    """`import` from cron: no process holds the lock between runs, and the user who wrote the
    state (its owner) is the one whose next run will fail."""
    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"last_success": NOW - 10})
    state_file = state_paths(config, config.log("access"))[0]
    assert entry_of(status.collect(config, now=NOW))["healthy"]
    if os.geteuid() == 0:
        os.chown(state_file, 65534, 65534)  # written by nobody; the directory is root's 0755
    else:
        config.state.dir.chmod(0o555)
    try:
        [problem] = entry_of(status.collect(config, now=NOW))["problems"]
    finally:
        config.state.dir.chmod(0o755)
    assert problem["kind"] == "state_unwritable"
    uid = 65534 if os.geteuid() == 0 else os.geteuid()
    assert (
        f"{config.state.dir}: no write permission for uid {uid} (the owner of"
        in (problem["message"])
    )


def test_the_quarantine_file_is_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    quarantine = state_paths(config, config.log("access"))[2]
    quarantine.write_text('{"reason": "a"}\n{"reason": "b"}\n{"reason": "c"}\n')
    entry = entry_of(status.collect(config, now=NOW))
    assert entry["quarantine"] == {"path": str(quarantine), "lines": 3}
    assert f"{quarantine} (3 lines)" in status.render_text(status.collect(config, now=NOW))


# -- locks ---------------------------------------------------------------------------------


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Config, subprocess.Popen[bytes]]]:
    """Another process holding the log's lock, as the service does."""
    config = make_config(tmp_path)
    lock = state_paths(config, config.log("access"))[1]
    code = (
        "import sys; from pathlib import Path; from matomo_rt.store import SourceLock\n"
        "lock = SourceLock(Path(sys.argv[1])); lock.acquire(); print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield config, proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def test_a_lock_held_by_another_process_is_reported_with_its_pid(
    lock_holder: tuple[Config, subprocess.Popen[bytes]],
) -> None:
    config, proc = lock_holder
    report = status.collect(config, now=NOW)
    entry = entry_of(report)
    assert entry["running"] is True
    assert entry["pid"] == proc.pid
    # Its pid and command: which of the service, a timer or a cron job to look at.
    python = Path(sys.executable).name
    assert f"yes, pid {proc.pid} ({python} -c " in status.render_text(report)
    # status took no lock: the holder still has it, and after it exits nobody does.
    assert proc.poll() is None
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdin = None
    proc.wait(timeout=10)
    entry = entry_of(status.collect(config, now=NOW))
    assert (entry["running"], entry["pid"]) == (False, None)


def test_without_proc_locks_the_flock_probe_answers(
    lock_holder: tuple[Config, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, proc = lock_holder
    monkeypatch.setattr(store, "_proc_flocks", lambda: None)
    lock = state_paths(config, config.log("access"))[1]
    assert status.lock_holder(lock) == (True, proc.pid)
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdin = None
    proc.wait(timeout=10)
    assert status.lock_holder(lock) == (False, None)


def test_status_never_makes_a_starting_instance_see_a_held_lock(tmp_path: Path) -> None:
    """status looks in /proc/locks instead of probing with flock(): an `import` or the service
    taking the lock while status runs must never be told another instance holds it."""
    from matomo_rt.tail import SourceLock

    config = make_config(tmp_path)
    lock = state_paths(config, config.log("access"))[1]
    lock.write_text("12345\n")
    assert status.lock_holder(lock) == (False, None)  # a stale pid in the file is not a holder
    stop = threading.Event()

    def look() -> None:
        while not stop.is_set():
            status.collect(config)

    watcher = threading.Thread(target=look)
    watcher.start()
    try:
        for _ in range(2000):
            with SourceLock(lock):  # raises LockedError if status held it at that instant
                assert status.lock_holder(lock) == (True, os.getpid())
    finally:
        stop.set()
        watcher.join()


def test_an_archive_that_never_ran_is_stale_once_the_service_ran_long_enough(
    lock_holder: tuple[Config, subprocess.Popen[bytes]],
) -> None:
    """No archive state at all while the service (the logs' lock holder) runs: stale once
    health.archive_stale_after has passed since that process started."""
    config, proc = lock_holder
    started = store.process_started(proc.pid)
    assert started is not None and abs(started - time.time()) < 60
    soon = status.collect(config, now=started + 60)["archive"]
    assert soon["healthy"], soon["problems"]
    late = status.collect(config, now=started + config.health.archive_stale_after + 60)
    assert [p["kind"] for p in late["archive"]["problems"]] == ["archive_stale"]
    assert "since the service started 3h ago" in status.render_text(late)
    assert status.status_exit_code(late) == 1


# -- archive -------------------------------------------------------------------------------


def archive_state(config: Config, outcome: str, runs: int = 3, failures: int = 1) -> None:
    save_state(
        config.state.dir / "archive.state.json",
        {
            "last_run": {
                "start": NOW - 130,
                "end": NOW - 120,
                "outcome": outcome,
                "reason": "" if outcome == "success" else "core:archive exited 255: boom",
                "duration": 10.0,
            },
            "runs": runs,
            "failures": failures,
            **({"last_success": NOW - 120} if outcome in ("success", "warning") else {}),
        },
    )


def test_a_failed_archive_run_fails_the_exit_code(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    archive_state(config, "failure")
    report = status.collect(config, now=NOW)
    assert report["archive"]["last_run"]["outcome"] == "failure"
    assert (report["archive"]["runs"], report["archive"]["failures"]) == (3, 1)
    assert status.status_exit_code(report) == 1
    text = status.render_text(report)
    assert "failure, 2m ago" in text and "3 (1 failed)" in text


@pytest.mark.parametrize("outcome", ["success", "warning"])
def test_a_successful_or_warning_archive_run_is_fine(tmp_path: Path, outcome: str) -> None:
    config = make_config(tmp_path)
    commit_lines(config, "access", 1, {"last_success": NOW - 10})
    archive_state(config, outcome)
    report = status.collect(config, now=NOW)
    assert report["archive"]["healthy"] and report["archive"]["problems"] == []
    assert status.status_exit_code(report) == 0


def test_a_damaged_archive_state_says_what_the_next_run_does(tmp_path: Path) -> None:
    """The promise status makes is the archiver's behaviour (test_archiver checks it)."""
    config = make_config(tmp_path)
    path = config.state.dir / "archive.state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{not json")
    report = status.collect(config, now=NOW)
    assert report["archive"]["error"] == (
        f"{path}: state file is corrupt (not JSON); the next archive run moves it to"
        " archive.state.json.damaged and writes a new one"
    )
    assert status.status_exit_code(report) == 1


def test_no_archive_state_means_never_run(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    report = status.collect(config, now=NOW)
    assert report["archive"]["last_run"] is None
    assert "never" in status.render_text(report)


# -- text helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [(0.2, "just now"), (42, "42s ago"), (180, "3m ago"), (7200, "2h ago"), (-1800, "in 30m")],
)
def test_ages(delta: float, text: str) -> None:
    assert status.age(NOW - delta, NOW) == text
    assert status.age(None, NOW) == "never"


def test_collect_reports_every_configured_log_in_config_order(tmp_path: Path) -> None:
    """What one scrape costs per log is measured in bench/status (docs/benchmarks.md)."""
    names = tuple(f"log{i}" for i in range(20))
    config = make_config(tmp_path, names=names)
    for i in range(20):
        commit_lines(config, f"log{i}", 5, {"lines_read": 5})
    report = status.collect(config)
    assert tuple(e["name"] for e in report["logs"]) == names


def test_the_status_command_loads_no_process_scheduler_or_metrics_library(tmp_path: Path) -> None:
    """`status` starts no process, schedules nothing and serves no metrics: sh (which brings
    asyncio), APScheduler and prometheus_client stay unloaded, so it answers at once."""
    config = make_config(tmp_path)
    commit_lines(config, "access", 3, {"lines_read": 3})
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "matomo_rt", "-c", str(config.source), "status"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "matomo_rt.status" in loaded  # the import list is read right
    heavy = {"sh", "asyncio", "apscheduler", "prometheus_client"}
    assert loaded & heavy == set()
