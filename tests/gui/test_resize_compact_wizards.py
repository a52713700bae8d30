"""The resize and compact wizards: what they show before running, what they refuse,
and the images they leave."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QWizard

from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain

from .helpers import MIB, click, next_page, open_and_wait, read_all, select, type_into

Button = QWizard.WizardButton


def finish(qtbot, window, wizard) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        with qtbot.waitSignal(window.edit_finished, timeout=10_000):
            click(qtbot, wizard.button(Button.FinishButton))


def size_of(path: Path) -> int:
    with open_chain(path, OpenFlags.READONLY) as disk:
        return disk.size


def test_grow_the_top_of_a_chain(qtbot, window, chain, dialogs):
    base, diff1, diff2 = chain
    content = read_all(diff2)
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff2)
    wizard = window.resize_image()
    page = wizard.size_page
    qtbot.waitUntil(lambda: page.facts is not None, timeout=10_000)
    assert page.map_view.grid.map.size == 8 * MIB
    type_into(qtbot, page.size_edit.line_edit, "12M")
    assert "grows by 4 MiB" in page.explanation.text()
    next_page(qtbot, wizard)
    assert wizard.summary_page.command.text() == f"vdimg resize {diff2} 12M"
    finish(qtbot, window, wizard)
    assert size_of(diff2) == 12 * MIB
    grown = read_all(diff2)
    assert grown[:8 * MIB] == content and not any(grown[8 * MIB:])
    assert window.current_node().info.size == 12 * MIB
    assert dialogs.dialogs == []


def test_shrinking_stops_at_the_image_s_own_data(qtbot, window, tmp_path):
    image = tmp_path / "disk.vdi"
    with Disk() as disk:
        disk.create_base(image, 16 * MIB, "VDI")
        disk.write(5 * MIB, b"keep" * 1024)
    open_and_wait(qtbot, window, image)
    wizard = window.resize_image()
    page = wizard.size_page
    qtbot.waitUntil(lambda: page.facts is not None, timeout=10_000)
    type_into(qtbot, page.size_edit.line_edit, "4M")
    assert "stores data up to 6 MiB" in page.explanation.text()
    assert "refuses" in page.explanation.text()
    assert page.map_view.grid._marker == 4 * MIB  # the part cut off is shaded
    assert not wizard.button(Button.NextButton).isEnabled()
    type_into(qtbot, page.size_edit.line_edit, "8M")
    assert "shrinks by 8 MiB" in page.explanation.text()
    next_page(qtbot, wizard)
    assert wizard.summary_page.command.text() == f"vdimg resize --shrink {image} 8M"
    finish(qtbot, window, wizard)
    assert size_of(image) == 8 * MIB
    assert read_all(image)[5 * MIB:5 * MIB + 4096] == b"keep" * 1024


def test_fixed_images_are_not_offered_a_smaller_size(qtbot, window, tmp_path):
    image = tmp_path / "fixed.vdi"
    with Disk() as disk:
        disk.create_base(image, 4 * MIB, "VDI", ImageFlags.FIXED)
    open_and_wait(qtbot, window, image)
    wizard = window.resize_image()
    page = wizard.size_page
    qtbot.waitUntil(lambda: page.facts is not None, timeout=10_000)
    type_into(qtbot, page.size_edit.line_edit, "2M")
    assert "fixed-size image stores the whole disk" in page.explanation.text()
    assert not wizard.button(Button.NextButton).isEnabled()
    wizard.reject()


def test_a_shrink_the_engine_refuses_is_shown_in_its_words(qtbot, window, tmp_path,
                                                            dialogs):
    """What the wizard would not even offer, asked of the engine directly."""
    from vdgui.gui.operations import ResizeParams, resize_image
    image = tmp_path / "fixed.vdi"
    with Disk() as disk:
        disk.create_base(image, 4 * MIB, "VDI", ImageFlags.FIXED)
    before = image.read_bytes()
    params = ResizeParams(str(image), 2 * MIB, 4 * MIB)
    with qtbot.waitSignal(window.edit_failed, timeout=10_000):
        window.run_operation("Resizing", "resize",
                             lambda progress: resize_image(params, progress),
                             writes=[str(image)])
    assert dialogs.titles() == ["Cannot shrink"]
    assert "Reason: A fixed VDI image cannot be shrunk" in dialogs.dialogs[0].informative
    assert image.read_bytes() == before


def test_compact_shows_what_it_frees_first(qtbot, window, tmp_path, dialogs):
    image = tmp_path / "zeroed.vdi"
    with Disk() as disk:
        disk.create_base(image, 8 * MIB, "VDI")
        disk.write(0, b"x" * (3 * MIB))
        disk.write(MIB, bytes(MIB))  # allocated, now all zeros
    content = read_all(image)
    before = image.stat().st_size
    open_and_wait(qtbot, window, image)
    wizard = window.compact_image()
    page = wizard.plan_page
    qtbot.waitUntil(page.isComplete, timeout=10_000)
    # In a base, "what lies below" is zeros: the zeroed block repeats it.
    assert page.values["same"].text() == "1 MiB"
    assert "1,048,576 bytes" in page.values["same"].toolTip()
    assert "frees about 1 MiB" in page.verdict.text()
    assert page.map_view.grid.map.layers[0].stored == 3 * MIB
    next_page(qtbot, wizard)
    assert wizard.summary_page.command.text() == f"vdimg compact {image}"
    finish(qtbot, window, wizard)
    assert image.stat().st_size <= before - MIB
    assert read_all(image) == content
    assert dialogs.dialogs == []


def test_a_format_that_cannot_be_compacted_is_refused_on_the_first_page(qtbot, window,
                                                                       tmp_path):
    image = tmp_path / "disk.raw"
    with Disk() as disk:
        disk.create_base(image, 2 * MIB, "RAW")
    open_and_wait(qtbot, window, image)
    wizard = window.compact_image()
    page = wizard.plan_page
    qtbot.waitUntil(lambda: page.facts is not None, timeout=10_000)
    assert "cannot be compacted" in page.verdict.text()
    assert not wizard.button(Button.NextButton).isEnabled()
    wizard.reject()
