"""Progress reporting and cancellation for long engine operations.

Every long operation takes ``progress: Progress | None``.  It calls
``progress.update(done, total, stage)`` as it goes; the call raises
:class:`~vdgui.engine.errors.Cancelled` once the caller has asked to cancel, so
operations stop at a safe point between two steps.  The GUI and the CLI build a
``Progress`` around their own callback (a Qt signal, a terminal bar).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .errors import Cancelled

#: ``callback(done, total, stage)``; may raise Cancelled itself.
ProgressCallback = Callable[[int, int, str], None]


class CancelToken:
    """A flag another thread can set to ask an operation to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


class Progress:
    """Forwards progress to a callback at most ``rate`` times a second."""

    def __init__(self, callback: ProgressCallback | None = None,
                 cancel: CancelToken | None = None, rate: float = 20.0) -> None:
        self._callback = callback
        self.cancel_token = cancel or CancelToken()
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._last = 0.0
        self._stage = ""

    def update(self, done: int, total: int, stage: str = "") -> None:
        """Report ``done`` of ``total`` units; raises Cancelled when asked to stop.

        The final report (``done >= total``) never raises: the work is done, and a
        cancel that arrives then must not make a finished operation look undone.
        """
        final = done >= total
        if not final:
            self.cancel_token.check()
        if self._callback is None:
            return
        now = time.monotonic()
        if final or stage != self._stage or now - self._last >= self._interval:
            self._last = now
            self._stage = stage
            self._callback(done, total, stage)

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def part(self, start: float, end: float) -> Progress:
        """A progress for one step of a longer operation: the step's 0..1 is this
        operation's ``start``..``end``, so the whole stays monotonic."""
        return _Part(self, start, end)


class _Part(Progress):
    _SCALE = 1_000_000

    def __init__(self, parent: Progress, start: float, end: float) -> None:
        self._parent = parent
        self._start, self._end = start, end
        self.cancel_token = parent.cancel_token

    def update(self, done: int, total: int, stage: str = "") -> None:
        fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        overall = self._start + (self._end - self._start) * fraction
        self._parent.update(round(overall * self._SCALE), self._SCALE, stage)


def part(progress: Progress | None, start: float, end: float) -> Progress | None:
    """``progress.part`` for an optional progress object."""
    return progress.part(start, end) if progress is not None else None


def report(progress: Progress | None, done: int, total: int, stage: str = "") -> None:
    """``progress.update`` for an optional progress object."""
    if progress is not None:
        progress.update(done, total, stage)
