"""Test double of Matomo's import_logs.py (matomo-log-analytics), for matomo-rt's tests.

Run it as tests/doubles/import_logs.py, the script beside this file (see there why the two).

Why: matomo-rt must be tested against the importer's *behaviour* -- its options, its stdout
summary, its crashes, its ``--skip=N`` hint, its exit codes -- without a Matomo server. This script
reproduces that behaviour for ``--log-format-name=nginx_json`` (and the Apache-style formats
common, common_vhost, ncsa_extended, common_complete, caddy_json and ``--log-format-regex``)
read from ``-`` (stdin), as documented in docs/import_logs-facts.md, and "records" what Matomo
would hold by appending the original input lines to a file. It is our own code (stdlib only,
Python 3.9+); only the observable facts were taken from the real script.
tests/test_contract_import_logs.py checks it against the real one.

Environment (all optional):

IMPORT_DOUBLE_RECORD   file; the original bytes of every line Matomo would hold are appended,
                       batch by batch, flushed and fsync'd like a committed bulk POST; a
                       tail torn by a kill mid-append is cut back by the next append.
IMPORT_DOUBLE_CALLS    file; one JSON line at start {"event": "start", "pid", "argv",
                       "token_auth", "token_env"} and one at the end {"event": "end", "pid",
                       "exit", "recorded"} (no end line: the process was killed or hangs); and
                       {"event": "hang", "pid"} when it starts to wait forever (a simulated
                       hang), so a test knows the hang was reached before a timeout.
IMPORT_DOUBLE_CONTROL  JSON file read at start:
    sites          {host: idsite}; default: every host belongs to site 1.
    valid_tokens   [token, ...]; default: any non-empty token. Another token acts as "auth".
    superuser      bool (default false): Matomo names invalid hits' lines only to super users.
    refuse_lines   [lineno, ...] (0-based): Matomo answers that these hits are invalid.
    real_delays    bool (default false): sleep --retry-delay between retries like the real one.
    fail           null | "unreachable" | "auth" | "refuse_all" | "hang"
                   | {"fatal_after_lines": N} | {"hang_after_lines": N}
                   (``fatal_after_lines``/``hang_after_lines`` are also accepted as top-level keys).

    What each failure does, as the real importer does it (lines are 0-based input line numbers):
    unreachable        the first contact fails with "Connection refused" after the retries:
                       without --idsite at the first site lookup (fatal error + --skip hint),
                       with --idsite at start-up (traceback). Nothing recorded.
    auth               the same with HTTP 401; a token not in valid_tokens does the same.
    refuse_all         Matomo answers that every hit is invalid: nothing recorded, stderr
                       "The Matomo tracker identified N invalid requests.", exit 0.
    hang               without --idsite the first site lookup gets a non-JSON answer, which kills
                       the recorder thread ("Exception in thread Thread-1 (_run_bulk):" on
                       stderr); the importer reads on until its queues are full (about 3 more
                       batches) and then waits forever. With --idsite the first POST never gets
                       an answer. Nothing recorded.
    fatal_after_lines  the first POST holding a request from line >= N fails (HTTP 500, after
                       the retries): earlier POSTs are recorded, then "Fatal error: ..." and the
                       hint --skip=<first line of that POST>, exit 1.
    hang_after_lines   lines < N of the POST in flight are recorded, then that POST never ends.
    fatal_at_path      (top-level key) like fatal_after_lines, for the first POST holding a
                       request for this path: a fault tied to a request, not to the position of
                       a line in one run's input (several importers share a batch).
    hang_at_path       (top-level key) like hang_after_lines, for the request for this path.
    refuse_paths       [path, ...] (top-level key): like refuse_lines, by path.

Exit codes: 0 done (summary printed), 1 fatal error or crash, 2 usage error, 3 something this
double does not emulate (another log format, --replay-tracking, ...).
"""

from __future__ import annotations

import argparse
import codecs
import datetime
import fcntl
import fnmatch
import glob
import io
import json
import logging
import os
import queue
import sys
import threading
import time
import urllib.parse
from typing import IO, Any, Callable, NoReturn, Optional

# ---------------------------------------------------------------------------------------------
# Behavioural data: which requests the real importer counts as downloads, static files or bots.
# (Facts about its filtering, kept as plain data; see docs/import_logs-facts.md.)


def _words(text: str) -> list[str]:
    """Whitespace-separated words: keeps the long data lists below readable."""
    return text.split()


_DOWNLOAD_EXTS = frozenset(
    _words(
        """7z aac apk arc arj asf asx avi azw3 bin bz2 csv deb dmg doc docx epub exe flac flv gz
        gzip hqx ibooks jar json md5 mobi mov movie mp2 mp3 mp4 mpeg mpg msi msp odb odf odg odp
        ods odt ogg ogv pdf phps ppt pptx qt qtm ra ram rar rpm rtf sea sig sit tar tbz tgz
        torrent txt wav webm wma wmv wpd xls xlsx xml xsd z zip"""
    )
)
_STATIC_EXTS = frozenset(
    _words("bmp class css eot gif ico jpeg jpg js otf png svg svgz swf ttf webp woff woff2 xml")
)
_STATIC_NAMES = frozenset(["robots.txt"])
#: Lower-case substrings of a user agent that mark a bot (besides --useragent-exclude).
_BOT_MARKERS = (
    *_words(
        """adsbot-google baidubot bot- bot/ ccooter/ crawl curl echoping exabot feed googlebot
        ia_archiver java/ libwww mediapartners-google msnbot netcraftsurvey panopta
        pingdom.com_bot_ robot spider surveybot twiceler voilabot yahoo yandex zabbix
        googlestackdrivermonitoring"""
    ),
    "ask jeeves",
)

#: Names --log-format-name accepts; only nginx_json is emulated.
_FORMAT_NAMES = _words(
    """common common_vhost ncsa_extended common_complete w3c_extended amazon_cloudfront
    incapsula_w3c iis shoutcast s3 icecast2 elb traefik_json nginx_json caddy_json ovh
    haproxy gandi"""
)
#: Formats the real importer probes, in order, when --log-format-name is missing (ovh is not
#: probed). The W3C-style probes read lines until a non-comment line; the others read one line.
_PROBES = [n for n in _FORMAT_NAMES if n != "ovh"]
_W3C_PROBES = {"w3c_extended", "amazon_cloudfront", "incapsula_w3c", "iis", "shoutcast"}

_INVALID_TOKEN_BODY = (
    '{"result":"error","message":"Unable to authenticate with the provided token. '
    'It is either invalid or expired."}'
)
_SERVER_ERROR_BODY = '{"status":"error","tracked":0,"invalid":0}'
_UNDETECTED = (
    "cannot automatically determine the log format using the first 100000 lines of the log "
    "file. \nMaybe try specifying the format with the --log-format-name command line argument."
)
_EXIT_NOT_EMULATED = 3

log = logging.getLogger("import_logs_double")


class BaseFormatException(Exception):
    """A field is absent from the line (the real script's exception of the same name)."""


class MatomoHttpBase:
    """Namespace mirroring the real script's HTTP error class, so crash output reads the same."""

    class Error(Exception):
        """Matomo could not be reached or refused a request after all retries."""

        def __init__(self, message: str, code: Optional[int] = None) -> None:
            super().__init__(message)
            self.code = code


class Hit:
    """One parsed request. Attributes are set as parsing proceeds; a missing ``host`` stays
    missing, so using it later fails with the same AttributeError as in the real importer."""

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


