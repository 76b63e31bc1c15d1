"""`check`: walk through everything an import needs, say what is wrong and the way out.

Each line is one finding: ``[ok]``, ``[warn]`` (works, but look), ``[FAIL] … — way out`` or
``[skip]`` (could not be checked because something before it failed or is not configured).

Matomo counts every refused token as a failed login and blocks the client IP after 20 in an
hour (its default), after which even the right token is refused. So the first refusal ends
every API call of the run: `check` must never be what gets a host blocked.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, TextIO

from matomo_rt import execute, formats
from matomo_rt.config import TOKEN_ENV, Config, ConfigError, LogConfig, import_problems, load_token
from matomo_rt.guard import check_line
from matomo_rt.matomo import options
from matomo_rt.pipeline import state_paths
from matomo_rt.store import StateError, load_state

#: Seconds for each HTTP request to Matomo and each interpreter probe.
DEFAULT_TIMEOUT = 15.0
#: How many of each log's last lines are sampled for their hosts.
SAMPLE_LINES = 200
#: Bytes read from the end of a log to find those lines.
SAMPLE_BYTES = 512 * 1024
#: At most this many distinct hosts are looked up per log (the most frequent first).
MAX_HOSTS = 20

#: Matomo's answer when the client IP is blocked by its brute-force detection
#: (plugins/Login/lang/en.json, Login_LoginNotAllowedBecauseBlocked): "You are currently not
#: allowed to log in because you had too many failed logins, try again later."
BLOCKED_MARKERS = ("not allowed to log in", "too many failed logins")
#: Matomo's General_ExceptionPrivilege* texts: "You can't access this resource as it requires
#: 'view' access for at least one website." (an authenticated token without that access)
_NO_ACCESS = re.compile(r"can.t access this resource|requires '?\w+'? access", re.IGNORECASE)


class Checklist:
    """Prints findings as they come and remembers whether any failed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failures = 0
        self.warnings = 0

    def _line(self, tag: str, text: str) -> None:
        self.out.write(f"[{tag}] {text}\n")
        self.out.flush()

    def ok(self, text: str) -> None:
        self._line("ok", text)

    def warn(self, text: str) -> None:
        self.warnings += 1
        self._line("warn", text)

    def fail(self, text: str, way_out: str = "") -> None:
        self.failures += 1
        self._line("FAIL", f"{text} — {way_out}" if way_out else text)

    def skip(self, text: str) -> None:
        self._line("skip", text)


def run_check(
    config: Config, out: Optional[TextIO] = None, timeout: float = DEFAULT_TIMEOUT
) -> int:
    """Check `config` (already loaded and valid) end to end; 0 when nothing failed, else 1.

    `out` defaults to sys.stdout; `timeout` bounds each HTTP request and interpreter probe.
    """
    c = Checklist(out if out is not None else sys.stdout)
    c.ok(f"configuration {config.source} is valid")
    if os.geteuid() == 0:
        c.warn(
            "checking as root: files the service's user cannot read may pass here; run the "
            "check as that user too (sudo -u <user> matomo-rt check)"
        )
    problems = import_problems(config)
    for problem in problems:
        c.fail(problem, "fix it in the configuration file")
    for log_config in config.logs:
        _check_log(c, log_config)
    _check_state(c, config)
    _check_python(c, config, timeout)
    _check_formats(c, config, timeout)
    _check_php(c, config, timeout)
    token, token_ok = _check_token(c, config)
    _check_matomo(c, config, token, token_ok, timeout)
    return 1 if c.failures else 0


# ------------------------------------------------------------------------------------------
# Local checks
# ------------------------------------------------------------------------------------------


def _who() -> str:
    return f"uid {os.geteuid()}"


