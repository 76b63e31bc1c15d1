"""Which log format a file is in, from its recent lines.

matomo-rt always tells import_logs.py the format (its own detection eats the first lines of
stdin), so a log in another format than configured does not fail loudly: import_logs.py counts
its lines invalid, or the Guard quarantines them. `check`, `init` and the health verdict ask
this module instead: it classifies each of a log's last lines by the shapes import_logs.py
reads and names the best fit with its import_logs.py format name.

Recognised: nginx JSON (contrib/nginx/matomo-rt-log-format.conf), Caddy's and Traefik's JSON
access logs, combined (``ncsa_extended``), common, vhost_combined (``common_complete``) and
common with a leading virtual host (``common_vhost``). Anything else is "unknown" (format None),
JSON of another shape included. The patterns below describe what import_logs.py's own patterns
accept (a prefix match: trailing fields are allowed), so a line parsed here parses there too.

For callers: ``detect_file(path)`` (or ``detect_lines(lines)`` on lines already read) gives a
Detection; ``mismatch(configured_format, detection)`` turns it into the one-line
"this log is not in its format — the fix" that `check`, `init` and the health verdict print,
or None when the log is in its format (or this module cannot tell).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from matomo_rt import formats

#: Bytes read from the end of a log to find its recent lines.
SAMPLE_BYTES = 256 * 1024
#: At most this many of the last complete lines are classified.
SAMPLE_LINES = 200
#: A configured format that parses less than this share of the recent lines is wrong.
WRONG_BELOW = 0.5
#: Between WRONG_BELOW and this share, some lines are in another format: worth a warning.
MIXED_BELOW = 0.9

NGINX_JSON = "nginx_json"
CADDY_JSON = "caddy_json"
TRAEFIK_JSON = "traefik_json"
COMBINED = "ncsa_extended"
COMMON = "common"
VHOST_COMBINED = "common_complete"
VHOST_COMMON = "common_vhost"

#: The formats this module can recognise, most specific first (a combined line also parses as
#: common: it is combined).
DETECTABLE = (NGINX_JSON, CADDY_JSON, TRAEFIK_JSON, VHOST_COMBINED, COMBINED, VHOST_COMMON, COMMON)

#: What a person calls each format.
DESCRIPTIONS = {
    NGINX_JSON: "nginx JSON (the log_format of contrib/nginx/matomo-rt-log-format.conf)",
    CADDY_JSON: "Caddy's JSON access log",
    TRAEFIK_JSON: "Traefik's JSON access log",
    COMBINED: "combined (nginx's default, Apache's `combined`)",
    COMMON: "common (Apache's `common`: no referrer or user agent)",
    VHOST_COMBINED: "vhost_combined (Apache's `vhost_combined`: host:port, then combined)",
    VHOST_COMMON: "common with a leading virtual host",
}

# One request line of the NCSA family: client, identity, user, [time zone], "METHOD PATH
# PROTOCOL", status, size. Whitespace is \s+ and the client may be any word-ish token, as
# import_logs.py allows.
_CLIENT = r"[\w.:*-]+"
_COMMON = (
    _CLIENT + r"\s+\S+\s+\S+\s+\[[^\]\s]*?\s+[^\]]*?\]\s+"
    r'"\S+\s+.*?\s+\S+"\s+\d+\s+\S+'
)
_REFERRER_AGENT = r'\s+".*?"\s+".*?"'
_VHOST = r"[\w.-]*(?::\d+)?\s+"
_LINE_PATTERNS = {
    VHOST_COMBINED: re.compile(_VHOST + _COMMON + _REFERRER_AGENT),
    COMBINED: re.compile(_COMMON + _REFERRER_AGENT),
    VHOST_COMMON: re.compile(_VHOST + _COMMON),
    COMMON: re.compile(_COMMON),
}
#: Keys import_logs.py's nginx_json reader needs (the Guard quarantines lines without them).
_NGINX_KEYS = ("ip", "path", "status", "date")


@dataclass(frozen=True)
class Detection:
    """What a log's recent lines look like.

    `format` is import_logs.py's name for the best fit, or None when no format it reads fits
    (`description` then says what the lines are). `share` is the part of the sampled lines
    that format parses; `parsed` holds that count for every detectable format.
    """

    format: Optional[str]
    description: str
    share: float
    lines: int
    parsed: Mapping[str, int] = field(default_factory=dict)
    example: str = ""  # the first sampled line no format parses, shortened
    #: Lines by the most specific format that parses them ("" for none), and an example each.
    kinds: Mapping[str, int] = field(default_factory=dict)
    examples: Mapping[str, str] = field(default_factory=dict)

    def share_of(self, fmt: str) -> Optional[float]:
        """Share of the sampled lines `fmt` parses; None if this module cannot tell."""
        if fmt not in DETECTABLE or not self.lines:
            return None
        return self.parsed.get(fmt, 0) / self.lines

    def summary(self) -> str:
        """One phrase for a person: "combined (…), 200 of 200 recent lines"."""
        if not self.lines:
            return self.description
        count = round(self.share * self.lines)
        return f"{self.description}, {count} of {self.lines} recent lines"


def sample_lines(
    path: Path, max_bytes: int = SAMPLE_BYTES, max_lines: int = SAMPLE_LINES
) -> list[bytes]:
    """The last `max_lines` complete lines within the last `max_bytes` of `path`.

    A partial last line (the server is writing it) and the partial first line of the window
    are left out. Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(size - max_bytes, 0)
        fh.seek(start)
        data = fh.read(max_bytes)
    if start > 0:
        cut = data.find(b"\n")
        data = data[cut + 1 :] if cut >= 0 else b""
    end = data.rfind(b"\n")
    lines = data[: end + 1].splitlines() if end >= 0 else []
    return [line for line in lines[-max_lines:] if line.strip()]


