"""Real web servers -> log -> `matomo-rt run` -> the real Matomo, in the formats users run them
with: Apache httpd's `combined` and `vhost_combined` (Debian's LogFormats), nginx's default
`combined`, Caddy's JSON log rolled by Caddy itself. Each request exactly once in Matomo's own
rows (log_link_visit_action per URL), across rotations.

The servers, the numbered traffic and logrotate's steps are tests/e2e/servers.py's, as in the
tests against the import_logs.py double (tests/e2e/test_servers_end_to_end.py); here
import_logs.py and Matomo are real. Lines with a host go to the site of that host; lines
without one (`combined`) to the log's `idsite`.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from matomo_rt import status
from matomo_rt.config import load
from tests.e2e.harness import Service, wait_for
from tests.e2e.nginx import needs_nginx, running_nginx, traversable_dir
from tests.e2e.servers import (
    Traffic,
    needs_apache,
    needs_caddy,
    request_number,
    rotate,
    running_apache,
    running_caddy,
)
from tests.realmatomo.rig import DEADLINE, Scene

pytestmark = [pytest.mark.e2e]

#: One import_logs.py run per log and tick takes what the tick found: few runs, few seconds.
BATCH_LINES = 500


def log_block(name: str, path: Path, fmt: str, idsite: Optional[int] = None) -> str:
    site = f"idsite = {idsite}\n" if idsite is not None else ""
    return f"\n[[logs]]\nname = {json.dumps(name)}\npath = {json.dumps(str(path))}\n" + (
        f"format = {json.dumps(fmt)}\n{site}"
    )


def start(scene: Scene, logs: str) -> Service:
    """`matomo-rt run`, returned once every log had its first pass: files rotated before a
    log's first run are history it leaves alone, so the traffic must start after it."""
    scene.write_config(batch_lines=BATCH_LINES, logs=logs)
    service = scene.start_service()
    for name in re.findall(r'^name = "(.*)"$', logs, re.MULTILINE):
        state = scene.state / f"{name}.state.json"
        wait_for(state.exists, DEADLINE, f"the first pass of log {name}", service.describe)
    return service


def held(scene: Scene, idsite: int) -> Counter[int]:
    """Matomo's rows of a site per request number; a URL without one is a test failure."""
    out: Counter[int] = Counter()
    for url, n in scene.matomo.actions_per_url(idsite).items():
        number = request_number(url)
        assert number is not None, f"site {idsite} holds an unknown URL {url!r}"
        out[number] += n
    return out


def caught_up(scene: Scene) -> bool:
    entries = status.collect(load(scene.config_path))["logs"]
    return all(e["lag_bytes"] == 0 and e["offset"] is not None for e in entries)


def read_to_the_end(scene: Scene, service: Service) -> None:
    """Until matomo-rt has read every log to its end. Before a rotation, as rotations are
    hours apart: a generation that was still empty when last seen cannot be recognised once
    it is compressed (matomo-rt warns that it is gone)."""
    wait_for(lambda: caught_up(scene), DEADLINE, "every log read to its end", service.describe)


def finish(scene: Scene, service: Service, sites: dict[int, list[int]]) -> None:
    """Wait until Matomo holds a row per request sent to each site and every log is read to
    its end, stop the service, and compare: each request once, nothing else."""

    def describe() -> str:
        counts = {site: sum(held(scene, site).values()) for site in sites}
        sent = {site: len(numbers) for site, numbers in sites.items()}
        return f"Matomo holds {counts}, sent {sent}\n{service.describe()}"

    def all_held() -> bool:
        return all(sum(held(scene, s).values()) >= len(n) for s, n in sites.items())

    wait_for(all_held, DEADLINE, "a row per request in each site", describe)
    wait_for(lambda: caught_up(scene), DEADLINE, "every log read to its end", describe)
    service.send(signal.SIGTERM)
    assert service.wait(60) == 0, service.describe()
    assert "Traceback" not in service.log(), service.log()
    for site, numbers in sites.items():
        got = held(scene, site)
        lost = sorted(set(numbers) - set(got))
        twice = {n: c for n, c in got.items() if c > 1}
        unknown = sorted(set(got) - set(numbers))
        assert not lost and not twice and not unknown, (
            f"site {site}: lost {lost[:10]}, twice {list(twice.items())[:10]},"
            f" unknown {unknown[:10]}\n{describe()}"
        )


