"""The log formats import_logs.py reads, and what matomo-rt must know about each.

One registry, so the configuration, the Guard, `check`, the importer's argv and (issue 13) the
visitor partitioning agree on a format's facts: its family (JSON object per line, a plain text
line, or W3C with a `#Fields:` header), whether its lines carry the host (else the whole log
needs an `idsite`), and where the visitor's address is. The facts come from import_logs.py's
format table (Matomo 4.x/5.x); the format is always passed explicitly, never detected: detection
eats the first lines of stdin.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

JSON = "json"  # one JSON object a line: the Guard checks the fields the parser reads
LINE = "line"  # one text line, parsed by a regex: byte-level checks, unparsable lines counted
W3C = "w3c"  # text lines laid out by a `#Fields:` header (which a tail never sees again)

#: The groups import_logs.py reads from every line without a fallback: a custom regex without
#: one of them crashes it on the first line it matches.
REQUIRED_GROUPS = ("ip", "path", "status", "date")


@dataclass(frozen=True)
class LogFormat:
    """One import_logs.py format (or a custom regex), with the facts matomo-rt relies on."""

    name: str  # import_logs.py's --log-format-name, or "custom" for a regex
    family: str  # JSON, LINE or W3C
    has_host: Optional[bool]  # None: decided by the W3C fields line
    visitor: str  # JSON key path ("request.client_ip") or the line's token index ("0")
    regex: Optional[str] = None  # the custom --log-format-regex
    date_in_brackets: bool = False  # `[01/May/2024:10:00:00 +0200]`, as Apache writes it

    def argv(self) -> list[str]:
        """The importer's format option: always explicit (detection eats stdin's head)."""
        if self.regex is not None:
            return [f"--log-format-regex={self.regex}"]
        return [f"--log-format-name={self.name}"]

    @property
    def label(self) -> str:
        return "format_regex" if self.regex is not None else self.name


def _line(name: str, host: bool, ip_token: int, brackets: bool = True) -> LogFormat:
    return LogFormat(name, LINE, host, str(ip_token), date_in_brackets=brackets)


#: Every named format of import_logs.py (its FORMATS table), in its order.
FORMATS: dict[str, LogFormat] = {
    f.name: f
    for f in (
        _line("common", False, 0),
        _line("common_vhost", True, 1),
        _line("ncsa_extended", False, 0),
        _line("common_complete", True, 1),
        LogFormat("w3c_extended", W3C, None, "c-ip"),
        LogFormat("amazon_cloudfront", W3C, None, "c-ip"),
        LogFormat("incapsula_w3c", W3C, None, "c-ip"),
        LogFormat("iis", W3C, None, "c-ip"),
        LogFormat("shoutcast", W3C, None, "c-ip"),
        _line("s3", True, 4),
        _line("icecast2", False, 0),
        _line("elb", True, -1, brackets=False),
        LogFormat("traefik_json", JSON, True, "ClientHost"),
        LogFormat("nginx_json", JSON, True, "ip"),
        LogFormat("caddy_json", JSON, True, "request.client_ip"),
        _line("ovh", True, 0),
        _line("haproxy", False, -1, brackets=False),
        _line("gandi", True, 1),
    )
}
#: The names users know from their web server's configuration.
ALIASES = {"combined": "ncsa_extended", "vhost_combined": "common_complete"}
DEFAULT = "nginx_json"

#: Where a W3C format's `#Fields:` line names the host: the field per format.
_W3C_HOST_FIELDS = {
    "amazon_cloudfront": ("cs-host", "x-host-header"),
    "incapsula_w3c": ("cs-host", "cs-uri"),
}


def names() -> list[str]:
    """Every accepted format name, aliases included, for error messages."""
    return [*FORMATS, *ALIASES]


def resolve(name: str) -> LogFormat:
    """The format called `name` (an alias is resolved); KeyError when there is none."""
    return FORMATS[ALIASES.get(name, name)]


def custom(regex: str) -> LogFormat:
    """A `--log-format-regex`; ValueError naming what import_logs.py would trip over."""
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    missing = [g for g in REQUIRED_GROUPS if g not in compiled.groupindex]
    if missing:
        groups = ", ".join(f"(?P<{g}>…)" for g in missing)
        raise ValueError(
            f"needs the named groups {groups}: import_logs.py reads them from every line"
        )
    return LogFormat("custom", LINE, "host" in compiled.groupindex, "ip", regex=regex)


def w3c_fields(flags: tuple[str, ...]) -> Optional[str]:
    """The `--w3c-fields` value among import_logs.py flags, or None."""
    for flag in flags:
        name, sep, value = flag.partition("=")
        if name == "--w3c-fields" and sep:
            return value
    return None


def has_host(fmt: LogFormat, flags: tuple[str, ...]) -> bool:
    """Whether import_logs.py finds a host in each line (else it needs --idsite)."""
    if fmt.has_host is not None:
        return fmt.has_host
    fields = (w3c_fields(flags) or "").split()
    return any(f in fields for f in _W3C_HOST_FIELDS.get(fmt.name, ("cs-host",)))


_IPV4 = re.compile(rb"^(\d{1,3}(?:\.\d{1,3}){3})(?::\d+)?$")


def visitor_key(fmt: LogFormat, line: bytes, flags: tuple[str, ...] = ()) -> bytes:
    """The visitor's address in `line` (bytes), to keep one visitor's hits together.

    Stable for a given line, which is what partitioning needs; a line whose address cannot be
    found yields the whole line (it then lands in some partition, deterministically).
    """
    if fmt.family == JSON:
        try:
            value: object = json.loads(line)
            for key in fmt.visitor.split("."):
                value = value[key] if isinstance(value, dict) else None  # type: ignore[index]
        except ValueError:
            return line
        return str(value).encode() if isinstance(value, str) else line
    if fmt.regex is not None:
        m = re.match(fmt.regex, line.decode("utf-8", "replace"))
        return m.group("ip").encode() if m and m.group("ip") else line
    tokens = line.split()
    if fmt.family == W3C:
        fields = (w3c_fields(flags) or "").split()[1:]  # after "#Fields:"
        index = fields.index(fmt.visitor) if fmt.visitor in fields else -1
    else:
        index = int(fmt.visitor)
    if 0 <= index < len(tokens):
        return tokens[index]
    for token in tokens:  # a prefix of varying length (elb, haproxy): the first IPv4 address
        m = _IPV4.match(token)
        if m:
            return m.group(1)
    return line


_SUPPORTED = re.compile(r"supported\s+are:\s*([^)]*)\)")


def names_in_help(text: str) -> Optional[set[str]]:
    """The format names an import_logs.py lists in its --help (None when it lists none)."""
    m = _SUPPORTED.search(text)
    if m is None:
        return None
    return {name.strip() for name in m.group(1).replace("\n", " ").split(",") if name.strip()}
