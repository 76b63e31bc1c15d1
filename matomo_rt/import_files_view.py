"""What `matomo-rt import-files` shows: progress while it checks and imports the files
(matomo_rt.meter: a bar on a terminal, periodic lines otherwise) and the closing table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

from matomo_rt.meter import Meter
from matomo_rt.pipeline import PassReport

if TYPE_CHECKING:
    from matomo_rt.import_files import HistorySource


@dataclass
class Row:
    """One line of the closing table."""

    path: Path
    status: str
    stats: dict[str, Any]


class Checking:
    """The check step's progress: every file is read whole, through its compression, for its
    identity (its decompressed length); measured in bytes on disk, as that is what is read."""

    def __init__(self, paths: list[Path], err: TextIO) -> None:
        self.sizes = [_disk_size(p) for p in paths]
        self.meter = Meter(err, sum(self.sizes), "checking")
        self.index = -1
        self.done_before = 0

    def reader(self, path: Path) -> Callable[[int], None]:
        """What survey() calls with the bytes of `path` read so far."""
        if self.index >= 0:
            self.done_before += self.sizes[self.index]
        self.index += 1
        detail = f"file {self.index + 1}/{len(self.sizes)} {path.name}"
        before, size = self.done_before, self.sizes[self.index]
        return lambda read: self.meter.update(before + min(read, size), detail)

    def finish(self) -> None:
        self.meter.update(sum(self.sizes), f"{len(self.sizes)} files")
        self.meter.finish()


def _disk_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # survey() names the problem


class Progress:
    """The import step's progress over all files (matomo_rt.meter): bytes, the file, lines/s."""

    def __init__(self, sources: list[HistorySource], err: TextIO) -> None:
        total = sum(s.file.length - s.offset for s in sources)
        self.meter = Meter(err, total, "importing")
        self.files = len(sources)
        self.done_before = 0  # bytes of files finished in this run
        self.lines_before = 0  # lines of the passes finished in this run
        self.index = 0
        self.source: Optional[HistorySource] = None
        self.start_offset = 0

    def start(self, source: HistorySource) -> None:
        if self.source is not None:
            self.done_before += self.source.offset - self.start_offset
        self.source = source
        self.start_offset = source.offset
        self.index += 1
        self._show(0, force=True)

    def batch(self, report: PassReport) -> None:
        self._show(report.lines_read)

    def pass_done(self, report: PassReport) -> None:
        self.lines_before += report.lines_read

    def _show(self, pass_lines: int, force: bool = False) -> None:
        assert self.source is not None
        done = self.done_before + self.source.offset - self.start_offset
        elapsed = self.meter.clock() - self.meter.started
        lines = self.lines_before + pass_lines
        rate = f", {lines / elapsed:,.0f} lines/s" if lines and elapsed > 0 else ""
        detail = f"file {self.index}/{self.files} {self.source.file.path.name}{rate}"
        self.meter.update(done, detail, force)

    def finish(self) -> None:
        self.meter.finish()


def write_table(rows: list[Row], out: TextIO) -> None:
    """The closing table: per file, lines, imported, ignored (by reason), quarantined."""
    header = ("file", "lines", "imported", "ignored", "quarantined", "status")
    table = [header]
    for row in rows:
        s = row.stats
        by = s.get("ignored_by") or {}
        reasons = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(by.items()) if v)
        ignored = str(s.get("ignored", 0)) + (f" ({reasons})" if reasons else "")
        table.append(
            (
                str(row.path),
                str(s.get("lines_read", 0)) if s else "-",
                str(s.get("imported", 0)) if s else "-",
                ignored if s else "-",
                str(s.get("quarantined", 0)) if s else "-",
                row.status,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.write("  ".join(cells) + "  " + r[-1] + "\n")
