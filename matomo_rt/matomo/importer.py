"""Matomo's import_logs.py as a function: the argv we give it, and what its output means.

Pure functions only (processes are started by matomo_rt.execute). The facts they encode come
from import_logs.py's source (see docs/import_logs-facts.md): its exit code alone does not say
whether a batch reached Matomo, so the outcome is read from the summary and the error text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TOKEN_ENV_CHILD = "MATOMO_RT_TOKEN_AUTH"

#: Runs import_logs.py with the token appended to its sys.argv from the environment, so the
#: token never appears in the child's /proc/PID/cmdline (what `ps` shows).
LAUNCHER = (
    "import os,runpy,sys;s=sys.argv[1];t=os.environ.pop('MATOMO_RT_TOKEN_AUTH','');"
    "sys.argv=sys.argv[1:]+(['--token-auth='+t] if t else []);"
    "sys.path[0]=os.path.dirname(os.path.abspath(s));runpy.run_path(s,run_name='__main__')"
)

DEFAULT_FORMAT = ("--log-format-name=nginx_json",)


def build_argv(
    python: str,
    script: Path,
    url: str,
    flags: Sequence[str],
    recorders: int = 1,
    idsite: Optional[int] = None,
    dry_run: bool = False,
    format_args: Sequence[str] = DEFAULT_FORMAT,
) -> list[str]:
    """The importer's command line: our fixed options, the configured flags, stdin as `-`.

    The format (`format_args`, from LogFormat.argv()) is always given: without it import_logs.py
    probes the format on the first lines of stdin and silently loses them.
    """
    argv = [python, "-c", LAUNCHER, str(script), f"--url={url}", *format_args]
    if not any(f.split("=", 1)[0] == "--recorders" for f in flags):
        argv.append(f"--recorders={recorders}")
    argv.extend(flags)
    if idsite is not None:
        argv.append(f"--idsite={idsite}")
    if dry_run:
        argv.append("--dry-run")
    argv.append("-")
    return argv


def child_env(token: Optional[str]) -> dict[str, str]:
    """What we add to the importer's environment.

    `utf-8:replace`: invalid UTF-8 in a log line otherwise crashes the importer, or becomes a
    request Matomo's JSON decoder drops while the importer counts it as imported.
    """
    env = {"PYTHONIOENCODING": "utf-8:replace"}
    if token:
        env[TOKEN_ENV_CHILD] = token
    return env


# -- outcome ------------------------------------------------------------------------------

SUCCESS = "success"  # exit 0, summary parsed: commit the batch
PARTIAL = "partial"  # fatal error with --skip=N: commit the first N lines
FAILED = "failed"  # nothing recorded (failed before sending): keep the offset, retry later
REFUSED = "refused"  # Matomo refused every hit (usually the token's rights): keep, retry later
AUTH = "auth"  # the token was refused: stop calling Matomo until the config changes
USAGE = "usage"  # exit 2: a flag import_logs.py does not know; a configuration error
UNCERTAIN = "uncertain"  # killed or crashed mid-batch: part may be recorded; policy decides

_SUMMARY_FIELDS = {
    "imported": r"(\d+) requests imported successfully",
    "downloads": r"(\d+) requests were downloads",
    "ignored": r"(\d+) requests ignored:",
    "http_errors": r"(\d+) HTTP errors",
    "http_redirects": r"(\d+) HTTP redirects",
    "invalid": r"(\d+) invalid log lines",
    "filtered": r"(\d+) filtered log lines",
    "no_site": r"(\d+) requests did not match any known site",
    "hostname_skipped": r"(\d+) requests did not match any --hostname",
    "bots": r"(\d+) requests done by bots, search engines",
    "static": r"(\d+) requests to static resources",
    "downloads_skipped": r"(\d+) requests to file downloads did not match",
}
_FIELD_RES = {k: re.compile(r"^\s*" + v, re.MULTILINE) for k, v in _SUMMARY_FIELDS.items()}
_SUMMARY_HEAD = re.compile(r"^Logs import summary\s*$", re.MULTILINE)
_UNMATCHED_HEAD = re.compile(r"^\s*(\d+) distinct hostnames did not match any existing site:")
_REFUSED = re.compile(r"The Matomo tracker identified (\d+) invalid requests")
#: The fatal error and what follows it up to the --skip hint: Matomo 5 answers a refused token
#: with an HTML page, whose message is lines below the first.
_FATAL = re.compile(
    r"^Fatal error: (.*?)(?=^You can restart the import|\Z)", re.MULTILINE | re.DOTALL
)
_HTML_START = re.compile(r"<!DOCTYPE html|<html\b", re.IGNORECASE)
_H2 = re.compile(r"<h2\b[^>]*>(.*?)</h2>", re.DOTALL | re.IGNORECASE)
_HTTP_ERROR = re.compile(r"^MatomoHttpBase\.Error: .*", re.MULTILINE | re.DOTALL)
_TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.DOTALL | re.IGNORECASE)
_BLOCKED = re.compile(r"not allowed to log in|too many failed logins", re.IGNORECASE)
_SKIP = re.compile(r"specifying --skip=(\d+) on the command line")
#: Matomo refusing the token: a 401/403 whose answer speaks of the token or a refused login.
#: Both are needed: a 500 page naming `token_auth` or a proxy's own 401 is no failed login.
_AUTH_STATUS = re.compile(r"HTTP Error 40[13]\b")
_AUTH_WORDS = re.compile(
    r"token|authenticat|not allowed to log in|too many failed logins", re.IGNORECASE
)


def _is_auth(text: str) -> bool:
    return bool(_AUTH_STATUS.search(text) and _AUTH_WORDS.search(text))


@dataclass(frozen=True)
class ImportResult:
    """What one run of import_logs.py did, read from its exit code and output."""

    outcome: str
    returncode: Optional[int]
    counts: dict[str, int] = field(default_factory=dict)
    unmatched_hosts: tuple[str, ...] = ()
    refused_hits: int = 0
    skip: Optional[int] = None
    reason: str = ""

    @property
    def imported(self) -> int:
        return self.counts.get("imported", 0)

    @property
    def held(self) -> int:
        """Requests Matomo stored: import_logs.py's "imported" also counts the requests sent
        for hosts matching no site, and those Matomo refused."""
        no_site = self.counts.get("no_site", 0)
        return max(self.imported - no_site - self.refused_hits, 0)

    @property
    def ignored(self) -> int:
        return self.counts.get("ignored", 0)


def parse_summary(stdout: str) -> Optional[tuple[dict[str, int], tuple[str, ...]]]:
    """Counts and unmatched host names from the summary, or None when there is no summary."""
    head = _SUMMARY_HEAD.search(stdout)
    if head is None:
        return None
    text = stdout[head.end() :]
    counts: dict[str, int] = {}
    for key, regex in _FIELD_RES.items():
        m = regex.search(text)
        if m:
            counts[key] = int(m.group(1))
    if "imported" not in counts:
        return None
    return counts, tuple(_unmatched_hosts(text))


def _unmatched_hosts(text: str) -> list[str]:
    """The host names listed under "distinct hostnames did not match any existing site"."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _UNMATCHED_HEAD.match(line):
            hosts = []
            for item in lines[i + 1 :]:
                stripped = item.strip()
                if not stripped or stripped.startswith("TIPs:") or not item.startswith(" " * 8):
                    break
                hosts.append(stripped)
            return hosts
    return []


