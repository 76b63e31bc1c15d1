"""`matomo-rt run` as a real process: imports, reload, stop, crash, lock, sd_notify, recovery;
`matomo-rt archive` one-shot outcomes and its lock.

Matomo is simulated by the doubles (tests/doubles/import_logs.py records what Matomo would hold;
tests/doubles/console plays core:archive). Every wait polls something observable: the record
file, the doubles' call logs, the service's stderr, the lock and state files, /proc.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from matomo_rt.archiver import archive_paths
from matomo_rt.config import load
from matomo_rt.service import Service
from matomo_rt.store import SourceLock, ensure_dir
from tests.e2e.harness import (
    MATOMO_URL,
    Rig,
    access_line,
    append,
    assert_delivered,
    assert_exactly_once,
    pid_gone,
    wait_for,
)

pytestmark = pytest.mark.e2e

STOP_MARGIN = 4.0  # beyond service.stop_timeout: SIGTERM grace for the importer, exiting


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def lines(tag: str, first: int, count: int, **fields) -> list[bytes]:
    return [access_line(f"/{tag}/{n}", **fields) for n in range(first, first + count)]


def from_log(recorded: list[bytes], tag: str) -> list[bytes]:
    """The recorded lines of one log (each log's lines carry their own path prefix)."""
    return [line for line in recorded if f'"path":"/{tag}/'.encode() in line]


def in_flight(rig: Rig, recorded_before_hang: int):
    """Wait until an importer hangs mid-batch (its first lines recorded, no end); its pid."""

    def hanging():
        ends = {c["pid"] for c in rig.importer_ends()}
        running = [c for c in rig.importer_starts() if c["pid"] not in ends]
        if running and len(rig.recorded()) >= recorded_before_hang:
            return running[-1]["pid"]
        return None

    return wait_for(
        hanging,
        15,
        "an importer blocked in the middle of its batch",
        lambda: "\n".join(s.describe() for s in rig.services),
    )


# ------------------------------------------------------------------------------------------
# The service's life: imports, reload (valid and invalid), graceful stop
# ------------------------------------------------------------------------------------------


def test_run_imports_reloads_and_stops_without_losing_or_repeating(rig):
    a, b = rig.logs / "a.log", rig.logs / "b.log"
    written_a = lines("a", 0, 5)
    append(a, written_a)
    b_first = lines("b", 0, 3)
    append(b, b_first)  # not configured yet
    rig.write_config([("a", a)], archive_schedule="* * * * *")
    service = rig.start_service()
    # The archive job is scheduled on its cron expression (its runs are tested one-shot below:
    # a per-minute cron would make this test wait up to a minute).
    assert "core:archive at '* * * * *'" in service.log()

    rig.wait_recorded(5)
    for round_ in range(3):  # traffic arriving while the service runs
        more = lines("a", len(written_a), 4 + round_)
        append(a, more)
        written_a += more
        rig.wait_recorded(len(written_a))
    assert_exactly_once(rig.recorded(), written_a)
    assert not from_log(rig.recorded(), "b")

    # SIGHUP with a valid new config: a second log.
    rig.write_config([("a", a), ("b", b)], archive_schedule="* * * * *")
    service.send(signal.SIGHUP)
    service.wait_log("reloaded")
    written_b = list(b_first)
    more_a, more_b = lines("a", len(written_a), 3), lines("b", 3, 2)
    append(a, more_a)
    append(b, more_b)
    written_a += more_a
    written_b += more_b
    rig.wait_recorded(len(written_a) + len(written_b))

    # SIGHUP with an invalid config: refused, the running one (both logs) keeps importing.
    good = rig.config_path.read_text()
    rig.config_path.write_text(good.replace("[import]\n", "[import]\nbogus_key = 1\n", 1))
    service.send(signal.SIGHUP)
    log = service.wait_log("reload: keeping the running configuration")
    assert "import.bogus_key: unknown key" in log
    more_a, more_b = lines("a", len(written_a), 6), lines("b", len(written_b), 4)
    append(a, more_a)
    append(b, more_b)
    written_a += more_a
    written_b += more_b
    rig.wait_recorded(len(written_a) + len(written_b))

    # SIGTERM: exit 0, nothing lost, nothing repeated.
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0, service.describe()
    assert "stopped" in service.log()
    recorded = rig.recorded()
    assert_exactly_once(from_log(recorded, "a"), written_a)
    assert_exactly_once(from_log(recorded, "b"), written_b)
    assert len(recorded) == len(written_a) + len(written_b)
    # Every importer run ended by itself, successfully.
    ends = rig.importer_ends()
    assert len(ends) == len(rig.importer_starts())
    assert all(c["exit"] == 0 for c in ends), ends

    # A restart finds nothing new: the offsets were committed.
    rig.config_path.write_text(good)
    service = rig.start_service()
    extra = lines("a", len(written_a), 2)
    append(a, extra)
    written_a += extra
    rig.wait_recorded(len(written_a) + len(written_b))
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0
    assert_exactly_once(from_log(rig.recorded(), "a"), written_a)
    assert_exactly_once(from_log(rig.recorded(), "b"), written_b)


def test_term_while_the_scheduler_submits_jobs_stops(rig):
    """Regression: SIGTERM handled inside the signal handler called scheduler.shutdown(), which
    deadlocked when the signal landed while the main thread was submitting a job (it holds
    ThreadPoolExecutor's lock there). Many logs make the first tick's submissions long; the
    old code hung in most of these stops."""
    logs = []
    for i in range(60):
        path = rig.logs / f"m{i}.log"
        path.write_bytes(b"")
        logs.append((f"m{i}", path))
    rig.write_config(logs, archive_enabled=False)
    for _ in range(3):
        service = rig.start_service()
        service.send(signal.SIGTERM)  # right into the first tick
        assert service.wait(10) == 0, service.describe()


# ------------------------------------------------------------------------------------------
# Stopping and crashing with a batch in flight
# ------------------------------------------------------------------------------------------

BATCH = 20


@pytest.mark.timing
def test_term_with_a_batch_in_flight_stops_within_stop_timeout(rig):
    log = rig.logs / "access.log"
    written = lines("t", 0, 12)
    append(log, written)
    rig.set_control({"hang_after_lines": 5})  # lines 0-4 recorded, then the POST never ends
    rig.write_config([("access", log)], batch_lines=BATCH, stop_timeout="2s", import_timeout="5m")
    service = rig.start_service()
    importer = in_flight(rig, 5)

    started = time.monotonic()
    service.send(signal.SIGTERM)
    code = service.wait(2 + STOP_MARGIN + 5)
    elapsed = time.monotonic() - started
    assert code == 0, service.describe()
    assert elapsed < 2 + STOP_MARGIN, f"took {elapsed:.1f}s to stop\n{service.describe()}"
    assert pid_gone(importer), f"importer {importer} outlived the service"
    text = service.log()
    assert "service.stop_timeout (2s) passed" in text
    assert "on_uncertain = resend" in text

    # Restart with Matomo answering again: the uncertain batch is sent again, whole.
    rig.set_control(None)
    service = rig.start_service()
    wait_for(
        lambda: set(rig.recorded()) >= set(written),
        15,
        "every line recorded after the restart",
        service.describe,
    )
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0
    assert_delivered(rig.recorded(), written, max_duplicates=BATCH)


def test_term_past_stop_timeout_under_skip_moves_past_the_killed_batch_and_says_so(rig):
    """DESIGN §3: a batch killed at shutdown is uncertain; under `skip` it is committed (at most
    once), after the importer is dead, and the log and the counter say so truthfully."""
    log = rig.logs / "access.log"
    written = lines("s", 0, 12)
    append(log, written)
    rig.set_control({"hang_after_lines": 5})
    rig.write_config(
        [("access", log)],
        batch_lines=BATCH,
        stop_timeout="2s",
        import_timeout="5m",
        extra_import='on_uncertain = "skip"\n',
    )
    service = rig.start_service()
    importer = in_flight(rig, 5)
    service.send(signal.SIGTERM)
    assert service.wait(2 + STOP_MARGIN + 5) == 0, service.describe()
    assert pid_gone(importer)
    text = service.log()
    assert "the batch is uncertain: on_uncertain = skip moves past it now" in text
    assert "on_uncertain = skip: moving past the batch (12 lines)" in text
    state = json.loads((rig.state / "access.state.json").read_text())
    assert state["stats"]["uncertain_batches"] == 1
    assert state["position"]["current"]["offset"] == log.stat().st_size

    rig.set_control(None)
    append(log, lines("s", 12, 14))
    service = rig.start_service()
    wait_for(lambda: len(rig.recorded()) >= 7, 15, "the new lines", service.describe)
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0
    assert rig.recorded() == written[:5] + lines("s", 12, 14)  # at most once


def test_reload_during_a_batch_longer_than_stop_timeout_is_refused_not_forced(rig):
    """A reload must not close a log's source under its running batch: that batch's commit
    would be lost (sent twice) while its importer ran on without our lock."""
    log = rig.logs / "access.log"
    written = lines("r", 0, 10)
    append(log, written)
    rig.set_control({"hang_after_lines": 4})
    rig.write_config([("access", log)], batch_lines=BATCH, stop_timeout="1s", import_timeout="4s")
    service = rig.start_service()
    in_flight(rig, 4)
    rig.set_control(None)  # the next run of the importer works

    service.send(signal.SIGHUP)
    service.wait_log("reload: a batch still runs after service.stop_timeout (1s)")
    # import.timeout stops the hung importer; on_uncertain = resend sends the batch again.
    wait_for(
        lambda: set(rig.recorded()) >= set(written),
        15,
        "the batch resent after the importer timed out",
        service.describe,
    )
    service.send(signal.SIGHUP)
    service.wait_log("reloaded")
    more = lines("r", 10, 3)
    append(log, more)
    written += more
    wait_for(lambda: set(rig.recorded()) >= set(written), 15, "lines after the reload")
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0
    assert "Traceback" not in service.log(), service.log()
    assert_delivered(rig.recorded(), written, max_duplicates=BATCH)


def test_sigkill_mid_batch_takes_the_importer_down_and_a_restart_delivers(rig):
    log = rig.logs / "access.log"
    written = lines("k", 0, 15)
    append(log, written)
    rig.set_control({"hang_after_lines": 7})
    rig.write_config([("access", log)], batch_lines=BATCH, import_timeout="5m")
    service = rig.start_service()
    importer = in_flight(rig, 7)

    service.send(signal.SIGKILL)
    assert service.wait(10) == -signal.SIGKILL
    # PR_SET_PDEATHSIG: the kernel kills the importer with us.
    wait_for(lambda: pid_gone(importer), 10, f"importer pid {importer} to die with matomo-rt")

    rig.set_control(None)
    more = lines("k", 15, 3)
    append(log, more)
    written += more
    service = rig.start_service()  # the lock died with the killed process
    wait_for(
        lambda: set(rig.recorded()) >= set(written),
        15,
        "every line recorded after the restart",
        service.describe,
    )
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0
    assert_delivered(rig.recorded(), written, max_duplicates=BATCH)


# ------------------------------------------------------------------------------------------
# One process per log
# ------------------------------------------------------------------------------------------


def test_second_instance_exits_75_naming_the_holder(rig):
    log = rig.logs / "access.log"
    append(log, lines("l", 0, 2))
    rig.write_config([("access", log)])
    first = rig.start_service()

    # The holder's pid and command: which of service, timer or cron to stop.
    holder = f"held by pid {first.pid} ({Path(first.argv[0]).name} -m matomo_rt -c "
    second = rig.start("run")
    assert second.wait(15) == 75, second.describe()
    assert holder in second.log() and " run); another matomo-rt" in second.log()

    once = rig.run("import")
    assert once.returncode == 75, once.stderr
    assert holder in once.stderr

    assert first.running()
    rig.wait_recorded(2)
    first.send(signal.SIGTERM)
    assert first.wait(10) == 0


# ------------------------------------------------------------------------------------------
# sd_notify
# ------------------------------------------------------------------------------------------


class NotifyListener:
    """What systemd does with NOTIFY_SOCKET: read every datagram as it comes.

    It must keep reading: an AF_UNIX datagram queue holds only net.unix.max_dgram_qlen (10)
    messages, and then the sender's send() blocks, as it would with a stalled systemd.
    """

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
        self.dir = Path(tempfile.mkdtemp(prefix="matomo-rt-notify-"))
        self.address = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.address))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            with self.lock:
                self.messages.extend(m for m in data.decode().split("\n") if m)

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.messages)

    def wait(self, wanted: str, after: int = 0, count: int = 1, details=None) -> int:
        """Wait until `wanted` arrived `count` times after index `after`; its last index."""

        def arrived() -> bool:
            return self.snapshot()[after:].count(wanted) >= count

        wait_for(arrived, 10, f"{wanted} x{count} on NOTIFY_SOCKET", details)
        got = self.snapshot()
        return len(got) - 1 - got[::-1].index(wanted)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_sd_notify_ready_watchdog_reloading_stopping(rig):
    listener = NotifyListener()
    try:
        log = rig.logs / "access.log"
        append(log, lines("n", 0, 1))
        rig.write_config([("access", log)], archive_enabled=False)
        service = rig.start(
            "run", env={"NOTIFY_SOCKET": str(listener.address), "WATCHDOG_USEC": "1000000"}
        )

        def details() -> str:
            return f"messages: {listener.snapshot()}\n{service.describe()}"

        ready = listener.wait("READY=1", details=details)
        assert "archiving disabled" in service.wait_log("running:")
        # WATCHDOG_USEC=1s: pinged every half second, after READY=1.
        listener.wait("WATCHDOG=1", after=ready, count=3, details=details)

        service.send(signal.SIGHUP)
        reloading = listener.wait("RELOADING=1", details=details)
        listener.wait("READY=1", after=reloading, details=details)

        service.send(signal.SIGTERM)
        listener.wait("STOPPING=1", after=reloading, details=details)
        assert service.wait(10) == 0
        messages = listener.snapshot()
        assert messages.index("READY=1") < messages.index("WATCHDOG=1")
        assert any(m.startswith("STATUS=") for m in messages), messages
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------
# Matomo unreachable for a while
# ------------------------------------------------------------------------------------------


