"""The Guard's checks for formats other than nginx_json (which guard.py owns).

Each mirrors what import_logs.py's parser of that format reads without a fallback: there a
missing or mistyped value crashes it (traceback, the rest of the batch unsent, the same crash on
every retry), so such a line is quarantined, or normalised when the fix has one meaning. What
the parser merely counts as an invalid line (a text line its regex does not match, a bad date)
passes: import_logs.py counts it in its summary, and matomo-rt reports the count.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any, Callable, Optional

Check = Callable[[bytes], "tuple[Optional[bytes], str]"]

#: `[01/May/2024:10:00:00 +0200]`: the date and zone of the Apache-style formats.
_BRACKETS = re.compile(rb"\[([^\]\s]+)\s+([^\]]*?)\]")
#: Seconds since the epoch of 0001-01-01 and 9999-12-31T23:59:59 (what datetime can hold).
_TS_MIN, _TS_MAX = -62135596800, 253402300799


def check_text(line: bytes) -> tuple[Optional[bytes], str]:
    """A text line: only what no regex should see. Invalid UTF-8 is replaced by the importer
    (PYTHONIOENCODING=utf-8:replace), unmatched lines are its own "invalid log lines"."""
    if b"\0" in line:
        return None, "a NUL byte: not a text line (a crash can leave zeros in a log)"
    return line, ""


def check_bracketed(line: bytes) -> tuple[Optional[bytes], str]:
    """A text line whose `[date zone]` import_logs.py applies: a zone that moves the date out of
    the years 1-9999 crashes it (OverflowError), where a merely bad one is an invalid line."""
    good, reason = check_text(line)
    if good is None:
        return good, reason
    m = _BRACKETS.search(line)
    if m and not shift_in_range(m.group(1), m.group(2), "%d/%b/%Y:%H:%M:%S"):
        return None, "date is out of range once its time zone is applied"
    return line, ""


def shift_in_range(date: bytes, zone: bytes, layout: str) -> bool:
    """False when subtracting the zone (read as ±hhmm, any length) overflows the date."""
    try:
        moment = datetime.datetime.strptime(date.decode("ascii"), layout)
        number = int(zone.replace(b":", b"") or b"0")
    except ValueError:
        return True  # import_logs.py counts it as invalid, without crashing
    sign = -1 if number < 0 else 1
    magnitude = abs(number)
    try:
        moment - datetime.timedelta(
            hours=int(magnitude / 100) * sign, minutes=magnitude % 100 * sign
        )
    except OverflowError:
        return False
    return True


def _load(line: bytes) -> tuple[Any, str]:
    """The JSON object on `line`, or (None, why not)."""
    text = line.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return None, "not valid JSON" if text.strip() else "empty line"
    except RecursionError:
        return None, "JSON nested too deeply"
    if type(obj) is not dict:
        return None, f"a JSON {type(obj).__name__}, not an object"
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, "a lone surrogate escape (\\ud800-\\udfff), which Matomo cannot decode"
    return obj, ""


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_caddy(line: bytes) -> tuple[Optional[bytes], str]:
    """Caddy's access log entry. import_logs.py maps the whole entry on every field it reads,
    so any missing key makes the status unreadable and crashes it; a missing User-Agent header
    crashes it too (it strips quotes from None)."""
    obj, reason = _load(line)
    if obj is None:
        return None, reason
    request = obj.get("request")
    if type(request) is not dict:
        return None, "no request object: not a Caddy access log entry"
    changed = False
    if "client_ip" not in request and type(request.get("remote_ip")) is str:
        # Caddy before 2.7 (Debian 12's 2.6) names the client remote_ip only; import_logs.py
        # reads client_ip, which later Caddy sets to the same address without trusted proxies.
        request["client_ip"] = request["remote_ip"]
        changed = True
    for key in ("client_ip", "host", "method", "uri"):
        if type(request.get(key)) is not str:
            return None, f"request.{key} is missing or not a string"
    headers = request.get("headers")
    if type(headers) is not dict:
        return None, "request.headers is missing or not an object"
    ts = obj.get("ts")
    if not _finite_number(ts) or not _TS_MIN <= ts <= _TS_MAX:
        return None, "ts is missing or not a time (seconds since 1970)"
    if not _finite_number(obj.get("duration")):
        return None, "duration is missing or not a number"
    for key in ("size", "status"):
        if key not in obj or obj[key] is None or obj[key] == "":
            return None, f"{key} is missing or empty"
    if "user_id" not in obj:
        obj["user_id"] = ""  # no user: what Caddy writes for an anonymous request
        changed = True
    agent = headers.get("User-Agent")
    if type(agent) is str:
        agent = headers["User-Agent"] = [agent]
        changed = True
    if type(agent) is not list or not agent or type(agent[0]) is not str:
        headers["User-Agent"] = [""]  # no header: an empty user agent
        changed = True
    referrer = headers.get("Referer")
    if type(referrer) is str:
        headers["Referer"] = [referrer]
        changed = True
    elif referrer is not None and (type(referrer) is not list or _not_text(referrer)):
        del headers["Referer"]  # none: import_logs.py's own "no referrer"
        changed = True
    if not changed:
        return line, ""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n", ""


def _not_text(values: list[Any]) -> bool:
    """import_logs.py takes a header's first value as a string."""
    return bool(values) and type(values[0]) is not str


def check_traefik(line: bytes) -> tuple[Optional[bytes], str]:
    """Traefik's JSON access log. import_logs.py reads every field as text with '' when absent,
    so only an empty status (it reads its first character) and a date whose zone overflows
    crash it."""
    obj, reason = _load(line)
    if obj is None:
        return None, reason
    status = obj.get("DownstreamStatus")
    if status is None or str(status) == "":
        return None, "DownstreamStatus is missing or empty"
    when = obj.get("time")
    if type(when) is str and len(when) > 19:
        zone = when[19:].replace(":", "").encode()
        if not shift_in_range(when[:19].encode(), zone, "%Y-%m-%dT%H:%M:%S"):
            return None, "time is out of range once its time zone is applied"
    return line, ""
