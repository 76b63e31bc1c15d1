"""Which import_logs.py and core:archive flags may be configured, and why the others may not.

import_logs.py options that matomo-rt sets itself, that break the commit protocol, or that would
put a credential on the command line are refused when the file is loaded, abbreviations included.
"""

from __future__ import annotations

from typing import Any, Optional

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


def check_import_flags(value: Any) -> tuple[str, ...]:
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


def check_archive_flags(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('must be a list of strings such as ["--force-all-websites"]')
    for flag in value:
        name = flag.split("=", 1)[0].replace("_", "-")
        if name in ("--url", "--token-auth"):
            raise ValueError(f"{name}: {IMPORT_FLAGS_REFUSED[name]}")
        if not flag.startswith("-"):
            raise ValueError(f"{flag!r} is not an option (options start with -)")
    return tuple(value)
