"""The check before a run starts (mea_control.preflight): what a protocol will send against
the limits in force, its own set-up checks, and the CLI that stops before anything runs."""

import contextlib
import json
import subprocess
import threading

import numpy as np
import pytest
from conftest import ROOT, cli_command

from hardware_sim.device import PtyLink, SimDevice
from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.layouts import load_layout
from mea_control.limits import SafetyLimits
from mea_control.preflight import check_start
from mea_control.protocol import Parameter, Protocol, ProtocolError, load_protocol
from mea_control.types import Capabilities, DeviceInfo, StimPattern, StimPulse


def device(stim_modes=("current", "voltage"), **limits):
    """A device with the 8x8 layout, at 25 kHz, with its own ``limits``."""
    return DeviceInfo("test device", 64, 25_000.0, 0.195, load_layout(),
                      Capabilities(stim_modes=stim_modes), limits=limits)


def protocol(name, **values):
    cls, _ = load_protocol(name)
    return cls(**values)


def refusal(proto, info=None, limits=None, seed=0):
    """check_start's message, or None when it lets the run start."""
    try:
        check_start(proto, info or device(), limits or SafetyLimits(), seed)
    except ProtocolError as exc:
        return str(exc)
    return None


def test_the_shipped_protocols_start_with_their_defaults():
    for name in ("bss_isomura", "fep_closed_loop", "spontaneous"):
        assert refusal(protocol(name)) is None


@pytest.mark.parametrize(("values", "message"), [
    ({"amplitude": 500.0}, "current 500.00 uA on electrode 12 exceeds max_current_uA = 10.00 uA "
                           "(the default limit); set by amplitude = 500"),
    ({"phase_us": 600.0}, "phase duration 600.00 us on electrode 12 exceeds max_phase_us = "
                          "500.00 us (the default limit); set by phase_us = 600"),
    ({"phase_us": 10.0}, "phase duration 10.00 us on electrode 12 is below min_phase_us"),
    ({"pulse_mode": "voltage", "amplitude": 1000.0},
     "voltage 1000.00 mV on electrode 12 exceeds max_voltage_mV = 900.00 mV"),
    ({"amplitude": 9.0, "phase_us": 450.0}, "charge per phase 4.05 nC on electrode 12 exceeds "
                                            "max_charge_nC = 4.00 nC (the default limit)"),
])
def test_a_value_the_gate_would_refuse_stops_the_start_naming_value_limit_and_parameter(
        values, message):
    text = refusal(protocol("bss_isomura", **values))
    assert text == f"bss_isomura cannot start: {message}" or text.startswith(
        f"bss_isomura cannot start: {message}")


class _Twenty(Protocol):
    """Twenty pulses of 20 uA."""

    parameters = {"pulses": Parameter(int, 20), "window_ms": Parameter(float, 20.0, unit="ms"),
                  "amplitude_uA": Parameter(float, 20.0, unit="uA")}

    def planned_patterns(self, ctx):
        return [StimPattern.train("44", StimPulse.biphasic(self.p.amplitude_uA, 200),
                                  self.p.pulses, 10.0)]


def test_of_several_parameters_with_the_refused_value_the_one_in_the_limits_unit_is_named():
    assert refusal(_Twenty()).endswith("(the default limit); set by amplitude_uA = 20")


def test_the_message_says_whose_limit_it_is():
    five = protocol("bss_isomura", amplitude=5.0)
    rig = SafetyLimits(max_current_uA=4.0)
    assert "max_current_uA = 4.00 uA (the rig's limit); set by amplitude = 5" in refusal(
        five, limits=rig)
    assert "max_current_uA = 3.00 uA (the device's limit)" in refusal(
        five, info=device(max_current_uA=3.0), limits=rig)
    assert refusal(five, limits=SafetyLimits(max_current_uA=20.0)) is None


def test_a_mode_the_device_lacks_and_electrodes_it_forbids_are_caught():
    voltage = protocol("bss_isomura", pulse_mode="voltage", amplitude=100.0)
    assert "voltage stimulation on electrode 12: test device supports current" in refusal(
        voltage, info=device(stim_modes=("current",)))
    labels = ",".join(f"{c}{r}" for c in range(1, 5) for r in range(1, 9))
    chosen = protocol("bss_isomura", electrodes=labels)
    assert refusal(chosen) is None
    text = refusal(chosen, limits=SafetyLimits(forbidden=("23",)))
    assert text.startswith("bss_isomura cannot start: electrodes: 23 cannot stimulate here")
    assert "give 32 different labels" in refusal(protocol("bss_isomura", electrodes="11,12"))


