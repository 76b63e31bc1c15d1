"""The log file misbehaving: unreadable, deleted, replaced by a directory, a 100 MB line with
no newline, NUL bytes, invalid UTF-8. A clear error, no stall, nothing lost that could be kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.faults.harness import Rig, hit, one_line_error, peak_rss_kib

pytestmark = pytest.mark.e2e

BATCH = 50
SETPRIV = shutil.which("setpriv")


def test_permission_denied(tmp_path: Path, result) -> None:
    if os.geteuid() != 0 or SETPRIV is None:
        pytest.skip("needs root and setpriv to run matomo-rt as an unprivileged user")
    # pytest's base temp directory is private to root: work in a world-traversable one.
    tmp_path = Path(tempfile.mkdtemp(prefix="matomo-rt-faults-"))
    tmp_path.chmod(0o755)
    try:
        _permission_denied(tmp_path, result)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _permission_denied(tmp_path: Path, result) -> None:
    # The venv's interpreter may live under /root; the double needs only the stdlib.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    rig = Rig(tmp_path, batch_lines=BATCH, python=python)
    rig.write_hits(100)
    for path in (rig.state_dir, rig.tmp):
        os.chown(path, 65534, 65534)
    for name in ("record", "calls"):
        (tmp_path / name).touch()
        os.chown(tmp_path / name, 65534, 65534)
    rig.log.chmod(0o600)  # root's, unreadable for nobody
    as_nobody = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [*as_nobody, *rig.argv()], env=rig.env(), capture_output=True, text=True, timeout=60
        )

    denied = run()
    if "Permission denied" in denied.stderr and "matomo-rt" not in denied.stderr:
        pytest.skip(f"the venv is not usable by nobody: {denied.stderr.strip()[:200]}")
    assert denied.returncode == 66, denied.stderr
    errors = one_line_error(denied.stderr)
    assert len(errors) == 1 and "ermission denied" in errors[0] and str(rig.log) in errors[0]
    rig.log.chmod(0o644)
    ok = run()
    assert ok.returncode == 0, ok.stderr
    lost, dups = rig.tally()
    assert (lost, dups) == (0, 0)
    result(
        "log unreadable (permission denied), then readable",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
        notes=errors[0].split(": ERROR: ", 1)[1],
    )


def test_deleted_then_recreated(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH)
    rig.write_hits(100)
    assert rig.run().returncode == 0
    rig.write_hits(50)  # never read: deleted with the file, nobody can keep them
    gone = rig.written[-50:]
    rig.log.unlink()
    missing = rig.run()
    one_line_error(missing.stderr)
    assert missing.returncode in (0, 66), missing.stderr
    rig.written = [x for x in rig.written if x not in gone]
    rig.write_hits(30, tag="new")
    again = rig.run()
    assert again.returncode == 0, again.stderr
    lost, dups = rig.tally()
    assert (lost, dups) == (0, 0)
    result(
        "log deleted (with unread lines), then recreated",
        iterations=1,
        written=len(rig.written) + len(gone),
        lost=lost,
        duplicated=dups,
        bound="0",
        notes=f"{len(gone)} unread lines deleted with the file are not counted as lost;"
        f" exit {missing.returncode}: {_first_message(missing.stderr)}",
    )


def test_replaced_by_directory(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH)
    rig.write_hits(100)
    assert rig.run().returncode == 0
    rig.log.unlink()
    rig.log.mkdir()
    bad = rig.run(timeout=60)
    assert bad.returncode == 66, bad.stderr
    errors = one_line_error(bad.stderr)
    assert len(errors) == 1 and str(rig.log) in errors[0], errors
    rig.log.rmdir()
    rig.write_hits(30, tag="new")
    again = rig.run()
    assert again.returncode == 0, again.stderr
    lost, dups = rig.tally()
    assert (lost, dups) == (0, 0)
    result(
        "log replaced by a directory, then a file again",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
        notes=errors[0].split(": ERROR: ", 1)[1],
    )


def test_huge_line_without_newline(tmp_path: Path, result) -> None:
    size = 100 << 20
    rig = Rig(tmp_path, batch_lines=BATCH, batch_bytes="8MiB")
    rig.write_hits(100)
    with open(rig.log, "ab") as f:
        block = b"x" * (1 << 20)
        for _ in range(size >> 20):
            f.write(block)
    proc = rig.popen()
    peak = _watch_peak(proc.pid)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert rig.recorded() == rig.written  # the partial line is not handed on
    # The writer finishes the line (now garbage) and goes on: no stall behind it.
    rig.append([b"\n"], keep=False)
    rig.write_hits(100, tag="after")
    proc = rig.popen()
    peak2 = _watch_peak(proc.pid)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    lost, dups = rig.tally()
    assert (lost, dups) == (0, 0)
    assert "Traceback" not in err.decode()
    quarantined = rig.stats().get("quarantined", 0)
    assert quarantined == 1
    rss = max(peak(), peak2())
    # Skipped in buffer-sized reads (matomo_rt.pipeline.MAX_LINE_BYTES), never held whole.
    assert rss < 64 * 1024, f"peak RSS {rss} KiB for a 100 MB line"
    result(
        "log: a 100 MB line without a newline (then finished)",
        iterations=1,
        written=len(rig.written),
        lost=lost,
        duplicated=dups,
        bound="0",
        notes=f"partial line held back, then quarantined; peak RSS {rss // 1024} MiB",
    )


def test_nul_bytes_and_invalid_utf8(tmp_path: Path, result) -> None:
    rig = Rig(tmp_path, batch_lines=BATCH)
    rig.write_hits(60)
    rig.append([b"\0" * 4096 + b"\n"], keep=False)  # a crash's NUL padding, as a line
    rig.append([b"\0\0\0" + hit(0, tag="nul-prefixed")], keep=False)
    rig.append(
        [hit(1, tag="utf8", user_agent="Mozilla/5.0").replace(b"Mozilla", b"Moz\xff\xfeilla")]
    )
    rig.append([hit(2, tag="nul-inside").replace(b"Mozilla", b"Moz\\u0000illa")])
    rig.write_hits(60, tag="after")
    done = rig.run(timeout=60)
    assert done.returncode == 0, done.stderr
    one_line_error(done.stderr)
    lost, dups = rig.tally()
    assert (lost, dups) == (0, 0)
    stats = rig.stats()
    assert stats.get("quarantined", 0) == 2, stats
    quarantine = (rig.state_dir / "access.quarantine.jsonl").read_bytes()
    assert quarantine.count(b"\n") == 2
    result(
        "log: NUL bytes, invalid UTF-8",
        iterations=1,
        written=len(rig.written) + 2,
        lost=lost,
        duplicated=dups,
        bound="0",
        notes="2 NUL lines quarantined with their reason; invalid UTF-8 imported",
    )


def _first_message(stderr: str) -> str:
    for line in stderr.splitlines():
        if ": WARNING: " in line or ": ERROR: " in line:
            return line.split(": ", 2)[-1]
    return "(silent)"


def _watch_peak(pid: int):
    """Poll VmHWM (the kernel's own peak) until the process ends; returns a getter."""
    peak = [0]

    def watch() -> None:
        while True:
            value = peak_rss_kib(pid)
            if value is None:
                return
            peak[0] = max(peak[0], value)
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def get() -> int:
        thread.join(timeout=5)
        return peak[0]

    return get
