"""Small standard dialogs: questions, refusals, notices.

All of them are ``QMessageBox`` instances shown with ``exec()``, so that tests can
replace ``QMessageBox.exec`` to answer them without blocking.
"""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QMessageBox, QWidget

_Button = QMessageBox.StandardButton


def refuse(parent: QWidget | None, title: str, text: str, hint: str = "") -> None:
    """Tell the person an input was refused (nothing was done)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, _Button.Ok, parent)
    if hint:
        box.setInformativeText(hint)
    box.setAccessibleName(title)
    box.exec()


def confirm(parent: QWidget | None, title: str, text: str, hint: str = "",
            action: str = "Continue", checkbox: str = "",
            checked: bool = True) -> tuple[bool, bool]:
    """Ask before doing something with consequences.

    Returns ``(accepted, checkbox_checked)``; the safe answer (Cancel) is the default.
    """
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, _Button.Cancel, parent)
    if hint:
        box.setInformativeText(hint)
    go = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(_Button.Cancel)
    box.setAccessibleName(title)
    check = None
    if checkbox:
        check = QCheckBox(checkbox, box)
        check.setChecked(checked)
        box.setCheckBox(check)
    box.exec()
    return box.clickedButton() is go, bool(check and check.isChecked())