def test_unreachable_matomo_then_fixed_delivers_the_backlog_in_order(rig):
    log = rig.logs / "access.log"
    written = lines("u", 0, 6)
    append(log, written)
    rig.set_control({"fail": "unreachable"})
    rig.write_config([("access", log)], batch_lines=4)
    service = rig.start_service()

    # Failed ticks (the service backs off: 1 s, 2 s, 4 s ...) while lines keep coming.
    wait_for(
        lambda: len([c for c in rig.importer_ends() if c["exit"] == 1]) >= 1,
        15,
        "a failed import",
        service.describe,
    )
    more = lines("u", 6, 5)
    append(log, more)
    written += more
    wait_for(
        lambda: len([c for c in rig.importer_ends() if c["exit"] == 1]) >= 2,
        15,
        "a second failed import, after the backoff",
        service.describe,
    )
    assert rig.recorded() == []
    assert "Connection refused" in service.log()

    if importlib.util.find_spec("matomo_rt.status") is not None:
        status = rig.run("status", "--json")
        assert status.returncode == 1, status.stdout + status.stderr
        json.loads(status.stdout)
        assert "refused" in status.stdout.lower(), status.stdout

    rig.set_control(None)  # Matomo is back
    rig.wait_recorded(len(written), timeout=20)
    service.send(signal.SIGTERM)
    assert service.wait(10) == 0
    assert_exactly_once(rig.recorded(), written)


