"""`status` and metrics: what every log's state file says, read without taking any lock.

State files are replaced atomically (temp file, fsync, rename), so reading one while the service
runs always sees a whole document; nothing here writes to the state directory, so `status` is safe
to run from monitoring at any time. One damaged state file shows as an error on its own log, with
the way out, and never hides the others.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

from matomo_rt.config import TOKEN_ENV, Config, LogConfig
from matomo_rt.pipeline import AUTH_PAUSE_SECONDS, auth_key, state_paths
from matomo_rt.store import StateError, atomic_write, load_state
from matomo_rt.tail.position import lag_bytes

log = logging.getLogger(__name__)

#: The counters kept in each log's state document ("stats"), in display order.
TOTALS = (
    "lines_read",
    "imported",
    "ignored",
    "quarantined",
    "normalised",
    "failed_batches",
    "uncertain_batches",
)
#: Archive outcomes that count as a failed run (a "warning" run did archive).
ARCHIVE_FAILED = ("failure", "timeout")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(Exception):
    """The metrics cannot be published (textfile not writable, address in use); one line."""


# ------------------------------------------------------------------------------------------
# Collecting
# ------------------------------------------------------------------------------------------


def collect(config: Config, now: Optional[float] = None) -> dict[str, Any]:
    """Everything `status` shows, as a JSON-able dict; never raises for one bad log."""
    now = time.time() if now is None else now
    token_key = _currentauth_key(config)
    logs = [_collect_log(config, log_config, now, token_key) for log_config in config.logs]
    return {
        "time": now,
        "config": str(config.source),
        "state_dir": str(config.state.dir),
        "logs": logs,
        "archive": _collect_archive(config, now),
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
    return entry


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
    entry["last_success"] = _number(stats.get("last_success"))
    entry["last_import_duration"] = _number(stats.get("last_import_duration"))
    error = stats.get("last_error")
    if isinstance(error, dict) and _number(error.get("time")) is not None:
        entry["last_error"] = {
            "time": error["time"],
            "outcome": str(error.get("outcome", "")),
            "reason": str(error.get("reason", "")),
        }
    pause = stats.get("auth_pause")
    if isinstance(pause, dict):
        # The pipeline leaves the record in place when the pause lifts early: it lifted if
        # the token changed since, or if an import succeeded after the pause began.
        until = _number(pause.get("until"))
        lifted = token_key is not None and pause.get("key") != token_key
        if until is not None and (entry["last_success"] or 0) > until - AUTH_PAUSE_SECONDS:
            lifted = True
        if until is not None and until > now and not lifted:
            entry["auth_pause"] = {"until": until}


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


def lock_holder(lock_path: Path) -> tuple[bool, Optional[int]]:
    """(held, pid): whether a process holds the flock on `lock_path`, and which, if known.

    Looks in /proc/locks first, which takes no lock at all: probing with flock() would hold a
    shared lock for an instant, long enough to make a starting `import` or service believe
    another instance runs. The probe is the fallback where /proc/locks cannot answer.
    """
    try:
        st = os.stat(lock_path)
    except OSError:
        return False, None  # no lock file: nobody ever held it (or it is unreadable)
    file_pid = _pid_in(lock_path)
    entries = _proc_flocks()
    if entries is not None:
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
        inode_only = False
        for entry_dev, ino, pid in entries:
            if ino != st.st_ino:
                continue
            if entry_dev == dev:
                return True, pid or file_pid
            inode_only = True
        if not inode_only:
            return False, None
        # Same inode on a device /proc/locks names differently (overlayfs reports the
        # underlying device to stat()): ask flock itself.
    return _probe(lock_path, file_pid)


def _pid_in(lock_path: Path) -> Optional[int]:
    try:
        text = lock_path.read_bytes()[:64].decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_flocks() -> Optional[list[tuple[str, int, int]]]:
    """(major:minor, inode, pid) of every flock() lock on the system; None if unreadable."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    found = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:123456 0 EOF" ("->" marks a waiter)
        if "->" in fields:
            continue
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, ino = fields[5].rsplit(":", 2)
            found.append((f"{int(major, 16):02x}:{int(minor, 16):02x}", int(ino), int(fields[4])))
        except ValueError:
            continue
    return found


def _probe(lock_path: Path, file_pid: Optional[int]) -> tuple[bool, Optional[int]]:
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True, file_pid
    except OSError:
        return False, None
    finally:
        os.close(fd)  # releases the shared lock at once, if we got it
    return False, None


