"""The main window against real VDI chains: tree, panels, edits, errors, persistence."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from vdgui.engine import Geometry, OpenFlags, discover_chain, open_chain
from vdgui.gui.models.chain_model import Column
from vdgui.gui.settings import Settings
from vdgui.gui.views.main_window import MainWindow
from vdgui.library import Library

from .helpers import open_and_wait

READ = OpenFlags.READONLY | OpenFlags.INFO


def read_top(path: Path):  # type: ignore[no-untyped-def]
    """The top image's properties, read with the engine (read-only)."""
    with open_chain(path, READ) as disk:
        image = disk[-1]
        try:
            lchs = image.lchs
        except Exception:
            lchs = None
        return dict(comment=image.comment, uuid=image.uuid, parent_uuid=image.parent_uuid,
                    lchs=lchs)


def select(qtbot, window: MainWindow, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Click the image's row in the tree, as a person would."""
    index = window.proxy.mapFromSource(window.model.index_for_path(str(path)))
    assert index.isValid(), path
    window.tree.scrollTo(index)
    rect = window.tree.visualRect(index)
    qtbot.mouseClick(window.tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    node = window.current_node()
    assert node is not None and node.path == str(path)


def type_into(qtbot, widget, text: str) -> None:  # type: ignore[no-untyped-def]
    widget.setFocus()
    widget.selectAll()
    qtbot.keyClicks(widget, text)


def test_open_chain_shows_base_with_children(qtbot, window, chain):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)

    model = window.model
    assert model.rowCount() == 1
    root = model.index(0, 0)
    assert model.data(root) == "base.vdi"
    child = model.index(0, 0, root)
    assert model.data(child) == "diff1.vdi"
    grandchild = model.index(0, 0, child)
    assert model.data(grandchild) == "diff2.vdi"
    assert model.rowCount(grandchild) == 0
    assert model.data(model.index(0, Column.FORMAT)) == "VDI"
    assert model.data(model.index(0, Column.VIRTUAL_SIZE)) == "8 MiB"
    assert "8,388,608 bytes" in model.data(model.index(0, Column.VIRTUAL_SIZE),
                                           Qt.ItemDataRole.ToolTipRole)
    assert model.data(grandchild.siblingAtColumn(Column.VARIANT)) == "Differencing"
    # The opened image is selected and shown.
    assert window.current_node().path == str(diff2)
    assert window.library.entries == [str(diff2)]


def test_panels_show_the_selected_image(qtbot, window, chain):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, base)

    expected = read_top(base)
    assert window.general_panel.paths["location"].text() == str(base)
    assert window.general_panel.values["virtual_size"].text() == "8 MiB (8,388,608 bytes)"
    assert window.general_panel.values["type"].text().startswith("Base image")
    assert window.uuid_panel.editors["uuid"].text() == str(expected["uuid"])
    assert window.comment_panel.editor.toPlainText() == "the base"
    assert "DIFF" not in window.flags_panel.image_flags.text()
    assert "READONLY | INFO" in window.flags_panel.open_flags.text()

    select(qtbot, window, diff1)
    assert window.uuid_panel.editors["parent_uuid"].text() == str(expected["uuid"])
    assert window.comment_panel.editor.toPlainText() == "first"
    assert "DIFF" in window.flags_panel.image_flags.text()
    assert window.general_panel.paths["parent"].text() == str(base)


def test_browsing_changes_no_byte(qtbot, window, chain):
    before = {p: p.read_bytes() for p in chain}
    open_and_wait(qtbot, window, chain[2])
    for path in chain:
        select(qtbot, window, path)
    with qtbot.waitSignal(window.refreshed):
        window.refresh()
    assert {p: p.read_bytes() for p in chain} == before


def test_comment_edit_is_written(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff1)
    panel = window.comment_panel
    assert not panel.apply_button.isEnabled()
    type_into(qtbot, panel.editor, "edited in the GUI")
    assert panel.apply_button.isEnabled()

    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        qtbot.mouseClick(panel.apply_button, Qt.MouseButton.LeftButton)

    assert read_top(diff1)["comment"] == "edited in the GUI"
    assert window.current_node().path == str(diff1)
    assert panel.editor.toPlainText() == "edited in the GUI"
    assert dialogs.dialogs == []
    # The chain is intact.
    assert len(discover_chain(diff2)) == 3


