"""One import pass, read -> guard -> import -> commit, against the import_logs.py double.

Each test is one row of docs/outcomes.md: a fault import_logs.py or Matomo shows, the outcome
matomo-rt derives, what it commits, and what the next pass does. The double runs as a real process
(through matomo_rt.execute, with the token launcher), "records" what Matomo would hold in
IMPORT_DOUBLE_RECORD and logs each run in IMPORT_DOUBLE_CALLS, so "committed" is checked against
the state file and "delivered" against the record, byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from matomo_rt.commands import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_NOPERM,
    EXIT_OK,
    run_import,
    run_seek,
)
from matomo_rt.config import Config, ConfigError, load
from matomo_rt.logstate import state_paths
from matomo_rt.matomo import importer
from matomo_rt.pipeline import PassReport, Source, open_sources

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "doubles" / "import_logs.py"
_SCRIPT = Path(sys.executable).parent / "matomo-rt"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "matomo_rt"]
TOKEN = "tok-5e1f0c93a7d24b68"
DEADLINE = 20.0


def log_line(i: int, **fields: Any) -> bytes:
    """The i-th request of a test log (each line unique); ``...`` leaves a field out."""
    record: dict[str, Any] = {
        "ip": f"198.51.100.{i % 250}",
        "host": "www.example.org",
        "path": f"/page/{i}",
        "status": "200",
        "referrer": "-",
        "user_agent": "Mozilla/5.0",
        "length": 100 + i,
        "generation_time_milli": 0.012,
        "date": "2024-06-01T12:00:00+00:00",
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode() + b"\n"


def wait_for(what: str, condition: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Poll an observable condition until it holds; fail with `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: it runs no more code)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@dataclass
class Rig:
    """A temporary log, state directory, token file and config, with the double's files."""

    tmp: Path
    log: Path
    state: Path
    token_file: Path
    config_path: Path
    record: Path
    calls: Path
    control: Path

    def write_config(
        self,
        *,
        batch_lines: int = 10,
        timeout: str = "20s",
        flags: tuple[str, ...] = ("--enable-http-errors", "--enable-http-redirects"),
        on_uncertain: str = "resend",
        idsite: Optional[int] = None,
        extra_logs: str = "",
        import_logs: Optional[Path] = None,
        python: str = sys.executable,
        workers: int = 1,
    ) -> Config:
        """Write the TOML file and load it as matomo-rt does."""
        idsite_line = f"idsite = {idsite}" if idsite is not None else ""
        self.config_path.write_text(
            textwrap.dedent(
                f"""\
                [matomo]
                url = "http://matomo.example"
                import_logs = "{import_logs or DOUBLE}"
                python = "{python}"
                token_auth_file = "{self.token_file}"

                [import]
                interval = "1s"
                batch_lines = {batch_lines}
                timeout = "{timeout}"
                flags = {json.dumps(list(flags))}
                on_uncertain = "{on_uncertain}"
                start_at = "beginning"
                workers = {workers}

                [state]
                dir = "{self.state}"

                [[logs]]
                name = "web"
                path = "{self.log}"
                {idsite_line}
                """
            )
            + textwrap.dedent(extra_logs)
        )
        return load(self.config_path)

    def set_control(self, **control: Any) -> None:
        self.control.write_text(json.dumps(control))

    def clear_control(self) -> None:
        self.control.unlink(missing_ok=True)

    def append(self, lines: list[bytes]) -> None:
        with self.log.open("ab") as fh:
            fh.write(b"".join(lines))

    def recorded(self) -> list[bytes]:
        if not self.record.exists():
            return []
        return self.record.read_bytes().splitlines(keepends=True)

    def call_log(self) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        return [json.loads(x) for x in self.calls.read_text().splitlines() if x.strip()]

    def starts(self) -> list[dict[str, Any]]:
        return [c for c in self.call_log() if c["event"] == "start"]

    def state_doc(self, name: str = "web") -> dict[str, Any]:
        path = self.state / f"{name}.state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def offset(self, name: str = "web") -> int:
        """The committed byte offset in the live file (0 before any commit)."""
        position = self.state_doc(name).get("position") or {}
        current = position.get("current") or {}
        return current.get("offset") or 0

    def stats(self, name: str = "web") -> dict[str, Any]:
        return self.state_doc(name).get("stats", {})

    def quarantined(self, name: str = "web") -> list[dict[str, Any]]:
        path = self.state / f"{name}.quarantine.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines()]


def make_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """An empty log, a state directory, a private token file; the double's files in the env."""
    r = Rig(
        tmp=tmp_path,
        log=tmp_path / "access.log",
        state=tmp_path / "state",
        token_file=tmp_path / "token",
        config_path=tmp_path / "config.toml",
        record=tmp_path / "record",
        calls=tmp_path / "calls",
        control=tmp_path / "control.json",
    )
    r.state.mkdir()
    r.token_file.write_text(TOKEN + "\n")
    r.token_file.chmod(0o600)
    r.log.write_bytes(b"")
    monkeypatch.setenv("IMPORT_DOUBLE_RECORD", str(r.record))
    monkeypatch.setenv("IMPORT_DOUBLE_CALLS", str(r.calls))
    monkeypatch.setenv("IMPORT_DOUBLE_CONTROL", str(r.control))
    monkeypatch.delenv("MATOMO_TOKEN_AUTH", raising=False)
    return r


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return make_rig(tmp_path, monkeypatch)


def one_pass(config: Config, **kwargs: Any) -> PassReport:
    """Open the (only) source as `import` does, run one pass, close it."""
    (source,) = open_sources(config)
    with source:
        return source.run_pass(**kwargs)


