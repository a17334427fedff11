"""The main window: device, protocol, recording and safety panels around the live views.

Everything the views draw comes from one :class:`~mea_control.gui.snapshot.Snapshot`
taken from the session's live buffers by a 30 Hz timer on the GUI thread. By
default the rig (device, engine, recorder) runs in its own process
(:class:`~mea_control.gui.remote.RemoteSession`), so drawing never delays the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from mea_control.gui.forms import ProtocolPanel
from mea_control.gui.recordings import RecordingFields, next_free, taken
from mea_control.gui.remote import RemoteSession
from mea_control.gui.session import RigSession
from mea_control.gui.views import ArrayView, ModelView, PsthView, RasterView, TraceView
from mea_control.layouts import load_layout

#: The device preselected on any machine.
DEFAULT_DEVICE = "sim://?seed=1"
FRAME_MS = 33
#: Electrodes shown in the trace view until the operator picks others.
DEFAULT_TRACES = 8


def serial_devices() -> list[str]:
    """Driver URLs of the serial ports this machine has."""
    try:
        from serial.tools import list_ports
    except ImportError:  # pyserial is a dependency; a broken install must not stop the GUI
        return []
    return [f"serial://{p.device}" for p in list_ports.comports()]


def _group(title: str | None, *rows: QWidget | QHBoxLayout) -> QWidget:
    """A group box of rows; a plain widget (a tab's page) without a title."""
    box = QGroupBox(title) if title else QWidget()
    lay = QVBoxLayout(box)
    lay.setContentsMargins(6, 4, 6, 4)  # compact: the side panel's height is for the protocol
    for row in rows:
        (lay.addLayout if isinstance(row, QHBoxLayout) else lay.addWidget)(row)
    if not title:
        lay.addStretch()
    return box


def _row(*widgets: QWidget) -> QHBoxLayout:
    lay = QHBoxLayout()
    for w in widgets:
        lay.addWidget(w)
    return lay


class MainWindow(QMainWindow):
    """Operate a rig: connect, watch, run protocols, record, stop stimulation."""

    def __init__(self, session: RigSession | RemoteSession | None = None,
                 device: str | None = None, protocol: str | None = None,
                 settings: QSettings | None = None,
                 confirm: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self.setWindowTitle("mea-control")
        self.session = session or RemoteSession()
        self.settings = settings or QSettings("mea-control", "mea-control")
        #: Asks the operator a yes/no question (tests replace it).
        self.confirm = confirm or self._confirm
        #: Asks the operator to pick one of some answers: its index, None if none (tests
        #: replace it).
        self.choose = self._choose
        self._layout_name = ""
        self._selected: list[int] = list(range(DEFAULT_TRACES))
        self._recorded = ""  # the file of the latest recording, for the panel
        self._refusals = 0
        self._last_refusal = ""

        self.protocol_panel = ProtocolPanel()
        self.protocol_panel.start_requested.connect(self._start)
        self.protocol_panel.stop_requested.connect(self.session.stop)
        self.protocol_panel.pause_requested.connect(self._pause)
        self.protocol_panel.changed.connect(self._save_protocol)
        self._build_device_panel()
        self._build_recording_panel()
        self._build_safety_panel()
        self._build_display_panel()
        self.log_view = QPlainTextEdit(readOnly=True)
        self.log_view.setMaximumBlockCount(5000)

        self._dock("Rig", self._side_panel(), Qt.LeftDockWidgetArea)
        self.setCorner(Qt.BottomLeftCorner, Qt.LeftDockWidgetArea)  # the Rig dock: full height
        self._dock("Log", self.log_view, Qt.BottomDockWidgetArea)
        self.views = QTabWidget()
        self._dock("Array and responses", self.views, Qt.RightDockWidgetArea)
        self.central = QSplitter(Qt.Vertical)
        self.setCentralWidget(self.central)
        self._build_views(load_layout())

        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(FRAME_MS)
        self._restore(device, protocol)

    # -- building ----------------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> None:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)

    def _side_panel(self) -> QWidget:
        """Device, protocol (taking the spare height) and recording / display / limits tabs
        in a scroll area; Safety below it, always in view."""
        self.side_tabs = QTabWidget()
        self.side_tabs.addTab(self.recording_box, "Recording")
        self.side_tabs.addTab(self.display_box, "Display")
        self.side_tabs.addTab(_group(None, self.limits_label), "Limits")
        panels = QWidget()
        lay = QVBoxLayout(panels)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.device_box)
        lay.addWidget(self.protocol_panel, 1)
        lay.addWidget(self.side_tabs)
        self.side_scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        self.side_scroll.setWidget(panels)
        side = QWidget()
        side_lay = QVBoxLayout(side)
        side_lay.setContentsMargins(4, 4, 4, 4)
        side_lay.addWidget(self.side_scroll, 1)
        side_lay.addWidget(self.safety_box)
        return side

    def _build_device_panel(self) -> None:
        self.device_url = QComboBox(editable=True)
        self.device_url.addItems([DEFAULT_DEVICE, *serial_devices()])
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self._toggle_connection)
        self.device_info = QLabel("not connected")
        self.device_info.setWordWrap(True)
        self.device_status = QLabel("")
        self.device_status.setWordWrap(True)
        self.device_box = _group("Device", _row(self.device_url, self.connect_button),
                                 self.device_info, self.device_status)

    def _build_recording_panel(self) -> None:
        self.record_check = QCheckBox("Record protocol runs to")
        self.record_fields = RecordingFields(self.record_check)
        self.record_button = QPushButton("Record now")
        self.record_button.setToolTip("record what runs now (the monitoring or a protocol) "
                                      "until you stop it or that run ends")
        self.record_button.clicked.connect(self._toggle_recording)
        self.record_status = QLabel("not recording")
        self.record_status.setWordWrap(True)
        self.recording_box = _group(None, self.record_fields,
                                    _row(self.record_button, self.record_status))
        self.recording_box.layout().setSpacing(2)  # compact: the height is for the protocol
        self.recording_box.layout().setContentsMargins(6, 2, 6, 2)

    def _build_safety_panel(self) -> None:
        self.stop_button = QPushButton("STOP STIMULATION")
        font = QFont()
        font.setPointSize(14)
        font.setBold(True)
        self.stop_button.setFont(font)
        self.stop_button.setMinimumHeight(56)
        self.stop_button.setStyleSheet("QPushButton { background: #c62828; color: white; }")
        self.stop_button.clicked.connect(self.stop_stimulation)
        self.rearm_button = QPushButton("Re-arm stimulation")
        self.rearm_button.clicked.connect(self.rearm)
        self.safety_state = QLabel("")
        self.safety_state.setWordWrap(True)
        self.limits_label = QLabel(self._limits_text())
        self.limits_label.setWordWrap(True)
        self.limits_label.setStyleSheet("color: #555;")
        self.safety_state.setMinimumWidth(120)
        self.safety_box = _group("Safety", self.stop_button,
                                 _row(self.rearm_button, self.safety_state))

    def _build_display_panel(self) -> None:
        self.filtered_check = QCheckBox("band-pass filtered traces")
        self.filtered_check.setChecked(True)
        self.window_seconds = QSpinBox(minimum=10, maximum=60, singleStep=10, suffix=" s")
        self.window_seconds.setValue(10)
        self.display_box = _group(None, _row(self.filtered_check, QLabel("raster window"),
                                                  self.window_seconds))

    def _build_views(self, layout) -> None:
        """(Re)build the views for an electrode layout (the device's, once connected)."""
        if layout.name == self._layout_name:
            return
        self._layout_name = layout.name
        for i in reversed(range(self.central.count())):
            self.central.widget(i).deleteLater()
        self.views.clear()
        self.traces = TraceView(layout)
        self.raster = RasterView(layout)
        self.array = ArrayView(layout)
        self.psth = PsthView()
        self.model = ModelView(layout)
        self._selected = [c for c in self._selected if c < layout.n_electrodes]
        self.array.set_selection(self._selected)
        self.array.selection_changed.connect(self._select)
        self.central.addWidget(self.traces)
        self.central.addWidget(self.raster)
        self.views.addTab(self.array, "Array (firing rate)")
        self.views.addTab(self.psth, "PSTH")
        self.views.addTab(self.model, "Model")

    # -- actions -----------------------------------------------------------------------------
    def _toggle_connection(self) -> None:
        if self.session.connected:
            self.disconnect()
        else:
            self.connect_device(self.device_url.currentText().strip())

    def connect_device(self, url: str) -> bool:
        try:
            info = self.session.connect(url)
        except Exception as exc:  # any driver's failure: shown, never only on the console
            self.error(f"cannot connect to {url}: {exc}")
            return False
        self._build_views(info.layout)
        self.device_info.setText(f"{info.name}: {info.n_channels} channels at "
                                 f"{info.sample_rate:g} Hz, layout {info.layout.name}"
                                 + (" (simulated)" if info.simulated else ""))
        self.connect_button.setText("Disconnect")
        self.settings.setValue("device", url)
        return True

    def disconnect(self) -> None:
        if self.session.recording is not None and not self.confirm(
                "A recording is on. Stop it, close the file and disconnect?"):
            return
        if not self.session.disconnect():
            self.log("the device is still finishing a recording; it closes when done")
        self.connect_button.setText("Connect")
        self.device_info.setText("not connected")

    def _start(self, protocol: str, values: dict) -> None:
        if not self.session.connected and not self.connect_device(
                self.device_url.currentText().strip()):
            return
        record, overwrite = None, False
        if self.record_check.isChecked():
            if (target := self._recording_target()) is None:
                return
            record, overwrite = target
        try:
            self.session.start(protocol, values, record_path=record, overwrite=overwrite,
                               meta=self.record_fields.meta())
        except Exception as exc:
            self.error(f"cannot start {protocol}: {exc}")
            return
        self.protocol_panel.set_running(True)

    def _pause(self) -> None:
        """Pause the protocol, or resume it if paused."""
        try:
            if self.session.paused:
                self.session.resume()
            else:
                self.session.pause()
        except Exception as exc:
            self.error(f"cannot pause: {exc}")

    def _toggle_recording(self) -> None:
        """Record what runs now to the chosen file, or stop the recording in progress."""
        if self.session.recording is not None:
            self.session.stop_recording()
            return
        if (target := self._recording_target()) is None:
            return
        path, overwrite = target
        try:
            self.session.record(path, overwrite=overwrite, meta=self.record_fields.meta())
        except Exception as exc:
            self.error(f"cannot record to {path}: {exc}")

    def _recording_target(self) -> tuple[Path, bool] | None:
        """The next recording's file and whether it replaces one; None if the operator
        cancelled. A typed name that exists: the operator chooses a free name or to
        overwrite it (never silently)."""
        self.record_fields.save(self.settings)
        path, typed = self.record_fields.target()
        if not typed or not taken(path):
            return path, False
        free = next_free(path)
        answer = self.choose(f"{path.name} exists in {path.parent}.",
                             [f"Record to {free.name}", f"Overwrite {path.name}", "Cancel"])
        if answer == 0:
            return free, False
        return (path, True) if answer == 1 else None

    def stop_stimulation(self) -> None:
        self.session.stop_stimulation()
        self.log("STIMULATION STOPPED by the operator; press Re-arm to allow pulses again")

    def rearm(self) -> None:
        self.session.rearm()

    def _select(self, channels: list[int]) -> None:
        self._selected = list(channels)

    # -- the 30 Hz frame ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Take a snapshot and hand it to every view; update panels and the log."""
        for line in self.session.drain_log():
            self.log(line)
        snap = self.session.buffers.snapshot(window_s=float(self.window_seconds.value()),
                                             channels=self._selected,
                                             filtered=self.filtered_check.isChecked(),
                                             pixels=self.traces.columns(len(self._selected)))
        for view in (self.traces, self.raster, self.array, self.psth, self.model):
            view.update_view(snap)
        for ev in snap.events:
            if getattr(ev, "kind", "") == "refusal":
                self._refusals += 1
                self._last_refusal = ev.message
        self._update_panels(snap.status)

    def _update_panels(self, status: dict) -> None:
        s = self.session
        if s.info is not None and s.connected:
            lat = status.get("latency_p50_ms"), status.get("latency_p99_ms")
            lat_text = ("latency p50 {:.2f} / p99 {:.2f} ms".format(*lat)
                        if None not in lat else "latency: no pulse yet")
            self.device_status.setText(
                f"{s.info.sample_rate:g} Hz; blocks {status.get('blocks', 0)}, dropped "
                f"{status.get('blocks_dropped', 0)}; {lat_text}; watchdog "
                f"{status.get('watchdog', 'armed')}")
        running = s.running and s.protocol is not None
        self.protocol_panel.set_running(running)
        self.protocol_panel.pause.setText("Resume" if running and s.paused else "Pause")
        if running:
            self.protocol_panel.set_progress(*s.progress())
        armed = s.armed
        self.safety_state.setText(
            ("stimulation armed" if armed else "<b>stimulation STOPPED</b> (re-arm to allow)")
            + f"; refusals {self._refusals}"
            + (f", last: {self._last_refusal}" if self._last_refusal else ""))
        self.rearm_button.setEnabled(not armed)
        rec = s.recording
        if rec is not None:
            self._recorded = Path(rec["file"]).name
            self.record_status.setText(
                f"recording {self._recorded}: {rec['bytes'] / 1e6:.1f} MB, "
                f"{rec['seconds']:.0f} s; backlog {rec['backlog_s']:.1f} s, samples lost "
                f"{rec['samples_lost']}")
        elif self._recorded:
            self.record_status.setText(f"recorded {self._recorded}; not recording")
        self.record_button.setText("Stop recording" if rec is not None else "Record now")
        self.record_button.setEnabled(s.connected or rec is not None)
        if s.last_error:
            self.error(s.last_error)
            s.last_error = None

    # -- messages ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.log_view.appendPlainText(f"{time.strftime('%H:%M:%S')}  {message}")

    def error(self, message: str) -> None:
        """An error: in the log, the status bar and a message box that does not block."""
        self.log(f"ERROR: {message}")
        self.statusBar().showMessage(message, 15000)
        box = QMessageBox(QMessageBox.Warning, "mea-control", message, parent=self)
        box.setModal(False)
        box.show()
        self._last_box = box

    def _confirm(self, question: str) -> bool:
        answer = QMessageBox.question(self, "mea-control", question)
        return answer == QMessageBox.Yes

    def _choose(self, question: str, answers: list[str]) -> int | None:
        box = QMessageBox(QMessageBox.Question, "mea-control", question, parent=self)
        buttons = [box.addButton(text, QMessageBox.AcceptRole) for text in answers]
        box.setDefaultButton(buttons[0])
        box.exec()
        return buttons.index(box.clickedButton()) if box.clickedButton() in buttons else None

    def _limits_text(self) -> str:
        lim = self.session.limits
        return "limits: " + ", ".join(f"{k} {v:g}" for k, v in vars(lim).items()
                                      if isinstance(v, (int, float)))

    # -- settings and closing ----------------------------------------------------------------
    def _restore(self, device: str | None, protocol: str | None) -> None:
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
            self.restoreState(self.settings.value("state"))
        else:
            self.resize(1400, 900)
            docks = {d.objectName(): d for d in self.findChildren(QDockWidget)}
            self.resizeDocks([docks["Rig"], docks["Array and responses"]], [400, 440],
                             Qt.Horizontal)
            self.resizeDocks([docks["Log"]], [110], Qt.Vertical)
        url = device or self.settings.value("device", DEFAULT_DEVICE)
        self.device_url.setCurrentText(url)
        name = protocol or self.settings.value("protocol")
        if name:
            values = self.settings.value(f"values/{name}") or {}
            self.protocol_panel.set_protocol(name, dict(values))
        self.record_fields.restore(self.settings)
        self.window_seconds.setValue(int(self.settings.value("window_s", 10)))
        self.filtered_check.setChecked(self.settings.value("filtered", "true") == "true")

    def _save_protocol(self) -> None:
        name = self.protocol_panel.protocol()
        if name:
            self.settings.setValue("protocol", name)
            self.settings.setValue(f"values/{name}", self.protocol_panel.values())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if self.session.recording is not None and not self.confirm(
                "A recording is on. Stop it, close the file and quit?"):
            event.ignore()
            return
        self.timer.stop()
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        self.record_fields.save(self.settings)
        self.settings.setValue("window_s", self.window_seconds.value())
        self.settings.setValue("filtered", "true" if self.filtered_check.isChecked() else "false")
        if not self.session.close(timeout=30.0):
            self.log("the rig did not close cleanly")
        event.accept()


def screenshot_after(window: QMainWindow, path: str | os.PathLike, seconds: float,
                     done: Callable[[], None]) -> None:
    """Save a PNG of the whole window after ``seconds``, then call ``done``."""
    def shoot() -> None:
        window.grab().save(str(path))
        done()

    QTimer.singleShot(int(seconds * 1000), shoot)


