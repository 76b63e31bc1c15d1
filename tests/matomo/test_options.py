"""Resolving configured flags against the options import_logs.py really has.

argparse takes any unambiguous prefix of a long option, so the option list comes from the script
itself (the probe), and each flag is resolved the way argparse would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matomo_rt.matomo.options import PROBE, Options, parse_probe, resolve

DOUBLE = Path(__file__).resolve().parent.parent / "doubles" / "import_logs.py"


def probe(script: Path) -> Options:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    options = parse_probe(done.stdout)
    assert options is not None, done.stdout
    return options


@pytest.fixture(scope="module")
def options() -> Options:
    return probe(DOUBLE)


def test_the_probe_reads_the_scripts_own_option_list(options: Options) -> None:
    assert options.allow_abbrev
    assert options.takes_value["--dry-run"] == "no"
    assert options.takes_value["--exclude-path"] == "yes"
    assert options.takes_value["-d"] == "no"  # count


def test_the_probe_runs_nothing_of_the_import(tmp_path: Path) -> None:
    """The double journals every start; the probe stops it at argument parsing, before that."""
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "IMPORT_DOUBLE_CALLS": str(calls)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(DOUBLE)], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0
    assert '"exit"' not in (calls.read_text() if calls.exists() else "")


def test_a_script_without_an_argparse_parser_gives_no_options(tmp_path: Path) -> None:
    script = tmp_path / "other.py"
    script.write_text("print('hello')\n")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and parse_probe(done.stdout) is None


def test_full_options_with_their_values_are_fine(options: Options) -> None:
    flags = ["--enable-http-errors", "--exclude-path=/health", "-d", "-dd", "--recorders=2"]
    assert resolve(flags, options) == []


@pytest.mark.parametrize(
    ("flag", "words", "fatal"),
    [
        ("--enable-http-err", "abbreviates --enable-http-errors", False),
        ("--useragent-ex=curl", "abbreviates --useragent-exclude", False),
        ("--enable", "is ambiguous (--enable-bots, --enable-http-errors", True),
        ("--no-such-option", "has no such option", True),
        ("--exclude-path", "--exclude-path takes a value: write --exclude-path=VALUE", True),
        ("--enable-bots=1", "--enable-bots takes no value", True),
        ("--recorder=2", "is ambiguous (--recorder-max-payload-size, --recorders)", True),
    ],
)
def test_each_problem_is_named(options: Options, flag: str, words: str, fatal: bool) -> None:
    (finding,) = resolve([flag], options)
    assert words in finding.text and finding.fatal is fatal
    assert "=" not in finding.flag or finding.flag.endswith("=…")


def test_without_abbreviations_a_prefix_is_unknown(options: Options) -> None:
    strict = Options(options.takes_value, allow_abbrev=False)
    (finding,) = resolve(["--enable-http-err"], strict)
    assert "no such option" in finding.text and finding.fatal


@pytest.mark.skipif(
    not os.environ.get("MATOMO_RT_IMPORT_LOGS"), reason="MATOMO_RT_IMPORT_LOGS is not set"
)
def test_the_double_has_the_real_scripts_options(options: Options) -> None:
    real = probe(Path(os.environ["MATOMO_RT_IMPORT_LOGS"]))
    assert real == options
