"""``pulsepal://``: any acquisition driver paired with a Sanworks Pulse Pal for stimulation.

``pulsepal:///dev/ttyACM0?acquire=sim://&rig=rig.toml`` acquires with the driver of
``acquire`` (any of ours; percent-encode an ``&`` inside it, or put ``acquire`` in the
rig file) and stimulates through the Pulse Pal's output channels, each wired through
a current stimulus isolator to one electrode. The rig file's ``[stimulator]`` table
gives the isolator's gain (``uA_per_V``) and ``[stimulator.wiring]`` maps output
channels 1-4 to electrode labels; see docs/pulsepal.md.

The protocol followed is sanworks/PulsePal ``Firmware/PROTOCOL.md`` (firmware v22,
commit 000c7940f09d23bd035c949bac22629739083a59), for model 2 and later (firmware
v20+: 16-bit DAC codes over -10..+10 V, times in 50 us cycles). Only ops that firmware
v20-v22 all have are used: 72 handshake, 74 program one parameter (each acknowledged
with 1, or 0 for a refused value), 77 soft trigger, 80 stop all, 81 disconnect.

Acquisition (info, read, start/stop) is the inner driver's: its layout, rate and clock
are the run's, except that only wired electrodes can stimulate. A Pulse Pal cannot run
a pattern at a sample: it runs when triggered. A pattern is programmed when it is sent
(only parameters that changed; the acknowledgements are awaited), or just before its
trigger if its channels play a train or wait for an earlier-sent pattern then, and it is
triggered from ``read()``, on the thread that reads the acquisition, as soon as a block
(or Tick) reaches its ``at_sample``; its StimReport gives the clock at that moment, the
first sample the pulse can be in. A pattern whose channels still play a train at its
sample, or that the Pulse Pal cannot play, is reported as not run, with the reason.

``abort_stimulation`` (any thread; it takes the lock that triggering takes) drops the
patterns not yet triggered and stops every output (op 80), which cuts a train in play; the
Pulse Pal does not say how far it got, so the cut train's second report counts the pulses
whose onset came before the stop by the host's clock (the time between the trigger's and
the stop's writes).
"""

from __future__ import annotations

import logging
import math
import select
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import serial

from mea_control.driver import Driver, DriverError, Event, Param, open_driver
from mea_control.rig import Rig, RigFileError, rig_option
from mea_control.types import (
    Block,
    Capabilities,
    DeviceInfo,
    StimPattern,
    StimPulse,
    StimReport,
    Tick,
)

log = logging.getLogger(__name__)

OP_MENU = 213
OP_HANDSHAKE, OP_PROGRAM, OP_TRIGGER, OP_STOP_ALL, OP_DISCONNECT = 72, 74, 77, 80, 81
HANDSHAKE_REPLY = 75
#: Firmware v20 and later run on Pulse Pal 2 and 3 (16-bit DAC); older is Pulse Pal 1.
MIN_FIRMWARE = 20
N_OUTPUTS = 4
CYCLE_US = 50.0
#: Phases, inter-pulse intervals and trains last at least 2 cycles (as in Sanworks' clients).
MIN_CYCLES = 2
MAX_VOLTS = 10.0
DAC_MAX = 65535
#: Parameter codes (op 74).
BIPHASIC, PHASE1_V, PHASE2_V, PHASE1_CYCLES, INTERPHASE, PHASE2_CYCLES = 1, 2, 3, 4, 5, 6
INTERVAL, BURST, TRAIN, DELAY, LINK1, LINK2, CUSTOM_TRAIN, RESTING_V = 7, 8, 10, 11, 12, 13, 14, 17
_FORMAT = {PHASE1_V: "<H", PHASE2_V: "<H", RESTING_V: "<H"} | {
    code: "<I" for code in range(4, 12)}
