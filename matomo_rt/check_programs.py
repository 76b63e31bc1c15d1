"""`check`, the programs: the interpreters and scripts an import and core:archive run.

Python runs and is Python 3, import_logs.py is there and knows every configured flag and each
log's format (asked of the configured script itself, since its options differ between Matomo
versions), php runs and Matomo's console is there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from matomo_rt import execute, formats
from matomo_rt.check_files import who
from matomo_rt.config import Config
from matomo_rt.matomo import options

if TYPE_CHECKING:
    from matomo_rt.check import Checklist


def check_python(c: Checklist, config: Config, timeout: float) -> None:
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
            c.fail(f"import_logs.py: {script}: not readable by {who()}", "fix its permissions")
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


def check_formats(c: Checklist, config: Config, timeout: float) -> None:
    """Each log's format against the names the configured import_logs.py itself lists."""
    script = config.matomo.import_logs_script
    named = {log.log_format.name for log in config.logs if log.format_regex is None}
    if script is None or not named or not script.is_file() or not os.access(script, os.R_OK):
        return  # missing or unreadable: said by import_problems() or check_python
    try:
        done = execute.run(
            [config.matomo.python, str(script), "--help"], timeout=timeout, max_output=1 << 20
        )
    except execute.ExecError:
        return  # the interpreter's failure is reported by check_python
    if not done.ok:
        # Its --help failing says nothing of its formats: name why it did not run.
        c.skip(f"log formats: not checked: import_logs.py could not be run ({done.describe()})")
        return
    offered = formats.names_in_help(done.stdout.decode("utf-8", "replace"))
    if offered is None:
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


def check_php(c: Checklist, config: Config, timeout: float) -> None:
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