def lines_of(start: int, stop: int) -> list[bytes]:
    return [log_line(i) for i in range(start, stop)]


# -- success ------------------------------------------------------------------------------------


def test_success_commits_everything_and_matomo_holds_the_input(rig: Rig) -> None:
    config = rig.write_config(batch_lines=10)
    data = lines_of(0, 25)
    rig.append(data)
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.error is None
    assert report.caught_up and report.batches == 3
    assert report.committed_lines == report.lines_read == report.imported == 25
    assert rig.recorded() == data
    assert rig.offset() == rig.log.stat().st_size
    stats = rig.stats()
    assert stats["lines_read"] == 25 and stats["imported"] == 25 and "last_success" in stats
    assert len(rig.starts()) == 3  # one importer run per batch
    assert all(c["token_auth"] == TOKEN for c in rig.starts())
    # Nothing new: no importer run, nothing recorded twice.
    assert one_pass(config).caught_up
    assert len(rig.starts()) == 3 and rig.recorded() == data


# -- fatal error with --skip=N ----------------------------------------------------------------


def test_fatal_error_commits_exactly_the_lines_before_the_failed_post(rig: Rig) -> None:
    """POSTs of 4 lines; the one holding line 9 fails: `--skip=8`, lines 0-7 committed."""
    config = rig.write_config(
        batch_lines=20, flags=("--enable-http-errors", "--recorder-max-payload-size=4")
    )
    data = lines_of(0, 20)
    rig.append(data)
    rig.set_control(fatal_after_lines=9)
    report = one_pass(config)
    assert report.outcome == importer.PARTIAL
    assert "HTTP Error 500" in (report.error or "")
    assert report.committed_lines == 8
    assert rig.offset() == len(b"".join(data[:8]))
    assert rig.recorded() == data[:8]
    assert rig.stats()["last_error"]["outcome"] == importer.PARTIAL

    rig.clear_control()
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert rig.recorded() == data  # the rest, exactly once
    assert rig.offset() == rig.log.stat().st_size


def test_skip_is_mapped_past_quarantined_lines(rig: Rig) -> None:
    """`--skip=N` counts the lines the importer got; quarantined ones are not among them."""
    config = rig.write_config(batch_lines=12, flags=("--recorder-max-payload-size=2",))
    data = lines_of(0, 12)
    data[2] = b"not json at all\n"
    data[6] = log_line(6, status="")
    rig.append(data)
    good = [x for i, x in enumerate(data) if i not in (2, 6)]
    rig.set_control(fatal_after_lines=4)  # the importer's lines 4-5 fail: --skip=4
    report = one_pass(config)
    assert report.outcome == importer.PARTIAL
    # The importer's first 4 lines are batch lines 0, 1, 3, 4: commit through batch line 4.
    assert rig.offset() == len(b"".join(data[:5]))
    assert rig.recorded() == good[:4]
    assert [q["reason"] for q in rig.quarantined()] == ["not valid JSON"]

    rig.clear_control()
    assert one_pass(config).caught_up
    assert rig.recorded() == good
    assert [q["line"].encode() + b"\n" for q in rig.quarantined()] == [data[2], data[6]]
    assert rig.stats()["quarantined"] == 2


# -- nothing recorded: failed, refused, auth, usage ---------------------------------------------


@pytest.mark.parametrize("idsite", [None, 1], ids=["lookup", "idsite"])
def test_unreachable_commits_nothing_and_a_later_pass_delivers(
    rig: Rig, idsite: Optional[int]
) -> None:
    config = rig.write_config(idsite=idsite)
    data = lines_of(0, 5)
    rig.append(data)
    rig.set_control(fail="unreachable")
    report = one_pass(config)
    assert report.outcome == importer.FAILED
    assert "Connection refused" in (report.error or "")
    assert report.committed_lines == 0 and rig.offset() == 0
    assert rig.recorded() == []
    error = rig.stats()["last_error"]
    assert error["outcome"] == importer.FAILED and "Connection refused" in error["reason"]
    assert rig.stats()["failed_batches"] == 1

    rig.clear_control()
    assert one_pass(config).outcome == importer.SUCCESS
    assert rig.recorded() == data


def test_matomo_refusing_every_hit_commits_nothing(rig: Rig) -> None:
    config = rig.write_config()
    data = lines_of(0, 6)
    rig.append(data)
    rig.set_control(fail="refuse_all")
    report = one_pass(config)
    assert report.outcome == importer.REFUSED
    assert "write access" in (report.error or "")
    assert rig.offset() == 0 and rig.recorded() == []
    assert rig.stats()["last_error"]["outcome"] == importer.REFUSED

    rig.clear_control()
    assert one_pass(config).outcome == importer.SUCCESS
    assert rig.recorded() == data


def test_a_batch_matomo_refuses_whole_names_the_way_past_it(rig: Rig) -> None:
    """Hits older than Matomo accepts are refused on every retry: the log would stall on that
    batch forever. The error names the command that moves past exactly that batch."""
    config = rig.write_config(batch_lines=10)
    data = lines_of(0, 15)
    rig.append(data)
    rig.set_control(fail="refuse_all")
    report = one_pass(config)
    assert report.outcome == importer.REFUSED and rig.offset() == 0
    end = len(b"".join(data[:10]))
    assert f"matomo-rt seek --log web --to {end}" in (report.error or "")
    assert "older than Matomo accepts" in (report.error or "")
    assert rig.stats()["last_error"]["reason"] == report.error

    assert run_seek(config, "web", str(end)) == EXIT_OK
    rig.clear_control()
    assert one_pass(config).caught_up
    assert rig.recorded() == data[10:]


