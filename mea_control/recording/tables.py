"""From side journal to NWB tables: written at a clean stop, or by ``recover`` after a crash.

Tables added (times in seconds from the run's first sample; samples are the
device's own sample numbers):

- ``processing/ecephys/detected_spikes``: sample, time, electrode, amplitude_uV.
- ``units``: one multi-unit per electrode (``unit_name`` = label), so
  SpikeInterface's ``read_nwb_sorting`` works.
- ``intervals/stimulation``: one row per pulse per electrode: times,
  electrode, mode, phase amplitudes/durations/charges, ticket, the pattern's
  trigger/decision/requested/execution samples, status and reason.
- ``intervals/trials``: o, s, r, r_pre, session, samples, status.
- ``processing/mea_control/events`` and ``decisions``.
- ``scratch/mea_control_summary``: the run summary; its presence marks a complete file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mea_control.recording import nwbfile
from mea_control.recording.errors import RecordingError
from mea_control.recording.journal import JournalContents, journal_path, read_journal
from mea_control.trials import Trial
from mea_control.types import DeviceInfo

NO_SAMPLE = -1


def stim_record(record: Any, info: DeviceInfo) -> dict[str, Any]:
    """A StimRecord as a journal record (plain JSON types)."""
    p = record.pattern
    return {
        "ticket": NO_SAMPLE if record.ticket is None else int(record.ticket),
        "label": p.label,
        "status": record.status,
        "reason": record.reason,
        "trigger_sample": int(record.trigger_sample),
        "decision_sample": int(record.decision_sample),
        "requested_sample": NO_SAMPLE if p.at_sample is None else int(p.at_sample),
        "execution_sample": int(record.execution_sample) if record.status == "executed"
        else NO_SAMPLE,
        # a train the device cut lists only the pulses that ran
        "offsets": p.pulse_offsets(info.sample_rate)[:record.pulses_run],
        "pulses": [
            {"channel": ch, "mode": pulse.mode, "unit": pulse.unit,
             "durations_us": [d for d, _ in pulse.phases],
             "amplitudes": [a for _, a in pulse.phases],
             "charges": pulse.phase_charges()}
            for ch, pulse in p.pulses
        ],
    }


def trial_record(trial: Trial) -> dict[str, Any]:
    return {
        "index": trial.index, "session": trial.session,
        "trigger_sample": trial.trigger_sample, "decision_sample": trial.decision_sample,
        "stim_sample": trial.stim_sample, "ticket": NO_SAMPLE if trial.ticket is None
        else int(trial.ticket), "status": trial.status,
        "o": trial.o.tolist(), "s": trial.s.tolist(), "r": trial.r.tolist(),
        "r_pre": trial.r_pre.tolist(), "stim_channels": list(trial.stim_channels),
        "window": list(trial.window),
    }


DECISION_FIELDS = ("choice", "candidates", "scores", "details")


def decision_record(sample: int, decision: dict[str, Any]) -> dict[str, Any]:
    """A model decision as a journal record: fixed fields, anything else under ``details``."""
    fixed = {k: decision.get(k) for k in DECISION_FIELDS[:3]}
    details = {k: v for k, v in decision.items() if k not in fixed}
    return {"sample": int(sample), **fixed, "details": details}


def _column(name: str, description: str, data: Any, dtype: Any = None):
    """A table column from an array, or from a list of text."""
    from hdmf.common import VectorData
    if dtype is not None:
        data = np.asarray(data, dtype=dtype)
    elif not isinstance(data, np.ndarray):
        data = list(data) or np.array([], dtype=str)  # hdmf cannot type an empty list
    return VectorData(name=name, description=description, data=data)


def _ragged(name: str, description: str, rows: list[list[float]]) -> list:
    from hdmf.common import VectorData, VectorIndex
    flat = np.array([v for row in rows for v in row], np.float64)
    data = VectorData(name=name, description=description, data=flat)
    ends = np.cumsum([len(row) for row in rows]).astype(np.int64)
    return [data, VectorIndex(name=f"{name}_index", data=ends, target=data)]


def _electrode_region(nwb: Any, name: str, description: str, channels: Any):
    from hdmf.common import DynamicTableRegion
    return DynamicTableRegion(name=name, description=description,
                              data=np.asarray(channels, np.int64), table=nwb.electrodes)


def _spikes_table(nwb: Any, c: JournalContents, t0: int, fs: float):
    from hdmf.common import DynamicTable
    sp = c.spikes
    return DynamicTable(
        name="detected_spikes",
        description="threshold crossings detected online by mea-control (all electrodes)",
        id=np.arange(len(sp)),
        columns=[
            _column("sample", "device sample of the spike's peak", sp.sample, np.int64),
            _column("time", "seconds from the first sample", (sp.sample - t0) / fs, np.float64),
            _electrode_region(nwb, "electrode", "electrode of the spike", sp.channel),
            _column("amplitude_uV", "peak of the band-passed signal, uV", sp.amplitude_uV,
                    np.float32),
        ],
    )


def _units(nwb: Any, c: JournalContents, t0: int, fs: float, labels: list[str]):
    from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
    from pynwb.misc import Units

    sp = c.spikes
    order = np.lexsort((sp.sample, sp.channel))  # by electrode, then time
    times = VectorData(name="spike_times", description="spike times, s",
                       data=(sp.sample[order] - t0) / fs)
    counts = np.bincount(sp.channel, minlength=len(labels))
    n = len(labels)
    electrodes = DynamicTableRegion(name="electrodes", description="the unit's electrode",
                                    data=np.arange(n), table=nwb.electrodes)
    return Units(
        name="units", resolution=1.0 / fs, electrode_table=nwb.electrodes,
        description="one multi-unit per electrode: its detected spikes",
        id=np.arange(n),
        columns=[
            times,
            VectorIndex(name="spike_times_index", data=np.cumsum(counts), target=times),
            electrodes,
            VectorIndex(name="electrodes_index", data=np.arange(1, n + 1), target=electrodes),
            _column("unit_name", "electrode label", labels),
        ],
    )


def stim_rows(stims: list[dict[str, Any]], t0: int, fs: float) -> list[dict[str, Any]]:
    """Journal pattern records -> one row per pulse per electrode, keyed like the NWB columns."""
    rows: list[dict[str, Any]] = []
    for rec in stims:
        base = rec["execution_sample"]
        if base == NO_SAMPLE:
            base = rec["requested_sample"] if rec["requested_sample"] != NO_SAMPLE \
                else rec["decision_sample"]
        for k, offset in enumerate(rec["offsets"]):
            own = {w: rec[f"{w}_sample"] for w in SAMPLES}  # the pulse's own samples
            for w in ("requested", "execution"):
                if own[w] != NO_SAMPLE:
                    own[w] += offset
            for pulse in rec["pulses"]:
                start = (base + offset - t0) / fs
                rows.append({
                    "start_time": start,
                    "stop_time": start + sum(pulse["durations_us"]) * 1e-6,
                    "electrode": pulse["channel"],
                    "mode": pulse["mode"],
                    "amplitude_unit": pulse["unit"],
                    "phase_amplitudes": pulse["amplitudes"],
                    "phase_durations_us": pulse["durations_us"],
                    "phase_charges": pulse["charges"],
                    "train_pulse": k,
                    "ticket": rec["ticket"],
                    "pattern_label": rec["label"],
                    **{f"{w}_sample": own[w] for w in SAMPLES},
                    "status": rec["status"],
                    "reason": rec["reason"],
                })
    return rows


SAMPLES = {
    "trigger": "sample of what caused the pattern",
    "decision": "sample when the loop decided it",
    "requested": "sample this pulse was scheduled for (-1: as soon as possible)",
    "execution": "sample the device ran this pulse (-1: not run)",
}


def _stimulation_table(nwb: Any, c: JournalContents, t0: int, fs: float):
    from pynwb.epoch import TimeIntervals
    rows = stim_rows(c.stims, t0, fs)

    def col(key: str) -> list[Any]:
        return [r[key] for r in rows]

    cols = [
        _column("start_time", "pulse onset, s (planned time when not run)", col("start_time"),
                np.float64),
        _column("stop_time", "pulse end, s", col("stop_time"), np.float64),
        _electrode_region(nwb, "electrode", "stimulated electrode", col("electrode")),
        _column("mode", "current or voltage", col("mode")),
        _column("amplitude_unit", "uA (current) or mV (voltage)", col("amplitude_unit")),
        *_ragged("phase_amplitudes", "amplitude of each phase (uA or mV; 0 = gap)",
                 col("phase_amplitudes")),
        *_ragged("phase_durations_us", "duration of each phase, us", col("phase_durations_us")),
        *_ragged("phase_charges", "charge of each non-zero phase (nC, or mV*us in voltage mode)",
                 col("phase_charges")),
        _column("train_pulse", "index of the pulse within its train", col("train_pulse"),
                np.int32),
        _column("ticket", "the device's ticket for the pattern (-1: never sent)", col("ticket"),
                np.int64),
        _column("pattern_label", "the protocol's label for the pattern", col("pattern_label")),
        *[_column(f"{k}_sample", text, col(f"{k}_sample"), np.int64)
          for k, text in SAMPLES.items()],
        _column("status", "executed, refused (safety gate), dropped (device) or sent "
                "(no report before the end)", col("status")),
        _column("reason", "why it was refused or dropped", col("reason")),
    ]
    return TimeIntervals(name="stimulation", id=np.arange(len(rows)), columns=cols,
                         description="every stimulation pulse mea-control sent or refused")


def _trials_table(c: JournalContents, t0: int, fs: float):
    from pynwb.epoch import TimeIntervals
    tr = c.trials
    n = len(tr)

    def arr(key: str, dtype: Any, width: int | None = None) -> np.ndarray:
        """A column; ``width`` values a trial for a 2-D one (0: a design without sources)."""
        shape = (n,) if width is None else (n, width)
        return np.array([t[key] for t in tr], dtype).reshape(shape)

    window = np.array([t["window"] for t in tr], np.int64).reshape(n, 2)
    stim = arr("stim_sample", np.int64)
    first = tr[0] if tr else {"o": [], "s": [], "r": []}
    cols = [
        _column("start_time", "start of the response window, s", (stim + window[:, 0] - t0) / fs),
        _column("stop_time", "end of the response window, s", (stim + window[:, 1] - t0) / fs),
        _column("index", "trial number in the run", arr("index", np.int64)),
        _column("session", "session number", arr("session", np.int32)),
        _column("trigger_sample", "scheduled sample of the trial", arr("trigger_sample",
                                                                         np.int64)),
        _column("decision_sample", "sample when the pattern was chosen",
                arr("decision_sample", np.int64)),
        _column("stim_sample", "sample the pulse ran (the trigger when none ran)", stim),
        _column("o", "1 where a design electrode was stimulated (columns: stim electrodes)",
                arr("o", np.uint8, len(first["o"]))),
        _column("s", "hidden-source labels", arr("s", np.uint8, len(first["s"]))),
        _column("r", "spikes per electrode in the response window", arr("r", np.int32,
                                                                          len(first["r"]))),
        _column("r_pre", "spikes per electrode in as long a window before the trigger",
                arr("r_pre", np.int32, len(first["r"]))),
        _column("status", "executed, none, refused, dropped or unconfirmed",
                [t["status"] for t in tr]),
        _column("ticket", "device ticket of the pattern (-1: none)", arr("ticket", np.int64)),
    ]
    return TimeIntervals(name="trials", id=np.arange(n), columns=cols,
                         description="trials of the protocol's design: stimuli o, sources s, "
                         "responses r")


def _log_table(name: str, description: str, records: list[dict[str, Any]], t0: int, fs: float,
               text: dict[str, str]):
    from hdmf.common import DynamicTable
    sample = np.array([r["sample"] for r in records], np.int64)
    cols = [_column("sample", "device sample", sample),
            _column("time", "seconds from the first sample", (sample - t0) / fs)]
    for key, desc in text.items():
        cols.append(_column(key, desc, [r[key] if isinstance(r[key], str)
                                        else json.dumps(r[key], default=str) for r in records]))
    return DynamicTable(name=name, description=description, id=np.arange(len(records)),
                        columns=cols)


def finalize(path: str | Path, recovered: bool = False) -> JournalContents:
    """Write the side journal's records into the NWB file as tables, then delete the journal."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    jpath = journal_path(path)
    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        if nwbfile.SUMMARY in nwb.scratch:
            raise RecordingError(f"{path} is already complete; nothing to recover")
        prov = json.loads(str(nwb.scratch[nwbfile.PROVENANCE].data))
        fs = float(prov["device_info"]["sample_rate"])
        labels = [str(x) for x in nwb.electrodes["channel_name"].data[:]]
        c = read_journal(jpath, len(labels))  # records of electrodes beyond these: corrupted
        t0 = int(c.start["first_sample"]) if c.start else 0
        nwb.create_processing_module("ecephys", "spikes detected online").add(
            _spikes_table(nwb, c, t0, fs))
        nwb.units = _units(nwb, c, t0, fs, labels)
        if c.stims:
            nwb.add_time_intervals(_stimulation_table(nwb, c, t0, fs))
        if c.trials:
            nwb.trials = _trials_table(c, t0, fs)
        log = nwb.create_processing_module("mea_control", "run log and model decisions")
        log.add(_log_table("events", "run events: start, stop, gaps, watchdog, refusals, "
                           "errors, data lost", c.events, t0, fs,
                           {"kind": "event kind", "message": "what happened"}))
        if c.decisions:
            log.add(_log_table("decisions", "stimulus choices of the model (JSON values)",
                               c.decisions, t0, fs, {k: k for k in DECISION_FIELDS}))
        summary = dict(c.summary["summary"]) if c.summary else {}
        summary["first_sample"] = t0
        if c.trials:
            summary["trial_stim_channels"] = c.trials[0]["stim_channels"]
        if recovered:
            summary["recovered"] = {"torn_journal_lines": c.torn_lines,
                                    "note": "the run did not stop cleanly; tables hold what "
                                    "the side journal had flushed"}
        nwb.add_scratch(json.dumps(summary, indent=1, default=str), name=nwbfile.SUMMARY,
                        description="mea-control end-of-run summary (JSON)")
        io.write(nwb)
    jpath.unlink()
    return c


def recover(path: str | Path) -> JournalContents:
    """Write a crashed run's side journal into its file (``mea-control recover``)."""
    from mea_control.recording.reader import DAMAGE, Recording

    path = Path(path)
    with Recording(path) as rec:  # raises a clear error for anything but a recording
        complete = rec.complete
    if complete:
        raise RecordingError(f"{path} is complete (it stopped cleanly); nothing to recover")
    if not journal_path(path).exists():
        raise RecordingError(
            f"{path}: its side journal {journal_path(path).name} is gone, so spikes, pulses "
            "and trials cannot be recovered; the raw samples in the file are readable as they are"
        )
    try:
        return finalize(path, recovered=True)
    except RecordingError:
        raise
    except DAMAGE as exc:  # pynwb reads the whole file: damage anywhere shows here
        raise RecordingError(
            f"{path}: damaged recording; its tables could not be written into it "
            f"({type(exc).__name__}: {exc}). The side journal is kept; `mea-control info` "
            "reads what is readable"
        ) from None
