#!/usr/bin/env python3
"""Turn the fault suite's result rows (JSON lines) into docs/reliability.md.

MATOMO_RT_FAULTS_RESULTS=out.jsonl .venv/bin/python -m pytest tests/faults
.venv/bin/python tests/faults/report.py out.jsonl > docs/reliability.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEAD = """# Reliability: the fault suite's results

Written by `tests/faults/report.py` from the rows the fault suite (`tests/faults/`, marked
`e2e`) wrote during a real run. Regenerate it with:

    rm -f out.jsonl
    MATOMO_RT_FAULTS_RESULTS=out.jsonl .venv/bin/python -m pytest -n 2 tests/faults
    .venv/bin/python tests/faults/report.py out.jsonl > docs/reliability.md

Knobs: `MATOMO_RT_FAULTS_BUDGET=SECONDS` (time for the randomised SIGKILL test, default 40),
`MATOMO_RT_FAULTS_LONG=1` (local runs: 10 minutes of kills, a 1,000,000 line backlog),
`MATOMO_RT_FAULTS_SEED=N` (the kill test's seed; each iteration uses seed + iteration).

"Lost" counts written lines the importer double never recorded (what Matomo would not hold);
"duplicated" counts recorded copies beyond the first. "Bound" is what DESIGN.md §3 allows.
"""

COLUMNS = ("fault", "iterations", "written", "lost", "duplicated", "bound", "test")


LIMITS = """
## What the suite does not show

- The importer here is the import_logs.py double (tests/doubles/import_logs.py), which records
  each bulk POST durably; a real Matomo may also commit a POST that was in flight when the
  importer was killed (DESIGN §4) — that falls inside the same one-batch bound.
- A line import_logs.py crashes on that the Guard lets through blocks its batch: it is resent
  (and the lines before it in the batch duplicated) on every retry until an operator moves past
  it with `matomo-rt seek`. The Guard's job is to make that case not happen.
- Lines written to a log that is deleted before they are read cannot be recovered; they are not
  counted as lost above."""


def cell(value: object) -> str:
    text = f"{value:,}" if isinstance(value, int) else str(value)
    return text.replace("|", "\\|")


def test_file(nodeid: str) -> str:
    """`tests/faults/test_kill.py::test_x[2]` -> `test_kill.py`."""
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def main(path: str) -> int:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    # By test id, so a run with -n N (rows in the order tests end) reads the same.
    rows.sort(key=lambda row: row.get("test", ""))
    out = [HEAD, "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [cell(row.get(c, "")) for c in COLUMNS[:-1]]
        cells.append(f"`{test_file(row.get('test', ''))}`")
        out.append("| " + " | ".join(cells) + " |")
    notes = [row for row in rows if row.get("notes")]
    if notes:
        out.append("\n## Notes from the run\n")
        for row in notes:
            out.append(f"- **{row['fault']}**: {row['notes']}")
    out.append(LIMITS)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS.jsonl")
    sys.exit(main(sys.argv[1]))