def _train(count, rate_hz):
    pattern = StimPattern(((11, StimPulse.biphasic(5.0, 200.0)),), train_count=count,
                          train_rate_hz=rate_hz)

    class Train(Protocol):
        parameters = {"count": Parameter(int, count), "rate_hz": Parameter(float, rate_hz)}

        def planned_patterns(self, ctx):
            return [pattern]

    return Train()


def test_the_pulses_of_one_train_are_checked_together():
    assert refusal(_train(10, 200.0)) is None
    text = refusal(_train(11, 250.0))
    assert "11 pulses in 50 ms" in text and "exceeds burst_rate_hz = 200.00 Hz" in text
    assert "max_train_pulses" in refusal(_train(1001, 20.0))


def _planning(plan):
    class Planned(Protocol):
        parameters = {"bursts": Parameter(int, 10)}

        def planned_patterns(self, ctx):
            return plan(ctx)

    return Planned()


def _tetanus(bursts, burst_rate_hz, electrodes=("45",)):
    """Bursts of 20 pulses at 100 Hz on the electrode labelled 45."""
    return StimPattern.bursts(list(electrodes), StimPulse.biphasic(5.0, 200.0), bursts,
                              burst_rate_hz, 20, 100.0, at_sample=5000, sample_rate=25_000.0)


def test_a_burst_sequence_is_checked_together_at_its_samples():
    assert refusal(_planning(lambda ctx: [_tetanus(10, 1.0)])) is None  # 200 pulses in 10 s
    # 25 bursts of 20 at 2.5 Hz: each train passes alone, 500 pulses in 10 s do not
    text = refusal(_planning(lambda ctx: [_tetanus(25, 2.5)]))
    assert text.startswith("Planned cannot start: 420 pulses in 10 s (42.00 Hz)")
    assert "on electrode 45 exceeds mean_rate_hz = 40.00 Hz" in text
    assert refusal(_planning(lambda ctx: _tetanus(25, 2.5))) is None  # as separate patterns
    unbooked = [StimPattern.train("45", StimPulse.biphasic(5.0, 200.0), 20, 100.0)]
    assert "books each of its patterns at a sample" in refusal(_planning(lambda ctx: [unbooked]))


def test_labels_in_a_plan_are_resolved_on_the_device_layout():
    assert refusal(_planning(lambda ctx: [_tetanus(2, 1.0, ["45", 3])])) is None
    assert refusal(_planning(lambda ctx: [_tetanus(2, 1.0, ["99"])])) == (
        "Planned cannot start: layout grid8x8_200um has no electrode '99'")
    # the electrode labelled 45 (channel 28) is forbidden; channel 45 (labelled 66) is not
    forbid_45 = SafetyLimits(forbidden=("45",))
    text = refusal(_planning(lambda ctx: [_tetanus(2, 1.0, ["45"])]), limits=forbid_45)
    assert "electrode 45 is forbidden" in text
    assert refusal(_planning(lambda ctx: [_tetanus(2, 1.0, [45])]), limits=forbid_45) is None


def test_a_protocol_that_cannot_tell_has_its_declared_amplitudes_checked():
    class Blind(Protocol):
        parameters = {"current": Parameter(float, 5.0, unit="uA"),
                      "voltage": Parameter(float, 100.0, unit="mV"),
                      "isi_s": Parameter(float, 500.0, unit="s")}

    assert refusal(Blind()) is None  # isi_s is no amplitude
    assert refusal(Blind(current=50.0)) == ("Blind cannot start: current = 50 uA exceeds "
                                            "max_current_uA = 10 uA (the default limit)")
    assert "voltage = 1000 mV exceeds max_voltage_mV = 900 mV" in refusal(Blind(voltage=1000.0))

    class Silent(Protocol):
        parameters = {"gain": Parameter(float, 1e6)}

    assert refusal(Silent()) is None  # cannot tell, nothing declared: not blocked


