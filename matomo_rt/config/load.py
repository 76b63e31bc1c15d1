"""Read the TOML file and validate it into the typed model (matomo_rt.config.model).

Every problem is collected and reported at once, each naming the file and the key path, because a
service that fails one typo at a time costs a restart per typo at 3 a.m.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from matomo_rt import formats
from matomo_rt.config import values as v
from matomo_rt.config.flags import check_archive_flags, check_import_flags
from matomo_rt.config.model import (
    CONFIG_ENV,
    ON_UNCERTAIN_CHOICES,
    START_AT_CHOICES,
    TOKEN_ENV,
    ArchiveConfig,
    Config,
    HealthConfig,
    ImportConfig,
    LogConfig,
    MatomoConfig,
    MetricsConfig,
    ServiceConfig,
    StateConfig,
)
from matomo_rt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on old Pythons only
    import tomli as tomllib


_T = TypeVar("_T")


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

    def section(
        self, data: dict[str, Any], name: str, cls: type[_T], **convert: Callable[[Any], Any]
    ) -> _T:
        """Table `name` as a `cls`: each key through its converter, a missing or invalid one at
        the class's default, unknown keys reported."""
        t = self.table(data, name)
        default = cls()
        value = cls(**{key: t.get(key, c, getattr(default, key)) for key, c in convert.items()})
        t.finish()
        return value


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

    def rel_path(value: Any) -> Path:
        p = v.path(value)
        return p if p.is_absolute() else base / p

    matomo = loader.section(
        data,
        "matomo",
        MatomoConfig,
        url=v.url,
        path=rel_path,
        import_logs=rel_path,
        python=v.string,
        php=v.string,
        token_auth_file=rel_path,
    )
    import_ = loader.section(
        data,
        "import",
        ImportConfig,
        interval=v.interval,
        batch_lines=v.positive_int,
        batch_bytes=v.parse_size,
        timeout=v.parse_duration,
        flags=check_import_flags,
        recorders=v.positive_int,
        workers=v.workers,
        on_uncertain=v.choice(ON_UNCERTAIN_CHOICES),
        start_at=v.choice(START_AT_CHOICES),
        max_batches_per_tick=v.positive_int,
    )

    logs = _logs(loader, data.get("logs", []), rel_path, import_.flags)
    all_flags = [*import_.flags, *(f for log in logs for f in log.flags)]
    if import_.workers > 1 and (
        import_.recorders > 1 or any(f.split("=", 1)[0] == "--recorders" for f in all_flags)
    ):
        loader.error(
            "import.workers",
            "each worker runs import_logs.py with one recorder, so that --skip=N stays exact:"
            " remove import.recorders and any --recorders flag",
        )

    archive = loader.section(
        data,
        "archive",
        ArchiveConfig,
        enabled=v.boolean,
        schedule=v.cron,
        timeout=v.parse_duration,
        flags=check_archive_flags,
    )
    state = loader.section(data, "state", StateConfig, dir=rel_path)
    metrics = loader.section(data, "metrics", MetricsConfig, textfile=rel_path, listen=v.listen)
    service = loader.section(data, "service", ServiceConfig, stop_timeout=v.parse_duration)
    health = loader.section(
        data,
        "health",
        HealthConfig,
        stalled_after=v.parse_duration,
        wrong_format_share=v.share,
        unmatched_share=v.share,
        archive_stale_after=v.parse_duration,
    )

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
    rel_path: Callable[[Any], Path],
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
        path = t.get("path", rel_path, None)
        name = t.get("name", v.name, None)
        if "path" not in entry:
            loader.error(f"{where}.path", "missing (the log file to import)")
        if name is None and path is not None and "name" not in entry:
            name = _NAME_FROM_PATH.sub("_", path.name).strip("._-") or f"log{index}"
        if name in seen:
            loader.error(f"{where}.name", f"{name!r} is used twice (names key the state files)")
        seen.add(name or "")
        idsite = t.get("idsite", v.positive_int, None)
        flags = t.get("flags", check_import_flags, ())
        start_at = t.get("start_at", v.choice(START_AT_CHOICES), None)
        fmt_name = t.get("format", v.format_name, formats.DEFAULT)
        regex = t.get("format_regex", v.format_regex, None)
        t.finish()
        if "format" in entry and "format_regex" in entry:
            loader.error(f"{where}.format_regex", "give format or format_regex, not both")
        _check_format(loader, where, fmt_name, regex, idsite, (*import_flags, *flags))
        if path is not None and name is not None:
            logs.append(LogConfig(name, path, idsite, flags, start_at, fmt_name, regex))
    return tuple(logs)


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
