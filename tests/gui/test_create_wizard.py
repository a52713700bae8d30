"""The New Image wizards, driven page by page; the image is checked with the engine."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QRadioButton, QWizard

from vdgui.engine import Geometry, ImageFlags, OpenFlags, discover_chain, open_chain
from vdgui.gui.wizards.create import NewImageWizard, PageId, creatable_backends

from .helpers import MIB, click, open_and_wait

Button = QWizard.WizardButton


def next_page(qtbot, wizard: NewImageWizard) -> None:  # type: ignore[no-untyped-def]
    qtbot.mouseClick(wizard.button(Button.NextButton), Qt.MouseButton.LeftButton)


def type_into(qtbot, widget, text: str) -> None:  # type: ignore[no-untyped-def]
    widget.setFocus()
    widget.selectAll()
    qtbot.keyClicks(widget, text)


def test_create_base_image_page_by_page(qtbot, window, tmp_path, dialogs):
    wizard = window.new_image()
    assert wizard.currentId() == PageId.FORMAT
    assert wizard.format_page.backend().name == "VDI"  # the preferred format first
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.VARIANT
    dynamic = [b for b in wizard.variant_page.allocation.buttons()
               if b.property("variant") == "standard"][0]
    assert dynamic.isChecked()
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.SIZE
    size_edit = wizard.size_page.size_edit
    type_into(qtbot, size_edit.line_edit, "nonsense")
    assert not wizard.button(Button.NextButton).isEnabled()  # refused before Next
    type_into(qtbot, size_edit.line_edit, "20M")
    assert size_edit.value() == 20 * MIB
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.LOCATION
    target = tmp_path / "made-by-wizard"  # the extension is added
    type_into(qtbot, wizard.location_page.path_edit.line_edit, str(target))
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.SUMMARY
    qtbot.keyClicks(wizard.summary_page.comment, "from the wizard")
    command = wizard.summary_page.command.text()
    assert command == (f"vdimg create -f vdi -v standard --comment 'from the wizard' "
                       f"{target}.vdi 20M")
    assert not Path(f"{target}.vdi").exists()  # nothing before Finish

    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        qtbot.mouseClick(wizard.button(Button.FinishButton), Qt.MouseButton.LeftButton)

    created = Path(f"{target}.vdi")
    with open_chain(created, OpenFlags.READONLY | OpenFlags.INFO) as disk:
        assert disk.size == 20 * MIB
        assert disk[0].comment == "from the wizard"
        assert not disk[0].image_flags & ImageFlags.FIXED
    assert window.library.entries == [str(created)]
    assert window.current_node().path == str(created)
    assert dialogs.dialogs == []

    if shutil.which("qemu-img"):
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", str(created)],
            capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "vdi"
        assert info["virtual-size"] == 20 * MIB


def test_location_page_refuses_existing_files_and_wrong_extensions(qtbot, window, tmp_path):
    existing = tmp_path / "taken.vdi"
    existing.write_bytes(b"keep me")
    wizard = window.new_image()
    next_page(qtbot, wizard)  # format
    next_page(qtbot, wizard)  # variant
    next_page(qtbot, wizard)  # size (default)
    page = wizard.location_page
    for path, words in ((existing, "already exists"),
                        (tmp_path / "disk.vmdk", "should end in .vdi"),
                        (tmp_path / "no-such-folder" / "x.vdi", "does not exist")):
        type_into(qtbot, page.path_edit.line_edit, str(path))
        next_page(qtbot, wizard)
        assert wizard.currentId() == PageId.LOCATION
        assert words in page.error.text()
    assert existing.read_bytes() == b"keep me"
    wizard.reject()


def test_extension_follows_the_format(qtbot, window, tmp_path):
    if len(creatable_backends(False)) < 2:
        pytest.skip("only one format can create images")
    wizard = window.new_image()
    next_page(qtbot, wizard)
    while wizard.currentId() != PageId.LOCATION:
        next_page(qtbot, wizard)
    first = wizard.location_page.path_edit.path()
    wizard.back()
    while wizard.currentId() != PageId.FORMAT:
        wizard.back()
    other = [b for b in wizard.format_page.group.buttons() if not b.isChecked()][0]
    assert isinstance(other, QRadioButton)
    other.click()
    while wizard.currentId() != PageId.LOCATION:
        next_page(qtbot, wizard)
    second = wizard.location_page.path_edit.path()
    assert Path(first).stem == Path(second).stem
    assert Path(first).suffix != Path(second).suffix
    wizard.reject()


def test_create_differencing_image(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    wizard = window.new_diff_image()
    assert wizard is not None and wizard.parent_image.path == str(diff2)
    next_page(qtbot, wizard)
    assert wizard.currentId() == PageId.LOCATION  # no variant or size for a diff
    default = Path(wizard.location_page.path_edit.path())
    assert default == diff2.parent / "diff2-diff1.vdi"
    next_page(qtbot, wizard)
    assert "--parent" in wizard.summary_page.command.text()
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        wizard.button(Button.FinishButton).click()

    links = discover_chain(default)
    assert [Path(link.path).name for link in links] == \
        ["base.vdi", "diff1.vdi", "diff2.vdi", "diff2-diff1.vdi"]
    with open_chain(default, OpenFlags.READONLY) as disk:
        assert disk.read(2 * MIB, 4096) == b"2" * 4096  # reads through to its parents
    assert window.current_node().path == str(default)
    assert window.current_node().parent.path == str(diff2)
    assert dialogs.dialogs == []


def test_creation_failure_is_reported(qtbot, window, tmp_path, dialogs, monkeypatch):
    from vdgui.engine.errors import DiskFull
    from vdgui.gui import edits

    def full(params, progress=None):  # type: ignore[no-untyped-def]
        raise DiskFull("no space left on the device", params.path)

    monkeypatch.setattr(edits, "create_image", full)
    with qtbot.waitSignal(window.edit_failed, timeout=10_000):
        window.create_image(edits.CreateParams(str(tmp_path / "x.vdi"), "VDI", size=MIB))
    assert dialogs.titles() == ["Out of disk space"]
    assert window.library.entries == []


def test_format_options_and_geometry_reach_the_image(qtbot, window, tmp_path, dialogs):
    wizard = window.new_image()
    next_page(qtbot, wizard)  # VDI
    page = wizard.variant_page
    options = page.format_options
    assert set(options.fields) == {"AllocationBlockSize", "DataAlignment"}
    assert not options.expert.isVisibleTo(page)  # expert options stay closed...
    options.expert_toggle.click()  # ...until asked for
    type_into(qtbot, options.fields["AllocationBlockSize"], "lots")
    next_page(qtbot, wizard)
    assert wizard.currentId() == PageId.VARIANT
    assert "AllocationBlockSize must be a number" in page.error.text()
    type_into(qtbot, options.fields["AllocationBlockSize"], "2M")
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.SIZE
    size_page = wizard.size_page
    assert size_page.lchs.isVisibleTo(size_page)  # VDI stores a logical geometry
    assert not size_page.pchs.isVisibleTo(size_page)  # but no physical one
    type_into(qtbot, size_page.size_edit.line_edit, "32M")
    for part, value in (("cylinders", "64"), ("heads", "16"), ("sectors", "63")):
        type_into(qtbot, size_page.lchs.spins[part].lineEdit(), value)
    next_page(qtbot, wizard)
    target = tmp_path / "options.vdi"
    type_into(qtbot, wizard.location_page.path_edit.line_edit, str(target))
    next_page(qtbot, wizard)
    command = wizard.summary_page.command.text()
    assert "-o AllocationBlockSize=2M --lchs 64/16/63" in command
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        click(qtbot, wizard.button(Button.FinishButton))
    with open_chain(target, OpenFlags.READONLY | OpenFlags.INFO) as disk:
        assert disk.size == 32 * MIB
        assert disk[0].lchs == Geometry(64, 16, 63)
        assert "2097152" in " ".join(f"{k} {v}" for k, v in disk[0].describe())
    assert dialogs.dialogs == []


def test_size_is_limited_where_the_format_is(qtbot, window):
    wizard = window.new_image()
    buttons = {b.accessibleName(): b for b in wizard.format_page.group.buttons()}
    click(qtbot, buttons["VHD"])
    while wizard.currentId() != PageId.SIZE:
        next_page(qtbot, wizard)
    edit = wizard.size_page.size_edit
    assert "at most 2040 GiB" in wizard.size_page.limit.text()
    type_into(qtbot, edit.line_edit, "3T")
    assert not wizard.button(Button.NextButton).isEnabled()
    assert "at most 2040 GiB" in edit.problem()
    wizard.reject()
