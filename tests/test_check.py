"""`check`: every finding with its way out, against a fake Matomo over real HTTP — and never more
than one refused token per run (Matomo blocks the IP after 20 failed logins in an hour)."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import pytest

from matomo_rt.check import run_check
from matomo_rt.config import Config, load
from matomo_rt.logstate import state_paths
from tests.doubles.fake_matomo import FakeMatomo, _make_handler

DOUBLE = Path(__file__).resolve().parent / "doubles" / "import_logs.py"

TOKEN = "s3cret-token-abc"
BLOCKED_MESSAGE = (
    "You are currently not allowed to log in because you had too many failed logins, "
    "try again later."
)


class CheckMatomo(FakeMatomo):
    """FakeMatomo plus what `check` asks that import_logs.py does not: the access lists, and a
    client IP blocked by Matomo's brute-force detection."""

    def __init__(
        self,
        *args: Any,
        admin_sites: Optional[list[int]] = None,
        write_sites: Optional[list[int]] = None,
        blocked: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.admin_sites = admin_sites
        self.write_sites = write_sites or []
        self.blocked = blocked  # None, "json" or "html"
        self.raw_queries: list[str] = []
        #: After the first version call: a barrier the next ones must meet (all in flight at
        #: once), or an HTTP status for them (a Matomo out of PHP workers).
        self.version_barrier: Optional[threading.Barrier] = None
        self.version_status: Optional[int] = None
        self.version_calls = 0
        self._version_lock = threading.Lock()

    def start(self) -> CheckMatomo:
        """As FakeMatomo.start, polling for shutdown every 20 ms instead of 500 (test speed)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.02), daemon=True
        )
        self._thread.start()
        return self

    def handle(self, path: str, query: str, body: bytes, content_type: str) -> tuple[int, str, str]:
        self.raw_queries.append(query)
        if "method=API.getMatomoVersion" in query:  # before FakeMatomo's lock: side by side
            with self._version_lock:
                self.version_calls += 1
                later = self.version_calls > 1
            if later and self.version_status is not None:
                return self.version_status, "text/html", "<html>Service Unavailable</html>"
            if later and self.version_barrier is not None:
                self.version_barrier.wait(timeout=10)  # raises unless all are in flight at once
        if self.blocked is not None:
            with self._lock:
                self._calls.append({"kind": "api", "path": path, "method": "(blocked)"})
            # Matomo's brute-force check runs before the token is looked at: an exception
            # rendered as an API error, or as its HTML error page.
            if self.blocked == "json":
                body_text = json.dumps({"result": "error", "message": BLOCKED_MESSAGE})
                return 500, "application/json", body_text
            return 500, "text/html", f"<html><body><p>{BLOCKED_MESSAGE}</p></body></html>"
        return super().handle(path, query, body, content_type)

    def api(self, params: dict[str, Any]) -> tuple[int, Any]:
        method = params.get("method")
        token = str(params.get("token_auth", ""))
        if method in (
            "SitesManager.getSitesIdWithAdminAccess",
            "SitesManager.getSitesIdWithWriteAccess",
        ):
            if not self._token_valid(token):
                return super().api(params)  # the 401
            if method.endswith("AdminAccess"):
                ids = (
                    self.admin_sites if self.admin_sites is not None else sorted(self._known_ids())
                )
            else:
                ids = self.write_sites
            return 200, list(ids)
        return super().api(params)


def hit(host: str, n: int = 0) -> str:
    return json.dumps(
        {
            "ip": "192.0.2.1",
            "host": host,
            "path": f"/p/{n}",
            "status": "200",
            "date": "2026-11-27T10:00:00+00:00",
            "generation_time_milli": "0.01",
        }
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    """A Matomo directory (console + import_logs.py), a php that answers --version, a log."""
    matomo = tmp_path / "matomo"
    (matomo / "misc" / "log-analytics").mkdir(parents=True)
    # The double has the real script's option list, which `check` reads from it.
    (matomo / "misc" / "log-analytics" / "import_logs.py").symlink_to(DOUBLE)
    (matomo / "console").write_text("<?php\n")
    (matomo / "tmp").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    php = bin_dir / "php"
    php.write_text("#!/bin/sh\necho 'PHP 8.2.7 (cli) (built: Jun  1 2023)'\n")
    php.chmod(0o755)
    log = tmp_path / "access.log"
    log.write_text("\n".join(hit("example.com", n) for n in range(5)) + "\n")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o640)
    state = tmp_path / "state"
    state.mkdir()
    return {
        "tmp": tmp_path,
        "matomo": matomo,
        "php": php,
        "log": log,
        "token": token,
        "state": state,
    }


def make_config(env: dict[str, Path], url: str, extra: str = "", log_extra: str = "") -> Config:
    path = env["tmp"] / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [matomo]
            url = "{url}"
            path = "{env["matomo"]}"
            python = "{sys.executable}"
            php = "{env["php"]}"
            token_auth_file = "{env["token"]}"

            [state]
            dir = "{env["state"]}"
            """
        )
        + extra
        + f'\n[[logs]]\nname = "access"\npath = "{env["log"]}"\n'
        + log_extra
    )
    return load(path)


