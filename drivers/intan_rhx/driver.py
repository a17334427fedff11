"""RHXDriver: the Driver port over RHX, tying together the link, stimulation, the
settings mapping and discovery (see the package's docstring for RHX's protocol)."""

from __future__ import annotations

import logging
import math
import socket
import threading
from typing import Any, ClassVar

import numpy as np

from drivers.inbox import Inbox
from drivers.intan_rhx import discovery
from drivers.intan_rhx.link import FRAMES_PER_BLOCK, UV_PER_BIT, Link
from drivers.intan_rhx.settings import KEYS, channel_map, presets
from drivers.intan_rhx.stimulation import Stimulation, _Fired, _Stats, _Waiting
from mea_control.driver import Driver, DriverError, Event, Param
from mea_control.layouts import DEFAULT_LAYOUT, LayoutError, load_layout
from mea_control.rig import Rig, RigFileError, rig_option
from mea_control.types import Capabilities, DeviceInfo

log = logging.getLogger(__name__)

STIM_CONTROLLER = "ControllerStimRecord"


class RHXDriver(Stimulation, Link, Driver):
    """Intan RHX's TCP command, waveform and spike servers (one RHS or RHD controller)."""

    scheme: ClassVar[str] = "rhx"
    params: ClassVar[dict[str, Param]] = {
        "waveform": Param(int, 5001, "RHX's TCP waveform output port"),
        "spikes": Param(int, 5002, "RHX's TCP spike output port (used with detect=rhx)"),
        "rig": Param(str, "", "rig file with the [channels] table (the CLI's --rig sets it)"),
        "layout": Param(str, DEFAULT_LAYOUT, "layout name or probeinterface JSON path"),
        "timeout": Param(float, 3.0, "seconds to wait for RHX's answers (connecting, closing)"),
        "detect": Param(str, "host", "host: mea-control detects spikes in the raw stream; "
                        "rhx: RHX's detector, from its spike port"),
        "refractory_us": Param(float, 1000.0, "RHS refractory period after a pulse or train"),
    }

    none_found: ClassVar[str] = (
        "no Intan RHX TCP command server listens on this computer's port 5000 (in RHX: "
        "Network > Remote TCP Control > Connect)"
    )

    @classmethod
    def discover(cls, timeout: float = 0.5) -> list[tuple[str, str]]:
        """RHX command servers listening on this computer, found without connecting
        (discovery.rhx_servers)."""
        return discovery.rhx_servers()

    def __init__(self, url: str, options: dict[str, Any], location: str = "") -> None:
        super().__init__(url, options, location)
        where = (location or "127.0.0.1").rstrip("/")
        host, _, port = where.rpartition(":") if ":" in where else (where, "", "5000")
        if not host or not port.isdigit():
            raise DriverError(f"rhx:// needs HOST:PORT of RHX's command server, e.g. "
                              f"rhx://127.0.0.1:5000, not {location!r}")
        self.host, self.port = host, int(port)
        if options["detect"] not in ("host", "rhx"):
            raise DriverError(f"rhx:// detect={options['detect']!r}: use host or rhx")
        if options["timeout"] <= 0:
            raise DriverError("rhx:// timeout must be above 0 seconds")
        self.where = f"RHX at {self.host}:{self.port}"
        self._info: DeviceInfo | None = None
        self._state = "closed"
        self.stats = _Stats()
        #: The waiting patterns, the abort count and every trigger's send: abort_stimulation()
        #: (any thread) and the acquisition thread's firing take it in turn.
        self._stim_lock = threading.Lock()
        self._waiting: list[_Waiting] = []  # by at_sample
        self._aborts = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        if self._state != "closed":
            return
        try:
            self.layout = load_layout(self.options["layout"])
        except LayoutError as exc:
            raise DriverError(f"rhx:// layout: {exc}") from None
        rig = self._rig()
        self.natives = channel_map(rig and rig.channels, self.layout, self._rig_hint(rig))
        self.presets = presets(rig and rig.stimulator, self.layout)
        self._reset()
        self._command = self._connect(self.port, "command")
        self._command_reader = threading.Thread(target=self._receive_commands,
                                                name="rhx-commands", daemon=True)
        self._command_reader.start()
        self._state = "open"
        try:
            self._introduce()
            self._configure()
        except BaseException:
            self.close()
            raise

    def _rig(self) -> Rig | None:
        try:
            return rig_option(self.options["rig"])
        except RigFileError as exc:
            raise DriverError(str(exc)) from None

    @staticmethod
    def _rig_hint(rig: Rig | None) -> str:
        return "" if rig is None else f" ({rig.where} has none)"

    def _reset(self) -> None:
        self._inbox = Inbox()
        self._events: list[tuple[str, str]] = []
        self._lock = threading.Lock()  # the stim bookkeeping, shared with the reader thread
        self._ask_lock = threading.Lock()
        self._text = ""  # command port text not yet taken
        self._text_ready = threading.Condition()
        self._asking = False
        self._closing = threading.Event()
        self._data: dict[str, socket.socket] = {}
        self._readers: list[threading.Thread] = []
        self._last_sample: int | None = None
        self._wrap = 0
        self._seq = 0
        self._garbage = {"waveform": 0, "spike": 0}
        self._ticket = 0
        self._fired: list[_Fired] = []
        with self._stim_lock:
            self._waiting = []
        self._quiet_until: dict[str, int] = {}
        self._spikes: list[tuple[int, int]] = []
        self._pending_tick: int | None = None
        self._first_block = threading.Event()
        self._model: dict[str, dict[str, str | None]] = {}
        self._key_used: dict[str, float] = dict.fromkeys(KEYS, 0.0)
        self._noted_upload = False

    def _introduce(self) -> None:
        answers, errors = self._ask(["get type", "get sampleratehertz", "get version",
                                     "get stimstepsizemicroamps"])
        if "Type" not in answers or "SampleRateHertz" not in answers:
            raise DriverError(f"{self.where} answers, but not as RHX does ({errors[:120]!r}): "
                              "is this RHX's command port?")
        self.controller = answers["Type"]
        self.version = answers.get("Version", "?")
        self.rate = float(answers["SampleRateHertz"])
        self.stimulates = self.controller == STIM_CONTROLLER
        try:
            self.step_uA = float(answers.get("StimStepSizeMicroAmps", "nan"))
        except ValueError:
            self.step_uA = math.nan
        if self.stimulates and not math.isfinite(self.step_uA):
            raise DriverError(f"{self.where}: the stimulation step size is "
                              f"{answers.get('StimStepSizeMicroAmps')!r}; choose a step size "
                              "(not Min or Max) when RHX starts")
        if self._run_mode in ("Record", "Trigger"):
            raise DriverError(f"{self.where} is recording ({self._run_mode}); stop it in RHX: "
                              "mea-control records the run itself")
        if self._run_mode == "Run":  # left running: configuration needs it stopped
            self._check(["set runmode stop"], "stop the running acquisition")
        band = self.options["detect"] == "host"
        self.spike_mode = not band
        capable = [ch for ch in self.natives.values() if self.layout.can_stimulate[ch]]
        self.stim_natives = [n for n, ch in self.natives.items()
                             if self.stimulates and ch in capable]
        unmapped = [self.layout.labels[i] for i in range(self.layout.n_electrodes)
                    if i not in set(self.natives.values())]
        limits: dict[str, Any] = {"max_phase_us": 5000.0}
        if self.stimulates:
            limits["max_current_uA"] = 255 * self.step_uA
        if unmapped:
            limits["forbidden"] = unmapped
        short = {"ControllerStimRecord": "RHS", "ControllerRecordUSB3": "RHD USB3",
                 "ControllerRecordUSB2": "RHD USB2"}.get(self.controller, self.controller)
        self._info = DeviceInfo(
            # no ':' or '/': the name becomes an NWB device name
            name=f"Intan RHX {self.version} ({short}) at {self.host} port {self.port}",
            n_channels=self.layout.n_electrodes, sample_rate=self.rate, uV_per_bit=UV_PER_BIT,
            layout=self.layout,
            capabilities=Capabilities(raw_stream=band, onboard_detection=not band,
                                      stim_modes=("current",) if self.stimulates else (),
                                      scheduled_stim=False),
            limits=limits, simulated="fake" in self.version)

    def _configure(self) -> None:
        """Outputs, blocks per write, stimulation off; the data ports connected."""
        commands = ["execute ClearAllDataOutputs", "set TCPNumberDataBlocksPerWrite 1"]
        self.columns: list[tuple[str, str]] = []  # (native, band) of each word of a frame
        wide = not self.spike_mode
        for native in self.natives:
            if wide:
                commands.append(f"set {native.lower()}.TCPDataOutputEnabled true")
                self.columns.append((native, "WIDE"))
            if native in self.stim_natives:
                commands.append(f"set {native.lower()}.TCPDataOutputEnabledStim true")
                self.columns.append((native, "STIM"))
            if self.spike_mode:
                commands.append(f"set {native.lower()}.TCPDataOutputEnabledSpike true")
        if not self.columns:  # the clock needs one word a frame
            first = next(iter(self.natives))
            commands.append(f"set {first.lower()}.TCPDataOutputEnabled true")
            self.columns.append((first, "CLOCK"))
        for native in self.stim_natives:  # a known state: stimulation off everywhere we map
            commands.append(f"set {native.lower()}.StimEnabled false")
            self._model[native] = {"StimEnabled": "false"}
        if self.stim_natives:
            commands.append("execute UploadStimParameters")
        commands.append("execute ConnectTCPWaveformDataOutput")
        if self.spike_mode:
            commands.append("execute ConnectTCPSpikeDataOutput")
        errors = self._ask(commands)[1]
        if errors:
            missing = self._missing_channels()
            if missing:
                raise DriverError(
                    f"{self.where} has no channel {', '.join(missing)} of the rig file's "
                    f"[channels] table (RHX: {errors[:100]!r}): check the headstages RHX "
                    "found and the table")
            raise DriverError(f"{self.where} refused the set-up: {errors[:300]}")
        wide_index = [i for i, (_, band) in enumerate(self.columns) if band == "WIDE"]
        self._wide_words = np.array(wide_index, np.intp)
        self._wide_channels = np.array([self.natives[self.columns[i][0]] for i in wide_index],
                                       np.intp)
        stim = [(n, i) for i, (n, band) in enumerate(self.columns) if band == "STIM"]
        self._stim_natives_order = [n for n, _ in stim]
        self._stim_columns = np.array([i for _, i in stim], np.intp)
        self._stim_prev = np.zeros(len(stim), bool)
        words = len(self.columns)
        self._frame = np.dtype([("t", "<u4"), ("w", "<u2", (words,))])
        self._block_bytes = 4 + FRAMES_PER_BLOCK * self._frame.itemsize
        self._data["waveform"] = self._connect_data(self.options["waveform"], "waveform")
        if self.spike_mode:
            self._data["spike"] = self._connect_data(self.options["spikes"], "spike")
        for name, target in (("waveform", self._receive_waveform),
                             ("spike", self._receive_spikes)):
            if name in self._data:
                thread = threading.Thread(target=target, name=f"rhx-{name}", daemon=True)
                thread.start()
                self._readers.append(thread)

    def _missing_channels(self) -> list[str]:
        answers, _ = self._ask([f"get {n.lower()}.NativeChannelName" for n in self.natives])
        found = set(answers.get_all("NativeChannelName"))
        return [n for n in self.natives if n not in found]

    def close(self) -> None:
        if self._state == "closed":
            return
        if self._state in ("running", "starting"):
            self._state = "running"
            self.stop()
        if self._inbox.lost is None and self._info is not None:
            try:  # leave RHX as found: stimulation off, outputs disconnected
                off = [f"set {n.lower()}.StimEnabled false" for n, m in self._model.items()
                       if m.get("StimEnabled") == "true"]
                self._ask(off + (["execute UploadStimParameters"] if off else [])
                          + ["execute DisconnectTCPWaveformDataOutput",
                             "execute DisconnectTCPSpikeDataOutput"],
                          timeout=self.options["timeout"])
            except DriverError:
                pass
        self._closing.set()
        for sock in [self._command, *self._data.values()]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in [self._command_reader, *self._readers]:
            thread.join(2.0)
        self._state = "closed"

    def start(self, block_samples: int | None = None) -> None:
        """Upload the rig's presets and run; RHX's blocks are 128 samples whatever is asked."""
        if self._state != "open":
            raise DriverError(f"{self.where}: start() needs an open, idle device")
        for preset in self.presets:
            problem = self._program(preset.key, preset.pattern, while_running=False)
            if problem:
                raise DriverError(f"rig file [stimulator] {preset.key}: {problem}")
        for preset in self.presets:  # kept for their patterns: never the first to reprogram
            self._key_used[preset.key] = math.inf
        self._state = "starting"
        self._send("set runmode run;")  # alone: RHX parses what follows it only after a stop
        if not self._first_block.wait(self.options["timeout"] + 2.0) or self._inbox.lost:
            self._state = "open"
            errors = self._take_text()
            raise DriverError(self._inbox.lost or (
                f"{self.where} refused to run: {errors}" if errors else
                f"{self.where} sent no data within {self.options['timeout'] + 2:g} s of "
                "`set runmode run`: check that RHX's waveform output is connected to us"))
        self._state = "running"

    def stop(self) -> None:
        if self._state != "running":
            return
        self._state = "stopped"
        if self._inbox.lost is None:
            try:
                self._ask(["set runmode stop"], timeout=1.0)
            except DriverError:
                pass  # the link went: nothing streams any more either

    # -- streaming ------------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Event | None:
        if self._state == "stopped":
            return None
        if self._state != "running":
            raise DriverError(f"{self.where}: read() before start()")
        self._fire_due()
        return self._inbox.get(timeout)

    def drain_events(self) -> list[tuple[str, str]]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def _event(self, kind: str, message: str) -> None:
        log.debug("[%s] %s", kind, message)  # the engine logs it as a run event
        self._events.append((kind, message))

