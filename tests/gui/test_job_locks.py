"""Several jobs at once: image locks, conflicting actions disabled, the jobs panel with
speed, time left and outcome, and closing the window while a job runs."""

from __future__ import annotations

import threading
import time

import pytest

from vdgui.engine import Cancelled
from vdgui.gui.edits import ChangeSet, Edit
from vdgui.gui.jobs import ImageBusy, JobRunner
from vdgui.gui.models.jobs_model import JobColumn, JobsModel, outcome_text

from .helpers import open_and_wait, select


def blocking(started: threading.Event, release: threading.Event, result=None):  # type: ignore[no-untyped-def]
    def work(progress):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)
        progress.update(1, 2, "still working")  # raises Cancelled once cancelled
        return result
    return work


def test_images_are_locked_while_a_job_uses_them(qtbot, tmp_path):
    runner = JobRunner()
    a, b = str(tmp_path / "a.vdi"), str(tmp_path / "b.vdi")
    started, release = threading.Event(), threading.Event()
    changes = []
    runner.locks_changed.connect(lambda: changes.append(len(runner.active)))
    job = runner.run("writing a", blocking(started, release), writes=[a], reads=[b])
    assert started.wait(5)
    assert runner.conflicts(reads=[a]) == [job]  # nobody reads what is being written
    assert runner.conflicts(writes=[b]) == [job]  # nor writes what is being read
    assert runner.conflicts(reads=[b]) == []  # reading together is fine
    with pytest.raises(ImageBusy, match="“writing a” is using it"):
        runner.run("reading a", lambda progress: None, reads=[a])
    other = runner.run("reading b", lambda progress: None, reads=[b])
    with qtbot.waitSignal(other.finished, timeout=5000):
        pass
    release.set()
    with qtbot.waitSignal(job.finished, timeout=5000):
        pass
    assert runner.conflicts(writes=[a, b]) == []
    assert changes and changes[-1] == 0
    assert runner.history == [other, job]


def test_speed_time_left_and_outcome(qtbot, qtmodeltester):
    runner = JobRunner()
    model = JobsModel(runner)
    gate = threading.Event()

    def copying(progress):  # type: ignore[no-untyped-def]
        for step in range(8):
            progress.update(step * (8 << 20), 64 << 20, "copying")
            time.sleep(0.11)
        gate.wait(5)
        return ChangeSet(summary="Copied 64 MiB")

    job = runner.run("Copying", copying)
    qtbot.waitUntil(lambda: job.speed is not None and job.eta is not None, timeout=5000)
    assert 40 << 20 < job.speed < 120 << 20  # about 8 MiB per 0.11 s
    row = [model.data(model.index(0, c)) for c in JobColumn]
    assert row[JobColumn.OPERATION] == "Copying"
    assert row[JobColumn.PROGRESS].endswith("%")
    assert row[JobColumn.SPEED].endswith("MiB/s")
    assert row[JobColumn.LEFT]  # "a moment", "2 seconds"
    assert row[JobColumn.OUTCOME] == "Running"
    qtmodeltester.check(model)
    gate.set()
    with qtbot.waitSignal(job.ended, timeout=5000):
        pass
    assert model.data(model.index(0, JobColumn.OUTCOME)).startswith("Copied 64 MiB (")
    assert model.data(model.index(0, JobColumn.SPEED)) == ""

    failed = runner.run("Failing", lambda progress: progress.cancel_token.cancel()
                        or progress.update(0, 1))
    with qtbot.waitSignal(failed.ended, timeout=5000):
        pass
    assert isinstance(failed.error, Cancelled)
    assert outcome_text(failed) == "Cancelled: the images are as they were"
    assert model.rowCount() == 2 and model.job(model.index(0, 0)) is failed  # newest first
    qtmodeltester.check(model)
    runner.clear_history()
    assert model.rowCount() == 0 and runner.history == []


def test_conflicting_actions_are_disabled_while_a_job_writes(qtbot, window, chain):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff2)
    assert window.merge_action.isEnabled() and window.compact_action.isEnabled()
    started, release = threading.Event(), threading.Event()
    job = window.run_edit(Edit("Changing diff1 slowly", "change",
                               blocking(started, release, ChangeSet()),
                               writes=(str(diff1),)))
    assert started.wait(5)
    for action in (window.merge_action, window.copy_action, window.new_diff_action,
                   window.compact_action, window.resize_action):
        assert not action.isEnabled(), action.text()  # they read or write diff1
    assert window.repair_action.isEnabled()  # checking diff2 alone does not touch diff1
    assert window.jobs_view.model.rowCount() == 1
    release.set()
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        with qtbot.waitSignal(job.finished, timeout=10_000):
            pass
    assert window.merge_action.isEnabled()
    assert window.jobs_view.model.data(window.jobs_view.model.index(0, JobColumn.OUTCOME)) \
        .startswith("Done")


def test_closing_during_a_job_asks_then_cancels(qtbot, window, dialogs):
    started, release = threading.Event(), threading.Event()
    job = window.run_edit(Edit("Working slowly", "work",
                               blocking(started, release, ChangeSet())))
    assert started.wait(5)
    assert not window.close()  # the default answer keeps the window and the job
    assert dialogs.titles() == ["Operations are running"]
    assert "Working slowly" in dialogs.dialogs[0].text
    assert window.isVisible() and not job.cancelled
    dialogs.accept = True
    threading.Timer(0.2, release.set).start()  # while the window waits for the job
    assert window.close()
    assert job.cancelled
    assert window.jobs.wait(0)
    with qtbot.waitSignal(job.ended, timeout=5000):
        pass
    assert isinstance(job.error, Cancelled)


def test_the_jobs_panel_cancels_the_selected_job(qtbot, window):
    started, release = threading.Event(), threading.Event()
    job = window.run_edit(Edit("Working slowly", "work", blocking(started, release)))
    assert started.wait(5)
    view = window.jobs_view
    view.table.setCurrentIndex(view.model.index(0, 0))
    assert view.cancel_button.isEnabled()
    view.cancel_button.click()
    assert job.cancelled and not view.cancel_button.isEnabled()
    release.set()
    with qtbot.waitSignal(window.edit_failed, timeout=5000):
        pass
    assert "Cancelled" in view.model.data(view.model.index(0, JobColumn.OUTCOME))
