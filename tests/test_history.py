"""`matomo-rt import-files`: closed files once each, by content, resumable, never a live log's.

The importer is the double (a real process); "imported" is checked against what it recorded.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from matomo_rt import history, meter
from matomo_rt.config import ConfigError, load
from matomo_rt.history import FileReader, survey, time_order
from matomo_rt.import_files import run_import_files
from matomo_rt.pipeline import MAX_LINE_BYTES, Source
from matomo_rt.tail.position import Position
from tests.test_pipeline import DOUBLE, TOKEN, log_line

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, "": open}


def lines(tag: str, n: int) -> list[bytes]:
    return [log_line(i, path=f"/{tag}/{i}") for i in range(n)]


def write(path: Path, data: bytes, mtime: float = 0.0) -> Path:
    suffix = next((s for s in (".gz", ".bz2", ".xz") if path.name.endswith(s)), "")
    with OPENERS[suffix](path, "wb") as fh:
        fh.write(data)
    if mtime:
        os.utime(path, (mtime, mtime))
    return path


class Rig:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.state = tmp / "state"
        self.record = tmp / "record"
        (tmp / "token").write_text(TOKEN)
        (tmp / "token").chmod(0o600)
        monkeypatch.setenv("IMPORT_DOUBLE_RECORD", str(self.record))
        monkeypatch.setenv("IMPORT_DOUBLE_CALLS", str(tmp / "calls"))
        monkeypatch.setenv("IMPORT_DOUBLE_CONTROL", str(tmp / "control.json"))
        monkeypatch.delenv("MATOMO_TOKEN_AUTH", raising=False)

    def config(self, logs: str = "", batch_lines: int = 50, flags: str = "") -> Any:
        path = self.tmp / "config.toml"
        path.write_text(
            f'[matomo]\nurl = "http://matomo.example"\nimport_logs = "{DOUBLE}"\n'
            f'python = "{sys.executable}"\ntoken_auth_file = "{self.tmp / "token"}"\n'
            f"[import]\nbatch_lines = {batch_lines}\n{flags}"
            f'[state]\ndir = "{self.state}"\n' + logs
        )
        return load(path)

    def recorded(self) -> list[bytes]:
        return self.record.read_bytes().splitlines(keepends=True) if self.record.exists() else []

    def run(self, config: Any, *paths: Path, **kw: Any) -> tuple[int, str]:
        out = io.StringIO()
        code = run_import_files(config, list(paths), out=out, err=io.StringIO(), **kw)
        return code, out.getvalue()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return Rig(tmp_path, monkeypatch)


def status_of(table: str, name: str) -> str:
    row = next(x for x in table.splitlines() if name in x.split()[0])
    return row


# -- identity and reading ---------------------------------------------------------------------


def test_identity_is_the_content_through_compression(tmp_path: Path) -> None:
    data = b"".join(lines("a", 40))
    plain = write(tmp_path / "a.log", data)
    packed = [write(tmp_path / f"a.log{s}", data) for s in (".gz", ".bz2", ".xz")]
    keys = {survey(p).key for p in [plain, *packed]}
    assert len(keys) == 1 and survey(plain).length == len(data)
    longer = write(tmp_path / "b.log", data + lines("b", 1)[0])
    assert survey(longer).key != survey(plain).key  # same head, other length


def test_damaged_compressed_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "x.log.gz"
    bad.write_bytes(gzip.compress(b"".join(lines("a", 50)))[:-20])
    with pytest.raises(ValueError, match="cannot decompress"):
        survey(bad)


def test_time_order_is_oldest_first(tmp_path: Path) -> None:
    a = write(tmp_path / "access.log.1", b"1\n", mtime=2000)
    b = write(tmp_path / "access.log.2.gz", b"2\n", mtime=1000)
    c = write(tmp_path / "access.log.3.gz", b"3\n", mtime=1000)
    order = [f.path for f in time_order([survey(p) for p in (a, b, c)])]
    assert order == [c, b, a]


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_file_reader_batches_resume_and_end_an_unterminated_line(
    tmp_path: Path, suffix: str
) -> None:
    data = b"".join(lines("a", 25)) + b"last line without newline"
    f = survey(write(tmp_path / f"x.log{suffix}", data))
    reader = FileReader(f)
    got: list[bytes] = []
    position = Position().with_current(f.generation)
    batches = 0
    while (position.current.offset or 0) < f.length:
        batch = reader.read_batch(position, 10, 1 << 20)
        got += list(batch.iter_lines())
        # a fresh reader resumes from the committed position as well as the open one
        if batches == 1:
            reader.close()
        position = batch.end
        batches += 1
    assert b"".join(got) == data + b"\n" and batches == 3
    assert position.current.offset == f.length
    half = reader.read_batch(Position().with_current(f.generation), 10, 1 << 20)
    assert half.position_after_lines(4).current.offset == len(b"".join(lines("a", 4)))
    assert reader.read_batch(position, 10, 1 << 20).lines == 0


def test_file_reader_skips_an_oversized_line_keeping_its_head(tmp_path: Path) -> None:
    long = b"x" * (MAX_LINE_BYTES + 5) + b"\n"
    data = lines("a", 1)[0] + long + lines("a", 3)[2] + b"y" * (MAX_LINE_BYTES + 3)
    f = survey(write(tmp_path / "x.log", data))
    reader = FileReader(f)
    position = Position().with_current(f.generation)
    out: list[bytes] = []
    held: list[tuple[bytes, int]] = []
    while (position.current.offset or 0) < f.length:
        batch = reader.read_batch(position, 10, 1 << 20)
        out += list(batch.iter_lines())
        held += [(head[:3], n) for _, head, n in batch.oversized]
        position = batch.end
    assert out == [lines("a", 1)[0], lines("a", 3)[2]]
    assert held == [(b"xxx", len(long)), (b"yyy", MAX_LINE_BYTES + 3)]


# -- the command ----------------------------------------------------------------------------------


def test_a_mix_of_files_is_imported_once_in_time_order(rig: Rig) -> None:
    config = rig.config(batch_lines=30)
    files = {
        "access.log.4.xz": lines("four", 20),
        "access.log.3.bz2": lines("three", 45),
        "access.log.2.gz": lines("two", 70),
        "access.log.1": lines("one", 61),
    }
    for age, (name, data) in enumerate(files.items()):
        write(rig.logs / name, b"".join(data), mtime=1000 + age)
    code, table = rig.run(config, *sorted(rig.logs.iterdir()))
    assert code == 0, table
    expected = [x for data in files.values() for x in data]
    assert rig.recorded() == expected  # every line once, oldest file first
    for name, data in files.items():
        row = status_of(table, name)
        assert row.split()[1:3] == [str(len(data)), str(len(data))] and row.endswith("imported")
    assert "core:archive --force-all-websites" in table
    # Again: nothing imported, each file "already imported".
    code, table = rig.run(config, *rig.logs.iterdir())
    assert code == 0 and rig.recorded() == expected
    assert all(status_of(table, n).endswith("already imported") for n in files)


def test_renamed_or_compressed_files_are_not_imported_again(rig: Rig) -> None:
    config = rig.config()
    plain = write(rig.logs / "access.log.1", b"".join(lines("a", 30)))
    assert rig.run(config, plain)[0] == 0
    packed = rig.logs / "archive-2024-06.log.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    moved = plain.rename(rig.logs / "renamed")
    code, table = rig.run(config, packed, moved)
    assert code == 0 and len(rig.recorded()) == 30
    assert status_of(table, "archive-2024-06.log.gz").endswith("already imported")
    assert "the same content as" in status_of(table, "renamed")


def test_an_interrupted_file_resumes_where_matomo_stopped(rig: Rig) -> None:
    """Matomo fails mid-batch: the lines before are committed; the next run sends the rest."""
    small_posts = 'flags = ["--recorder-max-payload-size=2"]\n'
    config = rig.config(batch_lines=10, flags=small_posts)
    data = lines("a", 45)
    f = write(rig.logs / "access.log.1.gz", b"".join(data))
    (rig.tmp / "control.json").write_text('{"fail": {"fatal_after_lines": 5}}')
    code, table = rig.run(config, f)
    assert code == 1 and "failed: HTTP Error 500" in status_of(table, "access.log.1.gz")
    assert rig.recorded() == data[:4]  # the POSTs before the failing one
    assert status_of(table, "access.log.1.gz").split()[1:3] == ["4", "4"]
    (rig.tmp / "control.json").unlink()
    code, table = rig.run(config, f)
    assert code == 0 and rig.recorded() == data
    assert status_of(table, "access.log.1.gz").split()[1:3] == ["45", "45"]


def test_a_failing_matomo_keeps_the_file_for_the_next_run(rig: Rig) -> None:
    config = rig.config(batch_lines=10)
    data = lines("a", 35)
    f = write(rig.logs / "old.log", b"".join(data))
    first = write(rig.logs / "older.log", b"".join(lines("b", 12)), mtime=1)
    (rig.tmp / "control.json").write_text('{"fail": "unreachable"}')
    code, table = rig.run(config, f, first)
    assert code == 1 and rig.recorded() == []
    assert "Connection refused" in status_of(table, "older.log")
    (rig.tmp / "control.json").unlink()
    code, table = rig.run(config, f, first)
    assert code == 0 and rig.recorded() == lines("b", 12) + data


def test_ignored_requests_are_counted_by_reason(rig: Rig) -> None:
    config = rig.config()
    data = [
        *lines("a", 3),
        log_line(90, status="404", path="/missing"),
        log_line(91, path="/style.css"),
        log_line(92, date="yesterday"),
        b"[1]\n",
    ]
    f = write(rig.logs / "x.log", b"".join(data))
    code, table = rig.run(config, f)
    row = status_of(table, "x.log")
    assert code == 0
    assert row.split()[1:3] == ["7", "4"]  # the 404 too (--enable-http-errors)
    assert "2 (invalid 1, static 1)" in row
    assert row.split()[-2] == "1"  # the JSON list is quarantined


# -- history and live never overlap --------------------------------------------------------------

LIVE = '[[logs]]\nname = "web"\npath = "{path}"\nstart_at = "{start_at}"\n'


def _open_pass(config: Any) -> None:
    config.state.dir.mkdir(exist_ok=True)
    with Source(config, config.logs[0], TOKEN) as source:
        source.run_pass()


def test_files_a_live_log_reads_are_refused(rig: Rig) -> None:
    live = write(rig.logs / "access.log", b"".join(lines("live", 5)))
    old = write(rig.logs / "access.log.1", b"".join(lines("old", 5)))
    config = rig.config(LIVE.format(path=live, start_at="oldest"))
    code, table = rig.run(config, live, old)
    assert code == 1 and rig.recorded() == []
    assert "refused: it is the live file of log web" in status_of(table, "access.log")
    assert "start_at = oldest" in status_of(table, "access.log.1")


def test_history_left_by_the_first_run_is_importable_but_not_what_the_log_read(
    rig: Rig,
) -> None:
    live = write(rig.logs / "access.log", b"".join(lines("live", 5)))
    old = write(rig.logs / "access.log.1", b"".join(lines("old", 5)))
    config = rig.config(LIVE.format(path=live, start_at="end"))
    _open_pass(config)  # first run: access.log.1 is history, the live file starts at its end
    with open(live, "ab") as fh:
        fh.write(b"".join(lines("new", 3)))
    live.rename(rig.logs / "access.log.0")  # rotated: the log reads it to its end
    write(live, b"".join(lines("newer", 2)))
    _open_pass(config)
    assert rig.recorded() == lines("new", 3) + lines("newer", 2)
    code, table = rig.run(config, old, rig.logs / "access.log.0")
    assert code == 1
    assert status_of(table, "access.log.1").endswith("imported")
    assert "log web imported it already" in status_of(table, "access.log.0")
    assert rig.recorded()[-5:] == lines("old", 5)


def test_a_generation_the_log_read_in_part_is_one_it_is_reading_not_imported_already(
    rig: Rig,
) -> None:
    """Lines the web server wrote to the old file after its rename: the log moved past the
    generation but reads those at its next pass, so import-files must not call it imported."""
    live = write(rig.logs / "access.log", b"".join(lines("live", 3)))
    config = rig.config(LIVE.format(path=live, start_at="end"))
    _open_pass(config)  # first run: starts at the end
    with open(live, "ab") as fh:
        fh.write(b"".join(lines("new", 3)))
    _open_pass(config)
    rotated = live.rename(rig.logs / "access.log.0")
    write(live, b"".join(lines("newer", 2)))
    _open_pass(config)  # access.log.0 finished, read to its end as it was
    with open(rotated, "ab") as fh:  # nginx not yet reopened: late lines into the old file
        fh.write(b"".join(lines("late", 2)))
    size = rotated.stat().st_size
    code, table = rig.run(config, rotated)
    assert code == 1
    said = status_of(table, "access.log.0")
    assert "log web is reading it" in said and "imported it already" not in said
    assert f"of its {size:,} bytes" in said
    _open_pass(config)
    assert rig.recorded() == lines("new", 3) + lines("newer", 2) + lines("late", 2)


def test_format_and_site_options(rig: Rig) -> None:
    config = rig.config()
    f = write(
        rig.logs / "apache.log",
        b'1.2.3.4 - - [01/Jun/2024:12:00:00 +0000] "GET / HTTP/1.1" 200 5\n',
    )
    with pytest.raises(ConfigError, match="--idsite"):
        rig.run(config, f, format_name="common")
    with pytest.raises(ConfigError, match="not a format"):
        rig.run(config, f, format_name="apache")
    code, _ = rig.run(config, f, format_name="common", idsite=3)
    assert code == 0 and len(rig.recorded()) == 1
    calls = (rig.tmp / "calls").read_text()
    assert "--log-format-name=common" in calls and "--idsite=3" in calls


def test_cli_names_missing_files_and_exits_66(rig: Rig) -> None:
    config = rig.config()
    ok = write(rig.logs / "a.log", b"".join(lines("a", 2)))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "matomo_rt",
            "-c",
            str(config.source),
            "import-files",
            str(ok),
            str(rig.logs / "missing.log"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 66, done.stderr
    assert "missing.log" in done.stdout and "no such file" in done.stdout
    assert status_of(done.stdout, "a.log").endswith("imported")


# -- start_at = "oldest" -------------------------------------------------------------------------


def _generations(rig: Rig) -> tuple[Path, list[bytes]]:
    """access.log with .3.gz (oldest), .2.gz, .1 and the live file; the lines in time order."""
    gens = [("access.log.3.gz", "three", 1000), ("access.log.2.gz", "two", 2000)]
    gens += [("access.log.1", "one", 3000)]
    expected: list[bytes] = []
    for name, tag, mtime in gens:
        data = lines(tag, 23)
        write(rig.logs / name, b"".join(data), mtime=mtime)
        expected += data
    live = write(rig.logs / "access.log", b"".join(lines("live", 17)))
    return live, [*expected, *lines("live", 17)]


def test_oldest_imports_every_generation_once_then_follows_the_live_file(rig: Rig) -> None:
    live, expected = _generations(rig)
    config = rig.config(LIVE.format(path=live, start_at="oldest"), batch_lines=10)
    _open_pass(config)
    assert rig.recorded() == expected
    # The next rotation and new lines: only those, once.
    live.rename(rig.logs / "access.log.0")
    write(live, b"".join(lines("after", 4)))
    _open_pass(config)
    _open_pass(config)
    assert rig.recorded() == [*expected, *lines("after", 4)]


def test_oldest_resumes_mid_history_after_a_failure(rig: Rig) -> None:
    live, expected = _generations(rig)
    config = rig.config(
        LIVE.format(path=live, start_at="oldest"),
        batch_lines=10,
        flags='flags = ["--recorder-max-payload-size=2"]\n',
    )
    control = rig.tmp / "control.json"
    control.write_text('{"fail": {"fatal_after_lines": 7}}')
    _open_pass(config)  # the first batch fails after 6 lines
    assert rig.recorded() == expected[:6]
    control.unlink()
    _open_pass(config)
    assert rig.recorded() == expected


def test_oldest_leaves_out_what_import_files_imported(rig: Rig) -> None:
    live, expected = _generations(rig)
    assert rig.run(rig.config(), rig.logs / "access.log.2.gz")[0] == 0  # no [[logs]] yet
    config = rig.config(LIVE.format(path=live, start_at="oldest"), batch_lines=10)
    _open_pass(config)
    two = lines("two", 23)
    assert rig.recorded() == two + [x for x in expected if x not in two]


def test_seek_to_oldest_reads_the_history_again(rig: Rig) -> None:
    live, expected = _generations(rig)
    config = rig.config(LIVE.format(path=live, start_at="end"), batch_lines=100)
    _open_pass(config)
    assert rig.recorded() == []
    with Source(config, config.logs[0], TOKEN) as source:
        source.seek("oldest")
    _open_pass(config)
    assert rig.recorded() == expected


def test_ctrl_c_stops_after_the_running_batch_and_the_next_run_resumes(rig: Rig) -> None:
    """SIGINT: the batch in flight finishes and is committed; nothing is sent twice."""
    import signal
    import time

    config = rig.config(batch_lines=20)
    data = lines("a", 400)
    f = write(rig.logs / "big.log.gz", b"".join(data))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    argv = [sys.executable, "-m", "matomo_rt", "-c", str(config.source), "import-files", str(f)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    calls = rig.tmp / "calls"
    deadline = time.monotonic() + 30
    while not (calls.exists() and calls.read_text().count('"event": "start"') >= 2):
        assert time.monotonic() < deadline and proc.poll() is None, "no importer run started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert b"stopped (resumes where it stopped)" in out
    assert b"stopping after the running batch" in err
    stopped_at = len(rig.recorded())
    assert 0 < stopped_at < len(data)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert rig.recorded() == data  # each line once, in order


def test_a_file_history_started_stays_history_s_under_start_at_oldest(rig: Rig) -> None:
    """import-files interrupted, then a log with start_at = oldest: the log leaves the file
    alone, and the next import-files run finishes it."""
    live, expected = _generations(rig)
    two = lines("two", 23)
    control = rig.tmp / "control.json"
    control.write_text('{"fail": {"fatal_after_lines": 7}}')
    small = 'flags = ["--recorder-max-payload-size=2"]\n'
    code, _ = rig.run(rig.config(flags=small), rig.logs / "access.log.2.gz")
    assert code == 1 and rig.recorded() == two[:6]
    control.unlink()
    config = rig.config(LIVE.format(path=live, start_at="oldest"), flags=small)
    _open_pass(config)
    code, table = rig.run(config, rig.logs / "access.log.2.gz")
    assert code == 0, table
    assert Counter(rig.recorded()) == Counter(expected)


# -- what it shows while it works -----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _three_files(rig: Rig) -> list[Path]:
    return [
        write(rig.logs / "access.log.3.xz", b"".join(lines("three", 300)), mtime=1000),
        write(rig.logs / "access.log.2.gz", b"".join(lines("two", 300)), mtime=1001),
        write(rig.logs / "access.log.1", b"".join(lines("one", 300)), mtime=1002),
    ]


def _percentages(draws: list[str], label: str) -> list[int]:
    return [int(d.split(label, 1)[1].split("%", 1)[0]) for d in draws if f" {label} " in d]


def test_checking_the_files_shows_a_bar_on_a_terminal(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is read whole for its identity before the import starts: on weeks of .gz
    files that takes minutes, measured in bytes on disk, with the file being read."""
    monkeypatch.setattr(history, "READ_BYTES", 4096)  # many pieces from small files
    monkeypatch.setattr(meter, "TTY_EVERY", 0.0)
    files = _three_files(rig)
    terminal = _Terminal()
    code = run_import_files(rig.config(batch_lines=200), files, out=io.StringIO(), err=terminal)
    assert code == 0 and len(rig.recorded()) == 900
    draws = [d for d in terminal.getvalue().split("\r") if d.strip()]
    checking = _percentages(draws, "checking")
    assert len(checking) >= 6 and checking == sorted(checking) and checking[-1] == 100
    assert all(d.startswith("[") for d in draws)
    shown = terminal.getvalue()
    for n, f in enumerate(files, 1):
        assert f"file {n}/3 {f.name}" in shown
    on_disk = sum(f.stat().st_size for f in files)
    assert f"checking 100% {on_disk / 1e6:,.1f} of {on_disk / 1e6:,.1f} MB" in shown
    assert _percentages(draws, "importing")[-1] == 100  # then the import's own bar
    assert shown.index(" checking ") < shown.index(" importing ")
    assert " lines/s" in draws[-1]


def test_checking_the_files_writes_progress_lines_elsewhere(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "READ_BYTES", 4096)
    monkeypatch.setattr(meter, "PROGRESS_EVERY", 0.0)  # a line at every piece read
    err = io.StringIO()
    code = run_import_files(rig.config(), _three_files(rig), out=io.StringIO(), err=err)
    assert code == 0
    checking = [x for x in err.getvalue().splitlines() if x.startswith("import-files: checking")]
    assert len(checking) >= 6 and "\r" not in err.getvalue()
    assert checking[-1].startswith("import-files: checking 100%")
    assert checking[-1].endswith("3 files")


def test_a_quick_check_writes_no_progress_lines(rig: Rig) -> None:
    err = io.StringIO()
    assert run_import_files(rig.config(), _three_files(rig), out=io.StringIO(), err=err) == 0
    assert " checking " not in err.getvalue()
