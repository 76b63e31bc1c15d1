"""Shared rig for the fault suite: a log, a config, the import_logs.py double, and the CLI.

Everything runs `matomo-rt -c CONFIG import` as a real process; the double records what Matomo
would hold (IMPORT_DOUBLE_RECORD), so "lost" and "duplicated" are counted by comparing the
multiset of recorded lines with the multiset of written lines.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from matomo_rt.store import load_state

ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "doubles" / "import_logs.py"
_SCRIPT = Path(sys.executable).parent / "matomo-rt"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "matomo_rt"]
TOKEN = "fault-suite-token"

LONG = os.environ.get("MATOMO_RT_FAULTS_LONG", "") not in ("", "0")


def budget(default: float, long: float) -> float:
    """Seconds a randomised test may spend (MATOMO_RT_FAULTS_BUDGET overrides both)."""
    value = os.environ.get("MATOMO_RT_FAULTS_BUDGET")
    if value:
        return float(value)
    return long if LONG else default


def seed() -> int:
    return int(os.environ.get("MATOMO_RT_FAULTS_SEED", "20240601"))


def hit(i: int, tag: str = "p", **fields: Any) -> bytes:
    """One nginx_json line whose path makes it unique."""
    record: dict[str, Any] = {
        "ip": "198.51.100.4",
        "host": "example.com",
        "path": f"/{tag}/{i}",
        "status": "200",
        "referrer": "-",
        "user_agent": "Mozilla/5.0",
        "length": 100,
        "generation_time_milli": 0.01,
        "date": "2024-06-01T12:00:00+00:00",
    }
    record.update(fields)
    return json.dumps(record).encode() + b"\n"


def tally(written: list[bytes], recorded: list[bytes]) -> tuple[int, int]:
    """(lost, duplicated): written lines never recorded; recorded copies beyond the first."""
    want = Counter(written)
    got = Counter(recorded)
    lost = sum(max(n - got[line], 0) for line, n in want.items())
    dups = sum(max(n - want[line], 0) for line, n in got.items() if line in want)
    strangers = sum(n for line, n in got.items() if line not in want)
    assert strangers == 0, f"{strangers} recorded lines were never written"
    return lost, dups


class Rig:
    """One source in a directory: log file, state dir, config, double files."""

    def __init__(
        self,
        tmp: Path,
        *,
        batch_lines: int = 50,
        batch_bytes: str = "8MiB",
        timeout: str = "60s",
        flags: tuple[str, ...] = (),
        import_logs: Path = DOUBLE,
        state_dir: Optional[Path] = None,
        extra: str = "",
        python: str = sys.executable,
    ) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "access.log"
        self.state_dir = state_dir or tmp / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.state_dir / "access.state.json"
        self.record = tmp / "record"
        self.calls_file = tmp / "calls"
        self.control = tmp / "control.json"
        self.config = tmp / "config.toml"
        self.token = TOKEN
        self.written: list[bytes] = []
        all_flags = ["--enable-http-errors", "--enable-http-redirects", *flags]
        self.config.write_text(
            f"""
[matomo]
url = "http://matomo.test"
import_logs = "{import_logs}"
python = "{python}"

[import]
interval = "1s"
batch_lines = {batch_lines}
batch_bytes = "{batch_bytes}"
timeout = "{timeout}"
start_at = "beginning"
flags = {json.dumps(all_flags)}
{extra}

[[logs]]
name = "access"
path = "{self.log}"

[archive]
enabled = false

