"""The copy/convert wizard, driven page by page: flatten into another format, clone a
chain image by image; the results are checked with the engine."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from PySide6.QtWidgets import QWizard

from vdgui.engine import OpenFlags, discover_chain, open_chain
from vdgui.gui.wizards.copy import PageId

from .helpers import MIB, click, next_page, open_and_wait, read_all, select, type_into

Button = QWizard.WizardButton


def start_copy(qtbot, window, chain):  # type: ignore[no-untyped-def]
    open_and_wait(qtbot, window, chain[2])
    select(qtbot, window, chain[2])
    wizard = window.copy_image()
    assert wizard is not None and wizard.currentId() == PageId.SOURCE
    qtbot.waitUntil(wizard.source_page.isComplete, timeout=10_000)
    return wizard


def choose_format(qtbot, wizard, name: str) -> None:  # type: ignore[no-untyped-def]
    buttons = {b.accessibleName(): b for b in wizard.format_page.group.buttons()}
    click(qtbot, buttons[name])
    assert wizard.format_page.backend().name == name


def test_flatten_into_a_larger_vhd(qtbot, window, chain, tmp_path, dialogs):
    wizard = start_copy(qtbot, window, chain)
    assert "3 MiB of data" in wizard.source_page.facts_label.text()
    assert wizard.source_page.flatten.isChecked()
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.FORMAT
    assert wizard.format_page.backend().name == "VDI"  # the source's format first
    choose_format(qtbot, wizard, "VHD")
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.VARIANT  # VHD: dynamic or fixed, BlockSize
    assert "BlockSize" in wizard.variant_page.format_options.fields
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.SIZE
    edit = wizard.size_page.size_edit
    assert edit.value() == 8 * MIB  # the source's size
    type_into(qtbot, edit.line_edit, "16M")
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.LOCATION
    target = tmp_path / "flat.vhd"
    type_into(qtbot, wizard.location_page.path_edit.line_edit, str(target))
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.SUMMARY
    assert wizard.summary_page.command.text() == \
        f"vdimg convert -O vhd -v standard --size 16M {chain[2]} {target}"
    assert "Space needed: about 3 MiB" in wizard.summary_page.summary.text()
    assert not target.exists()  # nothing before Finish

    with qtbot.waitSignal(window.edit_finished, timeout=10_000):
        click(qtbot, wizard.button(Button.FinishButton))
    qtbot.waitSignal(window.refreshed, timeout=10_000).wait()

    assert [Path(link.path) for link in discover_chain(target)] == [target]
    copy, source = read_all(target), read_all(chain[2])
    assert len(copy) == 16 * MIB
    assert copy[:8 * MIB] == source and not any(copy[8 * MIB:])
    assert str(target) in window.library.entries
    assert window.current_node().path == str(target)
    assert dialogs.dialogs == []
    if shutil.which("qemu-img"):
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(target)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "vpc" and info["virtual-size"] >= 16 * MIB


def test_clone_the_chain_image_by_image(qtbot, window, chain, tmp_path):
    out = tmp_path / "clone"
    out.mkdir()
    wizard = start_copy(qtbot, window, chain)
    assert wizard.source_page.clone.isEnabled()
    click(qtbot, wizard.source_page.clone)
    next_page(qtbot, wizard)

    raw = [b for b in wizard.format_page.group.buttons() if b.accessibleName() == "RAW"][0]
    assert not raw.isEnabled()  # cannot hold differencing images
    next_page(qtbot, wizard)  # VDI
    next_page(qtbot, wizard)  # storage
    assert wizard.currentId() == PageId.FOLDER
    type_into(qtbot, wizard.folder_page.path_edit.line_edit, str(out))
    assert "base.vdi, diff1.vdi, diff2.vdi" in wizard.folder_page.files.text()
    next_page(qtbot, wizard)
    assert wizard.currentId() == PageId.SUMMARY
    assert "no command that clones" in wizard.summary_page.command.text()

    with qtbot.waitSignal(window.edit_finished, timeout=10_000):
        click(qtbot, wizard.button(Button.FinishButton))

    top = out / "diff2.vdi"
    assert [Path(link.path).name for link in discover_chain(top)] == \
        ["base.vdi", "diff1.vdi", "diff2.vdi"]
    assert read_all(top) == read_all(chain[2])
    with open_chain(top, OpenFlags.READONLY) as new, \
            open_chain(chain[2], OpenFlags.READONLY) as old:
        for i in range(3):
            assert new[i].uuid != old[i].uuid  # a clone never duplicates UUIDs
            assert new[i].file_size <= old[i].file_size + MIB  # each keeps only its part


def test_a_copy_cannot_cut_off_data_and_never_overwrites(qtbot, window, chain, tmp_path):
    taken = tmp_path / "taken.vdi"
    taken.write_bytes(b"mine")
    wizard = start_copy(qtbot, window, chain)
    next_page(qtbot, wizard)
    next_page(qtbot, wizard)  # VDI
    next_page(qtbot, wizard)  # storage
    edit = wizard.size_page.size_edit
    type_into(qtbot, edit.line_edit, "2M")  # data lies up to 3 MiB
    assert not wizard.button(Button.NextButton).isEnabled()
    assert "at least 3 MiB" in edit.problem()
    type_into(qtbot, edit.line_edit, "3M")
    next_page(qtbot, wizard)
    type_into(qtbot, wizard.location_page.path_edit.line_edit, str(taken))
    next_page(qtbot, wizard)
    assert wizard.currentId() == PageId.LOCATION
    assert "already exists" in wizard.location_page.error.text()
    assert taken.read_bytes() == b"mine"
    wizard.reject()
