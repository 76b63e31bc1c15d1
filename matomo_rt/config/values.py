"""Converters for configuration values: each returns the value or raises ValueError saying why.

The loader (matomo_rt.config.load) names the file and key path in front of the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from matomo_rt import formats

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "k": 1024,
    "KiB": 1024,
    "KB": 1000,
    "M": 1024**2,
    "MiB": 1024**2,
    "MB": 1000**2,
    "G": 1024**3,
    "GiB": 1024**3,
    "GB": 1000**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from 90, 1.5, "90s", "5m", "1h", "250ms"."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 90, "90s", "5m"')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f'{value!r} is not a duration (use 90, "90s", "5m", "1h")')
    if seconds <= 0:
        raise ValueError(f"{value!r}: must be more than 0")
    return seconds


def interval(value: Any) -> float:
    """import.interval: a duration of at least a second."""
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError("must be at least 1s")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from 8388608, "8MiB", "512KiB"."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as 8388608 or "8MiB"')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ValueError(f'{value!r} is not a size (use 8388608, "8MiB", "512KiB")')
    if size <= 0:
        raise ValueError(f"{value!r}: must be more than 0")
    return size


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r}: must be a whole number above 0")
    return value


#: More importers than this only queue up in front of Matomo's PHP workers.
MAX_WORKERS = 16


def workers(value: Any) -> int:
    count = positive_int(value)
    if count > MAX_WORKERS:
        raise ValueError(f"{value!r}: at most {MAX_WORKERS} (Matomo serves the imports)")
    return count


def share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError("must be a share between 0 and 1, such as 0.5")
    return float(value)


def path(value: Any) -> Path:
    return Path(string(value)).expanduser()


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r}: must be one of {', '.join(map(repr, choices))}")
        return value

    return convert


def url(value: Any) -> str:
    text = string(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL such as https://matomo.example.org")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: give Matomo's base URL, without ?query or #fragment")
    return text


def listen(value: Any) -> str:
    text = string(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: use HOST:PORT such as 127.0.0.1:9464")
    return text


def cron(value: Any) -> str:
    text = string(value)
    if len(text.split()) != 5:
        raise ValueError(f'{value!r}: use a 5-field cron expression such as "5 * * * *"')
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    return text


def name(value: Any) -> str:
    text = string(value)
    if not _NAME_RE.match(text):
        raise ValueError(f"{value!r}: use letters, digits, '.', '_' or '-' (it names state files)")
    return text


def format_name(value: Any) -> str:
    text = string(value)
    try:
        return formats.resolve(text).name
    except KeyError:
        known = ", ".join(formats.names())
        raise ValueError(
            f"{value!r} is not a format import_logs.py reads (one of: {known}; or set format_regex)"
        ) from None


def format_regex(value: Any) -> str:
    text = string(value)
    formats.custom(text)  # raises ValueError naming the problem
    return text
