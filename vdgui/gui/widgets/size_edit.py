"""A size editor: a text field that understands "20G" or "1.5 TiB", and a slider.

The slider is logarithmic with linear steps inside each power of two (1, 1.125,
1.25, ... 2, 2.25, ...), so that both megabytes and terabytes are a short drag
away and every slider position is a round, exactly representable size.  Typed
sizes are rounded up to whole 512-byte sectors, as the ``vdimg`` command line
does.  The tooltip and the label under the slider give the exact byte count.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QLineEdit, QSlider, QWidget

from ...engine import parse_size
from ...engine.sizes import align_up
from ..formatting import exact_bytes, exact_size, human_size

SECTOR = 512
#: Slider positions per doubling of the size.
STEPS_PER_OCTAVE = 8


def _octave(n: int) -> int:
    return max(n.bit_length() - 1, 0)


class SizeEdit(QWidget):
    """Edits a size in bytes between ``minimum`` and ``maximum``."""

    #: The new size in bytes, or None while the text is not a valid size.
    valueChanged = Signal(object)

    def __init__(self, parent: QWidget | None = None, minimum: int = 1 << 20,
                 maximum: int = 64 << 40, value: int | None = None) -> None:
        super().__init__(parent)
        self._minimum = minimum
        self._maximum = maximum
        self._value: int | None = None
        self._problem = ""

        self.line_edit = QLineEdit(self)
        self.line_edit.setAccessibleName("Size")
        self.line_edit.setPlaceholderText("for example 20G or 1.5 TiB")
        self.line_edit.setToolTip("A size with a unit: 512M, 20G, 1.5 TiB (binary units)")
        self.slider = QSlider(Qt.Orientation.Horizontal, self)
        self.slider.setAccessibleName("Size slider")
        self.slider.setPageStep(STEPS_PER_OCTAVE)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setTickInterval(STEPS_PER_OCTAVE)
        self.min_label = QLabel(self)
        self.min_label.setToolTip("Minimum size for this image")
        self.max_label = QLabel(self)
        self.max_label.setToolTip("Maximum size for this image")
        self.max_label.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.status_label = QLabel(self)
        self.status_label.setAccessibleName("Size status")
        self.status_label.setWordWrap(True)

        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 0, 0, 1, 2)
        layout.addWidget(self.line_edit, 0, 2)
        layout.addWidget(self.min_label, 1, 0)
        layout.addWidget(self.max_label, 1, 1)
        layout.addWidget(self.status_label, 2, 0, 1, 3)
        layout.setColumnStretch(0, 1)
        layout.setColumnStretch(1, 1)
        self.setFocusProxy(self.line_edit)

        self.line_edit.textChanged.connect(self._on_text)
        self.slider.valueChanged.connect(self._on_slider)
        self.setRange(minimum, maximum)
        self.setValue(value if value is not None else minimum)

    # -- public API

    def value(self) -> int | None:
        """The size in bytes (a multiple of 512), or None when the text is invalid."""
        return self._value

    def setValue(self, size: int) -> None:
        self.line_edit.setText(exact_size(size))

    def isValid(self) -> bool:
        return self._value is not None

    def problem(self) -> str:
        """Why the current text is not accepted ("" when it is)."""
        return self._problem

    def minimum(self) -> int:
        return self._minimum

    def maximum(self) -> int:
        return self._maximum

    def setRange(self, minimum: int, maximum: int) -> None:
        self._minimum, self._maximum = minimum, max(minimum, maximum)
        self.slider.blockSignals(True)
        self.slider.setRange(0, self._position(self._maximum))
        self.slider.blockSignals(False)
        self.min_label.setText(exact_size(self._minimum))
        self.max_label.setText(exact_size(self._maximum))
        self._on_text(self.line_edit.text())

    # -- slider scale

    def _position(self, size: int) -> int:
        """Slider position of ``size`` (the step at or below it)."""
        size = min(max(size, self._minimum), self._maximum)
        base = _octave(self._minimum)
        octave = _octave(size)
        step = (size - (1 << octave)) * STEPS_PER_OCTAVE >> octave
        return (octave - base) * STEPS_PER_OCTAVE + step

    def _size_at(self, position: int) -> int:
        octave = _octave(self._minimum) + position // STEPS_PER_OCTAVE
        step = position % STEPS_PER_OCTAVE
        size = (1 << octave) + (step << octave) // STEPS_PER_OCTAVE
        return min(max(size, self._minimum), self._maximum)

    # -- reactions

    def _on_slider(self, position: int) -> None:
        self.line_edit.setText(exact_size(self._size_at(position)))

    def _on_text(self, text: str) -> None:
        value: int | None = None
        problem = ""
        try:
            size = align_up(parse_size(text), SECTOR)
        except ValueError:
            problem = "Type a size with a unit, for example 512M, 20G or 1.5 TiB."
        else:
            if size < self._minimum:
                problem = f"The size must be at least {exact_size(self._minimum)}."
            elif size > self._maximum:
                problem = f"The size must be at most {exact_size(self._maximum)}."
            else:
                value = size
        self._problem = problem
        if value is not None:
            detail = f"{human_size(value)} ({exact_bytes(value)})"
            self.status_label.setText(detail)
            self.line_edit.setToolTip(detail)
            self.slider.blockSignals(True)
            self.slider.setValue(self._position(value))
            self.slider.blockSignals(False)
        else:
            self.status_label.setText(problem)
            self.line_edit.setToolTip(problem)
        self.status_label.setAccessibleDescription(self.status_label.text())
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)
