"""The configuration's typed model: frozen dataclasses, their defaults, and what a run needs.

Reading and validating the TOML file into it is matomo_rt.config.load's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from matomo_rt import formats
from matomo_rt.errors import ConfigError
from matomo_rt.health import Settings as HealthConfig

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


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


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
