"""Load and validate the TOML configuration into frozen dataclasses.

Every problem is collected and reported at once, each naming the file and the key path, because a
service that fails one typo at a time costs a restart per typo at 3 a.m.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from matomo_rt import formats
from matomo_rt.errors import ConfigError
from matomo_rt.health import Settings as HealthConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on old Pythons only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/matomo-rt/config.toml")
CONFIG_ENV = "MATOMO_RT_CONFIG"
TOKEN_ENV = "MATOMO_TOKEN_AUTH"

START_AT_CHOICES = ("beginning", "end", "oldest")
ON_UNCERTAIN_CHOICES = ("resend", "skip")
DEFAULT_IMPORT_FLAGS = ("--enable-http-errors", "--enable-http-redirects")
#: Where import_logs.py comes from, for a Matomo installed without it.
IMPORT_LOGS_SOURCE = (
    "Matomo releases ship it as misc/log-analytics/import_logs.py; else get it from "
    "https://github.com/matomo-org/matomo-log-analytics"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class MatomoConfig:
    url: Optional[str] = None
    path: Optional[Path] = None
    import_logs: Optional[Path] = None
    python: str = "python3"
    php: str = "php"
    token_auth_file: Optional[Path] = None

    @property
    def import_logs_script(self) -> Optional[Path]:
        """The importer: the explicit override, else the one every Matomo ships."""
        if self.import_logs is not None:
            return self.import_logs
        if self.path is not None:
            return self.path / "misc" / "log-analytics" / "import_logs.py"
        return None

    @property
    def console(self) -> Optional[Path]:
        return None if self.path is None else self.path / "console"


@dataclass(frozen=True)
class ImportConfig:
    interval: float = 60.0
    batch_lines: int = 20_000
    batch_bytes: int = 8 * 1024 * 1024
    timeout: float = 600.0
    flags: tuple[str, ...] = DEFAULT_IMPORT_FLAGS
    recorders: int = 1
    workers: int = 1
    on_uncertain: str = "resend"
    start_at: str = "end"
    max_batches_per_tick: int = 100


@dataclass(frozen=True)
class LogConfig:
    name: str
    path: Path
    idsite: Optional[int] = None
    flags: tuple[str, ...] = ()
    start_at: Optional[str] = None
    format: str = formats.DEFAULT
    format_regex: Optional[str] = None

    @property
    def log_format(self) -> formats.LogFormat:
        """The format import_logs.py is told to read (validated when the file was loaded)."""
        if self.format_regex is not None:
            return formats.custom(self.format_regex)
        return formats.resolve(self.format)


@dataclass(frozen=True)
class ArchiveConfig:
    enabled: bool = True
    schedule: str = "5 * * * *"
    timeout: float = 3600.0
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("/var/lib/matomo-rt")


@dataclass(frozen=True)
class MetricsConfig:
    textfile: Optional[Path] = None
    listen: Optional[str] = None


@dataclass(frozen=True)
class ServiceConfig:
    stop_timeout: float = 30.0


@dataclass(frozen=True)
class Config:
    source: Path
    matomo: MatomoConfig = field(default_factory=MatomoConfig)
    import_: ImportConfig = field(default_factory=ImportConfig)
    logs: tuple[LogConfig, ...] = ()
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    def log(self, name: str) -> LogConfig:
        for log in self.logs:
            if log.name == name:
                return log
        known = ", ".join(log.name for log in self.logs) or "none"
        raise ConfigError(
            [f"{self.source.name}: no [[logs]] entry named {name!r} (known: {known})"]
        )

    def start_at(self, log: LogConfig) -> str:
        return log.start_at or self.import_.start_at


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


class _Table:
    """One TOML table being read: tracks used keys so unknown ones become errors."""

    def __init__(self, loader: _Loader, data: dict[str, Any], where: str) -> None:
        self.loader = loader
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, convert: Callable[[Any], Any], default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        try:
            return convert(self.data[name])
        except (ValueError, TypeError) as exc:
            self.loader.error(self.key(name), str(exc))
            return default

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.used):
            self.loader.error(self.key(name), "unknown key")


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path.name}: {key}: {message}")

    def table(self, data: dict[str, Any], name: str) -> _Table:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.error(name, "must be a table")
            value = {}
        return _Table(self, value, name)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r}: must be a whole number above 0")
    return value


#: More importers than this only queue up in front of Matomo's PHP workers.
MAX_WORKERS = 16


def _workers(value: Any) -> int:
    count = _positive_int(value)
    if count > MAX_WORKERS:
        raise ValueError(f"{value!r}: at most {MAX_WORKERS} (Matomo serves the imports)")
    return count


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError("must be a share between 0 and 1, such as 0.5")
    return float(value)


def _path(value: Any) -> Path:
    return Path(_str(value)).expanduser()


_ON_ARGV = (
    "import_logs.py's command line shows in `ps` and in -v logs; give Matomo a token instead"
    " (matomo.token_auth_file)"
)

#: import_logs.py options matomo-rt sets itself, that break the commit protocol, or that would
#: put a credential on the command line.
IMPORT_FLAGS_REFUSED = {
    "--token-auth": "never put the token in flags: use matomo.token_auth_file",
    "--url": "set matomo.url instead",
    "--log-format-name": "set the log's format (logs[].format) instead",
    "--log-format-regex": "set the log's format_regex (logs[].format_regex) instead",
    "--dry-run": "use `matomo-rt import --dry-run`: here nothing would reach Matomo while the"
    " offset moves on",
    "--skip": "matomo-rt keeps the position itself (see `matomo-rt seek`)",
    "--output": "import_logs.py would print no summary, so no batch could ever be committed",
    "--auth-user": f"HTTP basic auth is not supported: {_ON_ARGV}, and let the web host reach"
    " Matomo without basic auth",
    "--auth-password": f"HTTP basic auth is not supported: {_ON_ARGV}, and let the web host reach"
    " Matomo without basic auth",
    "--login": f"a Matomo login and password are not supported: {_ON_ARGV}",
    "--password": f"a Matomo login and password are not supported: {_ON_ARGV}",
}


def refused_flag(flag: str) -> Optional[str]:
    """Why `flag` may not be configured, or None.

    argparse also takes any unambiguous prefix of a long option (`--dry` is `--dry-run`), so a
    prefix of a refused option is refused too, naming the option it abbreviates.
    """
    name = flag.split("=", 1)[0].replace("_", "-")
    if name in IMPORT_FLAGS_REFUSED:
        return f"{name}: {IMPORT_FLAGS_REFUSED[name]}"
    if name.startswith("--") and len(name) > 2:
        for option, why in IMPORT_FLAGS_REFUSED.items():
            if option.startswith(name):
                return f"{name}: abbreviates {option} ({why}); write options in full"
    return None


def _flags(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('must be a list of strings such as ["--enable-http-errors"]')
    problems = []
    for flag in value:
        if not flag.startswith("-"):
            problems.append(
                f"{flag!r} is not an option (options start with -; give a value as --name=value)"
            )
        else:
            problems.append(refused_flag(flag) or "")
    if any(problems):
        raise ValueError("; ".join(p for p in problems if p))
    return tuple(value)


def _archive_flags(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('must be a list of strings such as ["--force-all-websites"]')
    for flag in value:
        name = flag.split("=", 1)[0].replace("_", "-")
        if name in ("--url", "--token-auth"):
            raise ValueError(f"{name}: {IMPORT_FLAGS_REFUSED[name]}")
        if not flag.startswith("-"):
            raise ValueError(f"{flag!r} is not an option (options start with -)")
    return tuple(value)


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r}: must be one of {', '.join(map(repr, choices))}")
        return value

    return convert


def _url(value: Any) -> str:
    text = _str(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL such as https://matomo.example.org")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: give Matomo's base URL, without ?query or #fragment")
    return text


def _listen(value: Any) -> str:
    text = _str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: use HOST:PORT such as 127.0.0.1:9464")
    return text


def _cron(value: Any) -> str:
    text = _str(value)
    if len(text.split()) != 5:
        raise ValueError(f'{value!r}: use a 5-field cron expression such as "5 * * * *"')
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    return text


def _name(value: Any) -> str:
    text = _str(value)
    if not _NAME_RE.match(text):
        raise ValueError(f"{value!r}: use letters, digits, '.', '_' or '-' (it names state files)")
    return text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (give one with -c or {CONFIG_ENV})"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied (run as a user that can read it)"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a TOML file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path.name}: not valid TOML: {exc}"]) from None


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load(path: Path) -> Config:
    """Read and validate `path`; raises ConfigError listing every problem."""
    data = _read_toml(path)
    loader = _Loader(path)
    config = _build(loader, data, path)
    if loader.problems:
        raise ConfigError(loader.problems)
    return config


def _build(loader: _Loader, data: dict[str, Any], path: Path) -> Config:
    base = path.parent
    known_tables = {
        "matomo",
        "import",
        "logs",
        "archive",
        "state",
        "metrics",
        "service",
        "health",
    }
    for key in sorted(set(data) - known_tables):
        loader.error(key, "unknown key")

    def rel(p: Optional[Path]) -> Optional[Path]:
        return None if p is None else (p if p.is_absolute() else base / p)

    t = loader.table(data, "matomo")
    matomo = MatomoConfig(
        url=t.get("url", _url, None),
        path=rel(t.get("path", _path, None)),
        import_logs=rel(t.get("import_logs", _path, None)),
        python=t.get("python", _str, "python3"),
        php=t.get("php", _str, "php"),
        token_auth_file=rel(t.get("token_auth_file", _path, None)),
    )
    t.finish()

    t = loader.table(data, "import")
    d = ImportConfig()
    import_ = ImportConfig(
        interval=t.get("interval", parse_duration, d.interval),
        batch_lines=t.get("batch_lines", _positive_int, d.batch_lines),
        batch_bytes=t.get("batch_bytes", parse_size, d.batch_bytes),
        timeout=t.get("timeout", parse_duration, d.timeout),
        flags=t.get("flags", _flags, d.flags),
        recorders=t.get("recorders", _positive_int, d.recorders),
        workers=t.get("workers", _workers, d.workers),
        on_uncertain=t.get("on_uncertain", _choice(ON_UNCERTAIN_CHOICES), d.on_uncertain),
        start_at=t.get("start_at", _choice(START_AT_CHOICES), d.start_at),
        max_batches_per_tick=t.get("max_batches_per_tick", _positive_int, d.max_batches_per_tick),
    )
    if import_.interval < 1:
        loader.error("import.interval", "must be at least 1s")
    t.finish()

    logs = _logs(loader, data.get("logs", []), rel, import_.flags)
    all_flags = [*import_.flags, *(f for log in logs for f in log.flags)]
    if import_.workers > 1 and (
        import_.recorders > 1 or any(f.split("=", 1)[0] == "--recorders" for f in all_flags)
    ):
        loader.error(
            "import.workers",
            "each worker runs import_logs.py with one recorder, so that --skip=N stays exact:"
            " remove import.recorders and any --recorders flag",
        )

    t = loader.table(data, "archive")
    d2 = ArchiveConfig()
    archive = ArchiveConfig(
        enabled=t.get("enabled", _bool, d2.enabled),
        schedule=t.get("schedule", _cron, d2.schedule),
        timeout=t.get("timeout", parse_duration, d2.timeout),
        flags=t.get("flags", _archive_flags, d2.flags),
    )
    t.finish()

    t = loader.table(data, "state")
    state = StateConfig(dir=rel(t.get("dir", _path, None)) or StateConfig().dir)
    t.finish()

    t = loader.table(data, "metrics")
    metrics = MetricsConfig(
        textfile=rel(t.get("textfile", _path, None)), listen=t.get("listen", _listen, None)
    )
    t.finish()

    t = loader.table(data, "service")
    service = ServiceConfig(stop_timeout=t.get("stop_timeout", parse_duration, 30.0))
    t.finish()

    t = loader.table(data, "health")
    d3 = HealthConfig()
    health = HealthConfig(
        stalled_after=t.get("stalled_after", parse_duration, d3.stalled_after),
        wrong_format_share=t.get("wrong_format_share", _share, d3.wrong_format_share),
        unmatched_share=t.get("unmatched_share", _share, d3.unmatched_share),
        archive_stale_after=t.get("archive_stale_after", parse_duration, d3.archive_stale_after),
    )
    t.finish()

    return Config(
        source=path,
        matomo=matomo,
        import_=import_,
        logs=logs,
        archive=archive,
        state=state,
        metrics=metrics,
        service=service,
        health=health,
    )


def _logs(
    loader: _Loader,
    raw: Any,
    rel: Callable[[Optional[Path]], Optional[Path]],
    import_flags: tuple[str, ...] = (),
) -> tuple[LogConfig, ...]:
    if not isinstance(raw, list):
        loader.error("logs", "must be an array of tables: [[logs]]")
        return ()
    logs: list[LogConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"logs[{index}]"
        if not isinstance(entry, dict):
            loader.error(where, "must be a table")
            continue
        t = _Table(loader, entry, where)
        path = rel(t.get("path", _path, None))
        name = t.get("name", _name, None)
        if "path" not in entry:
            loader.error(f"{where}.path", "missing (the log file to import)")
        if name is None and path is not None and "name" not in entry:
            name = _NAME_FROM_PATH.sub("_", path.name).strip("._-") or f"log{index}"
        if name in seen:
            loader.error(f"{where}.name", f"{name!r} is used twice (names key the state files)")
        seen.add(name or "")
        idsite = t.get("idsite", _positive_int, None)
        flags = t.get("flags", _flags, ())
        start_at = t.get("start_at", _choice(START_AT_CHOICES), None)
        fmt_name = t.get("format", _format_name, formats.DEFAULT)
        regex = t.get("format_regex", _format_regex, None)
        t.finish()
        if "format" in entry and "format_regex" in entry:
            loader.error(f"{where}.format_regex", "give format or format_regex, not both")
        _check_format(loader, where, fmt_name, regex, idsite, (*import_flags, *flags))
        if path is not None and name is not None:
            logs.append(LogConfig(name, path, idsite, flags, start_at, fmt_name, regex))
    return tuple(logs)


def _format_name(value: Any) -> str:
    text = _str(value)
    try:
        return formats.resolve(text).name
    except KeyError:
        known = ", ".join(formats.names())
        raise ValueError(
            f"{value!r} is not a format import_logs.py reads (one of: {known}; or set format_regex)"
        ) from None


def _format_regex(value: Any) -> str:
    text = _str(value)
    formats.custom(text)  # raises ValueError naming the problem
    return text


def _check_format(
    loader: _Loader,
    where: str,
    name: str,
    regex: Optional[str],
    idsite: Optional[int],
    flags: tuple[str, ...],
) -> None:
    """What a format needs besides its name: a site when lines carry no host, W3C's fields."""
    try:
        fmt = formats.custom(regex) if regex is not None else formats.resolve(name)
    except (KeyError, ValueError):
        return  # already reported
    key = f"{where}.format_regex" if regex is not None else f"{where}.format"
    if fmt.family == formats.W3C and formats.w3c_fields(flags) is None:
        loader.error(
            key,
            f"{fmt.name} lines are laid out by the file's '#Fields:' line, which a tail never"
            ' sees again: copy it into flags as "--w3c-fields=#Fields: date time c-ip ..."',
        )
        return
    given = {flag.split("=", 1)[0] for flag in flags}
    if idsite is None and not formats.has_host(fmt, flags) and not given & _SITE_FLAGS:
        loader.error(
            key,
            f"{fmt.label} lines carry no host, so import_logs.py cannot tell the site: set"
            f" {where}.idsite = N (the Matomo site to record this log in)",
        )


