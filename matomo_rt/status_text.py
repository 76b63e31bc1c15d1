"""`status`'s text view: one aligned block per log, the archive, then the verdict's problems
with what to do (or "all fine").

It renders the dict matomo_rt.status.collect builds and decides nothing: what is healthy is the
verdict's word, already in that dict.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Optional

from matomo_rt.store import describe_process


def age(then: Optional[float], now: float) -> str:
    """ "3m ago", "in 57m", "never"."""
    if then is None:
        return "never"
    delta = now - then
    future = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if delta >= size:
            text = f"{int(delta // size)}{unit}"
            break
    return f"in {text}" if future else f"{text} ago"


def _when(then: Optional[float], now: float) -> str:
    if then is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(then))
    return f"{age(then, now)} ({stamp})"


def _bytes(n: Optional[float]) -> str:
    return "?" if n is None else f"{int(n):,} bytes"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _block(title: str, rows: Iterable[tuple[str, str]]) -> list[str]:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]


def render_text(status: dict[str, Any]) -> str:
    """The human view: one aligned block per log, then the archiver."""
    now = status["time"]
    lines = [f"matomo-rt status: config {status['config']}, state in {status['state_dir']}", ""]
    if not status["logs"]:
        lines += ["no [[logs]] configured", ""]
    for entry in status["logs"]:
        lines += _block(f"{entry['name']}  {entry['path']}", _log_rows(entry, now))
        lines.append("")
    lines += _block("archive", _archive_rows(status["archive"], now))
    lines.append("")
    named = [(e["name"], e) for e in status["logs"]] + [("archive", status["archive"])]
    problems = [(name, p) for name, e in named for p in e["problems"]]
    if not problems:
        lines.append("all fine")
    else:
        lines.append(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}:")
        for name, problem in problems:
            lines.append(f"  {name}: {problem['message']}")
            if problem["fix"]:
                lines.append(f"    what to do: {problem['fix']}")
    return "\n".join(lines) + "\n"


def _log_rows(entry: dict[str, Any], now: float) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if entry["running"]:
        pid = entry["pid"]
        rows.append(("running", f"yes, {describe_process(pid)}" if pid else "yes"))
    else:
        rows.append(("running", "no"))
    if entry["error"]:
        rows.append(("STATE ERROR", entry["error"]))
    elif entry["state"] == "missing":
        rows.append(("state", entry.get("note", "none yet")))
    elif not entry.get("read_before"):
        rows.append(("position", "not read yet (the log was never found)"))
    elif entry["file"] is None:
        rows.append(
            (
                "position",
                "between generations (the rotated file is done, the new one not yet found)",
            )
        )
    else:
        rows.append(("position", f"{entry['file']} at {_bytes(entry['offset'])}"))
    if entry.get("log_problem"):
        rows.append(("log file", f"{entry['path']}: {entry['log_problem']}"))
    else:
        rows.append(("log size", _bytes(entry["size"])))
    if entry["error"]:
        return rows  # nothing else is known while the state cannot be read
    if entry["lag_bytes"] is not None:
        rows.append(("lag", _bytes(entry["lag_bytes"])))
    rows.append(("last success", _when(entry["last_success"], now)))
    error = entry["last_error"]
    if error is not None:
        stale = "" if error["time"] > (entry["last_success"] or 0) else " (since recovered)"
        reason = " ".join(error["reason"].split())
        rows.append(
            ("last error", f"{_when(error['time'], now)}{stale}: {error['outcome']}: {reason}")
        )
    if entry["last_import_duration"] is not None:
        rows.append(("last import", f"took {_duration(entry['last_import_duration'])}"))
    t = entry["totals"]
    rows.append(
        (
            "totals",
            f"{t['lines_read']:,} lines read, {t['imported']:,} imported, "
            f"{t['ignored']:,} ignored, {t['quarantined']:,} quarantined, "
            f"{t['normalised']:,} normalised, {t['invalid']:,} unparseable",
        )
    )
    rows.append(
        (
            "not recorded",
            f"{t['refused']:,} refused by Matomo, {t['unmatched']:,} matching no site",
        )
    )
    rows.append(
        ("batches", f"{t['failed_batches']:,} failed, {t['uncertain_batches']:,} uncertain")
    )
    if entry.get("worker_runs"):
        runs = ", ".join(f"{n:,} {k}" for k, n in sorted(entry["worker_runs"].items()))
        rows.append(("worker runs", runs))
    opened = entry.get("open_batch")
    if opened is not None:
        if opened.get("damaged"):
            rows.append(("OPEN BATCH", "damaged: move the state file aside, `matomo-rt seek`"))
        else:
            rows.append(
                (
                    "open batch",
                    f"{opened['lines']:,} lines split among {opened['workers']} workers:"
                    f" {opened['partitions_done']} done, {opened['requests_done']:,} of"
                    f" {opened['requests']:,} requests in Matomo; the next pass sends the rest",
                )
            )
    quarantine = entry["quarantine"]
    if quarantine is not None:
        count = quarantine.get("lines")
        what = f"{count:,} lines" if count is not None else quarantine.get("error", "?")
        rows.append(("quarantine", f"{quarantine['path']} ({what})"))
    pause = entry["auth_pause"]
    if pause is not None:
        rows.append(
            (
                "AUTH PAUSE",
                f"Matomo refused the token; no imports until "
                f"{time.strftime('%H:%M:%S', time.localtime(pause['until']))} "
                f"({age(pause['until'], now)}) or until the token changes",
            )
        )
    return rows


def _archive_rows(archive: dict[str, Any], now: float) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if not archive["enabled"]:
        rows.append(("enabled", "no (archive.enabled = false)"))
    if archive["running"]:
        pid = archive["pid"]
        rows.append(("running", f"yes, {describe_process(pid)}" if pid else "yes"))
    if archive["error"]:
        rows.append(("STATE ERROR", archive["error"]))
    run = archive["last_run"]
    if run is None:
        rows.append(("last run", "never"))
    else:
        text = f"{run['outcome']}, {_when(run['end'] or run['start'], now)}"
        text += f", took {_duration(run['duration'])}"
        if run["reason"]:
            text += ": " + " ".join(run["reason"].split())
        rows.append(("last run", text))
        rows.append(("last success", _when(archive["last_success"], now)))
    rows.append(("runs", f"{archive['runs']:,} ({archive['failures']:,} failed)"))
    return rows
