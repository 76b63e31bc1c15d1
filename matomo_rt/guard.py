"""The Guard: keep lines that would crash import_logs.py away from it.

This module holds the machinery and the nginx_json check; matomo_rt.shapes the other formats'.

import_logs.py's nginx_json parser dies (traceback, exit 1, the rest of the batch unsent) on
valid JSON it does not expect — a number where it wants a string, a null, a missing key — and a
batch that crashes it crashes it again on every retry. The Guard mirrors the parser's reads:
what has one clear meaning is normalised (number -> string, null -> absent), the rest goes to
a quarantine file with the reason, so a log never stalls and nothing vanishes silently. Lines
import_logs.py merely counts as invalid without crashing (a malformed date) pass through and
show up in its summary.
"""

from __future__ import annotations

import errno
import json
import json.scanner
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from matomo_rt import shapes

if TYPE_CHECKING:
    from matomo_rt.formats import LogFormat

#: Keys import_logs.py reads with no fallback: without a string there, it crashes.
_REQUIRED_STRINGS = ("ip", "path", "date")
#: Keys it reads as strings when present (`.startswith()`, `.partition()`): null means absent.
_OPTIONAL_STRINGS = ("referrer", "user_agent", "query_string")
_NUMBER = (int, float)
#: json.loads without its per-call wrapper: the Guard's budget is 200,000 lines/s.
_scan = json.scanner.c_make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
#: A JSON escape of a UTF-16 surrogate; a prefilter for the (rare) lone ones.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse(text: str) -> Any:
    """json.loads(text), faster on the usual line (no leading whitespace)."""
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text) and text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return obj


@dataclass
class GuardResult:
    """Lines for the importer, where each came from, and what was held back."""

    lines: list[bytes] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)  # batch line index of each sent line
    quarantined: list[tuple[int, str, bytes]] = field(default_factory=list)
    normalised: int = 0
    complete: bool = True  # False while guarded_chunks() has not reached the batch's end

    @property
    def sent(self) -> int:
        """Lines handed (or to hand) to the importer."""
        return len(self.origin)

    def original_lines_before(self, sent: int) -> int:
        """How many batch lines precede the `sent`-th line handed to the importer.

        import_logs.py's `--skip=N` counts the lines it received; the offset counts ours.
        """
        if sent >= len(self.origin):
            return -1  # all of them
        return self.origin[sent]


def check_line(line: bytes) -> tuple[Optional[bytes], str]:
    """(line to send, "") for a good or normalised line; (None, reason) to quarantine."""
    if b"\\x" in line or not line.isascii():
        text = line.decode("utf-8", "replace").replace("\\x", "\\u00")
    else:
        text = line.decode("ascii")
    try:
        obj = _parse(text)
    except ValueError:
        return None, "not valid JSON" if text.strip() else "empty line"
    except RecursionError:
        return None, "JSON nested too deeply"
    if type(obj) is not dict:
        return None, f"a JSON {type(obj).__name__}, not an object"
    if "\\" in text and _SURROGATE_ESCAPE.search(text) and not _encodable(obj):
        # In the host the site lookup fails (a fatal error at this line on every retry);
        # anywhere else Matomo's JSON decoder rejects the whole bulk request the line is in,
        # while import_logs.py counts every request of it as imported.
        return None, "a lone surrogate escape (\\ud800-\\udfff), which Matomo cannot decode"
    changed = False
    status = obj.get("status")
    if type(status) is not str:
        if type(status) is int:
            obj["status"] = str(status)
            changed = True
        else:
            return None, _why("status", status)
    elif not status:
        return None, "status is empty"
    for key in _REQUIRED_STRINGS:
        value = obj.get(key)
        if type(value) is not str:
            return None, _why(key, value)
    date = obj["date"]
    # The usual "2024-05-01T10:00:00+02:00" skips the full check: a zone of 5 characters or
    # fewer moves a date by 42 days at most.
    size = len(date)
    usual = size < 25 or (size == 25 and date[22] == ":")
    if not (usual and "0002" <= date[:4] <= "9998") and not _date_in_range(date):
        return None, "date is out of range once its time zone is applied"
    if "userid" in obj and not _standard_json(obj["userid"]):
        # Sent as is (`uid`): Matomo's JSON decoder then rejects the whole bulk request.
        return None, "userid holds NaN or Infinity, which Matomo cannot decode"
    host = obj.get("host")
    if type(host) is not str:
        # Missing or null, import_logs.py's resolver thread dies and the importer hangs; an
        # empty host is its own "no-hostname-found-in-log".
        if host is None:
            obj["host"] = ""
        elif type(host) in _NUMBER:
            obj["host"] = str(host)
        else:
            return None, _why("host", host)
        changed = True
    for key in _OPTIONAL_STRINGS:
        if key in obj:
            value = obj[key]
            if type(value) is str:
                continue
            if value is None:
                del obj[key]
            elif type(value) in _NUMBER:
                obj[key] = str(value)
            else:
                return None, _why(key, value)
            changed = True
    if "length" in obj:
        value = obj["length"]
        if value is None or (type(value) is float and math.isinf(value)):
            # null, or 1e400 (int() of infinity crashes it): absent, i.e. 0
            del obj["length"]
            changed = True
        elif type(value) not in (str, int, float):
            return None, _why("length", value)
    value = obj.get("generation_time_milli", None)
    if type(value) not in (str, int, float) or not _finite(value):
        if type(value) in (list, dict, bool):
            return None, _why("generation_time_milli", value)
        # Missing, null or infinite crash it; "-" is its own "unknown", recorded as 0.
        obj["generation_time_milli"] = "-"
        changed = True
    if not changed:
        return line, ""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace") + b"\n", ""


