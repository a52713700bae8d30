"""Start-up: the command line, ``python -m vdgui --smoke-test``, closing with work running."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from vdgui.gui.app import build_parser
from vdgui.gui.edits import Edit


def test_command_line():
    args = build_parser().parse_args(["a.vdi", "b.vdi", "--demo"])
    assert args.files == ["a.vdi", "b.vdi"] and args.demo and not args.smoke_test
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])


def test_python_m_vdgui_smoke_test(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))
    env.pop("VDGUI_HOME", None)  # the smoke test makes its own
    result = subprocess.run([sys.executable, "-m", "vdgui", "--smoke-test"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vdgui smoke test: ok (3 images" in result.stdout
    assert not any(tmp_path.iterdir())  # nothing written to the home directory


def test_closing_the_window_while_a_job_runs(qtbot, window):
    started, release = threading.Event(), threading.Event()

    def slow(progress):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(5)
        progress.update(0, 1)  # an intermediate report: raises once cancelled

    # Through run_edit: the job's connections then refer back to the window.
    job = window.run_edit(Edit("Changing nothing slowly", "change nothing", slow))
    assert started.wait(5)
    assert window.jobs_panel.isVisible()
    window.jobs_panel.cancel_button.click()
    assert job.cancelled
    release.set()
    window.close()  # waits for the worker; the queued results are dropped safely
    assert window.jobs.wait(0)