def classify(
    returncode: Optional[int],
    stdout: str,
    stderr: str,
    lines_sent: int,
    timed_out: bool = False,
    read_input: bool = True,
) -> ImportResult:
    """Turn one importer run into an outcome the commit protocol can act on.

    `read_input` False: the importer read none of its stdin (it failed at start-up: a syntax
    error, a missing file or module), so it sent none of the batch. What would otherwise be
    uncertain is then a plain failure: `on_uncertain = "skip"` must not move past a batch that
    was never sent.
    """
    result = _classify(returncode, stdout, stderr, lines_sent, timed_out)
    if result.outcome != UNCERTAIN or read_input:
        return result
    if returncode is None:
        why = "timed out" if timed_out else "was killed"
        return ImportResult(FAILED, None, reason=f"import_logs.py {why} before reading its input")
    detail = _last_line(stderr) or f"exit {returncode}"
    return ImportResult(
        FAILED, returncode, reason=f"import_logs.py failed before reading its input: {detail}"
    )


def _classify(
    returncode: Optional[int], stdout: str, stderr: str, lines_sent: int, timed_out: bool
) -> ImportResult:
    refused = sum(int(n) for n in _REFUSED.findall(stderr))
    fatal = [_readable(text) for text in _FATAL.findall(stderr)]
    # With --idsite, the site lookup at start-up fails with a traceback whose exception (its
    # last line) holds Matomo's answer, maybe an HTML page over many lines.
    http_errors = _HTTP_ERROR.findall(stderr)
    http_error = _readable(http_errors[-1]) if http_errors else ""
    reason = fatal[-1] if fatal else http_error or _last_line(stderr)
    if _BLOCKED.search(reason):
        reason += (
            " — Matomo blocked this host after failed logins: on the Matomo host run"
            " `php console login:unblock-blocked-ips`"
        )
    if returncode is None:
        why = "timed out" if timed_out else "was killed"
        return ImportResult(UNCERTAIN, None, reason=f"import_logs.py {why} mid-batch")
    if returncode == 2:
        usage = _last_line(stderr) or "usage error"
        return ImportResult(USAGE, 2, reason=f"import_logs.py rejected its options: {usage}")
    if returncode == 0:
        parsed = parse_summary(stdout)
        if parsed is None:
            return ImportResult(
                UNCERTAIN, 0, reason="import_logs.py exited 0 without printing its summary"
            )
        counts, hosts = parsed
        # "imported" also counts requests sent for hosts matching no site.
        held = counts.get("imported", 0) - counts.get("no_site", 0)
        if refused and refused >= held > 0:
            return ImportResult(
                REFUSED,
                0,
                counts,
                hosts,
                refused,
                reason=f"Matomo refused all {refused} requests (does the token have write access"
                " to the sites?)",
            )
        return ImportResult(SUCCESS, 0, counts, hosts, refused)
    skip = _SKIP.search(stderr)
    n = None if skip is None else min(int(skip.group(1)), lines_sent)
    if fatal and _is_auth(" ".join(fatal)):
        # The lines before the refused request were recorded: commit them, then stop.
        return ImportResult(AUTH, returncode, refused_hits=refused, skip=n, reason=reason)
    if n is not None:
        outcome = PARTIAL if n > 0 else FAILED
        return ImportResult(outcome, returncode, refused_hits=refused, skip=n, reason=reason)
    if fatal:
        return ImportResult(FAILED, returncode, refused_hits=refused, reason=reason)
    if http_error:  # the start-up traceback: nothing was sent
        return ImportResult(AUTH if _is_auth(http_error) else FAILED, returncode, reason=reason)
    # A traceback: it crashed mid-batch; earlier bulk requests may have been recorded.
    return ImportResult(
        UNCERTAIN, returncode, refused_hits=refused, reason=f"import_logs.py crashed: {reason}"
    )


def clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters between two words, with " …" saying it was cut:
    a reason must never end in a cut word that reads like another one."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip() + " …"


def _readable(text: str) -> str:
    """One line from an error whose response may be an HTML page: the text before the page,
    then the page's message (Matomo's error page holds it in its one <h2>; other pages give
    their visible text), never markup, never a word cut in two."""
    page = _HTML_START.search(text)
    if page is not None:
        heading = _H2.search(text, page.start())
        body = heading.group(1) if heading else text[page.start() :]
        text = text[: page.start()] + " " + html.unescape(_TAG.sub(" ", body))
    return clip(" ".join(text.split()), 500)


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return clip(line.strip(), 300)
    return ""
