"""Tests for matomo_rt.execute: real processes, deadlines instead of fixed sleeps."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest

from matomo_rt import execute
from matomo_rt.execute import Completed, ExecError, kill_all_children, run

PY = sys.executable
SH = shutil.which("sh") or "/bin/sh"
REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def py(code: str, *args: str) -> list[str]:
    """argv running a Python snippet in the interpreter running the tests."""
    return [PY, "-c", textwrap.dedent(code), *args]


def wait_until(predicate: Callable[[], bool], deadline: float = 5.0, what: str = "") -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for {what or predicate}")
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (zombies count as gone: PID 1 may not reap them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


@pytest.fixture(autouse=True)
def _no_leftover_children():
    yield
    assert execute.running_children() == []


# --------------------------------------------------------------------------------------
# exit codes, output, environment, terminal
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_code_is_a_result_not_an_exception(code: int) -> None:
    result = run([SH, "-c", f"exit {code}"], timeout=10)
    assert isinstance(result, Completed)
    assert result.returncode == code
    assert result.ok is (code == 0)
    assert not result.timed_out
    assert result.killed_signal is None
    assert result.argv == (SH, "-c", f"exit {code}")
    assert result.duration >= 0


def test_stdout_and_stderr_are_separate_bytes() -> None:
    result = run([SH, "-c", "printf 'out\\n'; printf 'err\\n' >&2"], timeout=10)
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


def test_no_pseudo_terminal_and_own_session() -> None:
    code = """
        import os
        print(os.isatty(0), os.isatty(1), os.isatty(2))
        print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())
    """
    result = run(py(code), timeout=10)
    assert result.stdout.split(b"\n")[:2] == [b"False False False", b"True True"]


def test_the_child_gets_default_signal_dispositions() -> None:
    """sh ignores SIGHUP in background children, and an ignored signal stays ignored across
    exec: the importer could not be stopped by a hang-up like any other process."""
    code = "import signal; print(signal.getsignal(signal.SIGHUP) == signal.SIG_DFL)"
    assert run(py(code), timeout=30).stdout.strip() == b"True"


def test_environment_is_extended_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRT_INHERITED", "from-parent")
    monkeypatch.setenv("MRT_OVERRIDDEN", "old")
    code = """
        import os
        for k in ("MRT_INHERITED", "MRT_OVERRIDDEN", "MRT_EXTRA"):
            print(k, os.environ.get(k))
    """
    result = run(py(code), env_extra={"MRT_EXTRA": "x y", "MRT_OVERRIDDEN": "new"}, timeout=10)
    assert result.stdout.decode().splitlines() == [
        "MRT_INHERITED from-parent",
        "MRT_OVERRIDDEN new",
        "MRT_EXTRA x y",
    ]
    assert os.environ["MRT_OVERRIDDEN"] == "old"  # our own environment is untouched


def test_path_from_env_extra_is_used_to_find_the_program(tmp_path: Path) -> None:
    prog = tmp_path / "mrt-hello"
    prog.write_text("#!/bin/sh\necho hello\n")
    prog.chmod(0o755)
    result = run(["mrt-hello"], env_extra={"PATH": f"{tmp_path}:{os.defpath}"}, timeout=10)
    assert result.stdout == b"hello\n"


def test_cwd(tmp_path: Path) -> None:
    result = run(py("import os; print(os.getcwd())"), cwd=str(tmp_path), timeout=10)
    assert result.stdout.decode().strip() == str(tmp_path.resolve())


def test_without_stdin_the_child_reads_eof() -> None:
    result = run(py("import sys; print(len(sys.stdin.buffer.read()))"), timeout=10)
    assert result.stdout == b"0\n"


def test_argument_list_is_not_a_shell_string() -> None:
    weird = "a b; echo injected $HOME 'q' \"dq\" \\ *"
    result = run(py("import sys; sys.stdout.write(sys.argv[1])", weird), timeout=10)
    assert result.stdout.decode() == weird


# --------------------------------------------------------------------------------------
# stdin streaming
# --------------------------------------------------------------------------------------

ECHO_CHILD = """
    import hashlib, sys
    out = sys.stdout.buffer
    out.write(b"P" * (4 * 1024 * 1024))   # much more than a pipe holds, before reading
    out.flush()
    h, n = hashlib.sha256(), 0
    while True:
        block = sys.stdin.buffer.read1(1024 * 1024)
        if not block:
            break
        h.update(block)
        n += len(block)
        out.write(block)
    out.flush()
    sys.stderr.write(f"{n} {h.hexdigest()}\\n")
