"""``rhx://HOST:5000?waveform=5001&spikes=5002``: Intan RHS and RHD systems through RHX's TCP.

Follows the Intan RHX software 3.3.0 as published (github.com/Intan-Technologies/Intan-RHX,
commit 0829e0b47cf4a9a2a961e5e597a678c7d4d1b096: ``GUI/Widgets/tcpdisplay.cpp`` for the
command syntax, ``Engine/Processing/commandparser.cpp`` for answers and error strings,
``Engine/Threads/tcpdataoutputthread.cpp`` for the waveform and spike streams,
``Engine/Processing/stimparameters.cpp`` for the stimulation parameters). See
``docs/intan-rhx.md`` for the setup in RHX, the rig file and the limits.

- Commands are text separated by ``;``. ``set``/``execute`` answer nothing on success, so
  every batch whose outcome matters ends with ``get runmode``: the text before its answer
  is the batch's errors (RHX's own strings). ``set runmode run`` goes alone (RHX parses
  what follows it in the same batch only once acquisition stops).
- The waveform port carries blocks of 128 frames (magic 0x2ef07a08, then per frame an
  int32 timestamp and a uint16 per enabled output); ``TCPNumberDataBlocksPerWrite`` is set
  to 1, so a block of 128 samples (4.27 ms at 30 kHz) is the latency floor. Each block is
  a :class:`Block` in the layout's channel order, mapped by the rig file's ``[channels]``
  table (native name such as ``"A-010"`` -> electrode label).
- Stimulation (RHS only): a pattern is mapped onto one of the keys F1-F8: the channels
  whose Source is that key and whose stimulation is enabled fire together on ``execute
  ManualStimTriggerPulse F<k>``. A pattern that matches what a key holds already fires
  with that one command (the fast path); any other pattern first needs the differing
  parameters set and each changed channel uploaded (``execute UploadStimParameters
  a-010``), which costs a round trip and the controller's upload time. The rig file's
  ``[stimulator]`` table may pre-upload patterns onto keys before the run. A pattern RHS
  hardware cannot play (voltage mode, monophasic or four-phase pulses, unequal triphasic
  outer phases, durations that are not whole samples, amplitudes that are not whole steps
  of the controller's step size) is refused, reported as not run.
- RHX says nothing when a pulse runs: the driver streams each stimulating channel's STIM
  band too and reports a pattern at the first sample its pulse shows there. A pattern
  whose pulse does not show within ``REPORT_TIMEOUT_S`` is reported as not run.
- ``detect=rhx`` uses RHX's own spike detector (spike port, 14-byte records) instead of
  raw samples: SpikeEvents (amplitude unknown: NaN) and a Tick a block behind the stream.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from drivers.inbox import Inbox
from mea_control.driver import Driver, DriverError, Event, Param
from mea_control.layouts import DEFAULT_LAYOUT, LayoutError, load_layout
from mea_control.rig import Rig, RigFileError, rig_option
from mea_control.types import (
    Block,
    Capabilities,
    DeviceInfo,
    Layout,
    SpikeEvents,
    StimPattern,
    StimPulse,
    StimReport,
    Tick,
)

log = logging.getLogger(__name__)

WAVEFORM_MAGIC = 0x2EF07A08
SPIKE_MAGIC = 0x3AE2710F
FRAMES_PER_BLOCK = 128
SPIKE_RECORD = struct.Struct("<I5sIB")
UV_PER_BIT = 0.195
STIM_CONTROLLER = "ControllerStimRecord"
KEYS = tuple(f"F{i}" for i in range(1, 9))
#: A pattern whose pulse has not shown in the STIM band this long (of the stream) after its
#: trigger did not run. Generous: RHX triggers at its board's clock, which its TCP stream
#: follows with a delay, and a pulse that ran must never be reported as not run.
REPORT_TIMEOUT_S = 2.0
#: The answer that ends every batch whose errors we want (its values are no prefix of another).
BARRIER = "get runmode"
_BARRIER_ANSWER = re.compile(r"Return: RunMode (Run|Record|Trigger|Stop)")
_UNKNOWN = "Unrecognized parameter"
_NATIVE = re.compile(r"^[A-Ha-h]-\d{3}$")
_MAGIC_W = struct.pack("<I", WAVEFORM_MAGIC)
_MAGIC_S = struct.pack("<I", SPIKE_MAGIC)


class Unmappable(ValueError):
    """A pulse RHS hardware cannot play as asked."""


# -- StimPattern -> RHS channel parameters --------------------------------------------------------
def rhs_settings(pulse: StimPulse, train_count: int, train_rate_hz: float, step_uA: float,
                 sample_rate: float) -> dict[str, str]:
    """The RHX channel items (name -> value text, in sending order) that play ``pulse``.

    Raises Unmappable when the hardware cannot play it exactly.
    """
    if pulse.mode != "current":
        raise Unmappable("RHS stimulates with current only, not voltage")
    phases = list(pulse.phases)
    gap = 0.0
    if len(phases) == 3 and phases[1][1] == 0.0:
        gap = phases[1][0]
        phases = [phases[0], phases[2]]
    if any(a == 0.0 for _, a in phases):
        raise Unmappable("a zero-amplitude phase is only possible between two phases")
    if len(phases) == 2:
        shape = "BiphasicWithInterphaseDelay" if gap else "Biphasic"
    elif len(phases) == 3:
        shape = "Triphasic"
        if phases[2] != phases[0]:
            raise Unmappable("a triphasic RHS pulse repeats its first phase as its third")
    else:
        raise Unmappable(f"RHS plays biphasic and triphasic pulses, not {len(phases)}-phase "
                         "ones")
    (d1, a1), (d2, a2) = phases[0], phases[1]
    if (a1 > 0) == (a2 > 0):
        raise Unmappable("the phases of an RHS pulse alternate in sign")
    items = {"Shape": shape, "Polarity": "NegativeFirst" if a1 < 0 else "PositiveFirst",
             "FirstPhaseDurationMicroseconds": _us(d1, sample_rate),
             "FirstPhaseAmplitudeMicroAmps": _uA(a1, step_uA),
             "SecondPhaseDurationMicroseconds": _us(d2, sample_rate),
             "SecondPhaseAmplitudeMicroAmps": _uA(a2, step_uA)}
    if gap:
        items["InterphaseDelayMicroseconds"] = _us(gap, sample_rate)
    if train_count > 1:
        items["PulseOrTrain"] = "PulseTrain"
        items["NumberOfStimPulses"] = str(int(train_count))
        items["PulseTrainPeriodMicroseconds"] = _us(1e6 / train_rate_hz, sample_rate)
    else:
        items["PulseOrTrain"] = "SinglePulse"
    return items


def _us(duration: float, rate: float) -> str:
    """A duration as RHS runs it: a whole number of samples, else Unmappable."""
    samples = duration * rate / 1e6
    if abs(samples - round(samples)) > 1e-6 * max(1.0, samples) or round(samples) < 1:
        raise Unmappable(f"{duration:g} us is not a whole number of samples at {rate / 1000:g}"
                         f" kHz ({1e6 / rate:.4g} us each)")
    return _text(duration)


def _uA(amplitude: float, step: float) -> str:
    """A phase amplitude as a whole number of the controller's steps (at most 255)."""
    steps = abs(amplitude) / step
    if abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
        raise Unmappable(f"{abs(amplitude):g} uA is not a whole number of the controller's "
                         f"{step:g} uA steps (RHX's stimulation step size)")
    if round(steps) > 255:
        raise Unmappable(f"{abs(amplitude):g} uA is beyond the controller's range of 255 steps "
                         f"of {step:g} uA")
    return _text(abs(amplitude))