# ---------------------------------------------------------------------------------------------
# Test plumbing: control file, call log, record file.


class Control:
    """What the test wants the simulated Matomo to do, read once from IMPORT_DOUBLE_CONTROL."""

    def __init__(self, data: dict[str, Any]) -> None:
        sites = data.get("sites")
        self.sites: Optional[dict[str, Any]] = (
            None if sites is None else {str(k).lower(): v for k, v in sites.items()}
        )
        tokens = data.get("valid_tokens")
        self.valid_tokens: Optional[list[str]] = None if tokens is None else list(tokens)
        self.superuser = bool(data.get("superuser", False))
        self.refuse_lines = {int(n) for n in data.get("refuse_lines") or []}
        self.refuse_paths = set(data.get("refuse_paths") or [])
        self.fatal_at_path: Optional[str] = data.get("fatal_at_path")
        self.hang_at_path: Optional[str] = data.get("hang_at_path")
        self.real_delays = bool(data.get("real_delays", False))
        fail = data.get("fail")
        self.fatal_after: Optional[int] = data.get("fatal_after_lines")
        self.hang_after: Optional[int] = data.get("hang_after_lines")
        if isinstance(fail, dict):
            self.fatal_after = fail.get("fatal_after_lines", self.fatal_after)
            self.hang_after = fail.get("hang_after_lines", self.hang_after)
            fail = None
        self.fail: Optional[str] = fail

    @classmethod
    def from_env(cls) -> Control:
        path = os.environ.get("IMPORT_DOUBLE_CONTROL")
        if not path or not os.path.exists(path):
            return cls({})
        with open(path, encoding="utf-8") as fh:
            return cls(json.load(fh) or {})

    def token_ok(self, token: str) -> bool:
        if self.fail == "auth":
            return False
        if self.valid_tokens is None:
            return bool(token)
        return token in self.valid_tokens

    def site_ids(self) -> Optional[set[str]]:
        return None if self.sites is None else {str(v) for v in self.sites.values()}


class Journal:
    """IMPORT_DOUBLE_CALLS and IMPORT_DOUBLE_RECORD: what tests inspect afterwards."""

    def __init__(self) -> None:
        self.calls_path = os.environ.get("IMPORT_DOUBLE_CALLS")
        self.record_path = os.environ.get("IMPORT_DOUBLE_RECORD")
        self.recorded = 0
        self._lock = threading.Lock()
        self._ended = False

    def _append_call(self, entry: dict[str, Any]) -> None:
        if not self.calls_path:
            return
        with open(self.calls_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def start(self, argv: list[str]) -> None:
        self._append_call(
            {
                "event": "start",
                "pid": os.getpid(),
                "argv": argv,
                "token_auth": _token_on(argv),
                # What the script's own children (php console, …) would inherit.
                "token_env": {k: v for k, v in os.environ.items() if "TOKEN" in k.upper()},
            }
        )

    def hung(self) -> None:
        self._append_call({"event": "hang", "pid": os.getpid()})

    def end(self, code: int) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._append_call(
            {"event": "end", "pid": os.getpid(), "exit": code, "recorded": self.recorded}
        )

    def record(self, raws: list[bytes]) -> None:
        """Append one committed batch; durable before we go on, as Matomo's commit would be."""
        if not raws:
            return
        with self._lock:
            self.recorded += len(raws)
            if not self.record_path:
                return
            data = b"".join(r if r.endswith(b"\n") else r + b"\n" for r in raws)
            with open(self.record_path, "ab") as fh:
                # Other importers (workers) append too: the lock makes cut-back-and-append one
                # step. A record not ending in a newline was torn by a kill mid-append: drop it.
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                _cut_back_torn_tail(fh)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())


def _cut_back_torn_tail(fh: IO[bytes]) -> None:
    """Truncate the record file to its last complete line (rare: only after a kill)."""
    with open(fh.name, "rb") as reader:
        size = os.fstat(reader.fileno()).st_size
        if size == 0 or os.pread(reader.fileno(), 1, size - 1) == b"\n":
            return
        content = reader.read()
    fh.truncate(content.rfind(b"\n") + 1)


def _token_on(argv: list[str]) -> Optional[str]:
    """The --token-auth value on argv (both spellings), for the call log."""
    for i, arg in enumerate(argv):
        if arg.startswith("--token-auth="):
            return arg.split("=", 1)[1]
        if arg == "--token-auth" and i + 1 < len(argv):
            return argv[i + 1]
    return None


# ---------------------------------------------------------------------------------------------
# Command line: the real option set (names, destinations, types, defaults), own help texts.


