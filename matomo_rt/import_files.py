"""`matomo-rt import-files`: closed log files (history) into Matomo, once each, resumable.

A history import is the largest import a user does and the one most often interrupted, so it
runs on the live logs' commit protocol: each file is a Source (HistorySource) whose position
and statistics live in the state directory (`history-<identity>.state.json`, the ledger) and
move only past lines Matomo holds, batch by batch. Files a configured log reads itself are
refused (matomo_rt.ledger), so history and live never overlap.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, TextIO

from matomo_rt import formats, ledger
from matomo_rt.config import Config, ConfigError, LogConfig, import_problems, load_token
from matomo_rt.history import FileReader, HistoryFile, survey, time_order
from matomo_rt.import_files_view import Checking, Progress, Row, write_table
from matomo_rt.matomo import importer
from matomo_rt.pipeline import Source
from matomo_rt.store import LockedError, StateError, ensure_dir, load_state
from matomo_rt.tail.position import Position, stored_position
from matomo_rt.tail.reader import Batch

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_NOINPUT, EXIT_TEMPFAIL = 0, 1, 66, 75


# -- one file as a Source ------------------------------------------------------------------

#: import_logs.py's reasons for not importing a request, as its summary names them.
IGNORE_REASONS = (
    "invalid",
    "http_errors",
    "http_redirects",
    "static",
    "bots",
    "filtered",
    "no_site",
    "hostname_skipped",
    "downloads_skipped",
)


def history_name(f: HistoryFile) -> str:
    return ledger.state_name(f.head, f.length)


class HistorySource(Source):
    """One closed file, imported with the live logs' commit protocol (matomo_rt.pipeline)."""

    def __init__(
        self, config: Config, log_config: LogConfig, f: HistoryFile, token: Optional[str]
    ) -> None:
        super().__init__(config, log_config, token)
        self.file = f
        self._counts: dict[str, int] = {}

    def open(self) -> HistorySource:
        self.lock.acquire()
        try:
            document = load_state(self.state_path)
            position = stored_position(document, self.state_path)
            self.document = {k: v for k, v in (document or {}).items() if k != "format"}
            if position.current is None:
                position = Position().with_current(self.file.generation)
            else:  # the file may have been renamed or compressed since: same content
                gen = self.file.generation
                position = position.with_current(gen._replace(offset=position.current.offset))
            self.position = position
            self.reader = FileReader(self.file)  # type: ignore[assignment]
            self.quarantine_bytes = self._committed_quarantine()
        except BaseException:
            self.lock.release()
            raise
        return self

    def close(self) -> None:
        if isinstance(self.reader, FileReader):
            self.reader.close()
        super().close()

    @property
    def offset(self) -> int:
        current = self.position.current
        return (current.offset or 0) if current is not None else 0

    @property
    def done(self) -> bool:
        return self.offset >= self.file.length

    def lag_bytes(self) -> Optional[int]:
        return max(self.file.length - self.offset, 0)

    def _commit_prefix(
        self, batch: Batch, checked: Any, sent: int, result: Any, *a: Any, **k: Any
    ) -> None:  # type: ignore[override]
        if result.outcome == importer.SUCCESS:
            self._counts = {r: result.counts.get(r, 0) for r in IGNORE_REASONS}
        try:
            super()._commit_prefix(batch, checked, sent, result, *a, **k)
        finally:
            self._counts = {}

    def _commit(
        self, position: Position, document: Optional[dict[str, Any]] = None, **updates: Any
    ) -> None:  # type: ignore[override]
        if self._counts:
            by = dict(self.stats.get("ignored_by") or {})
            for reason, n in self._counts.items():
                if n:
                    by[reason] = int(by.get(reason) or 0) + n
            updates["ignored_by"] = by
        doc = {**(document or {}), "file": str(self.file.path), "length": self.file.length}
        super()._commit(position, doc, **updates)


# -- the command ----------------------------------------------------------------------------


