"""The GUI thread never blocks: a multi-gigabyte conversion runs while a 10 ms timer
measures the longest gap between its ticks; and cancelling a job midway leaves the
images as they were."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer

from vdgui.engine import Cancelled, Disk, OpenFlags, discover_chain, open_chain
from vdgui.engine import progress as engine_progress
from vdgui.gui import operations

from .helpers import MIB, open_and_wait, read_all

GIB = 1 << 30
#: The longest the GUI thread may be busy at once.
MAX_GAP_S = 0.100


def _run_queue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat;
    0 where unknown): time the machine's load takes, which no application controls."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class GapProbe:
    """Ticks every 10 ms on the GUI thread and records the longest gap between ticks.

    A gap counts the time the GUI thread was held up by the application -- busy
    itself, or waiting for a lock or the GIL a worker holds -- and not the time it
    waited for a CPU because other programs loaded the machine.
    """

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = self.last_wait = 0.0
        self.longest = 0.0
        #: The longest gap as the wall clock saw it (machine load included).
        self.longest_wall = 0.0
        self.ticks = 0

    def _tick(self) -> None:
        now, wait = time.monotonic(), _run_queue_wait()
        if self.last:
            wall = now - self.last
            self.longest_wall = max(self.longest_wall, wall)
            self.longest = max(self.longest, wall - (wait - self.last_wait))
        self.last, self.last_wait = now, wait
        self.ticks += 1

    def start(self) -> None:
        self.last, self.last_wait = time.monotonic(), _run_queue_wait()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


def test_gui_stays_responsive_during_a_4_gib_conversion(qtbot, window, tmp_path):
    source = tmp_path / "big.vdi"
    with Disk() as disk:
        disk.create_base(source, 4 * GIB, "VDI")
        data = bytes(range(256)) * (64 * 1024)  # 16 MiB that are not zeros
        for offset in range(0, 4 * GIB, 256 * MIB):
            disk.write(offset, data)
    open_and_wait(qtbot, window, source)
    target = tmp_path / "big.qcow2"
    params = operations.CopyParams(str(source), str(target), "QCOW2")

    probe = GapProbe()
    probe.start()
    started = time.monotonic()
    with qtbot.waitSignal(window.refreshed, timeout=60_000):
        with qtbot.waitSignal(window.edit_finished, timeout=60_000):
            window.run_operation("Converting", "convert",
                                 lambda progress: operations.copy_image(params, progress),
                                 writes=[str(target)], reads=[str(source)])
    probe.stop()
    elapsed = time.monotonic() - started
    assert probe.ticks > elapsed / 0.05  # the timer really ran all along
    print(f"longest gap {probe.longest * 1000:.1f} ms ({probe.longest_wall * 1000:.1f} ms "
          f"with the machine's load) in {elapsed:.2f} s")
    assert probe.longest < MAX_GAP_S, f"the GUI thread was blocked {probe.longest:.3f} s"
    with open_chain(target, OpenFlags.READONLY) as disk:
        assert disk.size == 4 * GIB
        assert disk.read(3 * GIB + 768 * MIB, 1 * MIB) == data[:MIB]


@pytest.fixture
def stop_midway(monkeypatch):  # type: ignore[no-untyped-def]
    """Holds the first worker that reports progress past the start until released,
    so a test can cancel an operation at a known point in the middle of its work."""
    reached, release = threading.Event(), threading.Event()
    original = engine_progress.Progress.update

    def update(self, done, total, stage=""):  # type: ignore[no-untyped-def]
        if 0 < done < total and threading.current_thread() is not threading.main_thread() \
                and not reached.is_set():
            reached.set()
            release.wait(10)
        return original(self, done, total, stage)

    monkeypatch.setattr(engine_progress.Progress, "update", update)
    return reached, release


def run_and_cancel(qtbot, window, job, stop_midway) -> None:  # type: ignore[no-untyped-def]
    reached, release = stop_midway
    assert job is not None
    assert reached.wait(10), "the operation never got under way"
    window.jobs_panel.cancel_button.click()
    release.set()
    with qtbot.waitSignal(window.edit_failed, timeout=10_000) as blocker:
        pass
    assert isinstance(blocker.args[0], Cancelled)


def test_cancelling_a_clone_midway_leaves_nothing_behind(qtbot, window, chain, tmp_path,
                                                         stop_midway, dialogs):
    base, diff1, diff2 = chain
    before = {p: p.read_bytes() for p in chain}
    out = tmp_path / "clone"
    out.mkdir()
    params = operations.CopyParams(str(diff2), str(out), "VDI", clone=True,
                                   chain=tuple(map(str, chain)), extension="vdi")
    job = window.run_operation("Cloning", "clone",
                               lambda progress: operations.copy_image(params, progress))
    run_and_cancel(qtbot, window, job, stop_midway)
    assert list(out.iterdir()) == []
    assert {p: p.read_bytes() for p in chain} == before
    assert dialogs.dialogs == []  # a cancel is no error


def test_cancelling_a_merge_midway_leaves_the_chain_as_it_was(qtbot, window, tmp_path,
                                                              stop_midway):
    base, top = tmp_path / "base.vdi", tmp_path / "top.vdi"
    with Disk() as disk:  # several chunks, so the merge reports progress midway
        disk.create_base(base, 48 * MIB, "VDI")
        disk.create_diff(top)
        for offset in range(0, 48 * MIB, 8 * MIB):
            disk.write(offset, b"t" * MIB)
    content = read_all(top)
    open_and_wait(qtbot, window, top)
    params = operations.MergeParams((str(base), str(top)), 1, 0)
    job = window.run_operation("Merging", "merge",
                               lambda progress: operations.merge_images(params, progress),
                               writes=params.chain)
    run_and_cancel(qtbot, window, job, stop_midway)
    assert top.exists()
    assert [Path(link.path) for link in discover_chain(top)] == [base, top]
    assert read_all(top) == content


def test_cancelling_a_compaction_midway_keeps_the_content(qtbot, window, tmp_path,
                                                          stop_midway):
    image = tmp_path / "disk.vdi"
    with Disk() as disk:
        disk.create_base(image, 48 * MIB, "VDI")
        for offset in range(0, 48 * MIB, 4 * MIB):
            disk.write(offset, b"c" * MIB)
            disk.write(offset + MIB, bytes(MIB))
    content = read_all(image)
    open_and_wait(qtbot, window, image)
    params = operations.CompactParams(str(image))
    job = window.run_operation("Compacting", "compact",
                               lambda progress: operations.compact_image(params, progress),
                               writes=[str(image)])
    run_and_cancel(qtbot, window, job, stop_midway)
    assert read_all(image) == content
