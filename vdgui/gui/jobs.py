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
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from ..engine import CancelToken, Cancelled, Progress

log = logging.getLogger(__name__)

#: Progress reports per second that reach the GUI.
PROGRESS_RATE = 10.0

JobFunction = Callable[[Progress], Any]


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

    def __init__(self, title: str, fn: JobFunction, parent: QObject | None = None) -> None:
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

    @Slot(object, object, str)
    def _on_report(self, done: int, total: int, stage: str) -> None:
        if self.is_done:
            return
        self.done_units, self.total_units, self.stage = done, total, stage
        self.progress.emit(done, total, stage)

    @Slot(object, object)
    def _on_done(self, result: Any, error: BaseException | None) -> None:
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

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._active: list[Job] = []

    @property
    def active(self) -> list[Job]:
        return list(self._active)

    def run(self, title: str, fn: JobFunction) -> Job:
        """Start ``fn(progress)`` on a worker thread; returns its :class:`Job`."""
        job = Job(title, fn, self)
        self._active.append(job)
        # A slot that finds the job through sender(): a lambda holding the job in a
        # connection of the job itself crashes PySide6 once the job is deleted.
        job.ended.connect(self._on_ended)
        self._pool.start(_Runnable(job))
        self.started.emit(job)
        return job

    @Slot()
    def _on_ended(self) -> None:
        job = self.sender()
        if not isinstance(job, Job):
            return
        if job in self._active:
            self._active.remove(job)
        self.ended.emit(job)
        # The Qt object goes; the Python attributes (state, result, error) stay readable.
        job.deleteLater()

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
