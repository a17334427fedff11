"""The Driver threading contract (mea_control/driver.py), run against every driver and its device.

One thread streams (read, stimulate: patterns booked ahead with at_sample, trains); another
calls abort_stimulation() at moments of its own. From the device's OWN record of what it
ran (SimDriver.pulse_listener behind sim://, the simulated device's log behind serial://,
the fakes' records behind rhx://, pulsepal:// and cl://), the test checks that

- nothing raised, on either thread;
- every pattern got exactly one final fate (executed, dropped, or executed and then cut),
  and the fate is what the device ran: no pulse for a dropped pattern, the whole train for
  an executed one, ``pulses_run`` pulses for a cut one;
- no pattern whose stimulate() returned before an abort began ran a pulse at or after
  that abort's fence, the first device sample (Pulse Pal: the moment, on its clock) from
  which nothing sent before it may start. rhx:// alone may run the rest of a train begun
  before its fence: RHS hardware plays a triggered train whole (docs/intan-rhx.md).

Each pattern's pulses have an amplitude of their own, by which the device's record names
the pattern. The deterministic cases make an abort arrive while a booked pattern is on its
way to the device (a hook where the driver hands it over), the race the random ones may
miss.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from conftest import wait_until

from drivers import intan_rhx, pulsepal
from hardware_sim import cl_fake
from hardware_sim.device import PtyLink, SimDevice
from hardware_sim.intan_rhx import FakeRHX, default_wiring
from hardware_sim.pulsepal import FakePulsePal
from mea_control.driver import Driver, open_driver
from mea_control.layouts import load_layout
from mea_control.types import Block, StimPattern, StimPulse, StimReport, Tick

LAYOUT = load_layout("grid8x8_200um")
#: electrodes every device here can stimulate (none is grounded on the CL1), in pairs
CHANNELS = (9, 10, 17, 18)
PAIRS = ((9, 10), (17, 18))
CULTURE = "sim://?seed=3&culture=poisson_burst"
TRAIN_HZ = 20.0  # slow enough that the Pulse Pal's link latency blurs one pulse at most
PHASES_US = (100.0, 200.0)  # each pattern's two electrodes: distinct pulses, one amplitude
PATTERNS_PER_S = 12.0


@dataclass
class Rig:
    """A driver, its device, and how to read the device's record."""

    driver: Driver
    #: pattern k's amplitude, uA (distinct: it names the pattern in the device's record)
    amplitude: Callable[[int], float]
    #: every pulse the device ran: (device time, channel, amplitude uA)
    record: Callable[[], list[tuple[float, int, float]]]
    #: called right after an abort returns; what fences() turns into that abort's fence
    mark: Callable[[], object]
    #: the fences of the aborts, from their marks (waits for the device's log if need be)
    fences: Callable[[list[object]], list[float]]
    #: a train begun before the fence may run whole (the hardware cannot stop it)
    whole_trains: bool = False
    #: the pulses a device may run beyond what the driver reports for a train (fewest,
    #: most): pulsepal:// counts a cut train by the host's clock, and the Pulse Pal runs on
    #: until the stop reaches it, or was triggered later than the host thinks
    train_slack: tuple[float, float] = (0, 0)
    #: where a pattern leaves the host: hook(driver, on_way) makes it call on_way() there
    hook: Callable[[Driver, Callable[[], None]], None] | None = None
    #: device time, s, within which the driver gives every pattern its final fate
    settle_s: float = 1.0
    #: the electrode pairs patterns go to
    pairs: tuple[tuple[int, int], ...] = PAIRS


# -- the rigs ----------------------------------------------------------------------------------
def _listener(record: list) -> Callable:
    def ran(pulses):
        record.extend((sample, channel, pulse.peak_amplitude) for sample, _, channel, pulse
                      in pulses)
    return ran


@contextlib.contextmanager
def sim_rig(monkeypatch, tmp_path) -> Iterator[Rig]:
    driver = open_driver(CULTURE)
    record: list = []
    driver.open()
    driver.pulse_listener = _listener(record)
    driver.start(25)
    try:
        # the device's clock after the abort: what it had not made yet, it never runs
        yield Rig(driver, lambda k: 1.0 + 0.5 * k, lambda: list(record),
                  mark=lambda: driver.next_sample, fences=lambda marks: list(marks))
    finally:
        driver.close()


