"""Protocol choice and parameters: a form built from a protocol's declared parameters.

:class:`ParameterForm` has one row per :class:`~mea_control.protocol.Parameter`
(spin box, check box, combo box or line edit), checks each value against its range
(a value typed outside it stays, and its field turns red and says why) and the whole
set with the protocol's own ``validate`` after every edit, and shows the message
inline. :class:`ProtocolPanel` adds the protocol choice, Start / Pause / Stop, the
run's progress and why a Start was refused; the main window connects to its signals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mea_control.gui.status_line import StatusLine
from mea_control.protocol import (
    Parameter,
    Protocol,
    ProtocolError,
    load_protocol,
    shipped_protocols,
)

__all__ = ["ParameterForm", "ProtocolPanel"]

ERROR_STYLE = "color: #b00020;"
#: Background and text of an editor holding a value outside its parameter's range.
INVALID_BASE, INVALID_TEXT = "#ffd6dc", "#b00020"
INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e12
#: The parameter form's least height, in text lines (about 6 rows of editors).
FORM_MIN_LINES = 12


def _step_within(box: QSpinBox | QDoubleSpinBox, steps: int) -> None:
    """An arrow or wheel step that stays within the parameter's range (a typed value may
    leave it: the form then says so at the field)."""
    lo, hi = box.bounds
    box.setValue(min(max(box.value() + steps * box.singleStep(), lo), hi))


def _steps_enabled(box: QSpinBox | QDoubleSpinBox) -> QAbstractSpinBox.StepEnabledFlag:
    lo, hi = box.bounds
    flags = QAbstractSpinBox.StepEnabledFlag.StepNone
    if box.value() < hi:
        flags |= QAbstractSpinBox.StepEnabledFlag.StepUpEnabled
    if box.value() > lo:
        flags |= QAbstractSpinBox.StepEnabledFlag.StepDownEnabled
    return flags


def _compact(box: QSpinBox | QDoubleSpinBox, hint: QSize) -> QSize:
    """The width a value within the box's bounds needs, not its typing range's (which
    would widen the form beyond its panel)."""
    texts = [box.textFromValue(v) for v in box.bounds if abs(v) < 1e9] or ["0.000000"]
    text = max(texts, key=len) + box.suffix()
    return QSize(box.fontMetrics().horizontalAdvance(text) + 40, hint.height())


class _WithinBounds:
    """What both number boxes share: steps stay within ``bounds`` (typing may leave them),
    and the box is as wide as its bounds need, not its typing range."""

    def stepBy(self, steps: int) -> None:  # noqa: N802 (Qt override)
        _step_within(self, steps)

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:  # noqa: N802 (Qt override)
        return _steps_enabled(self)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return _compact(self, super().sizeHint())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return _compact(self, super().minimumSizeHint())


class _IntBox(_WithinBounds, QSpinBox):
    """A spin box that takes any typed integer and steps within ``bounds``."""

    def __init__(self, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.bounds = bounds
        self.setRange(-INT_LIMIT, INT_LIMIT)



class _FloatBox(_WithinBounds, QDoubleSpinBox):
    """A double spin box with six decimals that shows no trailing zeros (0.25, not
    0.250000), takes any typed number and steps within ``bounds``."""

    def __init__(self, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.bounds = bounds
        self.setDecimals(6)
        self.setRange(-FLOAT_LIMIT, FLOAT_LIMIT)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt override)
        text = super().textFromValue(value)
        point = self.locale().decimalPoint()
        return text.rstrip("0").rstrip(point) if point in text else text



def _step(param: Parameter) -> float:
    """A spin-box step of about a tenth of the default's magnitude (or of the range)."""
    size = abs(param.default)
    if not size and param.range is not None:
        size = (param.range[1] - param.range[0]) / 10
    return 10.0 ** (math.floor(math.log10(size)) - 1) if size else 1.0


def _editor(param: Parameter) -> QWidget:
    """The editor widget for one parameter (not yet holding a value)."""
    if param.choices is not None:
        box = QComboBox()
        for choice in param.choices:
            box.addItem(str(choice), choice)
        return box
    if param.type is bool:
        return QCheckBox()
    if param.type is int:
        lo, hi = param.range or (-INT_LIMIT, INT_LIMIT)
        spin = _IntBox((max(lo, -INT_LIMIT), min(hi, INT_LIMIT)))
        spin.setSingleStep(max(1, int(_step(param))))
    elif param.type is float:
        spin = _FloatBox(param.range or (-FLOAT_LIMIT, FLOAT_LIMIT))
        spin.setSingleStep(_step(param))
    else:
        return QLineEdit()
    if param.unit:
        spin.setSuffix(f" {param.unit}")
    spin.setAlignment(Qt.AlignmentFlag.AlignRight)
    spin.setKeyboardTracking(False)  # one check per finished edit, not per keystroke
    return spin