def _check_log(c: Checklist, log_config: LogConfig) -> None:
    path = log_config.path
    name = log_config.name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        c.fail(
            f"log {name}: {path}: no such file",
            "fix logs.path, or start the web server so it creates the log",
        )
        return
    except OSError as exc:
        c.fail(f"log {name}: {path}: {_reason(exc)}", f"let {_who()} reach the log")
        return
    if not stat.S_ISREG(st.st_mode):
        c.fail(f"log {name}: {path}: not a regular file", "point logs.path at the log file")
        return
    if not os.access(path, os.R_OK):
        c.fail(
            f"log {name}: {path}: not readable by {_who()}",
            "add the service's user to the log's group (e.g. adm)",
        )
        return
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        c.fail(f"log {name}: {path}: cannot read: {_reason(exc)}", "check its permissions")
        return
    try:
        os.listdir(path.parent)
    except OSError as exc:
        c.fail(
            f"log {name}: {path.parent}: cannot list the directory ({_reason(exc)})",
            "rotated generations are found by listing it: give the service's user r-x on it",
        )
        return
    c.ok(f"log {name}: {path} is readable ({st.st_size:,} bytes)")


def _check_state(c: Checklist, config: Config) -> None:
    directory = config.state.dir
    if not directory.exists():
        ancestor = directory.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
            c.warn(
                f"state directory {directory} does not exist yet: `matomo-rt run` creates it, "
                f"`matomo-rt import` needs it (create it: install -d -m 0750 {directory})"
            )
        else:
            c.fail(
                f"state directory {directory}: does not exist and cannot be created "
                f"({ancestor} is {'not a directory' if not ancestor.is_dir() else 'not writable'})",
                f"create it: install -d -m 0750 -o <service user> {directory}, or set state.dir",
            )
        return
    if not directory.is_dir():
        c.fail(f"state directory {directory}: not a directory", "set state.dir to a directory")
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".matomo-rt-check.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        c.fail(
            f"state directory {directory}: cannot create a file ({_reason(exc)})",
            f"make it writable by the service's user: chown <user> {directory}",
        )
        return
    c.ok(f"state directory {directory} is writable")
    for log_config in config.logs:
        state_path = state_paths(config, log_config)[0]
        try:
            document = load_state(state_path)
        except StateError as exc:
            c.fail(f"log {log_config.name}: {exc}")
            continue
        if document is not None:
            c.ok(f"log {log_config.name}: state file {state_path} is readable")


def _check_python(c: Checklist, config: Config, timeout: float) -> None:
    python = config.matomo.python
    try:
        done = execute.run(
            [python, "-c", "import sys; print(sys.version)"], timeout=timeout, max_output=65536
        )
    except execute.ExecError as exc:
        c.fail(f"matomo.python: {exc}", "install Python 3 or set matomo.python to its path")
    else:
        version = done.stdout.decode("utf-8", "replace").strip().splitlines()
        if done.ok and version:
            if version[0].startswith("2."):
                c.fail(
                    f"matomo.python: {python} is Python {version[0].split()[0]}",
                    "import_logs.py needs Python 3: set matomo.python = python3",
                )
            else:
                c.ok(f"python: {python} runs (Python {version[0].split()[0]})")
        else:
            c.fail(f"matomo.python: {python}: {done.describe()}", "check the interpreter")
    script = config.matomo.import_logs_script
    if script is None:
        c.skip("import_logs.py: matomo.path is not set")
    elif script.is_file():
        if os.access(script, os.R_OK):
            c.ok(f"import_logs.py: {script}")
            _check_flags(c, config, script, timeout)
        else:
            c.fail(f"import_logs.py: {script}: not readable by {_who()}", "fix its permissions")
    # A missing script is already reported by import_problems().


def _check_flags(c: Checklist, config: Config, script: Path, timeout: float) -> None:
    """Resolve every configured flag against the script's own options, as argparse will."""
    try:
        done = execute.run(
            [config.matomo.python, "-c", options.PROBE, str(script)],
            timeout=timeout,
            max_output=1 << 20,
        )
    except execute.ExecError:
        return  # the interpreter itself was reported above
    found = options.parse_probe(done.stdout.decode("utf-8", "replace"))
    if found is None:
        c.warn(f"import_logs.py: could not read its options ({done.describe()}): flags unchecked")
        return
    where = [("import.flags", config.import_.flags)]
    where += [(f"logs {log.name}: flags", log.flags) for log in config.logs if log.flags]
    problems = 0
    for key, flags in where:
        for finding in options.resolve(flags, found):
            problems += 1
            if finding.fatal:
                c.fail(f"{key}: {finding.text}", "import_logs.py would refuse every batch; fix it")
            else:
                c.warn(f"{key}: {finding.text}")
    if not problems:
        count = sum(len(flags) for _, flags in where)
        c.ok(f"import_logs.py knows every configured flag ({count})")


