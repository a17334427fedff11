"""The main window as an operator uses it, offscreen: connect, watch, run, record, stop."""

import os
import subprocess
import time
from datetime import date, timedelta

import h5py
import numpy as np
from conftest import GUI_WAIT_S as WAIT_S
from conftest import ROOT, cli_command
from PySide6.QtCore import QSettings

from mea_control import recording
from mea_control.gui.recordings import RecordingFields
from mea_control.gui.remote import GUI_NICE
from mea_control.gui.window import MainWindow
from mea_control.layouts import load_layout


def _wait(qtbot, condition):
    """Process Qt events until ``condition()`` holds (WAIT_S at most)."""
    qtbot.waitUntil(condition, timeout=int(WAIT_S * 1000))


def test_connect_watch_run_record_and_close(qtbot, window, tmp_path, output_dir):
    w = window
    assert w.device_url.currentText() == "sim://?seed=1"
    assert w.connect_device("sim://?seed=1")
    assert "64 channels at 25000 Hz" in w.device_info.text()
    _wait(qtbot, lambda: w.session.buffers.now > 2.5 * 25000)  # 2.5 s of data
    snap = w.session.buffers.snapshot(channels=w._selected)
    assert np.isfinite(snap.trace_min).any() and (snap.rates_hz > 0).sum() > 32
    assert "blocks" in w.device_status.text() and "watchdog armed" in w.device_status.text()
    # a short BSS run, recorded
    rec = tmp_path / "run.nwb"
    w.record_check.setChecked(True)
    w.record_fields.folder.setText(str(tmp_path))
    w.record_fields.name.setText("run.nwb")
    panel = w.protocol_panel
    panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": 10, "isi_s": 0.4})
    assert panel.is_valid()
    panel.start.click()
    _wait(qtbot, lambda: w.session.running and w.session.protocol is not None)
    assert "recording" in w.record_status.text()
    _wait(qtbot, lambda: w.session.buffers.snapshot().psth_pulses >= 2)
    w.grab().save(str(output_dir / "gui_window_bss.png"))
    _wait(qtbot, lambda: not panel.stop.isEnabled())  # the run ended by itself
    _wait(qtbot, lambda: "recorded" in w.record_status.text() or rec.exists())
    assert "ERROR" not in w.log_view.toPlainText()
    with recording.open(rec) as r:
        assert r.complete and r.trials is not None and len(r.trials) == 10
        assert len(r.pulses["start_time"]) > 0


def test_stop_stimulation_refuses_pulses_and_rearm_restores(qtbot, window):
    w = window
    assert w.connect_device("sim://?seed=2")
    w.protocol_panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": 12,
                                                   "isi_s": 0.3})
    w.protocol_panel.start.click()
    _wait(qtbot, lambda: w.session.protocol is not None)
    w.stop_button.click()
    assert "STOPPED" in w.safety_state.text() or not w.session.armed
    _wait(qtbot, lambda: w._refusals > 0)
    assert "refusals" in w.safety_state.text() and w.rearm_button.isEnabled()
    assert "STIMULATION STOPPED" in w.log_view.toPlainText()
    w.rearm_button.click()
    _wait(qtbot, lambda: w.session.armed)
    w.protocol_panel.stop.click()
    _wait(qtbot, lambda: w.session.protocol is None)


def test_closing_while_recording_asks_then_closes_the_file(qtbot, window, tmp_path):
    w = window
    rec = tmp_path / "closing.nwb"
    assert w.connect_device("sim://?seed=3")
    w.record_check.setChecked(True)
    w.record_fields.folder.setText(str(tmp_path))
    w.record_fields.name.setText("closing.nwb")
    w.protocol_panel.set_protocol("spontaneous", {})
    w.protocol_panel.start.click()
    _wait(qtbot, lambda: w.session.protocol is not None)
    _wait(qtbot, lambda: w.session.buffers.now > 25000)  # a second of the run
    w.close()
    assert w.questions and "recording" in w.questions[-1]
    with recording.open(rec) as r:
        assert r.complete and r.n_samples > 0
        assert r.summary["ended"] == "stopped: the window was closed"
        assert "ended           stopped: the window was closed" in recording.describe(r)


