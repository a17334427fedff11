"""The protocol form and panel: editors from declared parameters, checks, signals, files."""

import pytest
from PySide6.QtCore import QPoint, QRect, QSettings
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

from mea_control.gui.forms import ParameterForm, ProtocolPanel
from mea_control.gui.session import RigSession
from mea_control.gui.window import MainWindow
from mea_control.protocol import load_protocol

SMALL = '''
from mea_control.protocol import Parameter, Protocol, ProtocolError

class Small(Protocol):
    """A small protocol from a file."""
    parameters = {
        "rate_hz": Parameter(float, 2.5, unit="Hz", range=(0.1, 100.0), help="how often"),
        "count": Parameter(int, 3, range=(1, 10)),
    }

    def validate(self):
        if self.p.count * self.p.rate_hz > 20:
            raise ProtocolError("count * rate_hz must be at most 20")
'''


@pytest.fixture
def panel(qtbot):
    widget = ProtocolPanel()
    qtbot.addWidget(widget)
    widget.resize(420, 640)
    return widget


def choose(panel, name):
    panel.combo.setCurrentIndex(panel.combo.findData(name))


@pytest.mark.parametrize("name", ["bss_isomura", "fep_closed_loop"])
def test_form_shows_every_parameter_with_its_default(qtbot, name):
    cls, _ = load_protocol(name)
    form = ParameterForm(cls)
    qtbot.addWidget(form)
    assert list(form.editors) == list(cls.parameters)
    assert form.values() == {n: p.default for n, p in cls.parameters.items()}
    for n, values in form.values().items():
        assert type(values) is cls.parameters[n].type
    assert form.validate() is None and not form.message.isVisible()
    kinds = {n: type(e) for n, e in form.editors.items()}
    assert kinds["mixing"] is not QSpinBox and issubclass(kinds["mixing"], QDoubleSpinBox)
    assert issubclass(kinds["sessions"], QSpinBox)
    assert kinds["repeat_sequence"] is QCheckBox
    assert kinds["pulse_mode"] is QComboBox
    assert kinds["electrodes"] is QLineEdit
    isi = form.editors["isi_s"]
    assert isi.suffix() == " s" and isi.bounds == (0.05, 600.0)  # any number may be typed
    assert isi.text() == "1 s"
    assert form.editors["mixing"].text() == "0.25"
    assert "inter-stimulus interval" in isi.toolTip()


def test_editing_changes_values_and_set_values_survives_bad_input(qtbot):
    form = ParameterForm(load_protocol("bss_isomura")[0])
    qtbot.addWidget(form)
    with qtbot.waitSignal(form.changed):
        form.editors["mixing"].setValue(0.125)
    form.editors["pulse_mode"].setCurrentIndex(1)
    form.editors["repeat_sequence"].setChecked(False)
    values = form.values()
    assert (values["mixing"], values["pulse_mode"], values["repeat_sequence"]) == (
        0.125, "voltage", False)
    # as restored from settings: text is parsed, unknown names ignored, bad values -> default
    form.set_values({"sessions": "7", "isi_s": "2.5", "nonsense": 1, "mixing": 3.0,
                     "pulse_mode": "laser", "electrodes": "A1,B2"})
    values = form.values()
    assert (values["sessions"], values["isi_s"], values["mixing"]) == (7, 2.5, 0.25)
    assert (values["pulse_mode"], values["electrodes"]) == ("current", "A1,B2")
    form.editors["isi_s"].setValue(0.2)  # a standalone form shows the message itself
    assert form.validate() == form.message.text() != "" and not form.message.isHidden()
    assert "bold" in form.labels["isi_s"].styleSheet()


@pytest.mark.parametrize("name, edits, named", [
    ("bss_isomura", {"isi_s": 0.2}, "isi_s"),
    ("fep_closed_loop", {"sessions": 3, "calibration_sessions": 3}, "calibration_sessions"),
])
def test_invalid_combination_shows_the_message_and_disables_start(panel, name, edits, named):
    choose(panel, name)
    assert panel.start.isEnabled()
    for key, value in edits.items():
        panel.form.editors[key].setValue(value)
    cls, _ = load_protocol(name)
    try:
        cls(**panel.values())
    except Exception as exc:
        expected = str(exc)
    assert panel.form.error == expected
    assert panel.status.text() == expected and not panel.status.isHidden()
    assert panel.form.message.isHidden()  # the panel shows it beside Start instead
    assert "bold" in panel.form.labels[named].styleSheet()
    assert panel.form.labels["mixing"].styleSheet() == ""
    assert not panel.start.isEnabled()
    panel.form.set_values({n: p.default for n, p in cls.parameters.items()})
    assert panel.form.error is None and panel.status.isHidden()
    assert panel.start.isEnabled()


def test_start_emits_typed_values_and_running_switches_buttons(qtbot, panel):
    choose(panel, "bss_isomura")
    panel.form.editors["sessions"].setValue(4)
    with qtbot.waitSignal(panel.start_requested) as blocker:
        panel.start.click()
    name, values = blocker.args
    assert name == "bss_isomura"
    assert values["sessions"] == 4 and type(values["sessions"]) is int
    assert type(values["isi_s"]) is float and values["repeat_sequence"] is True
    panel.set_running(True)
    assert not panel.start.isEnabled() and panel.pause.isEnabled() and panel.stop.isEnabled()
    assert not panel.combo.isEnabled() and not panel.form.isEnabled()
    with qtbot.waitSignal(panel.pause_requested):
        panel.pause.click()
    with qtbot.waitSignal(panel.stop_requested):
        panel.stop.click()
    panel.set_progress(0.25, "session 2/4 · trial 12/256 · 12 min left")
    assert panel.progress.value() == 250
    panel.set_running(False)
    assert panel.start.isEnabled() and not panel.stop.isEnabled() and panel.form.isEnabled()