#: Flags that tell import_logs.py the site (or host) of lines without one.
_SITE_FLAGS = {"--idsite", "--log-hostname"}


_NAME_FROM_PATH = re.compile(r"[^A-Za-z0-9._-]")


def load_token(matomo: MatomoConfig, source: Optional[Path] = None) -> Optional[str]:
    """The token_auth: from matomo.token_auth_file, else $MATOMO_TOKEN_AUTH, else None.

    None lets import_logs.py fetch a token through Matomo's console, which works only on the
    Matomo host itself.
    """
    path = matomo.token_auth_file
    if path is None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        return token or None
    key = f"{source.name}: matomo.token_auth_file" if source else "matomo.token_auth_file"
    try:
        st = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError([f"{key}: {path}: no such file"]) from None
    except PermissionError:
        raise ConfigError(
            [f"{key}: {path}: permission denied (make it readable by the service's user or group)"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{key}: {path}: cannot read: {exc.__class__.__name__}"]) from None
    if not token:
        raise ConfigError([f"{key}: {path}: is empty (put the token_auth in it)"])
    if st.st_mode & 0o004:
        import logging

        logging.getLogger(__name__).warning(
            "%s: %s is readable by every user; run: chmod o-r %s", key, path, path
        )
    return token


def import_problems(config: Config, need_logs: bool = True) -> list[str]:
    """What `import` and `run` need beyond a valid file: a URL, an importer, some logs."""
    name = config.source.name
    problems = []
    if config.matomo.url is None:
        problems.append(f"{name}: matomo.url: missing (Matomo's base URL)")
    script = config.matomo.import_logs_script
    if script is None:
        problems.append(f"{name}: matomo.path: missing (Matomo's directory), or set import_logs")
    elif not script.is_file():
        if config.matomo.import_logs:
            where = f"{name}: matomo.import_logs: {script}: no such file (import_logs.py)"
        else:
            where = (
                f"{name}: matomo.path: {script}: no such file (import_logs.py): "
                "set matomo.import_logs to the script's path"
            )
        problems.append(f"{where} — {IMPORT_LOGS_SOURCE}")
    if need_logs and not config.logs:
        problems.append(f"{name}: logs: no [[logs]] entry (which log files to import)")
    return problems