@pytest.fixture
def matomo() -> Iterator[CheckMatomo]:
    with CheckMatomo(sites={"example.com": 1}, token=TOKEN) as fake:
        yield fake


def check(config: Config, timeout: float = 5) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(config, out=out, timeout=timeout)
    text = out.getvalue()
    for line in text.splitlines():
        assert line.startswith(("[ok] ", "[warn] ", "[FAIL] ", "[skip] ")), line
    assert TOKEN not in text
    return code, text


def fails(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[FAIL]")]


# -- the happy path ------------------------------------------------------------------------


def test_everything_fine(env: dict[str, Path], matomo: CheckMatomo) -> None:
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text
    assert fails(text) == []
    assert "[ok] log access: " in text
    assert f"[ok] state directory {env['state']} is writable" in text
    assert "[ok] python: " in text
    assert "[ok] import_logs.py knows every configured flag (2)" in text
    assert "[ok] php: " in text and "PHP 8.2.7" in text
    assert f"[ok] token file {env['token']} (mode 0640)" in text
    assert f"[ok] Matomo 5.1.2 answers at {matomo.url}" in text
    assert "[ok] Matomo accepted the token" in text
    assert "[ok] the token may track to 1 site (1)" in text
    assert "[ok] log access: all 1 sampled hosts map to a Matomo site" in text
    assert matomo.api_methods() == [
        "API.getMatomoVersion",
        "SitesManager.getSitesIdWithAdminAccess",
        "SitesManager.getSitesIdWithWriteAccess",
        "SitesManager.getSitesIdFromSiteUrl",
    ]
    # The token travels in POST bodies only, never in a URL (server logs, proxies).
    assert all(c["params"].get("token_auth") == TOKEN for c in matomo.calls())
    assert all(TOKEN not in q for q in matomo.raw_queries)
    lookup = matomo.calls()[-1]["params"]
    assert lookup["url"] == "example.com"  # like import_logs.py: the bare host


def test_archiving_disabled_skips_php(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["php"].unlink()
    code, text = check(make_config(env, matomo.url, "\n[archive]\nenabled = false\n"))
    assert code == 0, text
    assert "[skip] archiving is disabled" in text


# -- Matomo's answers ----------------------------------------------------------------------


def test_unreachable_matomo(env: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, text = check(make_config(env, f"http://127.0.0.1:{port}"))
    assert code == 1
    [failure] = fails(text)
    assert "unreachable" in failure and "connection refused" in failure.lower()
    assert "check matomo.url" in failure


def test_an_unanswering_matomo_times_out(env: dict[str, Path]) -> None:
    with socket.socket() as s:  # accepts connections (backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, text = check(make_config(env, f"http://127.0.0.1:{port}"), timeout=0.5)
    assert code == 1
    [failure] = fails(text)
    assert "unreachable" in failure and "timed out" in failure


def test_a_redirect_is_reported_not_followed(env: dict[str, Path]) -> None:
    """urllib (and import_logs.py) would follow it as a GET without the token."""
    requests: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            requests.append(self.command)
            self.send_response(301)
            self.send_header("Location", "https://matomo.example.org/index.php")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.02))
    thread.start()
    try:
        port = server.server_address[1]
        code, text = check(make_config(env, f"http://127.0.0.1:{port}"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert code == 1
    [failure] = fails(text)
    assert "redirects (HTTP 301) to https://matomo.example.org/index.php" in failure
    assert "set matomo.url" in failure
    assert requests == ["POST"]


def test_a_refused_token_ends_all_api_calls(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["token"].write_text("wrong-token\n")
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "Matomo refused the token" in failure
    assert "Unable to authenticate with the provided token" in failure
    assert "matomo.token_auth_file" in failure
    # One failed login, not four: nothing was asked after the refusal.
    assert matomo.api_methods() == ["API.getMatomoVersion"]
    assert "wrong-token" not in text
    assert "[skip] write access and host mapping: the token was refused" in text


@pytest.mark.parametrize("shape", ["json", "html"])
def test_a_blocked_ip_says_how_to_unblock(
    env: dict[str, Path], matomo: CheckMatomo, shape: str
) -> None:
    matomo.blocked = shape
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "blocks this host's IP" in failure
    assert f"php {env['matomo']}/console login:unblock-blocked-ips" in failure
    assert len(matomo.calls()) == 1


def test_not_json_means_a_wrong_url(env: dict[str, Path], matomo: CheckMatomo) -> None:
    matomo.mode = "non_json"
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "not JSON" in failure and "check matomo.url" in failure


def test_a_failing_matomo_is_a_failure(env: dict[str, Path], matomo: CheckMatomo) -> None:
    matomo.mode = "server_error"
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "HTTP 500" in failure and "error logs" in failure
    assert len(matomo.calls()) == 1


def test_a_token_without_write_access_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    matomo.admin_sites = []
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    assert any("no write or admin access to any site" in f for f in fails(text))


def test_write_access_alone_is_enough(env: dict[str, Path], matomo: CheckMatomo) -> None:
    matomo.admin_sites = []
    matomo.write_sites = [1]
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text


def test_a_host_on_a_site_the_token_cannot_write_fails(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    matomo.sites = {"example.com": 1, "other.example": 2}
    matomo.admin_sites = [1]
    env["log"].write_text(hit("other.example") + "\n")
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "other.example is site 2" in failure and "no write access" in failure


# -- host mapping --------------------------------------------------------------------------


def test_unmapped_hosts_are_listed_with_the_ways_out(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    lines = [hit("example.com", n) for n in range(3)] + [hit("unknown.example.org")]
    env["log"].write_text("\n".join(lines) + "\n")
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text  # some hosts map: a warning
    [warning] = [line for line in text.splitlines() if "match no Matomo site" in line]
    assert warning.startswith("[warn]")
    assert "unknown.example.org" in warning and "example.com," not in warning
    assert "Alias URL" in warning
    assert "--add-sites-new-hosts" in warning and "--idsite-fallback=ID" in warning


def test_no_mapped_host_at_all_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["log"].write_text(hit("unknown.example.org") + "\n")
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "unknown.example.org" in failure and "nothing of this log would be stored" in failure


def test_a_fallback_flag_handles_unmapped_hosts(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["log"].write_text(hit("unknown.example.org") + "\n")
    code, text = check(make_config(env, matomo.url, log_extra='flags = ["--idsite-fallback=1"]\n'))
    assert code == 0, text
    assert "handled by --idsite-fallback" in text


def test_idsite_skips_host_mapping(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["log"].write_text(hit("unknown.example.org") + "\n")
    code, text = check(make_config(env, matomo.url, log_extra="idsite = 1\n"))
    assert code == 0, text
    assert "[skip] log access: host mapping (idsite = 1 is set)" in text
    assert "SitesManager.getSitesIdFromSiteUrl" not in matomo.api_methods()


def test_only_the_last_lines_are_sampled(env: dict[str, Path], matomo: CheckMatomo) -> None:
    """A host seen only long ago (and a partial last line) does not count."""
    old = [hit("old.example.org")]
    recent = [hit("example.com", n) for n in range(250)]
    env["log"].write_text("\n".join(old + recent) + "\n" + hit("partial.example")[:30])
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text
    urls = [c["params"]["url"] for c in matomo.calls() if c.get("method", "").endswith("SiteUrl")]
    assert urls == ["example.com"]


# -- local problems ------------------------------------------------------------------------


def test_a_missing_log_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["log"].unlink()
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    assert any(f"{env['log']}: no such file" in f and "logs.path" in f for f in fails(text))


def test_an_unwritable_state_dir_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    blocker = env["tmp"] / "a-file"
    blocker.write_text("")
    env["state"] = blocker / "state"  # its parent is a regular file
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert f"state directory {blocker / 'state'}" in failure
    assert "not a directory" in failure and "state.dir" in failure


def test_a_state_dir_yet_to_be_created_is_a_warning(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    env["state"] = env["tmp"] / "new" / "state"
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text
    assert "does not exist yet" in text


def test_a_corrupt_state_file_fails_with_the_way_out(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    config = make_config(env, matomo.url)
    state_paths(config, config.log("access"))[0].write_text("garbage")
    code, text = check(config)
    assert code == 1
    [failure] = fails(text)
    assert "corrupt" in failure and "matomo-rt seek" in failure


def test_a_missing_php_says_how_to_disable_archiving(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    env["php"] = env["tmp"] / "no" / "php"
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "matomo.php" in failure and "archive.enabled = false" in failure


def test_a_missing_python_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    config = make_config(env, matomo.url)
    text = config.source.read_text().replace(sys.executable, str(env["tmp"] / "nopython"))
    config.source.write_text(text)
    code, out = check(load(config.source))
    assert code == 1
    [failure] = fails(out)
    assert "matomo.python" in failure and "no such file" in failure


def test_a_missing_importer_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    (env["matomo"] / "misc" / "log-analytics" / "import_logs.py").unlink()
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    script = env["matomo"] / "misc" / "log-analytics" / "import_logs.py"
    assert f"matomo.path: {script}: no such file (import_logs.py)" in failure
    assert "set matomo.import_logs" in failure
    assert "github.com/matomo-org/matomo-log-analytics" in failure
    assert "misc/log-analytics/import_logs.py" in failure


def test_a_world_readable_token_file_is_a_warning(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    env["token"].chmod(0o644)
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text
    assert f"[warn] token file {env['token']} is readable by every user" in text


def test_without_a_token_only_reachability_is_checked(
    env: dict[str, Path], matomo: CheckMatomo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MATOMO_TOKEN_AUTH", raising=False)
    config = make_config(env, matomo.url)
    config.source.write_text(
        "\n".join(
            line for line in config.source.read_text().splitlines() if "token_auth_file" not in line
        )
    )
    code, text = check(load(config.source))
    assert code == 0, text
    assert "[warn] no token" in text
    assert f"[ok] Matomo 5.1.2 answers at {matomo.url}" in text
    assert "[skip] token, write access and host mapping" in text
    assert all("token_auth" not in c["params"] for c in matomo.calls())


def test_flags_are_resolved_against_the_scripts_own_options(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    """argparse takes unambiguous prefixes: name what each flag really is to import_logs.py."""
    extra = '[import]\nflags = ["--enable-http-err", "--nope=1", "--exclude-path"]\n'
    code, text = check(make_config(env, matomo.url, extra, log_extra='flags = ["--enable"]\n'))
    assert code == 1
    assert (
        "[warn] import.flags: --enable-http-err abbreviates --enable-http-errors: write it in full"
        in text
    )
    assert sorted(fails(text)) == [
        "[FAIL] import.flags: --exclude-path takes a value: write --exclude-path=VALUE —"
        " import_logs.py would refuse every batch; fix it",
        "[FAIL] import.flags: --nope: import_logs.py has no such option — import_logs.py would"
        " refuse every batch; fix it",
        "[FAIL] logs access: flags: --enable is ambiguous (--enable-bots, --enable-http-errors,"
        " --enable-http-redirects, --enable-reverse-dns, --enable-static, --enable-testmode) —"
        " import_logs.py would refuse every batch; fix it",
    ]


def test_workers_are_checked_with_as_many_requests_at_once(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    matomo.version_barrier = threading.Barrier(3)
    code, text = check(make_config(env, matomo.url, "\n[import]\nworkers = 3\n"))
    assert code == 0, text
    assert "[ok] Matomo answered 3 requests at once (import.workers = 3)" in text
    assert matomo.version_calls == 4


def test_a_matomo_without_room_for_the_workers_fails(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    matomo.version_status = 503
    code, text = check(make_config(env, matomo.url, "\n[import]\nworkers = 2\n"))
    assert code == 1
    [line] = fails(text)
    assert "of 2 requests at once (import.workers = 2), 2 failed" in line
    assert "pm.max_children" in line


# -- what a new user gets wrong (issue 10) --------------------------------------------------


def _serve(body: str, status: int, content_type: str = "text/html") -> ThreadingHTTPServer:
    """A web server without Matomo: every request gets `status` and `body`."""

    class Page(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=lambda: server.serve_forever(poll_interval=0.02), daemon=True).start()
    return server


NOT_FOUND_PAGE = (
    "<!doctype html><html><head><title>404 Not Found</title><style>\nbody { color: #333; }\n"
    "</style></head><body><h1>Not Found</h1><p>The requested resource <code>/wrong/index.php"
    "</code> was not found on this server.</p></body></html>"
)


def test_a_404_for_index_php_means_no_matomo_at_this_url(env: dict[str, Path]) -> None:
    server = _serve(NOT_FOUND_PAGE, 404)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/wrong"
        code, text = check(make_config(env, url))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    [failure] = fails(text)
    assert failure.startswith(f"[FAIL] no Matomo answers at {url}: {url}/index.php is HTTP 404")
    assert "404 Not Found: The requested resource /wrong/index.php was not found" in failure
    assert "set matomo.url to Matomo's base URL" in failure
    assert "<" not in failure and "color" not in failure


def test_an_html_error_page_is_reduced_to_its_words(env: dict[str, Path]) -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title><style>h1{x:y}</style></head><body>"
        "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
    )
    server = _serve(page, 502)
    try:
        code, text = check(make_config(env, f"http://127.0.0.1:{server.server_address[1]}"))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    [failure] = fails(text)
    assert "fails: HTTP 502: 502 Bad Gateway: nginx — look at" in failure
    assert "<" not in failure


def test_a_combined_log_fails_with_the_contrib_log_format(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    line = '192.0.2.9 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.5.0"'
    env["log"].write_text(f"{line}\n" * 30)
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert failure == (
        f"[FAIL] log access: {env['log']} is combined (nginx's default, Apache's `combined`) "
        '(30 of the last 30 lines), not nginx_json — set format = "combined" for this log with '
        "its site (idsite = N): its lines name no host, or log in nginx JSON with the log_format "
        "of contrib/nginx/matomo-rt-log-format.conf"
    )


def test_a_log_in_its_configured_format_passes_and_a_json_one_does_not(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    line = '192.0.2.9 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.5.0"'
    combined = env["tmp"] / "combined.log"
    combined.write_text(f"{line}\n" * 3)
    extra = f'\n[[logs]]\nname = "apache"\npath = "{combined}"\nformat = "combined"\nidsite = 1\n'
    code, text = check(make_config(env, matomo.url, extra))
    assert code == 0, text
    assert "[ok] log apache: combined (nginx's default, Apache's `combined`), 3 of 3" in text
    combined.write_text(hit("example.com") + "\n")
    code, text = check(make_config(env, matomo.url, extra))
    assert code == 1
    [failure] = fails(text)
    assert failure.startswith(f"[FAIL] log apache: {combined} is nginx JSON")
    assert 'not ncsa_extended — set format = "nginx_json" for this log' in failure


def test_a_log_in_nginx_json_says_so(env: dict[str, Path], matomo: CheckMatomo) -> None:
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text
    assert "[ok] log access: nginx JSON (the log_format of contrib/nginx/" in text
    assert "5 of 5 recent lines" in text


def test_a_missing_token_file_says_create_it(env: dict[str, Path], matomo: CheckMatomo) -> None:
    env["token"].unlink()
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert f"matomo.token_auth_file: {env['token']}: no such file — create it" in failure
    assert "Auth tokens" in failure
    assert matomo.calls() and all("token_auth" not in c["params"] for c in matomo.calls())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes every file")
def test_an_unreadable_token_file_is_not_create_it(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    env["token"].chmod(0o200)
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "exists but is not readable by user " in failure and "mode 0200" in failure
    assert "runuser -u www-data -g www-data -G adm" in failure
    assert "create it" not in failure


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes every file")
def test_an_unwritable_matomo_tmp_fails(env: dict[str, Path], matomo: CheckMatomo) -> None:
    cache = env["matomo"] / "tmp" / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        code, text = check(make_config(env, matomo.url))
    finally:
        cache.chmod(0o755)
    assert code == 1
    [failure] = fails(text)
    assert f"cannot create files in {cache}" in failure and "core:archive would fail" in failure


def test_matomo_tmp_is_checked_only_when_archiving(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    (env["matomo"] / "tmp").rmdir()
    code, text = check(make_config(env, matomo.url))
    assert code == 1
    [failure] = fails(text)
    assert "Matomo's tmp/" in failure and "no such directory" in failure
    code, text = check(make_config(env, matomo.url, "\n[archive]\nenabled = false\n"))
    assert code == 0, text


def test_hosts_are_sampled_in_the_logs_format(env: dict[str, Path], matomo: CheckMatomo) -> None:
    """vhost_combined names the host before the client, Caddy inside "request": both sampled."""
    vhost = env["tmp"] / "vhost.log"
    vhost.write_text(
        'example.com:443 192.0.2.9 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 '
        '"-" "curl"\n'
        'shop.example:80 192.0.2.9 - - [27/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 5 '
        '"-" "curl"\n'
    )
    caddy = env["tmp"] / "caddy"
    request = {"client_ip": "192.0.2.9", "host": "example.com", "uri": "/", "headers": {}}
    caddy.write_text(
        json.dumps({"ts": 1.5, "request": request, "user_id": "", "resp_headers": {}}) + "\n"
    )
    extra = (
        f'\n[[logs]]\nname = "vhost"\npath = "{vhost}"\nformat = "vhost_combined"\n'
        f'\n[[logs]]\nname = "caddy"\npath = "{caddy}"\nformat = "caddy_json"\n'
    )
    code, text = check(make_config(env, matomo.url, extra))
    assert "[ok] log caddy: all 1 sampled hosts map to a Matomo site" in text
    [warning] = [line for line in text.splitlines() if "log vhost:" in line and "site" in line]
    assert warning.startswith("[warn] log vhost: 1 of 2 sampled hosts match no Matomo site")
    assert "sampled hosts match no Matomo site: shop.example; their requests are skipped" in warning
    assert code == 0, text
    looked_up = [c["params"]["url"] for c in matomo.calls() if c.get("method", "").endswith("Url")]
    assert sorted(looked_up) == ["example.com", "example.com", "example.com", "shop.example"]


def test_a_python_that_cannot_open_the_importer_says_so_not_no_format_names(
    env: dict[str, Path], matomo: CheckMatomo
) -> None:
    """Root reads every file, so "unreadable" is a python that starts but cannot open the script
    (as for the service's user): the formats line must not blame the script's --help."""
    python = env["tmp"] / "bin" / "python3"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ] && [ "$2" = "import sys; print(sys.version)" ]; then'
        f' exec {sys.executable} "$@"; fi\n'
        'echo "python3: can\'t open file: [Errno 13] Permission denied" >&2\nexit 2\n'
    )
    python.chmod(0o755)
    config = make_config(env, matomo.url)
    config.source.write_text(config.source.read_text().replace(sys.executable, str(python)))
    code, text = check(load(config.source))
    assert code == 0, text
    assert "lists no format names" not in text
    [formats] = [line for line in text.splitlines() if line.startswith("[skip] log formats")]
    assert "not checked: import_logs.py could not be run" in formats
    assert "Permission denied" in formats


def test_a_token_file_gone_after_its_read_is_one_line_not_a_traceback(
    env: dict[str, Path], matomo: CheckMatomo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted between `check` reading the token and looking at its mode: one finding."""
    from matomo_rt import check_files

    real = check_files.load_token

    def load_then_delete(*args: Any) -> Optional[str]:
        token = real(*args)
        env["token"].unlink()
        return token

    monkeypatch.setattr(check_files, "load_token", load_then_delete)
    code, text = check(make_config(env, matomo.url))
    assert code == 0, text
    assert f"[ok] token file {env['token']} (mode 0640)" in text