def _collect_archive(config: Config, now: float) -> dict[str, Any]:
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
        entry["error"] = str(exc).replace(
            "set the position with `matomo-rt seek`", "the next run writes a new one"
        )
        return entry
    except OSError as exc:
        entry["error"] = f"{state_path}: cannot read: {_os_reason(exc)}"
        return entry
    if document is None:
        return entry
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
    return entry


# ------------------------------------------------------------------------------------------
# Judging
# ------------------------------------------------------------------------------------------


def log_problems(entry: dict[str, Any]) -> list[str]:
    """Why one log is not fine (empty when it is)."""
    problems = []
    if entry.get("error"):
        problems.append("state file unreadable")
    error = entry.get("last_error")
    if error is not None and error["time"] > (entry.get("last_success") or 0):
        problems.append(f"last import failed ({error['outcome']})")
    if entry.get("auth_pause"):
        problems.append("paused: Matomo refused the token")
    return problems


def archive_failed(archive: dict[str, Any]) -> bool:
    run = archive.get("last_run")
    return bool(archive.get("error")) or (
        isinstance(run, dict) and run.get("outcome") in ARCHIVE_FAILED
    )


def status_exit_code(status: dict[str, Any]) -> int:
    """0 when all is fine; 1 when a log's last import failed (no success since), an auth
    pause is active, a state file is unreadable, or the last core:archive run failed."""
    if any(log_problems(entry) for entry in status.get("logs", [])):
        return 1
    if archive_failed(status.get("archive") or {}):
        return 1
    return 0


# ------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------


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
    problems = [f"{e['name']}: {p}" for e in status["logs"] for p in log_problems(e)]
    if archive_failed(status["archive"]):
        problems.append("archive: last core:archive run failed")
    lines.append("")
    lines.append("problems: " + "; ".join(problems) if problems else "all fine")
    return "\n".join(lines) + "\n"


