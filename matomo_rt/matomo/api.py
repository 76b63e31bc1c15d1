"""Matomo's reporting API, called the way import_logs.py calls it, each answer classified.

Matomo counts every refused token as a failed login and blocks the client IP after 20 in an
hour (its default), after which even the right token is refused. So the first refusal ends
every further call of a client: a checker must never be what gets a host blocked.
"""

from __future__ import annotations

import html
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from matomo_rt import execute

#: Matomo's answer when the client IP is blocked by its brute-force detection
#: (plugins/Login/lang/en.json, Login_LoginNotAllowedBecauseBlocked): "You are currently not
#: allowed to log in because you had too many failed logins, try again later."
BLOCKED_MARKERS = ("not allowed to log in", "too many failed logins")
#: Matomo's General_ExceptionPrivilege* texts: "You can't access this resource as it requires
#: 'view' access for at least one website." (an authenticated token without that access)
_NO_ACCESS = re.compile(r"can.t access this resource|requires '?\w+'? access", re.IGNORECASE)
#: A reason is cut at a word boundary after this many characters.
REASON_LIMIT = 300

_REDIRECTS = (301, 302, 303, 307, 308)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_INVISIBLE = re.compile(
    r"<!--.*?-->|<(script|style|head|noscript|template)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL
)
#: Tags that end a block of text; other tags (<code>, <a>, <strong>) are inline.
_BLOCK_TAG = re.compile(
    r"</?(p|div|h[1-6]|br|hr|li|ul|ol|tr|td|th|table|pre|center|section|article|header|"
    r"footer|main|body|html|title|form|blockquote)\b[^>]*>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^>]*>")
#: Headings of error pages that say nothing about the error (Matomo's own: "An error occurred").
_GENERIC = {"an error occurred", "error", "not found"}


def _clip(text: str, limit: int = REASON_LIMIT) -> str:
    """`text` on one line, cut at a word boundary (never inside a word) past `limit`."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + " …"


def looks_like_html(text: str) -> bool:
    head = text.lstrip()[:512].lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in head


def html_reason(text: str, limit: int = REASON_LIMIT) -> str:
    """What an HTML error page says, in words: its <title>, then its first telling text.

    Never markup or CSS: a web server's or Matomo's error page reduced to e.g.
    "404 Not Found: The requested resource /x/index.php was not found on this server."
    """
    match = _TITLE.search(text)
    title = " ".join(html.unescape(_TAG.sub("", match.group(1))).split()) if match else ""
    body = _BLOCK_TAG.sub("\n", _INVISIBLE.sub(" ", text))
    chunks = [" ".join(html.unescape(_TAG.sub("", part)).split()) for part in body.split("\n")]
    first = ""
    for chunk in chunks:
        lowered = chunk.lower()
        if chunk and lowered not in _GENERIC and lowered not in title.lower():
            first = chunk
            break
    if title and first:
        return _clip(f"{title}: {first}", limit)
    return _clip(title or first or "an empty HTML page", limit)


def text_reason(text: str, limit: int = REASON_LIMIT) -> str:
    """A readable reason from any answer body: HTML reduced to its words, else its text."""
    if looks_like_html(text):
        return html_reason(text, limit)
    return _clip(text, limit) or "an empty answer"


class Answer:
    """One API answer, classified.

    kind: ok, unreachable, redirect, not_found (no Matomo at that URL), blocked, refused,
    no_access, error, not_json, stopped (not sent: an earlier answer refused the token).
    """

    def __init__(
        self,
        kind: str,
        data: Any = None,
        message: str = "",
        status: Optional[int] = None,
    ) -> None:
        self.kind = kind
        self.data = data
        self.message = message
        self.status = status


class MatomoApi:
    """Calls Matomo's reporting API the way import_logs.py does: POST, token in the body.

    After the first answer that refuses the token (or says the IP is blocked) every further
    call is refused locally: each refused token is a failed login in Matomo.
    """

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.calls = 0
        self.stopped: Optional[str] = None

    @property
    def endpoint(self) -> str:
        return f"{self.url}/index.php"

    def _redact(self, text: str) -> str:
        return execute.redact(text, [self.token] if self.token else [])

    def call(self, method: str, **params: str) -> Answer:
        if self.stopped is not None:
            return Answer("stopped", message=self.stopped)
        # Non-secret parameters in the query string, so Matomo formats even an early error
        # (a blocked IP) as JSON; the token only in the POST body, never in a URL.
        query = urllib.parse.urlencode({"module": "API", "method": method, "format": "json"})
        body = dict(params)
        body["filter_limit"] = "-1"
        if self.token:
            body["token_auth"] = self.token
        request = urllib.request.Request(
            f"{self.endpoint}?{query}",
            data=urllib.parse.urlencode(body).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": "matomo-rt check",
            },
            method="POST",
        )
        self.calls += 1
        status: Optional[int]
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status = response.status
                raw = response.read(4 << 20)
        except urllib.error.HTTPError as exc:
            status = exc.code
            location = exc.headers.get("Location") if exc.headers else None
            try:
                raw = exc.read(4 << 20)
            except OSError:
                raw = b""
            if status in _REDIRECTS:
                where = self._redact(str(location or "?"))
                return Answer("redirect", message=where, status=status)
        except urllib.error.URLError as exc:
            return Answer("unreachable", message=self._redact(_url_reason(exc.reason)))
        except (OSError, ValueError) as exc:
            return Answer("unreachable", message=self._redact(_url_reason(exc)))
        text = raw.decode("utf-8", "replace")
        answer = self._classify(status, text)
        if answer.kind in ("blocked", "refused", "no_access"):
            self.stopped = answer.message
        return answer

    def _classify(self, status: int, text: str) -> Answer:
        lowered = text.lower()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        message = ""
        if isinstance(data, dict) and data.get("result") == "error":
            message = self._redact(_clip(str(data.get("message", ""))))
        if any(marker in lowered for marker in BLOCKED_MARKERS):
            if not message:
                message = self._redact(text_reason(text))
            return Answer("blocked", message=message, status=status)
        if status == 401 or (message and "token" in message.lower()):
            message = message or self._redact(f"HTTP {status}: {text_reason(text)}")
            return Answer("refused", message=message, status=status)
        if message and (_NO_ACCESS.search(message) or status == 403):
            return Answer("no_access", message=message, status=status)
        if message:
            return Answer("error", message=message, status=status)
        if status == 404:
            # Matomo answers every API call, even an unknown method, from index.php: a 404
            # for index.php itself comes from a web server with no Matomo at this path.
            return Answer("not_found", message=self._redact(text_reason(text)), status=status)
        if status >= 400:
            reason = self._redact(text_reason(text))
            return Answer("error", message=f"HTTP {status}: {reason}", status=status)
        if data is None:
            return Answer("not_json", message=self._redact(text_reason(text)), status=status)
        return Answer("ok", data=data, status=status)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report redirects instead of following them.

    urllib (and so import_logs.py) turns a redirected POST into a GET without its body: the
    token and the parameters are lost, and Matomo answers as if no token had been sent.
    """

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _url_reason(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def site_ids(data: Any) -> set[int]:
    """Site ids from an answer such as [1, 2], ["1"], {"0": 1}, [{"idsite": 1}]."""
    items = data.values() if isinstance(data, dict) else data
    ids: set[int] = set()
    if not isinstance(items, list) and not isinstance(data, dict):
        return ids
    for item in items:
        if isinstance(item, dict):
            item = item.get("idsite")
        try:
            ids.add(int(item))
        except (TypeError, ValueError):
            continue
    return ids
