"""A real nginx writing the contrib log_format, real logrotate runs in every mode, and
`matomo-rt run` importing as a real process: every request arrives exactly once, in order.

The importer is tests/doubles/import_logs.py; what it records is what Matomo would hold. Each
request has a unique path (/r/<n>, /missing/<n>), so the record can be compared with what was
sent, field by field, as import_logs.py reads them.

Modes (contrib/logrotate/matomo-rt, varied by tests.e2e.nginx.logrotate_conf): create (rename
+ reopen), dateext, compress + delaycompress (as shipped), compress alone, copytruncate. With
rename + reopen, requests are also sent while logrotate runs: nginx writes into the renamed file
until it reopens, and matomo-rt must pick those lines up. With `compress` alone and with
copytruncate, nginx's late lines can be lost by logrotate itself (gzip has read the file
already; the copy was taken before the line was written), whatever the reader does, so those
modes rotate between requests only; that loss is documented in contrib/.
"""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.harness import Rig, wait_for
from tests.e2e.nginx import (
    Logrotate,
    needs_logrotate,
    needs_nginx,
    raw_get,
    running_nginx,
    traversable_dir,
)

pytestmark = [pytest.mark.e2e, needs_nginx, needs_logrotate]

# A UA of ~8 KB does not fit nginx's default 8k header buffers: make room for it.
EXTRA_HTTP = "large_client_header_buffers 4 32k;"
LONG_UA = "LongAgent/2.0 " + ('q"b\\ é ' * 900) + "end"  # ~8 KB of UTF-8
USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    'Agent "quoted" \\back\\slash\\',
    "Ünïcødé 日本語 агент/1.0",
    'tab\there unit\x1fsep "q" \\ ü',
    LONG_UA,
    "",  # no User-Agent header at all
]
ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