#: What each wired channel is given once, at open: no bursts, no delay, no custom train,
#: rest at 0 V, and no trigger input linked, so that only the gate's patterns can fire it.
STATIC_PROGRAM = {BURST: 0, DELAY: 0, LINK1: 0, LINK2: 0, CUSTOM_TRAIN: 0, RESTING_V: 32768}
ACK_TIMEOUT_S = 0.5
#: A train is taken to end this much later than its length says (USB latency, clock skew).
BUSY_MARGIN_S = 0.005


class Unplayable(ValueError):
    """A pattern the Pulse Pal (with this wiring and isolator) cannot play; says why."""


# -- units ---------------------------------------------------------------------------------
def volts_to_code(volts: float) -> int:
    """-10..+10 V -> the 16-bit DAC code (nearest, halves to even, as Sanworks' clients)."""
    return int(round((volts + MAX_VOLTS) / (2 * MAX_VOLTS) * DAC_MAX))


def us_to_cycles(us: float, what: str, minimum: int = 0) -> int:
    """Microseconds -> whole 50 us cycles; Unplayable if not whole or below ``minimum``."""
    cycles = us / CYCLE_US
    whole = round(cycles)
    if abs(cycles - whole) > 1e-6:
        raise Unplayable(f"{what} of {us:g} us is not a whole number of the Pulse Pal's "
                         f"{CYCLE_US:g} us cycles")
    if whole < minimum:
        raise Unplayable(f"{what} of {us:g} us is shorter than the Pulse Pal's minimum "
                         f"{minimum * CYCLE_US:g} us")
    return int(whole)


def pulse_program(pulse: StimPulse, uA_per_V: float, train_count: int = 1,
                  train_rate_hz: float = 0.0) -> dict[int, int]:
    """The op-74 parameters (code -> value in device units) that play ``pulse`` as a train.

    One phase is a monophasic pulse; two phases, or two with a zero-amplitude gap
    between them, a biphasic one. Amplitudes (uA) become volts through the isolator's
    gain. A train's period is rounded to the nearest cycle. Raises Unplayable.
    """
    if pulse.mode != "current":
        raise Unplayable("the Pulse Pal drives a current isolator: voltage-mode pulses "
                         "are not supported")
    phases = pulse.phases
    if len(phases) == 3 and phases[1][1] == 0.0:
        (d1, a1), (gap, _), (d2, a2) = phases
    elif len(phases) == 2:
        (d1, a1), (d2, a2), gap = phases[0], phases[1], 0.0
    elif len(phases) == 1:
        (d1, a1), d2, a2, gap = phases[0], 0.0, 0.0, 0.0
    else:
        raise Unplayable(f"a pulse of {len(phases)} phases: the Pulse Pal plays one or two "
                         "phases, with an optional gap between them")
    if a1 == 0.0 or (len(phases) > 1 and a2 == 0.0):
        raise Unplayable("a pulse phase of 0 uA other than the gap between two phases")
    program = {BIPHASIC: int(len(phases) > 1),
               PHASE1_V: volts_to_code(_volts(a1, uA_per_V)),
               PHASE1_CYCLES: us_to_cycles(d1, "a phase", MIN_CYCLES)}
    length = program[PHASE1_CYCLES]
    if program[BIPHASIC]:
        program[PHASE2_V] = volts_to_code(_volts(a2, uA_per_V))
        program[INTERPHASE] = us_to_cycles(gap, "an interphase gap")
        program[PHASE2_CYCLES] = us_to_cycles(d2, "a phase", MIN_CYCLES)
        length += program[INTERPHASE] + program[PHASE2_CYCLES]
    if train_count == 1:
        program[INTERVAL], program[TRAIN] = MIN_CYCLES, length
        return program
    period = int(round(1e6 / train_rate_hz / CYCLE_US))
    if period - length < MIN_CYCLES:
        raise Unplayable(f"a train at {train_rate_hz:g} Hz leaves {(period - length) * CYCLE_US:g}"
                         f" us between pulses; the Pulse Pal needs {MIN_CYCLES * CYCLE_US:g} us")
    program[INTERVAL] = period - length
    program[TRAIN] = (train_count - 1) * period + length
    return program


