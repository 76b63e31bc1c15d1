"""The configuration: one TOML file validated into frozen dataclasses.

Every problem is collected and reported at once, each naming the file and the key path, because a
service that fails one typo at a time costs a restart per typo at 3 a.m.

:mod:`.model` is the typed model and its defaults; :mod:`.load` reads and validates the file (and
the token file); :mod:`.values` converts single values (durations, sizes, URLs, …); :mod:`.flags`
says which import_logs.py and core:archive flags may be configured.
"""

from matomo_rt.config.flags import IMPORT_FLAGS_REFUSED, refused_flag
from matomo_rt.config.load import load, load_token
from matomo_rt.config.model import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_IMPORT_FLAGS,
    IMPORT_LOGS_SOURCE,
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
    default_config_path,
    import_problems,
)
from matomo_rt.config.values import MAX_WORKERS, parse_duration, parse_size
from matomo_rt.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_IMPORT_FLAGS",
    "IMPORT_FLAGS_REFUSED",
    "IMPORT_LOGS_SOURCE",
    "MAX_WORKERS",
    "ON_UNCERTAIN_CHOICES",
    "START_AT_CHOICES",
    "TOKEN_ENV",
    "ArchiveConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "ImportConfig",
    "LogConfig",
    "MatomoConfig",
    "MetricsConfig",
    "ServiceConfig",
    "StateConfig",
    "default_config_path",
    "import_problems",
    "load",
    "load_token",
    "parse_duration",
    "parse_size",
    "refused_flag",
]