def _log_rows(entry: dict[str, Any], now: float) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if entry["running"]:
        pid = entry["pid"]
        rows.append(("running", f"yes (pid {pid})" if pid else "yes"))
    else:
        rows.append(("running", "no"))
    if entry["error"]:
        rows.append(("STATE ERROR", entry["error"]))
    elif entry["state"] == "missing":
        rows.append(("state", entry.get("note", "none yet")))
    else:
        where = entry["file"] or "(between generations)"
        rows.append(("position", f"{where} at {_bytes(entry['offset'])}"))
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
            f"{t['normalised']:,} normalised",
        )
    )
    rows.append(
        ("batches", f"{t['failed_batches']:,} failed, {t['uncertain_batches']:,} uncertain")
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
        rows.append(("running", f"yes (pid {archive['pid']})" if archive["pid"] else "yes"))
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


def render_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------


def escape_label(value: str) -> str:
    """A label value as the text exposition format wants it: \\ " and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], Any]]
    ) -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(
                f"{name}{{{text}}} {_value(value)}" if text else f"{name} {_value(value)}"
            )

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


_LOG_COUNTERS = (
    ("lines_read", "matomo_rt_lines_read_total", "Lines read from the log and committed."),
    ("imported", "matomo_rt_imported_total", "Requests import_logs.py reported imported."),
    ("ignored", "matomo_rt_ignored_total", "Requests import_logs.py ignored (see its summary)."),
    ("quarantined", "matomo_rt_quarantined_total", "Lines held back in the quarantine file."),
    ("normalised", "matomo_rt_normalised_total", "Lines normalised before import."),
    ("failed_batches", "matomo_rt_failed_batches_total", "Import batches that failed."),
    (
        "uncertain_batches",
        "matomo_rt_uncertain_batches_total",
        "Import batches with an unknown outcome (importer killed or timed out).",
    ),
)


def render_metrics(status: dict[str, Any]) -> str:
    """Prometheus text exposition format 0.0.4 of `status` (from collect())."""
    out = _Exposition()
    logs = status.get("logs", [])

    def per_log(pick: Callable[[dict[str, Any]], Any]) -> list[tuple[dict[str, str], Any]]:
        return [({"log": e["name"]}, pick(e)) for e in logs]

    for key, name, help_text in _LOG_COUNTERS:
        out.metric(
            name,
            "counter",
            help_text,
            per_log(lambda e, key=key: None if e.get("error") else e["totals"][key]),
        )
    out.metric(
        "matomo_rt_lag_bytes",
        "gauge",
        "Bytes of the live log file not yet committed.",
        per_log(lambda e: e.get("lag_bytes")),
    )
    out.metric(
        "matomo_rt_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful import batch.",
        per_log(lambda e: e.get("last_success")),
    )
    out.metric(
        "matomo_rt_last_error_timestamp_seconds",
        "gauge",
        "Unix time of the last failed import batch.",
        per_log(lambda e: (e.get("last_error") or {}).get("time")),
    )
    out.metric(
        "matomo_rt_last_import_duration_seconds",
        "gauge",
        "How long the last import batch took.",
        per_log(lambda e: e.get("last_import_duration")),
    )
    out.metric(
        "matomo_rt_auth_paused",
        "gauge",
        "1 while imports are paused because Matomo refused the token.",
        per_log(lambda e: 1 if e.get("auth_pause") else 0),
    )
    out.metric(
        "matomo_rt_state_ok",
        "gauge",
        "0 when the log's state file cannot be read (see `matomo-rt status`).",
        per_log(lambda e: 0 if e.get("error") else 1),
    )
    out.metric(
        "matomo_rt_running",
        "gauge",
        "1 while a matomo-rt process holds the log's lock.",
        per_log(lambda e: 1 if e.get("running") else 0),
    )
    out.metric(
        "matomo_rt_quarantine_lines",
        "gauge",
        "Lines in the log's quarantine file.",
        per_log(lambda e: (e.get("quarantine") or {}).get("lines", 0)),
    )

    archive = status.get("archive") or {}
    run = archive.get("last_run") or {}
    out.metric(
        "matomo_rt_archive_last_run_timestamp_seconds",
        "gauge",
        "Unix time the last core:archive run ended.",
        [({}, run.get("end") or run.get("start"))],
    )
    out.metric(
        "matomo_rt_archive_last_duration_seconds",
        "gauge",
        "How long the last core:archive run took.",
        [({}, run.get("duration"))],
    )
    out.metric(
        "matomo_rt_archive_last_success",
        "gauge",
        "1 if the last core:archive run succeeded (warnings included), else 0.",
        [({}, None if not run else int(run.get("outcome") not in ARCHIVE_FAILED))],
    )
    out.metric(
        "matomo_rt_archive_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful core:archive run.",
        [({}, archive.get("last_success"))],
    )
    out.metric(
        "matomo_rt_archive_runs_total",
        "counter",
        "core:archive runs.",
        [({}, archive.get("runs", 0))],
    )
    out.metric(
        "matomo_rt_archive_failures_total",
        "counter",
        "core:archive runs that failed or timed out.",
        [({}, archive.get("failures", 0))],
    )
    return out.text()


def write_textfile(path: Path, text: str) -> None:
    """Atomically replace `path` (for node_exporter's textfile collector) with `text`.

    The temporary file does not end in .prom, so the collector never reads a half-written one.
    """
    path = Path(path)
    if path.suffix != ".prom":
        raise MetricsError(
            f"metrics.textfile: {path}: node_exporter's textfile collector reads only *.prom "
            "files; name it like matomo_rt.prom"
        )
    try:
        # 0644: node_exporter runs as another user.
        atomic_write(path, text.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise MetricsError(f"metrics.textfile: {path}: {_os_reason(exc)}") from None


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise MetricsError(f"metrics.listen: {listen!r}: use HOST:PORT such as 127.0.0.1:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port)


class MetricsServer:
    """GET /metrics over HTTP, from a daemon thread; everything else is 404."""

    def __init__(self, listen: str, render: Callable[[], str]) -> None:
        self.listen = listen
        self.render = render
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when `listen` asked for port 0."""
        if self._server is None:
            raise RuntimeError("MetricsServer is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        host, port = _split_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self._server = Server((host, port), _make_handler(self.render))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MetricsError(
                f"metrics.listen: cannot listen on {self.listen}: {reason}"
            ) from None
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.1),
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        log.info("serving metrics on http://%s/metrics", self.listen)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(render: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "matomo-rt"
        sys_version = ""

        def _answer(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _metrics(self, head: bool) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics\n", head)
                return
            try:
                body = render().encode("utf-8")
            except Exception as exc:
                log.warning("metrics: cannot render: %s", exc)
                self._answer(500, "text/plain; charset=utf-8", b"cannot render metrics\n", head)
                return
            self._answer(200, CONTENT_TYPE, body, head)

        def do_GET(self) -> None:
            self._metrics(head=False)

        def do_HEAD(self) -> None:
            self._metrics(head=True)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: %s %s", self.address_string(), format % args)

    return Handler
