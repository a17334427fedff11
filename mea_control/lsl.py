"""Lab Streaming Layer output: raw samples, spikes and markers for LSL receivers.

:class:`LslOutlet` is an engine sink that publishes up to three streams, named
after ``name`` (default ``mea-control``):

* ``<name>-raw``, type ``MEA``: int16 ADC counts, one channel per electrode, at
  the device's rate. Each channel in the description has its electrode label,
  a unit (``microvolts``) and a ``scale`` (uV per count): microvolts = value *
  scale. The type is not ``EEG`` on purpose: LabRecorder and MNE-LSL take any
  type; only tools that look for EEG streams alone would need it. Left out with
  ``raw=False``.
* ``<name>-spikes``, type ``Spikes``: irregular, double64, one sample per spike:
  (device sample index, electrode (channel) index, amplitude in uV).
* ``<name>-markers``, type ``Markers``: irregular, one string channel, a JSON
  object per stimulation pattern, finished trial, run event and the run's end.

Every description also has a ``device`` node (name, sample rate, uV per bit,
layout, electrode labels by channel index). The last sample of each raw block
is stamped with ``local_clock()`` as it is pushed; spikes and markers are
placed at their device sample from the latest block's stamp, so the three
streams line up (in ``--fast`` runs the stamps are squeezed: trust the sample
indices). ``source_id`` is ``<device name>:<stream name>``, stable across
restarts, so receivers reconnect by themselves. ``close()`` (at the end of the
run) waits ``LINGER_S`` for the last samples to leave when anyone is listening.

pylsl is optional: it is imported only when an outlet is made.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from mea_control.sinks import RunEvent, Sink, StimRecord
from mea_control.trials import Trial
from mea_control.types import Block, DeviceInfo, SpikeEvents

#: LSL content type of the raw stream.
RAW_TYPE = "MEA"
#: Seconds of raw data the outlet keeps for a receiver that falls behind.
RAW_BUFFER_S = 30
#: liblsl has no flush and drops what it has not sent yet when an outlet is destroyed: with
#: receivers connected, close() waits this long first so that they get the end of the run.
LINGER_S = 0.5


class LslUnavailable(Exception):
    """pylsl, or the liblsl library it loads, is not installed."""


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


class LslOutlet(Sink):
    """Publishes the run on the lab network as LSL streams; see the module docstring."""

    def __init__(self, info: DeviceInfo, name: str = "mea-control", raw: bool = True) -> None:
        try:
            import pylsl
        except ImportError:
            raise LslUnavailable(
                "LSL output needs pylsl: pip install pylsl (or pip install 'mea-control[lsl]')"
            ) from None
        except RuntimeError:  # pylsl is there but cannot load liblsl
            raise LslUnavailable(
                "pylsl cannot load the liblsl library: pip install --force-reinstall pylsl "
                "(or set PYLSL_LIB to liblsl's path)"
            ) from None
        self._lsl = pylsl
        self._clock = pylsl.local_clock
        self.info = info
        self.name = name
        labels = info.layout.labels
        if len(labels) != info.n_channels:
            labels = tuple(str(i) for i in range(info.n_channels))
        self.labels: tuple[str, ...] = tuple(labels)
        #: (device sample, LSL time) of the latest block's last sample
        self._anchor: tuple[int, float] | None = None
        scale = repr(float(info.uV_per_bit))
        self.raw = self._outlet(
            "raw", RAW_TYPE, info.sample_rate, "int16",
            [{"label": lab, "unit": "microvolts", "scale": scale} for lab in self.labels],
            max_buffered=RAW_BUFFER_S,
        ) if raw else None
        self.spikes = self._outlet(
            "spikes", "Spikes", pylsl.IRREGULAR_RATE, "double64",
            [{"label": "sample", "unit": "samples"}, {"label": "electrode", "unit": "index"},
             {"label": "amplitude", "unit": "microvolts"}],
        )
        self.markers = self._outlet(
            "markers", "Markers", pylsl.IRREGULAR_RATE, "string",
            [{"label": "marker", "unit": "json"}],
        )

    def _outlet(self, suffix: str, kind: str, rate: float, fmt: str,
                channels: list[dict[str, str]], max_buffered: int = 360) -> Any:
        stream = f"{self.name}-{suffix}"
        sinfo = self._lsl.StreamInfo(stream, kind, len(channels), rate, fmt,
                                     f"{self.info.name}:{stream}")
        desc = sinfo.desc()
        desc.append_child_value("manufacturer", "mea-control")
        device = desc.append_child("device")
        for key, value in (("name", self.info.name), ("sample_rate", self.info.sample_rate),
                           ("uV_per_bit", self.info.uV_per_bit),
                           ("layout", self.info.layout.name)):
            device.append_child_value(key, str(value))
        electrodes = device.append_child("electrodes")
        for label in self.labels:
            electrodes.append_child_value("label", label)
        nodes = desc.append_child("channels")
        for channel in channels:
            node = nodes.append_child("channel")
            for key, value in channel.items():
                node.append_child_value(key, value)
        return self._lsl.StreamOutlet(sinfo, max_buffered=max_buffered)

    def _time(self, sample: Any) -> Any:
        """LSL time of device sample(s), from the latest block's stamp (now if none yet)."""
        s0, t0 = self._anchor or (sample, self._clock())
        return t0 + (sample - s0) / self.info.sample_rate

    def _mark(self, at: int | None, /, **fields: Any) -> None:
        """Push one JSON marker stamped at device sample ``at`` (None: now)."""
        if self.markers is not None:
            text = json.dumps(fields, separators=(",", ":"), default=_plain)
            stamp = self._clock() if at is None else self._time(at)
            self.markers.push_sample([text], stamp)

    # -- Sink ------------------------------------------------------------------------
    def on_block(self, block: Block, filtered: np.ndarray | None) -> None:
        stamp = self._clock()
        self._anchor = (block.stop_sample - 1, stamp)
        if self.raw is not None:
            self.raw.push_chunk(block.data, stamp)

    def on_spikes(self, spikes: SpikeEvents) -> None:
        if self.spikes is None or not len(spikes):
            return
        chunk = np.column_stack((spikes.sample, spikes.channel, spikes.amplitude_uV))
        stamps = self._time(spikes.sample)
        self.spikes.push_chunk(chunk.astype(np.float64, copy=False), stamps.tolist())

    def on_stim(self, record: StimRecord) -> None:
        pattern = record.pattern
        executed = record.execution_sample
        self._mark(
            record.decision_sample if executed is None else executed,
            type="stim", status=record.status, ticket=record.ticket,
            trigger_sample=record.trigger_sample, decision_sample=record.decision_sample,
            execution_sample=executed, label=pattern.label, reason=record.reason,
            train_count=pattern.train_count, train_rate_hz=pattern.train_rate_hz,
            pulses=[
                {"electrode": self.labels[ch], "channel": ch, "mode": pulse.mode,
                 "amplitude": pulse.peak_amplitude, "unit": pulse.unit,
                 "duration_us": pulse.duration_us}
                for ch, pulse in pattern.pulses
            ],
        )

    def on_trial(self, trial: Trial) -> None:
        self._mark(
            trial.stim_sample, type="trial", index=trial.index, session=trial.session,
            status=trial.status, trigger_sample=trial.trigger_sample,
            stim_sample=trial.stim_sample, o=trial.o, s=trial.s, r=trial.r,
        )

    def on_event(self, event: RunEvent) -> None:
        self._mark(event.sample, type="event", kind=str(event.kind), message=event.message,
                   sample=event.sample)

    def on_stop(self, summary: dict[str, Any]) -> None:
        keys = ("duration_s", "spikes", "stims_executed", "trials", "interrupted", "error")
        self._mark(None, type="stop", **{k: summary.get(k) for k in keys})
        self.close()

    def close(self) -> None:
        """Destroy the outlets (receivers see the streams go); later calls do nothing.

        Waits ``LINGER_S`` first if anyone is listening, for the last samples to leave.
        """
        outlets = [o for o in (self.raw, self.spikes, self.markers) if o is not None]
        self.raw = self.spikes = self.markers = None
        if any(o.have_consumers() for o in outlets):
            time.sleep(LINGER_S)
        outlets.clear()  # the last references: liblsl destroys the outlets here
