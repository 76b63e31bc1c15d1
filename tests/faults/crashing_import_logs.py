#!/usr/bin/env python3
"""The import_logs.py double, made to crash (traceback, exit 1) on a line the Guard lets through.

Stands for "a line import_logs.py crashes on that the Guard does not know about": every hit
whose path contains /crash-here raises in the main thread while its line is parsed, exactly
where the real importer's unexpected-value crashes happen. Everything else is the double.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

DOUBLE = Path(__file__).resolve().parents[1] / "doubles" / "import_logs_double.py"

if __name__ == "__main__":
    g = runpy.run_path(str(DOUBLE), run_name="import_logs_double")
    fmt = g["NginxJson"]
    original = fmt.get

    def get(self, key):  # type: ignore[no-untyped-def]
        if key == "path" and "/crash-here" in str(self.data.get("path", "")):
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return original(self, key)

    fmt.get = get
    journal = g["Journal"]()
    journal.start(sys.argv[1:])
    code = 1
    try:
        code = g["main"](sys.argv[1:], journal)
    finally:
        journal.end(code)
    sys.exit(code)
