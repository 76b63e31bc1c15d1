"""Secrets out of every message: the token (and its URL-encoded spellings) becomes ``***``.

Its own module because every part that logs what a child printed needs it (execute, pipeline,
check), and none of them should need the process machinery to do so.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from urllib.parse import quote, quote_plus

#: Replacement for every redacted secret.
MASK = "***"


# Token patterns that are redacted even when the token itself was not passed as a
# secret: query strings / form bodies (token_auth=...), JSON ("token_auth": "..."), and the
# command-line flag of import_logs.py (--token-auth X / --token-auth=X).
_TOKEN_PATTERNS = (
    re.compile(r"(token_auth=)[^&\s\"'#;,]+", re.IGNORECASE),
    re.compile(r"(\"token_auth\"\s*:\s*\")[^\"]*", re.IGNORECASE),
    re.compile(r"(--token[-_]auth(?:=|\s+))[^\s\"']+", re.IGNORECASE),
)

_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _secret_pattern(variant: str) -> str:
    """Regex for one spelling of a secret; percent-escapes match in either hex case."""
    out = []
    pos = 0
    for m in _PERCENT_ESCAPE.finditer(variant):
        out.append(re.escape(variant[pos : m.start()]))
        hi, lo = m.group(1)
        out.append(f"%[{hi.upper()}{hi.lower()}][{lo.upper()}{lo.lower()}]")
        pos = m.end()
    out.append(re.escape(variant[pos:]))
    return "".join(out)


def redact(text: str, secrets: Sequence[str]) -> str:
    """Replace every secret, and its URL-encoded spellings, in ``text`` with ``***``.

    URL-encoded forms matter because import_logs.py and Matomo echo request URLs and form
    bodies in their errors. ``token_auth=...`` and ``--token-auth ...`` are masked even
    when the token was not passed as a secret, as a second line of defence. Empty secrets
    are ignored (masking "" would mask everything).
    """
    if not text:
        return text
    variants = set()
    for secret in secrets:
        if not secret:
            continue
        variants.update((secret, quote(secret, safe=""), quote(secret), quote_plus(secret)))
    if variants:
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(variants, key=len, reverse=True)
        text = re.sub("|".join(_secret_pattern(v) for v in ordered), MASK, text)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """Escape control characters so a message is exactly one log line."""
    return _CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def describe_argv(argv: Sequence[str], secrets: Sequence[str]) -> str:
    """Shell-quoted, redacted command line on one line.

    Each argument is redacted before quoting: quoting first could split a secret that
    contains a quote character, and the pieces would no longer match.
    """
    line = " ".join(_quote(redact(a, secrets)) for a in argv)
    return one_line(redact(line, secrets))


_NEEDS_NO_QUOTES = re.compile(r"[\w@%+=:,./*-]+")


def _quote(arg: str) -> str:
    """shlex.quote, except that ``***`` (a mask) is left bare: this is for reading."""
    return arg if _NEEDS_NO_QUOTES.fullmatch(arg) else shlex.quote(arg)
