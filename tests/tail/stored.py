"""A reader whose position lives in a state file, as a process that resumes would keep it.

The reader itself takes and returns positions; reader tests need the position to survive
"process restarts" through the same JSON the Source writes (Position.to_json, stored_position).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from matomo_rt.store import load_state, save_state
from matomo_rt.tail import Batch, LogReader, Position, Reading
from matomo_rt.tail.position import stored_position


class StoredReader:
    """A fresh LogReader plus the position loaded from `state` (a first run when absent)."""

    def __init__(self, log: Path, state: Path, **options: Any) -> None:
        self.state = state
        self.log = log
        self.reader = LogReader(log, not_ours=(state.name,), **options)
        self.position = stored_position(load_state(state), state)

    @property
    def warnings(self) -> list[Any]:
        return self.reader.warnings

    def read_batch(self, max_lines: int, max_bytes: int) -> Batch:
        return self.reader.read_batch(self.position, max_lines, max_bytes)

    def read(self, position: Optional[Position] = None) -> Reading:
        return self.reader.read(self.position if position is None else position)

    def commit(self, position: Position) -> None:
        save_state(self.state, {"log": str(self.log), "position": position.to_json()})
        self.position = position