class ParameterForm(QWidget):
    """One row per declared parameter of a Protocol class, defaults filled in."""

    #: Any value changed (the form has already re-validated; see :attr:`error`).
    changed = Signal()

    def __init__(
        self, protocol_cls: type[Protocol], parent: QWidget | None = None, show_message: bool = True
    ) -> None:
        """``show_message=False``: the owner shows :attr:`error` itself (the red labels stay)."""
        super().__init__(parent)
        self.protocol_cls = protocol_cls
        self.show_message = show_message
        self.editors: dict[str, QWidget] = {}
        self.labels: dict[str, QLabel] = {}
        self.tips: dict[str, str] = {}
        self.palettes: dict[str, QPalette] = {}
        #: What is wrong with each field's own value (outside its range), by name.
        self.field_errors: dict[str, str] = {}
        #: The message of the last :meth:`validate`, or None when the values are valid.
        self.error: str | None = None
        layout = QFormLayout(self)
        layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        for name, param in protocol_cls.parameters.items():
            editor = _editor(param)
            tip = param.help or name
            tip += f"\n{param.describe()}"
            label = QLabel(name)
            label.setToolTip(tip)
            editor.setToolTip(tip)
            self.editors[name], self.labels[name], self.tips[name] = editor, label, tip
            self.palettes[name] = editor.palette()
            self._put(name, param.default)
            self._connect(editor)
            editor.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            editor.installEventFilter(self)
            if param.unit and isinstance(editor, (QLineEdit, QComboBox, QCheckBox)):
                row = QHBoxLayout()
                row.addWidget(editor, 1)
                row.addWidget(QLabel(param.unit))
                layout.addRow(label, row)
            else:
                layout.addRow(label, editor)
        if not protocol_cls.parameters:
            layout.addRow(QLabel("This protocol has no parameters."))
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setStyleSheet(ERROR_STYLE)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        layout.addRow(self.message)
        self.validate()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt)
        """The wheel scrolls the form; it changes a value only in the focused editor."""
        if event.type() == QEvent.Type.Wheel and not watched.hasFocus():
            event.ignore()  # ignored: Qt passes it on to the scroll area
            return True
        return super().eventFilter(watched, event)

    def _connect(self, editor: QWidget) -> None:
        if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            editor.valueChanged.connect(self._edited)
        elif isinstance(editor, QCheckBox):
            editor.toggled.connect(self._edited)
        elif isinstance(editor, QComboBox):
            editor.currentIndexChanged.connect(self._edited)
        else:
            editor.editingFinished.connect(self._edited)

    def _edited(self, *_: Any) -> None:
        self.validate()
        self.changed.emit()

    def _put(self, name: str, value: Any) -> None:
        editor = self.editors[name]
        if isinstance(editor, QComboBox):
            editor.setCurrentIndex(max(0, editor.findData(value)))
        elif isinstance(editor, QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            editor.setValue(value)
        else:
            editor.setText(str(value))

    def _get(self, name: str) -> Any:
        editor = self.editors[name]
        if isinstance(editor, QComboBox):
            return editor.currentData()
        if isinstance(editor, QCheckBox):
            return editor.isChecked()
        if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            return editor.value()
        return editor.text()

    def values(self) -> dict[str, Any]:
        """The parameter values as their declared types."""
        return {name: self._get(name) for name in self.editors}

    def set_values(self, values: dict[str, Any]) -> None:
        """Fill in saved values (text is parsed); unknown names are ignored, bad values
        give the default. Emits ``changed`` once."""
        for name, param in self.protocol_cls.parameters.items():
            if name not in values:
                continue
            try:
                value = param.coerce(name, values[name])
            except ProtocolError:
                value = param.default
            editor = self.editors[name]
            blocked = editor.blockSignals(True)
            self._put(name, value)
            editor.blockSignals(blocked)
        self._edited()

    def validate(self) -> str | None:
        """Check each field's range, then build the protocol from the values; the first
        error message (one line) or None.

        A field outside its range keeps the typed value, turns red and says why in its
        tooltip ("0.5 at most"); the message is shown under the fields, and the labels of
        the parameters it names turn red."""
        values = self.values()
        self.field_errors = {}
        for name, param in self.protocol_cls.parameters.items():
            problem = _out_of_range(param, values[name])
            if problem:
                self.field_errors[name] = problem
        for name, editor in self.editors.items():
            problem = self.field_errors.get(name)
            editor.setPalette(_invalid_palette(editor) if problem else self.palettes[name])
            editor.setToolTip(f"{problem}\n{self.tips[name]}" if problem else self.tips[name])
        if self.field_errors:
            name, problem = next(iter(self.field_errors.items()))
            self.error = f"{name}: {problem}, not {values[name]:g}"
        else:
            self.error = self._protocol_error(values)
        self.message.setText(self.error or "")
        self.message.setVisible(self.show_message and self.error is not None)
        self.mark(self.error)
        return self.error

    def _protocol_error(self, values: dict[str, Any]) -> str | None:
        """The protocol's own check of the values: its message (one line) or None."""
        try:
            self.protocol_cls(**values)
        except ProtocolError as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        except Exception as exc:  # a user's validate() may raise anything
            return f"{type(exc).__name__} in {self.protocol_cls.name}.validate: {exc}"
        return None

    def mark(self, message: str | None) -> None:
        """Turn red the labels of the parameters ``message`` names (none: all plain)."""
        for name, label in self.labels.items():
            named = message is not None and re.search(rf"\b{re.escape(name)}\b", message)
            label.setStyleSheet(ERROR_STYLE + " font-weight: bold;" if named else "")

    def commit_typing(self) -> None:
        """Take what is typed in a spin box that has not reported it yet (the focus may
        not have left it)."""
        for editor in self.editors.values():
            if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                editor.interpretText()


def _invalid_palette(editor: QWidget) -> QPalette:
    """The editor's colours with a red background and text (its native frame and arrows
    stay, which a style sheet would replace)."""
    palette = QPalette(editor.palette())
    palette.setColor(QPalette.ColorRole.Base, QColor(INVALID_BASE))
    palette.setColor(QPalette.ColorRole.Text, QColor(INVALID_TEXT))
    return palette


def _out_of_range(param: Parameter, value: Any) -> str | None:
    """'0.5 at most' or '0.05 s at least' when a number is outside the parameter's range."""
    if param.range is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    lo, hi = param.range
    unit = f" {param.unit}" if param.unit else ""
    if value > hi:
        return f"{hi:g}{unit} at most"
    if value < lo:
        return f"{lo:g}{unit} at least"
    return None


class _FormScroll(QScrollArea):
    """The parameter form's scroll area: it takes the spare height, and asks for no more
    than its minimum. (Asking for the whole form would make the side panel scroll; asking
    for nothing, as an ignored size hint does, makes the side panel's scroll area, which
    sizes word-wrapped panels by their preferred heights, squeeze it over the buttons.)"""

    def __init__(self) -> None:
        super().__init__()
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self.minimumHeight())