def _check_formats(c: Checklist, config: Config, timeout: float) -> None:
    """Each log's format against the names the configured import_logs.py itself lists."""
    script = config.matomo.import_logs_script
    named = {log.log_format.name for log in config.logs if log.format_regex is None}
    if script is None or not script.is_file() or not named:
        return
    try:
        done = execute.run(
            [config.matomo.python, str(script), "--help"], timeout=timeout, max_output=1 << 20
        )
    except execute.ExecError:
        return  # the interpreter's failure is reported by _check_python
    offered = formats.names_in_help(done.stdout.decode("utf-8", "replace"))
    if offered is None or not done.ok:
        c.skip("log formats: import_logs.py --help lists no format names")
        return
    for log_config in config.logs:
        name = log_config.log_format.name
        if log_config.format_regex is not None:
            continue
        if name in offered:
            c.ok(f"log {log_config.name}: import_logs.py reads format {name}")
        else:
            c.fail(
                f"log {log_config.name}: format {name} is not one this import_logs.py reads"
                f" ({', '.join(sorted(offered))})",
                "upgrade Matomo's log-analytics, or set logs.format to one of those",
            )


def _check_php(c: Checklist, config: Config, timeout: float) -> None:
    if not config.archive.enabled:
        c.skip("archiving is disabled (archive.enabled = false): php not checked")
        return
    php = config.matomo.php
    disable = "or set archive.enabled = false if another host runs core:archive"
    try:
        done = execute.run([php, "--version"], timeout=timeout, max_output=65536)
    except execute.ExecError as exc:
        c.fail(f"matomo.php: {exc}", f"install php-cli, set matomo.php to its path, {disable}")
    else:
        first = done.stdout.decode("utf-8", "replace").strip().splitlines()
        if done.ok and first:
            c.ok(f"php: {php} runs ({first[0].strip()})")
        else:
            c.fail(f"matomo.php: {php} --version: {done.describe()}", f"check it, {disable}")
    console = config.matomo.console
    if console is None:
        c.fail("matomo.path is not set: core:archive needs Matomo's console", disable)
    elif console.is_file():
        c.ok(f"console: {console}")
    else:
        c.fail(f"matomo.path: {console}: no such file (Matomo's console)", f"fix it, {disable}")


def _check_token(c: Checklist, config: Config) -> tuple[Optional[str], bool]:
    """(token, usable)."""
    path = config.matomo.token_auth_file
    try:
        token = load_token(config.matomo, config.source)
    except ConfigError as exc:
        for problem in exc.problems:
            c.fail(problem, "create it with the token_auth of a user with write access")
        return None, False
    if token is None:
        c.warn(
            f"no token: matomo.token_auth_file is not set and ${TOKEN_ENV} is empty; "
            "import_logs.py then asks Matomo's console for one, which works only on the Matomo "
            "host itself"
        )
        return None, False
    if path is None:
        c.ok(f"token from ${TOKEN_ENV}")
        return token, True
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o004:
        c.warn(f"token file {path} is readable by every user (mode {mode:04o}): chmod o-r {path}")
    else:
        c.ok(f"token file {path} (mode {mode:04o})")
    return token, True


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


# ------------------------------------------------------------------------------------------
# Matomo's API
# ------------------------------------------------------------------------------------------