def _volts(uA: float, uA_per_V: float) -> float:
    volts = uA / uA_per_V
    if abs(volts) > MAX_VOLTS + 1e-9:
        raise Unplayable(f"{abs(uA):g} uA needs {abs(volts):g} V at the isolator's "
                         f"{uA_per_V:g} uA/V; the Pulse Pal's outputs reach {MAX_VOLTS:g} V")
    return volts


def command(code: int, channel: int, value: int) -> bytes:
    """The bytes of op 74: program parameter ``code`` of output ``channel``."""
    return bytes([OP_MENU, OP_PROGRAM, code, channel]) + struct.pack(_FORMAT.get(code, "<B"),
                                                                     value)


# -- the rig's [stimulator] table -----------------------------------------------------------
@dataclass(frozen=True)
class Stimulator:
    """The rig's Pulse Pal: output channel -> electrode label, the isolator's gain."""

    wiring: dict[int, str]
    uA_per_V: float
    acquire: str = ""


_STIMULATOR_KEYS = ("uA_per_V", "wiring", "acquire")


def stimulator_of(rig: Rig) -> Stimulator:
    """The rig's ``[stimulator]``, checked; DriverError naming the key to fix."""
    where = rig.where
    table = rig.stimulator
    if table is None:
        raise DriverError(f"{where} has no [stimulator] table: pulsepal:// needs the isolator's "
                          "uA_per_V and [stimulator.wiring] (see docs/pulsepal.md)")
    unknown = sorted(set(table) - set(_STIMULATOR_KEYS))
    if unknown:
        raise DriverError(f"{where}: unknown key(s) {', '.join(unknown)} in [stimulator]; "
                          f"accepted: {', '.join(_STIMULATOR_KEYS)}")
    gain = table.get("uA_per_V")
    if isinstance(gain, bool) or not isinstance(gain, int | float) or not (
            math.isfinite(gain) and gain > 0):
        raise DriverError(f"{where}: [stimulator] uA_per_V must be the isolator's gain in uA "
                          f"per volt, a number > 0 (e.g. uA_per_V = 10), not {gain!r}")
    wiring_table = table.get("wiring")
    if not isinstance(wiring_table, dict) or not wiring_table:
        raise DriverError(f'{where}: add [stimulator.wiring] with one line per wired output, '
                          f'channel = "electrode label", e.g. 1 = "23"')
    wiring: dict[int, str] = {}
    for key, label in wiring_table.items():
        if not key.isdigit() or not 1 <= int(key) <= N_OUTPUTS:
            raise DriverError(f"{where}: [stimulator.wiring] {key}: the Pulse Pal's output "
                              f"channels are 1 to {N_OUTPUTS}")
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DriverError(f'{where}: [stimulator.wiring] {key} must be an electrode label '
                              f'in quotes, e.g. {key} = "23"')
        wiring[int(key)] = str(label)
    labels = list(wiring.values())
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise DriverError(f"{where}: [stimulator.wiring] wires electrode(s) {', '.join(twice)} "
                          "to more than one output channel")
    acquire = table.get("acquire", "")
    if not isinstance(acquire, str):
        raise DriverError(f'{where}: [stimulator] acquire must be a device URL in quotes, '
                          f'e.g. acquire = "sim://?seed=1"')
    return Stimulator(dict(sorted(wiring.items())), float(gain), acquire)


# -- the driver ------------------------------------------------------------------------------
@dataclass
class _Pattern:
    ticket: int
    at: int
    programs: dict[int, dict[int, int]]  # output channel -> parameters
    train_samples: int
    pulses: int = 1  # of the train
    period_s: float = 0.0  # from one pulse's onset to the next


@dataclass
class _Playing:
    """A triggered train: its pattern, the clock (sample) and the host's time at the trigger."""

    job: _Pattern
    sample: int
    time: float