# ------------------------------------------------------------------------------------------
# core:archive, one-shot
# ------------------------------------------------------------------------------------------


def archive_state(rig: Rig) -> dict:
    return json.loads((rig.state / "archive.state.json").read_text())


@pytest.mark.parametrize(
    ("mode", "code", "outcome"),
    [("ok", 0, "success"), ("warning", 0, "warning"), ("fail", 1, "failure")],
)
def test_archive_outcomes(rig, mode, code, outcome):
    rig.write_config([("access", rig.logs / "access.log")])
    rig.set_archive_control({"mode": mode})
    done = rig.run("archive")
    assert done.returncode == code, done.stderr
    (run,) = rig.archive_runs()
    assert run["argv"] == ["core:archive", "--no-ansi", f"--url={MATOMO_URL}"]
    assert run["mode"] == mode
    state = archive_state(rig)
    assert state["last_run"]["outcome"] == outcome
    assert state["runs"] == 1
    if outcome == "failure":
        assert "core:archive exited 1" in done.stderr
        assert "last_success" not in state
    else:
        assert "last_success" in state
    if outcome == "warning":
        assert "WARNING" in done.stderr


@pytest.mark.timing
def test_archive_hang_times_out(rig):
    rig.write_config([("access", rig.logs / "access.log")], archive_timeout="1s")
    rig.set_archive_control({"mode": "hang"})
    started = time.monotonic()
    done = rig.run("archive", timeout=20)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 10
    assert "longer than archive.timeout" in done.stderr
    (run,) = rig.archive_runs()  # the double logs the SIGTERM it got
    assert run["signal"] == "SIGTERM"
    assert pid_gone(run["pid"])
    assert archive_state(rig)["last_run"]["outcome"] == "timeout"


