"""A small fake of Matomo's HTTP API, for running the *real* import_logs.py in tests.

Why it exists: the contract tests run Matomo's own import_logs.py and compare what it prints and
how it exits with our double (tests/doubles/import_logs.py). import_logs.py talks to exactly two
kinds of endpoints, so that is all this fake implements:

* the reporting API (``POST <url>/`` with a form body ``module=API&format=json&method=...``), of
  which import_logs.py uses ``SitesManager.getSitesIdFromSiteUrl`` (host -> site lookup, lazily,
  from its recorder thread), ``SitesManager.getSiteFromId`` (at start-up with ``--idsite``),
  ``SitesManager.addSite`` (``--add-sites-new-hosts``) and ``SitesManager.getAllSites``
  (``--replay-tracking``); ``API.getMatomoVersion`` is here for ``matomo-rt check``;
* the bulk tracking endpoint (``POST <url>/piwik.php`` or ``/matomo.php``, JSON body
  ``{"token_auth": ..., "requests": [...]}``).

Answers follow Matomo 5's behaviour as read from its source (see docs/import_logs-facts.md): a
refused token on the API is HTTP 401 with a JSON error body; the bulk endpoint answers
``{"status": "success", "tracked": n, "invalid": m}`` and adds ``invalid_indices`` only for a
super-user token; hits using ``cip``/old ``cdt`` without a token allowed on the site are invalid.

Usage::

    with FakeMatomo(sites={"example.com": 1}, token="secret") as matomo:
        run_import(url=matomo.url, token="secret")
        assert len(matomo.hits()) == 3
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

#: Every mode the fake understands. "ok" behaves; the others are the failures the contract
#: tests need to reproduce, each the way a real Matomo (or what sits in front of it) produces it.
MODES = ("ok", "server_error", "non_json", "bad_token", "reject_all")

#: Text of the NoAccessException Matomo 5 throws when a token_auth sent as a POST parameter is
#: not valid (plugins/Login/Login.php, onFailedAPILogin). It comes with HTTP 401.
INVALID_TOKEN_MESSAGE = (
    "Unable to authenticate with the provided token. It is either invalid or expired."
)

#: A body a proxy or a PHP error page might send instead of JSON.
NON_JSON_BODY = (
    "<!DOCTYPE html>\n<html><body><h1>Matomo is temporarily unavailable</h1></body></html>\n"
)


class FakeMatomo:
    """Threaded HTTP server on 127.0.0.1 (random port) playing Matomo for import_logs.py.

    Configuration can be changed while it runs (``mode``, ``sites``, ``token``,
    ``fail_tracking_after_posts``); all shared state is guarded by one lock because the server
    answers each connection on its own thread.
    """

    def __init__(
        self,
        sites: Optional[dict[str, int]] = None,
        token: Optional[str] = "fake-token",
        mode: str = "ok",
        superuser: bool = True,
        fail_tracking_after_posts: Optional[int] = None,
        version: str = "5.1.2",
    ) -> None:
        """Configure the fake.

        sites: host -> idsite; ``None`` means every host belongs to site 1 (like the double).
        token: the one valid token_auth; ``None`` accepts any non-empty token.
        superuser: whether the valid token is a super user's (then bulk answers carry
            ``invalid_indices``, exactly as Matomo only reveals them to super users).
        fail_tracking_after_posts: the first N bulk POSTs succeed, later ones get HTTP 500 and
            record nothing (the bulk transaction is rolled back) -- the ``--skip=N`` scenario.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.sites: Optional[dict[str, int]] = None if sites is None else dict(sites)
        self.token = token
        self.mode = mode
        self.superuser = superuser
        self.fail_tracking_after_posts = fail_tracking_after_posts
        self.version = version
        self._lock = threading.Lock()
        self._hits: list[dict[str, Any]] = []
        self._calls: list[dict[str, Any]] = []
        self._bulk_posts = 0
        self._created: dict[str, int] = {}
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeMatomo:
        """Bind to a free loopback port and serve from a daemon thread."""
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-matomo", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeMatomo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to hand to ``import_logs.py --url``."""
        if self._server is None:
            raise RuntimeError("FakeMatomo is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ----------------------------------------------------------------- observations

    def hits(self) -> list[dict[str, Any]]:
        """Tracking parameters of every hit Matomo would have stored, in arrival order."""
        with self._lock:
            return [dict(h) for h in self._hits]

    def calls(self) -> list[dict[str, Any]]:
        """Every HTTP request received: ``{"kind": "api"|"track"|"other", "path", ...}``."""
        with self._lock:
            return [dict(c) for c in self._calls]

    def api_methods(self) -> list[str]:
        """Names of the reporting API methods called, in order."""
        return [c["method"] for c in self.calls() if c["kind"] == "api"]

    def bulk_posts(self) -> int:
        """How many bulk tracking POSTs arrived (successful or not)."""
        with self._lock:
            return self._bulk_posts

    # ----------------------------------------------------------------- behaviour

    def _token_valid(self, token: str) -> bool:
        if self.mode == "bad_token":
            return False
        if self.token is None:
            return bool(token)
        return token == self.token

    def _site_for_host(self, host: str) -> Optional[int]:
        host = host.strip().lower()
        if "://" in host:
            host = urllib.parse.urlsplit(host).hostname or ""
        host = host.rstrip("/")
        if host in self._created:
            return self._created[host]
        if self.sites is None:
            return 1
        return self.sites.get(host)

    def _known_ids(self) -> set[int]:
        ids = set(self._created.values())
        ids.update([1] if self.sites is None else self.sites.values())
        return ids

    def _main_url(self, idsite: int) -> str:
        for host, sid in list((self.sites or {}).items()) + list(self._created.items()):
            if sid == idsite:
                return "http://" + host
        return f"http://site{idsite}.example"

    def api(self, params: dict[str, Any]) -> tuple[int, Any]:
        """Answer one reporting API call: (HTTP status, JSON-able body)."""
        token = str(params.get("token_auth", ""))
        if token and token != "anonymous" and not self._token_valid(token):
            return 401, {"result": "error", "message": INVALID_TOKEN_MESSAGE}
        authenticated = bool(token) and token != "anonymous"
        method = str(params.get("method", ""))
        if method in ("API.getMatomoVersion", "API.getPiwikVersion"):
            return 200, {"value": self.version}
        if method == "SitesManager.getSitesIdFromSiteUrl":
            sid = self._site_for_host(str(params.get("url", ""))) if authenticated else None
            return 200, ([] if sid is None else [{"idsite": sid}])
        if method == "SitesManager.getSiteFromId":
            raw = str(params.get("idSite", ""))
            sid = int(raw) if raw.isdigit() else 0
            if not authenticated or sid not in self._known_ids():
                message = (
                    "An unexpected website was found in the request: "
                    f"website id was set to '{raw}' ."
                )
                return 200, {"result": "error", "message": message}
            return 200, {"idsite": sid, "name": f"Site {sid}", "main_url": self._main_url(sid)}
        if method == "SitesManager.getAllSites":
            ids = sorted(self._known_ids())
            return 200, {str(i): {"idsite": i, "main_url": self._main_url(i)} for i in ids}
        if method == "SitesManager.addSite":
            name = str(params.get("siteName", ""))
            new_id = max(self._known_ids() | {0}) + 1
            self._created[name.lower()] = new_id
            return 200, {"value": new_id}
        module = method.split(".", 1)[0]
        message = (
            f"The method '{method.split('.', 1)[-1]}' does not exist or is not available in the "
            f"module '\\Piwik\\Plugins\\{module}\\API'."
        )
        return 200, {"result": "error", "message": message}

    def track(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer one bulk tracking POST; store the hits Matomo would keep."""
        self._bulk_posts += 1
        if (
            self.fail_tracking_after_posts is not None
            and self._bulk_posts > self.fail_tracking_after_posts
        ):
            # An exception in the bulk handler: transaction rolled back, HTTP 500.
            return 500, {"status": "error", "tracked": 0, "invalid": 0}
        token = str(body.get("token_auth") or "")
        valid = bool(token) and self._token_valid(token)
        allowed = valid and self.mode != "reject_all"
        requests = body.get("requests") or []
        invalid: list[int] = []
        tracked = 0
        accepted: list[dict[str, Any]] = []
        for index, request in enumerate(requests):
            if not isinstance(request, dict) or not request:
                tracked += 1  # an empty request counts as tracked and stores nothing
                continue
            try:
                idsite = int(request.get("idsite"))
            except (TypeError, ValueError):
                idsite = -1
            needs_auth = "cip" in request  # import_logs.py always sends cip
            if idsite not in self._known_ids() or (needs_auth and not allowed):
                invalid.append(index)
                continue
            tracked += 1
            accepted.append(dict(request))
        self._hits.extend(accepted)
        answer: dict[str, Any] = {"status": "success", "tracked": tracked, "invalid": len(invalid)}
        if valid and self.superuser:
            answer["invalid_indices"] = invalid
        return 200, answer

    def handle(self, path: str, query: str, body: bytes, content_type: str) -> tuple[int, str, str]:
        """Route one POST/GET: returns (status, content type, body text)."""
        params: dict[str, Any] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        is_tracker = path.rstrip("/").endswith(("piwik.php", "matomo.php"))
        with self._lock:
            if self.mode == "server_error":
                self._calls.append({"kind": "other", "path": path})
                return 500, "text/html", "<html><body>Internal Server Error</body></html>"
            if self.mode == "non_json":
                self._calls.append({"kind": "other", "path": path})
                return 200, "text/html; charset=utf-8", NON_JSON_BODY
            if is_tracker:
                data = _php_json_decode(body)
                self._calls.append(
                    {
                        "kind": "track",
                        "path": path,
                        "query": params,
                        "token_auth": data.get("token_auth"),
                        "requests": len(data.get("requests") or []),
                    }
                )
                status, answer = self.track(data)
                return status, "application/json", php_json_encode(answer)
            if "json" not in content_type:
                params.update(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            params = _collapse_arrays(params)
            self._calls.append(
                {
                    "kind": "api",
                    "path": path,
                    "method": params.get("method", ""),
                    "params": dict(params),
                }
            )
            status, answer = self.api(params)
            return status, "application/json; charset=utf-8", php_json_encode(answer)


def php_json_encode(value: Any) -> str:
    """Encode like PHP's json_encode with default flags: compact, ``/`` escaped, ASCII only.

    The exact bytes matter: import_logs.py quotes the response body verbatim in its fatal error
    (``HTTP Error 401 Unauthorized, response: {...}``), and the contract tests compare that text.
    """
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def _php_json_decode(body: bytes) -> dict[str, Any]:
    """Decode a bulk body the way PHP's json_decode does, strictness included.

    PHP refuses what Python accepts: a lone UTF-16 surrogate escape (``"\\udce9"``, which
    import_logs.py sends for undecodable input bytes under ``surrogateescape``), NaN/Infinity,
    invalid UTF-8. Matomo then sees no ``requests`` at all and answers success with nothing
    tracked -- the whole batch is silently lost. Anything undecodable becomes ``{}`` here too.
    """
    try:
        text = body.decode("utf-8")
        data = json.loads(text or "{}", parse_constant=_refuse_constant)
        # Re-encoding as strict UTF-8 fails exactly when a lone surrogate was decoded.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _refuse_constant(name: str) -> Any:
    """json.loads hook: PHP has no NaN/Infinity literals in JSON."""
    raise ValueError(f"PHP's json_decode refuses {name}")


def _collapse_arrays(params: dict[str, Any]) -> dict[str, Any]:
    """Turn PHP-style ``urls[0]=a`` keys into ``urls: [a]`` (how import_logs.py sends lists)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key.endswith("]") and "[" in key:
            base = key.split("[", 1)[0]
            out.setdefault(base, []).append(value)
        else:
            out[key] = value
    return out


def _make_handler(fake: FakeMatomo) -> type[BaseHTTPRequestHandler]:
    """Bind a request handler class to one FakeMatomo instance."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, body: bytes) -> None:
            split = urllib.parse.urlsplit(self.path)
            status, ctype, text = fake.handle(
                split.path, split.query, body, self.headers.get("Content-Type", "")
            )
            payload = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._serve(self.rfile.read(length) if length else b"")

        def do_GET(self) -> None:
            self._serve(b"")

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output clean: the fake's access log is in ``calls()``."""

    return Handler