@contextlib.contextmanager
def serial_rig(monkeypatch, tmp_path) -> Iterator[Rig]:
    """serial:// and the simulated device on a pty; its own log (docs/wire-protocol.md)
    holds every pulse that ran and the sample at which each Abort reached the firmware (the
    fence)."""
    log: list[dict] = []
    device = SimDevice(CULTURE, pulse_log=log.append)
    link, stop = PtyLink(), threading.Event()
    thread = threading.Thread(target=device.serve, args=(link, stop), daemon=True)
    thread.start()
    driver = open_driver(f"serial://{link.name}")

    def record():
        return [(e["sample"], e["channel"], e["amplitude"]) for e in list(log)
                if e["kind"] == "pulse"]

    def aborts():
        return [e["sample"] for e in list(log) if e["kind"] == "abort"]

    def fences(marks):
        wait_until(lambda: len(aborts()) >= len(marks), what="every Abort reaching the device")
        return aborts()[:len(marks)]

    try:
        driver.open()
        driver.start(25)
        yield Rig(driver, lambda k: 1.0 + 0.5 * k, record, mark=lambda: None, fences=fences)
    finally:
        driver.close()
        stop.set()
        thread.join(10)
        link.close()


#: The fake RHX's board clock runs ahead of its stream by however late its thread is; on a
#: loaded machine two patterns sent a second apart on one electrode can meet in the board's
#: time, where RHX ignores the second (refractory) and the driver cannot tell which ran
#: (docs/intan-rhx.md). Many electrodes keep each one's patterns seconds apart.
RHX_PAIRS = tuple((2 * i + 1, 2 * i + 2) for i in range(16))


@pytest.fixture(scope="module")
def rhx():
    with FakeRHX(sim=CULTURE) as fake:
        yield fake


@contextlib.contextmanager
def rhx_rig(monkeypatch, tmp_path, fake: FakeRHX) -> Iterator[Rig]:
    fake.hang_up()
    fake.enable_command_server()
    wait_until(lambda: fake._server is not None and not fake.running, what="the fake RHX")
    fake.pulses.clear()
    rig = tmp_path / "rhx.toml"
    rig.write_text("[channels]\n" + "".join(f'"{native}" = "{LAYOUT.labels[ch]}"\n'
                                            for native, ch in default_wiring(64).items()))
    driver = open_driver(fake.url, rig=str(rig))
    driver.open()
    driver.start()

    def hook(driver, on_way):
        send = driver._send

        def send_trigger(text):
            if text.startswith("execute ManualStimTriggerPulse"):
                on_way()
            send(text)

        driver._send = send_trigger

    try:
        # a trigger RHX read before the abort returned starts at or before its clock then
        yield Rig(driver, lambda k: 1.0 + k,
                  lambda: [(s, ch, p.peak_amplitude) for s, ch, p in list(fake.pulses)],
                  mark=lambda: fake.clock() + 1, fences=lambda marks: list(marks),
                  whole_trains=True, hook=hook, settle_s=intan_rhx.REPORT_TIMEOUT_S + 0.5,
                  pairs=RHX_PAIRS)
    finally:
        driver.close()


@contextlib.contextmanager
def pulsepal_rig(monkeypatch, tmp_path) -> Iterator[Rig]:
    """pulsepal:// with sim:// acquiring; the fake Pulse Pal's clock is the host's monotonic
    one, so its fences and record are in seconds. A cut train's count is the host's
    estimate (docs/pulsepal.md): at most one pulse more than ran, and the Pulse Pal runs
    those that begin while the stop is on its way (the link's latency: on this loaded
    machine's pty, up to tens of ms)."""
    gain = 10.0
    rig = tmp_path / "pulsepal.toml"
    rig.write_text("[stimulator]\nuA_per_V = 10.0\n[stimulator.wiring]\n" + "".join(
        f'{out} = "{LAYOUT.labels[ch]}"\n' for out, ch in enumerate(CHANNELS, 1)))
    link, stop = PtyLink(), threading.Event()
    fake = FakePulsePal()
    thread = threading.Thread(target=fake.serve, args=(link, stop), daemon=True)
    thread.start()
    driver = open_driver(f"pulsepal://{link.name}?acquire={quote(CULTURE, safe='')}&rig={rig}")

    def record():
        return [(t, CHANNELS[out - 1], abs(code_volts(program[2])) * gain)
                for t, out, program in fake.pulses()]

    def fences(marks):
        # op 80 goes out at open, then once per abort while running
        wait_until(lambda: len(fake.commands(80)) > len(marks), what="every stop reaching "
                   "the Pulse Pal")
        return [r.time for r in fake.commands(80)[1:len(marks) + 1]]

    def hook(driver, on_way):
        write = driver._write

        def write_trigger(data):
            if data[1] == pulsepal.OP_TRIGGER:
                on_way()
            write(data)

        driver._write = write_trigger

    try:
        driver.open()
        driver.start(25)
        yield Rig(driver, lambda k: 1.0 + 0.5 * k, record, mark=lambda: None, fences=fences,
                  train_slack=(-1, math.inf), hook=hook)
    finally:
        driver.close()
        stop.set()
        thread.join(5)
        link.close()


