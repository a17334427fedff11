"""The main window an operator trusts: nothing moves, nothing is stale (issue 23, 2-3).

Offscreen, with the rig in its own process as ``mea-control gui`` runs it.
"""

import numpy as np
from conftest import GUI_WAIT_S as WAIT_S
from PySide6.QtCore import QPoint, QRect

from mea_control.gui.session import RigSession
from mea_control.gui.snapshot import Snapshot
from mea_control.gui.views import ModelView
from mea_control.layouts import load_layout

FS = 25_000


def _wait(qtbot, condition):
    qtbot.waitUntil(condition, timeout=int(WAIT_S * 1000))


def _settle(qtbot):
    for _ in range(5):
        qtbot.wait(20)


def _place(widget, window) -> QRect:
    return QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())


def _controls(w):
    p = w.protocol_panel
    return {"start": p.start, "pause": p.pause, "stop": p.stop, "progress": p.progress,
            "STOP STIMULATION": w.stop_button, "re-arm": w.rearm_button,
            "record": w.record_button}


def _stopped_bss(qtbot, w, trials=40):
    """A BSS run whose every trial is refused: the operator stopped stimulation first."""
    w.protocol_panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": trials,
                                                   "isi_s": 0.31})
    w.protocol_panel.start.click()
    _wait(qtbot, lambda: w.session.protocol is not None)


def test_controls_keep_their_places_while_refusals_come(qtbot, window):
    w = window
    w.resize(1280, 800)
    assert w.connect_device("sim://?seed=2")
    w.stop_button.click()
    _wait(qtbot, lambda: not w.rearm_button.isEnabled() or "STOPPED" in w.safety_state.text())
    _settle(qtbot)
    before = {name: _place(c, w) for name, c in _controls(w).items()}
    _stopped_bss(qtbot, w)
    _wait(qtbot, lambda: w._refusals >= 20)
    _settle(qtbot)
    after = {name: _place(c, w) for name, c in _controls(w).items()}
    assert after == before
    assert "STOPPED" in w.safety_state.text() and "refusals" in w.safety_state.text()
    assert "refused: stimulation is disarmed" in w.safety_state.toolTip()  # details there
    assert w.log_view.toPlainText().count("[refusal]") >= 20  # and in the log
    # re-arming forgets the refusals: the line no longer quotes the last one
    w.rearm_button.click()
    _wait(qtbot, lambda: w.session.armed)
    # refusals the loop made before the re-arm may reach the window after the click: the
    # re-arm's own event, which follows them, forgets them again
    _wait(qtbot, lambda: w.safety_state.text() == "armed")
    assert "refused" not in w.safety_state.toolTip()
    # Stop: the progress bar goes back to nothing
    _wait(qtbot, lambda: w.protocol_panel.progress.value() > 0)
    w.protocol_panel.stop.click()
    _wait(qtbot, lambda: w.session.protocol is None)
    _settle(qtbot)
    assert w.protocol_panel.progress.value() == 0
    assert w.protocol_panel.progress_text.text() == "not running"


def test_everything_an_operator_needs_shows_at_1024x700(qtbot, window, output_dir):
    w = window
    w.resize(1024, 700)
    assert w.connect_device("sim://?seed=1")
    w.protocol_panel.set_protocol("fep_closed_loop")
    _wait(qtbot, lambda: w.session.buffers.now > FS)
    _settle(qtbot)
    inside = w.rect()
    needed = {**_controls(w), "safety line": w.safety_state, "recording line": w.record_status,
              "banner": w.banner, "connect": w.connect_button}
    for name, control in needed.items():
        assert control.isVisible() and inside.contains(_place(control, w)), name
    assert _place(w.protocol_panel.start, w.side_scroll.viewport()).bottom() \
        <= w.side_scroll.viewport().height()  # not scrolled out of view
    assert w.traces.width() >= 350 and w.views.width() >= 250
    w.grab().save(str(output_dir / "gui_window_1024x700.png"))


def test_disconnect_clears_the_views_and_the_states(qtbot, window):
    w = window
    assert w.live.currentWidget() is w.not_connected  # before connecting: "press Connect"
    assert "press Connect" in w.banner.text() and "Press Connect" in w.not_connected.text()
    assert w.connect_device("sim://?seed=1")
    _wait(qtbot, lambda: w.session.buffers.now > 2 * FS)
    _wait(qtbot, lambda: (w.array._colour_idx >= 0).any() and "watchdog armed"
          in w.device_status.text())
    assert w.live.currentWidget() is w.plots and w.safety_state.text() == "armed"
    w.disconnect()
    _settle(qtbot)
    assert w.live.currentWidget() is w.not_connected
    assert (w.array._colour_idx == -1).all()  # no rates: grey cells
    for curve in (w.traces.rows.curve, w.traces.grid.curve):  # both trace layouts are empty
        assert curve.xData is None or len(curve.xData) == 0
    assert w.device_info.text() == "not connected" and w.device_status.text() == ""
    assert "armed" not in w.safety_state.text() and "not connected" in w.safety_state.text()
    assert "NOT CONNECTED" in w.banner.text() and not w.rearm_button.isEnabled()