def test_a_plan_cannot_stimulate():
    class Eager(Protocol):
        def planned_patterns(self, ctx):
            ctx.stimulate(StimPattern.single([11], StimPulse.biphasic(5.0, 200.0)))

    with pytest.raises(RuntimeError, match="must not stimulate"):
        check_start(Eager(), device(), SafetyLimits())


def test_fep_short_calibration_that_cannot_find_ensembles_is_caught_before_the_run():
    short = {"sessions": 2, "trials_per_session": 4}
    text = refusal(protocol("fep_closed_loop", job="control", **short))
    assert text == ("fep_closed_loop cannot start: job=control needs a trial with only source 1 "
                    "on in every calibration session to find the ensembles, and the session's "
                    "sequence (4 trials) has none: use more trials_per_session")
    assert "job=train needs" in refusal(protocol("fep_closed_loop", job="train", **short))
    assert refusal(protocol("fep_closed_loop", job="identify", **short)) is None  # needs none
    assert refusal(protocol("fep_closed_loop", job="control", sessions=2,
                            trials_per_session=32)) is None


def _calibration_verdicts(seeds, **values):
    """Per seed: the check's verdict on a control run (True: it may start)."""
    return [refusal(protocol("fep_closed_loop", job="control", **values), seed=seed) is None
            for seed in seeds]


def test_the_check_draws_the_sequences_the_run_draws():
    """The plan's ctx.rng draws as the run's: the trial table's sources of the calibration
    sessions are the sequences the check looked at (seeded; several sessions drawn anew)."""
    values = {"sessions": 3, "calibration_sessions": 2, "trials_per_session": 6,
              "repeat_sequence": False, "isi_s": 0.35, "job": "identify"}
    seed = 3
    proto = protocol("fep_closed_loop", **values)
    planned = np.random.default_rng(seed)
    expected = np.concatenate([proto._sequence(planned)[0] for _ in range(2)])
    driver = open_driver("sim://?seed=1&raw=false")
    driver.open()
    try:
        engine = Engine(driver, proto, EngineConfig(fast=True, block_ms=100.0, seed=seed))
        engine.run()
    finally:
        driver.close()
    assert engine.error is None
    np.testing.assert_array_equal(engine.trials.table().s[:12], expected)
    # and the verdict follows those sequences: over seeds, short sessions pass and fail
    verdicts = _calibration_verdicts(range(12), sessions=3, calibration_sessions=2,
                                     trials_per_session=4, repeat_sequence=False)
    assert any(verdicts) and not all(verdicts)


@contextlib.contextmanager
def served_device(entries):
    """The simulated device over a pty, its own log of what ran going to ``entries``."""
    link = PtyLink()
    stop = threading.Event()
    thread = threading.Thread(target=SimDevice("sim://?seed=2", pulse_log=entries.append).serve,
                              args=(link, stop), daemon=True)
    thread.start()
    try:
        yield f"serial://{link.name}"
    finally:
        stop.set()
        thread.join(10)
        link.close()


def test_the_cli_refuses_before_the_run_and_the_device_runs_nothing(tmp_path):
    """`mea-control run ... --param amplitude=500`: one line, exit code 2, no recording, and
    the device's own log shows the host connected but never started it or ran a pulse."""
    entries = []
    nwb = tmp_path / "run.nwb"
    with served_device(entries) as url:
        proc = subprocess.run(
            cli_command("run", "bss_isomura", "--device", url, "--sessions", "1",
                        "--param", "trials_per_session=3", "--param", "amplitude=500",
                        "--record", str(nwb)),
            capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1] == ("mea-control: error: bss_isomura cannot start: current 500.00 uA on "
                         "electrode 12 exceeds max_current_uA = 10.00 uA (the default limit); "
                         "set by amplitude = 500")
    assert not any(line.startswith("[") for line in lines)  # no run: no [start] line
    assert "ProtocolError" not in proc.stderr and "Traceback" not in proc.stderr
    kinds = [entry["kind"] for entry in entries]
    assert "host_connected" in kinds, json.dumps(entries)
    assert "start" not in kinds and not any("pulse" in kind for kind in kinds)
    assert not nwb.exists()
