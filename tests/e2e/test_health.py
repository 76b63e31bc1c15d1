"""The first hour's traps, each with a real `matomo-rt` process in the exact situation: the
exit code, the message naming the thing at fault and the way out, and a service that says a
change of health once (ERROR on the way in, INFO on recovery), never every tick.

The import_logs.py and console doubles stand in for Matomo (see tests/e2e/harness.py).
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.e2e.harness import Rig, access_line, append, wait_for
from tests.e2e.nginx import needs_nginx, raw_get, running_nginx, traversable_dir

pytestmark = pytest.mark.e2e

COMBINED = (
    '203.0.113.9 - - [01/Mar/2026:12:00:{s:02d} +0100] "GET /c/{n} HTTP/1.1" 200 512 '
    '"-" "Mozilla/5.0 (X11; Linux x86_64)"\n'
)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def ticks(service, count: int) -> None:
    """Wait until the scheduler ran `count` more import jobs (its -vv lines say so)."""
    done = re.compile(r'Job "import \S+ .*executed successfully')
    service.wait_log(done, timeout=20, count=len(done.findall(service.log())) + count)


def unable_to_override_permissions() -> list[str]:
    """A command prefix under which file permissions apply, even for root.

    The tests run as root in CI, and root reads a mode-000 file anyway: drop the two
    capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), keeping uid 0 so the
    test's own root-owned files stay reachable as their owner.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


# ------------------------------------------------------------------------------------------
# logs.path wrong
# ------------------------------------------------------------------------------------------


def test_a_wrong_log_path_is_66_for_import_a_problem_for_status_and_one_error_for_run(rig):
    real = rig.logs / "access.log"
    wrong = rig.logs / "acces.log"
    append(real, [access_line("/p/0")])
    rig.write_config(
        [("access", wrong)], extra=f'\n[metrics]\ntextfile = "{rig.base / "matomo_rt.prom"}"\n'
    )

    once = rig.run("import")
    assert once.returncode == 66, once.stderr
    assert f"access: {wrong}: no such file; check logs.path in the config" in once.stderr

    status = rig.run("status")
    assert status.returncode == 1, status.stdout
    assert "all fine" not in status.stdout
    assert "position      not read yet" in status.stdout
    assert "between generations" not in status.stdout and " at ?" not in status.stdout
    assert f"access: {wrong}: no such file\n    what to do: check logs.path" in status.stdout

    service = rig.start("-vv", "run")
    service.wait_log(f"ERROR: access: {wrong}: no such file; check logs.path")
    ticks(service, 3)
    assert service.log().count("ERROR: access: ") == 1, service.log()

    # The metrics say the same, from the service's memory.
    prom = rig.base / "matomo_rt.prom"
    missing = 'matomo_rt_problem{log="access",problem="log_missing"} 1.0'
    wait_for(lambda: prom.exists() and missing in prom.read_text(), 10, "the textfile")
    assert 'matomo_rt_healthy{log="access"} 0.0' in prom.read_text()

    os.link(real, wrong)  # the path fixed: the log appears where the config says
    service.wait_log("INFO: access: recovered: the log file is back")
    rig.wait_recorded(1)
    wait_for(lambda: 'matomo_rt_healthy{log="access"} 1.0' in prom.read_text(), 10, "healthy")
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0
    assert rig.run("status").returncode == 0


# ------------------------------------------------------------------------------------------
# Log not readable by the service's user
# ------------------------------------------------------------------------------------------


def test_a_log_the_service_cannot_read_is_66_and_a_problem_status_sees_as_root(rig):
    prefix = unable_to_override_permissions()
    log = rig.logs / "access.log"
    append(log, [access_line("/p/0"), access_line("/p/1")])
    log.chmod(0)
    rig.write_config([("access", log)])

    once = rig.run("import", prefix=prefix)
    assert once.returncode == 66, once.stderr
    assert "cannot be read by the service: permission denied" in once.stderr
    assert "add the service's user to the log's group" in once.stderr

    service = rig.start("-vv", "run", prefix=prefix)
    service.wait_log("ERROR: access: ")
    ticks(service, 3)
    assert service.log().count("ERROR: access: ") == 1, service.log()

    # `status` runs with every privilege and could read the file itself: the verdict is
    # the service's own record.
    status = rig.run("status")
    assert status.returncode == 1, status.stdout
    assert f"access: {log}: cannot be read by the service: permission denied" in status.stdout
    assert "what to do: add the service's user to the log's group" in status.stdout

    log.chmod(0o644)
    service.wait_log("INFO: access: recovered: the log file is readable again")
    rig.wait_recorded(2)
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0


# ------------------------------------------------------------------------------------------
# nginx still in its default "combined" format
# ------------------------------------------------------------------------------------------


