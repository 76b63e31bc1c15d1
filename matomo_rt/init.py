"""`init`: write a first, commented configuration from a few facts, then say what to run next.

A new user's first hour went to copying config.example.toml and guessing: where import_logs.py
is, what the logs are named, which format they are in. `init` finds out what it can (the
script under Matomo's directory, each log's format from its recent lines), writes only what it
knows, says the rest in comments, and never overwrites a file. The token itself is never
written: only the path of the file that holds it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from matomo_rt import detect, formats
from matomo_rt.check_files import RUN_AS_SERVICE
from matomo_rt.config import IMPORT_LOGS_SOURCE, MatomoConfig, load
from matomo_rt.errors import ConfigError

_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class InitError(Exception):
    """The configuration was not written; `exit_code` says why (README's exit codes)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class LogFinding:
    """One --log: its name in the config, and what its recent lines look like."""

    name: str
    path: Path
    detection: Optional[detect.Detection]
    problem: str  # why it could not be read now ("" when it could)


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(value, ensure_ascii=False)


def _absolute(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def log_names(paths: list[Path]) -> list[str]:
    """A distinct state-file name per log: its file name, numbered when two share it."""
    names: list[str] = []
    for path in paths:
        base = _NAME_CHARS.sub("_", path.name).strip("._-")[:60] or "log"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _look_at(name: str, path: Path) -> LogFinding:
    try:
        return LogFinding(name, path, detect.detect_file(path), "")
    except FileNotFoundError:
        return LogFinding(name, path, None, "no such file yet")
    except IsADirectoryError:
        return LogFinding(name, path, None, "a directory, not a log file")
    except OSError as exc:
        return LogFinding(name, path, None, (exc.strerror or str(exc)).lower())


def _settings(finding: LogFinding, idsite: Optional[int]) -> tuple[list[str], list[str], str]:
    """(keys to write, commented lines, what to tell the user) for one log's format."""
    found = finding.detection
    if found is None:
        return (
            [],
            [f"# Could not look at it now ({finding.problem}): `matomo-rt check` will."],
            (finding.problem),
        )
    if not found.lines:
        note = "empty for now: `matomo-rt check` looks at its format once it has lines"
        return [], [f"# {note[0].upper()}{note[1:]}."], note
    seen = found.summary()
    comments = [f"# Detected: {seen}."]
    fmt = found.format
    if fmt is None:
        comments.append(
            "# Not a format import_logs.py can be told to read: make the server write one (for"
        )
        comments.append("# nginx: contrib/nginx/matomo-rt-log-format.conf), or set format_regex.")
        return [], comments, f"{seen}: set its format by hand (see the config)"
    problem = detect.mismatch(fmt, found)
    if problem is not None:  # mixed formats
        comments.append(f"# {problem}.")
    keys = [] if fmt == formats.DEFAULT else [f"format = {_toml_string(detect.config_name(fmt))}"]
    if not keys or formats.resolve(fmt).has_host:
        return keys, comments, seen + (f" ({problem})" if problem else "")
    if idsite is not None:
        return [*keys, f"idsite = {idsite}"], comments, f"{seen}; all its lines go to site {idsite}"
    comments += [
        "# Its lines name no host, so Matomo's site must be given: set idsite and uncomment both.",
        f"# {keys[0]}",
        "# idsite = N",
    ]
    return [], comments, f"{seen}: its lines name no host: set its idsite in the config"


def _log_block(finding: LogFinding, idsite: Optional[int]) -> list[str]:
    keys, comments, _ = _settings(finding, idsite)
    lines = ["", "[[logs]]", f"name = {_toml_string(finding.name)}"]
    lines.append(f"path = {_toml_string(str(finding.path))}")
    lines += comments + keys
    if not any(key.startswith("idsite") for key in keys) and "# idsite = N" not in comments:
        lines += [
            "# Record every line of this log in one site instead of mapping hosts to sites:",
            "# idsite = 1",
        ]
    return lines


def render(
    url: str,
    matomo_path: Optional[Path],
    import_logs: Optional[Path],
    token_file: Optional[Path],
    findings: list[LogFinding],
    idsite: Optional[int] = None,
) -> str:
    """The configuration file's text."""
    today = datetime.date.today().isoformat()
    out = [
        f"# matomo-rt configuration, written by `matomo-rt init` on {today}.",
        "# Every key with its default and meaning: config.example.toml and README's",
        '# "Configuration reference". Check it with `matomo-rt check`, as the service\'s user.',
        "",
        "[matomo]",
        "# Matomo's base URL: the address its login page is at.",
        f"url = {_toml_string(url)}",
    ]
    if matomo_path is not None:
        out += [
            "# Matomo's directory: misc/log-analytics/import_logs.py and `console` (core:archive).",
            f"path = {_toml_string(str(matomo_path))}",
        ]
    script = MatomoConfig(path=matomo_path, import_logs=import_logs).import_logs_script
    if import_logs is not None:
        out += ["# The importer.", f"import_logs = {_toml_string(str(import_logs))}"]
    elif script is not None and not script.is_file():
        out += [
            f"# import_logs.py is not at {script} yet: {IMPORT_LOGS_SOURCE}.",
            "# Put it there, or set its path here:",
            '# import_logs = "/opt/matomo-log-analytics/import_logs.py"',
        ]
    out.append(
        "# The file holding the token_auth (one line, mode 0640, group of the service's user)."
    )
    out.append("# The token itself never goes in this file.")
    if token_file is not None:
        out.append(f"token_auth_file = {_toml_string(str(token_file))}")
    else:
        out += [
            "# Without it, $MATOMO_TOKEN_AUTH is used.",
            '# token_auth_file = "/etc/matomo-rt/token"',
        ]
    out += [
        "",
        "[import]",
        "# How often each log is read for new lines.",
        '# interval = "60s"',
        '# Where a log\'s first run starts: "end" (lines written from now on) or "beginning".',
        '# start_at = "end"',
    ]
    if matomo_path is None:
        out += [
            "",
            "[archive]",
            "# core:archive needs Matomo's directory (matomo.path): run it on the Matomo host.",
            "enabled = false",
        ]
    for finding in findings:
        out += _log_block(finding, idsite)
    return "\n".join(out) + "\n"


def write_new(target: Path, text: str) -> None:
    """Write `text` to `target` only if no file is there, and only once it loads as a config.

    A temporary file in the same directory is loaded (every problem reported), then hard-linked
    to `target`: the link fails if `target` exists, so nothing is ever overwritten, even by a
    race.
    """
    if target.exists() or target.is_symlink():
        raise InitError(f"{target} exists: init never overwrites a configuration", 73)
    directory = target.parent
    if not directory.is_dir():
        raise InitError(
            f"{directory}: no such directory (create it: install -d -m 0750 -g <the service's "
            f"group> {directory})",
            73,
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".init", dir=directory)
    except OSError as exc:
        raise InitError(f"{directory}: cannot create a file ({exc.strerror})", 73) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        try:
            load(Path(tmp))
        except ConfigError as exc:
            problems = [p.replace(Path(tmp).name, target.name) for p in exc.problems]
            raise InitError("; ".join(problems), 2) from None
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise InitError(f"{target} exists: init never overwrites a configuration", 73) from None
        except OSError as exc:
            raise InitError(f"{target}: cannot create it ({exc.strerror})", 73) from None
    finally:
        os.unlink(tmp)


def run_init(
    target: Path,
    url: str,
    matomo_path: Optional[str],
    import_logs: Optional[str],
    token_file: Optional[str],
    logs: list[str],
    out: TextIO,
    default_target: bool,
    idsite: Optional[int] = None,
) -> None:
    """Write the configuration to `target` and tell what was found and what to run next."""
    if matomo_path is None and import_logs is None:
        raise InitError("give --path (Matomo's directory) or --import-logs", 2)
    target = _absolute(str(target))
    path = _absolute(matomo_path) if matomo_path else None
    script_override = _absolute(import_logs) if import_logs else None
    token = _absolute(token_file) if token_file else None
    paths = [_absolute(p) for p in logs]
    findings = [_look_at(name, p) for name, p in zip(log_names(paths), paths)]
    text = render(url.rstrip("/"), path, script_override, token, findings, idsite)
    write_new(target, text)

    out.write(f"wrote {target}\n")
    script = MatomoConfig(path=path, import_logs=script_override).import_logs_script
    if script is not None and script.is_file():
        out.write(f"  import_logs.py: {script}\n")
    elif script is not None:
        out.write(f"  import_logs.py: not found at {script}: {IMPORT_LOGS_SOURCE}\n")
    if token is not None and not token.exists():
        out.write(
            f"  token file {token}: no such file yet: put the token_auth of a user with write "
            "access in it (Matomo: Administration > Personal > Security > Auth tokens), mode "
            "0640, group of the service's user\n"
        )
    for finding in findings:
        told = _settings(finding, idsite)[2]
        out.write(f"  log {finding.name}: {finding.path}: {told}\n")
    command = RUN_AS_SERVICE
    if not default_target:
        command = command.replace("matomo-rt check", f"matomo-rt -c {target} check")
    out.write(f"next: {command}\n")