class PulsePalDriver(Driver):
    """Acquisition from an inner driver, stimulation through a Pulse Pal's outputs."""

    scheme: ClassVar[str] = "pulsepal"
    params: ClassVar[dict[str, Param]] = {
        "acquire": Param(str, "", "the acquisition device's URL (default: the rig file's "
                                  "[stimulator] acquire)"),
        "rig": Param(str, "", "rig file with [stimulator]: wiring and the isolator's uA_per_V"),
        "timeout": Param(float, 2.0, "seconds to wait for the Pulse Pal's handshake"),
    }

    none_found: ClassVar[str] = "no serial port answers the Pulse Pal handshake"

    @classmethod
    def discover(cls, timeout: float = 0.5) -> list[tuple[str, str]]:
        """(URL, description) of each Pulse Pal answering the handshake on a serial port."""
        try:
            from serial.tools import list_ports

            names = sorted(p.device for p in list_ports.comports())
        except Exception:
            return []
        found: dict[str, str] = {}

        def ask(name: str) -> None:
            answer = probe(name, timeout * 0.8)
            if answer:
                found[name] = answer

        threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [(f"pulsepal://{name}", found[name]) for name in names if name in found]

    def __init__(self, url: str, options: dict[str, Any], location: str = "") -> None:
        super().__init__(url, options, location)
        if not location:
            raise DriverError("pulsepal:// needs the Pulse Pal's serial port, e.g. "
                              "pulsepal:///dev/ttyACM0?acquire=sim:// (`mea-control devices` "
                              "lists Pulse Pals)")
        if not options["rig"]:
            raise DriverError("pulsepal:// needs a rig file with a [stimulator] table (wiring and "
                              "the isolator's uA_per_V): pass --rig FILE.toml or ?rig=FILE.toml "
                              "(see docs/pulsepal.md)")
        if not 0 < options["timeout"] <= 30:
            raise DriverError("pulsepal:// timeout must be above 0 and at most 30 seconds")
        try:
            self.rig = rig_option(options["rig"])
        except RigFileError as exc:
            raise DriverError(str(exc)) from None
        self.stimulator = stimulator_of(self.rig)
        acquire = options["acquire"] or self.stimulator.acquire
        if not acquire:
            raise DriverError("pulsepal:// needs the acquisition device: add ?acquire=URL "
                              "(e.g. acquire=sim://) or acquire = \"URL\" under [stimulator]")
        if acquire.split("://", 1)[0] == self.scheme:
            raise DriverError("pulsepal:// acquire= must name an acquisition device, not "
                              "another pulsepal://")
        self.inner = open_driver(acquire, rig=self.rig)  # the rig as read, not read again
        self.port_name = location
        self._info: DeviceInfo | None = None
        self._port: Any = None
        self._state = "closed"
        self._lock = threading.RLock()
        self.firmware = 0

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        if self._state != "closed":
            return
        self._reset()
        self._port = _open_port(self.port_name)
        try:
            self.firmware = handshake(self._port, self.port_name, self.options["timeout"])
            self._state = "open"
            self.inner.open()
            try:
                self._info = self._device_info(self.inner.info)
                self._write(bytes([OP_MENU, OP_STOP_ALL]))
                self._program({ch: dict(STATIC_PROGRAM) for ch in self.stimulator.wiring})
            except BaseException:
                self.inner.close()
                raise
        except BaseException:
            self._close_port(disconnect=self._state == "open")
            self._state = "closed"
            raise

    def _reset(self) -> None:
        self._known: dict[int, dict[int, int]] = {}  # what the device acknowledged
        self._busy_until: dict[int, int] = {}  # output channel -> sample its train is over
        self._waiting: list[_Pattern] = []  # sent, not yet triggered, by at_sample
        self._playing: list[_Playing] = []  # triggered trains, until an abort or their end
        self._reports: deque[StimReport] = deque()
        self._events: deque[tuple[str, str]] = deque()
        self._clock: int | None = None
        self._lost: str | None = None
        self._ticket = 0

    def _device_info(self, inner: DeviceInfo) -> DeviceInfo:
        layout = inner.layout
        by_label = {label: ch for ch, label in enumerate(layout.labels)}
        self.channel_of: dict[int, int] = {}  # electrode channel index -> Pulse Pal output
        for output, label in self.stimulator.wiring.items():
            where = f"{self.rig.where}: [stimulator.wiring] {output} = {label!r}"
            if label not in by_label:
                raise DriverError(f"{where}: layout {layout.name} has no electrode {label!r} "
                                  f"(its labels run {layout.labels[0]}..{layout.labels[-1]})")
            ch = by_label[label]
            if ch in layout.ground or ch in layout.reference or not layout.can_stimulate[ch]:
                raise DriverError(f"{where}: layout {layout.name} does not let electrode {label}"
                                  " stimulate (ground, reference or recording-only)")
            self.channel_of[ch] = output
        wired = np.zeros(layout.n_electrodes, bool)
        wired[list(self.channel_of)] = True
        text = ", ".join(f"{out}->{label}" for out, label in self.stimulator.wiring.items())
        layout = replace(layout, can_stimulate=wired, annotations={
            **layout.annotations,
            "stimulator": f"Pulse Pal outputs {text} via a {self.stimulator.uA_per_V:g} uA/V "
                          "isolator"})
        caps = inner.capabilities
        return DeviceInfo(
            name=f"{inner.name} + Sanworks Pulse Pal (firmware v{self.firmware})",
            n_channels=inner.n_channels,
            sample_rate=inner.sample_rate,
            uV_per_bit=inner.uV_per_bit,
            layout=layout,
            capabilities=Capabilities(raw_stream=caps.raw_stream,
                                      onboard_detection=caps.onboard_detection,
                                      stim_modes=("current",), scheduled_stim=True),
            limits={"max_current_uA": MAX_VOLTS * self.stimulator.uA_per_V,
                    "min_phase_us": MIN_CYCLES * CYCLE_US},
            simulated=inner.simulated,
        )

    def close(self) -> None:
        if self._state == "closed":
            return
        try:
            if self._state == "running":
                self.stop()
        finally:
            with self._lock:
                self._close_port(disconnect=self._lost is None)
                self._state = "closed"
            self.inner.close()

    def _close_port(self, disconnect: bool) -> None:
        try:
            if disconnect:
                self._port.write(bytes([OP_MENU, OP_DISCONNECT]))  # the outputs stop
            self._port.close()
        except (serial.SerialException, OSError):
            pass

    def start(self, block_samples: int | None = None) -> None:
        if self._state != "open":
            raise DriverError(f"pulsepal://{self.port_name}: start() needs an open, idle device")
        self.inner.start(block_samples)
        self._state = "running"

    def stop(self) -> None:
        if self._state != "running":
            return
        self._state = "stopped"
        try:
            self.inner.stop()
        finally:
            with self._lock:
                self._waiting.clear()
                if self._lost is None:
                    try:
                        self._write(bytes([OP_MENU, OP_STOP_ALL]))
                    except DriverError:
                        pass  # the link went: its outputs stop by themselves on disconnect

    def set_fast(self, fast: bool) -> None:
        if fast:
            raise DriverError("--fast cannot run with a Pulse Pal: it stimulates in real time; "
                              "drop --fast")
        self.inner.set_fast(False)

    # -- acquisition -----------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Event | None:
        if self._state == "stopped":
            return None
        if self._state != "running":
            raise DriverError(f"pulsepal://{self.port_name}: read() before start()")
        with self._lock:
            self._check_link()
            if self._reports:
                return self._reports.popleft()
        item = self.inner.read(timeout)
        clock = (item.stop_sample if isinstance(item, Block)
                 else item.sample if isinstance(item, Tick) else None)
        if clock is not None:
            with self._lock:
                self._clock = clock
                while self._waiting and self._waiting[0].at <= clock:
                    self._fire(self._waiting.pop(0))
        return item

    def drain_events(self) -> list[tuple[str, str]]:
        out = list(self.inner.drain_events())
        while self._events:
            out.append(self._events.popleft())
        return out

    # -- stimulation -----------------------------------------------------------------------
    def earliest_stim_sample(self) -> int | None:
        """The acquisition clock: a pattern sent now is triggered at once."""
        return self._clock

    def stimulate(self, pattern: StimPattern) -> int:
        with self._lock:
            if self._lost:
                raise DriverError(self._lost)
            if self._state != "running":
                raise DriverError(f"pulsepal://{self.port_name} cannot stimulate: the device is "
                                  f"{self._state}")
            self._ticket += 1
            ticket = self._ticket
            clock = self._clock if self._clock is not None else 0
            at = clock if pattern.at_sample is None else int(pattern.at_sample)
            try:
                job = self._job(ticket, at, pattern)
                if at < clock:
                    raise Unplayable(f"late: asked for sample {at}, the acquisition clock is at "
                                     f"sample {clock}")
                self._check_idle(job)
                if self._free(job, clock):
                    self._program(job.programs)  # now, so that the trigger is all that waits
            except Unplayable as exc:
                self._reports.append(StimReport(ticket, at, False, str(exc)))
                return ticket
            if at <= clock:
                self._fire(job)
            else:
                self._waiting.append(job)
                self._waiting.sort(key=lambda j: j.at)
            return ticket

    def _job(self, ticket: int, at: int, pattern: StimPattern) -> _Pattern:
        """What the Pulse Pal must be given for ``pattern``; Unplayable if it cannot play it."""
        programs = {}
        for ch, pulse in pattern.pulses:
            output = self.channel_of.get(ch)
            if output is None:
                label = (self.info.layout.labels[ch] if 0 <= ch < self.info.n_channels
                         else f"#{ch}")
                wired = ", ".join(self.stimulator.wiring.values())
                raise Unplayable(f"electrode {label} has no Pulse Pal channel (wired: {wired})")
            try:
                programs[output] = pulse_program(pulse, self.stimulator.uA_per_V,
                                                 pattern.train_count, pattern.train_rate_hz)
            except Unplayable as exc:
                raise Unplayable(f"electrode {self.stimulator.wiring[output]} (Pulse Pal output "
                                 f"{output}): {exc}") from None
        longest = max(p[TRAIN] for p in programs.values())
        samples = math.ceil((longest * CYCLE_US * 1e-6 + BUSY_MARGIN_S) * self.info.sample_rate)
        period = 0.0
        if pattern.train_count > 1:
            program = next(iter(programs.values()))  # one train: the same period on each
            length = program[PHASE1_CYCLES] + program.get(INTERPHASE, 0) + program.get(
                PHASE2_CYCLES, 0)
            period = (length + program[INTERVAL]) * CYCLE_US * 1e-6
        return _Pattern(ticket, at, programs, samples, pattern.train_count, period)

    def _check_idle(self, job: _Pattern) -> None:
        """Unplayable if a channel of ``job`` plays another train during ``job``'s: a playing
        channel ignores triggers."""
        end = job.at + job.train_samples
        for output in job.programs:
            spans = [(0, self._busy_until.get(output, 0))] + [
                (w.at, w.at + w.train_samples) for w in self._waiting if output in w.programs]
            for start, stop in spans:
                if start < end and job.at < stop:
                    raise Unplayable(f"Pulse Pal output {output} (electrode "
                                     f"{self.stimulator.wiring[output]}) plays another train "
                                     f"from sample {start} to {stop}")

    def _free(self, job: _Pattern, clock: int) -> bool:
        """Whether ``job``'s channels may be programmed now: no train plays on them and no
        waiting pattern has programmed them."""
        return all(self._busy_until.get(out, 0) <= clock
                   and not any(out in w.programs for w in self._waiting)
                   for out in job.programs)

    def _fire(self, job: _Pattern) -> None:
        """Program what is not programmed yet, trigger; the report goes out of the next read()."""
        clock = self._clock if self._clock is not None else job.at
        try:
            self._program(job.programs)  # nothing to send if it was programmed when sent
            mask = sum(1 << (out - 1) for out in job.programs)
            self._write(bytes([OP_MENU, OP_TRIGGER, mask]))
        except Unplayable as exc:
            self._reports.append(StimReport(job.ticket, clock, False, str(exc)))
            return
        now = time.monotonic()
        for out in job.programs:
            self._busy_until[out] = clock + job.train_samples
        self._reports.append(StimReport(job.ticket, clock))
        self._playing = [p for p in self._playing
                         if now < p.time + p.job.pulses * p.job.period_s]
        if job.pulses > 1:
            self._playing.append(_Playing(job, clock, now))

    def abort_stimulation(self) -> None:
        """Stop the outputs (op 80); patterns not yet triggered are reported as not run, a
        train in play as cut (by the host's clock: see the module's docstring)."""
        with self._lock:
            for job in self._waiting:
                self._reports.append(StimReport(job.ticket, job.at, False, "aborted"))
            self._waiting.clear()
            self._busy_until.clear()
            if self._lost is None and self._state in ("open", "running"):
                try:
                    self._write(bytes([OP_MENU, OP_STOP_ALL]))
                except DriverError:
                    pass  # called while things go wrong already: the first error is reported
                else:
                    self._report_cuts(time.monotonic())
            self._playing.clear()

    def _report_cuts(self, stopped: float) -> None:
        """A cut report for each train the stop at host time ``stopped`` cut (lock held)."""
        rate = self.info.sample_rate
        for p in self._playing:
            elapsed = stopped - p.time
            ran = min(p.job.pulses, math.ceil(elapsed / p.job.period_s))
            if ran < p.job.pulses:
                sample = p.sample + round(ran * p.job.period_s * rate)
                self._reports.append(StimReport(p.job.ticket, sample, True, "aborted", ran))

    # -- the serial link -------------------------------------------------------------------
    def _program(self, programs: dict[int, dict[int, int]]) -> None:
        """Send the parameters that differ from what the device has; await every answer.

        A refused value (answer 0) or a garbled answer raises Unplayable (nothing is
        triggered); no answer at all is a lost link (DriverError).
        """
        sent = [(out, code, value) for out, program in programs.items()
                for code, value in sorted(program.items())
                if self._known.get(out, {}).get(code) != value]
        if not sent:
            return
        for out, code, value in sent:
            self._write(command(code, out, value))
        answers = self._read(len(sent), ACK_TIMEOUT_S)
        if len(answers) < len(sent):
            self._lose(f"the Pulse Pal answered {len(answers)} of {len(sent)} parameters within "
                       f"{ACK_TIMEOUT_S:g} s")
            raise DriverError(self._lost)
        refused = []
        for (out, code, value), answer in zip(sent, answers, strict=True):
            if answer == 1:
                self._known.setdefault(out, {})[code] = value
            else:
                self._known.get(out, {}).pop(code, None)
                refused.append((out, code, value, answer))
        if any(answer not in (0, 1) for *_, answer in refused):
            stray = self._drain_input(quiet_s=0.05)  # the answers still on their way
            for out, *_ in sent:
                self._known.pop(out, None)  # unknown now: all is sent again next time
            self._event("link_error", f"garbled answer from the Pulse Pal on {self.port_name} "
                        f"({answers.hex()} then {len(stray)} more bytes)")
            raise Unplayable("garbled answer from the Pulse Pal while programming it: "
                             "the pattern was not triggered")
        if refused:
            out, code, value, _ = refused[0]
            raise Unplayable(f"the Pulse Pal refused parameter {code} = {value} on output {out}")

    def _write(self, data: bytes) -> None:
        if self._lost:
            raise DriverError(self._lost)
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            self._lose(str(exc))
            raise DriverError(self._lost) from None

    def _read(self, n: int, timeout: float) -> bytes:
        try:
            return read_bytes(self._port, n, timeout)
        except (serial.SerialException, OSError) as exc:
            self._lose(str(exc))
            raise DriverError(self._lost) from None

    def _check_link(self) -> None:
        """Raise DriverError if the Pulse Pal is gone; count bytes it sent unasked."""
        if self._lost is None:
            try:
                stray = self._drain_input()
            except (serial.SerialException, OSError) as exc:
                self._lose(str(exc))
            else:
                if stray:
                    self._event("link_error", f"{len(stray)} unexpected byte(s) from the Pulse Pal"
                                f" on {self.port_name}: {stray[:16].hex()}")
        if self._lost is not None:
            raise DriverError(self._lost)

    def _drain_input(self, quiet_s: float = 0.0) -> bytes:
        """What the port holds, and what comes until it has been quiet for ``quiet_s``."""
        out = b""
        while select.select([self._port.fileno()], [], [], quiet_s)[0]:
            data = self._port.read(4096)
            if not data:
                break
            out += data
        return out

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = (f"lost the Pulse Pal on {self.port_name} ({why}); stimulation stopped: "
                          "check its USB cable and power")
            self._waiting.clear()

    def _event(self, kind: str, message: str) -> None:
        log.warning("[%s] %s", kind, message)
        self._events.append((kind, message))