def test_two_archives_at_once_the_second_exits_75(rig):
    rig.write_config([("access", rig.logs / "access.log")])
    hold = rig.base / "first-archive-runs"
    hold.touch()  # the first run lasts until the second has been refused
    rig.set_archive_control({"mode": "ok", "while_exists": str(hold)})
    first = rig.start("archive")
    lock = rig.state / "archive.lock"

    def holds_lock() -> bool:
        try:
            return lock.read_text().strip() == str(first.pid)
        except FileNotFoundError:
            return False

    wait_for(holds_lock, 10, "the first archive to take the lock", first.describe)
    second = rig.run("archive")
    assert second.returncode == 75, second.stderr
    assert f"held by pid {first.pid}" in second.stderr
    hold.unlink()
    assert first.wait(15) == 0, first.describe()
    assert len(rig.archive_runs()) == 1  # the second never started core:archive


# ------------------------------------------------------------------------------------------
# The token file, fixed while the service runs (issue 9, item 7)
# ------------------------------------------------------------------------------------------


def test_a_fixed_token_file_lifts_the_pause_without_sighup_and_status_agrees(rig):
    log = rig.logs / "access.log"
    token = rig.base / "token"
    token.write_text("wrong-token\n")
    token.chmod(0o600)
    rig.write_config([("access", log)], token_file=token)
    rig.set_control({"valid_tokens": ["right-token"]})
    append(log, lines("t", 0, 3))
    service = rig.start_service()
    service.wait_log("Matomo refused the token")
    paused = rig.run("status")
    assert paused.returncode == 1 and "AUTH PAUSE" in paused.stdout, paused.stdout

    token.write_text("right-token\n")  # fixed in place: no SIGHUP, no restart
    service.wait_log("INFO: the token file changed: using the new token")
    assert_exactly_once(rig.wait_recorded(3), lines("t", 0, 3))
    service.wait_log("INFO: access: recovered: the authentication pause is over")
    fixed = rig.run("status")
    assert fixed.returncode == 0 and "AUTH PAUSE" not in fixed.stdout, fixed.stdout
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0


