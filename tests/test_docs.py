"""The docs users read match the code: README's configuration table, config.example.toml and
the dataclasses in matomo_rt.config list the same keys with the same defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from matomo_rt import config as cfg

ROOT = Path(__file__).resolve().parent.parent
_SECTIONS = {
    "matomo": cfg.MatomoConfig,
    "import": cfg.ImportConfig,
    "archive": cfg.ArchiveConfig,
    "state": cfg.StateConfig,
    "metrics": cfg.MetricsConfig,
    "service": cfg.ServiceConfig,
    "health": cfg.HealthConfig,
    "logs[]": cfg.LogConfig,
}


def _code_keys() -> set[str]:
    return {
        f"{section}.{f.name}" for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
    }


def _example_keys() -> set[str]:
    """Every key of config.example.toml, the commented-out optional ones included."""
    keys = set()
    section = ""
    for line in (ROOT / "config.example.toml").read_text().splitlines():
        head = re.match(r"^\[\[?(\w+)\]\]?", line)
        if head:
            section = head.group(1) + ("[]" if line.startswith("[[") else "")
            continue
        key = re.match(r"^#?\s?(\w+) = ", line)
        if key and section:
            keys.add(f"{section}.{key.group(1)}")
    return keys


def _readme_keys() -> set[str]:
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `([\w\[\]]+\.\w+)` \|", text, re.MULTILINE))


def test_example_documents_every_key_and_no_other() -> None:
    assert _example_keys() == _code_keys()


def test_readme_reference_lists_every_key_and_no_other() -> None:
    assert _readme_keys() == _code_keys()


def test_example_loads_with_the_documented_defaults() -> None:
    loaded = cfg.load(ROOT / "config.example.toml")
    assert loaded.import_ == cfg.ImportConfig()
    assert loaded.archive == cfg.ArchiveConfig()
    assert loaded.service == cfg.ServiceConfig()
    assert loaded.health == cfg.HealthConfig()
    assert loaded.state == cfg.StateConfig()


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    setup = readme.split("## Set up and test", 1)[1]
    command = re.search(r"^    (\.venv/bin/python -m pytest [^\n]*)$", setup, re.MULTILINE)
    assert command, "README's 'Set up and test' gives no test command"
    assert f"\nstep {command[1]}\n" in ci, f".ci/run does not run README's {command[1]!r}"


def test_readme_commands_table_lists_every_command() -> None:
    import argparse

    from matomo_rt.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z-]+)[ `]", readme, re.MULTILINE))
    assert set(sub.choices) <= listed


def test_readme_runs_check_as_check_and_init_advise() -> None:
    from matomo_rt.check_files import RUN_AS_SERVICE

    assert RUN_AS_SERVICE in (ROOT / "README.md").read_text()


def _outcome_references() -> list[tuple[Path, str]]:
    """(test file, test name) for every test docs/outcomes.md names: `prefix::test_x` with the
    prefixes its introduction defines, or `tests/…py::test_x` in full."""
    text = (ROOT / "docs" / "outcomes.md").read_text()
    prefixes = dict(re.findall(r"`(\w+)` is\s+`(tests/[\w/]+\.py)`", text))
    refs = []
    for module, name in re.findall(r"`([\w/.]+)::(test_\w+)`", text):
        path = module if module.endswith(".py") else prefixes.get(module)
        assert path is not None, f"docs/outcomes.md: no file given for `{module}::`"
        refs.append((ROOT / path, name))
    return refs


def test_outcomes_names_only_tests_that_exist() -> None:
    refs = _outcome_references()
    assert len(refs) > 50
    missing = [
        f"{path.relative_to(ROOT)}::{name}"
        for path, name in refs
        if not path.is_file() or not re.search(rf"^def {name}\(", path.read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/outcomes.md names tests that do not exist: {missing}"


def test_every_fault_test_file_has_its_rows_in_reliability() -> None:
    """docs/reliability.md is regenerated from a run of the whole fault suite: a fault test
    file without a row there was added after the last run (tests/faults/report.py)."""
    files = sorted(p.name for p in (ROOT / "tests" / "faults").glob("test_*.py"))
    reliability = (ROOT / "docs" / "reliability.md").read_text()
    assert [f for f in files if f"`{f}`" not in reliability] == []