def test_banner_and_title_show_rec_paused_and_disarmed(qtbot, window, tmp_path):
    w = window
    assert w.connect_device("sim://?seed=4")
    _wait(qtbot, lambda: "MONITORING" in w.banner.text())
    assert w.windowTitle() == "mea-control"
    w.record_check.setChecked(True)
    w.record_fields.folder.setText(str(tmp_path))
    w.record_fields.name.setText("culture7.nwb")
    w.protocol_panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": 40,
                                                   "isi_s": 0.31})
    w.protocol_panel.start.click()
    _wait(qtbot, lambda: "REC culture7.nwb" in w.banner.text())
    assert "REC culture7.nwb" in w.windowTitle() and "RUNNING bss_isomura" in w.banner.text()
    w.protocol_panel.pause.click()
    _wait(qtbot, lambda: "PAUSED" in w.windowTitle())
    w.stop_button.click()
    _wait(qtbot, lambda: "DISARMED" in w.windowTitle())
    assert all(state in w.banner.text() for state in ("DISARMED", "REC", "PAUSED"))
    assert "c62828" in w.banner.styleSheet()  # the most urgent's colour: disarmed
    w.protocol_panel.stop.click()
    # the run ended: neither REC nor PAUSED; stimulation stays off until re-armed
    _wait(qtbot, lambda: w.windowTitle() == "mea-control — DISARMED")
    assert "MONITORING" in w.banner.text()


def test_a_run_start_keeps_the_traces_and_logs_what_happens(qtbot):
    """The monitor's data stay on screen when a protocol starts (the simulator's clock
    starts again at 0), and the log does not say "end of run" for the monitor."""
    rig = RigSession()
    try:
        rig.connect("sim://?seed=5")
        assert rig.buffers.wait_for(lambda: rig.buffers.now >= 3 * FS, WAIT_S)
        rig.start("spontaneous", {})
        assert rig.buffers.wait_for(lambda: rig.buffers.snapshot().status["blocks"] > 0
                                    and rig.buffers.protocol == "spontaneous", WAIT_S)
        snap = rig.buffers.snapshot(window_s=10.0, channels=[0], pixels=1000)
        assert rig.buffers.now < 2 * FS  # this run is young ...
        shown = np.isfinite(snap.trace_min[0]).sum() / 1000 * 10.0
        assert shown >= 2.9  # ... but the monitor's 3 s before it are still drawn
        assert np.all(np.diff(snap.trace_t) > 0)
        log = "\n".join(rig.drain_log())
        assert "end of run" not in log and "protocol monitor" not in log
        assert "watching the culture" in log and "starting spontaneous" in log
    finally:
        rig.close(timeout=WAIT_S)


def test_the_model_tab_never_widens_nor_keeps_a_previous_run(qtbot):
    from test_gui_views import _model_state

    view = ModelView(load_layout("grid8x8_200um"))
    qtbot.addWidget(view)
    view.resize(500, 700)
    view.show()
    rng = np.random.default_rng(3)
    width = view.minimumSizeHint().width()
    state = _model_state(rng, trials=320)
    state["job"] = "a job with a long name " * 10  # a long status line
    view.update_view(Snapshot(sample_rate=FS, now=0, n_electrodes=64, model=state))
    assert view.minimumSizeHint().width() == width and view.width() == 500
    assert view.glw.minimumWidth() >= view.glw.ci.layout.minimumWidth()  # never clipped
    assert view.table.rowCount() == 8 and len(view.fe_curve.xData) == 320
    fresh = {"running": False, "trials": 3, "calibration_trials": 100, "free_energy": [],
             "x": np.zeros((0, 2)), "x_hat": np.zeros((0, 2)), "W1": None, "W0": None,
             "session_free_energy": [], "decisions": []}
    view.update_view(Snapshot(sample_rate=FS, now=0, n_electrodes=64, model=fresh))
    assert view.table.rowCount() == 0 and view.fe_curve.xData is None or \
        len(view.fe_curve.xData) == 0
    assert view.job_curve.xData is None or len(view.job_curve.xData) == 0
    assert view.fe.getViewBox().autoRangeEnabled()[0]