[state]
dir = "{self.state_dir}"
"""
        )
        self.set_control(None)

    # -- the log -------------------------------------------------------------------------

    def append(self, lines: list[bytes], keep: bool = True) -> None:
        with open(self.log, "ab") as f:
            f.write(b"".join(lines))
        if keep:
            self.written.extend(lines)

    def write_hits(self, count: int, tag: str = "p") -> list[bytes]:
        start = len(self.written)
        lines = [hit(i, tag) for i in range(start, start + count)]
        self.append(lines)
        return lines

    # -- the double ------------------------------------------------------------------------

    def set_control(self, control: Optional[dict[str, Any]]) -> None:
        self.control.write_text(json.dumps(control or {}))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MATOMO_RT_CONFIG", None)
        env.update(
            MATOMO_TOKEN_AUTH=self.token,
            IMPORT_DOUBLE_RECORD=str(self.record),
            IMPORT_DOUBLE_CALLS=str(self.calls_file),
            IMPORT_DOUBLE_CONTROL=str(self.control),
        )
        return env

    def recorded(self) -> list[bytes]:
        """Complete lines only: a torn tail is a POST killed mid-commit."""
        try:
            data = self.record.read_bytes()
        except FileNotFoundError:
            return []
        return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)

    def calls(self) -> list[dict[str, Any]]:
        try:
            text = self.calls_file.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a kill
        return out

    def wait_importers_gone(self, deadline: float = 10.0) -> None:
        """The double's processes are gone (killed with us: PR_SET_PDEATHSIG)."""
        pids = [c["pid"] for c in self.calls() if c.get("event") == "start"]
        end = time.monotonic() + deadline
        for pid in pids:
            while _alive(pid):
                assert time.monotonic() < end, f"importer pid {pid} outlived matomo-rt"
                time.sleep(0.01)

    # -- matomo-rt -------------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [*CLI, "-c", str(self.config), *(args or ("import",))]

    def run(self, *args: str, timeout: float = 300.0, env: Optional[dict[str, str]] = None):
        return subprocess.run(
            self.argv(*args),
            env=env or self.env(),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args),
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def kill_at(
        self,
        proc: subprocess.Popen,
        mode: str,
        rng: random.Random,
        *,
        delay: float = 2.5,
        ends: int = 5,
        patience: float = 1.0,
    ) -> str:
        """SIGKILL `proc` at the point `mode` names; where it happened, or "exited".

        `early`: within 0.3 s (start-up, lock, the first batch); `random`: within `delay` s;
        `after_end`: right after 1 to `ends` more importer runs ended (between an importer's
        exit and the commit), waiting at most 10 s; `state_tmp`: while a state temp file
        exists, waiting at most 5 s. Both waits are times `patience` (a slower run: longer).
        The delay is the random variable here, not a wait for something to happen.
        """
        if mode == "early":
            time.sleep(rng.uniform(0.0, 0.3))
        elif mode == "random":
            time.sleep(rng.uniform(0.0, delay))
        elif mode == "after_end":
            target = self._ended() + rng.randint(1, ends)
            deadline = time.monotonic() + 10 * patience
            while proc.poll() is None and time.monotonic() < deadline:
                if self._ended() >= target:
                    break
                time.sleep(0.005)  # polling the call log, not spinning on it beside the run
        elif mode == "state_tmp":
            deadline = time.monotonic() + 5 * patience
            while proc.poll() is None and time.monotonic() < deadline:
                if any(n.endswith(".tmp") for n in os.listdir(self.state_dir)):
                    break
        if proc.poll() is not None:
            return "exited"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return mode

    def _ended(self) -> int:
        return sum(1 for c in self.calls() if c.get("event") == "end")

    def kill_rounds(
        self,
        rounds: int,
        rng: random.Random,
        modes: tuple[str, ...],
        *args: str,
        after_kill: Callable[[], None] = lambda: None,
        what: str = "",
        **kill: Any,
    ) -> list[str]:
        """Start `matomo-rt *args` and SIGKILL it at a point drawn from `modes` (see kill_at),
        `rounds` times or until a run ends by itself (with exit 0). After each kill its
        importers must be gone; then `after_kill()` (checks, more lines). The kill points, one
        per kill."""
        points = []
        for _ in range(rounds):
            proc = self.popen(*args)
            where = self.kill_at(proc, rng.choice(modes), rng, **kill)
            if where == "exited":
                assert proc.returncode == 0, (
                    f"{what}exit {proc.returncode}: {proc.stderr.read().decode(errors='replace')}"
                )
                break
            points.append(where)
            self.wait_importers_gone()
            after_kill()
        return points

    def state(self) -> Optional[dict[str, Any]]:
        return load_state(self.state_file)

    def stats(self) -> dict[str, Any]:
        doc = self.state() or {}
        return dict(doc.get("stats") or {})

    def committed_offset(self) -> int:
        doc = self.state() or {}
        current = (doc.get("position") or {}).get("current") or {}
        return int(current.get("offset") or 0)

    def tally(self) -> tuple[int, int]:
        return tally(self.written, self.recorded())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False


def one_line_error(stderr: str) -> list[str]:
    """The ERROR lines of matomo-rt's stderr; asserts there is no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if ": ERROR: " in line]


def peak_rss_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None