def run_import_files(
    config: Config,
    paths: list[Path],
    format_name: Optional[str] = None,
    idsite: Optional[int] = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Import each closed file once, oldest first; a closing table per file on `out`."""
    problems = import_problems(config, need_logs=False)
    if problems:
        raise ConfigError(problems)
    fmt_override = _format(format_name, idsite)
    ensure_dir(config.state.dir)
    token = load_token(config.matomo, config.source)

    files: list[HistoryFile] = []
    rows: list[Row] = []
    code = EXIT_OK
    seen: dict[str, Path] = {}
    checking = Checking(paths, err)
    for path in paths:
        try:
            f = survey(path, checking.reader(path))
        except FileNotFoundError:
            rows.append(Row(path, "no such file", {}))
            code = max(code, EXIT_NOINPUT)
            continue
        except PermissionError:
            rows.append(Row(path, "permission denied", {}))
            code = max(code, EXIT_NOINPUT)
            continue
        except (OSError, ValueError) as exc:
            rows.append(Row(path, str(exc), {}))
            code = max(code, EXIT_NOINPUT)
            continue
        if f.length == 0:
            rows.append(Row(path, "empty", {}))
            continue
        if f.key in seen:
            rows.append(Row(path, f"the same content as {seen[f.key]}: imported once", {}))
            continue
        seen[f.key] = path
        claim = ledger.live_claim(config, f)
        if claim:
            rows.append(Row(path, f"refused: {claim}", {}))
            code = max(code, EXIT_FAILURE)
            continue
        files.append(f)
    checking.finish()

    sources = [_source(config, f, fmt_override, idsite, token) for f in time_order(files)]
    todo: list[HistorySource] = []
    for source in sources:
        try:
            source.open()
        except LockedError as exc:
            rows.append(Row(source.file.path, f"busy: {exc}", {}))
            code = max(code, EXIT_TEMPFAIL)
            continue
        if source.done:
            rows.append(Row(source.file.path, "already imported", source.stats))
            source.close()
        else:
            todo.append(source)

    progress = Progress(todo, err)
    stop = _StopFlag()
    with stop.installed():
        for source in todo:
            try:
                status = _import_file(source, progress, stop)
            finally:
                source.close()
            rows.append(Row(source.file.path, status, source.stats))
            if status not in ("imported", "already imported"):
                code = max(code, EXIT_FAILURE)
            if stop.requested:
                break
    progress.finish()
    for source in todo:
        if not any(r.path == source.file.path for r in rows):
            rows.append(Row(source.file.path, "not started (interrupted)", source.stats))
    write_table(rows, out)
    if rows and any(r.status == "imported" for r in rows):
        out.write(
            "Run `php console core:archive --force-all-websites` once the import is done"
            " (Matomo's FAQ: after importing history), or let the service's archive job run.\n"
        )
    return code


def _format(name: Optional[str], idsite: Optional[int]) -> Optional[formats.LogFormat]:
    if name is None:
        return None
    try:
        fmt = formats.resolve(name)
    except KeyError:
        raise ConfigError(
            [
                f"--format: {name!r} is not a format import_logs.py reads"
                f" (one of: {', '.join(formats.names())})"
            ]
        ) from None
    if fmt.family == formats.W3C:
        raise ConfigError(
            [
                f"--format: {fmt.name}: W3C formats need the file's #Fields: line; import them"
                " with import_logs.py directly"
            ]
        )
    if not fmt.has_host and idsite is None:
        raise ConfigError(
            [f"--format: {fmt.name} lines carry no host: give --idsite N (the Matomo site)"]
        )
    return fmt


def _source(
    config: Config,
    f: HistoryFile,
    fmt: Optional[formats.LogFormat],
    idsite: Optional[int],
    token: Optional[str],
) -> HistorySource:
    """The file as a log: format, site and flags from --format/--idsite, else from the
    configured log it was rotated from, else nginx_json."""
    owner = next(
        (
            lg
            for lg in config.logs
            if f.path.parent.resolve() == lg.path.parent.resolve()
            and f.path.name.startswith(lg.path.name)
        ),
        None,
    )
    base = owner or LogConfig(name="history", path=f.path)
    log_config = replace(
        base,
        name=history_name(f),
        path=f.path,
        idsite=idsite if idsite is not None else base.idsite,
        format=fmt.name if fmt is not None else base.format,
        format_regex=None if fmt is not None else base.format_regex,
        start_at="beginning",
    )
    return HistorySource(config, log_config, f, token)


def _import_file(source: HistorySource, progress: Progress, stop: _StopFlag) -> str:
    """Batches until the file is done; the status word for the closing table."""
    progress.start(source)
    while not source.done:
        if stop.requested:
            return "stopped (resumes where it stopped)"
        try:
            report = source.run_pass(should_stop=lambda: stop.requested, on_batch=progress.batch)
            progress.pass_done(report)
        except StateError as exc:
            log.error("%s: %s", source.file.path, exc)
            return f"failed: {exc}"
        if report.error is not None:
            log.error("%s: %s", source.file.path, report.error)
            return f"failed: {report.error}"
        if report.batches == 0 and not source.done:
            return "failed: no progress (is the file still being written?)"
    return "imported"


class _StopFlag:
    """Ctrl-C (or SIGTERM) stops after the running batch; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write(
            "\nstopping after the running batch (Ctrl-C again to stop at once; run the same"
            " command again to resume)\n"
        )

    class _Installed:
        def __init__(self, flag: _StopFlag) -> None:
            self.flag = flag
            self.saved: list[Any] = []

        def __enter__(self) -> None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved.append((sig, signal.signal(sig, self.flag._handle)))

        def __exit__(self, *exc: object) -> None:
            for sig, handler in self.saved:
                signal.signal(sig, handler)

    def installed(self) -> _StopFlag._Installed:
        return _StopFlag._Installed(self)