class _KeyValues(argparse.Action):
    """``KEY=VAL[,KEY=VAL]`` into a dict; a pair without ``=`` crashes, as in the real one."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        pairs = dict(getattr(namespace, self.dest, None) or {})
        for item in str(values).split(","):
            key, value = item.split("=")
            pairs[key] = value
        setattr(namespace, self.dest, pairs)


def _valid_date(value: str) -> datetime.datetime:
    """``YYYY-MM-DD hh:mm:ss +hhmm`` to naive UTC. The name shows in argparse's error text."""
    try:
        date_part, zone = value.rsplit(" ", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Invalid date value '{value}'.") from None
    if not (len(zone) >= 5 and zone[0] in "+-" and zone[1:5].isdigit()):
        raise argparse.ArgumentTypeError(
            f"Invalid date value '{value}': expected valid timzeone like +0100 or -1200, "
            f"got '{zone}'"
        )
    moment = datetime.datetime.strptime(date_part, "%Y-%m-%d %H:%M:%S")
    return moment - _zone_offset(zone)


def _zone_offset(zone: str) -> datetime.timedelta:
    """``+hhmm`` as a timedelta, with the real importer's integer arithmetic."""
    number = int(zone)
    sign = -1 if number < 0 else 1
    magnitude = abs(number)
    return datetime.timedelta(hours=int(magnitude / 100) * sign, minutes=magnitude % 100 * sign)


def build_parser() -> argparse.ArgumentParser:
    """Every option of the real import_logs.py, in its order, so usage errors read the same."""
    p = argparse.ArgumentParser(
        description="Test double of Matomo's import_logs.py (a few formats, stdin first).",
    )
    add = p.add_argument
    add("file", type=str, nargs="+")
    add("--auth-user", dest="auth_user", help="HTTP basic auth user")
    add("--auth-password", dest="auth_password", help="HTTP basic auth password")
    add("--debug", "-d", dest="debug", action="count", default=0, help="more logging")
    add("--debug-tracker", dest="debug_tracker", action="store_true", default=False)
    add("--debug-request-limit", dest="debug_request_limit", type=int, default=None)
    add("--url", dest="matomo_url", required=True, help="Matomo base URL")
    add("--api-url", dest="matomo_api_url")
    add("--tracker-endpoint-path", dest="matomo_tracker_endpoint_path", default="/piwik.php")
    add("--dry-run", dest="dry_run", action="store_true", default=False)
    add(
        "--show-progress",
        dest="show_progress",
        action="store_true",
        default=hasattr(sys.stdout, "fileno") and sys.stdout.isatty(),
    )
    add("--show-progress-delay", dest="show_progress_delay", type=int, default=1)
    add("--add-sites-new-hosts", dest="add_sites_new_hosts", action="store_true", default=False)
    add("--idsite", dest="site_id")
    add("--idsite-fallback", dest="site_id_fallback")
    default_config = os.path.abspath(
        os.path.join(os.path.dirname(__file__), "../../config/config.ini.php")
    )
    add("--config", dest="config_file", default=default_config)
    add("--login", dest="login")
    add("--password", dest="password")
    add("--token-auth", dest="matomo_token_auth", help="token_auth with admin rights")
    add("--hostname", dest="hostnames", action="append", default=[])
    add("--exclude-path", dest="excluded_paths", action="append", default=[])
    add("--exclude-path-from", dest="exclude_path_from")
    add("--include-path", dest="included_paths", action="append", default=[])
    add("--include-path-from", dest="include_path_from")
    add("--useragent-exclude", dest="excluded_useragents", action="append", default=[])
    add("--enable-static", dest="enable_static", action="store_true", default=False)
    add("--enable-bots", dest="enable_bots", action="store_true", default=False)
    add("--enable-http-errors", dest="enable_http_errors", action="store_true", default=False)
    add("--enable-http-redirects", dest="enable_http_redirects", action="store_true", default=False)
    add("--enable-reverse-dns", dest="reverse_dns", action="store_true", default=False)
    add("--strip-query-string", dest="strip_query_string", action="store_true", default=False)
    add("--query-string-delimiter", dest="query_string_delimiter", default="?")
    add(
        "--log-format-name",
        dest="log_format_name",
        default=None,
        help=f"log format (supported are: {', '.join(sorted(_FORMAT_NAMES))}).",
    )
    add("--log-format-regex", dest="log_format_regex", default=None)
    add("--log-date-format", dest="log_date_format", default=None)
    add("--log-hostname", dest="log_hostname", default=None)
    add("--skip", dest="skip", default=0, type=int)
    add("--recorders", dest="recorders", default=1, type=int)
    add("--recorder-max-payload-size", dest="recorder_max_payload_size", default=200, type=int)
    add("--replay-tracking", dest="replay_tracking", action="store_true", default=False)
    add(
        "--replay-tracking-expected-tracker-file",
        dest="replay_tracking_expected_tracker_file",
        default=None,
    )
    add("--output", dest="output")
    add("--encoding", dest="encoding", default="utf8")
    add("--disable-bulk-tracking", dest="use_bulk_tracking", default=True, action="store_false")
    add(
        "--debug-force-one-hit-every-Ns",
        dest="force_one_action_interval",
        default=False,
        type=float,
    )
    add("--force-lowercase-path", dest="force_lowercase_path", default=False, action="store_true")
    add("--enable-testmode", dest="enable_testmode", default=False, action="store_true")
    add("--download-extensions", dest="download_extensions", default=None)
    add("--add-download-extensions", dest="extra_download_extensions", default=None)
    add(
        "--w3c-map-field",
        action=_KeyValues,
        metavar="KEY=VAL",
        default={},
        dest="custom_w3c_fields",
    )
    add(
        "--w3c-time-taken-millisecs",
        action="store_true",
        default=False,
        dest="w3c_time_taken_in_millisecs",
    )
    add("--w3c-fields", dest="w3c_fields", default=None)
    add(
        "--w3c-field-regex",
        action=_KeyValues,
        metavar="KEY=VAL",
        default={},
        dest="w3c_field_regexes",
        type=str,
    )
    add("--title-category-delimiter", dest="title_category_delimiter", default="/")
    add("--dump-log-regex", dest="dump_log_regex", action="store_true", default=False)
    add("--ignore-groups", dest="regex_groups_to_ignore", default=None)
    add(
        "--regex-group-to-visit-cvar",
        action=_KeyValues,
        metavar="KEY=VAL",
        dest="regex_group_to_visit_cvars_map",
        default={},
    )
    add(
        "--regex-group-to-page-cvar",
        action=_KeyValues,
        metavar="KEY=VAL",
        dest="regex_group_to_page_cvars_map",
        default={},
    )
    add("--track-http-method", dest="track_http_method", default=False)
    add("--retry-max-attempts", dest="max_attempts", default=3, type=int)
    add("--retry-delay", dest="delay_after_failure", default=10, type=int)
    add("--request-timeout", dest="request_timeout", default=300, type=int)
    add("--include-host", action="append", type=str)
    add("--exclude-host", action="append", type=str)
    add("--exclude-older-than", type=_valid_date, default=None)
    add("--exclude-newer-than", type=_valid_date, default=None)
    add("--add-to-date", dest="seconds_to_add_to_date", default=0, type=int)
    add("--request-suffix", dest="request_suffix", default=None, type=str)
    add(
        "--accept-invalid-ssl-certificate",
        dest="accept_invalid_ssl_certificate",
        action="store_true",
        default=False,
    )
    add("--php-binary", dest="php_binary", type=str, default="php")
    return p


# ---------------------------------------------------------------------------------------------
# The importer.


class Stats:
    """The counters the summary prints (names follow its lines)."""

    def __init__(self) -> None:
        self.start = time.time()
        self.stop = self.start
        self.parsed = 0
        self.recorded = 0
        self.invalid = 0
        self.filtered = 0
        self.no_site = 0
        self.hostname_skipped = 0
        self.static = 0
        self.bots = 0
        self.http_errors = 0
        self.http_redirects = 0
        self.downloads = 0
        self.downloads_skipped = 0
        self.sites: set[Any] = set()
        self.sites_created: list[tuple[str, Any]] = []
        self.hosts_ignored: list[str] = []  # first-seen order (the real one: set order)
        self.tracker_invalid_lines: list[str] = []
        self.lock = threading.Lock()


class NginxJson:
    """nginx_json line access with the real format's quirks (see the facts sheet, §5)."""

    date_format = "%Y-%m-%dT%H:%M:%S"

    def __init__(self) -> None:
        self.data: Any = None

    def match(self, line: str) -> bool:
        # nginx's default escaping writes \xHH, which is not JSON: read it as \u00HH.
        try:
            self.data = json.loads(line.replace("\\x", "\\u00"))
        except Exception:
            self.data = None
            return False
        return True

    def get(self, key: str) -> Any:
        data = self.data
        if key == "generation_time_milli":
            # seconds -> integer milliseconds, before any presence check (absent: KeyError)
            data[key] = int(float(data[key]) * 1000)
        elif key == "date":
            # split "YYYY-MM-DDTHH:MM:SS" from the zone suffix, before any presence check
            zone = data[key][19:]
            data["timezone"] = zone.replace(":", "")
            data[key] = data[key][:19]
        try:
            return data[key]
        except KeyError:
            raise BaseFormatException() from None

    def has(self, key: str) -> bool:
        return key in self.data


class RegexLine:
    """A text format read by a regular expression (the named Apache-style ones, or
    --log-format-regex): a missing group is BaseFormatException, an unmatched line is invalid."""

    def __init__(self, name: str, regex: str, date_format: Optional[str] = None) -> None:
        import re

        self.name = name
        self.regex = re.compile(regex)
        self.date_format = date_format or "%d/%b/%Y:%H:%M:%S"
        self.data: Any = None

    def match(self, line: str) -> bool:
        found = self.regex.match(line)
        self.data = None if found is None else found.groupdict()
        if self.data is not None and "time" in self.data:
            self.data["date"] = self.data["date"] + " " + self.data.pop("time")
        return found is not None

    def get(self, key: str) -> Any:
        try:
            return self.data[key]
        except KeyError:
            raise BaseFormatException() from None

    def has(self, key: str) -> bool:
        return key in self.data


def _fields(*parts: str) -> str:
    """A line layout from field patterns, separated by whitespace as the real formats are."""
    return r"\s+".join(parts)


#: The Apache-style layouts (facts: field order and what each field may hold).
_CLIENT = r"(?P<ip>[\w*.:-]+)"
_VHOST = r"(?P<host>[\w\-\.]*)(?::\d+)?"
_STAMP = r"\[(?P<date>.*?)\s+(?P<timezone>.*?)\]"
_REQUEST = r'"(?P<method>\S+)\s+(?P<path>.*?)\s+\S+"'
_CLF = _fields(
    _CLIENT, r"\S+", r"(?P<userid>\S+)", _STAMP, _REQUEST, r"(?P<status>\d+)", r"(?P<length>\S+)"
)
_EXTRA = _fields("", r'"(?P<referrer>.*?)"', r'"(?P<user_agent>.*?)"')
_LINE_FORMATS = {
    "common": _CLF,
    "common_vhost": _fields(_VHOST, _CLF),
    "ncsa_extended": _CLF + _EXTRA,
    "common_complete": _fields(_VHOST, _CLF + _EXTRA),
}


class CaddyJson:
    """caddy_json: every read maps the whole entry first, so one missing key (KeyError) makes
    every field absent, and a wrong type crashes the importer."""

    date_format = "%Y-%m-%dT%H:%M:%S.%f"

    def __init__(self) -> None:
        self.data: Any = None

    def match(self, line: str) -> bool:
        try:
            self.data = json.loads(line)
        except Exception:
            self.data = None
            return False
        return True

    def _mapped(self) -> dict[str, Any]:
        entry = self.data
        moment = datetime.datetime.fromtimestamp(entry["ts"], tz=datetime.timezone.utc)
        request = entry["request"]
        headers = request["headers"]
        entry.update(
            date=moment.strftime(self.date_format),
            timezone=moment.strftime("%z"),
            length=str(entry["size"]),
            status=str(entry["status"]),
            generation_time_milli=str(entry["duration"] * 1000.0),
            userid=entry["user_id"],
            ip=request["client_ip"],
            host=request["host"],
            method=request["method"],
            path=request["uri"],
            referrer=next(iter(headers.get("Referer", [])), None),
            user_agent=next(iter(headers.get("User-Agent", [])), None),
        )
        return entry

    def get(self, key: str) -> Any:
        try:
            return self._mapped().get(key)
        except KeyError:
            raise BaseFormatException() from None

    def has(self, key: str) -> bool:
        return key in self._mapped()


def _format_for(opts: argparse.Namespace) -> Any:
    """The parser the options name (only the formats the double emulates)."""
    if opts.log_format_regex:
        return RegexLine("custom", opts.log_format_regex, opts.log_date_format)
    name = opts.log_format_name
    if name in _LINE_FORMATS:
        return RegexLine(name, _LINE_FORMATS[name])
    if name == "caddy_json":
        return CaddyJson()
    return NginxJson()


def _probe_is_nginx(line: str) -> bool:
    """Format auto-detection's test for nginx_json: a JSON value with "referrer" and "date"."""
    try:
        value = json.loads(line)
        return "referrer" in value and "date" in value
    except Exception:
        return False


class LineSource:
    """Input lines as the real script sees them, each with its original bytes.

    stdin is split at b"\\n" only (Python's stdin on POSIX does no newline translation) and
    decoded with stdin's own encoding and error handler, i.e. the locale or PYTHONIOENCODING --
    so invalid UTF-8 crashes, is replaced, or becomes lone surrogates exactly as in the real one.
    Named files are read with universal newlines and surrogateescape, as the real one opens them.
    """

    def __init__(self, raw: IO[bytes], encoding: str, errors: str, universal: bool = False) -> None:
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
        self.universal = universal
        self.pending = ""  # characters read by a partial read (format probing), not yet used

    def _raw_line(self) -> bytes:
        if not self.universal:
            return self.raw.readline()
        line = b""
        while True:
            byte = self.raw.read(1)
            if not byte:
                return line
            line += byte
            if byte == b"\n":
                return line
            if byte == b"\r":
                following = self.raw.read(1)
                if following == b"\n":
                    return line + following
                if following:
                    self.raw.seek(-1, io.SEEK_CUR)
                return line

    def readline(self) -> tuple[str, bytes]:
        """Next line (text, original bytes); ("", b"") at end of input."""
        if self.pending:
            text, self.pending = self.pending, ""
            if text.endswith("\n"):
                return text, b""
            more, raw = self.readline()
            return text + more, raw
        raw = self._raw_line()
        text = self.decoder.decode(raw, final=not raw.endswith((b"\n", b"\r")))
        if self.universal and text.endswith("\r"):
            text = text.rstrip("\r") + "\n"
        elif self.universal and text.endswith("\r\n"):
            text = text[:-2] + "\n"
        return text, raw

    def read_chars(self, count: int) -> str:
        """Consume ``count`` characters, as TextIOWrapper.read(count) does when probing."""
        text = ""
        while len(text) < count:
            line, _ = self.readline()
            if not line:
                break
            text += line
        self.pending = text[count:]
        return text[:count]

    def seekable(self) -> bool:
        try:
            return self.raw.seekable()
        except (AttributeError, ValueError):
            return False

    def rewind(self) -> None:
        """seek(0), which only works when stdin is a regular file."""
        self.raw.seek(0)
        self.decoder.reset()
        self.pending = ""


class Recorder:
    """One of the real importer's recorder threads: takes batches from a small queue and sends
    them. A crash in here kills only the thread, and the main thread then waits forever."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.queue: queue.Queue[list[Hit]] = queue.Queue(maxsize=2)
        self.done = threading.Event()
        self.alive = True

    def _run_bulk(self) -> None:
        try:
            while True:
                hits = self.queue.get()
                # --disable-bulk-tracking still POSTs to the bulk endpoint, one hit at a time.
                posts = [hits] if self.importer.opts.use_bulk_tracking else [[h] for h in hits]
                for post in posts:
                    if not post:
                        continue
                    try:
                        self.importer.send(post)
                    except MatomoHttpBase.Error as exc:
                        self.importer.fatal(str(exc), post[0].filename, post[0].lineno)
                self.queue.task_done()
                self.done.set()
        except BaseException:
            self.importer.journal.hung()  # the main thread will wait for this thread forever
            raise
        finally:
            self.alive = False
            self.done.set()

    def start(self) -> None:
        # No explicit name: Python names it "Thread-N (_run_bulk)", as in the real importer.
        threading.Thread(target=self._run_bulk, daemon=True).start()


class Importer:
    """Parses, filters, batches and "sends" like the real importer, against a simulated Matomo
    configured by the test."""

    def __init__(self, opts: argparse.Namespace, control: Control, journal: Journal) -> None:
        self.opts = opts
        self.control = control
        self.journal = journal
        self.stats = Stats()
        self.token = ""
        self.static_site: Optional[tuple[Any, str]] = None
        self.site_cache: dict[str, Any] = {}
        self.recorders: list[Recorder] = []
        self.add_site_lock = threading.Lock()

    # ------------------------------------------------------------------ errors and HTTP

    def fatal(
        self, message: str, filename: Optional[str] = None, lineno: Optional[int] = None
    ) -> NoReturn:
        """Print the fatal error (and the --skip hint when the place is known) and _exit(1).

        Like the real one it does not flush: with --output the buffered text is lost."""
        print(f"Fatal error: {message}", file=sys.stderr)
        if filename and lineno is not None:
            print(
                f'You can restart the import of "{filename}" from the point it failed by '
                f"specifying --skip={int(lineno)} on the command line.\n",
                file=sys.stderr,
            )
        self.journal.end(1)
        os._exit(1)

    def _retrying(self, error_text: str, fatal_text: str, code: Optional[int]) -> NoReturn:
        """The real client's retry loop for a request that fails every time."""
        attempts = self.opts.max_attempts
        errors = 0
        while True:
            log.info("Error when connecting to Matomo: %s", error_text)
            errors += 1
            if errors == attempts:
                log.info("Max number of attempts reached, server is unreachable!")
                raise MatomoHttpBase.Error(fatal_text, code)
            log.info(f"Retrying request, attempt number {errors + 1}")
            if self.control.real_delays:
                time.sleep(self.opts.delay_after_failure)

    def _api(self, method: str, **params: Any) -> Any:
        """One reporting API call to the simulated Matomo (form-encoded like the real one)."""
        form = {"module": "API", "format": "json", "method": method, "filter_limit": "-1"}
        if self.token:
            form["token_auth"] = self.token
        form.update(params)
        try:
            urllib.parse.urlencode(form)  # the real client encodes inside its retry loop
        except ValueError as exc:  # e.g. a host with lone surrogates: retried, then fatal
            self._retrying(str(exc), str(exc), None)
        if self.control.fail == "hang" and method == "SitesManager.getSitesIdFromSiteUrl":
            # A non-JSON answer (proxy error page...): the real client's error path itself fails
            # with this AttributeError, which kills the recorder thread; the importer then
            # waits forever for it. Reproduced with the same operation on the same types.
            answer: Any = "<html>Bad Gateway</html>"
            try:
                return json.loads(answer)
            except ValueError:
                detail = answer.decode("utf-8")  # str has no .decode(): AttributeError
                raise ValueError("Matomo returned an invalid response: " + detail) from None
        if self.control.fail == "unreachable":
            self._retrying(
                "<urlopen error [Errno 111] Connection refused>",
                "[Errno 111] Connection refused",
                None,
            )
        if not self.control.token_ok(self.token):
            self._retrying(
                "HTTP Error 401: Unauthorized",
                "HTTP Error 401 Unauthorized, response: " + _INVALID_TOKEN_BODY,
                401,
            )
        return None

    # ------------------------------------------------------------------ sites

    def init_static_site(self) -> None:
        """--idsite: the real importer asks Matomo for the site's main URL at start-up."""
        site_id = self.opts.site_id
        self._api("SitesManager.getSiteFromId", idSite=site_id)
        known = self.control.site_ids()
        if known is not None and str(site_id) not in known:
            self.fatal(
                "cannot get the main URL of this site: An unexpected website was found in the "
                f"request: website id was set to '{site_id}' ."
            )
        host = next(
            (h for h, v in (self.control.sites or {}).items() if str(v) == str(site_id)),
            f"site{site_id}.example",
        )
        self.static_site = (site_id, "http://" + host)
        self.stats.sites.add(site_id)

    def _lookup(self, host: str) -> Optional[Any]:
        self._api("SitesManager.getSitesIdFromSiteUrl", url=host)
        if self.control.sites is None:
            return 1
        for created_host, created_id in self.stats.sites_created:
            if created_host == host:
                return created_id
        return self.control.sites.get(host)

    def _site_for(self, hit: Hit) -> Optional[Any]:
        """Host -> idsite with the real resolver's order: lookup, fallback, then creation."""
        if self.static_site is not None:
            return self.static_site[0]
        if hit.host.strip() == "":
            hit.host = "no-hostname-found-in-log"
        if hit.host in self.site_cache:
            return self.site_cache[hit.host]
        site_id = self._lookup(hit.host)
        if site_id is None:
            with self.add_site_lock:
                site_id = self._lookup(hit.host)
                if site_id is None:
                    if self.opts.site_id_fallback is not None:
                        site_id = self.opts.site_id_fallback
                    elif self.opts.add_sites_new_hosts:
                        if self.opts.dry_run:
                            site_id = 0
                        else:
                            self._api("SitesManager.addSite", siteName=hit.host)
                            taken = {int(v) for v in (self.control.sites or {"": 1}).values()}
                            taken.update(int(i) for _, i in self.stats.sites_created)
                            site_id = max(taken | {0}) + 1
                            self.stats.sites_created.append((hit.host, site_id))
        if site_id is not None:
            self.stats.sites.add(site_id)
        self.site_cache[hit.host] = site_id
        return site_id

    # ------------------------------------------------------------------ sending

    def _request_for(self, hit: Hit) -> Optional[dict[str, Any]]:
        """Tracking parameters for one hit, or None when its host matches no site."""
        site_id = self._site_for(hit)
        if site_id is None:
            with self.stats.lock:
                if hit.host not in self.stats.hosts_ignored:
                    self.stats.hosts_ignored.append(hit.host)
                self.stats.no_site += 1
            return None
        path = hit.path
        if hit.query_string and not self.opts.strip_query_string:
            path += self.opts.query_string_delimiter + hit.query_string
        if hasattr(hit, "host"):
            prefix = hit.host if "://" in hit.host else "http://" + hit.host
        else:
            prefix = self.static_site[1] if self.static_site else ""
        url = (prefix if path.startswith("/") else "") + path[:1024]
        request: dict[str, Any] = {
            "rec": "1",
            "apiv": "1",
            "url": url,
            "urlref": hit.referrer[:1024],
            "cip": hit.ip,
            "cdt": hit.date.isoformat(sep=" "),
            "idsite": site_id,
            "queuedtracking": "0",
            "dp": "0" if self.opts.reverse_dns else "1",
            "ua": hit.user_agent,
            "cvar": json.dumps({"1": ["HTTP-code", hit.status]}),
        }
        request.update(hit.args)
        if hit.is_error or hit.is_redirect:
            # The page title of an error or redirect: "<status>/URL = <url>[/From = <referrer>]",
            # both percent-encoded (which fails on lone surrogates, killing the recorder).
            sep = self.opts.title_category_delimiter
            title = f"{hit.status}{sep}URL = {urllib.parse.quote(request['url'], '')}"
            if request["urlref"] != "":
                title += f"{sep}From = {urllib.parse.quote(request['urlref'], '')}"
            request["action_name"] = title
        if hit.generation_time_milli > 0:
            request["pf_srv"] = int(hit.generation_time_milli)
        if hit.length:
            request["bw_bytes"] = hit.length
        return request

    def send(self, hits: list[Hit]) -> None:
        """One bulk POST: build the requests, apply the test's failure plan, record."""
        if self.opts.dry_run:
            with self.stats.lock:
                self.stats.recorded += len(hits)
            return
        requests = [self._request_for(hit) for hit in hits]
        body = json.dumps({"token_auth": self.token, "requests": requests})
        control = self.control
        if control.fail == "hang" and self.static_site is not None:
            # With --idsite no API call happens here: the POST itself never gets an answer.
            self.journal.hung()
            threading.Event().wait()
        if control.fatal_after is not None and any(h.lineno >= control.fatal_after for h in hits):
            self._retrying(
                "HTTP Error 500: Internal Server Error",
                "HTTP Error 500 Internal Server Error, response: " + _SERVER_ERROR_BODY,
                500,
            )
        if control.fatal_at_path is not None and any(h.path == control.fatal_at_path for h in hits):
            self._retrying(
                "HTTP Error 500: Internal Server Error",
                "HTTP Error 500 Internal Server Error, response: " + _SERVER_ERROR_BODY,
                500,
            )
        to_record = [(h, r) for h, r in zip(hits, requests) if r is not None]
        hang_at = next(
            (
                h.lineno
                for h in hits
                if control.hang_at_path is not None and h.path == control.hang_at_path
            ),
            control.hang_after,
        )
        if hang_at is not None and any(h.lineno >= hang_at for h in hits):
            to_record = [(h, r) for h, r in to_record if h.lineno < hang_at]
            self.journal.record([h.raw for h, _ in to_record])
            self.journal.hung()
            threading.Event().wait()  # blocked inside the POST, forever
        refused = [
            i
            for i, (h, r) in enumerate(zip(hits, requests))
            if r is not None
            and (
                control.fail == "refuse_all"
                or h.lineno in control.refuse_lines
                or h.path in control.refuse_paths
            )
        ]
        if not _php_can_decode(body):
            # Matomo's json_decode fails (lone surrogates, NaN): nothing tracked, no complaint.
            to_record, refused = [], []
        refused_hits = {id(hits[i]) for i in refused}
        self.journal.record([h.raw for h, _ in to_record if id(h) not in refused_hits])
        if refused and control.superuser:
            lines = [str(hits[i].lineno) for i in refused]
            with self.stats.lock:
                self.stats.tracker_invalid_lines.extend(lines)
            log.info(
                f"The Matomo tracker identified {len(refused)} invalid requests on lines: "
                + ", ".join(lines)
            )
        elif refused:
            log.info(f"The Matomo tracker identified {len(refused)} invalid requests.")
        with self.stats.lock:
            self.stats.recorded += len(hits)

    def dispatch(self, hits: list[Hit]) -> None:
        """Hand a batch to the recorders, one client IP always to the same recorder."""
        shares: list[list[Hit]] = [[] for _ in self.recorders]
        for hit in hits:
            shares[abs(hash(hit.ip)) % len(self.recorders)].append(hit)
        for recorder, share in zip(self.recorders, shares):
            if not recorder.alive:
                recorder.queue.put(share)  # nobody takes it: blocks once the queue is full
                continue
            recorder.done.clear()
            recorder.queue.put(share)
            # Wait for this batch, so results never depend on thread timing; a recorder that
            # died stops being waited for and the parser runs on until its queue is full.
            recorder.done.wait()

    def wait_recorders(self) -> None:
        for recorder in self.recorders:
            recorder.queue.join()

    # ------------------------------------------------------------------ parsing

    def _checks(self) -> list[Callable[[Hit], bool]]:
        """The real filters run in the alphabetical order of their method names, stopping at
        the first refusal -- which decides the counter a request lands in."""
        return [
            self._check_download,
            self._check_hostname,
            self._check_http_error,
            self._check_http_redirect,
            self._check_path,
            self._check_static,
            self._check_user_agent,
        ]

    def _check_download(self, hit: Hit) -> bool:
        if hit.extension in self.download_exts:
            self.stats.downloads += 1
            hit.is_download = True
            return True
        if hit.extension in _DOWNLOAD_EXTS:
            self.stats.downloads_skipped += 1
            return False
        return True

    def _check_hostname(self, hit: Hit) -> bool:
        if not hasattr(hit, "host") or not self.opts.hostnames:
            return True
        if any(fnmatch.fnmatch(hit.host, pattern) for pattern in self.opts.hostnames):
            return True
        self.stats.hostname_skipped += 1
        return False

    def _check_http_error(self, hit: Hit) -> bool:
        if hit.status[0] in ("4", "5"):
            if self.opts.enable_http_errors:
                hit.is_error = True
                return True
            self.stats.http_errors += 1
            return False
        return True

    def _check_http_redirect(self, hit: Hit) -> bool:
        if hit.status[0] == "3" and hit.status != "304":
            if self.opts.enable_http_redirects:
                hit.is_redirect = True
                return True
            self.stats.http_redirects += 1
            return False
        return True

    def _check_path(self, hit: Hit) -> bool:
        # Excluded or not-included paths are dropped without being counted anywhere.
        if any(fnmatch.fnmatch(hit.path, pattern) for pattern in self.excluded_paths):
            return False
        if self.included_paths:
            return any(fnmatch.fnmatch(hit.path, pattern) for pattern in self.included_paths)
        return True

    def _check_static(self, hit: Hit) -> bool:
        name = hit.path.split("/")[-1]
        if hit.extension in _STATIC_EXTS or name in _STATIC_NAMES:
            if self.opts.enable_static:
                hit.is_download = True
                return True
            self.stats.static += 1
            return False
        return True

    def _check_user_agent(self, hit: Hit) -> bool:
        agent = hit.user_agent.lower()
        for marker in [*_BOT_MARKERS, *self.excluded_agents]:
            if marker in agent:
                if self.opts.enable_bots:
                    hit.is_robot = True
                    return True
                self.stats.bots += 1
                return False
        return True

    def _filtered(self, hit: Hit) -> bool:
        host = getattr(hit, "host", None)
        if host is None:
            try:
                host = urllib.parse.urlparse(hit.path).hostname
            except Exception:
                host = None
        opts = self.opts
        if host:
            if opts.exclude_host and host in opts.exclude_host:
                return True
            if opts.include_host and host not in opts.include_host:
                return True
        if opts.exclude_older_than and hit.date < opts.exclude_older_than:
            return True
        return bool(opts.exclude_newer_than and hit.date > opts.exclude_newer_than)

    def _hit_from(self, fmt: Any, filename: str, lineno: int, raw: bytes) -> Hit:
        """Read the fields in the real importer's order: the first bad field decides the crash."""
        opts = self.opts
        hit = Hit(
            filename=filename,
            lineno=lineno,
            raw=raw,
            status=fmt.get("status"),
            full_path=fmt.get("path"),
            is_download=False,
            is_robot=False,
            is_error=False,
            is_redirect=False,
            args={},
        )
        if opts.force_lowercase_path:
            hit.full_path = hit.full_path.lower()
        for mapping in (opts.regex_group_to_page_cvars_map, opts.regex_group_to_visit_cvars_map):
            for group in mapping or {}:
                if fmt.has(group):
                    fmt.get(group)
        if opts.regex_groups_to_ignore:
            for group in opts.regex_groups_to_ignore:
                del fmt.data[group]
        try:
            fmt.get("method")
        except Exception:
            pass
        try:
            hit.query_string = fmt.get("query_string")
            hit.path = hit.full_path
        except BaseFormatException:
            hit.path, _, hit.query_string = hit.full_path.partition(opts.query_string_delimiter)
        if hit.query_string == "-":
            hit.query_string = ""
        hit.extension = hit.path.rsplit(".")[-1].lower()
        try:
            hit.referrer = fmt.get("referrer")
            if hit.referrer is None:
                hit.referrer = ""
            if hit.referrer.startswith('"'):
                hit.referrer = hit.referrer[1:-1]
        except BaseFormatException:
            hit.referrer = ""
        if hit.referrer == "-":
            hit.referrer = ""
        try:
            hit.user_agent = fmt.get("user_agent")
            if hit.user_agent.startswith('"'):
                hit.user_agent = hit.user_agent[1:-1]
        except BaseFormatException:
            hit.user_agent = ""
        hit.ip = fmt.get("ip")
        try:
            hit.length = int(fmt.get("length"))
        except (ValueError, BaseFormatException):
            hit.length = 0
        hit.generation_time_milli = 0
        for key, scale in (
            ("generation_time_milli", 1.0),
            ("generation_time_micro", 0.001),
            ("generation_time_secs", 1000.0),
        ):
            try:
                hit.generation_time_milli = float(fmt.get(key)) * scale
                break
            except (ValueError, BaseFormatException):
                continue
        if opts.log_hostname:
            hit.host = opts.log_hostname
        else:
            try:
                hit.host = fmt.get("host").lower().strip(".")
                if hit.host.startswith('"'):
                    hit.host = hit.host[1:-1]
            except BaseFormatException:
                pass
        try:
            userid = fmt.get("userid")
            if userid != "-":
                hit.args["uid"] = userid
        except Exception:
            pass
        return hit

    def _date_of(self, fmt: Any, hit: Hit) -> Optional[str]:
        """Parse date and zone into hit.date; returns why the line is invalid, if it is."""
        text = fmt.get("date")
        try:
            hit.date = datetime.datetime.strptime(text, fmt.date_format)
            hit.date += datetime.timedelta(seconds=self.opts.seconds_to_add_to_date)
        except ValueError:
            return "date"
        try:
            zone = fmt.get("timezone").replace(":", "")
            if zone:
                hit.date -= _zone_offset(zone)
        except BaseFormatException:
            pass
        except ValueError:
            return "timezone"
        return None

    def parse(self, filename: str, source: LineSource, limit_hits: int) -> None:
        """Read every line; hand batches of ``limit_hits`` kept requests to the recorders."""
        fmt = _format_for(self.opts)
        kept: list[Hit] = []
        valid = 0
        lineno = -1
        checks = self._checks()
        while True:
            line, raw = source.readline()
            if not line:
                break
            lineno += 1
            self.stats.parsed += 1
            if self.stats.parsed <= self.opts.skip:
                continue
            if not fmt.match(line):
                self.stats.invalid += 1
                continue
            valid += 1
            limit = self.opts.debug_request_limit
            if limit and valid >= limit:
                if kept:
                    self.dispatch(kept)
                log.info("Exceeded limit specified in --debug-request-limit, exiting.")
                return
            hit = self._hit_from(fmt, filename, lineno, raw)
            if not all(check(hit) for check in checks):
                continue
            if self._date_of(fmt, hit) is not None:
                self.stats.invalid += 1
                continue
            if self._filtered(hit):
                self.stats.filtered += 1
                continue
            kept.append(hit)
            if len(kept) >= limit_hits:
                self.dispatch(kept)
                kept = []
        if kept:
            self.dispatch(kept)

    def probe_format(self, source: LineSource) -> bool:
        """Format auto-detection on stdin, which cannot seek back: the lines it reads are lost.

        Returns False when the input is blank (nothing to do). Emulated for nginx_json input
        only: a W3C-style probe that meets end of input spins forever, like the real one.
        """
        if source.seekable():
            # stdin redirected from a regular file: the real one seeks back, nothing is lost.
            if not source.read_chars(100).strip():
                return False
            source.rewind()
            for _ in range(100000):
                line, _ = source.readline()
                if not line or _probe_is_nginx(line):
                    break
            else:
                line = ""
            if not line:
                self.fatal(_UNDETECTED)
            source.rewind()
            return True
        if not source.read_chars(100).strip():
            return False
        found = False
        for name in _PROBES:
            if name in _W3C_PROBES:
                while True:
                    line, _ = source.readline()
                    stripped = line.strip()
                    if not stripped:
                        continue  # blank line or end of input: the real loop never ends there
                    if stripped.startswith("#Fields: "):
                        source.readline()  # the real probe then reads one more line
                        break
                    if not stripped.startswith("#"):
                        break
            else:
                line, _ = source.readline()
                if name == "nginx_json" and _probe_is_nginx(line):
                    found = True
        while not found:
            line, _ = source.readline()
            if not line:
                self.fatal(_UNDETECTED)
            found = _probe_is_nginx(line)
        return True

    # ------------------------------------------------------------------ whole run

    def prepare(self) -> None:
        """Option post-processing the real importer does before reading anything."""
        opts = self.opts
        self.excluded_agents = {s.lower() for s in opts.excluded_useragents}
        self.excluded_paths = list(opts.excluded_paths)
        if opts.exclude_path_from:
            with open(opts.exclude_path_from) as fh:
                self.excluded_paths += [p.strip() for p in fh if p.strip()]
        self.included_paths = list(opts.included_paths)
        if opts.include_path_from:
            with open(opts.include_path_from) as fh:
                self.included_paths += [p.strip() for p in fh if p.strip()]
        if opts.download_extensions:
            self.download_exts: set[str] = set(opts.download_extensions.split(","))
        else:
            self.download_exts = set(_DOWNLOAD_EXTS)
        if opts.extra_download_extensions:
            self.download_exts.update(opts.extra_download_extensions.split(","))
        if opts.regex_groups_to_ignore:
            opts.regex_groups_to_ignore = set(opts.regex_groups_to_ignore.split(","))
        for attr in ("matomo_url", "matomo_api_url"):
            value = getattr(opts, attr) or opts.matomo_url
            if not value.startswith(("http://", "https://")):
                value = "http://" + value
            setattr(opts, attr, value)
        opts.recorders = max(opts.recorders, 1)

    def obtain_token(self) -> None:
        """--token-auth, else --login/--password, else Matomo's config file (via PHP)."""
        opts = self.opts
        if opts.matomo_token_auth:
            self.token = opts.matomo_token_auth
            return
        if opts.login and opts.password:
            # Emulated as: the password is the token the API would hand out.
            self.token = opts.password
            return
        if not os.access(opts.config_file, os.R_OK) or os.path.isdir(opts.config_file):
            self.fatal(
                "the configuration file"
                + opts.config_file
                + " could not be read. Please check permission. This file must be readable by "
                "the user running this script to get the authentication token"
            )
        not_emulated("reading the token through Matomo's config file and PHP")

    def run(self) -> int:
        opts = self.opts
        self.prepare()
        self.obtain_token()
        if opts.site_id:
            self.init_static_site()
        if opts.show_progress:
            threading.Thread(target=self._monitor, daemon=True).start()
        for _ in range(opts.recorders):
            recorder = Recorder(self)
            recorder.start()
            self.recorders.append(recorder)
        per_batch = opts.recorder_max_payload_size * len(self.recorders)
        try:
            for name in _expand(opts.file):
                self._import_one(name, per_batch)
            self.wait_recorders()
        except KeyboardInterrupt:
            pass
        self.stats.stop = time.time()
        print(render_summary(self.stats, opts.matomo_api_url))
        return 0

    def _import_one(self, name: str, per_batch: int) -> None:
        if name == "-":
            label = "(stdin)"
            stdin = sys.stdin
            source = LineSource(stdin.buffer, stdin.encoding or "utf-8", stdin.errors or "strict")
        else:
            if not os.path.exists(name):
                print(f"\n=====> Warning: File {name} does not exist <=====", file=sys.stderr)
                return
            label = name
            source = _file_lines(name, self.opts.encoding)
        if self.opts.show_progress:
            print(f"Parsing log {label}...")
        needs_probe = self.opts.log_format_name is None and not self.opts.log_format_regex
        if needs_probe and not self.probe_format(source):
            return
        fmt = _format_for(self.opts)
        regex = getattr(fmt, "regex", None)
        hostless = regex is not None and "host" not in regex.groupindex
        if hostless and not self.opts.site_id and not self.opts.log_hostname:
            self.fatal(
                "the selected log format doesn't include the hostname: you must specify the"
                " Matomo site ID with the --idsite argument"
            )
        if self.opts.dump_log_regex:
            log.info("Using format 'nginx_json'.")
            log.info("Format nginx_json does not use a regex to parse log lines.")
            log.info("--dump-log-regex option used, aborting log import.")
            self.journal.end(0)
            os._exit(0)
        self.parse(label, source, per_batch)

    def _monitor(self) -> None:
        """--show-progress: a status line every --show-progress-delay seconds."""
        previous = 0
        while True:
            done = self.stats.recorded
            elapsed = time.time() - self.stats.start
            average = done / elapsed if elapsed else 0
            current = (done - previous) / self.opts.show_progress_delay
            print(
                f"{self.stats.parsed} lines parsed, {done} lines recorded, "
                f"{int(average)} records/sec (avg), {int(current)} records/sec (current)"
            )
            previous = done
            time.sleep(self.opts.show_progress_delay)


def _expand(patterns: list[str]) -> list[str]:
    """'-' stays; anything else is a glob (a missing plain path matches nothing)."""
    names: list[str] = []
    for pattern in patterns:
        names += [pattern] if pattern == "-" else sorted(glob.glob(pattern))
    return names


def _file_lines(path: str, encoding: str) -> LineSource:
    """A named log file, opened like the real one: .gz/.bz2 transparently, universal newlines."""
    if path.endswith(".gz"):
        import gzip

        raw: IO[bytes] = io.BytesIO(gzip.open(path).read())
    elif path.endswith(".bz2"):
        import bz2

        raw = io.BytesIO(bz2.open(path).read())
    else:
        raw = open(path, "rb")  # read until the end of the run
    return LineSource(raw, encoding, "surrogateescape", universal=True)


def _php_can_decode(body: str) -> bool:
    """Whether Matomo's json_decode accepts this body (it refuses unpaired surrogates)."""
    try:
        value = json.loads(body, parse_constant=_no_constants)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError):
        return False
    return True


