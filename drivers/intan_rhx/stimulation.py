"""Stimulation through RHX: patterns booked onto the keys F1-F8, waiting ones fired when
due, aborts, and the reports read from each stimulating channel's STIM band.

A mixin of RHXDriver: it shares the driver's state (the stim lock, the channel model, the
inbox) and asks RHX through the link mixin. Safety: ``abort_stimulation`` takes every waiting
pattern and counts the abort under ``_stim_lock``; ``_fire`` sends a trigger only under the
same lock and only if no abort came since the pattern was taken.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np

from drivers.intan_rhx.link import FRAMES_PER_BLOCK
from drivers.intan_rhx.settings import KEYS, Unmappable, _applies, _text, rhs_settings
from mea_control.driver import DriverError
from mea_control.types import StimPattern, StimReport

#: A pattern whose pulse has not shown in the STIM band this long (of the stream) after its
#: trigger did not run. Generous: RHX triggers at its board's clock, which its TCP stream
#: follows with a delay, and a pulse that ran must never be reported as not run.
REPORT_TIMEOUT_S = 2.0


@dataclass
class _Fired:
    """A pattern triggered and not yet seen in the STIM band."""

    ticket: int
    natives: frozenset[str]
    after: int  # the stream's end when it was sent: its pulse comes at or after this sample
    span: int  # samples from its first pulse's start to its last pulse's end


@dataclass
class _Waiting:
    """A pattern for a later sample, kept on this computer until the stream reaches it."""

    ticket: int
    pattern: StimPattern


@dataclass
class _Stats:
    fast: int = 0
    uploads: int = 0
    upload_channels: int = 0
    upload_commands: int = 0
    upload_s: list[float] = field(default_factory=list)


class Stimulation:
    """Booking, firing, aborting and reporting patterns (RHXDriver's stimulation)."""

    def stimulate(self, pattern: StimPattern) -> int:
        if self._state != "running":
            raise DriverError(f"{self.where} cannot stimulate: the device is {self._state}")
        with self._stim_lock:
            self._ticket += 1
            ticket, aborts = self._ticket, self._aborts
            if pattern.at_sample is not None and pattern.at_sample > (self._last_sample or 0):
                # RHX cannot schedule: it waits here, fired from read() when due
                bisect.insort(self._waiting, _Waiting(ticket, pattern),
                              key=lambda h: h.pattern.at_sample)
                return ticket
        self._fire(ticket, pattern, aborts)
        return ticket

    def _fire_due(self) -> None:
        while True:
            now = self._last_sample or 0
            with self._stim_lock:
                if not self._waiting or self._waiting[0].pattern.at_sample > now:
                    return
                due, aborts = self._waiting.pop(0), self._aborts
            self._fire(due.ticket, due.pattern, aborts)

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
        """Patterns waiting for a later sample, or taken to be fired and not yet triggered,
        will not run (reported "aborted"); then a round trip to RHX, so that on return
        RHX has read every trigger sent before the call. RHX cannot stop a triggered
        pattern: it runs whole, train included (docs/intan-rhx.md)."""
        with self._stim_lock:
            self._aborts += 1
            waiting, self._waiting = self._waiting, []
        for w in waiting:
            self._inbox.put(StimReport(w.ticket, w.pattern.at_sample, False, "aborted"))
        if self._state != "running" or self._inbox.lost:
            return
        try:
            self._ask([])
        except DriverError as exc:
            with self._lock:
                self._event("device_error", f"{self.where} did not confirm the abort: {exc}")