def test_wheel_scrolls_the_form_and_changes_only_the_focused_editor(qtbot, panel):
    choose(panel, "fep_closed_loop")
    panel.resize(420, 400)
    panel.show()
    qtbot.waitExposed(panel)
    mixing = panel.form.editors["mixing"]

    def wheel(up):
        pos = mixing.mapTo(panel, mixing.rect().center())
        QTest.wheelEvent(panel.windowHandle(), pos, QPoint(0, 120 if up else -120))
        qtbot.wait(10)

    wheel(up=False)
    assert mixing.value() == 0.25 and panel.scroll.verticalScrollBar().value() > 0
    panel.scroll.verticalScrollBar().setValue(0)
    mixing.setFocus()
    wheel(up=True)
    assert mixing.value() == pytest.approx(0.26)


def test_switching_protocol_rebuilds_the_form(qtbot, panel):
    choose(panel, "spontaneous")
    assert list(panel.form.editors) == ["active_rate_hz"]
    assert panel.description.text() == load_protocol("spontaneous")[0].describe()
    with qtbot.waitSignal(panel.changed):
        choose(panel, "fep_closed_loop")
    assert "selection" in panel.form.editors and panel.protocol() == "fep_closed_loop"
    assert panel.scroll.widget() is panel.form
    # as restored from settings
    panel.set_protocol("bss_isomura", {"sessions": 9, "mixing": "0.5"})
    assert panel.combo.currentText() == "bss_isomura"
    assert (panel.values()["sessions"], panel.values()["mixing"]) == (9, 0.5)


def test_open_file_and_broken_file(qtbot, panel, tmp_path):
    good = tmp_path / "small.py"
    good.write_text(SMALL)
    panel.ask_file = lambda: str(good)
    panel.combo.setCurrentIndex(panel.combo.findText(ProtocolPanel.OPEN_FILE))
    assert panel.protocol() == str(good) and panel.combo.currentText() == "small.py"
    assert panel.form.values() == {"rate_hz": 2.5, "count": 3}
    panel.form.editors["count"].setValue(10)
    assert panel.form.error == "count * rate_hz must be at most 20"
    panel.form.editors["count"].setValue(2)
    with qtbot.waitSignal(panel.start_requested) as blocker:
        panel.start.click()
    assert blocker.args == [str(good), {"rate_hz": 2.5, "count": 2}]

    # cancelled dialog: the choice stays
    panel.ask_file = lambda: None
    panel.combo.setCurrentIndex(panel.combo.findText(ProtocolPanel.OPEN_FILE))
    assert panel.combo.currentText() == "small.py" and panel.form is not None

    broken = tmp_path / "broken.py"
    broken.write_text("from mea_control.protocol import Protocol\n\nclass Broken(Protocol:\n")
    panel.ask_file = lambda: str(broken)
    panel.combo.setCurrentIndex(panel.combo.findText(ProtocolPanel.OPEN_FILE))
    assert panel.form is None and not panel.start.isEnabled()
    assert panel.scroll.widget() is None  # the previous form is gone
    assert "syntax error" in panel.status.text() and not panel.status.isHidden()

    # fixed and opened again: it loads
    broken.write_text(SMALL.replace("Small", "Fixed"))
    panel.combo.setCurrentIndex(panel.combo.findText(ProtocolPanel.OPEN_FILE))
    assert panel.form is not None and panel.status.isHidden() and panel.start.isEnabled()
    assert panel.combo.findText("broken.py") >= 0


def test_panel_screenshot(qtbot, panel, output_dir):
    choose(panel, "fep_closed_loop")
    panel.form.editors["sessions"].setValue(1)
    panel.set_progress(0.4, "session 41/100 · trial 12/256 · 1 h 23 min left")
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.grab().save(str(output_dir / "gui_protocol_panel.png"))


def _inside(widget, ancestor):
    """The widget lies wholly inside the ancestor's rectangle."""
    return ancestor.rect().contains(QRect(widget.mapTo(ancestor, QPoint(0, 0)), widget.size()))


@pytest.mark.parametrize("size, rows", [((1400, 900), 11), ((1280, 800), 8)])
def test_main_window_shows_the_form_and_stop_stimulation(qtbot, tmp_path, output_dir, size,
                                                         rows):
    """In the main window's side panel the form has most of the height; STOP stays in view."""
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(session=RigSession(), settings=settings, confirm=lambda q: True)
    qtbot.addWidget(w)
    w.protocol_panel.set_protocol("fep_closed_loop", {})
    w.resize(*size)
    w.show()
    qtbot.waitExposed(w)
    qtbot.wait(50)
    panel = w.protocol_panel
    viewport = panel.scroll.viewport()
    shown = [n for n, e in panel.form.editors.items() if _inside(e, viewport)]
    assert len(shown) >= rows, shown
    assert _inside(panel.start, w.side_scroll.viewport())
    assert w.stop_button.isVisible() and _inside(w.stop_button, w)
    assert not w.side_scroll.isAncestorOf(w.stop_button)  # never scrolled away
    w.grab().save(str(output_dir / f"gui_window_form_{size[0]}x{size[1]}.png"))
    w.timer.stop()
