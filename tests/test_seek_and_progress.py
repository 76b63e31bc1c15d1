"""`matomo-rt seek` moves a log's position (and only while nobody else works on it); a large
backlog imported on a terminal shows its progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matomo_rt import commands
from matomo_rt.config import load
from matomo_rt.tail import SourceLock

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "doubles" / "import_logs.py"


def _line(n: int) -> bytes:
    return (
        json.dumps(
            {
                "ip": "192.0.2.1",
                "host": "example.org",
                "path": f"/s/{n}",
                "status": "200",
                "referrer": "-",
                "user_agent": "Mozilla/5.0",
                "length": "1",
                "generation_time_milli": "0.001",
                "date": "2026-11-27T10:00:00+00:00",
            }
        ).encode()
        + b"\n"
    )


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(n) for n in range(10)))
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[matomo]
url = "http://127.0.0.1:9"
import_logs = "{DOUBLE}"
python = "{sys.executable}"
[import]
start_at = "end"
[state]
dir = "{tmp_path / "state"}"
[[logs]]
name = "web"
path = "{log}"
"""
    )
    record = tmp_path / "record"
    monkeypatch.setenv("IMPORT_DOUBLE_RECORD", str(record))
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", "t0ken")
    return {"log": log, "config": config, "record": record, "state": tmp_path / "state"}


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matomo_rt", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )


def recorded(setup: dict[str, Path]) -> list[bytes]:
    path = setup["record"]
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def test_seek_start_end_and_a_byte(setup: dict[str, Path]) -> None:
    assert cli(setup["config"], "import").returncode == 0
    assert recorded(setup) == []  # start_at = end: the existing lines are history
    assert cli(setup["config"], "seek", "--log", "web", "--to", "start").returncode == 0
    assert cli(setup["config"], "import").returncode == 0
    assert recorded(setup) == [_line(n) for n in range(10)]
    third = sum(len(_line(n)) for n in range(7))
    assert cli(setup["config"], "seek", "--log", "web", "--to", str(third)).returncode == 0
    assert cli(setup["config"], "import").returncode == 0
    assert recorded(setup)[10:] == [_line(n) for n in range(7, 10)]
    assert cli(setup["config"], "seek", "--log", "web", "--to", "start").returncode == 0
    assert cli(setup["config"], "seek", "--log", "web", "--to", "end").returncode == 0
    with setup["log"].open("ab") as fh:
        fh.write(_line(10))
    assert cli(setup["config"], "import").returncode == 0
    assert recorded(setup)[13:] == [_line(10)]


@pytest.mark.parametrize("to", ["5", "99999999", "soon"])
def test_seek_refuses_a_point_that_is_not_a_line_start(setup: dict[str, Path], to: str) -> None:
    done = cli(setup["config"], "seek", "--log", "web", "--to", to)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_seek_is_refused_while_the_log_is_locked(setup: dict[str, Path]) -> None:
    setup["state"].mkdir()
    with SourceLock(setup["state"] / "web.lock"):
        done = cli(setup["config"], "seek", "--log", "web", "--to", "start")
    assert done.returncode == 75 and str(os.getpid()) in done.stderr


def test_a_damaged_state_file_is_moved_aside_then_seek_sets_the_position(
    setup: dict[str, Path],
) -> None:
    assert cli(setup["config"], "import").returncode == 0
    state = setup["state"] / "web.state.json"
    state.write_text("{ damaged")
    done = cli(setup["config"], "import")
    assert done.returncode == 73 and "matomo-rt seek" in done.stderr
    state.rename(state.with_suffix(".json.damaged"))
    assert cli(setup["config"], "seek", "--log", "web", "--to", "end").returncode == 0
    assert cli(setup["config"], "import").returncode == 0
    assert recorded(setup) == []


class _Terminal:
    """A stderr that says it is a terminal and keeps what was written."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_a_large_backlog_on_a_terminal_shows_progress(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(commands, "PROGRESS_MIN_BYTES", 1)  # "large" for this small log
    text = setup["config"].read_text().replace('start_at = "end"', 'start_at = "beginning"')
    setup["config"].write_text(text.replace("[import]", "[import]\nbatch_lines = 3"))
    assert commands.run_import(load(setup["config"]), None) == 0
    updates = [u for u in terminal.text.split("\r") if u.strip()]
    assert len(updates) >= 4 and "web:" in updates[-1] and "(100%)" in updates[-1]
    assert all(" lines/s" in u for u in updates)
    assert " left" in updates[0] and " left" not in updates[-1]  # an ETA until done
    assert terminal.text.endswith("\n")