def test_some_hits_refused_commits_and_warns(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    config = rig.write_config()
    data = lines_of(0, 6)
    rig.append(data)
    rig.set_control(refuse_lines=[1, 4])
    with caplog.at_level(logging.WARNING):
        report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert rig.offset() == rig.log.stat().st_size
    assert rig.recorded() == [x for i, x in enumerate(data) if i not in (1, 4)]
    assert "Matomo refused 2 of 6 requests" in caplog.text


def test_unmatched_hosts_commit_and_warn_with_the_host_names(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    config = rig.write_config()
    data = [log_line(0), log_line(1, host="stray.example"), log_line(2)]
    rig.append(data)
    rig.set_control(sites={"www.example.org": 1})
    with caplog.at_level(logging.WARNING):
        report = one_pass(config)
    assert report.outcome == importer.SUCCESS
    assert report.unmatched_hosts == {"stray.example"}
    assert rig.offset() == rig.log.stat().st_size
    assert rig.recorded() == [data[0], data[2]]
    assert "stray.example" in caplog.text and "--idsite-fallback" in caplog.text
    # import_logs.py counts the stray request "imported"; Matomo holds 2: the stats say 2.
    assert report.imported == 2 and rig.stats()["imported"] == 2


@pytest.mark.parametrize("idsite", [None, 1], ids=["lookup", "idsite"])
def test_wrong_token_pauses_imports_until_the_token_changes(
    rig: Rig, caplog: pytest.LogCaptureFixture, idsite: Optional[int]
) -> None:
    config = rig.write_config(idsite=idsite)
    data = lines_of(0, 5)
    rig.append(data)
    rig.set_control(valid_tokens=["the-right-token"])
    with caplog.at_level(logging.ERROR):
        report = one_pass(config)
    assert report.outcome == importer.AUTH
    assert rig.offset() == 0 and rig.recorded() == []
    pause = rig.stats()["auth_pause"]
    assert pause["until"] > time.time() + 3000
    assert "refused the token" in caplog.text
    assert len(rig.starts()) == 1

    # The next passes do not call Matomo (each refused token is a failed login there).
    for _ in range(2):
        report = one_pass(config)
        assert report.outcome == importer.AUTH and "paused" in (report.error or "")
    assert run_import(config, None) == EXIT_NOPERM
    assert len(rig.starts()) == 1

    rig.token_file.write_text("the-right-token\n")
    report = one_pass(config)
    assert report.outcome == importer.SUCCESS and report.caught_up
    assert rig.recorded() == data
    assert rig.starts()[-1]["token_auth"] == "the-right-token"


def test_usage_error_is_a_configuration_error(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    config = rig.write_config(flags=("--enable-http-errors", "--bogus-flag"))
    rig.append(lines_of(0, 3))
    with caplog.at_level(logging.ERROR):
        assert run_import(config, None) == EXIT_CONFIG
    assert "--bogus-flag" in caplog.text
    assert rig.offset() == 0 and rig.recorded() == []
    assert rig.stats()["last_error"]["outcome"] == importer.USAGE


def test_importer_that_cannot_start_is_a_failure(rig: Rig) -> None:
    script = rig.tmp / "import_logs.py"
    script.write_text("")
    config = rig.write_config(import_logs=script, python=str(rig.tmp / "no-such-python"))
    rig.append(lines_of(0, 3))
    report = one_pass(config)
    assert report.outcome == importer.FAILED and "no such file" in (report.error or "")
    assert rig.offset() == 0
    assert run_import(config, None) == EXIT_FAILURE


@pytest.mark.parametrize(
    ("script_text", "words"),
    [
        ("def broken(:\n", "SyntaxError"),  # a half-upgraded Matomo
        ("import no_such_module_of_matomo_rt\n", "No module named"),
        (None, "No such file"),  # gone during an upgrade
        ("import sys\nsys.exit(1)\n", "exit 1"),
    ],
    ids=["syntax-error", "import-error", "missing-file", "silent-exit"],
)
def test_an_importer_failing_before_it_reads_input_is_failed_even_under_skip(
    rig: Rig, script_text: Optional[str], words: str
) -> None:
    """Nothing of the batch can be in Matomo: `skip` must not move past it."""
    script = rig.tmp / "import_logs.py"
    if script_text is not None:
        script.write_text(script_text)
    config = rig.write_config(import_logs=script, on_uncertain="skip")
    rig.append(lines_of(0, 3))
    report = one_pass(config)
    assert report.outcome == importer.FAILED and report.uncertain == 0
    assert "before reading its input" in (report.error or "") and words in (report.error or "")
    assert rig.offset() == 0
    assert rig.stats().get("uncertain_batches", 0) == 0


def test_an_importer_timing_out_before_it_reads_input_is_failed_even_under_skip(rig: Rig) -> None:
    script = rig.tmp / "import_logs.py"
    script.write_text("import time\ntime.sleep(60)\n")
    config = rig.write_config(import_logs=script, on_uncertain="skip", timeout="1s")
    rig.append(lines_of(0, 3))
    report = one_pass(config)
    assert report.outcome == importer.FAILED and report.uncertain == 0
    assert "timed out before reading its input" in (report.error or "")
    assert rig.offset() == 0


def test_too_many_open_files_before_the_importer_starts_is_failed_even_under_skip(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = rig.write_config(on_uncertain="skip")
    rig.append(lines_of(0, 3))

    def no_pipe() -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pipe", no_pipe)
    report = one_pass(config)
    monkeypatch.undo()
    assert report.outcome == importer.FAILED and report.uncertain == 0
    assert "too many open files" in (report.error or "")
    assert rig.offset() == 0
    assert rig.starts() == []


# -- the importer hangs or dies ----------------------------------------------------------------


HANG_FLAGS = ("--enable-http-errors", "--recorder-max-payload-size=3")
#: import.timeout for the hang tests, shortest first. A run counts only if the double reached
#: its hang before the timeout (its "hang" event); on a busy machine it may still be starting,
#: and the pass is repeated from scratch with the next, longer timeout.
HANG_TIMEOUTS = ("0.4s", "1.5s", "6s")


def hung_pass(rig: Rig, **config: Any) -> tuple[Config, PassReport]:
    """One pass whose importer reached its simulated hang before `import.timeout` ended it;
    and the config for the passes after it, with the usual timeout."""
    for timeout in HANG_TIMEOUTS:
        report = one_pass(rig.write_config(timeout=timeout, **config))
        hung = [c for c in rig.call_log() if c["event"] == "hang"]
        if hung:
            return rig.write_config(**config), report
        for start in rig.starts():  # too slow to start: clean slate, longer timeout
            wait_for("the timed-out importer to exit", lambda s=start: process_gone(s["pid"]))
        shutil.rmtree(rig.state)
        rig.state.mkdir()
        rig.record.unlink(missing_ok=True)
        rig.calls.unlink(missing_ok=True)
    raise AssertionError(f"the double never reached its hang within {HANG_TIMEOUTS[-1]}")


def test_hang_times_out_and_resend_delivers_everything(rig: Rig) -> None:
    """Lines 0-4 of the first batch reach Matomo, then its POST hangs: uncertain, resent."""
    data = lines_of(0, 25)
    rig.append(data)
    rig.set_control(hang_after_lines=5)
    config, report = hung_pass(rig, batch_lines=10, flags=HANG_FLAGS)
    assert report.outcome == importer.UNCERTAIN
    assert report.uncertain == 1 and "timed out" in (report.error or "")
    assert rig.offset() == 0
    assert rig.recorded() == data[:5]
    assert rig.stats()["uncertain_batches"] == 1

    rig.clear_control()
    assert one_pass(config).caught_up
    recorded = rig.recorded()
    assert recorded == data[:5] + data  # resent: nothing lost
    duplicates = sum(n - 1 for n in Counter(recorded).values())
    assert 0 < duplicates <= 10  # at most one batch


def test_hang_without_answer_is_uncertain(rig: Rig) -> None:
    """A non-JSON API answer kills the recorder thread: the importer waits forever."""
    rig.append(lines_of(0, 4))
    rig.set_control(fail="hang")
    _, report = hung_pass(rig, batch_lines=10)
    assert report.outcome == importer.UNCERTAIN and rig.offset() == 0
    assert all(c["event"] != "end" for c in rig.call_log())  # it never ended by itself
    assert process_gone(rig.starts()[0]["pid"])  # and it does not outlive the timeout


def test_hang_with_on_uncertain_skip_moves_past_the_batch(rig: Rig) -> None:
    data = lines_of(0, 25)
    rig.append(data)
    rig.set_control(hang_after_lines=5)
    config, report = hung_pass(rig, batch_lines=10, flags=HANG_FLAGS, on_uncertain="skip")
    assert report.outcome == importer.UNCERTAIN and report.uncertain == 1
    assert rig.offset() == len(b"".join(data[:10]))  # the batch is committed
    assert rig.stats()["uncertain_batches"] == 1

    rig.clear_control()
    assert one_pass(config).caught_up
    # At most once: lines 5-9 are lost, nothing is recorded twice.
    assert rig.recorded() == data[:5] + data[10:]


@pytest.mark.parametrize("on_uncertain", ["resend", "skip"])
def test_sigkill_mid_import_then_restart_delivers_everything(rig: Rig, on_uncertain: str) -> None:
    """`matomo-rt import` killed while import_logs.py is inside a POST: the child dies with
    it, the batch was not committed; the restart counts it uncertain, says so, and resends it
    (duplicates within one batch) or, under skip, moves past it (missing within one batch)."""
    rig.write_config(batch_lines=10, flags=HANG_FLAGS, on_uncertain=on_uncertain)
    first = lines_of(0, 20)
    rig.append(first)
    done = subprocess.run([*CLI, "-c", str(rig.config_path), "import"], timeout=60)
    assert done.returncode == 0 and rig.recorded() == first
    size_before = rig.offset()

    more = lines_of(20, 45)
    rig.append(more)
    rig.set_control(hang_after_lines=7)  # POSTs 0-2, 3-5 held; 6 of 6-8 held, then it hangs
    proc = subprocess.Popen([*CLI, "-c", str(rig.config_path), "import"])
    try:
        start = wait_for("the importer to start", lambda: rig.starts()[2:])
        pid = start[0]["pid"]
        wait_for("the hung POST", lambda: len(rig.recorded()) == 27)
        assert not process_gone(pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    wait_for("the importer to die with matomo-rt", lambda: process_gone(pid))
    assert rig.offset() == size_before  # nothing of the killed batch committed

    assert rig.stats().get("uncertain_batches", 0) == 0

    rig.clear_control()
    done = subprocess.run(
        [*CLI, "-c", str(rig.config_path), "import"], timeout=60, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "matomo-rt stopped while import_logs.py had a batch of 10 lines" in done.stderr
    assert rig.stats()["uncertain_batches"] == 1
    assert "in_flight" not in rig.state_doc()
    recorded = rig.recorded()
    if on_uncertain == "resend":
        assert recorded == first + more[:7] + more
        duplicates = sum(n - 1 for n in Counter(recorded).values())
        assert duplicates == 7 <= 10
    else:
        assert recorded == first + more[:7] + more[10:]  # more[7:10]: the at-most-once window
    assert rig.offset() == rig.log.stat().st_size


# -- poison lines -------------------------------------------------------------------------------

POISON = [
    (b"garbage\n", "not valid JSON"),
    (b"\n", "empty line"),
    (b"[1, 2]\n", "a JSON list, not an object"),
    (log_line(900, status=""), "status is empty"),
    (log_line(901, date=...), "date is missing or null"),
    (log_line(902, path=None), "path is missing or null"),
    (log_line(903, user_agent=[1]), "user_agent is a list"),
    (log_line(904, date="2024-06-01T12:00:00+9999999999"), "date is out of range"),
    (log_line(905, host="bad\udc80host"), "lone surrogate"),
    (log_line(906)[:-2] + b', "userid": Infinity}\n', "userid holds NaN or Infinity"),
]


def test_poison_lines_never_stall_the_log(rig: Rig) -> None:
    """Good, normalisable and quarantinable lines, interleaved and in a run of their own."""
    config = rig.write_config(batch_lines=3)
    data: list[bytes] = []
    good: list[bytes] = []
    normalised = [log_line(800, status=404), log_line(801, user_agent=None, length=None)]
    poison = [raw for raw, _ in POISON]
    for i in range(12):
        data.append(log_line(i))
        good.append(log_line(i))
        if i % 3 == 0:
            data.append(poison.pop(0))
    assert len(poison) >= 2 * 3 - 1
    data += poison  # at least one whole batch of nothing but poison
    data += [*normalised, log_line(99)]
    good.append(log_line(99))
    rig.append(data)

    report = one_pass(config)
    assert report.caught_up and report.error is None
    assert rig.offset() == rig.log.stat().st_size
    assert len(rig.starts()) < report.batches  # no importer run for an all-poison batch
    recorded = rig.recorded()
    assert [x for x in recorded if x in good] == good
    assert len(recorded) == len(good) + len(normalised)
    paths = [json.loads(x)["path"] for x in recorded if x not in good]
    assert paths == ["/page/800", "/page/801"]

    held = rig.quarantined()
    assert [q["line"].encode("utf-8", "surrogateescape") + b"\n" for q in held] == [
        raw for raw, _ in POISON
    ]
    for q, (_, reason) in zip(held, POISON):
        assert reason in q["reason"]
    stats = rig.stats()
    assert stats["quarantined"] == len(POISON) and stats["normalised"] == 2
    assert stats["lines_read"] == len(data)


# -- the token ---------------------------------------------------------------------------------


def test_token_is_not_on_the_importer_command_line(rig: Rig) -> None:
    """What `ps` shows of the running importer (/proc/PID/cmdline) has no token."""
    config = rig.write_config(timeout="20s")
    rig.append(lines_of(0, 3))
    rig.set_control(fail="hang")
    (source,) = open_sources(config)
    result: list[PassReport] = []
    with source:
        worker = threading.Thread(target=lambda: result.append(source.run_pass()))
        worker.start()
        start = wait_for("the importer to start", rig.starts)[0]
        try:
            cmdline = Path(f"/proc/{start['pid']}/cmdline").read_bytes()
            assert b"import_logs.py" in cmdline and b"--url=http://matomo.example" in cmdline
            assert TOKEN.encode() not in cmdline
            args = cmdline.decode().split("\0")
            assert args[1:3] == ["-c", importer.LAUNCHER]  # names the variable, holds no token
            assert not any("token" in a for a in args[3:])
            assert start["token_auth"] == TOKEN  # yet import_logs.py got it
        finally:
            os.killpg(os.getpgid(start["pid"]), signal.SIGKILL)
            worker.join(DEADLINE)
    # Killed by us, maybe before it read its input: failed or uncertain, nothing committed.
    assert result and result[0].error and result[0].committed_lines == 0


def test_a_token_from_the_environment_reaches_import_logs_only(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$MATOMO_TOKEN_AUTH is handed to import_logs.py through the launcher, which takes it out
    of the environment before the script runs: nothing import_logs.py starts inherits it."""
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", TOKEN)
    rig.write_config(timeout="20s")
    text = rig.config_path.read_text()
    rig.config_path.write_text(text.replace(f'token_auth_file = "{rig.token_file}"', ""))
    config = load(rig.config_path)
    assert config.matomo.token_auth_file is None
    rig.append(lines_of(0, 3))
    rig.set_control(fail="hang")
    (source,) = open_sources(config)
    result: list[PassReport] = []
    with source:
        worker = threading.Thread(target=lambda: result.append(source.run_pass()))
        worker.start()
        start = wait_for("the importer to start", rig.starts)[0]
        try:
            environ = Path(f"/proc/{start['pid']}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"MATOMO_TOKEN_AUTH=")]
            assert start["token_env"] == {}  # what the script (and its children) see
            assert start["token_auth"] == TOKEN
        finally:
            os.killpg(os.getpgid(start["pid"]), signal.SIGKILL)
            worker.join(DEADLINE)
    # Killed by us, maybe before it read its input: failed or uncertain, nothing committed.
    assert result and result[0].error and result[0].committed_lines == 0


LEAKY_IMPORTER = """\
import sys
sys.stdin.buffer.readline()  # it crashes mid-batch, after reading input
print("argv:", sys.argv)
print("argv:", sys.argv, file=sys.stderr)
token = [a for a in sys.argv if a.startswith("--token-auth=")][0].split("=", 1)[1]
print("POST token_auth=" + token + "&x=1", file=sys.stderr)
raise RuntimeError("import failed with token " + token)
"""


def test_token_is_in_no_log_line_error_or_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """An importer that prints its argv and dies with the token in its traceback."""
    script = rig.tmp / "import_logs.py"
    script.write_text(LEAKY_IMPORTER)
    config = rig.write_config(import_logs=script)
    rig.append(lines_of(0, 3))
    with caplog.at_level(logging.DEBUG):
        report = one_pass(config)
    assert report.outcome == importer.UNCERTAIN
    assert "RuntimeError: import failed with token ***" in (report.error or "")
    assert caplog.text and TOKEN not in caplog.text
    assert TOKEN not in json.dumps(rig.state_doc())

    proc = subprocess.run(
        [*CLI, "-vv", "-c", str(rig.config_path), "import"], capture_output=True, timeout=60
    )
    assert proc.returncode == EXIT_FAILURE
    assert b"RuntimeError" in proc.stderr
    assert TOKEN.encode() not in proc.stderr + proc.stdout


def test_world_readable_token_file_warns(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    config = rig.write_config()
    with caplog.at_level(logging.WARNING):
        open_sources(config)
    assert "readable by every user" not in caplog.text
    rig.token_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        (source,) = open_sources(config)
    assert source.token == TOKEN
    assert "readable by every user" in caplog.text and f"chmod o-r {rig.token_file}" in caplog.text
    assert TOKEN not in caplog.text


def test_missing_token_file_is_one_line_config_error(rig: Rig) -> None:
    config = rig.write_config()
    rig.token_file.unlink()
    with pytest.raises(ConfigError) as exc:
        run_import(config, None)
    assert len(exc.value.problems) == 1 and "\n" not in str(exc.value)
    assert "matomo.token_auth_file" in str(exc.value) and "no such file" in str(exc.value)


def test_state_paths_live_in_the_state_directory(rig: Rig) -> None:
    config = rig.write_config()
    state, lock, quarantine = state_paths(config, config.logs[0])
    assert {p.parent for p in (state, lock, quarantine)} == {rig.state}
    assert (state.name, lock.name, quarantine.name) == (
        "web.state.json",
        "web.lock",
        "web.quarantine.jsonl",
    )


def test_run_import_returns_ok_when_caught_up(rig: Rig) -> None:
    config = rig.write_config()
    rig.append(lines_of(0, 3))
    assert run_import(config, None) == EXIT_OK
    assert len(rig.recorded()) == 3


def test_outcome_table_rows_each_name_existing_tests() -> None:
    """docs/outcomes.md: every fault row names at least one test, and each named test exists."""
    files = {
        "pipeline": ROOT / "tests" / "test_pipeline.py",
        "command": ROOT / "tests" / "test_import_command.py",
        "importer": ROOT / "tests" / "matomo" / "test_importer.py",
        "guard": ROOT / "tests" / "test_guard.py",
        "config": ROOT / "tests" / "test_config.py",
        "check": ROOT / "tests" / "test_check.py",
        "options": ROOT / "tests" / "matomo" / "test_options.py",
        "service": ROOT / "tests" / "e2e" / "test_service.py",
        "workers": ROOT / "tests" / "test_workers.py",
        "reader": ROOT / "tests" / "tail" / "test_reader_rules.py",
    }
    text = (ROOT / "docs" / "outcomes.md").read_text()
    table = text.split("## Fault by fault", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| fault")]
    assert len(rows) >= 20
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 6, row
        refs = re.findall(r"`(\w+)::(test_\w+)`", cells[5])
        assert refs, f"no test for: {cells[0]}"
        for module, name in refs:
            assert f"def {name}(" in files[module].read_text(), f"{module}::{name}"


def test_a_quiet_log_still_reports_success_but_spares_the_disk(rig: Rig) -> None:
    """Caught up counts as success (monitoring must not see a quiet site as stuck), but an idle
    pass writes the state at most once a minute."""
    config = rig.write_config()
    now = [1_000_000.0]
    source = Source(config, config.logs[0], TOKEN, clock=lambda: now[0])
    with source:
        assert source.run_pass().caught_up
        assert rig.stats()["last_success"] == now[0]
        written = rig.state_doc()["updated"]
        now[0] += 30
        source.run_pass()
        assert rig.state_doc()["updated"] == written  # idle, within a minute: no write
        now[0] += 31
        source.run_pass()
        assert rig.stats()["last_success"] == now[0]
    assert not rig.starts()  # nothing was imported at any point


def disk_full_after_the_batch_went_out(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """State writes fail (disk full) while the returned flag is set, once a batch's in-flight
    mark is on disk: the batch went out, and its outcome cannot be saved."""
    import matomo_rt.logstate
    from matomo_rt.tail import StateError

    real_save = matomo_rt.logstate.save_state
    failing = [True]
    marks: list[dict[str, Any]] = []

    def save_state(path: Any, document: dict[str, Any]) -> None:
        if failing[0] and marks:
            raise StateError("state.json: cannot write state: No space left on device")
        real_save(path, document)
        if "in_flight" in document:
            marks.append(document)

    monkeypatch.setattr(matomo_rt.logstate, "save_state", save_state)
    return failing


def test_a_position_the_disk_refused_is_never_imported_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matomo took the batch, then the state write failed (disk full): the process keeps the
    position, imports nothing more until it is saved, and never sends that batch again."""
    from matomo_rt.tail import StateError

    config = rig.write_config(batch_lines=100)
    rig.append(lines_of(0, 5))
    failing = disk_full_after_the_batch_went_out(monkeypatch)
    (source,) = open_sources(config)
    with source:
        with pytest.raises(StateError):
            source.run_pass()
        assert rig.recorded() == lines_of(0, 5)
        rig.append(lines_of(5, 8))
        report = source.run_pass()  # still failing: no import at all
        assert report.error and "no import until" in report.error and len(rig.starts()) == 1
        failing[0] = False
        source.retry_at = 0.0
        assert source.run_pass().caught_up
    assert rig.recorded() == lines_of(0, 8)  # each line once
    assert rig.offset() == rig.log.stat().st_size


def test_a_state_the_disk_refuses_is_the_verdict_until_it_is_written_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While nothing can be committed the log is never healthy: the verdict names the failure
    and since when, the failed writes are counted, and a successful write ends it."""
    from matomo_rt import health
    from matomo_rt.tail import StateError

    config = rig.write_config(batch_lines=100)
    rig.append(lines_of(0, 5))
    failing = disk_full_after_the_batch_went_out(monkeypatch)
    now = [1_000_000.0]
    (source,) = open_sources(config)
    source.clock = lambda: now[0]
    with source:
        with pytest.raises(StateError):
            source.run_pass()
        now[0] += 600
        source.retry_at = 0.0
        source.run_pass()  # still refused
        verdict = source.verdict()
        assert verdict.kinds() == {health.STATE_UNWRITABLE}
        [problem] = verdict.problems
        assert "(10m ago): " in problem.message and "No space left on device" in problem.message
        assert source.write_failures >= 2
        failing[0] = False
        source.retry_at = 0.0
        assert source.run_pass().caught_up
        assert source.verdict().healthy
        assert source.write_failure is None


def test_json_nested_too_deeply_is_quarantined_not_a_crash(rig: Rig) -> None:
    config = rig.write_config(batch_lines=100)
    rig.append([*lines_of(0, 3), b"[" * 100_000 + b"\n", *lines_of(3, 6)])
    report = one_pass(config)
    assert report.error is None and report.caught_up
    assert rig.recorded() == lines_of(0, 6)
    assert [q["reason"] for q in rig.quarantined()] == ["JSON nested too deeply"]


# -- health: the service's verdict (memory) and status's (the state file) agree --------------


def _status_kinds(config: Config) -> set[str]:
    from matomo_rt import status

    [entry] = status.collect(config)["logs"]
    return {p["kind"] for p in entry["problems"]}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_source_and_status_agree_on_health(rig: Rig, workers: int) -> None:
    from matomo_rt import health

    config = rig.write_config(workers=workers)
    rig.set_control(sites={"www.example.org": 1})
    rig.append([log_line(i) for i in range(12)])
    with Source(config, config.log("web"), token=TOKEN) as source:
        assert source.run_pass().error is None
        assert source.verdict().healthy
        assert _status_kinds(config) == set()

        rig.append([b'203.0.113.9 - - [01/Mar/2026:12:00:00 +0100] "GET / HTTP/1.1" 200 5\n'] * 40)
        source.run_pass()
        assert source.verdict().kinds() == {health.WRONG_FORMAT}
        assert _status_kinds(config) == {health.WRONG_FORMAT}

        rig.append([log_line(i, host="unknown.example") for i in range(100, 160)])
        source.run_pass()
        kinds = source.verdict().kinds()
        if workers == 1:  # split batches: the double reports unmatched hosts as ignored
            assert health.UNMATCHED_HOSTS in kinds
        assert _status_kinds(config) == kinds

        rig.log.unlink()
        report = source.run_pass()
        assert report.file_problem == (health.LOG_MISSING, "no such file")
        assert _status_kinds(config) == source.verdict().kinds()


def test_a_state_written_by_the_previous_version_loads_and_keeps_its_statistics(
    rig: Rig,
) -> None:
    """The Source owns the state document: one written before the reader stopped owning it
    (format 1, "log"/"position"/"updated"/"stats") resumes at its position, and the statistics
    in it are carried on by the next commit."""
    config = rig.write_config(batch_lines=100)
    rig.append(lines_of(0, 3))
    st = rig.log.stat()
    document = {
        "format": 1,
        "log": str(rig.log),
        "position": {
            "initialized": True,
            "current": {
                "dev": st.st_dev,
                "ino": st.st_ino,
                "fingerprint": {"length": 0, "sha256": hashlib.sha256(b"").hexdigest()},
                "offset": sum(len(x) for x in lines_of(0, 2)),
                "name": rig.log.name,
                "compression": None,
            },
            "finished": [],
        },
        "updated": 1_700_000_000.0,
        "stats": {"lines_read": 2, "imported": 2, "quarantined": 7},
    }
    (rig.state / "web.state.json").write_text(json.dumps(document))
    assert one_pass(config).caught_up
    assert rig.recorded() == lines_of(2, 3)  # resumed at the stored offset
    stats = rig.stats()
    assert (stats["lines_read"], stats["imported"], stats["quarantined"]) == (3, 3, 7)
    assert rig.state_doc()["format"] == 1 and rig.offset() == st.st_size


# -- quarantine entries belong to the commit ---------------------------------------------------


def _disk_full_for(monkeypatch: pytest.MonkeyPatch, suffix: str) -> list[bool]:
    """Writes to files named `*suffix` fail with ENOSPC after writing half (a torn entry), as
    on a full disk, while the returned flag is set; every other write goes through."""
    import errno

    real_write = os.write
    failing = [True]

    def write(fd: int, data: Any) -> int:
        if failing[0]:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.endswith(suffix):
                if len(data) > 1:
                    real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return failing


def test_a_quarantine_write_the_disk_refuses_never_resends_the_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, item 2: Matomo took the batch, then appending its quarantined line failed
    (disk full). The position is kept in memory as for a refused state write: nothing is
    imported until the quarantine entry and the state are written, and no line is sent twice."""
    from matomo_rt.tail import StateError

    config = rig.write_config(batch_lines=100)
    good = lines_of(0, 9)
    rig.append([*good[:5], b"not json\n", *good[5:]])
    failing = _disk_full_for(monkeypatch, ".quarantine.jsonl")
    (source,) = open_sources(config)
    with source:
        with pytest.raises(StateError, match="quarantine"):
            source.run_pass()
        assert rig.recorded() == good
        rig.append(lines_of(9, 12))
        report = source.run_pass()  # still failing: no import at all
        assert report.error and "no import until" in report.error and len(rig.starts()) == 1
        failing[0] = False
        source.retry_at = 0.0
        assert source.run_pass().caught_up
    assert rig.recorded() == lines_of(0, 12)  # each line once
    assert [q["line"] for q in rig.quarantined()] == ["not json"]  # once, and nothing torn
    assert rig.stats()["quarantined"] == 1
    assert rig.offset() == rig.log.stat().st_size


def test_quarantine_entries_of_a_batch_never_committed_are_not_written_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine append succeeded, the state write did not, and the process died: the
    next one reads the batch again (the crash window) and quarantines its bad line again, so
    the entries past what the state file knows of are dropped first: one entry, not two."""
    import matomo_rt.logstate
    from matomo_rt.tail import StateError

    config = rig.write_config(batch_lines=100)
    rig.append([*lines_of(0, 2), b"not json\n", *lines_of(2, 4)])
    assert one_pass(config).caught_up
    assert len(rig.quarantined()) == 1
    rig.append([b"[1]\n", *lines_of(4, 6)])
    real_save = matomo_rt.logstate.save_state

    def refused(*args: Any) -> None:
        raise StateError("state.json: cannot write state: No space left on device")

    monkeypatch.setattr(matomo_rt.logstate, "save_state", refused)
    with pytest.raises(StateError), open_sources(config)[0] as source:
        source.run_pass()  # imported, quarantined "[1]", state refused; then the process dies
    monkeypatch.setattr(matomo_rt.logstate, "save_state", real_save)
    assert one_pass(config).caught_up  # a new process: the batch again
    assert [q["line"] for q in rig.quarantined()] == ["not json", "[1]"]
    assert rig.stats()["quarantined"] == 2


def test_an_oversized_line_is_quarantined_once_however_often_its_batch_is_retried(
    rig: Rig,
) -> None:
    """Issue 9, item 3: a line past MAX_LINE_BYTES is skipped while reading; its entry (and
    count) belongs to the commit of its batch, not to each reading of it."""
    from matomo_rt.pipeline import MAX_LINE_BYTES

    config = rig.write_config(batch_lines=100)
    huge = b'{"ip": "' + b"x" * MAX_LINE_BYTES + b'"}\n'
    rig.append([*lines_of(0, 3), huge, *lines_of(3, 5)])
    rig.set_control(fail="unreachable")
    (source,) = open_sources(config)
    with source:
        for _ in range(3):
            source.retry_at = 0.0
            assert source.run_pass().error is not None
        assert rig.quarantined() == [] and rig.stats().get("quarantined", 0) == 0
        rig.clear_control()
        source.retry_at = 0.0
        assert source.run_pass().caught_up
    assert rig.recorded() == lines_of(0, 5)
    [entry] = rig.quarantined()
    assert entry["reason"].startswith(f"line of {len(huge)} bytes")
    assert rig.stats()["quarantined"] == 1


def test_a_disk_that_refuses_the_in_flight_mark_sends_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No batch goes to import_logs.py unless the state can say it went: a full disk stops
    the log before anything reaches Matomo, and the batch is sent once when space is back."""
    import matomo_rt.logstate
    from matomo_rt.tail import StateError

    config = rig.write_config(batch_lines=100)
    rig.append(lines_of(0, 5))
    real_save = matomo_rt.logstate.save_state
    failing = [True]

    def save_state(path: Any, document: dict[str, Any]) -> None:
        if failing[0]:
            raise StateError("state.json: cannot write state: No space left on device")
        real_save(path, document)

    monkeypatch.setattr(matomo_rt.logstate, "save_state", save_state)
    (source,) = open_sources(config)
    with source:
        with pytest.raises(StateError):
            source.run_pass()
        assert rig.starts() == [] and rig.recorded() == []
        failing[0] = False
        assert source.run_pass().caught_up
    assert rig.recorded() == lines_of(0, 5)
    assert "in_flight" not in rig.state_doc()


def test_a_dead_batch_the_disk_refuses_to_count_releases_the_lock(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that finds a dead batch's mark and cannot save its count fails with the cause,
    and lets go of the log's lock: the next start in the same process (a reload, a retry) is
    not refused as if another matomo-rt held it."""
    import matomo_rt.logstate
    from matomo_rt.store import SourceLock
    from matomo_rt.tail import StateError

    config = rig.write_config(batch_lines=100)
    rig.append(lines_of(0, 3))
    (source,) = open_sources(config)
    with source:
        assert source.run_pass().caught_up
    state_path, lock_path, _ = state_paths(config, config.logs[0])
    document = json.loads(state_path.read_text())
    document["in_flight"] = {"since": time.time(), "lines": 3, "end": document["position"]}
    state_path.write_text(json.dumps(document))

    def disk_full(path: Any, document: dict[str, Any]) -> None:
        raise StateError(f"{path}: cannot write state: No space left on device")

    monkeypatch.setattr(matomo_rt.logstate, "save_state", disk_full)
    (source,) = open_sources(config)
    with pytest.raises(StateError, match="No space left"):
        source.open()
    lock = SourceLock(lock_path)
    lock.acquire()  # LockedError while the failed start still held it
    lock.release()
