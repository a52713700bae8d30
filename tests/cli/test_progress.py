"""The progress bar and the Ctrl-C handling shared by long commands."""

from __future__ import annotations

import argparse
import io
import os
import signal

import pytest

from vdgui.cli import progress
from vdgui.engine import Cancelled


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_terminal_redraws_one_line() -> None:
    stream = FakeTerminal()
    bar = progress.ProgressBar("copying x", stream)
    for done in (0, 50, 100):
        bar(done, 100, "data")
    bar.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "copying x (data)" in text and "100.0%" in text and "[" in text


def test_bar_elsewhere_prints_tenths() -> None:
    stream = io.StringIO()
    bar = progress.ProgressBar("copying", stream)
    for done in range(0, 101, 5):
        bar(done, 100, "")
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert lines == [f"copying: {p}%" for p in range(0, 101, 10)]


def test_bar_with_zero_total() -> None:
    stream = io.StringIO()
    progress.ProgressBar("x", stream)(0, 0, "")
    assert stream.getvalue() == "x: 100%\n"


@pytest.mark.parametrize("tty, flag, json_output, expected", [
    (True, False, False, True), (False, False, False, False), (False, True, False, True),
    (False, True, True, False), (True, False, True, True)])
def test_wanted(monkeypatch: pytest.MonkeyPatch, tty: bool, flag: bool, json_output: bool,
                expected: bool) -> None:
    monkeypatch.setattr("sys.stderr", FakeTerminal() if tty else io.StringIO())
    args = argparse.Namespace(progress=flag)
    assert progress.wanted(args, json_output) is expected


def test_first_ctrl_c_cancels_second_interrupts() -> None:
    with progress.operation("x", False) as prog:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Cancelled):
            prog.update(1, 2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_operation_draws_and_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress.operation("work", True) as prog:
        prog.update(1, 2, "half")
        prog.update(2, 2, "half")
    assert terminal.getvalue().endswith("\n") and "work (half)" in terminal.getvalue()


def test_ctrl_c_after_the_work_is_done_is_ignored() -> None:
    """The engine's last report ("done") comes once the work is complete: a Ctrl-C
    then must not make a finished operation look cancelled."""
    with progress.operation("x", False) as prog:
        os.kill(os.getpid(), signal.SIGINT)
        prog.update(1, 1, progress.DONE)
        with pytest.raises(Cancelled):
            prog.update(0, 1, "copying")