"""


def test_large_stdin_streamed_while_child_writes_lots_of_output() -> None:
    block = bytes(range(256)) * (32 * 1024)  # 8 MiB
    chunks = [block] * 6 + [block[: 2 * MiB + 123]]  # ~50 MiB, the same object reused
    expected = hashlib.sha256()
    for chunk in chunks:
        expected.update(chunk)
    total = sum(map(len, chunks))
    handed_out = []

    def source():
        for chunk in chunks:
            handed_out.append(len(chunk))
            yield chunk

    result = run(py(ECHO_CHILD), stdin=source(), timeout=60)

    assert result.returncode == 0, result.describe()
    assert result.stderr.decode().split() == [str(total), expected.hexdigest()]
    assert sum(handed_out) == total
    # stdout was 4 MiB + 50 MiB; the default max_output keeps the last 16 MiB.
    assert len(result.stdout) == 16 * MiB
    assert result.stdout == b"".join(chunks[-3:])[-16 * MiB :]


def test_stdin_accepts_bytearray_and_memoryview() -> None:
    chunks = [b"ab", bytearray(b"cd"), memoryview(b"xxef")[2:], b""]
    result = run(py("import sys; print(sys.stdin.read())"), stdin=chunks, timeout=10)
    assert result.stdout == b"abcdef\n"


@pytest.mark.timing
@pytest.mark.parametrize(
    "code, expected",
    [
        ("import sys; sys.stdin.buffer.read(10); sys.exit(7)", 7),
        ("import os, time; os.close(0); time.sleep(0.2); print('done')", 0),
    ],
    ids=["exits-early", "closes-stdin"],
)
def test_child_that_stops_reading_is_not_an_error(code: str, expected: int) -> None:
    big = b"x" * (8 * MiB)
    start = time.monotonic()
    result = run(py(code), stdin=iter([big] * 7), timeout=30)
    assert result.returncode == expected
    assert not result.timed_out
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("code", "consumed"),
    [
        ("import sys; sys.exit(1)", 0),
        ("import os, sys\nn = 0\nwhile n < 10: n += len(os.read(0, 10 - n))\nsys.exit(3)", 10),
        ("import sys; sys.stdin.buffer.read()", 3 * MiB),
    ],
    ids=["never-reads", "reads-10-bytes", "reads-all"],
)
def test_stdin_consumed_counts_the_bytes_the_child_read(code: str, consumed: int) -> None:
    """Whether the child read any input decides whether a failed import may have sent some."""
    result = run(py(code), stdin=iter([b"x" * MiB] * 3), timeout=30)
    assert result.stdin_consumed == consumed


def test_stdin_consumed_is_none_without_stdin() -> None:
    assert run(py("pass"), timeout=30).stdin_consumed is None


def test_too_many_open_files_is_an_exec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE before the child exists: it never ran, so this is a failure to start."""

    def no_pipe() -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pipe", no_pipe)
    with pytest.raises(ExecError, match=r"cannot run .*: too many open files"):
        run(py("pass"), stdin=[b"x\n"], timeout=30)


@pytest.mark.parametrize("thread", ["stdin feeder", "timeout"])
def test_a_thread_that_cannot_start_does_not_leak_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    pidfile = tmp_path / "pid"
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith(thread):
            wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="the child's pid")
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    code = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); sys.stdin.read()"
    with pytest.raises(ExecError, match="cannot start a thread"):
        run(py(code, str(pidfile)), stdin=[b"x\n"], timeout=30, grace=1)
    monkeypatch.undo()
    assert gone(int(pidfile.read_text()))


def test_failing_stdin_source_stops_the_child_before_eof(tmp_path: Path) -> None:
    pidfile, eof_marker = tmp_path / "pid", tmp_path / "eof"
    code = """
        import os, sys
        # Written whole, then renamed: the parent may stop us the moment the name exists.
        open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        sys.stdin.buffer.read()
        open(sys.argv[2], "w").write("saw EOF: would import a truncated batch")
    """

    def source():
        yield b"line 1\n"
        wait_until(pidfile.exists, what="child pid file")
        raise OSError("log file vanished")

    with pytest.raises(OSError, match="log file vanished"):
        run(py(code, str(pidfile), str(eof_marker)), stdin=source(), timeout=30, grace=1)
    assert not eof_marker.exists()
    assert gone(int(pidfile.read_text()))


# --------------------------------------------------------------------------------------
# timeouts, process groups, stopping
# --------------------------------------------------------------------------------------

