"""Fixtures for the ``vdimg`` tests: run the command in-process."""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Iterator

import pytest

from vdgui.cli import progress
from vdgui.cli.main import main

from .helpers import Result, Runner


@pytest.fixture
def vdimg(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Runner:
    """``vdimg(*args, stdin=b"")``: run main() in-process; a :class:`Result`."""

    def run(*args: str | os.PathLike[str], stdin: bytes | None = None) -> Result:
        capsysbinary.readouterr()  # drop anything printed before
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        rc = main([os.fspath(a) for a in args])
        out, err = capsysbinary.readouterr()
        return Result(rc, out, err.decode())

    return run


@pytest.fixture
def ctrl_c(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ctrl-C is pressed when a progress bar is first drawn (run with --progress)."""

    def press(self: progress.ProgressBar, done: int, total: int, stage: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(progress.ProgressBar, "__call__", press)
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
