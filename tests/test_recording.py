"""Recordings as labs use them: written by the CLI, read by pynwb, SpikeInterface and our reader."""

import json
import subprocess

import h5py
import numpy as np
import pytest
from conftest import ROOT, cli_command, imported_modules

from mea_control import recording
from mea_control.layouts import load_layout
from mea_control.recording.journal import Journal, journal_path, read_journal
from mea_control.sinks import EventKind
from mea_control.types import SpikeEvents

SERIES = "acquisition/ElectricalSeries"


def run_cli(*args, timeout=300):
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A short BSS run on the simulator, recorded; returns (nwb path, summary, stdout)."""
    folder = tmp_path_factory.mktemp("rec")
    nwb, summary = folder / "run.nwb", folder / "s.json"
    rig = folder / "rig.toml"
    rig.write_text('[rig]\nname = "bench 1"\n[recording]\nlab = "Culture Lab"\n'
                   'institution = "Some University"\nexperimenter = ["Doe, Jane"]\n')
    proc = run_cli("run", "protocols/bss_isomura.py", "--device", "sim://?seed=2", "--fast",
                   "--sessions", "1", "--param", "trials_per_session=12", "--seed", "5",
                   "--rig", str(rig), "--culture", "MEA-17", "--div", "31",
                   "--record", str(nwb), "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    return nwb, json.loads(summary.read_text()), proc.stdout


def test_pynwb_reads_structure_and_tables(recorded):
    from pynwb import NWBHDF5IO

    path, s, _ = recorded
    layout = load_layout("grid8x8_200um")
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        es = nwb.acquisition["ElectricalSeries"]
        assert es.data.dtype == np.int16 and es.data.shape == (round(s["duration_s"] * 25000), 64)
        assert es.conversion == pytest.approx(0.195e-6) and es.rate == 25000.0
        el = nwb.electrodes.to_dataframe()
        assert list(el["channel_name"]) == list(layout.labels)
        assert np.allclose(el[["rel_x", "rel_y"]].to_numpy(), layout.positions_um)
        assert nwb.lab == "Culture Lab" and list(nwb.experimenter) == ["Doe, Jane"]
        assert nwb.subject.subject_id == "MEA-17" and nwb.subject.age == "P31D"
        assert len(nwb.trials) == s["trials"] == 12
        assert nwb.trials["r"].data.shape == (12, 64)
        stim = nwb.intervals["stimulation"].to_dataframe()
        executed = stim[stim.status == "executed"]
        assert executed.ticket.nunique() == s["stims_executed"] > 0
        assert (executed.execution_sample >= 0).all()
        assert np.allclose(np.vstack(executed.phase_amplitudes), [-5.0, 5.0])
        spikes = nwb.processing["ecephys"]["detected_spikes"]
        assert len(spikes) == s["spikes"]
        assert len(nwb.units) == 64
        assert sum(len(t) for t in nwb.units["spike_times"][:]) == s["spikes"]
        kinds = nwb.processing["mea_control"]["events"]["kind"][:]
        assert kinds[0] == "start" and "stop" in list(kinds)
        # the file holds the kinds' plain text, as before they were an enumeration
        assert {type(k) for k in kinds} <= {str, bytes}
        assert {k.decode() if isinstance(k, bytes) else k for k in kinds} <= {
            kind.value for kind in EventKind}


def test_spikeinterface_reads_recording_and_sorting(recorded):
    se = pytest.importorskip("spikeinterface.extractors")
    path, s, _ = recorded
    layout = load_layout("grid8x8_200um")
    rec = se.read_nwb_recording(path, electrical_series_path=SERIES)
    assert rec.get_num_channels() == 64 and rec.get_sampling_frequency() == 25000.0
    assert list(rec.get_channel_ids()) == list(layout.labels)
    assert np.allclose(rec.get_channel_gains(), 0.195)
    assert np.allclose(rec.get_channel_locations(), layout.positions_um)
    assert rec.get_num_samples() == round(s["duration_s"] * 25000)
    sorting = se.read_nwb_sorting(path, electrical_series_path=SERIES)
    assert list(sorting.get_unit_ids()) == list(layout.labels)
    trains = [sorting.get_unit_spike_train(u) for u in sorting.get_unit_ids()]
    assert sum(len(t) for t in trains) == s["spikes"]
    with recording.open(path) as ours:
        first = ours.spikes.sample[ours.spikes.channel == 20] - ours.first_sample
        assert np.array_equal(trains[20], first)


def test_nwbinspector_finds_no_critical_issue(recorded):
    inspector = pytest.importorskip("nwbinspector")
    path, _, _ = recorded
    messages = list(inspector.inspect_nwbfile(nwbfile_path=str(path)))
    critical = [m for m in messages if m.importance.name in ("CRITICAL", "PYNWB_VALIDATION")]
    assert not critical, [m.message for m in critical]


def test_reader_matches_the_run(recorded):
    path, s, _ = recorded
    with recording.open(path) as rec:
        assert rec.complete and recording.health(rec) == ("complete", [])
        assert rec.n_samples == round(s["duration_s"] * 25000) and rec.n_channels == 64
        assert rec.microvolts(0, 100).shape == (100, 64)
        assert len(rec.spikes) == s["spikes"]
        assert np.all(np.diff(rec.spikes.sample) >= 0)
        pulses = rec.pulses
        executed = np.asarray(pulses["status"]) == "executed"
        assert len(np.unique(np.asarray(pulses["ticket"])[executed])) == s["stims_executed"]
        assert all(len(a) == 2 for a in pulses["phase_amplitudes"])
        trials = rec.trials
        assert len(trials) == 12 and trials.r.shape == (12, 64) and trials.o.shape == (12, 32)
        assert trials.stim_channels.shape == (32,)
        assert [e["kind"] for e in rec.events][0] == "start"
        prov = rec.provenance
        assert prov["protocol_source"] == (ROOT / "protocols/bss_isomura.py").read_text()
        assert prov["parameters"]["trials_per_session"] == 12 and prov["seed"] == 5
        assert prov["device_url"] == "sim://?seed=2"
        assert prov["limits"] == s["limits"]
        assert prov["software_version"] == s["software_version"]
        assert rec.summary["spikes"] == s["spikes"]
        assert not journal_path(path).exists()


def test_trial_table_in_file_matches_npz(tmp_path):
    nwb, npz = tmp_path / "r.nwb", tmp_path / "t.npz"
    proc = run_cli("run", "bss_isomura", "--device", "sim://?seed=1", "--fast", "--sessions",
                   "2", "--param", "trials_per_session=4", "--record", str(nwb), "--no-raw",
                   "--trials", str(npz), "--quiet")
    assert proc.returncode == 0, proc.stderr
    from mea_control.trials import TrialTable

    expected = TrialTable.load_npz(npz)
    with recording.open(nwb) as rec:
        assert rec.samples is None
        got = rec.trials
        for name in expected.__dataclass_fields__:
            assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    with h5py.File(nwb, "r") as f:
        assert SERIES not in f
    se = pytest.importorskip("spikeinterface.extractors")
    sorting = se.read_nwb_sorting(nwb, sampling_frequency=25000.0, t_start=0.0)
    assert sorting.get_num_units() == 64


def test_info_prints_a_readable_summary(recorded):
    path, s, stdout = recorded
    assert f"mea-control info {path}" in stdout
    proc = run_cli("info", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"spikes          {s['spikes']} on" in out
    assert "64 channels at 25000 Hz" in out and "complete" in out
    assert "trials          12 in 1 session(s)" in out
    assert "protocol        bss_isomura" in out and "health          ok" in out
    assert "ended           completed, 12 of 12 trials\n" in out


def _with_summary(path, tmp_path, **fields):
    """A copy of the recording at ``path`` whose end-of-run summary has ``fields`` (None:
    the field removed, as in a file written before the summary had it)."""
    import shutil

    copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}.nwb"
    shutil.copy(path, copy)
    with h5py.File(copy, "r+") as f:
        data = f["scratch/mea_control_summary"]
        summary = {**json.loads(data.asstr()[()]), **fields}
        data[()] = json.dumps({k: v for k, v in summary.items() if v is not None})
    return copy


@pytest.mark.parametrize("fields, ended, health", [
    ({"ended": "stopped by the operator, 7 of 12 trials", "ended_early": True},
     "stopped by the operator, 7 of 12 trials",
     "ended early: stopped by the operator, 7 of 12 trials"),
    ({"ended": "stopped: the window was closed", "ended_early": False},
     "stopped: the window was closed", "ok"),
    ({"ended": "ended by a device error, 3 of 12 trials", "ended_early": True,
      "error": "device"},
     "ended by a device error, 3 of 12 trials", "the run ended with a device error"),
    ({"ended": None, "ended_early": None}, None, "ok"),  # a file from before: no line
], ids=["operator", "open-ended", "error", "older-file"])
def test_describe_says_how_the_run_ended(recorded, tmp_path, fields, ended, health):
    with recording.open(_with_summary(recorded[0], tmp_path, **fields)) as rec:
        text = recording.describe(rec)
    lines = dict(line.split(None, 1) for line in text.splitlines())
    assert lines.get("ended") == ended
    assert lines["health"] == health


#: What the closed loop needs and the reader, the file commands and the recording process not.
CLOSED_LOOP = ("mea_control.engine", "mea_control.dsp", "numba")


@pytest.mark.parametrize("argv", [
    ["-c", "import mea_control.recording"],
    ["-c", "import mea_control.recording.writer"],  # the recorder: a sink, not the loop
    ["-m", "mea_control.cli", "info", "{nwb}"],
    ["-m", "mea_control.cli", "recover", "{nwb}"],  # refuses a complete file, after the imports
    ["-m", "mea_control.cli", "export", "{nwb}", "--compress", "-o", "{tmp}/copy.nwb"],
    ["-m", "mea_control.recording", "{tmp}/process.nwb", "{tmp}/process.journal", "0", "100"],
], ids=["import", "writer", "info", "recover", "export", "recording-process"])
def test_file_tools_do_not_import_the_closed_loop(recorded, tmp_path, argv):
    """Reading a file, the file commands and the recording process start without the
    engine, the DSP and numba (`mea-control info` was paying a second for them)."""
    nwb = recorded[0]
    modules = imported_modules(*(a.format(nwb=nwb, tmp=tmp_path) for a in argv))
    assert "mea_control.recording.reader" in modules or "mea_control.recording.disk" in modules
    assert modules.intersection(CLOSED_LOOP) == set()


def test_export_compressed_copy_reads_the_same(recorded, tmp_path):
    path, s, _ = recorded
    out = tmp_path / "small.nwb"
    proc = run_cli("export", str(path), "--compress", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size < path.stat().st_size
    with recording.open(out) as copy, recording.open(path) as orig:
        assert np.array_equal(copy.samples[:5000], orig.samples[:5000])
        assert len(copy.spikes) == s["spikes"]
    again = run_cli("export", str(path), "--compress", "lzf", "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr


def test_decisions_are_recorded(tmp_path):
    protocol = tmp_path / "chooser.py"
    protocol.write_text(
        "from mea_control.protocol import Protocol\n\n\n"
        "class Chooser(Protocol):\n"
        '    """Records a made-up choice every 100 blocks."""\n\n'
        "    def setup(self, ctx):\n        self.n = 0\n\n"
        "    def on_block(self, ctx, block, filtered):\n"
        "        self.n += 1\n"
        "        if self.n % 100 == 0:\n"
        "            ctx.decision(self.n % 3, candidates=[0, 1, 2], scores=[0.1, 0.5, 0.4],\n"
        "                         rule='infomax', sample=7, time=0.5, record='x')\n"
    )
    nwb = tmp_path / "d.nwb"
    proc = run_cli("run", str(protocol), "--fast", "--duration", "1", "--record", str(nwb),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    with recording.open(nwb) as rec:
        d = rec.decisions
    assert len(d) == 10
    assert d[0]["choice"] == 1 and d[0]["scores"] == [0.1, 0.5, 0.4]
    assert d[0]["details"] == {"rule": "infomax", "sample": 7, "time": 0.5, "record": "x"}
    assert d[0]["sample"] == 100 * 25 and d[0]["time"] == pytest.approx(0.1)


def test_journal_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "x.nwb.journal"
    j = Journal(path)
    j.write("start", {"first_sample": 7})
    j.write_spikes(SpikeEvents(np.array([10, 12]), np.array([3, 4]), np.array([-50.0, -60.0])))
    j.write("event", {"sample": 12, "kind": "gap", "message": "3 samples missing"})
    j.close()
    with open(path, "a") as f:
        f.write('{"record": "stim", "ticket": 1, "lab')  # a crash mid-line
    c = read_journal(path)
    assert c.start == {"first_sample": 7} and c.torn_lines == 1
    assert list(c.spikes.sample) == [10, 12] and list(c.spikes.channel) == [3, 4]
    assert c.events == [{"sample": 12, "kind": "gap", "message": "3 samples missing"}]


def test_readme_reading_examples_run(recorded):
    import re

    path, s, _ = recorded
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Recordings"):]
    for block in re.findall(r"```python\n(.*?)```", section, re.S)[:2]:
        exec(block.replace('"run.nwb"', repr(str(path))), {})  # noqa: S102 - the README's code



SOURCELESS = '''\
"""A pulse on one electrode a trial, no hidden sources."""
from mea_control.protocol import Protocol, Trials, TrialSpec
from mea_control.types import StimPattern, StimPulse


class Probe(Protocol):
    name = "probe"

    def setup(self, ctx):
        self.channel = next(c for c in range(ctx.n_channels) if ctx.can_stimulate(c))
        ctx.use_trials(Trials(self.design, n_trials=3, stim_channels=[self.channel],
                              isi_s=0.3, window_ms=(10.0, 100.0), first_trial_s=0.2))

    def design(self, ctx, index):
        return TrialSpec(StimPattern.single([self.channel], StimPulse.biphasic(4.0, 200.0)), ())
'''


def test_a_trial_design_without_sources_is_recorded(tmp_path):
    protocol, nwb = tmp_path / "probe.py", tmp_path / "p.nwb"
    protocol.write_text(SOURCELESS)
    proc = run_cli("run", str(protocol), "--device", "sim://?seed=1", "--fast", "--record",
                   str(nwb), "--no-raw", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with recording.open(nwb) as rec:
        assert rec.complete and len(rec.trials) == 3
        assert rec.trials.s.shape == (3, 0) and rec.trials.o.shape == (3, 1)
