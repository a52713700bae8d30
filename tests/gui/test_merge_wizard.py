"""The merge wizard: picking on the chain diagram, the review before anything runs,
the merge itself, and the refusals that protect other images."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard

from vdgui.engine import Disk, OpenFlags, discover_chain, open_chain
from vdgui.gui.widgets.chain_diagram import Mark
from vdgui.gui.wizards.merge import PageId

from .helpers import MIB, click, next_page, open_and_wait, read_all, select

Button = QWizard.WizardButton


def start_merge(qtbot, window, top, selected=None):  # type: ignore[no-untyped-def]
    open_and_wait(qtbot, window, top)
    select(qtbot, window, selected or top)
    wizard = window.merge_images()
    assert wizard is not None and wizard.currentId() == PageId.PICK
    return wizard


def click_box(qtbot, diagram, name: str) -> None:  # type: ignore[no-untyped-def]
    node = next(n for n in diagram.nodes if n.name == name)
    qtbot.mouseClick(diagram, Qt.MouseButton.LeftButton, pos=diagram.box(node).center())


def test_commit_the_top_image_into_its_parent(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    content = read_all(diff2)
    wizard = start_merge(qtbot, window, diff2)
    page = wizard.pick_page
    # The default is vdimg merge's: the selected image into its parent.
    assert page.source_target() == (2, 1)
    marks = page.diagram._marks
    assert marks[window.model.tree.find(diff2).key] is Mark.DELETED
    assert marks[window.model.tree.find(diff1).key] is Mark.TARGET
    next_page(qtbot, wizard)

    assert wizard.currentId() == PageId.REVIEW
    qtbot.waitUntil(wizard.review_page.isComplete, timeout=10_000)
    summary = wizard.review_page.summary.text()
    assert "diff2.vdi is deleted" in summary
    assert "diff1.vdi receives their data" in summary
    assert "Data to move: 1 MiB (1,048,576 bytes)" in summary
    assert "Space freed: about" in summary
    assert "Chain afterwards: base.vdi → diff1.vdi" in summary
    assert wizard.review_page.command.text() == f"vdimg merge --from 2 --to 1 {diff2}"
    assert diff2.exists()  # nothing before Finish

    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        with qtbot.waitSignal(window.edit_finished, timeout=10_000):
            click(qtbot, wizard.button(Button.FinishButton))

    assert not diff2.exists()
    assert [link.path for link in discover_chain(diff1)] == [str(base), str(diff1)]
    assert read_all(diff1) == content
    # The library entry that was merged away is replaced by the image that took its data.
    assert window.library.entries == [str(diff1)]
    assert window.current_node().path == str(diff1)
    assert dialogs.dialogs == []


def test_fold_the_ancestors_into_the_top_by_clicking_the_diagram(qtbot, window, chain):
    base, diff1, diff2 = chain
    content = read_all(diff2)
    wizard = start_merge(qtbot, window, diff2)
    page = wizard.pick_page
    click_box(qtbot, page.diagram, "base.vdi")
    click_box(qtbot, page.diagram, "diff2.vdi")
    click(qtbot, page.keep_newer)
    assert page.source_target() == (0, 2)
    next_page(qtbot, wizard)
    qtbot.waitUntil(wizard.review_page.isComplete, timeout=10_000)
    summary = wizard.review_page.summary.text()
    assert "base.vdi is deleted" in summary and "diff1.vdi is deleted" in summary
    assert "Data to move: 2 MiB" in summary
    with qtbot.waitSignal(window.edit_finished, timeout=10_000):
        click(qtbot, wizard.button(Button.FinishButton))
    assert not base.exists() and not diff1.exists()
    assert [link.path for link in discover_chain(diff2)] == [str(diff2)]
    assert read_all(diff2) == content


def test_merges_that_would_break_other_images_are_refused(qtbot, window, chain):
    base, diff1, diff2 = chain
    branch = diff1.parent / "branch.vdi"
    with open_chain(diff1, OpenFlags.READONLY) as disk:
        disk.create_diff(branch)  # a second snapshot made from diff1
    open_and_wait(qtbot, window, branch)
    wizard = start_merge(qtbot, window, diff2)
    page = wizard.pick_page
    assert page.source_target() == (2, 1)
    assert not page.isComplete()
    assert "branch.vdi is also built on diff1.vdi" in page.error.text()
    assert not wizard.button(Button.NextButton).isEnabled()
    # Deleting diff1 (keeping diff2) would orphan the branch too.
    click(qtbot, page.keep_newer)
    assert "built on diff1.vdi, which the merge deletes" in page.error.text()
    # Picking the same image twice is no merge at all.
    page.set_range(2, 2)
    assert "two different images" in page.error.text()
    wizard.reject()


def test_a_larger_image_cannot_be_merged_into_a_smaller_one(qtbot, window, tmp_path):
    base, top = tmp_path / "small.vdi", tmp_path / "grown.vdi"
    with Disk() as disk:
        disk.create_base(base, 4 * MIB, "VDI")
        disk.create_diff(top)
    from vdgui.engine.ops.resize import resize
    with open_chain(top) as disk:
        resize(disk, 8 * MIB)
    wizard = start_merge(qtbot, window, top)
    assert "resize small.vdi first" in wizard.pick_page.error.text()
    wizard.reject()
