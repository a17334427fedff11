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
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from mea_control.gui.forms import ProtocolPanel
from mea_control.gui.recordings import RecordingFields, next_free, taken
from mea_control.gui.remote import RemoteSession
from mea_control.gui.session import RigSession
from mea_control.gui.status_line import StatusLine
from mea_control.gui.views import (
    ArrayView,
    GameView,
    ModelView,
    PsthView,
    RasterView,
    TracesPanel,
)
from mea_control.layouts import load_layout
from mea_control.protocol import ProtocolError

#: The device preselected on any machine.
DEFAULT_DEVICE = "sim://?seed=1"
FRAME_MS = 33
#: Electrodes shown in the trace view until the operator picks others.
DEFAULT_TRACES = 8
#: The side panel's width: room for the protocol form, the rest for the views.
SIDE_WIDTH = 330
#: The least width of the trace and raster plots, and of the array / PSTH / model tabs.
PLOTS_MIN_WIDTH = 320
TABS_MIN_WIDTH = 260
#: The banner's colours: the run's state at a glance.
BANNER_STYLE = "QLabel {{ background: {}; color: white; font-weight: bold; padding: 3px 8px; }}"
BANNER_COLOURS = {"DISARMED": "#c62828", "REC": "#ad1457", "PAUSED": "#ef6c00",
                  "RUNNING": "#2e7d32", "MONITORING": "#455a64", "NOT CONNECTED": "#616161"}