# -- the port, the handshake and discovery --------------------------------------------------
def _open_port(name: str) -> Any:
    try:
        return serial.serial_for_url(name, baudrate=115200, timeout=0, write_timeout=1.0,
                                     exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        busy = "is another program using it? " if "lock" in str(exc).lower() else ""
        raise DriverError(f"cannot open the Pulse Pal port {name}: {exc}; {busy}check the port "
                          "name (`mea-control devices` lists Pulse Pals), its permissions "
                          "(the dialout group) and the USB cable") from None


def read_bytes(port: Any, n: int, timeout: float) -> bytes:
    """Up to ``n`` bytes, waiting at most ``timeout`` seconds for them."""
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([port.fileno()], [], [], left)[0]:
            break
        out += port.read(n - len(out))
    return out


def handshake(port: Any, name: str, timeout: float) -> int:
    """Op 72: the firmware version of the Pulse Pal on ``port``; DriverError otherwise."""
    try:
        port.reset_input_buffer()
        port.write(bytes([OP_MENU, OP_HANDSHAKE]))
        reply = read_bytes(port, 5, timeout)
    except (serial.SerialException, OSError) as exc:
        raise DriverError(f"{name} failed during the Pulse Pal handshake ({exc}): check the USB "
                          "cable") from None
    if not reply:
        raise DriverError(f"no answer from {name} within {timeout:g} s: check the USB cable, "
                          "that the Pulse Pal is powered, and that this port is a Pulse Pal "
                          "(`mea-control devices` lists them)")
    if reply[0] != HANDSHAKE_REPLY or len(reply) < 5:
        raise DriverError(f"{name} answered the handshake with {reply.hex()}, not a Pulse Pal's "
                          f"{HANDSHAKE_REPLY} and firmware version: check that this port is a "
                          "Pulse Pal running its own firmware")
    firmware = struct.unpack("<I", reply[1:5])[0]
    if firmware < MIN_FIRMWARE:
        raise DriverError(f"{name} is a Pulse Pal 1 (firmware v{firmware}): pulsepal:// needs "
                          f"model 2 or later (firmware v{MIN_FIRMWARE}+, 16-bit outputs)")
    return firmware


def probe(name: str, timeout: float) -> str | None:
    """A one-line description of the Pulse Pal on port ``name``, or None if there is none."""
    try:
        port = serial.serial_for_url(name, timeout=0, write_timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError, ValueError):
        return None
    try:
        firmware = handshake(port, name, timeout)
        port.write(bytes([OP_MENU, OP_DISCONNECT]))
    except (DriverError, serial.SerialException, OSError):
        return None
    finally:
        port.close()
    return (f"Sanworks Pulse Pal, firmware v{firmware}: stimulation; pair it with an acquisition"
            " device, e.g. ?acquire=sim:// and --rig FILE with [stimulator]")