class ProtocolPanel(QWidget):
    """Choose a protocol, set its parameters, start / pause / stop it and follow its progress.

    ``ask_file`` returns the path of a protocol file to open, or None (cancelled); it
    defaults to a QFileDialog and tests replace it.
    """

    OPEN_FILE = "Open file…"

    start_requested = Signal(str, object)  # shipped name or file path, typed values
    pause_requested = Signal()
    stop_requested = Signal()
    #: The protocol or one of its values changed (e.g. to save the settings).
    changed = Signal()

    def __init__(
        self,
        parent: QWidget | None = None,
        ask_file: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(parent)
        self.ask_file = ask_file or self._ask_file
        self.protocol_cls: type[Protocol] | None = None
        self.form: ParameterForm | None = None
        self.running = False
        self.load_error: str | None = None
        #: Why the last Start was refused before the run (see refuse()), until an edit.
        self.refusal: str | None = None
        self._current = -1

        self.combo = QComboBox()
        for name in shipped_protocols():
            self.combo.addItem(name, name)
        self.combo.insertSeparator(self.combo.count())
        self.combo.addItem(self.OPEN_FILE)
        self.combo.setToolTip("a shipped protocol, or a protocol .py file of your own")
        self.description = StatusLine()  # one line; the whole text is its tooltip
        self.description.setStyleSheet("color: palette(placeholder-text);")
        #: Why Start is disabled: the protocol's message, or why its file did not load.
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet(ERROR_STYLE)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.hide()
        self.scroll = _FormScroll()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setMinimumHeight(FORM_MIN_LINES * self.fontMetrics().lineSpacing())

        self.start = QPushButton("Start")
        self.pause = QPushButton("Pause")
        self.stop = QPushButton("Stop")
        self.start.setToolTip("start a run with these parameters")
        self.start.clicked.connect(self._start)
        self.pause.clicked.connect(lambda: self.pause_requested.emit())
        self.stop.clicked.connect(lambda: self.stop_requested.emit())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress_text = QLabel("not running")

        top = QHBoxLayout()
        top.addWidget(QLabel("Protocol"))
        top.addWidget(self.combo, 1)
        buttons = QHBoxLayout()
        for button in (self.start, self.pause, self.stop):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.description)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_text)

        self.combo.currentIndexChanged.connect(self._chosen)
        if self.combo.count() > 2:
            self._chosen(0)
        self.set_running(False)

    # -- protocol choice --------------------------------------------------------------------

    def _ask_file(self) -> str | None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open protocol", str(Path.cwd()), "Protocols (*.py)"
        )
        return path or None

    def _chosen(self, index: int) -> None:
        if self.combo.itemText(index) != self.OPEN_FILE:
            self._current = index
            self._load(self.combo.itemData(index))
            return
        path = self.ask_file()
        if path:
            self.set_protocol(path)
        else:  # cancelled: back to what was there
            self._select(self._current)

    def _select(self, index: int) -> None:
        blocked = self.combo.blockSignals(True)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(blocked)

    def set_protocol(self, name_or_path: str, values: dict[str, Any] | None = None) -> None:
        """Choose a shipped protocol (by name) or a protocol file, e.g. restored from
        settings, and optionally fill in saved values."""
        index = self.combo.findData(name_or_path)
        if index < 0:  # a file: listed by its name above the separator
            index = self.combo.count() - 2
            self.combo.insertItem(index, Path(name_or_path).name, name_or_path)
            self.combo.setItemData(index, name_or_path, Qt.ItemDataRole.ToolTipRole)
        self._current = index
        self._select(index)
        self._load(name_or_path)  # also when already chosen: a fixed file is read again
        if values and self.form is not None:
            self.form.set_values(values)

    def _load(self, name_or_path: str) -> None:
        old = self.scroll.takeWidget()
        if old is not None:
            old.deleteLater()
        self.form = None
        self.load_error = None
        try:
            self.protocol_cls, _ = load_protocol(name_or_path)
        except ProtocolError as exc:
            self.protocol_cls = None
            self.load_error = f"Cannot load this protocol: {exc}"
            self.description.clear()
        else:
            self.description.setText(self.protocol_cls.describe())
            self.form = ParameterForm(self.protocol_cls, show_message=False)
            self.form.changed.connect(self._form_changed)
            self.scroll.setWidget(self.form)
            self.form.setEnabled(not self.running)
        self.description.setVisible(bool(self.description.text()))
        self._form_changed()

    def _form_changed(self) -> None:
        self.refusal = None  # the values it was about have changed
        self._update_buttons()
        self.changed.emit()

    # -- what the main window uses -----------------------------------------------------------

    def protocol(self) -> str | None:
        """The chosen shipped protocol's name or protocol file's path (None: none yet)."""
        return self.combo.itemData(self._current) if self._current >= 0 else None

    def values(self) -> dict[str, Any]:
        """The form's typed values ({} when no protocol could be loaded)."""
        return self.form.values() if self.form is not None else {}

    def is_valid(self) -> bool:
        """A protocol is loaded and its values pass its checks."""
        return self.form is not None and self.form.error is None

    def _start(self) -> None:
        if self.form is not None:
            self.form.commit_typing()
            self.form.validate()  # a line edit may not have reported its last edit yet
        self._update_buttons()
        if self.is_valid() and not self.running:
            self.start_requested.emit(self.protocol(), self.values())

    def refuse(self, message: str) -> None:
        """Say beside Start why the run was not started (the check before a run,
        :mod:`mea_control.preflight`), with the parameters it names in red, until the
        next edit."""
        self.refusal = message
        if self.form is not None:
            self.form.mark(message)
        self._update_buttons()

    def _update_buttons(self) -> None:
        form_error = self.form.error if self.form else None
        self.status.setText(self.load_error or form_error or self.refusal or "")
        self.status.setVisible(bool(self.status.text()))
        self.start.setEnabled(not self.running and self.is_valid())
        self.pause.setEnabled(self.running)
        self.stop.setEnabled(self.running)

    def set_running(self, running: bool) -> None:
        """Switch between a run in progress (Pause, Stop; choice locked) and idle (Start)."""
        self.running = running
        self.combo.setEnabled(not running)
        if self.form is not None:
            self.form.setEnabled(not running)
        self._update_buttons()

    def set_progress(self, fraction: float, text: str = "") -> None:
        """Show the run's progress (0 to 1) and a line such as session, trial, time left."""
        self.progress.setValue(round(min(max(fraction, 0.0), 1.0) * 1000))
        self.progress_text.setText(text)
