"""`check`: walk through everything an import needs, say what is wrong and the way out.

Each line is one finding: ``[ok]``, ``[warn]`` (works, but look), ``[FAIL] … — way out`` or
``[skip]`` (could not be checked because something before it failed or is not configured).

This module is the checklist and its order; the checks themselves ask three different things:
matomo_rt.check_files what this user can reach on this host, matomo_rt.check_programs the
interpreters and scripts, matomo_rt.check_matomo Matomo itself.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, TextIO

from matomo_rt.check_files import (
    RUN_AS_SERVICE,
    check_log,
    check_log_format,
    check_matomo_tmp,
    check_state,
    check_token,
)
from matomo_rt.check_matomo import check_matomo
from matomo_rt.check_programs import check_formats, check_php, check_python
from matomo_rt.config import Config, import_problems

#: Seconds for each HTTP request to Matomo and each interpreter probe.
DEFAULT_TIMEOUT = 15.0


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
            "checking as root: files the service's user cannot read or write pass here; run "
            f"the check as that user too ({RUN_AS_SERVICE})"
        )
    problems = import_problems(config)
    for problem in problems:
        # A problem that names its own way out (after " — ") needs no generic one.
        c.fail(problem, "" if " — " in problem else "fix it in the configuration file")
    for log_config in config.logs:
        if check_log(c, log_config):
            check_log_format(c, log_config)
    check_state(c, config)
    check_python(c, config, timeout)
    check_formats(c, config, timeout)
    check_php(c, config, timeout)
    check_matomo_tmp(c, config)
    token, token_ok = check_token(c, config)
    check_matomo(c, config, token, token_ok, timeout)
    return 1 if c.failures else 0
