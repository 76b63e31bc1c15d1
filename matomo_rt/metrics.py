"""Prometheus metrics of the running service, from what it holds in memory.

The service already knows everything worth exporting: each Source's statistics and health facts
(the same document it commits), its verdict, its backoff, and the last core:archive run. A
collector reads them at scrape time (or after each job, for the textfile); nothing here re-reads
state files or counts quarantine files. The exposition is prometheus_client's, the ecosystem's
exporter library; the HTTP endpoint and the atomic textfile are ours (node_exporter needs the
file whole and world-readable, and /metrics is the only path we answer).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from matomo_rt import health, openbatch
from matomo_rt.store import atomic_write

if TYPE_CHECKING:
    from matomo_rt.pipeline import Source

log = logging.getLogger(__name__)

#: The text format prometheus_client writes (0.0.4 is what every scraper reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Counters kept in each log's statistics: (key, metric name, help).
LOG_COUNTERS = (
    ("lines_read", "matomo_rt_lines_read_total", "Lines read from the log and committed."),
    ("imported", "matomo_rt_imported_total", "Requests Matomo holds (import_logs.py's count)."),
    ("ignored", "matomo_rt_ignored_total", "Requests import_logs.py ignored (see its summary)."),
    ("quarantined", "matomo_rt_quarantined_total", "Lines held back in the quarantine file."),
    ("normalised", "matomo_rt_normalised_total", "Lines normalised before import."),
    (
        "invalid",
        "matomo_rt_invalid_total",
        "Lines import_logs.py could not parse in the log's format.",
    ),
    ("refused", "matomo_rt_refused_total", "Requests Matomo refused as invalid."),
    ("unmatched", "matomo_rt_unmatched_total", "Requests whose host matched no Matomo site."),
    ("failed_batches", "matomo_rt_failed_batches_total", "Import batches that failed."),
    (
        "uncertain_batches",
        "matomo_rt_uncertain_batches_total",
        "Import batches with an unknown outcome (importer killed or timed out).",
    ),
)


class MetricsError(Exception):
    """The metrics cannot be published (textfile not writable, address in use); one line."""


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class ServiceCollector(Collector):
    """Every metric of the service, built from its memory when asked."""

    def __init__(
        self,
        sources: Callable[[], Iterable[Source]],
        archive: Callable[[], health.ArchiveFacts],
        settings: Callable[[], health.Settings],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = sources
        self.archive = archive
        self.settings = settings
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        yield from self._logs([s for s in self.sources() if s.reader is not None], now)
        yield from self._archive(self.archive(), now)

    def _logs(self, sources: list[Source], now: float) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["log", *extra])

        counters = {
            key: CounterMetricFamily(name, doc, labels=["log"]) for key, name, doc in LOG_COUNTERS
        }
        lag = gauge("matomo_rt_lag_bytes", "Bytes of the live log file not yet committed.")
        success = gauge(
            "matomo_rt_last_success_timestamp_seconds",
            "Unix time of the last successful import (or caught-up pass).",
        )
        error = gauge(
            "matomo_rt_last_error_timestamp_seconds", "Unix time of the last failed import batch."
        )
        duration = gauge(
            "matomo_rt_last_import_duration_seconds", "How long the last import batch took."
        )
        paused = gauge(
            "matomo_rt_auth_paused", "1 while imports are paused because Matomo refused the token."
        )
        backoff = gauge(
            "matomo_rt_backoff_seconds", "Seconds until the next attempt after failures (0: none)."
        )
        ratio = gauge(
            "matomo_rt_recent_quarantined_ratio",
            "Share of the recent lines (about the last 200) that were quarantined.",
        )
        healthy = gauge("matomo_rt_healthy", "1 when the log is healthy (see `matomo-rt status`).")
        runs = CounterMetricFamily(
            "matomo_rt_worker_runs_total",
            "import_logs.py runs of batches split among import.workers, by outcome.",
            labels=["log", "outcome"],
        )
        write_failures = CounterMetricFamily(
            "matomo_rt_state_write_failures_total",
            "Writes of the log's state or quarantine the disk refused (full, read-only).",
            labels=["log"],
        )
        pending = gauge(
            "matomo_rt_open_batch_pending_requests",
            "Requests of a split batch not yet in Matomo (0: no batch is open).",
        )
        problem = gauge(
            "matomo_rt_problem",
            "1 while the log has this problem (README, Operations, lists them).",
            ("problem",),
        )
        for source in sources:
            name = source.name
            stats = source.stats
            for key, family in counters.items():
                value = stats.get(key)
                family.add_metric([name], value if type(value) is int and value >= 0 else 0)
            for family, value in (
                (lag, source.lag_bytes()),
                (success, _number(stats.get("last_success"))),
                (error, _number((stats.get("last_error") or {}).get("time"))),
                (duration, _number(stats.get("last_import_duration"))),
            ):
                if value is not None:  # never happened: no sample rather than a misleading 0
                    family.add_metric([name], value)
            verdict = source.verdict()
            kinds = verdict.kinds()
            paused.add_metric([name], int(health.AUTH_PAUSED in kinds))
            backoff.add_metric([name], max(source.retry_at - now, 0.0))
            lines = sum(r[1] for r in source.health.window)
            if lines:
                ratio.add_metric([name], sum(r[2] for r in source.health.window) / lines)
            healthy.add_metric([name], int(verdict.healthy))
            worker_runs = stats.get("worker_runs")
            for outcome, count in sorted((worker_runs or {}).items()):
                if type(count) is int and count >= 0:
                    runs.add_metric([name, str(outcome)], count)
            pending.add_metric([name], openbatch.pending_requests(source))
            write_failures.add_metric([name], source.write_failures)
            for kind in health.LOG_PROBLEMS:
                problem.add_metric([name, kind], int(kind in kinds))
        yield from counters.values()
        yield from (lag, success, error, duration, paused, backoff, ratio, healthy, problem)
        yield from (runs, pending, write_failures)

    def _archive(self, facts: health.ArchiveFacts, now: float) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: Optional[float]) -> Iterator[Metric]:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)

        yield from gauge(
            "matomo_rt_archive_last_run_timestamp_seconds",
            "Unix time the last core:archive run ended.",
            facts.last_end,
        )
        yield from gauge(
            "matomo_rt_archive_last_duration_seconds",
            "How long the last core:archive run took.",
            facts.last_duration,
        )
        yield from gauge(
            "matomo_rt_archive_last_success",
            "1 if the last core:archive run succeeded (warnings included), else 0.",
            None
            if facts.last_outcome is None
            else int(facts.last_outcome not in health.ARCHIVE_FAILED),
        )
        yield from gauge(
            "matomo_rt_archive_last_success_timestamp_seconds",
            "Unix time of the last successful core:archive run.",
            facts.last_success,
        )
        yield CounterMetricFamily(
            "matomo_rt_archive_runs_total", "core:archive runs.", value=facts.runs
        )
        yield CounterMetricFamily(
            "matomo_rt_archive_failures_total",
            "core:archive runs that failed or timed out.",
            value=facts.failures,
        )
        # Not a sample of matomo_rt_state_write_failures_total: its `log` label names logs,
        # and a log may be called "archive".
        yield CounterMetricFamily(
            "matomo_rt_archive_state_write_failures_total",
            "Writes of the archive state (or its lock) the disk refused (full, read-only).",
            value=facts.write_failures,
        )
        verdict = health.judge_archive(facts, now, self.settings())
        yield GaugeMetricFamily(
            "matomo_rt_archive_healthy",
            "1 when core:archive is healthy (not failing, not stale).",
            value=int(verdict.healthy),
        )
        problem = GaugeMetricFamily(
            "matomo_rt_archive_problem",
            "1 while core:archive has this problem.",
            labels=["problem"],
        )
        for kind in health.ARCHIVE_PROBLEMS:
            problem.add_metric([kind], int(kind in verdict.kinds()))
        yield problem


def registry(collector: Collector) -> CollectorRegistry:
    """A registry of our metrics only (no process or platform collectors)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def render(reg: CollectorRegistry) -> str:
    """The Prometheus text exposition of `reg`."""
    return generate_latest(reg).decode("utf-8")


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
        reason = "no such file" if exc.errno == errno.ENOENT else (exc.strerror or str(exc))
        raise MetricsError(f"metrics.textfile: {path}: {reason.lower()}") from None


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
