"""Running engine calls off the GUI thread.

A :class:`Job` wraps a function ``fn(progress) -> result`` that does image I/O.
:class:`JobRunner` runs it on a ``QThreadPool`` worker; the job reports back through
queued Qt signals, so slots always run on the GUI thread:

* ``progress(done, total, stage)`` -- throttled to :data:`PROGRESS_RATE` per second
  by the engine's :class:`~vdgui.engine.Progress`;
* ``finished(result)`` or ``failed(exception)`` -- exactly one of them;
* ``ended()`` -- afterwards, in every case.

Cancelling sets the job's :class:`~vdgui.engine.CancelToken`; the engine raises
:class:`~vdgui.engine.Cancelled` at its next progress report, so the job ends with
``failed(Cancelled)`` at a safe point.  Every exception is caught at the job
boundary: a job never kills a worker thread or the application.

Several jobs run at once.  A job names the images it changes (``writes``) and those
it only reads (``reads``); while it runs they are locked: a job that would write an
image another job uses, or read one another job writes, is refused with
:class:`ImageBusy`, and the window disables the actions that would start one
(:meth:`JobRunner.conflicts`).  Jobs the person started are kept in
:attr:`JobRunner.history` once they end, for the jobs panel; background jobs
(reading the library) are not.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from typing import Any, Callable, Iterable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from ..engine import CancelToken, Cancelled, Progress
from ..engine.errors import ImageInUse
from ..library import path_key

log = logging.getLogger(__name__)

#: Progress reports per second that reach the GUI.
PROGRESS_RATE = 10.0
#: Ended jobs the jobs panel keeps listing.
MAX_HISTORY = 100
#: Weight of the newest sample in the smoothed speed (exponential moving average).
SPEED_SMOOTHING = 0.3
#: Samples closer together than this are merged (a speed over a few ms is noise).
MIN_SAMPLE_SECONDS = 0.05

JobFunction = Callable[[Progress], Any]


class ImageBusy(ImageInUse):
    """Another operation of this application is using the image."""


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class Job(QObject):
    """One engine call on a worker thread."""

    progress = Signal(object, object, str)  # done, total, stage (Python ints: no overflow)
    finished = Signal(object)
    failed = Signal(object)
    ended = Signal()

    # Internal: emitted on the worker thread, delivered queued to the GUI thread.
    _report = Signal(object, object, str)
    _done = Signal(object, object)

    def __init__(self, title: str, fn: JobFunction, parent: QObject | None = None, *,
                 writes: Iterable[str | os.PathLike[str]] = (),
                 reads: Iterable[str | os.PathLike[str]] = (),
                 background: bool = False, unit: str = "bytes") -> None:
        super().__init__(parent)
        self.title = title
        self._fn = fn
        self.token = CancelToken()
        self.state = JobState.PENDING
        self.result: Any = None
        self.error: BaseException | None = None
        self.done_units = 0
        self.total_units = 0
        self.stage = ""
        #: Keys (:func:`~vdgui.library.path_key`) of the images it changes / reads.
        self.writes = frozenset(path_key(p) for p in writes)
        self.reads = frozenset(path_key(p) for p in reads) - self.writes
        #: Not listed in the jobs panel, not worth a question when the window closes.
        self.background = background
        #: What ``done``/``total`` count: "bytes" shows a speed and a time left.
        self.unit = unit
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        #: Units per second (smoothed), None until two reports of one stage arrived.
        self.speed: float | None = None
        self._sample: tuple[float, int, int, str] | None = None
        self._report.connect(self._on_report)
        self._done.connect(self._on_done)

    def __repr__(self) -> str:
        return f"<Job {self.title!r} {self.state.value}>"

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    @property
    def is_done(self) -> bool:
        return self.state in (JobState.FINISHED, JobState.FAILED)

    @property
    def elapsed(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started_at

    @property
    def eta(self) -> float | None:
        """Seconds left at the current speed (None when unknown)."""
        if self.is_done or not self.speed or self.total_units <= 0:
            return None
        return max(self.total_units - self.done_units, 0) / self.speed

    @property
    def fraction(self) -> float | None:
        if self.state is JobState.FINISHED:
            return 1.0
        if self.total_units <= 0:
            return None
        return min(self.done_units / self.total_units, 1.0)

    # -- worker thread

    def execute(self) -> None:
        """Run the function (on the calling thread); report through the signals."""
        self.state = JobState.RUNNING
        progress = Progress(self._report.emit, self.token, rate=PROGRESS_RATE)
        try:
            result = self._fn(progress)
        except BaseException as exc:  # the job boundary: everything becomes `failed`
            if not isinstance(exc, Cancelled):
                log.debug("job %r failed", self.title, exc_info=exc)
            self._done.emit(None, exc)
        else:
            self._done.emit(result, None)

    # -- GUI thread

    def _measure(self, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        sample = self._sample
        if sample is None or sample[2] != total or sample[3] != stage or done < sample[1]:
            # A new stage counts something else: its speed starts afresh.
            self._sample, self.speed = (now, done, total, stage), None
            return
        elapsed = now - sample[0]
        if elapsed < MIN_SAMPLE_SECONDS:
            return
        rate = (done - sample[1]) / elapsed
        self.speed = rate if self.speed is None else (
            SPEED_SMOOTHING * rate + (1 - SPEED_SMOOTHING) * self.speed)
        self._sample = (now, done, total, stage)

    @Slot(object, object, str)
    def _on_report(self, done: int, total: int, stage: str) -> None:
        if self.is_done:
            return
        self.state = JobState.RUNNING
        self._measure(done, total, stage)
        self.done_units, self.total_units, self.stage = done, total, stage
        self.progress.emit(done, total, stage)

    @Slot(object, object)
    def _on_done(self, result: Any, error: BaseException | None) -> None:
        self.ended_at = time.monotonic()
        self.speed = None
        if error is None:
            self.state, self.result = JobState.FINISHED, result
            self.finished.emit(result)
        else:
            self.state, self.error = JobState.FAILED, error
            self.failed.emit(error)
        self.ended.emit()


class _Runnable(QRunnable):
    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job: Job | None = job
        self.setAutoDelete(True)

    def run(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.execute()


class JobRunner(QObject):
    """Starts jobs on its own thread pool and keeps them alive until they end."""

    started = Signal(object)  # Job
    ended = Signal(object)  # Job
    #: An ended job is no longer listed (its Qt object is about to be deleted).
    forgotten = Signal(object)  # Job
    #: The set of locked images changed.
    locks_changed = Signal()

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._active: list[Job] = []
        self._history: list[Job] = []

    @property
    def active(self) -> list[Job]:
        return list(self._active)

    @property
    def history(self) -> list[Job]:
        """Ended jobs the person started, oldest first."""
        return list(self._history)

    def conflicts(self, writes: Iterable[str | os.PathLike[str]] = (),
                  reads: Iterable[str | os.PathLike[str]] = ()) -> list[Job]:
        """Running jobs that a job writing ``writes`` and reading ``reads`` would
        collide with (empty: it may start)."""
        w = {path_key(p) for p in writes}
        r = {path_key(p) for p in reads} - w
        return [job for job in self._active
                if w & (job.writes | job.reads) or r & job.writes]

    def run(self, title: str, fn: JobFunction, *,
            writes: Iterable[str | os.PathLike[str]] = (),
            reads: Iterable[str | os.PathLike[str]] = (),
            background: bool = False, unit: str = "bytes") -> Job:
        """Start ``fn(progress)`` on a worker thread; returns its :class:`Job`.

        Raises :class:`ImageBusy` (starting nothing) when another job holds one of
        the images.
        """
        writes, reads = list(writes), list(reads)
        blockers = self.conflicts(writes, reads)
        if blockers:
            busy = sorted((set(blockers[0].writes) | blockers[0].reads)
                          & {path_key(p) for p in writes + reads})
            raise ImageBusy(f"“{blockers[0].title}” is using it; wait until it ends or "
                            f"cancel it", busy[0] if busy else None)
        job = Job(title, fn, self, writes=writes, reads=reads, background=background,
                  unit=unit)
        self._active.append(job)
        # A slot that finds the job through sender(): a lambda holding the job in a
        # connection of the job itself crashes PySide6 once the job is deleted.
        job.ended.connect(self._on_ended)
        self._pool.start(_Runnable(job))
        self.started.emit(job)
        if job.writes or job.reads:
            self.locks_changed.emit()
        return job

    @Slot()
    def _on_ended(self) -> None:
        job = self.sender()
        if not isinstance(job, Job):
            return
        if job in self._active:
            self._active.remove(job)
        self.ended.emit(job)
        if job.writes or job.reads:
            self.locks_changed.emit()
        if job.background:
            # The Qt object goes; the Python attributes (state, result, error) stay.
            job.deleteLater()
            return
        self._history.append(job)
        while len(self._history) > MAX_HISTORY:
            self._forget(self._history[0])

    def _forget(self, job: Job) -> None:
        self._history.remove(job)
        self.forgotten.emit(job)
        job.deleteLater()

    def clear_history(self) -> None:
        """Stop listing the ended jobs."""
        for job in list(self._history):
            self._forget(job)

    def cancel_all(self) -> None:
        for job in self._active:
            job.cancel()

    def wait(self, msecs: int = -1) -> bool:
        """Block until every worker is idle (shutdown); True when they are."""
        return self._pool.waitForDone(msecs)


async def result_of(job: Job) -> Any:
    """Await a job from a coroutine (qasync): its result, or its exception raised."""
    if job.state is JobState.FINISHED:
        return job.result
    if job.state is JobState.FAILED:
        assert job.error is not None
        raise job.error
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def finished(result: Any) -> None:
        if not future.done():
            future.set_result(result)

    def failed(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    job.finished.connect(finished)
    job.failed.connect(failed)
    return await future