class Traffic:
    """Requests with tricky targets and headers, each remembered with the fields it must log."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[dict[str, str]] = []
        self.since_rotation = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            self.one()

    def one(self) -> None:
        n = len(self.sent)
        status = "200"
        if n % 7 == 3:
            target, status = f"/missing/{n}".encode(), "404"
        elif n % 5 == 1:
            target = f"/r/{n}?q=%22a%5Cb%22&u=%C3%BC".encode()
        elif n % 5 == 2:
            target = f'/r/{n}/café/日本?q="a\\b"&u=ü'.encode()
        elif n % 11 == 4:
            target = f"/r/{n}/bad".encode() + b"\xff\xfe"  # not UTF-8: logged as is
        else:
            target = f"/r/{n}".encode()
        host = b"Test.Example" if n % 2 else b"127.0.0.1"
        agent = USER_AGENTS[n % len(USER_AGENTS)]
        headers = {b"Host": host}
        if agent:
            headers[b"User-Agent"] = agent.encode()
        code = raw_get(self.port, target, headers)
        assert code == int(status), (target, code)
        self.sent.append(
            {
                "path": target.decode("utf-8", "surrogateescape"),
                "user_agent": agent,
                "status": status,
                "host": host.decode().lower(),
            }
        )

    def until_all_logged(self, path: Path, deadline: float = 10.0) -> None:
        """Until nginx has written the line of every request sent so far to `path`.

        nginx logs a request after sending its response. With `compress` (no delaycompress)
        or `copytruncate`, a line written after logrotate copied the file is lost by logrotate
        itself, whatever reads the log; tests of those modes rotate only once it is written.
        """
        wanted = {request["path"] for request in self.sent[self.since_rotation :]}

        def logged() -> set[str]:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return set()
            return {line["path"] for line in parse(data.splitlines())}

        def missing() -> str:
            return f"not in {path.name}: {sorted(wanted - logged())}"

        wait_for(
            lambda: wanted <= logged(), deadline, f"every request written to {path.name}", missing
        )

    def rotated(self) -> None:
        """Requests sent from now on go to the new file."""
        self.since_rotation = len(self.sent)

    def until_logged_in(self, path: Path, deadline: float = 10.0) -> None:
        """Send until a line lands in `path` (after a rotation: nginx has reopened)."""

        def landed() -> bool:
            try:
                if path.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                pass
            self.one()
            return False

        wait_for(landed, deadline, f"a request logged in the new {path.name}")


def parse(recorded: list[bytes]) -> list[dict[str, str]]:
    return [json.loads(raw.decode("utf-8", "surrogateescape")) for raw in recorded]


def check_record(recorded: list[bytes], sent: list[dict[str, str]]) -> None:
    """Every request once, in order, with the fields import_logs.py reads intact."""
    lines = parse(recorded)
    got = [line["path"] for line in lines]
    want = [request["path"] for request in sent]
    if got != want:
        missing = [p for p in want if p not in got]
        repeated = [p for p in want if got.count(p) > 1]
        raise AssertionError(
            f"{len(got)} recorded, {len(want)} sent; {len(missing)} missing {missing[:5]}; "
            f"{len(repeated)} recorded twice or more {repeated[:5]}"
            + ("; same requests, other order" if sorted(got) == sorted(want) else "")
        )
    for line, request in zip(lines, sent):
        for key in ("path", "user_agent", "status", "host"):
            assert line[key] == request[key], (request["path"], key, line[key][:80])
        assert ISO_DATE.match(line["date"]), line["date"]
        datetime.fromisoformat(line["date"])
        assert line["ip"] == "127.0.0.1"
        assert line["method"] == "GET"


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def start_service(rig: Rig, access_log: Path):
    # Small batches: a backlog after a rotation becomes several hand-offs.
    rig.write_config([("access", access_log)], batch_lines=7, archive_enabled=False)
    return rig.start_service()


def stop_service(service) -> None:
    service.send(signal.SIGTERM)
    assert service.wait(15) == 0, service.describe()


def rotate_while_serving(rotator: Logrotate, traffic: Traffic, requests: int) -> None:
    """Requests go on while logrotate renames, creates and signals nginx to reopen."""
    proc = rotator.start()
    traffic.send(requests)
    rotator.finish(proc)


def rotation_rounds(
    rig: Rig, service, ngx, rotator: Logrotate, traffic: Traffic, rounds: int, during: bool
) -> None:
    for round_ in range(rounds):
        traffic.send(3)
        if round_ == 0:
            # Once with everything read before the rotation, then rotations that come before
            # matomo-rt's next tick (rotated files with unread lines).
            wait_all_recorded(rig, traffic, service)
        if during:
            rotate_while_serving(rotator, traffic, 4)
        else:
            traffic.until_all_logged(ngx.access_log)
            rotator.rotate()
        traffic.rotated()
        traffic.until_logged_in(ngx.access_log)
        traffic.send(2)


def wait_all_recorded(rig: Rig, traffic: Traffic, service) -> None:
    """Until every request sent so far is in the record (duplicates are checked after)."""
    wanted = {request["path"] for request in traffic.sent}

    def arrived() -> bool:
        return wanted <= {line["path"] for line in parse(rig.recorded())}

    wait_for(arrived, 20, f"all {len(wanted)} requests recorded", service.describe)


def finish(rig: Rig, service, traffic: Traffic) -> None:
    traffic.send(3)
    wait_all_recorded(rig, traffic, service)
    stop_service(service)
    check_record(rig.recorded(), traffic.sent)
    assert "Traceback" not in service.log(), service.log()


# ------------------------------------------------------------------------------------------


def test_create_rename_and_reopen(rig, tmp_path):
    with traversable_dir() as base, running_nginx(base, EXTRA_HTTP) as ngx:
        traffic = Traffic(ngx.port)
        service = start_service(rig, ngx.access_log)
        traffic.send(len(USER_AGENTS) * 2)  # every kind of request at least once
        rotator = Logrotate("create", ngx, tmp_path)
        rotation_rounds(rig, service, ngx, rotator, traffic, rounds=3, during=True)
        finish(rig, service, traffic)
        names = sorted(p.name for p in ngx.log_dir.iterdir())
        assert names == ["access.log", "access.log.1", "access.log.2", "access.log.3"], names


def test_dateext(rig, tmp_path):
    with traversable_dir() as base, running_nginx(base, EXTRA_HTTP) as ngx:
        traffic = Traffic(ngx.port)
        service = start_service(rig, ngx.access_log)
        traffic.send(5)
        rotator = Logrotate("dateext", ngx, tmp_path)
        rotation_rounds(rig, service, ngx, rotator, traffic, rounds=3, during=True)
        finish(rig, service, traffic)
        dated = sorted(p.name for p in ngx.log_dir.iterdir() if p.name != "access.log")
        # delaycompress: the newest dated generation plain, the older ones gzipped.
        assert len(dated) == 3, dated
        assert all(re.fullmatch(r"access\.log-\d{14}(\.gz)?", name) for name in dated), dated
        assert [name.endswith(".gz") for name in dated] == [True, True, False], dated


def test_compress_with_delaycompress_as_shipped(rig, tmp_path):
    with traversable_dir() as base, running_nginx(base, EXTRA_HTTP) as ngx:
        traffic = Traffic(ngx.port)
        service = start_service(rig, ngx.access_log)
        traffic.send(5)
        rotator = Logrotate("compress_delaycompress", ngx, tmp_path)
        rotation_rounds(rig, service, ngx, rotator, traffic, rounds=3, during=True)
        finish(rig, service, traffic)
        names = sorted(p.name for p in ngx.log_dir.iterdir())
        assert names == ["access.log", "access.log.1", "access.log.2.gz", "access.log.3.gz"]


def test_compress_at_once_also_while_matomo_rt_is_down(rig, tmp_path):
    with traversable_dir() as base, running_nginx(base, EXTRA_HTTP) as ngx:
        traffic = Traffic(ngx.port)
        service = start_service(rig, ngx.access_log)
        traffic.send(5)
        rotator = Logrotate("compress", ngx, tmp_path)
        rotation_rounds(rig, service, ngx, rotator, traffic, rounds=2, during=False)

        # Down across a rotation: the generation it was reading is gzipped before it returns,
        # with unread lines in it; it must find it by content and read on from its offset.
        wait_all_recorded(rig, traffic, service)
        stop_service(service)
        traffic.send(6)
        traffic.until_all_logged(ngx.access_log)
        rotator.rotate()
        traffic.rotated()
        traffic.until_logged_in(ngx.access_log)
        traffic.send(2)
        assert (ngx.log_dir / "access.log.1.gz").exists()
        service = rig.start_service()
        finish(rig, service, traffic)


def test_copytruncate_also_while_matomo_rt_is_down(rig, tmp_path):
    with traversable_dir() as base, running_nginx(base, EXTRA_HTTP) as ngx:
        traffic = Traffic(ngx.port)
        service = start_service(rig, ngx.access_log)
        traffic.send(5)
        rotator = Logrotate("copytruncate", ngx, tmp_path)
        rotation_rounds(rig, service, ngx, rotator, traffic, rounds=2, during=False)
        inode = ngx.access_log.stat().st_ino

        # Down across a copytruncate with unread lines, and the truncated file has grown past
        # the old offset by the time it returns: same inode, bigger than the offset, other
        # content. Resuming at the offset would lose the start of the new content.
        wait_all_recorded(rig, traffic, service)
        stop_service(service)
        size_at_stop = ngx.access_log.stat().st_size
        traffic.send(3)  # unread, copied away
        traffic.until_all_logged(ngx.access_log)
        rotator.rotate()
        traffic.rotated()
        while ngx.access_log.stat().st_size <= size_at_stop:
            traffic.one()
        assert ngx.access_log.stat().st_ino == inode
        service = rig.start_service()
        finish(rig, service, traffic)
        log = service.log()
        assert "truncated in place (copytruncate)" in log, log