def code_volts(code: int) -> float:
    return code / 65535 * 20.0 - 10.0


@contextlib.contextmanager
def cl_rig(monkeypatch, tmp_path) -> Iterator[Rig]:
    monkeypatch.setitem(sys.modules, "cl", cl_fake)
    monkeypatch.delenv("CL_SDK_ACCELERATED_TIME", raising=False)
    cl_fake.configure()
    driver = open_driver("cl://")
    driver.open()
    driver.start(25)
    neurons = driver.neurons

    def hook(driver, on_way):
        stim = neurons.stim

        def stim_then_wait(*args, **kwargs):  # between the stim() calls of one pattern
            stim(*args, **kwargs)
            on_way()

        neurons.stim = stim_then_wait

    try:
        # interrupt() cancels every queued stim from its frame on
        yield Rig(driver, lambda k: 0.5 + 0.05 * k,
                  lambda: [(f, ch, p.peak_amplitude) for f, ch, p in list(neurons.delivered)],
                  mark=lambda: neurons.interrupts[-1], fences=lambda marks: list(marks),
                  hook=hook)
    finally:
        driver.close()


RIGS = {"sim": sim_rig, "serial": serial_rig, "rhx": rhx_rig, "pulsepal": pulsepal_rig,
        "cl": cl_rig}


@pytest.fixture(params=list(RIGS))
def rig(request, monkeypatch, tmp_path):
    make = RIGS[request.param]
    args = (monkeypatch, tmp_path) + ((request.getfixturevalue("rhx"),)
                                      if request.param == "rhx" else ())
    with make(*args) as built:
        yield built


# -- a run: one thread streams and stimulates, another aborts ----------------------------------
@dataclass
class Sent:
    index: int  # names the pattern's amplitude
    pattern: StimPattern
    began: int  # stamps: the order of events on both threads
    returned: int


@dataclass
class Abort:
    began: int
    returned: int
    mark: object