def test_invalid_uuid_is_refused_and_nothing_written(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff1)
    before = diff1.read_bytes()
    editor = window.uuid_panel.editors["uuid"]
    type_into(qtbot, editor, "1234-not-a-uuid")
    assert editor.text() == "1234--a-d"  # letters that cannot be in a UUID are refused
    with qtbot.assertNotEmitted(window.edit_finished, wait=50):
        qtbot.mouseClick(window.uuid_panel.apply_button, Qt.MouseButton.LeftButton)
    assert dialogs.titles() == ["Value refused"]
    assert "not a valid UUID" in dialogs.dialogs[0].text
    assert window.jobs.active == []
    assert diff1.read_bytes() == before


def test_out_of_range_geometry_is_refused_and_nothing_written(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff2)
    before = diff2.read_bytes()
    spins = window.geometry_panel.lchs.spins
    for part, value in (("cylinders", "100"), ("heads", "300"), ("sectors", "63")):
        type_into(qtbot, spins[part].lineEdit(), value)
        spins[part].interpretText()
    assert window.geometry_panel.lchs.geometry() == Geometry(100, 300, 63)
    with qtbot.assertNotEmitted(window.edit_finished, wait=50):
        qtbot.mouseClick(window.geometry_panel.apply_button, Qt.MouseButton.LeftButton)
    assert dialogs.titles() == ["Value refused"]
    assert "at most 255 heads" in dialogs.dialogs[0].text
    assert diff2.read_bytes() == before


def test_geometry_edit_is_written(qtbot, window, chain):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff2)
    spins = window.geometry_panel.lchs.spins
    for part, value in (("cylinders", "16"), ("heads", "16"), ("sectors", "63")):
        spins[part].setFocus()
        spins[part].selectAll()
        qtbot.keyClicks(spins[part], value)
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        window.geometry_panel.apply_button.click()
    assert read_top(diff2)["lchs"] == Geometry(16, 16, 63)
    assert window.current_node().info.lchs == Geometry(16, 16, 63)


def test_new_uuid_keeps_the_chain_linked(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, base)
    old = read_top(base)["uuid"]
    dialogs.accept = True  # "Change", with "also update the differencing image" ticked
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        window.uuid_panel.renew_buttons["uuid"].click()
    assert dialogs.titles() == ["Change UUIDs?"]
    new = read_top(base)["uuid"]
    assert new != old
    assert read_top(diff1)["parent_uuid"] == new
    assert len(discover_chain(diff2)) == 3
    assert all(node.ok for node in window.model.tree.nodes.values())


def test_new_uuid_cancelled_changes_nothing(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, base)
    before = base.read_bytes()
    with qtbot.assertNotEmitted(window.edit_finished, wait=50):
        window.uuid_panel.renew_buttons["uuid"].click()
    assert dialogs.titles() == ["Change UUIDs?"]
    assert base.read_bytes() == before


def test_corrupt_file_shows_an_error_and_the_app_keeps_running(qtbot, window, chain,
                                                               tmp_path, dialogs):
    broken = tmp_path / "broken.vdi"
    shutil.copy(chain[0], broken)
    with open(broken, "r+b") as f:
        f.truncate(600)
    garbage = tmp_path / "notes.vdi"
    garbage.write_bytes(b"just some text, not a disk image\n" * 100)

    open_and_wait(qtbot, window, broken, garbage)

    assert dialogs.titles() == ["Damaged image", "Not supported"]
    assert "broken.vdi" in dialogs.dialogs[0].text
    assert "VERR_VD_IMAGE_CORRUPTED" in dialogs.dialogs[0].details
    assert "VERR_NOT_SUPPORTED" in dialogs.dialogs[1].details
    assert dialogs.crashes == []
    assert window.library.entries == []
    # Still working: a good chain opens afterwards.
    open_and_wait(qtbot, window, chain[2])
    assert len(window.model.tree) == 3


def test_edit_of_a_locked_image_is_refused_in_words(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff2)
    before = diff2.read_bytes()
    type_into(qtbot, window.comment_panel.editor, "never written")
    # Another writer (as a running virtual machine would be) holds the image.
    with open_chain(diff2, OpenFlags.NORMAL):
        with qtbot.waitSignal(window.edit_failed, timeout=10_000):
            window.comment_panel.apply_button.click()
    assert dialogs.titles() == ["Image in use"]
    assert "VERR_FILE_LOCK_FAILED" in dialogs.dialogs[0].details
    assert diff2.read_bytes() == before
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        pass  # the panel is shown again with what the image really holds
    assert window.comment_panel.editor.toPlainText() == ""
    assert window.comment_panel.body.isEnabled()