def _text(value: float) -> str:
    """A number as the shortest text that reads back as it (200, 33.5)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# -- the rig file ---------------------------------------------------------------------------------
def channel_map(table: Mapping[str, Any] | None, layout: Layout, where: str) -> dict[str, int]:
    """``[channels]``: native name -> layout channel index, checked."""
    if not table:
        raise DriverError(
            f"rhx:// needs the rig file's [channels] table, which says which electrode each RHX "
            f"channel records from, e.g. \"A-010\" = \"{layout.labels[0]}\"{where}; pass "
            "--rig FILE (see docs/intan-rhx.md)")
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for native, label in table.items():
        if not _NATIVE.match(native):
            raise DriverError(f"rig file [channels]: {native!r} is not an RHX channel name; "
                              "write them as RHX does, e.g. \"A-010\"")
        try:
            channel = layout.channel(str(label))
        except ValueError:
            raise DriverError(f"rig file [channels]: {native} = {label!r}: layout {layout.name} "
                              f"has no electrode {label!r}") from None
        if channel in seen:
            raise DriverError(f"rig file [channels]: {seen[channel]} and {native} both say "
                              f"electrode {label}")
        seen[channel] = native.upper()
        out[native.upper()] = channel
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], int(kv[0][2:]))))


@dataclass
class Preset:
    """A ``[stimulator]`` entry: a pattern uploaded onto a key before the run."""

    key: str
    pattern: StimPattern


def presets(table: Mapping[str, Any] | None, layout: Layout) -> list[Preset]:
    """``[stimulator]``: F1-F8 = { electrodes = [...], amplitude_uA, phase_us, ... }."""
    out = []
    for key, spec in (table or {}).items():
        if key.upper() not in KEYS or not isinstance(spec, dict):
            raise DriverError(f"rig file [stimulator]: {key!r}: keys are F1 to F8, each a table "
                              "such as F1 = { electrodes = [\"34\"], amplitude_uA = 10, "
                              "phase_us = 200 }")
        try:
            pulse = StimPulse.biphasic(float(spec["amplitude_uA"]), float(spec["phase_us"]),
                                       interphase_us=float(spec.get("interphase_us", 0.0)),
                                       negative_first=not spec.get("positive_first", False))
            channels = [layout.channel(str(label)) for label in spec["electrodes"]]
            pattern = StimPattern(tuple((ch, pulse) for ch in channels),
                                  int(spec.get("pulses", 1)), float(spec.get("rate_hz", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DriverError(f"rig file [stimulator] {key}: {exc}; give electrodes, "
                              "amplitude_uA and phase_us (optional: interphase_us, "
                              "positive_first, pulses, rate_hz)") from None
        out.append(Preset(key.upper(), pattern))
    return out


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class _Fired:
    """A pattern triggered and not yet seen in the STIM band."""

    ticket: int
    natives: frozenset[str]
    after: int  # the stream's end when it was sent: its pulse comes at or after this sample
    span: int  # samples from its first pulse's start to its last pulse's end


@dataclass
class _Held:
    ticket: int
    pattern: StimPattern


@dataclass
class _Stats:
    fast: int = 0
    uploads: int = 0
    upload_channels: int = 0
    upload_commands: int = 0
    upload_s: list[float] = field(default_factory=list)


class RHXDriver(Driver):
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
        """RHX command servers listening on this computer, found without connecting.

        Connecting would use up the server: RHX takes one client per Connect click. So this
        looks for a listening TCP port 5000 in the kernel's socket table (Linux only).
        """
        found = []
        try:
            for port in _listening_ports():
                if port == 5000:
                    found.append(("rhx://127.0.0.1:5000?waveform=5001&spikes=5002",
                                  "a server listens on port 5000, RHX's command port (not "
                                  "probed: RHX takes one client per Connect; run with --rig)"))
        except OSError:
            return []
        return found

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
        #: The held patterns, the abort count and every trigger's send: abort_stimulation()
        #: (any thread) and the acquisition thread's firing take it in turn.
        self._stim_lock = threading.Lock()
        self._held: list[_Held] = []  # by at_sample
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
            self._held = []
        self._quiet_until: dict[str, int] = {}
        self._spikes: list[tuple[int, int]] = []
        self._pending_tick: int | None = None
        self._first_block = threading.Event()
        self._model: dict[str, dict[str, str | None]] = {}
        self._key_used: dict[str, float] = dict.fromkeys(KEYS, 0.0)
        self._noted_upload = False

    def _connect(self, port: int, what: str) -> socket.socket:
        timeout = self.options["timeout"]
        try:
            sock = socket.create_connection((self.host, port), timeout=timeout)
        except TimeoutError:
            raise DriverError(f"no answer from {self.host}:{port} ({what} port) within "
                              f"{timeout:g} s: check the address and that the network reaches "
                              "the RHX computer") from None
        except OSError as exc:
            raise DriverError(self._refused(port, what, exc)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock

    def _refused(self, port: int, what: str, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        if what == "command":
            return (f"cannot reach RHX's command server at {self.host}:{port} ({reason}): "
                    "check the address and port, that RHX runs, and that its TCP "
                    "server is started (Network > Remote TCP Control: Connect; RHX takes one "
                    "client and must be told to Connect again after each disconnect)")
        return (f"RHX's {what} output at {self.host}:{port} does not accept a connection "
                f"({reason}): check that the {what} port in RHX's Remote TCP "
                f"Control dialog matches ?{'waveform' if what == 'waveform' else 'spikes'}="
                f"{port} and the host there is {self.host}")

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

    def _connect_data(self, port: int, what: str) -> socket.socket:
        """RHX listens on a data port shortly after ``execute Connect...``: try until timeout."""
        deadline = time.monotonic() + self.options["timeout"]
        while True:
            try:
                return self._connect(port, what)
            except DriverError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

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

    def _receive_waveform(self) -> None:
        sock = self._data["waveform"]
        buf = bytearray()
        while not self._closing.is_set():
            data = self._recv(sock, "waveform")
            if data is None:
                return
            buf += data
            while True:
                if len(buf) < 4:
                    break
                if buf[:4] != _MAGIC_W:
                    self._skip(buf, _MAGIC_W, "waveform")
                    continue
                if len(buf) < self._block_bytes:
                    break
                frames = np.frombuffer(bytes(buf[4:self._block_bytes]), self._frame)
                if np.any(np.diff(frames["t"]) != 1):  # uint32: wraps as RHX's clock does
                    self._skip(buf, _MAGIC_W, "waveform", 4)  # not a block after all
                    continue
                del buf[:self._block_bytes]
                self._on_block(frames)

    def _skip(self, buf: bytearray, magic: bytes, stream: str, start: int = 1) -> None:
        """Drop bytes up to the next magic number; count them."""
        at = buf.find(magic, start)
        n = len(buf) - 3 if at < 0 else at  # keep a possible magic's beginning
        n = max(n, start if at >= 0 else 0)
        del buf[:n]
        with self._lock:
            self._garbage[stream] += n
            self._event("link_error", f"{self.where}: skipped {n} bytes on the {stream} stream "
                        f"that are not RHX data ({self._garbage[stream]} so far)")

    def _unwrap(self, t0: int) -> int:
        """RHX's 32-bit timestamp as a sample index that keeps growing."""
        sample = t0 + self._wrap
        if self._last_sample is not None and sample < self._last_sample - (1 << 31):
            self._wrap += 1 << 32
            sample += 1 << 32
        return sample

    def _on_block(self, frames: np.ndarray) -> None:
        start = self._unwrap(int(frames["t"][0]))
        stop = start + FRAMES_PER_BLOCK
        words = frames["w"]
        items: list[Any] = []
        with self._lock:
            items += self._stim_reports(words, start)
            self._last_sample = stop
            self._seq += 1
        if not self.spike_mode:
            data = np.zeros((FRAMES_PER_BLOCK, self.layout.n_electrodes), np.int16)
            raw = words[:, self._wide_words].astype(np.int32) - 32768
            data[:, self._wide_channels] = raw.astype(np.int16)
            items.append(Block(start, data, UV_PER_BIT, self._seq - 1))
        else:
            with self._lock:
                spikes, self._spikes = self._spikes, []
            if spikes:
                spikes.sort()
                s = np.array(spikes, np.int64)
                items.append(SpikeEvents(s[:, 0], s[:, 1],
                                         np.full(len(s), np.nan, np.float32)))
            if self._pending_tick is not None:  # the previous block's spikes are in by now
                items.append(Tick(self._pending_tick))
            self._pending_tick = stop
        for item in items:
            self._inbox.put(item)
        self._first_block.set()

    def _receive_spikes(self) -> None:
        sock = self._data["spike"]
        buf = bytearray()
        while not self._closing.is_set():
            data = self._recv(sock, "spike")
            if data is None:
                return
            buf += data
            while len(buf) >= SPIKE_RECORD.size:
                if buf[:4] != _MAGIC_S:
                    self._skip(buf, _MAGIC_S, "spike")
                    continue
                _, name, stamp, _ = SPIKE_RECORD.unpack_from(buf)
                del buf[:SPIKE_RECORD.size]
                channel = self.natives.get(name.decode("latin-1").upper())
                if channel is None:
                    continue  # a channel we do not map
                with self._lock:
                    sample = stamp + self._wrap
                    self._spikes.append((sample, channel))

    def _recv(self, sock: socket.socket, what: str) -> bytes | None:
        try:
            data = sock.recv(1 << 18)
        except OSError as exc:
            data, reason = b"", str(exc)
        else:
            reason = "RHX closed the connection"
        if data:
            return data
        if not self._closing.is_set():
            port = {"command": self.port, "waveform": self.options["waveform"],
                    "spike": self.options["spikes"]}[what]
            self._lose(f"lost the connection to RHX's {what} port at {self.host}:{port} "
                       f"({reason}): RHX stopped, quit or was told to disconnect; check RHX, "
                       "then start its TCP server (Connect) again before the next run")
        return None

    def _lose(self, message: str) -> None:
        if self._inbox.lose(message):
            self._first_block.set()
            with self._text_ready:
                self._text_ready.notify_all()

    # -- the command port -----------------------------------------------------------------------
    def _receive_commands(self) -> None:
        while not self._closing.is_set():
            data = self._recv(self._command, "command")
            if data is None:
                return
            with self._text_ready:
                self._text += data.decode("latin-1")
                if not self._asking and self._state == "running" and self._text:
                    text, self._text = self._text, ""  # an answer nobody waits for: an error
                    with self._lock:
                        self._event("device_error", f"{self.where} reports: {text}")
                self._text_ready.notify_all()

    def _send(self, text: str) -> None:
        try:
            self._command.sendall(text.encode("latin-1"))
        except OSError as exc:
            self._lose(f"lost the connection to {self.where} ({exc}): check that RHX still "
                       "runs and start its TCP server (Connect) again")
            raise DriverError(self._inbox.lost) from None

    def _take_text(self) -> str:
        with self._text_ready:
            text, self._text = self._text, ""
        return text

    def _ask(self, commands: list[str], timeout: float | None = None) -> tuple[_Answers, str]:
        """Send ``commands`` and the barrier; (the gets' answers, the errors before it)."""
        timeout = self.options["timeout"] if timeout is None else timeout
        with self._ask_lock:
            with self._text_ready:
                self._asking = True
            try:
                self._send(";".join([*commands, BARRIER]) + ";")
                deadline = time.monotonic() + timeout
                with self._text_ready:
                    while (match := _BARRIER_ANSWER.search(self._text)) is None:
                        left = deadline - time.monotonic()
                        if self._inbox.lost:
                            raise DriverError(self._inbox.lost)
                        if left <= 0:
                            raise DriverError(
                                f"{self.where} did not answer within {timeout:g} s (sent "
                                f"{len(commands) + 1} commands); is this RHX's command port, "
                                "and is RHX's window responsive?")
                        self._text_ready.wait(left)
                    text, self._text = self._text[:match.start()], self._text[match.end():]
                    self._run_mode = match.group(1)
            finally:
                with self._text_ready:
                    self._asking = False
        return _Answers.parse(text)

    def _check(self, commands: list[str], what: str) -> None:
        errors = self._ask(commands)[1]
        if errors:
            raise DriverError(f"{self.where} refused to {what}: {errors}")

    # -- stimulation ----------------------------------------------------------------------------
    def stimulate(self, pattern: StimPattern) -> int:
        if self._state != "running":
            raise DriverError(f"{self.where} cannot stimulate: the device is {self._state}")
        with self._stim_lock:
            self._ticket += 1
            ticket, aborts = self._ticket, self._aborts
            if pattern.at_sample is not None and pattern.at_sample > (self._last_sample or 0):
                # RHX cannot schedule: held here, fired from read() when due
                bisect.insort(self._held, _Held(ticket, pattern),
                              key=lambda h: h.pattern.at_sample)
                return ticket
        self._fire(ticket, pattern, aborts)
        return ticket

    def _fire_due(self) -> None:
        while True:
            now = self._last_sample or 0
            with self._stim_lock:
                if not self._held or self._held[0].pattern.at_sample > now:
                    return
                held, aborts = self._held.pop(0), self._aborts
            self._fire(held.ticket, held.pattern, aborts)

    def _fire(self, ticket: int, pattern: StimPattern, aborts: int) -> None:
        """Trigger the key that holds ``pattern``, programming one first if none does;
        not if an abort came since ``aborts`` was counted (the pattern was taken)."""
        try:
            wanted = self._wanted(pattern)
        except Unmappable as exc:
            self._refuse(ticket, f"RHS cannot play this pattern: {exc}")
            return
        key = next((k for k in KEYS if self._slot(k) == wanted), None)
        if key is None:
            key = min(KEYS, key=lambda k: (bool(self._slot(k)), self._key_used[k]))
            problem = self._program(key, pattern, while_running=True, wanted=wanted)
            if problem:
                self._refuse(ticket, problem)
                return
        else:
            self.stats.fast += 1
        self._key_used[key] = time.monotonic()
        offsets = pattern.pulse_offsets(self.rate)
        pulse_samples = max(int(round(p.duration_us * self.rate / 1e6)) for _, p in
                            pattern.pulses)
        with self._stim_lock:
            if aborts != self._aborts:
                self._inbox.put(StimReport(ticket, pattern.at_sample or self._last_sample or 0,
                                           False, "aborted"))
                return
            with self._lock:
                self._fired.append(_Fired(ticket, frozenset(wanted), self._last_sample or 0,
                                          offsets[-1] + pulse_samples))
            self._send(f"execute ManualStimTriggerPulse {key};")  # ';': writes may merge

    def _wanted(self, pattern: StimPattern) -> dict[str, dict[str, str]]:
        """Native channel -> the items it needs for ``pattern`` (Unmappable if it cannot)."""
        by_channel = {ch: n for n, ch in self.natives.items()}
        out = {}
        for channel, pulse in pattern.pulses:
            native = by_channel.get(channel)
            if native is None or native not in self.stim_natives:
                raise Unmappable(f"electrode {self.layout.labels[channel]} has no stimulating "
                                 "RHX channel in the rig file's [channels] table")
            out[native] = rhs_settings(pulse, pattern.train_count, pattern.train_rate_hz,
                                       self.step_uA, self.rate)
        return out

    def _slot(self, key: str) -> dict[str, dict[str, str]]:
        """What firing ``key`` plays now: channel -> its pulse items."""
        out = {}
        for native, model in self._model.items():
            if model.get("StimEnabled") == "true" and model.get("Source") == f"KeyPressF{key[1:]}":
                out[native] = {k: v for k, v in model.items()
                               if k not in ("StimEnabled", "Source", "PostTriggerDelayMicroseconds",
                                            "RefractoryPeriodMicroseconds")
                               and v is not None and _applies(k, model)}
        return out

    def _program(self, key: str, pattern: StimPattern, while_running: bool,
                 wanted: dict[str, dict[str, str]] | None = None) -> str:
        """Set and upload what ``key`` must play for ``pattern``; '' or why not."""
        try:
            wanted = wanted if wanted is not None else self._wanted(pattern)
        except Unmappable as exc:
            return f"RHS cannot play this pattern: {exc}"
        source = f"KeyPressF{key[1:]}"
        commands: list[str] = []
        changed: list[str] = []
        for native in self.stim_natives:
            model = self._model.setdefault(native, {})
            target: dict[str, str]
            if native in wanted:
                target = {"Source": source, **wanted[native],
                          "PostTriggerDelayMicroseconds": "0",
                          "RefractoryPeriodMicroseconds": _text(self.options["refractory_us"]),
                          "StimEnabled": "true"}
            elif model.get("Source") == source and model.get("StimEnabled") == "true":
                target = {"StimEnabled": "false"}
            else:
                continue
            diff = [(k, v) for k, v in target.items() if model.get(k) != v]
            if diff:
                commands += [f"set {native.lower()}.{k} {v}" for k, v in diff]
                commands.append(f"execute UploadStimParameters {native.lower()}")
                changed.append(native)
        if not commands:
            return ""
        tick = time.perf_counter()
        try:
            errors = self._ask(commands)[1]
        finally:
            elapsed = time.perf_counter() - tick
        if errors:
            for native in changed:  # what RHX holds for them is unknown now
                self._model[native] = {k: None for k in self._model[native]}
            return f"RHX refused the stimulation parameters: {errors}"
        for command in commands:
            if command.startswith("set "):
                target_item, value = command[4:].split(" ", 1)
                native, item = target_item.split(".", 1)
                self._model[native.upper()][item] = value
        self.stats.uploads += 1
        self.stats.upload_channels += len(changed)
        self.stats.upload_commands += len(commands) + 1
        self.stats.upload_s.append(elapsed)
        if while_running and not self._noted_upload:
            self._noted_upload = True
            with self._lock:
                self._event("stim_upload", (
                    f"a pattern no key held needed {len(commands)} commands and "
                    f"{len(changed)} channel upload(s) onto {key} ({elapsed * 1000:.1f} ms); "
                    "patterns a key already holds fire with one command"))
        return ""

    def _refuse(self, ticket: int, reason: str) -> None:
        self._inbox.put(StimReport(ticket, self._last_sample or 0, False, reason))

    def _stim_reports(self, words: np.ndarray, start: int) -> list[StimReport]:
        """Reports for fired patterns whose pulse shows in this block (lock held)."""
        onsets: dict[str, int] = {}
        if self._stim_columns.size:
            on = (words[:, self._stim_columns] & 1).astype(bool)
            before = np.vstack([self._stim_prev[None, :], on[:-1]])
            self._stim_prev = on[-1].copy()
            for row, col in zip(*np.nonzero(on & ~before), strict=True):
                native, sample = self._stim_natives_order[col], start + int(row)
                if native not in onsets and sample >= self._quiet_until.get(native, -1):
                    onsets[native] = sample
        reports = []
        for fired in list(self._fired):
            seen = [onsets[n] for n in fired.natives if n in onsets and onsets[n] >= fired.after]
            if seen:
                sample = min(seen)
                reports.append(StimReport(fired.ticket, sample))
                for native in fired.natives:
                    onsets.pop(native, None)
                    self._quiet_until[native] = sample + fired.span + 1
                self._fired.remove(fired)
            elif start + FRAMES_PER_BLOCK > fired.after + REPORT_TIMEOUT_S * self.rate:
                reports.append(StimReport(
                    fired.ticket, fired.after, False,
                    f"RHX showed no pulse on {', '.join(sorted(fired.natives))} within "
                    f"{REPORT_TIMEOUT_S * 1000:g} ms of the trigger (still in the refractory "
                    "period of an earlier pulse, or stimulation disabled in RHX)"))
                self._fired.remove(fired)
        for native, sample in onsets.items():
            self._event("stim_unexpected", f"RHX stimulated {native} at sample {sample} without "
                        "a request from mea-control (a trigger source set up in RHX?)")
        return reports

    def abort_stimulation(self) -> None:
        """Patterns held for a later sample, or taken to be fired and not yet triggered,
        will not run (reported "aborted"); then a round trip to RHX, so that on return
        RHX has read every trigger sent before the call. RHX cannot stop a triggered
        pattern: it runs whole, train included (docs/intan-rhx.md)."""
        with self._stim_lock:
            self._aborts += 1
            held, self._held = self._held, []
        for h in held:
            self._inbox.put(StimReport(h.ticket, h.pattern.at_sample, False, "aborted"))
        if self._state != "running" or self._inbox.lost:
            return
        try:
            self._ask([])
        except DriverError as exc:
            with self._lock:
                self._event("device_error", f"{self.where} did not confirm the abort: {exc}")


