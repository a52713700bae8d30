"""Chain inspection and guided fixes: duplicate UUIDs, a missing parent found by UUID,
a parent whose UUID changed re-linked, files deleted, the library filtered."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard

from vdgui.engine import Disk, OpenFlags, discover_chain, open_chain
from vdgui.engine.chain import ParentNotFound
from vdgui.engine.errors import UuidMismatch
from vdgui.gui.models.chain_model import Column
from vdgui.library import Library

from .helpers import MIB, click, next_page, open_and_wait, read_all, select

Button = QWizard.WizardButton


def uuid_of(path: Path) -> uuid.UUID:
    with Disk() as disk:
        disk.open(path, None, OpenFlags.READONLY | OpenFlags.INFO)
        return disk[0].uuid


def test_duplicate_uuid_is_flagged_and_fixed_in_one_click(qtbot, window, chain, tmp_path,
                                                         dialogs):
    base, diff1, diff2 = chain
    elsewhere = tmp_path / "backup"
    elsewhere.mkdir()
    copy = elsewhere / "base.vdi"
    shutil.copy(base, copy)  # the classic copy by hand: same UUID
    open_and_wait(qtbot, window, diff2, copy)
    tree = window.model.tree
    assert [n.path for n in tree.duplicates[uuid_of(base)]] == sorted([str(base), str(copy)])
    index = window.model.index_for_path(str(copy))
    assert "Same UUID as" in window.model.data(index, Qt.ItemDataRole.ToolTipRole)
    assert "duplicate UUID" in window.count_label.text()
    select(qtbot, window, copy)
    window.tabs.setCurrentWidget(window.chain_panel)
    assert "same UUID" in window.chain_panel.health.text()
    fix = [b for b in window.chain_panel.fix_buttons
           if b.defaultAction() is window.new_uuid_action][0]
    assert fix.isVisible()

    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        click(qtbot, fix)
    assert dialogs.dialogs == []  # one click: no question for a duplicate
    assert uuid_of(copy) != uuid_of(base)
    assert not window.model.tree.duplicates
    assert read_all(copy) == read_all(base)
    assert len(discover_chain(diff2)) == 3


def test_missing_parent_is_found_by_searching_a_folder(qtbot, window, chain, tmp_path):
    base, diff1, diff2 = chain
    moved = tmp_path / "archive" / "deep"
    moved.mkdir(parents=True)
    shutil.move(base, moved / "renamed-base.vdi")
    open_and_wait(qtbot, window, diff2)
    node = window.model.tree.find(diff1)
    assert isinstance(node.error, ParentNotFound)
    select(qtbot, window, diff1)
    assert "parent image is missing" in window.chain_panel.health.text()
    assert window.locate_action.isEnabled()
    assert not window.merge_action.isEnabled()  # a broken chain is not merged
    assert "parent not found" in window.chain_panel.diagram.accessibleDescription()

    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        job = window.locate_parent(str(tmp_path / "archive"))
        assert job is not None
    assert window.library.search_paths == [str(moved)]
    assert Library(window.library.path).search_paths == [str(moved)]  # remembered
    assert all(n.ok for n in window.model.tree.nodes.values())
    assert window.current_node().parent.path == str(moved / "renamed-base.vdi")


def test_parent_not_found_anywhere_is_said(qtbot, window, chain, tmp_path, dialogs):
    base, diff1, diff2 = chain
    base.unlink()
    open_and_wait(qtbot, window, diff2)
    assert dialogs.titles() == ["Parent image not found"]  # said when it was opened
    dialogs.dialogs.clear()
    select(qtbot, window, diff1)
    empty = tmp_path / "empty"
    empty.mkdir()
    job = window.locate_parent(str(empty))
    qtbot.waitUntil(lambda: dialogs.dialogs != [], timeout=10_000)
    assert dialogs.titles() == ["Parent not found"]
    assert job is not None and window.library.search_paths == []


def test_a_parent_whose_uuid_changed_is_relinked(qtbot, window, tmp_path):
    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    with Disk() as disk:
        disk.create_base(base, 4 * MIB, "VHD")
        disk.write(0, b"b" * 4096)
        disk.create_diff(diff)
        disk.write(MIB, b"d" * 4096)
    with Disk() as disk:  # the parent gets a new UUID behind the child's back
        disk.open(base, None, OpenFlags.INFO)
        disk.set_uuid(0, uuid.uuid4())
    open_and_wait(qtbot, window, diff)
    node = window.model.tree.find(diff)
    assert isinstance(node.error, UuidMismatch)
    assert node.parent.path == str(base)  # found by its path, but it does not match
    select(qtbot, window, diff)
    assert "parent does not match" in window.chain_panel.health.text()

    wizard = window.relink_image()
    page = wizard.parent_page
    assert page.path_edit.path() == str(base)  # the parent found is proposed
    assert page.unsafe.isChecked() and not page.safe.isEnabled()
    next_page(qtbot, wizard)
    assert wizard.summary_page.command.text() == f"vdimg rebase --unsafe {diff} {base}"
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        click(qtbot, wizard.button(Button.FinishButton))
    assert window.model.tree.find(diff).ok
    with open_chain(diff, OpenFlags.READONLY) as disk:  # the engine accepts it again
        assert disk.read(0, 4096) == b"b" * 4096 and disk.read(MIB, 4096) == b"d" * 4096


def test_delete_files_asks_then_deletes_the_image_and_what_is_built_on_it(
        qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff1)
    window.delete_action.trigger()  # Cancel (the default answer): nothing happens
    assert dialogs.titles() == ["Delete files?"]
    assert str(diff2) in dialogs.dialogs[0].informative
    assert diff1.exists() and diff2.exists()

    dialogs.accept = True
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        window.delete_action.trigger()
    assert not diff1.exists() and not diff2.exists() and base.exists()
    assert window.library.entries == []


def test_filter_by_name_and_by_uuid(qtbot, window, chain, tmp_path):
    other = tmp_path / "other.vdi"
    with Disk() as disk:
        disk.create_base(other, MIB, "VDI")
    open_and_wait(qtbot, window, chain[2], other)
    proxy = window.proxy
    assert proxy.rowCount() == 2
    qtbot.keyClicks(window.filter_edit, "other")
    assert proxy.rowCount() == 1
    assert proxy.data(proxy.index(0, Column.NAME)) == "other.vdi"
    window.filter_edit.clear()
    wanted = str(uuid_of(chain[1])).upper()[:13]
    qtbot.keyClicks(window.filter_edit, "{" + wanted)
    assert proxy.rowCount() == 1  # base.vdi, shown as the ancestor of the match
    root = proxy.index(0, 0)
    assert proxy.data(root) == "base.vdi"
    assert proxy.data(proxy.index(0, 0, root)) == "diff1.vdi"
    assert proxy.rowCount(proxy.index(0, 0, root)) == 0  # diff2 does not match
    assert window.settings.filter_text == "{" + wanted