def test_missing_files_are_shown_as_inaccessible(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    os.unlink(diff2)
    with qtbot.waitSignal(window.refreshed):
        window.refresh()
    node = window.model.tree.find(diff2)
    assert node is not None and node.info is None and node.error is not None
    index = window.model.index_for_path(str(diff2))
    assert window.model.data(index.siblingAtColumn(Column.FORMAT)) == "inaccessible"
    assert "Inaccessible" in window.model.data(index, Qt.ItemDataRole.ToolTipRole)
    select(qtbot, window, diff2)
    assert "cannot be read" in window.general_panel.notice.text()
    assert not window.new_diff_action.isEnabled()
    assert dialogs.dialogs == []


def test_library_persists_across_restart(qtbot, window, chain, tmp_path, library_path):
    open_and_wait(qtbot, window, chain[2])
    window.close()

    again = MainWindow(Library(library_path), Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(again)
    with qtbot.waitSignal(again.refreshed):
        again.refresh()
    assert again.library.entries == [str(chain[2])]
    assert sorted(node.name for node in again.model.tree.nodes.values()) == \
        ["base.vdi", "diff1.vdi", "diff2.vdi"]
    assert Settings(tmp_path / "settings.ini").recent_files == [str(chain[2])]


def test_remove_from_library_keeps_the_files(qtbot, window, chain):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, base, diff2)
    select(qtbot, window, diff1)
    with qtbot.waitSignal(window.refreshed):
        window.remove_action.trigger()
    assert window.library.entries == [str(base)]
    assert [n.name for n in window.model.tree.nodes.values()] == ["base.vdi"]
    assert window.current_node().path == str(base)
    assert all(p.exists() for p in chain)


def test_dropping_files_opens_them(qtbot, window, chain):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(chain[1]))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.refreshed):
        window.dropEvent(event)
    assert window.library.entries == [str(chain[1])]
    assert len(window.model.tree) == 2


def test_actions_have_shortcuts_tooltips_and_names(window):
    shortcuts = set()
    for action in window.all_actions:
        keys = action.shortcut().toString()
        assert keys, action.text()
        assert keys not in shortcuts, f"{keys} is used twice"
        shortcuts.add(keys)
        assert action.toolTip() and action.statusTip(), action.text()
    assert window.tree.accessibleName() == "Disk images"
    for panel in window.panels:
        assert panel.accessibleName()
    for widget in (window.filter_edit, window.map_view, window.map_view.grid,
                   window.jobs_view, window.jobs_view.table, window.chain_panel.diagram):
        assert widget.accessibleName(), widget


def test_about_names_the_versions(window, dialogs):
    window.about()
    assert dialogs.titles() == ["About vdgui"]
    text = window.about_text()
    assert "Python" in text and "Qt" in text and "PySide6" in text


def test_uuid_copy_to_clipboard(qtbot, window, chain):
    from PySide6.QtGui import QGuiApplication
    open_and_wait(qtbot, window, chain[0])
    editor = window.uuid_panel.editors["uuid"]
    editor.copy_action.trigger()
    assert uuid.UUID(QGuiApplication.clipboard().text()) == read_top(chain[0])["uuid"]



def test_open_dialog_and_recent_files(qtbot, window, chain, monkeypatch):
    from PySide6.QtWidgets import QFileDialog
    seen = {}

    def fake_dialog(parent, caption, folder, filters):  # type: ignore[no-untyped-def]
        seen["filters"] = filters
        return [str(chain[1])], filters.split(";;")[0]

    monkeypatch.setattr(QFileDialog, "getOpenFileNames", fake_dialog)
    with qtbot.waitSignal(window.refreshed):
        window.open_action.trigger()
    assert "*.vdi" in seen["filters"]
    assert window.library.entries == [str(chain[1])]

    window._fill_recent_menu()
    recent = [a for a in window.recent_menu.actions() if a.text() == "diff1.vdi"]
    assert recent and recent[0].toolTip() == str(chain[1])
    with qtbot.waitSignal(window.refreshed):
        recent[0].trigger()  # already in the library: nothing added twice
    assert window.library.entries == [str(chain[1])]