def _applies(item: str, model: dict[str, str | None]) -> bool:
    """Whether an item shapes the pulse under the channel's Shape and PulseOrTrain."""
    if item == "InterphaseDelayMicroseconds":
        return model.get("Shape") == "BiphasicWithInterphaseDelay"
    if item in ("NumberOfStimPulses", "PulseTrainPeriodMicroseconds"):
        return model.get("PulseOrTrain") == "PulseTrain"
    return True


class _Answers(dict):
    """``get`` answers by parameter name (the last one of a name); all of them in ``every``."""

    every: list[tuple[str, str]]

    @classmethod
    def parse(cls, text: str) -> tuple[_Answers, str]:
        """Split RHX's unterminated answers: ``Return: Name value`` and error strings."""
        out = cls()
        out.every = []
        errors = []
        parts = text.split("Return: ")
        if parts[0]:
            errors.append(parts[0])
        for part in parts[1:]:
            name, _, value = part.partition(" ")
            if value.endswith(_UNKNOWN):  # an error glued to the answer before it
                value = value[:-len(_UNKNOWN)]
                errors.append(_UNKNOWN)
            out[name] = value
            out.every.append((name, value))
        return out, "; ".join(errors)

    def get_all(self, name: str) -> list[str]:
        return [value for n, value in self.every if n == name]



# -- discovery ------------------------------------------------------------------------------------
def _listening_ports(tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6"),
                     opener: Callable[[str], Any] = open) -> set[int]:
    ports = set()
    for path in tables:
        if not os.path.exists(path):
            continue
        with opener(path) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
