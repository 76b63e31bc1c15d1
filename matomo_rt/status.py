"""`status`: what every log's state file says, read without taking any lock, and its verdict.

State files are replaced atomically (temp file, fsync, rename), so reading one while the service
runs always sees a whole document; nothing here writes to the state directory, so `status` is safe
to run from monitoring at any time. One damaged state file shows as an error on its own log, with
the way out, and never hides the others.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from matomo_rt import health
from matomo_rt.config import TOKEN_ENV, Config, LogConfig
from matomo_rt.loghealth import auth_key, format_name
from matomo_rt.logstate import state_paths
from matomo_rt.openbatch import OpenBatch
from matomo_rt.status_text import age, render_text
from matomo_rt.store import StateError, load_state, lock_holder, process_started
from matomo_rt.tail.position import lag_bytes

log = logging.getLogger(__name__)

#: The text view lives in matomo_rt.status_text; these names stay reachable from here.
__all__ = [
    "TOTALS",
    "age",
    "collect",
    "lock_holder",
    "render_json",
    "render_text",
    "status_exit_code",
]

#: The counters kept in each log's state document ("stats"), in display order.
TOTALS = (
    "lines_read",
    "imported",
    "ignored",
    "quarantined",
    "normalised",
    "invalid",
    "refused",
    "unmatched",
    "failed_batches",
    "uncertain_batches",
)


def collect(config: Config, now: Optional[float] = None) -> dict[str, Any]:
    """Everything `status` shows, as a JSON-able dict; never raises for one bad log."""
    now = time.time() if now is None else now
    token_key = _currentauth_key(config)
    logs = [_collect_log(config, log_config, now, token_key) for log_config in config.logs]
    archive = _collect_archive(config, now, _service_started(logs))
    return {
        "time": now,
        "config": str(config.source),
        "state_dir": str(config.state.dir),
        "healthy": all(e["healthy"] for e in logs) and archive["healthy"],
        "logs": logs,
        "archive": archive,
    }


def _currentauth_key(config: Config) -> Optional[str]:
    """The key an auth pause is recorded under for today's URL and token, if we can tell.

    A pause recorded under another key lifts on the next import (the token was changed).
    `status` may run as a user that cannot read the token: then we cannot tell (None). The
    file is read quietly (load_token warns about its mode, which would repeat on every tick
    of the service's metrics).
    """
    path = config.matomo.token_auth_file
    if path is None:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    else:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not token:
            return None
    return auth_key(config.matomo.url, token)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _collect_log(
    config: Config, log_config: LogConfig, now: float, token_key: Optional[str]
) -> dict[str, Any]:
    state_path, lock_path, quarantine_path = state_paths(config, log_config)
    entry: dict[str, Any] = {
        "name": log_config.name,
        "path": str(log_config.path),
        "state_file": str(state_path),
        "error": None,
        "state": "missing",
        "offset": None,
        "file": None,
        "size": None,
        "lag_bytes": None,
        "updated": None,
        "last_success": None,
        "last_error": None,
        "last_import_duration": None,
        "totals": dict.fromkeys(TOTALS, 0),
        "quarantine": None,
        "auth_pause": None,
        "running": False,
        "pid": None,
    }
    entry["running"], entry["pid"] = lock_holder(lock_path)

    live = None
    try:
        live = os.stat(log_config.path)
        entry["size"] = live.st_size
    except OSError as exc:
        entry["log_problem"] = _os_reason(exc)
    file_now = health.probe_file(log_config.path)
    if file_now is not None and file_now[0] == health.LOG_UNREADABLE:
        file_now = None  # whether the *service* can read it is its own record's word

    try:
        document = load_state(state_path)
    except StateError as exc:
        entry["state"] = "error"
        entry["error"] = str(exc)
        document = None
    except OSError as exc:  # e.g. the state directory is not a directory
        entry["state"] = "error"
        entry["error"] = f"{state_path}: cannot read the state file: {_os_reason(exc)}"
        document = None
    if document is not None:
        _read_document(entry, document, live, now, token_key)
    elif entry["state"] == "missing":
        entry["note"] = "no state yet: nothing committed (first run pending)"

    entry["quarantine"] = _quarantine(quarantine_path)
    facts = health.log_facts(
        log_config.name,
        str(log_config.path),
        document,
        state_error=entry["error"],
        file_now=file_now,
        lag_bytes=entry["lag_bytes"],
        token_key=token_key,
        log_format=format_name(log_config),
        unwritable=health.probe_state_dir(
            config.state.dir, entry["pid"] if entry["running"] else None, state_path
        ),
        now=now,
    )
    if facts.auth_pause_until is not None:
        entry["auth_pause"] = {"until": facts.auth_pause_until}
    _judged(entry, health.judge_log(facts, now, config.health))
    return entry


def _judged(entry: dict[str, Any], verdict: health.Verdict) -> None:
    entry["healthy"] = verdict.healthy
    entry["problems"] = [
        {"kind": p.kind, "message": p.message, "fix": p.fix} for p in verdict.problems
    ]


def _read_document(
    entry: dict[str, Any],
    document: dict[str, Any],
    live: Optional[os.stat_result],
    now: float,
    token_key: Optional[str],
) -> None:
    entry["state"] = "ok"
    entry["updated"] = _number(document.get("updated"))
    position = document.get("position")
    current = position.get("current") if isinstance(position, dict) else None
    entry["read_before"] = isinstance(position, dict) and bool(current or position.get("finished"))
    if isinstance(current, dict):
        entry["offset"] = _number(current.get("offset"))
        entry["file"] = current.get("name") if isinstance(current.get("name"), str) else None
    if live is not None:
        raw = current if isinstance(current, dict) else {}
        entry["lag_bytes"] = lag_bytes(
            raw.get("dev"),
            raw.get("ino"),
            int(entry["offset"] or 0),
            live.st_size,
            live.st_dev,
            live.st_ino,
        )

    stats = document.get("stats")
    if not isinstance(stats, dict):
        stats = {}
    for key in TOTALS:
        value = _number(stats.get(key))
        entry["totals"][key] = int(value) if value is not None else 0
    runs = stats.get("worker_runs")
    entry["worker_runs"] = {
        str(k): v for k, v in (runs if isinstance(runs, dict) else {}).items() if type(v) is int
    }
    entry["open_batch"] = _open_batch(document.get("open_batch"))
    entry["last_success"] = _number(stats.get("last_success"))
    entry["last_import_duration"] = _number(stats.get("last_import_duration"))
    error = stats.get("last_error")
    if isinstance(error, dict) and _number(error.get("time")) is not None:
        entry["last_error"] = {
            "time": error["time"],
            "outcome": str(error.get("outcome", "")),
            "reason": str(error.get("reason", "")),
        }


def _open_batch(data: Any) -> Optional[dict[str, Any]]:
    """A batch split among workers with shares still to import (matomo_rt.openbatch)."""
    if not data:
        return None
    try:
        opened = OpenBatch.from_json(data, "state")
    except StateError:
        return {"damaged": True}
    return {
        "workers": opened.workers,
        "lines": opened.lines,
        "partitions_done": sum(1 for d, s in zip(opened.done, opened.sizes) if d >= s),
        "requests_done": sum(opened.done),
        "requests": sum(opened.sizes),
    }


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    return (exc.strerror or str(exc)).lower()


def _quarantine(path: Path) -> Optional[dict[str, Any]]:
    """The quarantine file and how many lines it holds, if there is one."""
    try:
        with path.open("rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return {"path": str(path), "lines": None, "error": _os_reason(exc)}
    return {"path": str(path), "lines": lines}


def _service_started(logs: list[dict[str, Any]]) -> Optional[float]:
    """When the process holding the logs' locks (the service, most likely) started: from then
    on a core:archive run is expected. None when no process holds one."""
    started = [process_started(e["pid"]) for e in logs if e["running"] and e["pid"]]
    return min((t for t in started if t is not None), default=None)


def _collect_archive(
    config: Config, now: float, watched_since: Optional[float] = None
) -> dict[str, Any]:
    from matomo_rt.archiver import archive_paths

    state_path, lock_path = archive_paths(config)
    entry: dict[str, Any] = {
        "enabled": config.archive.enabled,
        "state_file": str(state_path),
        "error": None,
        "last_run": None,
        "last_success": None,
        "runs": 0,
        "failures": 0,
        "running": False,
        "pid": None,
    }
    entry["running"], entry["pid"] = lock_holder(lock_path)
    try:
        document = load_state(state_path)
    except StateError as exc:
        why = str(exc).split(": ", 1)[-1].split(";")[0]
        entry["error"] = (
            f"{state_path}: {why}; the next archive run moves it to {state_path.name}.damaged"
            " and writes a new one"
            if state_path.is_file()
            else str(exc)
        )
        document = None
    except OSError as exc:
        entry["error"] = f"{state_path}: cannot read: {_os_reason(exc)}"
        document = None
    if document is not None:
        _read_archive(entry, document)
    run = entry["last_run"] or {}
    facts = health.ArchiveFacts(
        enabled=config.archive.enabled,
        state_error=entry["error"],
        runs=entry["runs"],
        last_outcome=run.get("outcome"),
        last_reason=run.get("reason") or "",
        last_end=run.get("end"),
        last_success=entry["last_success"],
        failures=entry["failures"],
        last_duration=run.get("duration"),
        watched_since=watched_since,
    )
    _judged(entry, health.judge_archive(facts, now, config.health))
    return entry


def _read_archive(entry: dict[str, Any], document: dict[str, Any]) -> None:
    run = document.get("last_run")
    if isinstance(run, dict):
        entry["last_run"] = {
            "start": _number(run.get("start")),
            "end": _number(run.get("end")),
            "outcome": str(run.get("outcome", "")),
            "reason": str(run.get("reason", "")),
            "duration": _number(run.get("duration")),
        }
    entry["last_success"] = _number(document.get("last_success"))
    for key in ("runs", "failures"):
        value = _number(document.get(key))
        entry[key] = int(value) if value is not None else 0


def status_exit_code(status: dict[str, Any]) -> int:
    """0 when every log and the archiver are healthy, else 1 (each problem is printed with
    what to do)."""
    return 0 if status.get("healthy") else 1


def render_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True) + "\n"
