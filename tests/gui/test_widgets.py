"""Input widgets: the size editor, the UUID field."""

from __future__ import annotations

import uuid

from vdgui.gui.widgets.size_edit import SizeEdit
from vdgui.gui.widgets.uuid_edit import UuidEdit

MIB, GIB, TIB = 1 << 20, 1 << 30, 1 << 40


def typed(qtbot, edit: SizeEdit, text: str) -> int | None:  # type: ignore[no-untyped-def]
    edit.line_edit.selectAll()
    qtbot.keyClicks(edit.line_edit, text)
    return edit.value()


def test_size_edit_understands_units(qtbot):
    edit = SizeEdit(minimum=MIB, maximum=64 * TIB, value=4 * GIB)
    qtbot.addWidget(edit)
    assert edit.value() == 4 * GIB
    assert typed(qtbot, edit, "20G") == 20 * GIB
    assert typed(qtbot, edit, "1.5 TiB") == 3 * TIB // 2
    assert typed(qtbot, edit, "512 MB") == 512 * MIB
    assert "536,870,912 bytes" in edit.line_edit.toolTip()
    assert typed(qtbot, edit, "1048577") == MIB + 512  # rounded up to a sector
    assert typed(qtbot, edit, "lots") is None
    assert "unit" in edit.problem()
    assert typed(qtbot, edit, "100K") is None
    assert "at least 1 MiB" in edit.problem()
    assert typed(qtbot, edit, "65T") is None
    assert "at most 64 TiB" in edit.problem()


def test_size_slider_is_logarithmic_and_exact(qtbot):
    edit = SizeEdit(minimum=MIB, maximum=TIB, value=MIB)
    qtbot.addWidget(edit)
    with qtbot.waitSignal(edit.valueChanged):
        edit.slider.setValue(8 * 10 + 2)  # ten doublings, then two eighths: 1.25 GiB
    assert edit.value() == GIB + GIB // 4
    assert edit.line_edit.text() == "1.25 GiB"
    typed(qtbot, edit, "3G")
    assert edit.slider.value() == 8 * 11 + 4  # 2 GiB * 1.5
    edit.slider.setValue(edit.slider.maximum())
    assert edit.value() == TIB


def test_uuid_edit(qtbot):
    edit = UuidEdit(label="UUID")
    qtbot.addWidget(edit)
    value = uuid.uuid4()
    edit.setUuid(value)
    assert edit.uuid() == value
    edit.setText("{" + str(value).upper() + "}")
    assert edit.uuid() == value
    edit.clear()
    qtbot.keyClicks(edit, "xyz-123")
    assert edit.text() == "-123"
    assert edit.uuid() is None