@dataclass
class Run:
    rig: Rig
    seed: int
    seconds: float = 4.0  # device time
    patterns: int = 40
    sent: dict[int, Sent] = field(default_factory=dict)
    reports: dict[int, list[StimReport]] = field(default_factory=dict)
    aborts: list[Abort] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stamps = itertools.count()
        self._stamp_lock = threading.Lock()
        self.done = threading.Event()
        self.booked = threading.Event()  # a pattern was just sent

    def stamp(self) -> int:
        with self._stamp_lock:
            return next(self._stamps)

    # the acquisition thread
    def stream(self, booked: Callable[[Run, int], None] | None = None) -> None:
        """Read for ``seconds`` of device time (plus one to collect the last reports),
        booking patterns as it goes; ``booked`` may book one more by itself."""
        rng = random.Random(self.seed)
        rate = self.rig.driver.info.sample_rate
        free_at = dict.fromkeys(self.rig.pairs, 0)
        clock, end, first = None, None, None
        deadline = math.inf
        try:
            while end is None or clock < end or (self.unsettled() and time.monotonic() < deadline):
                item = self.rig.driver.read(timeout=0.2)
                if isinstance(item, StimReport):
                    self.reports.setdefault(item.ticket, []).append(item)
                now = (item.stop_sample if isinstance(item, Block)
                       else item.sample if isinstance(item, Tick) else None)
                if now is None:
                    continue
                elapsed, clock = now - (clock or now), now
                first = clock if first is None else first
                if end is None and clock >= first + self.seconds * rate:
                    end = clock + int(self.rig.settle_s * rate)  # for the last reports
                    deadline = time.monotonic() + 60  # a device far behind the wall clock
                    self.done.set()
                # about PATTERNS_PER_S patterns a second of device time, whatever the blocks
                booking = rng.random() < PATTERNS_PER_S * elapsed / rate
                if end is None and len(self.sent) < self.patterns and booking:
                    self.book(rng, clock, free_at, rate)
                if booked is not None and end is None:
                    booked(self, clock)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.errors.append(exc)
        finally:
            self.done.set()

    def unsettled(self) -> bool:
        """Whether a pattern sent has no final report yet."""
        return any(not any(r.pulses_run is None for r in self.reports.get(ticket, ()))
                   for ticket in self.sent)

    def book(self, rng: random.Random, clock: int, free_at: dict, rate: float) -> None:
        pair = rng.choice([p for p in self.rig.pairs if free_at[p] <= clock] or [None])
        if pair is None:
            return
        count = rng.choice((1, 1, 3, 5))
        ahead = rng.choice((None, 0, int(0.004 * rate), int(0.03 * rate), int(0.15 * rate)))
        at = None if ahead is None else clock + max(ahead, int(0.0002 * rate))
        self.send(pair, count, at)
        # the train and a margin: RHX ignores a trigger while the channel plays or is
        # refractory, and its trains run at the board's clock, which its stream follows late
        span = (count - 1) / TRAIN_HZ + 0.5
        free_at[pair] = (at or clock) + int(span * rate)

    def send(self, pair: tuple[int, int], count: int, at: int | None) -> int:
        index = len(self.sent)
        amplitude = self.rig.amplitude(index)
        pattern = StimPattern(tuple((ch, StimPulse.biphasic(amplitude, us))
                                    for ch, us in zip(pair, PHASES_US, strict=True)),
                              count, TRAIN_HZ if count > 1 else 0.0, at_sample=at)
        began = self.stamp()
        ticket = self.rig.driver.stimulate(pattern)
        self.sent[ticket] = Sent(index, pattern, began, self.stamp())
        self.booked.set()
        return ticket

    # another thread
    def abort(self) -> None:
        began = self.stamp()
        self.rig.driver.abort_stimulation()
        mark = self.rig.mark()
        self.aborts.append(Abort(began, self.stamp(), mark))
        self.rig.driver.rearm_stimulation()

    def abort_now_and_then(self) -> None:
        rng = random.Random(self.seed + 1)
        try:
            while not self.done.wait(rng.uniform(0.05, 0.3)):
                if rng.random() < 0.5:  # soon after a pattern went out, when most is pending
                    self.booked.clear()
                    self.booked.wait(0.3)
                    time.sleep(rng.uniform(0.0, 0.03))
                self.abort()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.errors.append(exc)

    # what the device did
    def check(self) -> dict[str, int]:
        """Assert the contract from the device's record; some figures for the report."""
        assert not self.errors, f"raised: {self.errors!r}"
        ran = self.ran()
        fates = Counter()
        for ticket, sent in self.sent.items():
            fates[self.check_fate(ticket, sent, ran.get(sent.index, {}))] += 1
        fences = self.rig.fences([a.mark for a in self.aborts])
        for abort, fence in zip(self.aborts, fences, strict=True):
            for sent in self.sent.values():
                if sent.returned < abort.began:
                    self.check_fence(sent, ran.get(sent.index, {}), fence)
        return dict(fates, aborts=len(self.aborts))

    def ran(self) -> dict[int, dict[int, list[float]]]:
        """pattern index -> channel -> device times of its pulses, from the device's record."""
        sent = {self.rig.amplitude(s.index): s.index for s in self.sent.values()}
        out: dict[int, dict[int, list[float]]] = {}
        for when, channel, amplitude in self.rig.record():
            nearest = min(sent, key=lambda a: abs(a - amplitude), default=None)
            assert nearest is not None and abs(nearest - amplitude) < 0.01, (
                f"the device ran {amplitude} uA, which nobody sent")  # DAC steps: 0.003 uA
            index = sent[nearest]
            out.setdefault(index, {}).setdefault(channel, []).append(when)
        return out

    def check_fate(self, ticket: int, sent: Sent, ran: dict[int, list[float]]) -> str:
        reports = self.reports.get(ticket, [])
        first = [r for r in reports if r.pulses_run is None]
        cut = [r for r in reports if r.pulses_run is not None]
        where = f"pattern {sent.index} (ticket {ticket}, {sent.pattern.train_count} pulses)"
        assert len(first) == 1, f"{where}: {len(first)} final reports: {reports}"
        counts = {ch: len(ran.get(ch, [])) for ch in sent.pattern.channels}
        if not first[0].executed:
            assert not cut and set(counts.values()) == {0}, (
                f"{where} reported dropped ({first[0].reason}) but the device ran {counts}")
            return "dropped"
        assert len(cut) <= 1, f"{where}: cut twice: {cut}"
        expected = cut[0].pulses_run if cut else sent.pattern.train_count
        fewest, most = self.rig.train_slack if sent.pattern.train_count > 1 else (0, 0)
        assert all(fewest <= n - expected <= most for n in counts.values()), (
            f"{where} reported {'cut after ' if cut else 'executed: '}{expected} pulses, "
            f"the device ran {counts}")
        return "cut" if cut else "executed"

    def check_fence(self, sent: Sent, ran: dict[int, list[float]], fence: float) -> None:
        times = [t for ts in ran.values() for t in ts]
        if not times:
            return
        late = [min(times)] if self.rig.whole_trains else times
        after = [t for t in late if t >= fence]
        assert not after, (f"pattern {sent.index}, sent before an abort, ran at {after} "
                           f"(device time), at or after that abort's fence {fence}")


