"""`matomo-rt -c CONFIG import` as a real process: exit codes, --log, --dry-run, the lock, and
configuration errors (one line per problem, never a traceback)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from matomo_rt.tail import SourceLock
from tests.test_pipeline import CLI, Rig, lines_of, log_line, make_rig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return make_rig(tmp_path, monkeypatch)


def matomo_rt(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `matomo-rt -c <rig's config> ARGS` to completion."""
    return subprocess.run(
        [*CLI, "-c", str(rig.config_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


API_LOG = """
[[logs]]
name = "api"
path = "{path}"
"""


def test_import_exits_0_when_caught_up(rig: Rig) -> None:
    rig.write_config(batch_lines=4)
    data = lines_of(0, 10)
    rig.append(data)
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 0, proc.stderr
    assert "web: caught up: 10 lines read, 10 imported, 0 quarantined, 3 batches" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert rig.recorded() == data
    assert rig.offset() == rig.log.stat().st_size
    # Again: nothing new, nothing sent.
    assert matomo_rt(rig, "import").returncode == 0
    assert len(rig.starts()) == 3 and rig.recorded() == data


def test_import_creates_the_state_directory(rig: Rig) -> None:
    rig.state.rmdir()
    rig.state = rig.tmp / "var" / "lib" / "matomo-rt"
    rig.write_config()
    rig.append(lines_of(0, 2))
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 0, proc.stderr
    assert rig.offset() == rig.log.stat().st_size


def test_import_only_the_named_log(rig: Rig) -> None:
    api = rig.tmp / "api.log"
    api_lines = [log_line(i, host="api.example.org") for i in range(3)]
    api.write_bytes(b"".join(api_lines))
    rig.write_config(extra_logs=API_LOG.format(path=api))
    rig.append(lines_of(0, 5))
    proc = matomo_rt(rig, "import", "--log", "api")
    assert proc.returncode == 0, proc.stderr
    assert "api: caught up" in proc.stderr and "web:" not in proc.stderr
    assert rig.recorded() == api_lines
    assert rig.offset("api") == api.stat().st_size
    assert rig.state_doc("web") == {}

    proc = matomo_rt(rig, "import", "--log", "nope")
    assert proc.returncode == 78
    assert "no [[logs]] entry named 'nope' (known: web, api)" in proc.stderr


def test_dry_run_commits_nothing_and_records_nothing(rig: Rig) -> None:
    rig.write_config(batch_lines=4)
    rig.append([*lines_of(0, 6), b"not json\n", *lines_of(6, 9)])
    proc = matomo_rt(rig, "import", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "caught up: 10 lines read, 9 imported, 1 quarantined" in proc.stderr
    assert rig.recorded() == []
    starts = rig.starts()
    assert starts and all("--dry-run" in c["argv"] for c in starts)
    assert rig.offset() == 0 and rig.state_doc() == {}
    assert rig.quarantined() == []

    # The real import afterwards still has everything to do.
    assert matomo_rt(rig, "import").returncode == 0
    assert len(rig.recorded()) == 9 and len(rig.quarantined()) == 1


def test_second_instance_exits_75_naming_the_holder(rig: Rig) -> None:
    rig.write_config()
    rig.append(lines_of(0, 3))
    with SourceLock(rig.state / "web.lock"):
        proc = matomo_rt(rig, "import")
    assert proc.returncode == 75
    assert f"held by pid {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert rig.starts() == [] and rig.offset() == 0
    assert matomo_rt(rig, "import").returncode == 0  # released: it goes through


def test_invalid_config_exits_78_with_one_line_per_problem(rig: Rig) -> None:
    rig.config_path.write_text(
        "[matomo]\n"
        'url = "ftp://matomo.example"\n'
        "colour = 1\n"
        "[import]\n"
        "batch_lines = 0\n"
        'on_uncertain = "maybe"\n'
        "[[logs]]\n"
        'name = "web"\n'
    )
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 78
    lines = proc.stderr.splitlines()
    assert len(lines) == 5, proc.stderr
    assert all(x.startswith("matomo-rt: ERROR: config.toml: ") for x in lines)
    for key in ("matomo.url", "matomo.colour", "import.batch_lines", "import.on_uncertain"):
        assert sum(f": {key}: " in x for x in lines) == 1, key
    assert sum("logs[0].path: missing" in x for x in lines) == 1
    assert "Traceback" not in proc.stderr


def test_incomplete_config_for_import_exits_78(rig: Rig) -> None:
    rig.config_path.write_text(f'[state]\ndir = "{rig.state}"\n')
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 78
    lines = proc.stderr.splitlines()
    assert [x.split(": ")[3] for x in lines] == ["matomo.url", "matomo.path", "logs"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_token_file_problem_exits_78_in_one_line(rig: Rig, problem: str) -> None:
    rig.write_config()
    if problem == "missing":
        rig.token_file.unlink()
    else:
        rig.token_file.write_text("\n")
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 78
    (line,) = proc.stderr.splitlines()
    assert "matomo.token_auth_file" in line and str(rig.token_file) in line
    assert rig.starts() == []


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "-c", str(tmp_path / "nope.toml"), "import"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 78
    (line,) = proc.stderr.splitlines()
    assert "nope.toml: no such file" in line


def test_failed_import_exits_1_and_auth_exits_77(rig: Rig) -> None:
    rig.write_config()
    rig.append(lines_of(0, 3))
    rig.set_control(fail="unreachable")
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 1
    assert "Connection refused" in proc.stderr
    rig.set_control(fail="auth")
    proc = matomo_rt(rig, "import")
    assert proc.returncode == 77
    assert "refused the token" in proc.stderr
    assert rig.stats()["auth_pause"]["until"] > time.time()
    assert rig.recorded() == [] and rig.offset() == 0
