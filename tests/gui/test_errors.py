"""Errors in words, and the crash handler that keeps the application alive."""

from __future__ import annotations

import sys

from vdgui.engine.chain import ParentNotFound
from vdgui.engine.errors import Corrupted, FileNotFound, ImageInUse, VDError
from vdgui.gui import errors


def test_engine_errors_in_plain_words():
    report = errors.describe(Corrupted("the block map lies beyond the end of the file",
                                       "/images/disk.vdi"), "open")
    assert report.title == "Damaged image"
    assert report.sentence == "vdgui could not open “disk.vdi”: the image is damaged."
    assert "The block map lies beyond the end of the file." in report.hint
    assert "Status: VERR_VD_IMAGE_CORRUPTED" in report.details
    assert "File: /images/disk.vdi" in report.details

    assert errors.describe(ImageInUse("locked", "/a.vdi")).title == "Image in use"
    # The most specific class wins: ParentNotFound is also a FileNotFound.
    assert errors.describe(ParentNotFound("gone", "/d.vdi")).title == "Parent image not found"
    assert errors.describe(FileNotFound("gone", "/d.vdi")).title == "File not found"
    assert errors.describe(VDError("odd")).title == "Operation failed"
    assert errors.describe(KeyError("x")).title == "Unexpected error"


def test_os_errors_are_shown_as_storage_errors(dialogs):
    errors.show_error(None, PermissionError(13, "Permission denied", "/x/library.json"),
                      "save the library")
    assert dialogs.titles() == ["Permission denied"]
    assert "VERR_ACCESS_DENIED" in dialogs.dialogs[0].details


def test_a_bug_shows_the_crash_dialog_and_the_app_lives_on(qapp, dialogs, caplog):
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError:
        errors.handle_exception(*sys.exc_info())  # what sys.excepthook does
    assert [d.kind for d in dialogs.dialogs] == ["crash"]
    assert "ZeroDivisionError" in dialogs.dialogs[0].details
    assert "a bug" in caplog.text
    # Non-engine exceptions passed to show_error are bugs too.
    errors.show_error(None, RuntimeError("another bug"))
    assert len(dialogs.crashes) == 2


def test_excepthook_is_installed(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    import threading
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    errors.install_excepthook()
    assert sys.excepthook is errors.handle_exception
