"""The options the configured import_logs.py really has, and what each configured flag means to it.

Why: import_logs.py parses its command line with argparse, which also takes any unambiguous
prefix of a long option (`--dry` is `--dry-run`), so a flag that looks unknown may silently be
another option, and a new import_logs.py may make an abbreviation ambiguous (exit 2 every batch).
The option list is read from the script itself, not from a copy: PROBE runs the script with
argparse's parsing replaced by a dump of the parser's options, so whatever parser it builds is
what `check` resolves the flags against, and nothing else of the script runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

#: `python -c PROBE SCRIPT`: prints {"allow_abbrev": bool, "options": {option: takes_value}}
#: (takes_value: "no", "yes" or "optional") at the script's first parse, then exits 0.
PROBE = (
    "import argparse,json,os,runpy,sys\n"
    "def dump(parser,*a,**k):\n"
    " opts={o:('no' if x.nargs==0 else 'optional' if x.nargs=='?' else 'yes')"
    " for x in parser._actions for o in x.option_strings}\n"
    " sys.stdout.write(json.dumps({'allow_abbrev':getattr(parser,'allow_abbrev',True),"
    "'options':opts})+'\\n');sys.stdout.flush();os._exit(0)\n"
    "argparse.ArgumentParser.parse_known_args=dump\n"
    "s=sys.argv[1];sys.argv=[s];sys.path[0]=os.path.dirname(os.path.abspath(s))\n"
    "runpy.run_path(s,run_name='__main__')\n"
    "sys.exit('the script parsed no command line')\n"
)


@dataclass(frozen=True)
class Options:
    """What import_logs.py's argparse accepts."""

    takes_value: Mapping[str, str]
    allow_abbrev: bool = True


def parse_probe(stdout: str) -> Optional[Options]:
    """The probe's answer, or None when the script printed no option list."""
    for line in reversed(stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("options"), dict):
            return Options(dict(data["options"]), bool(data.get("allow_abbrev", True)))
    return None


@dataclass(frozen=True)
class Finding:
    """One flag's fate: `fatal` problems make every import fail, the others are advice."""

    flag: str
    text: str
    fatal: bool


def resolve(flags: Sequence[str], options: Options) -> list[Finding]:
    """Each flag that is not exactly an option of the script, said as the script would take it.

    Every flag is one argv item (config refuses items not starting with `-`), so a value must be
    attached with `=`: `--exclude-path /x` as two items is refused before this is reached.
    """
    findings = []
    table = options.takes_value
    for flag in flags:
        name, eq, _ = flag.partition("=")
        shown = name + ("=…" if eq else "")
        option = name if name in table else None
        if option is None and not name.startswith("--") and name[:2] in table:
            option = name[:2]  # a short option with its value or repeats attached: -dd
            eq = "="
        if option is None and name.startswith("--") and options.allow_abbrev:
            matches = sorted(o for o in table if o.startswith(name))
            if len(matches) > 1:
                findings.append(
                    Finding(shown, f"{name} is ambiguous ({', '.join(matches)})", fatal=True)
                )
                continue
            if matches:
                option = matches[0]
                findings.append(
                    Finding(
                        shown,
                        f"{name} abbreviates {option}: write it in full (a newer import_logs.py"
                        " may make the abbreviation ambiguous)",
                        fatal=False,
                    )
                )
        if option is None:
            findings.append(Finding(shown, f"{name}: import_logs.py has no such option", True))
        elif table[option] == "yes" and not eq:
            findings.append(
                Finding(shown, f"{option} takes a value: write {option}=VALUE", fatal=True)
            )
        elif table[option] == "no" and eq and name.startswith("--"):
            findings.append(Finding(shown, f"{option} takes no value: remove the =VALUE", True))
    return findings
