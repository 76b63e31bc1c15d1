"""Splitting a batch by visitor: a pure function of the lines, each visitor in one partition
in the log's order, the same in every process (a retry re-splits an open batch)."""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from matomo_rt import formats
from matomo_rt.guard import check_line
from matomo_rt.partition import json_ip, split, visitor_key


def line(ip: str, path: str = "/", **extra: object) -> bytes:
    record = {"ip": ip, "host": "h", "path": path, "status": "200", "date": "2024-01-01T00:00:00"}
    record.update(extra)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def test_the_ip_is_read_from_nginx_and_from_normalised_lines() -> None:
    assert json_ip(line("203.0.113.9")) == b"203.0.113.9"
    normalised, _ = check_line(line("2001:db8::1", status=404))  # re-dumped with spaces
    assert normalised is not None and b'"ip": "2001:db8::1"' in normalised
    assert json_ip(normalised) == b"2001:db8::1"
    # Escaped quotes inside other values are not mistaken for the key.
    # Quotes inside values before the key are escaped, so they are not mistaken for it.
    tricky = json.dumps({"path": '/a"ip":"x', "user_agent": '"ip":"no"', "ip": "198.51.100.1"})
    assert json_ip(tricky.encode()) == b"198.51.100.1"
    assert json_ip(b'{"host":"h"}\n') is None


def test_each_format_finds_its_visitor() -> None:
    assert visitor_key(formats.resolve("nginx_json")) is json_ip
    combined = visitor_key(formats.resolve("ncsa_extended"))
    line_ = b'192.0.2.7 - - [01/May/2024:10:00:00 +0200] "GET / HTTP/1.1" 200 5\n'
    assert combined(line_) == b"192.0.2.7"
    caddy = visitor_key(formats.resolve("caddy_json"))
    assert caddy(b'{"request":{"client_ip":"2001:db8::9","uri":"/"}}\n') == b"2001:db8::9"


def test_the_split_does_not_depend_on_the_process() -> None:
    """Python's hash() of a str changes per process; the split of a batch must not."""
    code = (
        "from matomo_rt.partition import json_ip, split;"
        "from tests.test_partition import line;"
        "print(split([line('198.51.100.%d' % (i * 7 % 40), str(i)) for i in range(300)], 4,"
        " json_ip))"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        for _ in range(2)
    }
    lines = [line(f"198.51.100.{i * 7 % 40}", str(i)) for i in range(300)]
    assert runs == {str(split(lines, 4, json_ip)) + "\n"}


def test_visitors_are_spread_so_the_partitions_are_about_equal() -> None:
    """250 visitors with skewed traffic: no partition waits far behind the others."""
    lines = [line(f"10.0.{i % 250 % 17}.{i % 250}", f"/{i}") for i in range(5000)]
    lines += [line("10.9.9.9", f"/big/{i}") for i in range(300)]  # one heavy visitor
    parts = split(lines, 4, json_ip)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] - sizes[0] <= 20, sizes


ips = st.sampled_from([f"10.0.0.{i}" for i in range(12)] + ["2001:db8::7", "::1"])


@given(st.lists(ips, max_size=60), st.integers(1, 6))
def test_split_partitions_the_lines_keeping_each_visitor_together_and_in_order(
    visitors: list[str], k: int
) -> None:
    lines = [line(ip, f"/{i}") for i, ip in enumerate(visitors)]
    parts = split(lines, k, json_ip)
    assert len(parts) == k
    assert sorted(i for part in parts for i in part) == list(range(len(lines)))
    assert all(part == sorted(part) for part in parts)
    owner: dict[str, int] = {}
    for p, part in enumerate(parts):
        for i in part:
            assert owner.setdefault(visitors[i], p) == p
    assert split(lines, k, json_ip) == parts
    # About equal: no partition exceeds another by more than its largest visitor's lines.
    sizes = [len(part) for part in parts]
    largest = max((visitors.count(v) for v in set(visitors)), default=0)
    assert max(sizes) - min(sizes) <= largest
