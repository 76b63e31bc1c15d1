"""Split a batch's lines between K importers by visitor, the same way on every retry.

import_logs.py keeps one client's hits in order by giving each client IP to one of its recorders
(a hash modulo their number); one level up, matomo-rt gives each IP of a batch to one of K
import_logs.py processes (each with one recorder, so its `--skip=N` stays exact). Batches are
imported one after the other, so a visitor's hits stay in order as long as, within a batch, all
of them go to one process in the log's order.

Which process gets a visitor is decided per batch, to balance the work: visitors with the most
lines first, each to the partition with the fewest lines so far. A hash modulo K leaves one
partition 10-20 % over the mean with a few hundred visitors, and the batch waits for its
slowest run. The split must be a pure function of the lines: a batch left open by a failure is
read again, split again, and only what each partition still lacks is sent. So nothing in it
depends on the process (Python's hash() of a str does) or on anything but the lines.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from typing import Callable, Optional

from matomo_rt import formats
from matomo_rt.formats import LogFormat

#: The top-level "ip" key of a JSON log line and its string value, escapes included. Inside a
#: JSON string every quote is escaped, so `"ip":"` only occurs as a key.
_JSON_IP = re.compile(rb'"ip"\s*:\s*"((?:[^"\\]|\\.)*)"')

VisitorKey = Callable[[bytes], Optional[bytes]]


def json_ip(line: bytes) -> Optional[bytes]:
    """The raw bytes of a JSON line's "ip" value (None when it has none)."""
    match = _JSON_IP.search(line)
    return None if match is None else match.group(1)


def visitor_key(fmt: LogFormat, flags: tuple[str, ...] = ()) -> VisitorKey:
    """How to find the visitor in a line of `fmt` (matomo_rt.formats knows where it is)."""
    if fmt.family == formats.JSON and fmt.visitor == "ip":
        return json_ip  # nginx_json, the default: without parsing the line
    return lambda line: formats.visitor_key(fmt, line, flags)


def split(lines: Sequence[bytes], k: int, key: VisitorKey) -> list[list[int]]:
    """Indexes into `lines` for each of `k` partitions, each in the lines' order, every
    visitor's lines in one partition, the partitions about equal in lines."""
    by_visitor: dict[Optional[bytes], int] = {}
    keys = [key(line) for line in lines]
    for visitor in keys:
        by_visitor[visitor] = by_visitor.get(visitor, 0) + 1
    # Largest first, ties by the visitor's bytes: the same order in every process.
    order = sorted(by_visitor.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or b""))
    loads = [(0, p) for p in range(max(k, 1))]
    owner: dict[Optional[bytes], int] = {}
    for visitor, count in order:
        load, p = heapq.heappop(loads)  # the least loaded, the lowest index among equals
        owner[visitor] = p
        heapq.heappush(loads, (load + count, p))
    parts: list[list[int]] = [[] for _ in range(max(k, 1))]
    for index, visitor in enumerate(keys):
        parts[owner[visitor]].append(index)
    return parts