def formats_of(line: bytes) -> tuple[str, ...]:
    """Every detectable format that parses `line`, most specific first; () for none."""
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        return _json_formats(text)
    return tuple(name for name, pattern in _LINE_PATTERNS.items() if pattern.match(text))


def _json_object(text: str) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(text)
    except ValueError:
        # nginx's default escaping writes \xHH, which import_logs.py rewrites before parsing.
        try:
            value = json.loads(text.replace("\\x", "\\u00"))
        except ValueError:
            return None
    except RecursionError:
        return None
    return value if isinstance(value, dict) else None


def _json_formats(text: str) -> tuple[str, ...]:
    obj = _json_object(text)
    if obj is None:
        return ()
    request = obj.get("request")
    if isinstance(request, dict) and "resp_headers" in obj and "ts" in obj:
        return (CADDY_JSON,)
    if "RequestHost" in obj or "DownstreamStatus" in obj or {"level", "msg", "time"} <= set(obj):
        return (TRAEFIK_JSON,)
    if all(key in obj for key in _NGINX_KEYS):
        return (NGINX_JSON,)
    return ()


def formats_named(kind: str) -> tuple[str, ...]:
    """The formats that parse a line whose most specific format is `kind` ("" for none)."""
    wider = {COMBINED: (COMBINED, COMMON), VHOST_COMBINED: (VHOST_COMBINED, VHOST_COMMON)}
    return wider.get(kind, (kind,) if kind else ())


def _shorten(line: bytes, limit: int = 80) -> str:
    text = line.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def detect_lines(lines: Iterable[bytes]) -> Detection:
    """Classify `lines` (without their newlines) and name the format most of them are in."""
    parsed: dict[str, int] = {}
    kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    total = 0
    json_other = 0
    for line in lines:
        total += 1
        fits = formats_of(line)
        for name in fits:
            parsed[name] = parsed.get(name, 0) + 1
        kind = fits[0] if fits else ""
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind not in examples:
            examples[kind] = _shorten(line)
        if not fits and line.lstrip().startswith(b"{"):
            json_other += _json_object(line.decode("utf-8", "replace")) is not None
    if not total:
        return Detection(None, "empty: no complete line to look at", 0.0, 0)
    shown = examples.get("", "")

    def found(fmt: Optional[str], description: str, share: float) -> Detection:
        return Detection(fmt, description, share, total, parsed, shown, kinds, examples)

    known = [name for name in kinds if name]
    if known:
        # The most specific format of the most lines; ties go to the more specific one.
        winner = max(known, key=lambda name: (kinds[name], -DETECTABLE.index(name)))
        if parsed[winner] * 2 > total:
            return found(winner, DESCRIPTIONS[winner], parsed[winner] / total)
    if json_other * 2 > total:
        return found(
            None,
            "JSON of a shape import_logs.py does not read (not nginx, Caddy or Traefik JSON)",
            json_other / total,
        )
    return found(None, "no format import_logs.py can be told to read", 0.0)


def detect_file(path: Path) -> Detection:
    """detect_lines() over the last lines of `path`; raises OSError when it cannot be read."""
    return detect_lines(sample_lines(path))


def config_name(fmt: str) -> str:
    """The name to write in `format = "…"`: the alias users know where there is one."""
    return next((alias for alias, name in formats.ALIASES.items() if name == fmt), fmt)


def set_format_fix(fmt: str) -> str:
    """How to configure a log in `fmt`: the format key, and the site when lines name no host."""
    fix = f'set format = "{config_name(fmt)}" for this log'
    if not formats.resolve(fmt).has_host:
        fix += " with its site (idsite = N): its lines name no host"
    return fix


def mismatch(configured: str, detection: Detection) -> Optional[str]:
    """Why a log does not look like its `configured` format, with the fix; None if it does.

    None also when this module cannot tell (an empty log, a format it does not recognise such
    as w3c_extended, a custom format_regex).
    """
    share = detection.share_of(configured)
    if share is None or share >= MIXED_BELOW:
        return None
    total = detection.lines
    others = total - detection.parsed.get(configured, 0)
    if share >= WRONG_BELOW:
        head = f"{others} of the last {total} lines are not {configured}"
        # Name what the foreign lines are: the most frequent other kind, with an example.
        other = max(
            (kind for kind in detection.kinds if configured not in formats_named(kind)),
            key=lambda kind: detection.kinds[kind],
        )
        what = DESCRIPTIONS.get(other, "no known format")
        head += f" ({detection.kinds[other]} {what}, e.g. {detection.examples[other]!r})"
        return f"{head} — make the server write one format to this log"
    if detection.format is not None:
        count = round(detection.share * total)
        head = f"is {detection.description} ({count} of the last {total} lines), not {configured}"
    else:
        head = f"is not {configured}: {detection.description}"
        if detection.example:
            head += f", e.g. {detection.example!r}"
    fixes = []
    if detection.format is not None:
        fixes.append(set_format_fix(detection.format))
    if configured == NGINX_JSON and detection.format not in (CADDY_JSON, TRAEFIK_JSON):
        fixes.append(
            "log in nginx JSON with the log_format of contrib/nginx/matomo-rt-log-format.conf"
        )
    if not fixes:
        fixes.append(f"make the server write {configured}, or set format_regex to its layout")
    return f"{head} — {', or '.join(fixes)}"