def test_a_log_in_nginx_combined_format_is_named_wrong_format_with_the_fix(rig):
    log = rig.logs / "access.log"
    append(log, [COMBINED.format(s=n % 60, n=n).encode() for n in range(30)])
    rig.write_config([("access", log)])

    once = rig.run("import")
    assert once.returncode == 65, once.stderr
    message = (
        "30 of the last 30 lines quarantined or unparseable (100%): the log is not in its"
        " format (nginx_json)"
    )
    assert message in once.stderr
    assert "the log_format of contrib/nginx/matomo-rt-log-format.conf" in once.stderr
    assert "it is combined" in once.stderr and 'set format = "combined"' in once.stderr

    status = rig.run("status")
    assert status.returncode == 1, status.stdout
    assert message in status.stdout and "all fine" not in status.stdout
    assert 'what to do: set format = "combined" for this log' in status.stdout
    assert "the log_format of contrib/nginx/matomo-rt-log-format.conf" in status.stdout

    service = rig.start("-vv", "run")
    append(log, [COMBINED.format(s=n % 60, n=n).encode() for n in range(30, 40)])
    service.wait_log("quarantined a line")
    ticks(service, 2)
    append(log, [COMBINED.format(s=n % 60, n=n).encode() for n in range(40, 50)])
    ticks(service, 2)
    assert service.log().count("ERROR: access: ") == 1, service.log()
    assert "the log is not in its format (nginx_json)" in service.log()
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0


@needs_nginx
def test_a_real_nginx_in_its_default_combined_format_is_named_wrong_format(rig):
    """The exact first-hour trap: nginx's stock `access_log FILE;` (format `combined`)."""
    with traversable_dir() as base:
        combined = base / "logs" / "combined.log"
        with running_nginx(base, extra_http=f"access_log {combined};") as ngx:
            for n in range(12):
                assert raw_get(ngx.port, f"/c/{n}".encode(), {b"Host": b"test.example"}) == 200
            wait_for(
                lambda: combined.exists() and combined.read_bytes().count(b"\n") >= 12,
                10,
                "12 lines in nginx's combined log",
            )
        assert b'"GET /c/0 HTTP/1.1" 200' in combined.read_bytes()  # really combined
        rig.write_config([("access", combined)])
        once = rig.run("import")
        assert once.returncode == 65, once.stderr
        assert "12 of the last 12 lines quarantined or unparseable (100%)" in once.stderr
        assert "it is combined (nginx's default" in once.stderr
        assert 'set format = "combined"' in once.stderr
        assert "contrib/nginx/matomo-rt-log-format.conf" in once.stderr
        status = rig.run("status")
        assert status.returncode == 1, status.stdout
        assert "the log is not in its format (nginx_json)" in status.stdout
        assert "all fine" not in status.stdout

        # The other way out the message names: tell matomo-rt the format nginx writes.
        rig.write_config([("combined", combined)], extra='format = "combined"\nidsite = 1\n')
        fixed = rig.run("import")
        assert fixed.returncode == 0, fixed.stderr
        assert len(rig.recorded()) == 12
        status = rig.run("status")
        assert status.returncode == 0 and "all fine" in status.stdout, status.stdout


# ------------------------------------------------------------------------------------------
# A pass longer than the interval
# ------------------------------------------------------------------------------------------


def test_a_pass_longer_than_the_interval_is_one_info_line_not_scheduler_warnings(rig):
    log = rig.logs / "access.log"
    append(log, [access_line("/p/0")])
    rig.write_config([("access", log)], interval="1s", import_timeout="4s")
    rig.set_control({"fail": "hang"})  # the importer never answers until the timeout
    service = rig.start_service()
    service.wait_log("INFO: access: the running pass takes longer than the interval")
    service.wait_log("timed out", timeout=20)
    text = service.log()
    assert "maximum number of running instances" not in text, text
    assert "skipped" not in text, text
    # Once per long pass, not once per skipped tick (three or four ticks came meanwhile).
    assert text.count("takes longer than the interval") == 1, text
    rig.set_control(None)
    rig.wait_recorded(1, timeout=30)
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0


# ------------------------------------------------------------------------------------------
# A never-read log
# ------------------------------------------------------------------------------------------


def test_a_log_never_read_is_a_problem_with_the_next_step(rig):
    log = rig.logs / "access.log"
    append(log, [access_line("/p/0")])
    rig.write_config([("access", log)])
    status = rig.run("status")
    assert status.returncode == 1, status.stdout
    assert "no state yet: nothing committed (first run pending)" in status.stdout
    assert f"access: {log}: never read (no state yet)" in status.stdout
    assert "what to do: start the service" in status.stdout
    assert " at ?" not in status.stdout

    assert rig.run("import").returncode == 0
    after = rig.run("status")
    assert after.returncode == 0, after.stdout
    assert "all fine" in after.stdout


# ------------------------------------------------------------------------------------------
# The state cannot be written
# ------------------------------------------------------------------------------------------


