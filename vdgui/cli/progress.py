"""Progress bars on stderr, and Ctrl-C as a clean cancellation.

Long commands run their engine call inside :func:`operation`, which yields a
:class:`vdgui.engine.Progress`.  While it runs, the first Ctrl-C only sets the
progress's cancel token, so the engine stops at a safe point with
:class:`~vdgui.engine.Cancelled` (a create removes its half-made file); a second
Ctrl-C interrupts at once.  A Ctrl-C that comes only when the engine reports
its last step ("done") is ignored: the work is complete by then, and reporting it
as cancelled would hide that it happened.  The bar is drawn only when asked for (see
:func:`wanted`): redrawn in place on a terminal, one line per tenth otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import threading
import time
from typing import Iterator, TextIO

from vdgui.engine import CancelToken, Progress


def wanted(args: argparse.Namespace, json_output: bool = False) -> bool:
    """The contract's rule: on a terminal or with ``--progress``, never for JSON
    output on a non-terminal."""
    tty = sys.stderr.isatty()
    if json_output and not tty:
        return False
    return tty or bool(getattr(args, "progress", False))


class ProgressBar:
    """A ``Progress`` callback drawing ``label (stage) [####    ]  45%``."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._drawn = False
        self._last_tenth = -1
        self._started = time.monotonic()

    def __call__(self, done: int, total: int, stage: str) -> None:
        fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        text = f"{self.label} ({stage})" if stage else self.label
        if self.tty:
            self._redraw(text, fraction)
        else:
            tenth = int(fraction * 10)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(f"{text}: {tenth * 10}%\n")
                self.stream.flush()

    def _redraw(self, text: str, fraction: float) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        tail = f" {fraction * 100:5.1f}% {self._elapsed()}"
        room = max(columns - len(text) - len(tail) - 4, 10)
        filled = int(room * fraction)
        bar = "#" * filled + "." * (room - filled)
        self.stream.write(f"\r{text} [{bar}]{tail}"[:columns + 1])
        self.stream.flush()
        self._drawn = True

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self._started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def finish(self) -> None:
        """End the bar's line, so later output starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


#: The stage of the engine's last report, sent once an operation's work is complete.
DONE = "done"


@contextlib.contextmanager
def operation(label: str, show: bool) -> Iterator[Progress]:
    """A cancellable operation with an optional progress bar."""
    bar = ProgressBar(label) if show else None
    token = CancelToken()
    progress = Progress(bar, token)
    with _cancel_on_interrupt(token):
        try:
            yield progress
        finally:
            if bar is not None:
                bar.finish()


@contextlib.contextmanager
def _cancel_on_interrupt(token: CancelToken) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def first_interrupt(signum: int, frame: object) -> None:
        token.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)