def test_record_now_and_pause_from_the_panels(qtbot, window, tmp_path, output_dir):
    w = window
    rec = tmp_path / "watching.nwb"
    w.record_fields.folder.setText(str(tmp_path))
    w.record_fields.name.setText(rec.name)
    assert not w.record_button.isEnabled() or not w.session.connected
    assert w.connect_device("sim://?seed=4")
    _wait(qtbot, lambda: w.record_button.isEnabled())
    w.record_button.click()  # the monitoring, recorded while nothing else runs
    _wait(qtbot, lambda: "recording watching.nwb" in w.record_status.text())
    assert w.record_button.text() == "Stop recording"
    _wait(qtbot, lambda: (w.session.recording or {}).get("seconds", 0) >= 1.5)
    assert "backlog" in w.record_status.text() and "samples lost 0" in w.record_status.text()
    w.record_button.click()
    _wait(qtbot, lambda: "recorded watching.nwb" in w.record_status.text())
    assert w.record_button.text() == "Record now"
    with recording.open(rec) as r:
        assert r.complete and r.n_samples >= 1.5 * 25000 and r.summary["protocol"] == "monitor"
        assert r.summary["ended"] == "recording stopped by the operator; the run went on"
    # pause and resume a protocol run
    panel = w.protocol_panel
    panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": 40, "isi_s": 0.3})
    panel.start.click()
    _wait(qtbot, lambda: w.session.protocol == "bss_isomura" and panel.pause.isEnabled())
    panel.pause.click()
    _wait(qtbot, lambda: panel.pause.text() == "Resume")
    _wait(qtbot, lambda: panel.progress_text.text().endswith("(paused)"))
    assert "left" in panel.progress_text.text()
    w.grab().save(str(output_dir / "gui_window_paused.png"))
    panel.pause.click()
    _wait(qtbot, lambda: panel.pause.text() == "Pause")
    _wait(qtbot, lambda: "protocol resumed after" in w.log_view.toPlainText())
    panel.stop.click()
    _wait(qtbot, lambda: w.session.protocol is None)
    assert "ERROR" not in w.log_view.toPlainText()


def test_a_device_that_cannot_connect_is_reported(qtbot, window):
    assert not window.connect_device("serial:///dev/nonexistent-mea")
    assert "cannot connect" in window.log_view.toPlainText()
    assert "cannot connect" in window.statusBar().currentMessage()


def _headless_env(tmp_path) -> dict[str, str]:
    """The environment of a machine without a display (as CI and a rig's ssh session)."""
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    return env | {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}


