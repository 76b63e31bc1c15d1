#!/usr/bin/env python3
"""Test double of Matomo's import_logs.py: the script matomo-rt's tests run in its place.

The double is import_logs_double.py beside this file, run here as the main script, as the real
import_logs.py runs, but from its cached bytecode: Python never caches a main script's, and the
test suite starts the double hundreds of times; compiling its 1,600 lines at each start was a fifth
of each run's CPU.
"""

import os
from importlib.machinery import SourceFileLoader

# Beside this file, symlinks resolved (a test links a Matomo tree's import_logs.py to it).
_CODE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "import_logs_double.py")

if __name__ == "__main__":
    exec(SourceFileLoader("__main__", _CODE).get_code("__main__"))
