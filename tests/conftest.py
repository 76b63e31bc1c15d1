"""What the default test command runs, and how hard the property tests search.

The default command (README: `pytest -q -n 6`) is the fast suite. Two directories hold slower
suites that run as their own steps in `.ci/run` and are deselected unless asked for:

* `tests/faults/` (marker `faults`): the fault-injection suite behind docs/reliability.md;
* `tests/realmatomo/` (marker `matomo`): end-to-end against a real Matomo (`MATOMO_RT_MATOMO`).

They run with `-m faults` / `-m matomo`, or when named on the command line
(`pytest tests/faults`, `pytest tests/realmatomo/test_x.py::test_y`).

Tests marked `timing` assert on elapsed time: they share one xdist group, so they run one after
another on one worker instead of competing with each other for the CPU.

Hypothesis: the `dev` profile (default) keeps property tests quick; `HYPOTHESIS_PROFILE=ci`
(set by .ci/run) searches ten times as many examples; `stress` searches 3,000 (minutes per
property test: run it by hand on the one you changed) and prints the blob that replays a failure.

Bytecode: the suite starts about a thousand Python processes (matomo-rt, the import_logs.py double,
the console double, xdist workers). Under `PYTHONDONTWRITEBYTECODE` each of them compiled every
module it imported, again, and each xdist worker rewrote every test module's asserts again (2.7 s
of CPU per worker). The suite keeps that variable's promise (no `__pycache__` beside the sources)
and still compiles each file once, into pytest's own cache directory (`.pytest_cache/`, emptied by
`--cache-clear`); the first run fills it (the standard library too). With the cache plugin off
(`-p no:cacheprovider`) nothing changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parent

#: Directory -> marker: every test under it carries the marker and is opt-in.
OPT_IN = {TESTS / "faults": "faults", TESTS / "realmatomo": "matomo"}

settings.register_profile(
    "dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "stress",
    max_examples=3000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config: pytest.Config) -> None:
    """Compile each file once, outside the source tree, when bytecode writes are off."""
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return  # bytecode goes where the user wants it; or a parent run set this up already
    if cache is None:
        return  # a prefix used once costs more than it saves: the stdlib is compiled into it too
    prefix = str(cache.mkdir("pycache"))
    os.environ["PYTHONPYCACHEPREFIX"] = prefix  # xdist workers and every child inherit it
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


def _opt_in_marker(path: Path) -> str | None:
    for directory, marker in OPT_IN.items():
        if path.is_relative_to(directory):
            return marker
    return None


def _named(config: pytest.Config, path: Path) -> bool:
    """Whether a command-line argument points at `path` or a directory below tests/ holding it."""
    for arg in config.args:
        target = Path(arg.split("::", 1)[0])
        target = (Path(config.invocation_params.dir) / target).resolve()
        if target in (TESTS, TESTS.parent):
            continue
        if path == target or path.is_relative_to(target):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    explicit = bool(config.option.markexpr)
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("timing") is not None:
            item.add_marker(pytest.mark.xdist_group("timing"))
        marker = _opt_in_marker(Path(item.path))
        if marker is None:
            keep.append(item)
            continue
        item.add_marker(getattr(pytest.mark, marker))
        if explicit or _named(config, Path(item.path)):
            keep.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