def _nice(pid: int) -> int | None:
    """The nice value of the process's main thread, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(") ", 1)[1].split()[16])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def test_gui_screenshot_from_the_command_line(tmp_path):
    """The README's screenshot command works without a display (it goes offscreen), and
    the window's thread yields the CPU to its rig process once the window is made."""
    png = tmp_path / "window.png"
    proc = subprocess.Popen(cli_command("gui", "--screenshot", str(png), "--after", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=_headless_env(tmp_path))
    start, seen = _nice(os.getpid()), set()
    while proc.poll() is None:  # the window lives --after 2 s once it has yielded
        seen.add(_nice(proc.pid))
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert min(19, start + GUI_NICE) in seen
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_gui_without_a_display_says_so(tmp_path):
    proc = subprocess.run(cli_command("gui"), capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=_headless_env(tmp_path))
    assert proc.returncode == 2
    assert "no display" in proc.stderr and "QT_QPA_PLATFORM=offscreen" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_settings_persist_between_runs(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)
    w = MainWindow(settings=settings, confirm=lambda q: True)
    qtbot.addWidget(w)
    w.device_url.setCurrentText("sim://?seed=9")
    w.connect_device("sim://?seed=9")
    w.protocol_panel.set_protocol("bss_isomura", {"mixing": 0.5})
    w.window_seconds.setValue(30)
    w.filtered_check.setChecked(False)
    fields = w.record_fields
    fields.folder.setText(str(tmp_path))
    fields.culture.setText("MEA-17")
    fields.div.setValue(21)
    fields.experimenter.setText("Doe, Jane; Roe, Rich")
    fields.description.setText("BSS training, day 2")
    w.traces.set_gain(200)
    w.traces.set_time_base(0.5)
    w.traces.set_arrangement("array")
    w.traces.threshold.setChecked(False)
    w.array.set_colour_scale(50.0)
    w._build_views(load_layout("mcs60mea200"))  # another array: the views look the same
    assert (w.traces.gain_uv, w.traces.time_base_s, w.array.fixed_max) == (200, 0.5, 50)
    w.close()
    again = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(again)
    assert again.device_url.currentText() == "sim://?seed=9"
    assert again.protocol_panel.protocol() == "bss_isomura"
    assert again.protocol_panel.values()["mixing"] == 0.5
    assert again.window_seconds.value() == 30 and not again.filtered_check.isChecked()
    kept = again.record_fields
    assert kept.folder.text() == str(tmp_path) and kept.culture.text() == "MEA-17"
    assert kept.div.value() == 21 and kept.description.text() == "BSS training, day 2"
    assert kept.meta().experimenter == ("Doe, Jane", "Roe, Rich")
    t = again.traces
    assert (t.gain_uv, t.time_base_s, t.view, t.threshold.isChecked()) == (200, 0.5, t.grid,
                                                                         False)
    assert again.array.fixed_max == 50 and again.array.colour_mode.currentText() == "fixed"
    again.array.set_colour_scale(None)
    again.close()
    third = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(third)
    assert third.array.fixed_max is None and third.array.colour_mode.currentText() == "automatic"
    third.close()
    # the culture is two days older two days later
    later = RecordingFields()
    later.restore(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat),
                  today=date.today() + timedelta(days=2))
    assert later.div.value() == 23 and later.meta().culture_id == "MEA-17"


def test_recordings_get_dated_numbered_names_and_say_how_they_ended(qtbot, window, tmp_path):
    """Two protocol runs in a row, recorded: each gets a new dated, numbered file in the
    chosen folder with the culture's fields; the one stopped with Stop says so."""
    w, fields = window, window.record_fields
    fields.folder.setText(str(tmp_path))
    fields.culture.setText("MEA 17")  # made safe for a file name
    fields.div.setValue(21)
    fields.experimenter.setText("Doe, Jane")
    fields.description.setText("two runs")
    day = date.today().isoformat()
    assert fields.name.placeholderText() == f"new: {day}_MEA-17_001.nwb"
    assert w.connect_device("sim://?seed=5")
    w.record_check.setChecked(True)
    panel = w.protocol_panel
    panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": 30, "isi_s": 0.35})
    panel.start.click()
    first = tmp_path / f"{day}_MEA-17_001.nwb"
    _wait(qtbot, lambda: w.session.running and first.exists())
    _wait(qtbot, lambda: "trial 2/30" in panel.progress_text.text())
    panel.stop.click()
    _wait(qtbot, lambda: not w.session.running)
    _wait(qtbot, lambda: fields.name.placeholderText() == f"new: {day}_MEA-17_002.nwb")
    panel.set_protocol("bss_isomura", {"sessions": 1, "trials_per_session": 3, "isi_s": 0.35})
    _wait(qtbot, panel.start.isEnabled)  # the panel learns the run ended at its next frame
    panel.start.click()
    second = tmp_path / f"{day}_MEA-17_002.nwb"
    _wait(qtbot, lambda: second.exists())
    _wait(qtbot, lambda: not w.session.running)
    _wait(qtbot, lambda: "recorded" in w.record_status.text())
    assert sorted(p.name for p in tmp_path.glob("*.nwb")) == [first.name, second.name]
    with recording.open(first) as r:
        n = len(r.trials)
        assert 2 <= n < 30 and r.summary["ended"] == f"stopped by the operator, {n} of 30 trials"
        assert "health          ended early: stopped by the operator" in recording.describe(r)
    with recording.open(second) as r:
        assert r.summary["ended"] == "completed, 3 of 3 trials" and len(r.trials) == 3
    with h5py.File(second, "r") as f:
        assert f["general/subject/subject_id"].asstr()[()] == "MEA 17"
        assert f["general/subject/age"].asstr()[()] == "P21D"
        assert list(f["general/experimenter"].asstr()[:]) == ["Doe, Jane"]
        assert f["session_description"].asstr()[()] == "two runs"