SPAWNS_GRANDCHILD = """
    import signal, subprocess, sys, time
    if sys.argv[1] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # inherited by the grandchild
    # Popen'ed children are not killed when their parent dies: it would survive a kill
    # of the child's pid alone.
    grandchild = subprocess.Popen(["sleep", "60"])
    print(grandchild.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.timing
def test_timeout_kills_the_whole_group_including_grandchild() -> None:
    start = time.monotonic()
    result = run(py(SPAWNS_GRANDCHILD, "obey-term"), timeout=0.5, grace=2)
    assert time.monotonic() - start < 3
    assert result.timed_out
    assert result.returncode is None
    assert result.killed_signal == signal.SIGTERM
    grandchild = int(result.stdout)
    wait_until(lambda: gone(grandchild), 2, "grandchild to die")
    assert "timed out after" in result.describe()


@pytest.mark.timing
def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    start = time.monotonic()
    result = run(py(SPAWNS_GRANDCHILD, "ignore-term"), timeout=0.5, grace=0.3)
    assert time.monotonic() - start >= 0.8
    assert result.timed_out
    assert result.returncode is None
    assert result.killed_signal == signal.SIGKILL
    grandchild = int(result.stdout)
    wait_until(lambda: gone(grandchild), 2, "grandchild to die")


def test_processes_left_behind_by_a_finished_child_are_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="matomo_rt.execute")
    result = run([SH, "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], timeout=10, grace=1)
    assert result.returncode == 0
    wait_until(lambda: gone(int(result.stdout)), 2, "left-behind sleep to die")
    assert "left processes in its group" in caplog.text


def test_kill_all_children_stops_running_children() -> None:
    results: list[Completed] = []
    worker = threading.Thread(
        target=lambda: results.append(run([SH, "-c", "sleep 30"], timeout=30)), daemon=True
    )
    worker.start()
    wait_until(lambda: execute.running_children() != [], what="child to start")
    (pid, pgid), *_ = execute.running_children()
    assert pid == pgid
    kill_all_children(grace=1)
    worker.join(5)
    assert not worker.is_alive()
    (result,) = results
    assert result.returncode is None
    assert result.killed_signal == signal.SIGTERM
    assert not result.timed_out
    assert gone(pid)


def test_killed_by_a_foreign_signal_has_no_returncode() -> None:
    result = run([SH, "-c", "kill -USR1 $$; sleep 5"], timeout=10)
    assert result.returncode is None
    assert result.killed_signal == signal.SIGUSR1
    assert not result.timed_out
    assert "killed by SIGUSR1" in result.describe()


class _Interrupt(BaseException):
    pass


def _raise_interrupt(signum, frame):
    raise _Interrupt


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_interrupted_wait_stops_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(30)"
    old = signal.signal(signal.SIGALRM, _raise_interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(_Interrupt):
            run(py(code, str(pidfile)), timeout=30, grace=1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert gone(int(pidfile.read_text()))


@linux_only
def test_child_dies_when_we_are_killed_with_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    wrapper_code = """
        import sys
        from matomo_rt.execute import run
        child = '''
        import os, sys, time
        open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(60)
        '''
        run([sys.executable, "-c", child, sys.argv[1]], timeout=120)
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    wrapper = subprocess.Popen(
        [PY, "-c", textwrap.dedent(wrapper_code), str(pidfile)],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: pidfile.exists() or wrapper.poll() is not None, 10, "child pid")
        assert wrapper.poll() is None, "wrapper failed before starting its child"
        child = int(pidfile.read_text())
        assert not gone(child)
        wrapper.kill()  # SIGKILL: no Python code of ours runs
        wrapper.wait(5)
        wait_until(lambda: gone(child), 5, "child to die with its parent")
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


# --------------------------------------------------------------------------------------
# start failures
# --------------------------------------------------------------------------------------


def _exec_error(argv: list[str], **kwargs) -> ExecError:
    with pytest.raises(ExecError) as info:
        run(argv, timeout=10, **kwargs)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"cannot run {error.program}: ")
    # Nothing of sh's exceptions (full command line, child traceback) is attached.
    assert error.__cause__ is None and error.__context__ is None
    formatted = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert "Original exception" not in formatted and "sh." not in formatted
    return error


def test_missing_program() -> None:
    error = _exec_error(["/nonexistent/prog", "--x"])
    assert str(error) == "cannot run /nonexistent/prog: no such file"


def test_program_not_in_path() -> None:
    error = _exec_error(["mrt-no-such-program-xyz"])
    assert str(error) == "cannot run mrt-no-such-program-xyz: not found in PATH"