def test_scheduled_archive_while_another_archive_runs_is_skipped_in_one_line(rig, caplog):
    """The service's archive tick meets a one-shot `matomo-rt archive` holding the lock (cron
    and service side by side): one line naming the holder, no traceback, core:archive not run."""
    rig.write_config([("access", rig.logs / "access.log")])
    config = load(rig.config_path)
    ensure_dir(config.state.dir)
    _, lock_path = archive_paths(config)
    service = Service(config, rig.config_path)
    with SourceLock(lock_path), caplog.at_level(logging.INFO):
        service._job("archive", service._archive_tick)
    said = [r for r in caplog.records if r.name.startswith("matomo_rt")]
    assert not [r for r in said if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert any("held by pid" in r.getMessage() for r in said), caplog.text
    assert rig.archive_runs() == []


def test_an_import_tick_handed_out_before_a_reload_and_run_after_it_is_skipped(rig, caplog):
    """The scheduler can hand a tick to a thread just before a reload closes the sources, and
    the thread may only get to it once the reload is done: that tick finds its source closed
    and is skipped in silence, not an ERROR with a traceback ("open() the source first")."""
    log_path = rig.logs / "access.log"
    append(log_path, lines("r", 0, 2))
    rig.write_config([("access", log_path)])
    config = load(rig.config_path)
    service = Service(config, rig.config_path)
    service.sources = service._open(config)
    before = service.sources["access"]
    try:
        assert service.reload()
        with caplog.at_level(logging.INFO):
            service._job("import access", service._import_tick, before)
        said = [r for r in caplog.records if r.name.startswith("matomo_rt")]
        assert not [r for r in said if r.exc_info or r.levelno >= logging.ERROR], caplog.text
        assert rig.importer_ends() == []  # nothing was sent for the stale tick
    finally:
        for source in service.sources.values():
            source.close()