def test_an_existing_name_offers_a_choice_never_a_dead_end(qtbot, window, tmp_path):
    w, fields = window, window.record_fields
    taken = tmp_path / "pilot.nwb"
    taken.write_bytes(b"an earlier recording")
    fields.folder.setText(str(tmp_path))
    fields.name.setText("pilot")
    asked = []
    w.choose = lambda question, answers: asked.append((question, answers)) or 0
    assert w.connect_device("sim://?seed=6")
    _wait(qtbot, lambda: w.record_button.isEnabled())
    w.record_button.click()  # the operator takes the next free name
    assert asked[-1] == (f"pilot.nwb exists in {tmp_path}.",
                         ["Record to pilot_001.nwb", "Overwrite pilot.nwb", "Cancel"])
    _wait(qtbot, lambda: "recording pilot_001.nwb" in w.record_status.text())
    w.record_button.click()
    _wait(qtbot, lambda: "recorded pilot_001.nwb" in w.record_status.text())
    assert taken.read_bytes() == b"an earlier recording"
    w.choose = lambda question, answers: 2  # cancel: nothing is recorded, nothing fails
    w.record_button.click()
    assert w.session.recording is None and "ERROR" not in w.log_view.toPlainText()
    w.choose = lambda question, answers: 1  # overwrite, as the operator chose
    w.record_button.click()
    _wait(qtbot, lambda: "recording pilot.nwb" in w.record_status.text())
    w.record_button.click()
    _wait(qtbot, lambda: "recorded pilot.nwb" in w.record_status.text())
    with recording.open(taken) as r:
        assert r.complete
    assert "ERROR" not in w.log_view.toPlainText()


def test_side_panel_controls_never_overlap(qtbot, window):
    """On a small screen the side panel scrolls; its controls are never drawn over each
    other (word-wrapped device lines once connected, the parameter form above Start)."""
    from PySide6.QtCore import QPoint, QRect

    w = window
    assert w.connect_device("sim://?seed=1")
    _wait(qtbot, lambda: w.device_status.text() != "")
    p = w.protocol_panel
    p.set_protocol("fep_closed_loop")
    controls = [w.device_url, w.connect_button, w.device_info, w.device_status, p.combo,
                p.description, p.scroll, p.start, p.pause, p.stop, p.progress,
                p.progress_text, w.side_tabs]
    panels = w.side_scroll.widget()
    for size in [(1400, 900), (1024, 600), (800, 600)]:
        w.resize(*size)
        for _ in range(5):
            qtbot.wait(20)
        rects = {c: QRect(c.mapTo(panels, QPoint(0, 0)), c.size()) for c in controls
                 if c.isVisible() and c.height() > 0}
        assert p.scroll in rects and p.start in rects
        assert rects[p.scroll].height() >= p.scroll.minimumHeight()
        clashes = [(type(a).__name__, type(b).__name__) for i, a in enumerate(rects)
                   for b in list(rects)[i + 1:] if rects[a].intersects(rects[b])]
        assert clashes == [], size
