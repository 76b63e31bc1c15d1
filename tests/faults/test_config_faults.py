"""Each kind of bad configuration value: exit 78, one line per problem naming its key path,
no traceback, and every problem of a file reported at once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.faults.harness import CLI, DOUBLE, one_line_error

pytestmark = pytest.mark.e2e

BASE = {
    "matomo": {"url": '"http://matomo.test"', "import_logs": f'"{DOUBLE}"'},
    "import": {},
    "logs": {"path": '"LOG"'},
    "state": {"dir": '"STATE"'},
    "archive": {"enabled": "false"},
}

#: (key path as reported, section, key, bad TOML value)
CASES = [
    ("matomo.url", "matomo", "url", '"not a url"'),
    ("matomo.url", "matomo", "url", "42"),
    ("matomo.python", "matomo", "python", '""'),
    ("import.interval", "import", "interval", '"5x"'),
    ("import.interval", "import", "interval", "-1"),
    ("import.timeout", "import", "timeout", '"soon"'),
    ("import.batch_lines", "import", "batch_lines", '"abc"'),
    ("import.batch_lines", "import", "batch_lines", "0"),
    ("import.batch_bytes", "import", "batch_bytes", '"8 parsecs"'),
    ("import.on_uncertain", "import", "on_uncertain", '"maybe"'),
    ("import.start_at", "import", "start_at", '"middle"'),
    ("import.flags", "import", "flags", '"--one-string"'),
    ("import.recorders", "import", "recorders", "1.5"),
    ("import.bogus", "import", "bogus", "1"),
    ("logs[0].idsite", "logs", "idsite", '"one"'),
    ("logs[0].name", "logs", "name", '"a/b"'),
    ("archive.schedule", "archive", "schedule", '"every hour"'),
    ("archive.enabled", "archive", "enabled", '"yes"'),
    ("state.dir", "state", "dir", "5"),
    ("metrics.listen", "metrics", "listen", '"nowhere"'),
]


def _write(tmp_path: Path, overrides: list[tuple[str, str, str]]) -> Path:
    tables = {name: dict(keys) for name, keys in BASE.items()}
    for section, key, value in overrides:
        tables.setdefault(section, {})[key] = value
    lines = []
    for name, keys in tables.items():
        lines.append(f"[[{name}]]" if name == "logs" else f"[{name}]")
        for key, value in keys.items():
            value = value.replace("LOG", str(tmp_path / "access.log"))
            value = value.replace("STATE", str(tmp_path / "state"))
            lines.append(f"{key} = {value}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "access.log").touch()
    return path


def _run(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "-c", str(config), "import"], capture_output=True, text=True, timeout=60
    )


def test_each_bad_value(tmp_path: Path, result) -> None:
    failures = []
    for i, (key_path, section, key, value) in enumerate(CASES):
        directory = tmp_path / f"case{i}"
        directory.mkdir()
        done = _run(_write(directory, [(section, key, value)]))
        errors = one_line_error(done.stderr)
        named = [e for e in errors if f"config.toml: {key_path}:" in e]
        if done.returncode != 78 or not named or len(errors) != 1:
            failures.append(f"{key_path} = {value}: exit {done.returncode}, {errors}")
    assert not failures, "\n".join(failures)
    result(
        "config: each kind of bad value",
        iterations=len(CASES),
        written=0,
        lost=0,
        duplicated=0,
        bound="exit 78, one line naming the key path, no traceback",
    )


def test_log_path_of_wrong_type_is_one_line(tmp_path: Path) -> None:
    done = _run(_write(tmp_path, [("logs", "path", "7")]))
    errors = one_line_error(done.stderr)
    assert done.returncode == 78 and len(errors) == 1, errors


def test_all_problems_at_once_and_syntax(tmp_path: Path) -> None:
    picked = [CASES[3], CASES[6], CASES[9], CASES[18]]
    done = _run(_write(tmp_path, [(s, k, v) for _, s, k, v in picked]))
    assert done.returncode == 78
    errors = one_line_error(done.stderr)
    for key_path, *_ in picked:
        assert any(f"config.toml: {key_path}:" in e for e in errors), (key_path, errors)
    broken = tmp_path / "broken.toml"
    broken.write_text("[matomo\nurl =\n")
    done = _run(broken)
    errors = one_line_error(done.stderr)
    assert done.returncode == 78 and len(errors) == 1 and "line 1" in errors[0], errors