def test_a_state_dir_the_service_cannot_write_is_said_once_counted_and_seen_by_status(rig):
    """The state directory turns read-only for the service mid-run: one ERROR (not one per
    retry), the metrics count the refused writes and name the problem, `status` (as root)
    says it too and exits 1; once writable again: one INFO, and every line arrives once."""
    prefix = unable_to_override_permissions()
    log = rig.logs / "access.log"
    prom = rig.base / "matomo_rt.prom"
    append(log, [access_line("/p/0")])
    rig.write_config([("access", log)], extra=f'\n[metrics]\ntextfile = "{prom}"\n')
    service = rig.start("-vv", "run", prefix=prefix)
    rig.wait_recorded(1)
    ticks(service, 1)
    rig.state.chmod(0o555)
    try:
        append(log, [access_line("/p/1"), access_line("/p/2")])
        service.wait_log("ERROR: access: state cannot be written since ", timeout=20)
        problem = 'matomo_rt_problem{log="access",problem="state_unwritable"} 1.0'
        wait_for(lambda: problem in prom.read_text(), 10, "the problem in the textfile")
        assert re.search(
            r'matomo_rt_state_write_failures_total\{log="access"\} [1-9]', prom.read_text()
        )
        ticks(service, 3)
        assert service.log().count("ERROR: access: ") == 1, service.log()
        assert len(rig.recorded()) == 1  # nothing imported that could not be committed
        status = rig.run("status")
        assert status.returncode == 1, status.stdout
        assert "access: state cannot be written since " in status.stdout
        assert f"{rig.state}: no write permission for uid {os.geteuid()}" in status.stdout
    finally:
        rig.state.chmod(0o755)
    service.wait_log("INFO: access: recovered: the state is written again", timeout=60)
    rig.wait_recorded(3)
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0
    assert rig.run("status").returncode == 0
    assert len(rig.recorded()) == 3


def test_a_metrics_textfile_that_cannot_be_written_is_said_once_not_after_every_job(rig):
    """The textfile is rewritten after every job (every second here): a refused write is one
    WARNING, and one INFO when it works again, not a warning per job."""
    prefix = unable_to_override_permissions()
    log = rig.logs / "access.log"
    append(log, [access_line("/p/0")])
    textdir = rig.base / "textfile"
    textdir.mkdir()
    prom = textdir / "matomo_rt.prom"
    rig.write_config([("access", log)], extra=f'\n[metrics]\ntextfile = "{prom}"\n')
    textdir.chmod(0o555)
    try:
        service = rig.start("-vv", "run", prefix=prefix)
        service.wait_log("WARNING: metrics.textfile: ")
        ticks(service, 3)
        assert service.log().count("WARNING: metrics.textfile: ") == 1, service.log()
        assert "metrics.textfile: metrics.textfile" not in service.log()
    finally:
        textdir.chmod(0o755)
    service.wait_log("INFO: metrics.textfile: written again")
    wait_for(prom.exists, 10, "the textfile")
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0


# ------------------------------------------------------------------------------------------
# core:archive never succeeded since the service started
# ------------------------------------------------------------------------------------------


def test_an_archive_that_never_ran_is_stale_from_the_service_s_start(rig):
    """No core:archive run ever recorded (here: a schedule that does not fire; in life also an
    archive job failing before it records a run): stale once health.archive_stale_after has
    passed since the service started, in its log (once), its metrics and `status`."""
    log = rig.logs / "access.log"
    append(log, [access_line("/p/0")])
    prom = rig.base / "matomo_rt.prom"
    rig.write_config(
        [("access", log)],
        archive_schedule="0 0 1 1 *",
        extra=f'\n[metrics]\ntextfile = "{prom}"\n\n[health]\narchive_stale_after = "2s"\n',
    )
    service = rig.start("-vv", "run")
    line = "ERROR: archive: no core:archive run has succeeded since the service started"
    service.wait_log(line, timeout=20)
    stale = 'matomo_rt_archive_problem{problem="archive_stale"} 1.0'
    wait_for(lambda: prom.exists() and stale in prom.read_text(), 10, "the textfile")
    status = rig.run("status")
    assert status.returncode == 1, status.stdout
    assert "archive: no core:archive run has succeeded since the service started" in status.stdout
    ticks(service, 2)
    assert service.log().count(line) == 1, service.log()
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0


# ------------------------------------------------------------------------------------------
# `archive` is not minutes of silence
# ------------------------------------------------------------------------------------------


def test_archive_on_a_terminal_shows_its_elapsed_time(rig):
    rig.write_config([("access", rig.logs / "access.log")])
    rig.set_archive_control({"mode": "ok", "seconds": 2.5})
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            rig.argv("archive"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            cwd=rig.base,
            env=rig.env(),
        )
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(10) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = output.decode("utf-8", "replace")
    assert "core:archive: started" in text
    assert "\rcore:archive: running for 1s" in text and "running for 2s" in text, text
    assert "core:archive done in" in text


def test_archive_off_a_terminal_says_it_started(rig):
    rig.write_config([("access", rig.logs / "access.log")])
    done = rig.run("archive")
    assert done.returncode == 0, done.stderr
    assert "INFO: core:archive: started" in done.stderr
    assert "running for" not in done.stderr  # no carriage-return progress into a file


# ------------------------------------------------------------------------------------------
# --help lists every exit code `import` returns
# ------------------------------------------------------------------------------------------


def test_import_help_lists_65_and_66(rig):
    rig.write_config([("access", rig.logs / "access.log")])
    shown = rig.run("import", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "65 most recent lines of a log were quarantined" in text
    assert "66 a log file is missing or unreadable" in text
    assert "73 the state cannot be written" in text