def _no_constants(name: str) -> Any:
    """PHP's JSON has no NaN or Infinity."""
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# The summary (format: docs/import_logs-facts.md §3).

#: Advice printed under the unmatched host names (verbatim output, one entry per line).
_TIPS_LINES = (
    "        TIPs:",
    "         - if one of these hosts is an alias host for one of the websites",
    '           in Matomo, you can add this host as an "Alias URL" in Settings > Websites.',
    "         - use --add-sites-new-hosts if you wish to automatically create",
    "           one website for each of these hosts in Matomo rather than discarding",
    "           these requests.",
    "         - use --idsite-fallback to force all these log lines with a new hostname",
    "           to be recorded in a specific idsite"
    " (for example for troubleshooting/visualizing the data)",
    "         - use --idsite to force all lines in the specified log files",
    "           to be all recorded in the specified idsite",
    "         - or you can also manually create a new Website in Matomo"
    " with the URL set to this hostname",
)
_TIPS = "\n" + "\n".join(_TIPS_LINES) + "\n"


def _heading(title: str) -> list[str]:
    return [title, "-" * len(title), ""]


def render_summary(stats: Stats, url: str) -> str:
    """The text printed at the end of a completed run (print() adds the final newline)."""
    import textwrap

    out: list[str] = [""]
    if stats.tracker_invalid_lines:
        out += _heading("Invalid log lines")
        out += [
            "The following lines were not tracked by Matomo, either due to a malformed tracker "
            "request or error in the tracker:",
            "",
            textwrap.fill(", ".join(stats.tracker_invalid_lines), 80),
            "",
        ]
    ignored_total = (
        stats.invalid
        + stats.filtered
        + stats.bots
        + stats.http_errors
        + stats.http_redirects
        + stats.static
        + stats.downloads_skipped
        + stats.no_site
        + stats.hostname_skipped
    )
    created_ids = {site_id for _, site_id in stats.sites_created}
    elapsed = stats.stop - stats.start
    rate = 0.0 if stats.recorded == 0 else round(stats.recorded / max(elapsed, 1e-9) * 100) / 100
    indent = " " * 12
    s = stats
    out += _heading("Logs import summary")
    out += [
        f"    {s.recorded} requests imported successfully",
        f"    {s.downloads} requests were downloads",
        f"    {ignored_total} requests ignored:",
        f"        {s.http_errors} HTTP errors",
        f"        {s.http_redirects} HTTP redirects",
        f"        {s.invalid} invalid log lines",
        f"        {s.filtered} filtered log lines",
        f"        {s.no_site} requests did not match any known site",
        f"        {s.hostname_skipped} requests did not match any --hostname",
        f"        {s.bots} requests done by bots, search engines...",
        f"        {s.static} requests to static resources (css, js, images, ico, ttf...)",
        f"        {s.downloads_skipped} requests to file downloads did not match any "
        "--download-extensions",
        "",
    ]
    out += _heading("Website import summary")
    out += [
        f"    {s.recorded} requests imported to {len(s.sites)} sites",
        f"        {len(s.sites - created_ids)} sites already existed",
        f"        {len(s.sites_created)} sites were created:",
        "\n".join(f"{indent}{host} (ID: {int(i)})" for host, i in s.sites_created),
        f"    {len(s.hosts_ignored)} distinct hostnames did not match any existing site:",
        "\n".join(indent + host for host in s.hosts_ignored),
        _TIPS if s.hosts_ignored else "",
        "",
    ]
    out += _heading("Performance summary")
    out += [
        f"    Total time: {int(elapsed)} seconds",
        f"    Requests imported per second: {rate} requests per second",
        "",
    ]
    out += _heading("Processing your log data")
    out += [
        "    In order for your logs to be processed by Matomo, you may need to run the "
        "following command:",
        f"     ./console core:archive --force-all-websites --url='{url}'",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Entry point.


def not_emulated(what: str) -> NoReturn:
    """Stop loudly on a feature the double does not model (never silently diverge)."""
    print(f"import_logs double: {what} is not emulated", file=sys.stderr)
    raise SystemExit(_EXIT_NOT_EMULATED)


def main(argv: list[str], journal: Journal) -> int:
    opts = build_parser().parse_args(argv)
    if opts.output:
        sys.stdout = sys.stderr = open(opts.output, "a")  # lives until exit
    logging.basicConfig(
        format="%(asctime)s: [%(levelname)s] %(message)s",
        level=logging.DEBUG if opts.debug >= 1 else logging.INFO,
        stream=sys.stderr,
    )
    control = Control.from_env()
    importer = Importer(opts, control, journal)
    if opts.log_format_name is not None and opts.log_format_name not in _FORMAT_NAMES:
        importer.fatal(f"invalid log format: {opts.log_format_name}")
    emulated = ("nginx_json", "caddy_json", *_LINE_FORMATS)
    if not opts.log_format_regex and opts.log_format_name not in (None, *emulated):
        not_emulated(f"--log-format-name={opts.log_format_name}")
    if opts.replay_tracking:
        not_emulated("--replay-tracking")
    return importer.run()


if __name__ == "__main__":
    _journal = Journal()
    _journal.start(sys.argv[1:])
    _code = 1
    try:
        _code = main(sys.argv[1:], _journal)
    except SystemExit as _exit:
        _code = _exit.code if isinstance(_exit.code, int) else (0 if _exit.code is None else 1)
        _journal.end(_code)
        raise
    except KeyboardInterrupt:
        _code = 0
    finally:
        _journal.end(_code)
    sys.exit(_code)