def user_settings() -> QSettings:
    """The user's settings, kept between sessions (on Linux ~/.config/mea-control)."""
    return QSettings("mea-control", "mea-control")


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
        self.settings = settings or user_settings()
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
        self._progress_shown = False  # the progress bar shows a run's progress

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
        self.setCentralWidget(self._central())
        self._build_views(load_layout())

        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(FRAME_MS)
        self._restore(device, protocol)
        self.refresh()  # the banner and the panels say the state from the first paint on

    # -- building ----------------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> None:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)

    def _central(self) -> QWidget:
        """The banner over the views: traces over raster (or "not connected") beside the
        array, PSTH and model tabs; a splitter between them, the traces taking the spare
        width. The banner is a coloured line: NOT CONNECTED, MONITORING, RUNNING, PAUSED,
        REC (the file) and DISARMED, as the window's title says too (the side panel keeps
        the window's whole height)."""
        self.banner = StatusLine()
        self.banner.setFixedHeight(self.banner.fontMetrics().height() + 10)
        self.plots = QSplitter(Qt.Vertical)
        self.plots.setMinimumWidth(PLOTS_MIN_WIDTH)
        self.not_connected = QLabel()
        self.not_connected.setAlignment(Qt.AlignCenter)
        self.not_connected.setWordWrap(True)
        self.not_connected.setStyleSheet("color: #888; font-size: 14pt")
        self.live = QStackedWidget()
        self.live.addWidget(self.not_connected)
        self.live.addWidget(self.plots)
        self.views = QTabWidget()
        self.views.setMinimumWidth(TABS_MIN_WIDTH)
        self.central = QSplitter(Qt.Horizontal)
        self.central.setChildrenCollapsible(False)
        self.central.addWidget(self.live)
        self.central.addWidget(self.views)
        self.central.setStretchFactor(0, 11)
        self.central.setStretchFactor(1, 9)
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.banner)
        lay.addWidget(self.central, 1)
        return page

    def _side_panel(self) -> QWidget:
        """Device, protocol (taking the spare height) and recording / display / limits tabs
        in a scroll area; recording and safety below it, always in view and never moving."""
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
        side.setFixedWidth(max(SIDE_WIDTH, panels.minimumSizeHint().width() + 12
                               + self.side_scroll.verticalScrollBar().sizeHint().width()))
        side_lay = QVBoxLayout(side)
        side_lay.setContentsMargins(4, 4, 4, 4)
        side_lay.addWidget(self.side_scroll, 1)
        side_lay.addLayout(_row(self.record_button, self.record_status))
        side_lay.addWidget(self.safety_box)
        return side

    def _build_device_panel(self) -> None:
        self.device_url = QComboBox(editable=True)
        self.device_url.addItems([DEFAULT_DEVICE, *serial_devices()])
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self._toggle_connection)
        self.device_info = StatusLine("not connected")
        self.device_status = StatusLine("")
        self.device_box = _group("Device", _row(self.device_url, self.connect_button),
                                 self.device_info, self.device_status)

    def _build_recording_panel(self) -> None:
        self.record_check = QCheckBox("Record protocol runs to")
        self.record_fields = RecordingFields(self.record_check)
        self.record_button = QPushButton("Record now")
        self.record_button.setToolTip("record what runs now (the monitoring or a protocol) "
                                      "until you stop it or that run ends")
        self.record_button.clicked.connect(self._toggle_recording)
        self.record_status = StatusLine("not recording")  # with the button, below the scroll
        self.recording_box = _group(None, self.record_fields)
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
        self.safety_state = StatusLine("")
        self.limits_label = QLabel(self._limits_text())
        self.limits_label.setWordWrap(True)
        self.limits_label.setStyleSheet("color: #555;")
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
        shown = self._display() if self.plots.count() else None
        for i in reversed(range(self.plots.count())):
            self.plots.widget(i).deleteLater()
        self.views.clear()
        self.traces = TracesPanel(layout)
        self.raster = RasterView(layout)
        self.array = ArrayView(layout)
        self.psth = PsthView()
        self.model = ModelView(layout)
        self.game = GameView()
        self._selected = [c for c in self._selected if c < layout.n_electrodes]
        self.array.set_selection(self._selected)
        self.array.selection_changed.connect(self._select)
        self.plots.addWidget(self.traces)
        self.plots.addWidget(self.raster)
        self.views.addTab(self.array, "Array (firing rate)")
        self.views.addTab(self.psth, "PSTH")
        self.views.addTab(self.model, "Model")
        self.views.addTab(self.game, "Game")
        if shown is not None:
            self._show_display(shown)  # the new array's views look as the old ones did

    def _display(self) -> dict[str, str]:
        """The display controls of the traces and the heatmap, as settings' strings."""
        t, top = self.traces, self.array.fixed_max
        return {"gain_uv": f"{t.gain_uv:g}", "time_base_s": f"{t.time_base_s:g}",
                "arrangement": t.arrangement.currentData(),
                "threshold": "true" if t.threshold.isChecked() else "false",
                "colour_max_hz": "automatic" if top is None else f"{top:g}"}

    def _show_display(self, shown: dict[str, str]) -> None:
        """Set the display controls from :meth:`_display`'s strings (missing: unchanged)."""
        t = self.traces
        if "gain_uv" in shown:
            t.set_gain(float(shown["gain_uv"]))
        if "time_base_s" in shown:
            t.set_time_base(float(shown["time_base_s"]))
        if shown.get("arrangement") in t.ARRANGEMENTS:
            t.set_arrangement(shown["arrangement"])
        if "threshold" in shown:
            t.threshold.setChecked(shown["threshold"] == "true")
        if "colour_max_hz" in shown:
            top = shown["colour_max_hz"]
            self.array.set_colour_scale(None if top == "automatic" else float(top))

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
        self.session.buffers.bind(None, None)  # the views are cleared at the next frame

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
        except ProtocolError as exc:  # its set-up or what it would send: said beside Start
            self.protocol_panel.refuse(str(exc))
            self.log(f"not started: {exc}")
            return
        except Exception as exc:
            self.error(f"cannot start {protocol}: {exc}")
            return
        self.protocol_panel.set_running(True)
        self._forget_refusals()

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
        self._forget_refusals()

    def _forget_refusals(self) -> None:
        """Re-armed or a new run: the safety line counts refusals from now on."""
        self._refusals = 0
        self._last_refusal = ""

    def _select(self, channels: list[int]) -> None:
        self._selected = list(channels)

    # -- the 30 Hz frame ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Take a snapshot and hand it to every view; update panels and the log."""
        for line in self.session.drain_log():
            self.log(line)
        snap = self.session.buffers.snapshot(window_s=float(self.window_seconds.value()),
                                             filtered=self.filtered_check.isChecked(),
                                             **self.traces.request(self._selected))
        for view in (self.traces, self.raster, self.array, self.psth, self.model, self.game):
            view.update_view(snap)
        for ev in snap.events:  # in the loop's order: a refusal from before a re-arm that
            kind = getattr(ev, "kind", "")  # reaches the window after it is forgotten there
            if kind == "refusal":
                self._refusals += 1
                self._last_refusal = ev.message
            elif kind == "rearm":
                self._forget_refusals()
        self._update_panels(snap.status)

    def _update_panels(self, status: dict) -> None:
        s = self.session
        connected = s.connected and s.info is not None
        rec = s.recording
        if not connected and s.buffers.info is not None:
            s.buffers.bind(None, None)  # disconnected: the views draw nothing from now on
        self._show_device(connected, status)
        running = connected and s.running and s.protocol is not None
        paused = running and s.paused
        self.protocol_panel.set_running(running)
        self.protocol_panel.pause.setText("Resume" if paused else "Pause")
        if running:
            self.protocol_panel.set_progress(*s.progress())
        elif self._progress_shown:
            self.protocol_panel.set_progress(0.0, "not running")
        self._progress_shown = running
        armed = connected and s.armed
        self._show_safety(connected, armed)
        self._show_recording(rec, connected)
        self._show_state(connected, running, paused, armed, rec)
        if s.last_error:
            self.error(s.last_error)
            s.last_error = None

    def _show_device(self, connected: bool, status: dict) -> None:
        """The device's lines and, when it is not connected, "press Connect" in the views."""
        info = self.session.info
        if not connected:
            self.device_info.setText("not connected")
            self.device_status.setText("")
            self.connect_button.setText("Connect")
            url = self.device_url.currentText().strip()
            self.not_connected.setText(f"Not connected.\n\nPress Connect (top left) to open\n"
                                       f"{url}\nand see its traces.")
            self.live.setCurrentWidget(self.not_connected)
            return
        self.live.setCurrentWidget(self.plots)
        lat = status.get("latency_p50_ms"), status.get("latency_p99_ms")
        lat_text = ("latency p50 {:.2f} / p99 {:.2f} ms".format(*lat)
                    if None not in lat else "latency: no pulse yet")
        watchdog = status.get("watchdog", "armed")
        self.device_status.setText(
            f"blocks {status.get('blocks', 0)}, dropped {status.get('blocks_dropped', 0)}; "
            f"{lat_text}; watchdog {watchdog.split(':')[0]}")
        self.device_status.setToolTip(f"{info.sample_rate:g} Hz; watchdog {watchdog}")

    def _show_safety(self, connected: bool, armed: bool) -> None:
        """One line: armed or STOPPED, and the refusals since the last re-arm (each one is
        in the log; the last one is the line's tooltip)."""
        if not connected:
            text = "not connected"
        elif armed:
            text = "armed"
        else:
            text = "STOPPED"
        if connected and self._refusals:
            text += f" · refusals {self._refusals}"
        self.safety_state.setText(text)
        self.safety_state.setToolTip(
            {"armed": "stimulation armed", "STOPPED": "stimulation STOPPED: re-arm to allow",
             "not connected": "no device: no stimulation"}[text.split(" · ")[0]]
            + (f"; refusals since armed: {self._refusals} (each is in the log), the last: "
               f"{self._last_refusal}" if self._last_refusal else ""))
        style = "" if armed or not connected else "color: #c62828; font-weight: bold;"
        if style != self.safety_state.styleSheet():
            self.safety_state.setStyleSheet(style)
        self.rearm_button.setEnabled(connected and not armed)

    def _show_recording(self, rec: dict | None, connected: bool) -> None:
        if rec is not None:
            self._recorded = Path(rec["file"]).name
            self.record_status.setText(
                f"recording {self._recorded}: {rec['bytes'] / 1e6:.1f} MB, "
                f"{rec['seconds']:.0f} s; backlog {rec['backlog_s']:.1f} s, samples lost "
                f"{rec['samples_lost']}")
        elif self._recorded:
            self.record_status.setText(f"recorded {self._recorded}; not recording")
        self.record_button.setText("Stop recording" if rec is not None else "Record now")
        self.record_button.setEnabled(connected or rec is not None)

    def _show_state(self, connected: bool, running: bool, paused: bool, armed: bool,
                    rec: dict | None) -> None:
        """The banner and the window's title: DISARMED, REC (the file), PAUSED, and what
        runs; the banner's colour is that of the most urgent."""
        states = []
        if connected and not armed:
            states.append("DISARMED")
        if rec is not None:
            states.append(f"REC {Path(rec['file']).name}")
        if paused:
            states.append("PAUSED")
        if not connected:
            what = "NOT CONNECTED: press Connect"
        elif running:
            what = f"RUNNING {self.session.protocol}"
        else:
            what = f"MONITORING {self.session.url or ''} (no protocol runs)"
        text = "  ·  ".join([*states, what])
        urgent = (states[0] if states else what).split(" ")[0]
        urgent = "NOT CONNECTED" if urgent == "NOT" else urgent
        if text != self.banner.text():
            self.banner.setText(text)
            self.banner.setStyleSheet(BANNER_STYLE.format(BANNER_COLOURS[urgent]))
        title = "mea-control" + "".join(f" — {state}" for state in states)
        if title != self.windowTitle():
            self.setWindowTitle(title)

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
            self.resizeDocks([docks["Log"]], [110], Qt.Vertical)
        url = device or self.settings.value("device", DEFAULT_DEVICE)
        self.device_url.setCurrentText(url)
        name = protocol or self.settings.value("protocol")
        if name:
            values = self.settings.value(f"values/{name}") or {}
            self.protocol_panel.set_protocol(name, dict(values))
        self.record_fields.restore(self.settings)
        self.window_seconds.setValue(int(self.settings.value("window_s", 10)))
        if self.settings.value("views_split") is not None:
            self.central.restoreState(self.settings.value("views_split"))
        self.filtered_check.setChecked(self.settings.value("filtered", "true") == "true")
        self.settings.beginGroup("display")
        shown = {key: str(self.settings.value(key)) for key in self.settings.childKeys()}
        self.settings.endGroup()
        try:
            self._show_display(shown)
        except ValueError:  # a hand-edited settings file: the defaults, said in the log
            self.log(f"display settings not understood, defaults used: {shown}")

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
        self.settings.setValue("views_split", self.central.saveState())
        self.record_fields.save(self.settings)
        self.settings.setValue("window_s", self.window_seconds.value())
        self.settings.setValue("filtered", "true" if self.filtered_check.isChecked() else "false")
        for key, value in self._display().items():
            self.settings.setValue(f"display/{key}", value)
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


