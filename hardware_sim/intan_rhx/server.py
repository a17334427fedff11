"""FakeRHX: RHX's command server and the board it drives, on one thread.

The protocol it follows is described in :mod:`hardware_sim.intan_rhx`. Commands are parsed
as each batch is read; those after ``set runmode run`` in the same batch wait until the
board stops (RHX parses them after its acquisition loop returns). While running, the board
clocks the culture at the sample rate in real time (``fast=True``: as fast as the waveform
client reads), fires uploaded stimulation at ``ManualStimTriggerPulse`` and writes the
data ports (:mod:`hardware_sim.intan_rhx.streams`).
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections import deque
from typing import Any

from hardware_sim.intan_rhx.items import (
    BANDS,
    CHANNEL_ITEMS,
    CONTROLLERS,
    NON_STIM,
    READ_ONLY,
    RUNNING,
    STIM_CONTROLLER,
    STIM_ITEM_NAMES,
    Channel,
    Item,
    channel_order,
    default_wiring,
)
from hardware_sim.intan_rhx.stimulation import stim_words, uploaded_pulse
from hardware_sim.intan_rhx.streams import (
    FRAMES_PER_BLOCK,
    DataPort,
    free_port,
    listener,
    outputs,
    spike_records,
    waveform_block,
)
from hardware_sim.mea import SimulatedMEA, options_from_url
from mea_control.types import Block, StimPattern, StimPulse

#: RHX's version string, marked so that recordings made with the fake say so
VERSION = "3.3.0 (mea-control fake)"


class FakeRHX:
    """RHX with an RHS controller, its TCP servers on ``host`` (ports 0: free ones)."""

    def __init__(self, host: str = "127.0.0.1", command_port: int = 0, waveform_port: int = 0,
                 spike_port: int = 0, sample_rate: float = 30000.0,
                 wiring: dict[str, int] | None = None, sim: str = "sim://",
                 controller: str = STIM_CONTROLLER, step_uA: float = 1.0,
                 fast: bool = False, relisten: bool = False) -> None:
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {CONTROLLERS}")
        self.host = host
        self.sample_rate = float(sample_rate)
        self.controller = controller
        self.step_uA = step_uA
        self.fast = fast
        #: listen again by itself when the command client leaves (RHX waits for a click)
        self.relisten = relisten
        self.sim_options = dict(options_from_url(sim), rate=self.sample_rate)
        self.layout = SimulatedMEA(self.sim_options).layout
        layout = self.layout
        wiring = default_wiring(layout.n_electrodes) if wiring is None else wiring
        self.channels = {native.upper(): Channel(native.upper(), electrode)
                         for native, electrode in sorted(wiring.items(),
                                                         key=lambda kv: channel_order(kv[0]))}
        self.globals: dict[str, tuple[Item, Any]] = {}
        for item, value in [
            (Item("Type", "list", controller, values=CONTROLLERS, restrict="always"), controller),
            (Item("SampleRateHertz", "string", "", restrict="always"), f"{self.sample_rate:g}"),
            (Item("StimStepSizeMicroAmps", "string", "", restrict="always"), f"{step_uA:g}"),
            (Item("Version", "string", "", restrict="always"), VERSION),
            (Item("TCPNumberDataBlocksPerWrite", "int", 10, 1, 100, restrict="running"), 10),
        ]:
            self.globals[item.name.lower()] = (item, value)
        self.command_port = command_port or free_port(host)
        self.waveform = DataPort("waveform", host, waveform_port or free_port(host))
        self.spike = DataPort("spike", host, spike_port or free_port(host))
        #: every command received, as text (split at ';', outer whitespace removed)
        self.commands: list[str] = []
        #: the command port's bytes, as received
        self.received = bytearray()
        #: every pulse the culture received, as (sample, electrode, StimPulse), in order
        self.pulses: list[tuple[int, int, StimPulse]] = []
        self.log: list[str] = []
        self._server: socket.socket | None = listener(host, self.command_port)
        self._client: socket.socket | None = None
        self._deferred: list[tuple[int, str]] = []  # commands waiting for the board to stop
        self._injected: deque[tuple[str, bytes]] = deque()
        self._calls: deque[tuple[str, threading.Event]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()  # a call for the loop wakes it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-rhx", daemon=True)
        self.running = False
        self._deferred_batch = False  # `set runmode run` came earlier in this batch
        self._sim: SimulatedMEA | None = None
        self._next_sim: SimulatedMEA | None = None
        self._builder = threading.Thread()
        self._t0 = 0.0
        self._written_blocks = 0
        self._pending_write = bytearray()
        self._pending_spikes = bytearray()

    # -- control from the test's thread ---------------------------------------------------------
    def start(self) -> FakeRHX:
        self._warm_up()
        self._thread.start()
        return self

    def _warm_up(self) -> None:
        """Run a culture once, stimulus included, so that the first run starts on time (the
        simulator compiles its kernels on first use); then build the first run's culture."""
        sim = self._new_sim()
        sim.admit(StimPattern.single([0], StimPulse.biphasic(1.0, 100.0), at_sample=0))
        for _ in range(4):
            sim.read()
        sim.close()
        self._prepare()

    def _new_sim(self) -> SimulatedMEA:
        sim = SimulatedMEA(dict(self.sim_options))
        sim.open()
        sim.set_fast(True)  # this clock paces it
        sim.start(FRAMES_PER_BLOCK)
        return sim

    def _prepare(self) -> None:
        """Build the next run's culture on a helper thread: RHX starts running at once."""
        def build() -> None:
            self._next_sim = self._new_sim()

        self._builder = threading.Thread(target=build, name="fake-rhx-culture", daemon=True)
        self._builder.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._end_client()
        self.waveform.disconnect()
        self.spike.disconnect()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FakeRHX:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The rhx:// URL of this fake."""
        return (f"rhx://{self.host}:{self.command_port}?waveform={self.waveform.port}"
                f"&spikes={self.spike.port}")

    def enable_command_server(self) -> None:
        """What the user does in RHX's Network dialog: click Connect (listen again)."""
        self._call("listen")

    def hang_up(self) -> None:
        """RHX goes away: acquisition stops, every connection closes, no server listens."""
        self._call("hang_up")

    def _call(self, name: str) -> None:
        """Have the fake's thread do ``name``; return once it has."""
        done = threading.Event()
        self._calls.append((name, done))
        if self._thread.is_alive():
            self._wake_w.send(b"!")
            done.wait(5.0)

    def inject(self, port: str, data: bytes) -> None:
        """Put ``data`` on the ``waveform`` or ``spike`` stream before the next write."""
        self._injected.append((port, data))

    def clock(self) -> int:
        """The sample the board is at (0 while stopped); it never goes back during a run."""
        return self._sample()

    def channel(self, native: str) -> dict[str, Any]:
        """A channel's current (not necessarily uploaded) items, by lower-case name."""
        return dict(self.channels[native.upper()].values)

    def uploaded(self, native: str) -> dict[str, Any]:
        """A channel's uploaded stimulation parameters, by lower-case name."""
        return dict(self.channels[native.upper()].uploaded)

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._do_calls()
                readable = [s for s in (self._wake_r, self._server, self._client,
                                        self.waveform.server, self.spike.server) if s is not None]
                paced = not (self.fast and self.waveform.client is not None)
                writable = [] if paced or not self.running else [self.waveform.client]
                timeout = 0.05
                if self.running and paced:
                    timeout = min(max(0.0, self._due() - time.monotonic()), 0.05)
                ready, out, _ = select.select(readable, writable, [], timeout)
                for sock in ready:
                    self._readable(sock)
                if self.running and out:
                    self._acquire()
                caught_up = 0
                while (self.running and paced and time.monotonic() >= self._due()
                       and caught_up < 50):
                    self._acquire()
                    caught_up += 1
        finally:
            self._stop_running()

    def _do_calls(self) -> None:
        while self._calls:
            call, done = self._calls.popleft()
            if call == "listen" and self._server is None and self._client is None:
                self._server = listener(self.host, self.command_port)
            elif call == "hang_up":
                self._stop_running()
                self._end_client()
                if self._server is not None:
                    self._server.close()
                    self._server = None
                self.waveform.disconnect()
                self.spike.disconnect()
            done.set()

    def _readable(self, sock: socket.socket) -> None:
        if sock is self._wake_r:
            sock.recv(256)
        elif sock is self._server:
            self._client, _ = sock.accept()
            self._client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.close()  # one client; RHX listens again only when the user clicks Connect
            self._server = None
            self.log.append("command client connected")
        elif sock is self._client:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self.log.append("command client gone")
                self._end_client()
                if self.relisten:
                    self._server = listener(self.host, self.command_port)
                return
            self.received += data
            self._parse(data.decode("latin-1"))
        elif sock is self.waveform.server:
            self.waveform.accept()
        elif sock is self.spike.server:
            self.spike.accept()

    def _end_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _reply(self, text: str) -> None:
        if self._client is not None:
            try:
                self._client.sendall(text.encode("latin-1"))
            except OSError:
                self._end_client()

    # -- commands (tcpdisplay.cpp parseCommands) --------------------------------------------------
    def _parse(self, text: str) -> None:
        commands = text.split(";")
        if commands and commands[-1] == "":
            commands.pop()
        commands = [c for c in commands if c.strip()]
        for i, command in enumerate(commands):
            self.commands.append(command.strip())
            if self.running and self._deferred_batch:
                self._deferred.append((i + 1, command))
                continue
            self._command(i + 1, command)
        self._deferred_batch = False

    def _command(self, number: int, command: str) -> None:
        words = [w.strip() for w in command.split(" ")]
        words = [w for w in words if w]
        verb = words[0].lower() if words else ""
        if verb == "set":
            if len(words) == 3:
                self._set(words[1], words[2])
            else:
                self._reply(f"Error - Command {number}: Set commands require a parameter and a "
                            "value")
        elif verb == "get":
            if len(words) == 2:
                self._get(words[1])
            else:
                self._reply(f"Error - Command {number}: Get commands require a parameter")
        elif verb == "execute":
            if len(words) == 2:
                self._execute(words[1])
            elif len(words) == 3:
                self._execute_with(words[1], words[2])
            else:
                self._reply(f"Error - Command {number}: Execute commands require an action")
        else:
            self._reply(f"Error - Command {number}: Unrecognized command")

    def _locate(self, parameter: str) -> tuple[Item, Any, Any] | None:
        """(item, owner, key) for a channel item ``a-010.x`` or a global item."""
        lower = parameter.lower()
        if "." in lower:
            name, _, rest = lower.partition(".")
            rest = rest.split(".")[0]
            channel = self.channels.get(name.upper())
            if channel is not None and rest in CHANNEL_ITEMS:
                return CHANNEL_ITEMS[rest], channel, rest
        if lower in self.globals:
            return self.globals[lower][0], self.globals, lower
        return None

    def _restricted(self, item: Item) -> bool:
        return (item.restrict == "always" or (item.restrict == "running" and self.running)
                or (item.restrict == "nonstim" and self.controller != STIM_CONTROLLER))

    def _set(self, parameter: str, value: str) -> None:
        found = self._locate(parameter)
        if found is not None:
            item, owner, key = found
            if self._restricted(item):
                message = {"always": READ_ONLY, "running": RUNNING, "nonstim": NON_STIM}
                self._reply(f"{item.name} {message[item.restrict]}")
                return
            parsed = item.parse(value.lower())
            if parsed is None:
                self._reply(f"Invalid value for {item.name} command. Acceptable: "
                            f"{item.valid_values()}")
            elif owner is self.globals:
                self.globals[key] = (item, parsed)
            else:
                owner.values[key] = parsed
            return
        lower = parameter.lower()
        if lower == "runmode":
            self._set_runmode(value.lower())
        elif lower in ("tcpwaveformdataoutputport", "tcpspikedataoutputport"):
            port = self.waveform if "waveform" in lower else self.spike
            if self.running:
                name = "TCPWaveformDataOutputPort" if port is self.waveform else \
                    "TCPSpikeDataOutputPort"
                self._reply(f"{name} cannot be set while controller is running.")
            elif re.fullmatch(r"\d+", value) and 0 <= int(value) <= 9999:
                port.port = int(value)
            else:
                self._reply("Invalid value for TCPWaveformDataOutputPort command"
                            if port is self.waveform else
                            "Invalid value for TPCSpikeDataOutputPort command")
        else:
            self._reply("Unrecognized parameter")

    def _get(self, parameter: str) -> None:
        found = self._locate(parameter)
        if found is not None:
            item, owner, key = found
            value = self.globals[key][1] if owner is self.globals else owner.values[key]
            self._reply(f"Return: {item.name} {item.show(value)}")
            return
        lower = parameter.lower()
        if lower == "runmode":
            self._reply(f"Return: RunMode {'Run' if self.running else 'Stop'}")
        elif lower == "currenttimestamp":
            self._reply(f"Return: {self._sample() - 1 if self.running else -1}")
        elif lower == "tcpwaveformdataoutputport":
            self._reply(f"Return: TCPWaveformDataOutputPort {self.waveform.port}")
        elif lower == "tcpspikedataoutputport":
            self._reply(f"Return: TCPSpikeDataOutputPort {self.spike.port}")
        elif lower == "tcpwaveformdataoutputconnectionstatus":
            self._reply(f"Return: TCPWaveformDataOutputConnectionStatus {self.waveform.status}")
        elif lower == "tcpspikedataoutputconnectionstatus":
            self._reply(f"Return: TCPSpikeDataOutputConnectionStatus {self.spike.status}")
        else:
            self._reply("Unrecognized parameter")

    def _execute(self, action: str) -> None:
        lower = action.lower()
        stim = self.controller == STIM_CONTROLLER
        if lower == "connecttcpwaveformdataoutput":
            self.waveform.listen()
        elif lower == "connecttcpspikedataoutput":
            self.spike.listen()
        elif lower == "disconnecttcpwaveformdataoutput":
            self.waveform.disconnect()
        elif lower == "disconnecttcpspikedataoutput":
            self.spike.disconnect()
        elif lower == "clearalldataoutputs":
            for channel in self.channels.values():
                for _, key in BANDS:
                    channel.values[key.lower()] = False
                channel.values["tcpdataoutputenabledspike"] = False
        elif lower == "uploadstimparameters":
            if not stim:
                return
            if self.running:
                self._reply("UploadStimParameters cannot be executed while the board is running")
                return
            for channel in self.channels.values():
                self._upload(channel)
        elif lower == "setspikedetectionthresholds":
            if self.running:
                self._reply("SetSpikeDetectionThresholds cannot be executed while the board is "
                            "running")
        else:
            self._reply("Unrecognized action")

    def _execute_with(self, action: str, parameter: str) -> None:
        lower = action.lower()
        if lower == "manualstimtriggerpulse":
            self._trigger(parameter.lower())
        elif lower in ("manualstimtriggeron", "manualstimtriggeroff"):
            pass  # level triggers: not modelled
        elif lower == "uploadstimparameters":
            channel = self.channels.get(parameter.upper())
            if channel is not None and self.controller == STIM_CONTROLLER:
                self._upload(channel)
        else:
            self._reply("Unrecognized action")

    def _upload(self, channel: Channel) -> None:
        channel.uploaded = {name.lower(): channel.values[name.lower()] for name in STIM_ITEM_NAMES}

    def _set_runmode(self, value: str) -> None:
        if value == "run":
            if self.running:
                self._reply("Board must be stopped in order to start running")
                return
            self._start_running()
            self._deferred_batch = True
        elif value in ("record", "trigger"):
            if self.running:
                self._reply(f"Board must be stopped in order to start {value}"
                            + ("ing" if value == "record" else ""))
                return
            self._reply("Filename.BaseFilename and Filename.Path must both be specified before "
                        + ("recording can occur" if value == "record" else
                           "triggered recording can occur"))
        elif value == "stop":
            if not self.running:
                self._reply("Board must be running in order to stop")
                return
            self._stop_running()
            deferred, self._deferred = self._deferred, []
            for number, command in deferred:
                self._command(number, command)
        else:
            self._reply("Invalid value for SetRunMode command")

    # -- acquisition ------------------------------------------------------------------------------
    def _start_running(self) -> None:
        self._builder.join()
        self._sim = self._next_sim
        assert self._sim is not None
        self._sim.pulse_listener = self._ran
        self._prepare()
        self._t0 = time.monotonic()
        self._written_blocks = 0
        self._pending_write.clear()
        self._pending_spikes.clear()
        for channel in self.channels.values():
            channel.busy_until = -1
            channel.stim_words.clear()
            channel.was_below = False
        self.running = True
        self.log.append("running")

    def _ran(self, pulses: list[tuple[int, int, int, StimPulse]]) -> None:
        self.pulses += [(sample, electrode, pulse) for sample, _, electrode, pulse in pulses]

    def _stop_running(self) -> None:
        if self._sim is not None:
            self._sim.stop()
            self._sim.close()
            self._sim = None
        if self.running:
            self.log.append("stopped")
        self.running = False

    def _due(self) -> float:
        assert self._sim is not None
        return self._t0 + (self._sim.next_sample + FRAMES_PER_BLOCK) / self.sample_rate

    def _sample(self) -> int:
        """The sample the board is acquiring now."""
        sim = self._sim  # once: clock() reads it from another thread
        if sim is None:
            return 0
        if self.fast:
            return sim.next_sample
        now = int((time.monotonic() - self._t0) * self.sample_rate)
        return max(now, sim.next_sample)

    def _trigger(self, key: str) -> None:
        if not (self.running and key in [f"f{i}" for i in range(1, 9)]):
            return
        source = f"KeyPressF{key[1:]}"
        at = self._sample()
        groups: dict[tuple[int, float, int], list[tuple[int, StimPulse]]] = {}
        for channel in self.channels.values():
            p = channel.uploaded
            if not p["stimenabled"] or p["source"] != source or at < channel.busy_until:
                continue
            pulse = uploaded_pulse(p, self.step_uA)
            if pulse is None:
                continue
            count = int(p["numberofstimpulses"]) if p["pulseortrain"] == "PulseTrain" else 1
            if count < 1:
                continue
            period = float(p["pulsetrainperiodmicroseconds"])
            delay = int(round(p["posttriggerdelaymicroseconds"] * self.sample_rate / 1e6))
            groups.setdefault((count, period, delay), []).append((channel.electrode, pulse))
            start = at + delay
            words = stim_words(p, self.step_uA, self.sample_rate)
            step = int(round(period * self.sample_rate / 1e6)) if count > 1 else 0
            for k in range(count):
                channel.stim_words.append((start + k * step, words))
            end = start + (count - 1) * step + len(words)
            channel.busy_until = end + int(round(p["refractoryperiodmicroseconds"]
                                                 * self.sample_rate / 1e6))
        assert self._sim is not None
        for (count, period, delay), pulses in groups.items():
            rate = 1e6 / period if count > 1 and period > 0 else 0.0
            try:
                pattern = StimPattern(tuple(pulses), count, rate, at_sample=at + delay)
            except ValueError as exc:
                self.log.append(f"stimulation not run: {exc}")
                continue
            _, _, kind, problem = self._sim.admit(pattern)
            if kind:
                self.log.append(f"the culture did not take the pulse: {problem}")

    def _acquire(self) -> None:
        """Acquire the next block; write when TCPNumberDataBlocksPerWrite blocks are ready."""
        sim = self._sim
        assert sim is not None
        block = self._culture_block(sim)
        start = block.start_sample
        n = block.n_samples
        words = outputs(self.channels.values())
        for channel in self.channels.values():
            if channel.values["tcpdataoutputenabledspike"]:
                self._pending_spikes += spike_records(channel, block)
        if words:
            self._pending_write += waveform_block(block, words)
        for channel in self.channels.values():
            if channel.stim_words:
                channel.stim_words = [(s, w) for s, w in channel.stim_words
                                      if s + len(w) > start + n]
        self._written_blocks += 1
        if self._written_blocks % self.globals["tcpnumberdatablocksperwrite"][1] == 0:
            while self._injected:
                port, data = self._injected.popleft()
                (self.waveform if port == "waveform" else self.spike).send(data)
            if words or self._pending_write:
                self.waveform.send(bytes(self._pending_write))
            self.spike.send(bytes(self._pending_spikes))
            self._pending_write.clear()
            self._pending_spikes.clear()

    def _culture_block(self, sim: SimulatedMEA) -> Block:
        """The culture's next 128 samples (the simulator streams blocks of that size)."""
        while True:
            item = sim.read()
            if isinstance(item, Block):
                return item
