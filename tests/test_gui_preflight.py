"""Nothing wrong can be started from the window (offscreen): Start refused beside the button
with the check's message, out-of-range values said at their field, a protocol's own error
without Python's class name."""

import pytest
from conftest import GUI_WAIT_S as WAIT_S
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtTest import QTest

from mea_control.gui.forms import ProtocolPanel
from mea_control.gui.session import RigSession


def _refused(qtbot, w, protocol, values):
    """Click Start with these values; the panel's message beside Start."""
    panel = w.protocol_panel
    panel.set_protocol(protocol, values)
    assert panel.is_valid() and panel.start.isEnabled()
    panel.start.click()
    qtbot.wait(300)  # a few frames: a run would show by now
    assert not w.session.running and w.session.protocol is None
    assert not panel.stop.isEnabled() and panel.start.isEnabled()
    assert not panel.status.isHidden()
    return panel.status.text()


def test_start_is_refused_beside_the_button_and_nothing_runs(qtbot, window):
    w = window
    assert w.connect_device("sim://?seed=1")
    panel = w.protocol_panel
    text = _refused(qtbot, w, "bss_isomura", {"sessions": 1, "trials_per_session": 4,
                                              "amplitude": 500.0})
    assert text == ("bss_isomura cannot start: current 500.00 uA on electrode 12 exceeds "
                    "max_current_uA = 10.00 uA (the default limit); set by amplitude = 500")
    assert "bold" in panel.form.labels["amplitude"].styleSheet()
    assert "bold" not in panel.form.labels["phase_us"].styleSheet()
    assert f"not started: {text}" in w.log_view.toPlainText()
    assert w.session.last_summary is None  # no run began, not even briefly
    panel.form.editors["amplitude"].setValue(5.0)  # the value it was about has changed
    assert panel.status.isHidden() and panel.form.labels["amplitude"].styleSheet() == ""
    # a protocol's own check of its set-up, without Python's class name
    text = _refused(qtbot, w, "fep_closed_loop", {"job": "control", "sessions": 2,
                                                  "trials_per_session": 4})
    assert text.startswith("fep_closed_loop cannot start: job=control needs a trial with only "
                           "source 1 on in every calibration session")
    assert "ProtocolError" not in text and "ProtocolError" not in w.log_view.toPlainText()
    assert "bold" in panel.form.labels["trials_per_session"].styleSheet()
    assert w.session.last_summary is None


@pytest.fixture
def panel(qtbot):
    widget = ProtocolPanel()
    qtbot.addWidget(widget)
    widget.resize(420, 640)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def red(editor):
    """The field is drawn red (its background)."""
    return editor.palette().color(QPalette.ColorRole.Base).name() == "#ffd6dc"


def _type(qtbot, editor, text):
    """Select the editor's text, type ``text`` and press Enter, as a person does."""
    editor.setFocus()
    editor.selectAll()
    QTest.keyClicks(editor, text)
    QTest.keyClick(editor, Qt.Key.Key_Return)
    qtbot.wait(10)


def test_a_typed_value_out_of_range_is_said_at_its_field_and_keeps_start_refused(qtbot, panel):
    panel.set_protocol("bss_isomura")
    mixing = panel.form.editors["mixing"]
    _type(qtbot, mixing, "5")
    assert mixing.value() == 5.0  # kept as typed, not silently put back
    assert red(mixing)
    assert mixing.toolTip().startswith("0.5 at most\n")
    assert panel.status.text() == "mixing: 0.5 at most, not 5" and not panel.status.isHidden()
    assert "bold" in panel.form.labels["mixing"].styleSheet()
    assert not panel.start.isEnabled()
    with qtbot.assertNotEmitted(panel.start_requested):
        panel._start()  # as a click would, were the button enabled
    isi = panel.form.editors["isi_s"]
    _type(qtbot, isi, "0.01")
    assert isi.toolTip().startswith("0.05 s at least\n")
    mixing.stepBy(-1)  # an arrow brings it back within the range
    assert mixing.value() == 0.5 and not red(mixing) and red(isi)
    assert panel.status.text() == "isi_s: 0.05 s at least, not 0.01"
    _type(qtbot, isi, "1")
    assert panel.status.isHidden() and panel.start.isEnabled()
    assert not isi.toolTip().startswith("0.05") and not red(isi)


def test_a_protocol_error_during_the_run_reaches_the_operator_as_its_own_line(tmp_path):
    """A protocol's ProtocolError in the middle of a run: the session's error and its log
    line are the protocol's message, without 'mea_control.protocol.ProtocolError'."""
    path = tmp_path / "quiet.py"
    path.write_text(
        "from mea_control.protocol import Protocol, ProtocolError\n\n"
        "class Quiet(Protocol):\n"
        "    def on_block(self, ctx, block, filtered):\n"
        "        raise ProtocolError('the culture went quiet: check the medium')\n")
    session = RigSession()
    session.connect("sim://?seed=1", fast=True)
    try:
        session.start(str(path))
        assert session.wait(WAIT_S)
        log = "\n".join(session.drain_log())
    finally:
        assert session.disconnect(timeout=WAIT_S)
    assert session.last_error == "Quiet: the culture went quiet: check the medium"
    assert "ProtocolError" not in log
    assert "the culture went quiet: check the medium (at " in log
