"""matomo_rt.meter: a bar rewritten in place on a terminal, a line every PROGRESS_EVERY seconds
elsewhere, an ETA from the rate so far (a fake clock: nothing here waits)."""

from __future__ import annotations

import io

from matomo_rt import meter
from matomo_rt.meter import Meter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_elsewhere_a_line_every_interval_and_a_closing_line() -> None:
    out, clock = io.StringIO(), Clock()
    m = Meter(out, 1_000_000, "checking", clock=clock)
    for second in range(1, 26):  # 40 kB a second for 25 s
        clock.now += 1
        m.update(second * 40_000, "file 1/1 a.log.gz")
    assert out.getvalue().splitlines() == [
        "import-files: checking  40% 0.4 of 1.0 MB, file 1/1 a.log.gz, 15s left",
        "import-files: checking  80% 0.8 of 1.0 MB, file 1/1 a.log.gz, 5s left",
    ]
    m.finish()
    assert out.getvalue().splitlines()[-1] == (
        "import-files: checking 100% 1.0 of 1.0 MB, file 1/1 a.log.gz"
    )


def test_a_quick_step_writes_nothing_elsewhere() -> None:
    out, clock = io.StringIO(), Clock()
    m = Meter(out, 1000, "checking", clock=clock)
    clock.now += 2
    m.update(1000)
    m.finish()
    assert out.getvalue() == ""


def test_on_a_terminal_a_bar_redrawn_in_place_then_a_newline() -> None:
    out, clock = Terminal(), Clock()
    m = Meter(out, 4_000_000, "importing", clock=clock)
    for n in range(1, 5):
        clock.now += 0.5
        m.update(n * 1_000_000, f"file {n}/4")
    m.finish()
    text = out.getvalue()
    draws = [d for d in text.split("\r") if d]
    assert (
        draws[0] == "[######..................] importing  25% 1.0 of 4.0 MB, file 1/4, 2s left   "
    )
    assert draws[-1].startswith("[########################] importing 100% 4.0 of 4.0 MB, file 4/4")
    assert text.endswith("\n") and text.count("\n") == 1


def test_a_terminal_is_redrawn_at_most_every_tty_interval_unless_forced() -> None:
    out, clock = Terminal(), Clock()
    m = Meter(out, 100, "checking", clock=clock)
    clock.now += meter.TTY_EVERY / 2
    m.update(10)
    assert out.getvalue() == ""
    m.update(20, force=True)
    assert "20%" in out.getvalue()


def test_the_eta_reads_at_a_glance() -> None:
    assert [meter.eta(s) for s in (5, 59.4, 600, 3599, 3600, 12_000)] == [
        "5s",
        "59s",
        "10m",
        "60m",
        "1h 0m",
        "3h 20m",
    ]