def run_threads(run: Run, streaming: Callable[[], None], aborting: Callable[[], None]) -> None:
    threads = [threading.Thread(target=streaming, name="acquisition", daemon=True),
               threading.Thread(target=aborting, name="stop", daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), f"the {t.name} thread hangs"


# -- the tests ---------------------------------------------------------------------------------
def test_aborts_at_random_moments_keep_the_contract(rig):
    run = Run(rig, seed=19)
    run_threads(run, run.stream, run.abort_now_and_then)
    figures = run.check()
    ran = sum(n for fate, n in figures.items() if fate.startswith(("executed", "cut")))
    assert figures["aborts"] >= 5 and ran >= 4, figures
    assert sum(n for fate, n in figures.items() if fate.startswith(("dropped", "cut"))), (
        f"no abort cancelled anything: {figures}")


@pytest.mark.parametrize("rig", ["rhx", "pulsepal", "cl"], indirect=True)
def test_an_abort_while_a_booked_pattern_is_on_its_way(rig):
    """The abort comes while the driver hands a booked pattern to the device (held patterns
    fired from read(), a pattern sent as several calls): it is either cancelled whole or
    sent before the abort takes effect, never partly, never after."""
    on_way, go = threading.Event(), threading.Event()
    armed = threading.Event()

    def pause():
        if armed.is_set() and not on_way.is_set():
            on_way.set()
            go.wait(0.5)  # an abort that takes the driver's lock waits for this

    rig.hook(rig.driver, pause)
    run = Run(rig, seed=7, seconds=1.0, patterns=0)
    rate = rig.driver.info.sample_rate

    def book_once(run, clock):  # rhx:// and pulsepal:// hold it for read(); cl:// sends it
        if not armed.is_set() and clock > 0.2 * rate:
            armed.set()
            run.send(PAIRS[0], 1, clock + int(0.1 * rate))

    def abort_on_the_way():
        if on_way.wait(30):
            run.abort()
        go.set()

    run_threads(run, lambda: run.stream(book_once), abort_on_the_way)
    assert on_way.is_set(), "the pattern never went out"
    run.check()


def test_an_abort_in_the_middle_of_a_train(rig):
    """A train of 5 pulses at 20 Hz, aborted when the stream is 75 ms into it: the driver
    reports it cut with the pulses the device ran, or, where the hardware plays a triggered
    train whole (rhx://), executed whole."""
    rate = rig.driver.info.sample_rate
    train: dict[str, int] = {}
    midway = threading.Event()

    def book_then_watch(run, clock):
        if not train and clock > 0.2 * rate:
            train["at"] = clock + int(0.01 * rate)
            train["ticket"] = run.send(PAIRS[0], 5, train["at"])
        elif train and clock >= train["at"] + int(0.075 * rate):
            midway.set()

    run = Run(rig, seed=5, seconds=1.0, patterns=0)

    def abort_midway():
        if midway.wait(30):
            run.abort()

    run_threads(run, lambda: run.stream(book_then_watch), abort_midway)
    assert midway.is_set(), "the stream never reached the train"
    sent = run.sent[train["ticket"]]
    fate = run.check_fate(train["ticket"], sent, run.ran().get(sent.index, {}))
    run.check()
    assert fate == ("executed" if rig.whole_trains else "cut"), fate
