"""The job runner: results, failures, progress and cancellation off the GUI thread."""

from __future__ import annotations

import threading

from PySide6.QtCore import QThread

from vdgui.engine import Cancelled
from vdgui.engine.errors import Corrupted
from vdgui.gui.jobs import JobRunner, JobState


def test_result_arrives_on_the_gui_thread(qtbot):
    runner = JobRunner()
    seen = {}

    def work(progress):  # type: ignore[no-untyped-def]
        seen["thread"] = QThread.currentThread()
        for i in range(5):
            progress.update(i, 5, "working")
        return 42

    job = runner.run("answer", work)
    reports = []
    job.progress.connect(lambda done, total, stage: reports.append((done, total, stage)))
    with qtbot.waitSignal(job.finished, timeout=5000) as blocker:
        pass
    assert blocker.args == [42]
    assert seen["thread"] is not QThread.currentThread()
    assert job.state is JobState.FINISHED and job.result == 42
    assert reports and reports[0] == (0, 5, "working")  # throttled: not all five
    assert runner.wait(1000)


def test_failure_is_caught_at_the_job_boundary(qtbot):
    runner = JobRunner()

    def work(progress):  # type: ignore[no-untyped-def]
        raise Corrupted("the header is damaged", "/x.vdi")

    job = runner.run("broken", work)
    with qtbot.waitSignal(job.failed, timeout=5000) as blocker:
        pass
    assert isinstance(blocker.args[0], Corrupted)
    assert job.state is JobState.FAILED
    assert runner.active == []  # `ended` follows `failed` at once


def test_cancel_stops_at_the_next_progress_report(qtbot):
    runner = JobRunner()
    started, release = threading.Event(), threading.Event()

    def work(progress):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(5)
        progress.update(1, 2, "step")  # raises Cancelled
        return "not reached"

    job = runner.run("long", work)
    assert started.wait(5)
    job.cancel()
    release.set()
    with qtbot.waitSignal(job.failed, timeout=5000) as blocker:
        pass
    assert isinstance(blocker.args[0], Cancelled)
    assert job.cancelled
