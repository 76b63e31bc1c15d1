"""Real web servers in the formats users run them with, rotated, imported by `matomo-rt run`:
Apache httpd writing Debian's `combined` and `vhost_combined`, nginx on its default `combined`,
Caddy writing its JSON log and rolling it itself. Every request reaches the importer exactly
once, across rotations.

The importer is tests/doubles/import_logs.py, which parses each format as import_logs.py does
and records the lines Matomo would hold. Each request carries its number (`?n=N` or
`/missing/N`), so the record is compared with what was sent, per log, in order.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.e2e.harness import Rig, wait_for
from tests.e2e.nginx import needs_nginx, running_nginx, traversable_dir
from tests.e2e.servers import (
    START_DEADLINE,
    Traffic,
    needs_apache,
    needs_caddy,
    request_number,
    rotate,
    running_apache,
    running_caddy,
)

pytestmark = pytest.mark.e2e


def numbers(recorded: list[bytes], belongs: Callable[[bytes], bool]) -> list[int]:
    out = []
    for line in recorded:
        if belongs(line):
            n = request_number(line.decode("utf-8", "replace"))
            assert n is not None, line
            out.append(n)
    return out


def exactly_once(got: list[int], sent: list[int], what: str) -> None:
    if got != sent:
        missing = sorted(set(sent) - set(got))
        twice = sorted({n for n in got if got.count(n) > 1})
        raise AssertionError(
            f"{what}: {len(got)} recorded, {len(sent)} sent; missing {missing[:10]};"
            f" twice {twice[:10]}" + ("; other order" if sorted(got) == sorted(sent) else "")
        )


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def start(rig: Rig, logs: str, batch_lines: int = 50):
    """`matomo-rt run`, returned once every log had its first pass: files rotated before a
    log's first run are history it leaves alone, so the traffic must start after it."""
    rig.config_path.write_text(
        rig.config_text([], batch_lines=batch_lines, archive_enabled=False) + logs
    )
    service = rig.start_service()
    names = re.findall(r'^name = "(.*)"$', logs, re.MULTILINE)
    for name in names:
        state = rig.state / f"{name}.state.json"
        wait_for(state.exists, START_DEADLINE, f"the first pass of log {name}", service.describe)
    return service


def stop(service) -> None:
    service.send(signal.SIGTERM)
    assert service.wait(20) == 0, service.describe()
    assert "Traceback" not in service.log(), service.log()


def wait_recorded(rig: Rig, service, count: int) -> None:
    wait_for(
        lambda: len(rig.recorded()) >= count,
        START_DEADLINE,
        f"{count} lines recorded",
        service.describe,
    )


def _logs_block(name: str, path: Path, fmt: str, extra: str = "") -> str:
    return f'\n[[logs]]\nname = "{name}"\npath = "{path}"\nformat = "{fmt}"\n{extra}'


@needs_apache
def test_apache_combined_and_vhost_combined(rig: Rig) -> None:
    with traversable_dir("matomo-rt-apache-") as base:
        logs = base / "logs"
        logs.mkdir()
        access, vhosts = logs / "access.log", logs / "other_vhosts_access.log"
        with running_apache(base, [(access, "combined"), (vhosts, "vhost_combined")]) as httpd:
            service = start(
                rig,
                _logs_block("apache", access, "combined", "idsite = 1\n")
                + _logs_block("vhosts", vhosts, "vhost_combined"),
            )
            traffic = Traffic(httpd.port, "test.example")
            traffic.send(20)
            for round_ in range(2):
                rotate(access)
                rotate(vhosts)
                traffic.send(5)  # still written to the renamed files
                httpd.reopen_logs()
                traffic.until_logged_in(access)
                traffic.until_logged_in(vhosts)
                traffic.send(7 + round_)
            wait_recorded(rig, service, 2 * len(traffic.sent))
            stop(service)
            assert sorted(p.name for p in logs.iterdir()) == [
                "access.log",
                "access.log.1",
                "access.log.2.gz",
                "other_vhosts_access.log",
                "other_vhosts_access.log.1",
                "other_vhosts_access.log.2.gz",
            ]
    recorded = rig.recorded()
    exactly_once(numbers(recorded, lambda x: x.startswith(b"127.0.0.1 ")), traffic.sent, "combined")
    exactly_once(numbers(recorded, lambda x: x.startswith(b"test.example:")), traffic.sent, "vhost")


@needs_nginx
def test_nginx_default_combined(rig: Rig) -> None:
    with traversable_dir() as base:
        logs = base / "logs"
        combined = logs / "combined.log"
        extra = f"access_log {combined} combined;"
        with running_nginx(base, extra) as ngx:
            service = start(rig, _logs_block("nginx", combined, "combined", "idsite = 1\n"))
            traffic = Traffic(ngx.port, "test.example")
            traffic.send(15)
            for _ in range(2):
                rotate(combined)
                traffic.send(4)
                ngx.proc.send_signal(signal.SIGUSR1)  # what logrotate's postrotate sends
                traffic.until_logged_in(combined)
                traffic.send(6)
            wait_recorded(rig, service, len(traffic.sent))
            stop(service)
    exactly_once(numbers(rig.recorded(), lambda x: True), traffic.sent, "nginx combined")


@needs_caddy
def test_caddy_json_rolled_by_caddy(rig: Rig) -> None:
    """Caddy rolls its log itself: `access` -> `access-<time>.gz`, compressed at once."""
    with traversable_dir("matomo-rt-caddy-") as base:
        logs = base / "logs"
        logs.mkdir()
        access = logs / "access"
        with running_caddy(base, access) as caddy:
            service = start(rig, _logs_block("caddy", access, "caddy_json"), batch_lines=500)
            # Caddy answers all; it logs the request headers: 4 KB of padding a line
            traffic = Traffic(caddy.port, caddy.host, missing=200, pad=4000)
            traffic.send(60)
            wait_recorded(rig, service, 30)  # matomo-rt is reading while Caddy rolls
            rolled: Optional[list[Path]] = None
            while not rolled:  # about 250 requests make the 1 MiB roll_size
                traffic.send(30)
                rolled = [p for p in logs.iterdir() if p.name.endswith(".gz")]
            traffic.send(30)
            wait_recorded(rig, service, len(traffic.sent))
            stop(service)
    recorded = rig.recorded()
    assert all(json.loads(x)["request"]["client_ip"] == "127.0.0.1" for x in recorded[:5])
    exactly_once(numbers(recorded, lambda x: True), traffic.sent, "caddy")