def _finite(value: Any) -> bool:
    """False for what float() reads as infinite ("inf", 1e400): int() of it crashes."""
    try:
        return math.isfinite(float(value) * 1000)
    except OverflowError:
        return False  # an integer too large for a float: float() crashes it too
    except ValueError:
        return True  # not a number at all: import_logs.py falls back to 0 itself


def _encodable(obj: Any) -> bool:
    """Whether every string in `obj` is valid Unicode (no lone surrogate)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _standard_json(value: Any) -> bool:
    """Whether `value` has no NaN or Infinity (Python's JSON extensions, which PHP rejects)."""
    if type(value) is str:
        return True
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def _date_in_range(date: str) -> bool:
    """False when import_logs.py would crash (OverflowError) applying the zone to the date.

    It reads `date[19:]` without ":" as a number `±hhmm` (any length) and subtracts that many
    hours and minutes; an unparsable date or zone is merely an invalid line to it.
    """
    # "replace": a lone surrogate from JSON cannot be encoded; "?" fails to parse, as it did.
    head, zone = (part.encode("utf-8", "replace") for part in (date[:19], date[19:]))
    return shapes.shift_in_range(head, zone, "%Y-%m-%dT%H:%M:%S")


def _why(key: str, value: Any) -> str:
    if value is None:
        return f"{key} is missing or null"
    return f"{key} is a {type(value).__name__}, not a string"


Check = Callable[[bytes], "tuple[Optional[bytes], str]"]


def checker(fmt: Optional[LogFormat]) -> Check:
    """The line check for a format's family: field checks for each JSON shape, byte-level
    checks for text lines (whose unparsable lines import_logs.py counts as invalid)."""
    if fmt is None or fmt.name == "nginx_json":
        return check_line
    if fmt.name == "caddy_json":
        return shapes.check_caddy
    if fmt.name == "traefik_json":
        return shapes.check_traefik
    if fmt.date_in_brackets and fmt.regex is None:
        return shapes.check_bracketed
    return shapes.check_text


def guarded_chunks(
    lines: Iterable[bytes],
    result: GuardResult,
    chunk_bytes: int = 1 << 20,
    check: Check = check_line,
) -> Iterator[bytes]:
    """The importer's stdin in large pieces, checked as it is consumed.

    Lazy, so the Guard works while import_logs.py is busy with the previous piece (the two
    overlap on a multi-core host) and no second copy of the batch is held. `result` is filled
    as it goes (good lines are not kept) and marked complete at the end.
    """
    result.complete = False
    piece: list[bytes] = []
    size = 0
    for index, line in enumerate(lines):
        good, reason = check(line)
        if good is None:
            result.quarantined.append((index, reason, line))
            continue
        if good is not line:
            result.normalised += 1
        result.origin.append(index)
        piece.append(good)
        size += len(good)
        if size >= chunk_bytes:
            yield b"".join(piece)
            piece, size = [], 0
    if piece:
        yield b"".join(piece)
    result.complete = True


def guard(lines: Iterable[bytes], check: Check = check_line) -> GuardResult:
    """All at once, keeping each line to send in `lines` (tests and tools; the pipeline streams)."""
    result = GuardResult()
    result.lines = list(guarded_chunks(lines, result, chunk_bytes=0, check=check))
    return result


class Quarantine:
    """A JSON-lines file of held-back lines, with their reasons.

    The raw bytes survive (surrogate escapes for invalid UTF-8), so an operator can repair and
    re-import them. Entries belong to the commit of their batch: the state file records how
    many bytes of this file are committed (`write` keeps exactly those and appends after
    them), so a retry never writes an entry twice and a torn append does not survive.
    """

    def __init__(self, path: Path, log_name: str) -> None:
        self.path = path
        self.log_name = log_name

    def size(self) -> int:
        """Bytes in the file (0 when there is none)."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._error(exc) from None

    def write(self, entries: Iterable[tuple[str, bytes]], after: int) -> int:
        """Keep the first `after` bytes (fewer if an operator shortened the file), append
        `entries` and fsync; returns the new size. StateError when the disk refuses."""
        from matomo_rt.store import write_all

        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out = []
        for reason, raw in entries:
            record = {
                "time": stamp,
                "log": self.log_name,
                "reason": reason,
                "line": raw.rstrip(b"\n").decode("utf-8", "surrogateescape"),
            }
            out.append(json.dumps(record, ensure_ascii=True) + "\n")
        data = "".join(out).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                keep = min(after, os.fstat(fd).st_size)
                os.ftruncate(fd, keep)
                os.lseek(fd, keep, os.SEEK_SET)
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(exc) from None
        return keep + len(data)

    def _error(self, exc: OSError) -> Exception:
        from matomo_rt.store import StateError

        hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return StateError(f"{self.path}: cannot write the quarantine file: {exc.strerror}{hint}")
