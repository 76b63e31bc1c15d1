#!/usr/bin/env python3
"""Serve tests/doubles/fake_matomo.py until killed, for the benchmarks.

Prints the base URL on stdout (one line, flushed), then serves until SIGTERM/SIGINT.
Hits are not kept (a benchmark posts hundreds of thousands; keeping them would grow the
server's memory and CPU, not the importer's). Usage: fake_matomo_server.py TOKEN
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "doubles"))
import fake_matomo


class _Bench(fake_matomo.FakeMatomo):
    def track(self, body):  # type: ignore[override]
        # Called with self._lock held (FakeMatomo.handle).
        status, answer = super().track(body)
        self._hits.clear()
        self._calls.clear()
        return status, answer


def main() -> int:
    token = sys.argv[1] if len(sys.argv) > 1 else "bench-token"
    fake = _Bench(token=token).start()
    print(fake.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
