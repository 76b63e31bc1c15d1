"""Split a batch's lines between K importers by visitor, the same way on every retry.

import_logs.py keeps one client's hits in order by giving each client IP to one recorder; one
level up, matomo-rt gives each IP to one of K import_logs.py processes (each with one recorder,
so its `--skip=N` stays exact). The split must be a pure function of the lines: a batch left
open by a failure is read again, split again, and only what each partition still lacks is sent.
So the hash is CRC-32 of the IP's bytes (Python's hash() of a str changes with every process).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Callable, Optional

#: The top-level "ip" key of a JSON log line and its string value, escapes included. Inside a
#: JSON string every quote is escaped, so `"ip":"` only occurs as a key.
_JSON_IP = re.compile(rb'"ip"\s*:\s*"((?:[^"\\]|\\.)*)"')

VisitorKey = Callable[[bytes], Optional[bytes]]


def json_ip(line: bytes) -> Optional[bytes]:
    """The raw bytes of a JSON line's "ip" value (None when it has none)."""
    match = _JSON_IP.search(line)
    return None if match is None else match.group(1)


#: Formats whose lines name the visitor, and how to find it. Formats not listed get one
#: partition: with no visitor to keep together, splitting could reorder a visit.
_KEYS: dict[str, VisitorKey] = {"nginx_json": json_ip}


def visitor_key(format_name: str) -> Optional[VisitorKey]:
    """How to find the visitor in a line of `format_name`, or None (then K = 1)."""
    return _KEYS.get(format_name)


def partition_of(key: Optional[bytes], k: int) -> int:
    """Which of `k` partitions a visitor belongs to (lines without one: the first)."""
    if key is None or k <= 1:
        return 0
    return zlib.crc32(key) % k


def split(lines: Sequence[bytes], k: int, key: VisitorKey) -> list[list[int]]:
    """Indexes into `lines` for each of `k` partitions, each in the lines' order."""
    parts: list[list[int]] = [[] for _ in range(k)]
    for index, line in enumerate(lines):
        parts[partition_of(key(line), k)].append(index)
    return parts
