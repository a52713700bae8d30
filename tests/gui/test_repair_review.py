"""The repair review: the dry run's findings, Apply all, and the second dry run."""

from __future__ import annotations

from PySide6.QtWidgets import QWizard

from vdgui.engine import RepairFlags
from vdgui.engine.ops.repair import repair
from vdgui.gui.models.findings_model import FindingColumn
from vdgui.gui.wizards.repair import PageId

from .helpers import click, make_damaged_vdi, open_and_wait, select

Button = QWizard.WizardButton


def test_damaged_vdi_is_reviewed_repaired_and_checked_again(qtbot, window, tmp_path,
                                                           dialogs):
    image = make_damaged_vdi(tmp_path / "damaged.vdi")
    before = image.read_bytes()
    open_and_wait(qtbot, window, image)
    select(qtbot, window, image)
    assert window.repair_action.isEnabled()
    wizard = window.repair_image()
    page = wizard.check_page
    qtbot.waitUntil(page.isComplete, timeout=10_000)

    model = page.model
    rows = [[model.data(model.index(r, c)) for c in FindingColumn]
            for r in range(model.rowCount())]
    assert ["Error", "Block 3 points to physical block 999, past the 4 allocated ones",
            "offset 0x10000c", "Make the block read as zeros"] in rows
    assert any(row[1] == "Block 2 shares physical block 0 with block 0" for row in rows)
    assert "Every one can be repaired" in page.verdict.text()
    assert page.command.text() == f"vdimg check {image}"
    assert image.read_bytes() == before  # the check wrote nothing
    commit = wizard.button(Button.CommitButton)
    assert commit.isVisible() and commit.text() == "&Apply all"

    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        with qtbot.waitSignal(wizard.repaired, timeout=10_000):
            click(qtbot, commit)
    assert wizard.currentId() == PageId.RESULT
    result = wizard.result_page
    assert result.model.rowCount() == 0  # the second dry run is clean
    assert "No problem found" in result.status.text()
    assert result.command.text() == f"vdimg repair {image}"
    assert repair(str(image), flags=RepairFlags.DRY_RUN).clean
    assert dialogs.dialogs == []
    click(qtbot, wizard.button(Button.FinishButton))


def test_a_clean_image_needs_no_repair(qtbot, window, chain):
    open_and_wait(qtbot, window, chain[0])
    wizard = window.repair_image()
    page = wizard.check_page
    qtbot.waitUntil(page.isComplete, timeout=10_000)
    assert page.model.rowCount() == 0
    assert "No problem found" in page.verdict.text()
    assert not wizard.button(Button.CommitButton).isVisible()
    assert wizard.button(Button.FinishButton).isVisible()
    wizard.reject()


def test_an_image_that_no_longer_opens_can_still_be_checked(qtbot, window, tmp_path,
                                                           dialogs):
    image = make_damaged_vdi(tmp_path / "cut.vdi")
    open_and_wait(qtbot, window, image)
    with open(image, "r+b") as f:
        f.seek(0x40)
        f.write(b"\0" * 4)  # the signature is gone: the image no longer opens
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        window.refresh()
    select(qtbot, window, image)
    assert window.current_node().info is None  # inaccessible, with the reason
    assert window.repair_action.isEnabled()
    wizard = window.repair_image()
    page = wizard.check_page
    qtbot.waitUntil(page.isComplete, timeout=10_000)
    assert "signature is missing" in page.model.data(page.model.index(0, FindingColumn.WHAT))
    assert page.model.data(page.model.index(0, FindingColumn.FIX)) == "cannot be repaired"
    assert "None can be repaired" in page.verdict.text()
    assert not wizard.button(Button.CommitButton).isVisible()
    assert not dialogs.crashes
    wizard.reject()