@needs_apache
def test_apache_combined_and_vhost_combined(bare_scene: Scene) -> None:
    """Debian's two Apache logs: `combined` into the log's idsite, `vhost_combined` by the
    ServerName in front of each line into that host's site; rotated as Debian's logrotate
    does (rename, graceful restart, delaycompress)."""
    scene = bare_scene
    vhost = f"v{secrets.token_hex(5)}.example"
    vhost_site = scene.matomo.add_site(vhost)
    with traversable_dir("matomo-rt-apache-") as base:
        logs = base / "logs"
        logs.mkdir()
        access, vhosts = logs / "access.log", logs / "other_vhosts_access.log"
        custom = [(access, "combined"), (vhosts, "vhost_combined")]
        with running_apache(base, custom, server_name=vhost) as httpd:
            service = start(
                scene,
                log_block("apache", access, "combined", scene.idsite)
                + log_block("vhosts", vhosts, "vhost_combined"),
            )
            traffic = Traffic(httpd.port, vhost)
            traffic.send(12)
            for _round in range(2):
                read_to_the_end(scene, service)
                rotate(access)
                rotate(vhosts)
                traffic.send(3)  # still written to the renamed files
                httpd.reopen_logs()
                traffic.until_logged_in(access)
                traffic.until_logged_in(vhosts)
                traffic.send(5)
            finish(scene, service, {scene.idsite: traffic.sent, vhost_site: traffic.sent})
            assert (logs / "access.log.2.gz").exists() and (logs / "access.log.1").exists()


@needs_nginx
def test_nginx_default_combined(bare_scene: Scene) -> None:
    """nginx's built-in `combined`, rotated as logrotate does (rename, USR1, delaycompress)."""
    scene = bare_scene
    with traversable_dir() as base:
        combined = base / "logs" / "combined.log"
        with running_nginx(base, f"access_log {combined} combined;") as ngx:
            service = start(scene, log_block("nginx", combined, "combined", scene.idsite))
            traffic = Traffic(ngx.port, scene.host)
            traffic.send(12)
            for _round in range(2):
                read_to_the_end(scene, service)
                rotate(combined)
                traffic.send(3)
                ngx.proc.send_signal(signal.SIGUSR1)  # what logrotate's postrotate sends
                traffic.until_logged_in(combined)
                traffic.send(5)
            finish(scene, service, {scene.idsite: traffic.sent})


@needs_caddy
def test_caddy_json_rolled_by_caddy(bare_scene: Scene) -> None:
    """Caddy's JSON log, mapped to the site by each request's Host (`host:port`, as Caddy
    logs it on a port other than 80/443); Caddy rolls the file itself (`access` ->
    `access-<time>.gz`, compressed at once) while matomo-rt reads it."""
    scene = bare_scene
    with traversable_dir("matomo-rt-caddy-") as base:
        logs = base / "logs"
        logs.mkdir()
        access = logs / "access"
        with running_caddy(base, access, site_host=scene.host) as caddy:
            site = scene.matomo.add_site(caddy.host)
            service = start(scene, log_block("caddy", access, "caddy_json"))
            # Caddy logs the request headers: 12 KB of padding make its 1 MiB roll_size in
            # about 85 requests. It answers every path with 200.
            traffic = Traffic(caddy.port, caddy.host, missing=200, pad=12_000)
            traffic.send(30)
            wait_for(
                lambda: sum(held(scene, site).values()) > 0,
                DEADLINE,
                "the first requests in Matomo",
                service.describe,
            )  # matomo-rt is reading while Caddy rolls
            while not any(p.name.endswith(".gz") for p in logs.iterdir()):
                traffic.send(10)
            traffic.send(10)
            finish(scene, service, {site: traffic.sent})