def test_program_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    assert "permission denied" in str(_exec_error([str(script)]))


def test_program_is_a_directory(tmp_path: Path) -> None:
    assert str(_exec_error([str(tmp_path)])).endswith(": is a directory")


def test_missing_interpreter_on_shebang_line(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    error = _exec_error([str(script)])
    assert str(error).startswith(f"cannot run {script}: no such file")
    assert "interpreter" in str(error)


def test_missing_cwd(tmp_path: Path) -> None:
    error = _exec_error([SH, "-c", "true"], cwd=str(tmp_path / "missing"))
    assert "working directory" in str(error) and "missing" in str(error)


def test_not_an_executable_format(tmp_path: Path) -> None:
    binary = tmp_path / "garbage"
    binary.write_bytes(b"\x00\x01 not a program")
    binary.chmod(0o755)
    assert str(_exec_error([str(binary)])).endswith(": exec format error")


def test_cwd_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    error = _exec_error([SH, "-c", "true"], cwd=str(tmp_path / "file"))
    assert str(error).endswith("file: not a directory")


def test_undecodable_argument_bytes_reach_the_child_unchanged() -> None:
    arg = os.fsdecode(b"caf\xe9")  # a Latin-1 file name: a surrogate escape in Python
    code = "import os, sys; sys.stdout.buffer.write(os.fsencode(sys.argv[1]))"
    assert run(py(code, arg), timeout=10).stdout == b"caf\xe9"


@linux_only
def test_no_descriptor_or_thread_leaks(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)

    def failing_source():
        yield b"x"
        raise ValueError("broken source")

    def exercise() -> None:
        run([SH, "-c", "echo hi"], stdin=[b"data\n"], timeout=10)
        run([SH, "-c", "exit 0"], stdin=iter([b"x" * MiB] * 3), timeout=10)
        run([SH, "-c", "sleep 5"], timeout=0.1, grace=0.5)
        for argv in ([str(script)], ["/nonexistent/prog"]):
            with pytest.raises(ExecError):
                run(argv, timeout=10)
        with pytest.raises(ValueError):
            run([SH, "-c", "cat >/dev/null"], stdin=failing_source(), timeout=10, grace=0.5)

    exercise()  # warm up (imports, lazily created objects)
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(3):
        exercise()
    assert len(os.listdir("/proc/self/fd")) == fds
    # sh cancels (without joining) a 2 s timer thread per run: it ends a moment later.
    wait_until(lambda: threading.active_count() <= threads, 2, "helper threads to end")


# --------------------------------------------------------------------------------------
# redaction
# --------------------------------------------------------------------------------------

SECRET = "s3cr3t/t0ken+x&y"


def test_secrets_never_appear_in_describe_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    argv = [SH, "-c", 'echo "$1"; echo "fatal: token $1 refused" >&2; exit 1', "sh", SECRET]
    result = run(argv, timeout=10, secrets=[SECRET])
    assert result.returncode == 1
    assert SECRET.encode() in result.stdout  # the raw data is there for the caller
    for text in (result.describe(), result.describe([SECRET]), repr(result), caplog.text):
        assert SECRET not in text
    assert "***" in result.describe()
    assert "stderr: fatal: token *** refused" in result.describe()
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_describe_redacts_secrets_given_later() -> None:
    result = Completed(("prog", "--key", "k3y"), 2, b"", b"bad k3y\n", False, None, 0.5)
    assert result.describe(["k3y"]) == (
        "prog --key ***: exit 2 in 0.50s (stdout 0 B, stderr 8 B); stderr: bad ***"
    )


def test_exec_error_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    error = _exec_error([f"/nonexistent/{SECRET}/prog"], secrets=[SECRET])
    assert SECRET not in str(error)
    assert str(error) == "cannot run /nonexistent/***/prog: no such file"
    assert SECRET not in caplog.text


# --------------------------------------------------------------------------------------
# output bounds
# --------------------------------------------------------------------------------------


def test_max_output_keeps_the_tail() -> None:
    code = """
        import sys
        for i in range(100000):
            sys.stdout.write(f"line {i}\\n")
            if i % 10 == 0:
                sys.stderr.write(f"warn {i}\\n")
    """
    result = run(py(code), timeout=30, max_output=1000)
    expected_out = "".join(f"line {i}\n" for i in range(100000)).encode()
    expected_err = "".join(f"warn {i}\n" for i in range(0, 100000, 10)).encode()
    assert result.stdout == expected_out[-1000:]
    assert result.stderr == expected_err[-1000:]
    assert result.stdout.endswith(b"line 99999\n")
