"""The Qt binding must keep Python's reference counts straight.

PySide6 6.12.0 dropped a reference to ``None`` on every call of a Qt method that
returns nothing; on CPython 3.11 (where ``None`` is not immortal) the count then
reaches zero within seconds of painting and the interpreter aborts.  pyproject.toml
excludes that release; this test catches the next one like it.
"""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QLabel


def test_qt_calls_do_not_leak_or_steal_references_to_none(qtbot):
    label = QLabel()
    qtbot.addWidget(label)
    before = sys.getrefcount(None)
    for _ in range(2000):
        label.setText("x")
        label.setToolTip("y")
    assert abs(sys.getrefcount(None) - before) < 100
