"""Result rows of the fault suite: one JSON line per fault, turned into a table by report.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

Row = Callable[..., None]


@pytest.fixture(scope="session")
def results_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("MATOMO_RT_FAULTS_RESULTS")
    if configured:
        return Path(configured)
    return tmp_path_factory.getbasetemp() / "faults-results.jsonl"


@pytest.fixture
def result(results_path: Path, request: pytest.FixtureRequest) -> Row:
    """result(fault, iterations=, written=, lost=, duplicated=, bound=, **notes)."""

    def add(fault: str, **fields: Any) -> None:
        row = {"fault": fault, "test": request.node.nodeid, **fields}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with open(results_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    return add
