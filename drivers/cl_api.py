"""``cl://``: a Cortical Labs CL1 through its ``cl`` Python API (or cl-sdk, its simulator).

Follows the CL API as published in cl-sdk 1.0.0 (PyPI ``cl-sdk``; source
https://github.com/Cortical-Labs/cl-sdk, documentation https://docs.corticallabs.com):
``cl.open()``, ``Neurons.loop / stim / interrupt``, ``ChannelSet``, ``StimDesign``,
``BurstDesign``. The ``cl`` package needs Python >= 3.12 and is licensed CC BY-NC 4.0, so
mea-control installs it only with the optional extra ``cl`` (see docs/cl-api.md).

Data: ``neurons.loop()`` gives one tick per block; the driver advances it one tick per
block it hands out, so a pattern is always sent while the loop rests on the tick the engine
has just seen. With ``mode=raw`` a tick's frames become a :class:`Block` and the engine
detects spikes; with ``mode=spikes`` the spikes of the tick's analysis become
:class:`SpikeEvents`, followed by a :class:`Tick`. A pattern becomes one
``stim(ChannelSet, StimDesign, burst_design=BurstDesign | None, lead_time_us)`` call per
distinct pulse, ``lead_time_us`` taking it to its ``at_sample``; its :class:`StimReport`
comes from the ``analysis.stims`` of the tick it ran in. A pattern for more than
``HOLD_AHEAD_S`` ahead waits in the driver and is sent once it is that close, so that the
device never holds more than that (plus a train) should the host die. ``abort_stimulation``
(any thread) interrupts every channel; a train the device had begun is then reported cut,
with the pulses the device says ran. Patterns the API cannot run are
reported dropped, never altered; the device's limits (3 uA, 3 nC a phase, 20 us phases) and
its grounded channels (0, 7, 56, 63, where the API drops a stim without a word) go to the
safety gate through :attr:`DeviceInfo.limits`.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mea_control.driver import Driver, DriverError, Event, Param
from mea_control.layouts import DEFAULT_LAYOUT, LayoutError, load_layout
from mea_control.types import (
    Block,
    Capabilities,
    DeviceInfo,
    SpikeEvents,
    StimPattern,
    StimPulse,
    StimReport,
    Tick,
)

CHANNELS = 64
UV_PER_UNIT = 0.195  # the CL1's int16 frames, uV per unit
GROUNDED = (0, 7, 56, 63)
MAX_CURRENT_UA = 3.0
MAX_CHARGE_NC = 3.0
PHASE_STEP_US = 20
MAX_PHASES = 3
MAX_BURST_HZ = 200.0
MIN_LEAD_US = 80
#: a pattern the device has not reported this long after its last pulse is reported dropped
REPORT_GRACE_S = 0.25
#: The device is given a pattern at most this long before its at_sample (it waits here until
#: then): what it still runs if the host dies, besides a train it has begun.
HOLD_AHEAD_S = 0.2
EXTRA_HINT = ("install the cl extra in a Python >= 3.12 environment: "
              "pip install 'mea-control[cl]' (see docs/cl-api.md)")


@dataclass
class _Pending:
    """A sent pattern the device has not finished reporting."""

    at: int
    due: int  # report it dropped once the device is past this sample
    left: dict[int, int]  # channel -> pulses not yet seen
    count: int = 1  # pulses of the train on each channel
    interval_us: int = 0  # between the train's pulses
    first: int | None = None  # the sample of its first pulse the device reported
    reported: bool = False
    aborted: bool = False
    reason: str = "the device did not report running it"

    def owns(self, stim: Any, fs: float) -> bool:
        """Whether a pulse the device ran is this pattern's: the oldest pattern on the channel
        takes it, unless an abort cut that one, whose pulses then come only as scheduled
        (a later pattern's pulses may come before the device says it is done with it)."""
        if not self.aborted:
            return True
        k = self.count - self.left[stim.channel]
        base = self.at if self.first is None else self.first
        return abs(stim.timestamp - base - round(k * self.interval_us * 1e-6 * fs)) <= 1


@dataclass
class _Lost:
    message: str


@dataclass
class _Worker:
    """The thread that advances the device's loop, one tick per request."""

    requests: queue.Queue[bool | None] = field(default_factory=queue.Queue)
    results: queue.Queue[list[Event] | _Lost] = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None
    asked: bool = False


class CLDriver(Driver):
    """A Cortical Labs CL1 (64 channels at 25 kHz) through the ``cl`` API."""

    scheme: ClassVar[str] = "cl"
    params: ClassVar[dict[str, Param]] = {
        "mode": Param(str, "raw", "raw: frames, spikes found by mea-control; spikes: the "
                      "device's own spike detection only"),
        "layout": Param(str, DEFAULT_LAYOUT, "electrode layout of the 64 channels"),
        "timeout": Param(float, 5.0, "seconds to wait for the device to open"),
    }

    none_found: ClassVar[str] = (
        "no Cortical Labs device opens (the cl package needs Python >= 3.12; see "
        "docs/cl-api.md)"
    )

    @classmethod
    def discover(cls, timeout: float = 0.5) -> list[tuple[str, str]]:
        """``cl://`` if the ``cl`` package is installed, with whether a device opened in time.

        A separate Python process opens the device (take_control=False) and closes it again. One
        that has not answered within ``timeout`` is left to finish on its own: killing it could
        leave behind what ``cl.open()`` started (cl-sdk's simulator runs in processes of its own).
        Nothing is listed when ``cl`` is not installed.
        """
        try:
            if importlib.util.find_spec("cl") is None:
                return []
        except (ImportError, ValueError):
            return []
        try:
            proc = subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        except OSError as exc:
            return [("cl://", f"the cl package is installed; cannot check for a device: {exc}")]
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stdout.close()
            return [("cl://", f"the cl package is installed, but no CL device opened within "
                     f"{timeout:g} s (the cl-sdk simulator needs about 3 s: try --timeout 5)")]
        try:
            found = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return [("cl://", "the cl package is installed, but checking for a device failed")]
        if "error" in found:
            return [("cl://", f"the cl package is installed, but the CL device did not open: "
                     f"{found['error']}")]
        kind = "cl-sdk simulator" if found["simulator"] else "device"
        return [("cl://", f"Cortical Labs CL1 {found['system']} ({kind}): {found['channels']} "
                 f"channels at {found['fps'] / 1000:g} kHz")]

    def __init__(self, url: str, options: dict[str, Any], location: str = "") -> None:
        super().__init__(url, options, location)
        if options["mode"] not in ("raw", "spikes"):
            raise DriverError(f"cl:// mode={options['mode']!r}: use mode=raw or mode=spikes")
        if not 0.0 < options["timeout"] <= 120.0:
            raise DriverError(f"cl:// timeout={options['timeout']:g} is out of range; "
                              "use 0 to 120 s")
        try:
            self.layout = load_layout(options["layout"])
        except LayoutError as exc:
            raise DriverError(f"cl:// layout: {exc}") from None
        if self.layout.n_electrodes != CHANNELS:
            raise DriverError(f"cl:// layout {self.layout.name} has "
                              f"{self.layout.n_electrodes} electrodes; the CL1 has {CHANNELS}")
        self._info: DeviceInfo | None = None
        self._state = "closed"

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        if self._state != "closed":
            return
        self.cl = import_cl()
        self._stack, self.neurons = self._connect(self.options["timeout"])
        try:
            self._info = self._describe()
        except BaseException:
            self._stack.close()
            raise
        self._lock = threading.RLock()
        self._out: deque[Event] = deque()  # events of the last tick, to hand out in order
        self._events: deque[tuple[str, str]] = deque()
        self._pending: dict[int, _Pending] = {}
        #: Patterns waiting to be given to the device, by (at_sample, ticket).
        self._waiting: list[tuple[int, int, StimPattern]] = []  # (at_sample, ticket, pattern)
        self._by_channel: dict[int, deque[int]] = {}  # channel -> tickets, oldest first
        self._ticket = 0
        self._seq = 0
        self._causal: int | None = None  # the tick the loop rests on: where a stim counts from
        self._lost: str | None = None
        self._worker = _Worker()
        self._state = "open"

    def _connect(self, timeout: float) -> tuple[contextlib.ExitStack, Any]:
        """``cl.open()`` on a helper thread, so that a device that hangs fails in time."""
        done = threading.Event()
        box: dict[str, Any] = {}
        gave_up = threading.Event()

        def connect() -> None:
            stack = contextlib.ExitStack()
            try:
                neurons = stack.enter_context(self.cl.open())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                box["error"] = exc
                done.set()
                return
            box["stack"], box["neurons"] = stack, neurons
            done.set()
            if gave_up.is_set():
                stack.close()  # opened too late: let go of it

        threading.Thread(target=connect, name="cl-open", daemon=True).start()
        if not done.wait(timeout):
            gave_up.set()
            if done.is_set() and "stack" in box:
                box["stack"].close()
            raise DriverError(
                f"no answer from the CL device within {timeout:g} s: check that the CL1 is on "
                "and its software running, and that this computer reaches it (the cl-sdk "
                "simulator needs a few seconds to start: raise ?timeout=)")
        error = box.get("error")
        if error is not None:
            raise DriverError(self._open_failure(error)) from None
        return box["stack"], box["neurons"]

    def _open_failure(self, exc: BaseException) -> str:
        if isinstance(exc, getattr(self.cl, "ControlRequestError", ())):
            return (f"the CL device is controlled by another process ({exc}): close the other "
                    "application; one process at a time can stimulate")
        return (f"cannot open the CL device: {type(exc).__name__}: {exc}; check that the CL1 "
                "is on and that the cl package matches its software")

    def _describe(self) -> DeviceInfo:
        n = self.neurons
        channels, fps = int(n.get_channel_count()), float(n.get_frames_per_second())
        if channels != CHANNELS:
            raise DriverError(f"the CL device reports {channels} channels; cl:// knows the "
                              f"CL1's {CHANNELS}")
        simulated = bool(self.cl.is_simulator())
        system = str(self.cl.get_system_attributes().get("system_id", ""))
        spikes = self.options["mode"] == "spikes"
        labels = self.layout.labels
        return DeviceInfo(
            name=f"Cortical Labs CL1 {system}" + (" (cl-sdk simulator)" if simulated else ""),
            n_channels=channels,
            sample_rate=fps,
            uV_per_bit=UV_PER_UNIT,
            layout=self.layout,
            capabilities=Capabilities(raw_stream=not spikes, onboard_detection=spikes,
                                      stim_modes=("current",), scheduled_stim=True),
            limits={"max_current_uA": MAX_CURRENT_UA, "max_charge_nC": MAX_CHARGE_NC,
                    "min_phase_us": float(PHASE_STEP_US),
                    "forbidden": [labels[ch] for ch in GROUNDED]},
            simulated=simulated,
        )

    def close(self) -> None:
        if self._state == "closed":
            return
        self.stop()
        try:
            self._stack.close()
        except Exception:  # a lost device may fail to say goodbye; nothing is left to stop
            pass
        self._state = "closed"

    def set_fast(self, fast: bool) -> None:
        """``--fast``: only for cl-sdk's simulator in accelerated time (it then sends frames
        as fast as they are read; the engine's watchdog, a wall-clock check, stays off)."""
        if fast and not (self.info.simulated
                         and os.environ.get("CL_SDK_ACCELERATED_TIME") == "1"):
            raise DriverError("--fast with cl:// needs the cl-sdk simulator in accelerated "
                              "time: set CL_SDK_ACCELERATED_TIME=1 (a CL1 runs in real time)")

    def start(self, block_samples: int | None = None) -> None:
        if self._state != "open":
            raise DriverError(f"cl:// start() needs an open, idle device (it is {self._state})")
        fps = self.info.sample_rate
        block = int(block_samples or round(fps / 1000.0))
        if not 1 <= block <= int(fps * 0.1):
            raise DriverError(f"cl:// block size {block} must be 1 to {int(fps * 0.1)} frames")
        self.block = block
        try:
            # ticks_per_second for exactly `block` frames a tick (the API floors the ratio);
            # lag is the engine's watchdog's business, not the loop's
            loop = self.neurons.loop(fps / (block + 0.5), ignore_jitter=True)
            self._ticks = iter(loop)
        except Exception as exc:
            raise DriverError(f"the CL device refused to start its loop: {exc}") from None
        if loop.frames_per_tick != block:
            raise DriverError(f"the CL device's loop gives {loop.frames_per_tick} frames a "
                              f"tick, not {block}: choose another --block-ms")
        self._worker.thread = threading.Thread(target=self._work, name="cl-loop", daemon=True)
        self._worker.thread.start()
        self._state = "running"

    def stop(self) -> None:
        """Leave the loop; what the device still has booked is interrupted first."""
        if self._state != "running":
            return
        with self._lock:
            self._waiting.clear()
            if self._lost is None:
                self._interrupt_all()
        self._state = "stopped"
        self._worker.requests.put(None)
        assert self._worker.thread is not None
        self._worker.thread.join(timeout=0.5)  # longer only if stuck in the device

    # -- streaming -------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Event | None:
        if self._state == "stopped":
            return None
        if self._state != "running":
            raise DriverError(f"cl:// read() before start() (the device is {self._state})")
        if self._out:
            return self._out.popleft()
        if self._lost is not None:
            raise DriverError(self._lost)
        w = self._worker
        if not w.asked:
            self._book_due()  # the loop rests on the tick just handed out
            w.requests.put(True)
            w.asked = True
        try:
            got = w.results.get(timeout=timeout)
        except queue.Empty:
            return None
        w.asked = False
        if isinstance(got, _Lost):
            self._lost = got.message
            raise DriverError(got.message)
        self._out.extend(got)
        return self._out.popleft() if self._out else None

    def _work(self) -> None:
        """Worker thread: one tick of the device's loop per request, until stop()."""
        w = self._worker
        while w.requests.get() is not None:
            try:
                tick = next(self._ticks)
                w.results.put(self._tick_events(tick))
            except StopIteration:
                w.results.put(_Lost("the CL device ended its loop"))
                return
            except Exception as exc:
                w.results.put(_Lost(
                    f"lost the CL device: {type(exc).__name__}: {exc}; check the CL1 and the "
                    "connection to it"))
                return
        with contextlib.suppress(Exception):
            self._ticks.close()  # leave the device's loop

    def _tick_events(self, tick: Any) -> list[Event]:
        """What one tick gives: stim reports first, then its Block (or spikes and a Tick)."""
        a = tick.analysis
        start, stop = int(a.start_timestamp), int(a.stop_timestamp)
        with self._lock:
            self._causal = int(tick.iteration_timestamp)
            events: list[Event] = self._reports(a.stims, stop)
        if self.info.capabilities.raw_stream:
            data = np.array(tick.frames, dtype=np.int16, copy=True)  # valid for this tick only
            events.append(Block(start, data, UV_PER_UNIT, self._seq))
            self._seq += 1
            return events
        if a.spikes:
            spikes = sorted(a.spikes, key=lambda s: (s.timestamp, s.channel))
            events.append(SpikeEvents(
                np.array([s.timestamp for s in spikes], np.int64),
                np.array([s.channel for s in spikes], np.int16),
                np.array([float(np.min(s.samples)) for s in spikes], np.float32)))
        events.append(Tick(stop))
        return events

    def _reports(self, stims: list[Any], stop: int) -> list[Event]:
        """StimReports from the pulses the device delivered; overdue patterns dropped."""
        out: list[Event] = []
        fs = self.info.sample_rate
        for stim in sorted(stims, key=lambda s: (s.timestamp, s.channel)):
            tickets = self._by_channel.get(int(stim.channel), ())
            ticket = next((t for t in tickets if self._pending[t].owns(stim, fs)), None)
            if ticket is None:
                continue  # not ours
            p = self._pending[ticket]
            p.left[stim.channel] -= 1
            if not p.left[stim.channel]:
                tickets.remove(ticket)
            if not p.reported:
                p.reported, p.first = True, int(stim.timestamp)
                out.append(StimReport(ticket, int(stim.timestamp)))
            if not any(p.left.values()):
                del self._pending[ticket]
        for ticket, p in list(self._pending.items()):
            if stop > p.due:
                if not p.reported:
                    out.append(StimReport(ticket, p.at, False, p.reason))
                elif p.aborted:
                    out.append(self._cut(ticket, p))
                self._forget(ticket)
        return out

    def _cut(self, ticket: int, p: _Pending) -> StimReport:
        """The second report of a train an abort cut: the pulses that ran on every channel,
        and the sample of the first that did not."""
        ran = p.count - max(p.left.values())
        assert p.first is not None
        sample = p.first + int(round(ran * p.interval_us * 1e-6 * self.info.sample_rate))
        return StimReport(ticket, sample, True, "aborted", ran)

    def _forget(self, ticket: int) -> None:
        p = self._pending.pop(ticket)
        for ch in p.left:
            with contextlib.suppress(ValueError):
                self._by_channel[ch].remove(ticket)

    def drain_events(self) -> list[tuple[str, str]]:
        out = list(self._events)
        self._events.clear()
        return out

    # -- stimulation -----------------------------------------------------------------------
    def earliest_stim_sample(self) -> int | None:
        """The tick the loop rests on plus the API's minimum lead time (80 us)."""
        if self._state != "running" or self._causal is None:
            return None
        return self._causal + self._frames(MIN_LEAD_US)

    def _frames(self, us: float) -> int:
        return int(np.ceil(us * 1e-6 * self.info.sample_rate - 1e-9))

    def stimulate(self, pattern: StimPattern) -> int:
        """Send ``pattern`` as ``stim()`` calls; what the API cannot run is reported dropped."""
        if self._state != "running":
            raise DriverError(f"cl:// cannot stimulate: the device is {self._state}")
        if self._lost is not None:
            raise DriverError(self._lost)
        with self._lock:
            self._ticket += 1
            ticket = self._ticket
            causal = self._causal
            at = pattern.at_sample
            if at is None:
                at = (causal or 0) + self._frames(MIN_LEAD_US)
            problem = self.cannot(pattern)
            if not problem and causal is None:
                problem = "the CL device has not sent its first frames yet"
            elif not problem and at < causal + self._frames(MIN_LEAD_US):
                problem = (f"late: asked for sample {at}, the earliest the CL device can run a "
                           f"pattern sent now is sample {causal + self._frames(MIN_LEAD_US)}")
            if problem:
                self._out.append(StimReport(ticket, at, False, problem))
            elif at - causal > self._frames(HOLD_AHEAD_S * 1e6):
                bisect.insort(self._waiting, (at, ticket, pattern), key=lambda h: (h[0], h[1]))
            else:
                self._book(ticket, pattern, at)
        return ticket

    def _book_due(self) -> None:
        """Send the waiting patterns that are now within HOLD_AHEAD_S of the loop's tick."""
        with self._lock:
            horizon = (self._causal or 0) + self._frames(HOLD_AHEAD_S * 1e6)
            while self._waiting and self._waiting[0][0] <= horizon:
                at, ticket, pattern = self._waiting.pop(0)
                self._book(ticket, pattern, at)

    def _book(self, ticket: int, pattern: StimPattern, at: int) -> None:
        """Send ``pattern`` for ``at`` and expect its pulses (lock held)."""
        assert self._causal is not None
        problem = self._send(pattern, at - self._causal)
        if problem:
            self._out.append(StimReport(ticket, at, False, problem))
            return
        fs = self.info.sample_rate
        last = at + pattern.pulse_offsets(fs)[-1] + self._frames(
            max(p.duration_us for _, p in pattern.pulses))
        interval = burst_interval_us(pattern.train_rate_hz) if pattern.train_count > 1 else 0
        self._pending[ticket] = _Pending(
            at, last + int(REPORT_GRACE_S * fs),
            {ch: pattern.train_count for ch in pattern.channels},
            pattern.train_count, interval)
        for ch in pattern.channels:
            self._by_channel.setdefault(ch, deque()).append(ticket)

    def _send(self, pattern: StimPattern, lead_frames: int) -> str:
        """The stim() calls of a pattern; "" once sent, else why the device would not."""
        cl = self.cl
        lead_us = int(round(lead_frames * 1e6 / self.info.sample_rate / PHASE_STEP_US))
        lead_us *= PHASE_STEP_US
        groups: dict[StimPulse, list[int]] = {}
        for ch, pulse in pattern.pulses:
            groups.setdefault(pulse, []).append(ch)
        try:
            burst = (cl.BurstDesign(pattern.train_count, float(pattern.train_rate_hz))
                     if pattern.train_count > 1 else None)
            calls = [(cl.ChannelSet(*chs), cl.StimDesign(*design_args(pulse)))
                     for pulse, chs in groups.items()]
        except (ValueError, TypeError) as exc:
            return f"refused by the cl API: {exc}"
        sent: list[int] = []
        for (channels, design), chs in zip(calls, groups.values(), strict=True):
            try:
                self.neurons.stim(channels, design, burst_design=burst, lead_time_us=lead_us)
            except (ValueError, TypeError, getattr(cl, "TransactionRejected", ValueError)) as exc:
                if sent:  # a pattern runs whole or not at all
                    with contextlib.suppress(Exception):
                        self.neurons.interrupt(cl.ChannelSet(*sent))
                return f"refused by the CL device: {type(exc).__name__}: {exc}"
            except Exception as exc:
                self._lost = (f"lost the CL device while stimulating: {type(exc).__name__}: "
                              f"{exc}; check the CL1 and the connection to it")
                raise DriverError(self._lost) from None
            sent += chs
        return ""

    def cannot(self, pattern: StimPattern) -> str:
        """Why the CL API cannot run ``pattern`` as it is ("" if it can)."""
        labels = self.layout.labels
        for ch, pulse in pattern.pulses:
            where = f"electrode {labels[ch] if 0 <= ch < len(labels) else ch}"
            if ch in GROUNDED:
                return (f"{where} is grounded on the CL1 (channels 0, 7, 56, 63): the API "
                        "would drop the pattern without a word")
            problem = pulse_problem(pulse)
            if problem:
                return f"the CL API cannot run the pulse on {where}: {problem}"
        if pattern.train_count > 1:
            rate = pattern.train_rate_hz
            if rate > MAX_BURST_HZ:
                return (f"the CL API cannot run a train at {rate:g} Hz: its bursts go up to "
                        f"{MAX_BURST_HZ:g} Hz")
            interval = burst_interval_us(rate)
            longest = max(p.duration_us for _, p in pattern.pulses)
            if interval < longest + MIN_LEAD_US:
                return (f"the CL API cannot run a train at {rate:g} Hz: its {interval} us "
                        f"interval is shorter than the pulse ({longest:g} us) + {MIN_LEAD_US} us")
        return ""

    def abort_stimulation(self) -> None:
        """Drop the waiting patterns and ``interrupt()`` every channel, all under the lock that
        sending takes; patterns that then never run are reported dropped ("aborted"), a
        train the device had begun cut, with the pulses the device reports."""
        if self._state != "running":
            return
        with self._lock:
            for at, ticket, _ in self._waiting:
                self._out.append(StimReport(ticket, at, False, "aborted"))
            self._waiting.clear()
            self._interrupt_all()
            # every pulse that ran is reported by the tick after the device's present
            soon = self._device_now() + self.block
            for p in self._pending.values():
                p.due, p.reason, p.aborted = min(p.due, soon), "aborted", True

    def _interrupt_all(self) -> None:
        """``interrupt()`` every channel (lock held); a device that refuses is logged."""
        try:
            self.neurons.interrupt(self.cl.ChannelSet(*range(CHANNELS)))
        except Exception as exc:
            self._events.append(("device_error", f"the CL device did not take interrupt(): "
                                 f"{type(exc).__name__}: {exc}"))

    def _device_now(self) -> int:
        """The device's frame now (the loop's tick if the device does not answer)."""
        try:
            return max(self._causal or 0, int(self.neurons.timestamp()))
        except Exception:
            return self._causal or 0


def pulse_problem(pulse: StimPulse) -> str:
    """Why a pulse is no ``StimDesign`` ("" if it is one)."""
    if pulse.mode != "current":
        return f"it stimulates with current only, not {pulse.mode}"
    if len(pulse.phases) > MAX_PHASES:
        return f"{len(pulse.phases)} phases (a StimDesign has 1 to {MAX_PHASES})"
    for i, (duration, amplitude) in enumerate(pulse.phases, 1):
        if amplitude == 0.0:
            return (f"phase {i} is 0 uA, an interphase gap: StimDesign phases alternate "
                    "polarity and have no gap")
        steps = duration / PHASE_STEP_US
        if steps < 1 or abs(steps - round(steps)) > 1e-9:
            return (f"phase {i} lasts {duration:g} us; phases are whole multiples of "
                    f"{PHASE_STEP_US} us (20, 40, 60, ...)")
        if abs(amplitude) > MAX_CURRENT_UA:
            return f"phase {i} is {abs(amplitude):g} uA; at most {MAX_CURRENT_UA:g} uA"
        charge = abs(amplitude) * duration * 1e-3
        if charge > MAX_CHARGE_NC + 1e-9:
            return f"phase {i} carries {charge:g} nC; at most {MAX_CHARGE_NC:g} nC a phase"
        if i > 1 and np.sign(pulse.phases[i - 2][1]) == np.sign(amplitude):
            return f"phases {i - 1} and {i} have the same polarity; they must alternate"
    return ""


def design_args(pulse: StimPulse) -> tuple[float, ...]:
    """``StimDesign`` arguments of a pulse: (us, uA) per phase, durations as ints."""
    return tuple(x for d, a in pulse.phases for x in (int(round(d)), float(a)))


def burst_interval_us(rate_hz: float) -> int:
    """The interval the API runs a burst at: 1 / rate, rounded to its 20 us grid."""
    return int(1e6 / rate_hz / PHASE_STEP_US + 0.5) * PHASE_STEP_US


def import_cl() -> Any:
    """The ``cl`` module, or a DriverError that says how to get it."""
    try:
        return importlib.import_module("cl")
    except SyntaxError:
        raise DriverError(f"cl:// the installed cl package does not run on Python "
                          f"{sys.version_info.major}.{sys.version_info.minor}; "
                          f"{EXTRA_HINT}") from None
    except ImportError as exc:
        if exc.name not in (None, "cl"):  # cl is there but something it needs is not
            raise DriverError(f"cl:// the cl package cannot load: {exc}; reinstall it "
                              f"({EXTRA_HINT})") from None
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise DriverError(f"cl:// needs the cl package (cl-sdk), which is not installed in "
                          f"this Python {here}; {EXTRA_HINT}") from None


_PROBE = """
import json
try:
    import cl
    with cl.open(take_control=False, wait_until_recordable=False) as n:
        found = {"channels": n.get_channel_count(), "fps": n.get_frames_per_second(),
                 "simulator": bool(cl.is_simulator()),
                 "system": str(cl.get_system_attributes().get("system_id", ""))}
except Exception as exc:
    found = {"error": f"{type(exc).__name__}: {exc}"}
try:
    print(json.dumps(found), flush=True)
except OSError:
    pass  # nobody waits any more
"""