class _Answer:
    """One API answer, classified."""

    def __init__(
        self,
        kind: str,
        data: Any = None,
        message: str = "",
        status: Optional[int] = None,
    ) -> None:
        # ok, unreachable, redirect, blocked, refused, no_access, error, not_json, stopped
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

    def _redact(self, text: str) -> str:
        return execute.redact(text, [self.token] if self.token else [])

    def call(self, method: str, **params: str) -> _Answer:
        if self.stopped is not None:
            return _Answer("stopped", message=self.stopped)
        # Non-secret parameters in the query string, so Matomo formats even an early error
        # (a blocked IP) as JSON; the token only in the POST body, never in a URL.
        query = urllib.parse.urlencode({"module": "API", "method": method, "format": "json"})
        body = dict(params)
        body["filter_limit"] = "-1"
        if self.token:
            body["token_auth"] = self.token
        request = urllib.request.Request(
            f"{self.url}/index.php?{query}",
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
                return _Answer("redirect", message=where, status=status)
        except urllib.error.URLError as exc:
            return _Answer("unreachable", message=self._redact(_url_reason(exc.reason)))
        except (OSError, ValueError) as exc:
            return _Answer("unreachable", message=self._redact(_url_reason(exc)))
        text = raw.decode("utf-8", "replace")
        answer = self._classify(status, text)
        if answer.kind in ("blocked", "refused", "no_access"):
            self.stopped = answer.message
        return answer

    def _classify(self, status: int, text: str) -> _Answer:
        lowered = text.lower()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        message = ""
        if isinstance(data, dict) and data.get("result") == "error":
            message = self._redact(" ".join(str(data.get("message", "")).split()))
        if any(marker in lowered for marker in BLOCKED_MARKERS):
            message = message or "Matomo says: too many failed logins, try again later"
            return _Answer("blocked", message=message, status=status)
        if status == 401 or (message and "token" in message.lower()):
            return _Answer("refused", message=message or f"HTTP {status}", status=status)
        if message and (_NO_ACCESS.search(message) or status == 403):
            return _Answer("no_access", message=message, status=status)
        if message:
            return _Answer("error", message=message, status=status)
        if status >= 400:
            snippet = self._redact(" ".join(text.split())[:120])
            return _Answer("error", message=f"HTTP {status}: {snippet}", status=status)
        if data is None:
            snippet = self._redact(" ".join(text.split())[:120])
            return _Answer("not_json", message=snippet, status=status)
        return _Answer("ok", data=data, status=status)


_REDIRECTS = (301, 302, 303, 307, 308)


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


def _site_ids(data: Any) -> set[int]:
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


def _check_matomo(
    c: Checklist, config: Config, token: Optional[str], token_ok: bool, timeout: float
) -> None:
    url = config.matomo.url
    if url is None:
        c.skip("Matomo: matomo.url is not set")
        return
    api = MatomoApi(url, token if token_ok else None, timeout)
    unblock = (
        f"on the Matomo host, as its web server's user: php {config.matomo.path or '<matomo>'}"
        "/console login:unblock-blocked-ips (after fixing the token), or wait for the block "
        "to expire (60 minutes by default)"
    )
    answer = api.call("API.getMatomoVersion")
    if answer.kind == "unreachable":
        c.fail(
            f"Matomo at {url} is unreachable: {answer.message}",
            "check matomo.url, DNS, the firewall and TLS from this host",
        )
        return
    if answer.kind == "blocked":
        c.fail(
            f"Matomo at {url} blocks this host's IP after too many failed logins "
            f"({answer.message})",
            unblock,
        )
        return
    if answer.kind == "redirect":
        c.fail(
            f"Matomo at {url} redirects (HTTP {answer.status}) to {answer.message}",
            "set matomo.url to the URL Matomo is really served at (a redirected POST loses "
            "its token and parameters)",
        )
        return
    if answer.kind == "error" and (answer.status or 0) >= 500:
        c.fail(
            f"Matomo at {url} fails: {answer.message}",
            "look at Matomo's and the web server's error logs",
        )
        return
    if answer.kind == "not_json":
        c.fail(
            f"Matomo at {url} answered with something that is not JSON "
            f"(HTTP {answer.status}: {answer.message})",
            "check matomo.url: it must be Matomo's base URL (the one its UI is at)",
        )
        return
    if answer.kind == "ok":
        version = answer.data.get("value") if isinstance(answer.data, dict) else answer.data
        c.ok(f"Matomo {version} answers at {url}")
    elif api.token is None:
        # Anonymous: any Matomo-shaped error still proves Matomo is there.
        c.ok(f"Matomo answers at {url} ({answer.message})")
    elif answer.kind != "refused":
        c.ok(f"Matomo answers at {url}")

    if api.token is None:
        c.skip("token, write access and host mapping: no usable token")
        return
    if answer.kind == "refused":
        c.fail(
            f"Matomo refused the token ({answer.message})",
            "put a valid token_auth in matomo.token_auth_file (Matomo: Administration > "
            "Personal > Security > Auth tokens); each refused try counts as a failed login and "
            "20 in an hour block this host; no further API calls made",
        )
        c.skip("write access and host mapping: the token was refused")
        return
    if answer.kind == "no_access":
        c.fail(
            f"the token has no access to any site ({answer.message})",
            "use the token of a user with write or admin access to the sites",
        )
        c.skip("write access and host mapping: the token has no access")
        return
    if answer.kind == "error":
        c.warn(f"API.getMatomoVersion: {answer.message}")
    else:
        c.ok("Matomo accepted the token")
    if config.import_.workers > 1:
        _check_connections(c, api, config.import_.workers)

    writable = _check_write_access(c, api)
    if writable is None and api.stopped is not None:
        c.skip("host mapping: no further API calls")
        return
    for log_config in config.logs:
        _check_hosts(c, config, api, log_config, writable, unblock)


def _check_connections(c: Checklist, api: MatomoApi, workers: int) -> None:
    """import.workers runs that many importers at once: Matomo must answer that many."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(pool.map(lambda _: api.call("API.getMatomoVersion"), range(workers)))
    bad = [a for a in answers if a.kind != "ok"]
    if not bad:
        c.ok(f"Matomo answered {workers} requests at once (import.workers = {workers})")
        return
    first = bad[0]
    c.fail(
        f"of {workers} requests at once (import.workers = {workers}), {len(bad)} failed:"
        f" {first.message or first.kind}",
        "give Matomo more PHP workers (php-fpm pm.max_children) or lower import.workers",
    )


def _check_write_access(c: Checklist, api: MatomoApi) -> Optional[set[int]]:
    """Site ids the token may track to (admin or write access), or None if unknown."""
    admin = api.call("SitesManager.getSitesIdWithAdminAccess")
    if admin.kind != "ok":
        _api_problem(c, "SitesManager.getSitesIdWithAdminAccess", admin)
        return None
    ids = _site_ids(admin.data)
    # Write access (Matomo 4+) is enough to track; older versions lack the method.
    write = api.call("SitesManager.getSitesIdWithWriteAccess")
    if write.kind == "ok":
        ids |= _site_ids(write.data)
    elif write.kind not in ("error",):
        _api_problem(c, "SitesManager.getSitesIdWithWriteAccess", write)
        return None
    if not ids:
        c.fail(
            "the token has no write or admin access to any site: Matomo would refuse every "
            "imported request (while import_logs.py reports them imported)",
            "use the token of a user with write or admin access to the sites, or a super user",
        )
        return set()
    shown = ", ".join(str(i) for i in sorted(ids)[:20]) + (", …" if len(ids) > 20 else "")
    c.ok(f"the token may track to {_plural(len(ids), 'site')} ({shown})")
    return ids


def _api_problem(c: Checklist, method: str, answer: _Answer) -> None:
    if answer.kind == "stopped":
        c.skip(f"{method}: no further API calls after: {answer.message}")
    elif answer.kind == "refused":
        c.fail(f"Matomo refused the token on {method} ({answer.message})", "fix the token")
    elif answer.kind == "blocked":
        c.fail(f"{method}: this host's IP is blocked ({answer.message})", "unblock it")
    elif answer.kind == "unreachable":
        c.fail(f"{method}: Matomo became unreachable ({answer.message})", "try again")
    else:
        c.fail(f"{method}: {answer.message}", "check Matomo's logs")


def sample_hosts(path: Path, lines: int = SAMPLE_LINES) -> Counter[str]:
    """Hosts of the last `lines` complete lines of `path` (nginx_json "host" field)."""
    hosts: Counter[str] = Counter()
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(size - SAMPLE_BYTES, 0)
            fh.seek(start)
            data = fh.read(SAMPLE_BYTES)
    except OSError:
        return hosts
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    end = data.rfind(b"\n")
    chunk = data[: end + 1] if end >= 0 else b""
    for line in chunk.splitlines(keepends=True)[-lines:]:
        good, _ = check_line(line)
        if good is None:
            continue
        try:
            host = json.loads(good).get("host")
        except (ValueError, AttributeError):
            continue
        if isinstance(host, str) and host:
            hosts[host] += 1
    return hosts


def _flag_names(flags: tuple[str, ...]) -> set[str]:
    return {flag.split("=", 1)[0] for flag in flags}


def _check_hosts(
    c: Checklist,
    config: Config,
    api: MatomoApi,
    log_config: LogConfig,
    writable: Optional[set[int]],
    unblock: str,
) -> None:
    name = log_config.name
    flags = _flag_names((*config.import_.flags, *log_config.flags))
    if log_config.idsite is not None:
        site = log_config.idsite
        if writable is not None and site not in writable:
            c.fail(
                f"log {name}: idsite = {site}, but the token has no write access to site {site}",
                "give the token's user write access to that site, or fix logs.idsite",
            )
        else:
            c.skip(f"log {name}: host mapping (idsite = {site} is set)")
        return
    if "--idsite" in flags or "--log-hostname" in flags:
        c.skip(f"log {name}: host mapping (--idsite/--log-hostname in flags)")
        return
    hosts = sample_hosts(log_config.path)
    if not hosts:
        c.skip(f"log {name}: host mapping: no line with a host among the last {SAMPLE_LINES}")
        return
    unmapped: list[str] = []
    no_write: list[tuple[str, int]] = []
    for host, _ in hosts.most_common(MAX_HOSTS):
        answer = api.call("SitesManager.getSitesIdFromSiteUrl", url=host)
        if answer.kind != "ok":
            if answer.kind == "blocked":
                c.fail(f"log {name}: this host's IP is blocked ({answer.message})", unblock)
            else:
                _api_problem(c, f"log {name}: SitesManager.getSitesIdFromSiteUrl", answer)
            return
        ids = _site_ids(answer.data)
        if not ids:
            unmapped.append(host)
        elif writable is not None and not ids & writable:
            no_write.append((host, min(ids)))
    checked = min(len(hosts), MAX_HOSTS)
    mapped = checked - len(unmapped)
    for host, site in no_write:
        c.fail(
            f"log {name}: host {host} is site {site}, but the token has no write access to it: "
            "Matomo would refuse its requests",
            "give the token's user write access to that site",
        )
    if not unmapped:
        c.ok(f"log {name}: all {checked} sampled hosts map to a Matomo site")
        return
    listed = ", ".join(unmapped)
    if "--idsite-fallback" in flags or "--add-sites-new-hosts" in flags:
        c.ok(
            f"log {name}: hosts without a site ({listed}) are handled by "
            f"{'--idsite-fallback' if '--idsite-fallback' in flags else '--add-sites-new-hosts'}"
        )
        return
    ways_out = (
        "add the site in Matomo (or the host as an Alias URL of a site), or add "
        '"--add-sites-new-hosts" or "--idsite-fallback=ID" to flags'
    )
    text = f"log {name}: {len(unmapped)} of {checked} sampled hosts match no Matomo site: {listed}"
    if mapped == 0:
        c.fail(text + " (nothing of this log would be stored)", ways_out)
    else:
        c.warn(f"{text}; their requests are skipped. Ways out: {ways_out}")
