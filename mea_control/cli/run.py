"""`mea-control run` and `demo`: a protocol in the closed loop, its summary and recording."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mea_control.cli.console import (
    EXIT_PROTOCOL_ERROR,
    EXIT_RECORDING,
    EXIT_WATCHDOG,
    Progress,
    StopSignals,
    UserError,
    check_writable,
    say,
)
from mea_control.cli.options import count, positive, positive_int
from mea_control.driver import DriverError, installed_drivers, open_driver
from mea_control.limits import SafetyLimits
from mea_control.preflight import check_start
from mea_control.protocol import Protocol, ProtocolError, load_protocol
from mea_control.pulse_history import PulseHistory, names_history_file
from mea_control.rig import RecordingDefaults, Rig, load_rig
from mea_control.sinks import EventKind

if TYPE_CHECKING:
    from mea_control.engine import Engine

#: The simulated device of `mea-control demo` (and the GUI's on first use).
DEMO_DEVICE = "sim://?seed=1&raw=false"

def _parse_params(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--param takes NAME=VALUE, not {pair!r}")
        values[name.strip()] = value.strip()
    return values


def _format_summary(s: dict[str, Any]) -> str:
    lat = s["latency_samples"]
    ms = 1000.0 / s["sample_rate"]
    lines = [
        f"protocol        {s['protocol']} on {s['device']}",
        f"duration        {s['duration_s']:.1f} s of data in {s['wall_s']:.1f} s "
        f"({s['realtime_factor']}x real time{', fast' if s['fast'] else ''})",
        f"blocks          {s['blocks']} of {s['block_samples']} samples, "
        f"{s['blocks_dropped']} dropped, {s['gaps']} gaps",
        f"spikes          {s['spikes']}",
        f"stimulation     {s['stims_executed']} executed, {s['stims_refused']} refused, "
        f"{s['stims_dropped']} dropped by the device"
        + (f", {s['stims_unreported']} not reported by the end" if s["stims_unreported"] else ""),
    ]
    if lat["p50"] is not None:
        lines.append(
            f"latency         trigger->execution p50 {lat['p50']:.0f} samples "
            f"({lat['p50'] * ms:.2f} ms), p99 {lat['p99']:.0f} ({lat['p99'] * ms:.2f} ms), "
            f"max {lat['max']}"
        )
    cost = s["loop_cost_us"]
    if cost["p50"] is not None:
        lines.append(f"loop cost       p50 {cost['p50']:.0f} us, p99 {cost['p99']:.0f} us a block")
    if s["watchdog_trips"]:
        lines.append(f"watchdog        tripped {s['watchdog_trips']} time(s): stimulation stopped")
    if s["trials"]:
        lines.append(f"trials          {s['trials']}")
    ev = s.get("evoked")
    if ev and ev["response_spikes_stimulated"] is not None:
        lines.append(
            f"evoked          {ev['response_spikes_stimulated']} spikes per stimulated trial "
            f"in the response window vs {ev['baseline_spikes']} in the same time before it"
        )
    extra = {k: v for k, v in (s.get("protocol_summary") or {}).items() if k != "stim_channels"}
    if extra:
        lines.append(f"{s['protocol']:<15} " + ", ".join(f"{k} {_brief(v)}"
                                                          for k, v in extra.items()))
    return "\n".join(lines)


def _brief(value: Any) -> str:
    """A protocol's summary value as printed: a long list or table by its size only (the
    whole is in --summary-json and the recording)."""
    text = str(value)
    if len(text) <= 80 or not isinstance(value, list | tuple | dict):
        return text
    return f"[{len(value)} entries: see --summary-json]"


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    with StopSignals() as stop_signals:
        return _run(args, stop_signals)


def _run(args: argparse.Namespace, stop_signals: StopSignals) -> int:
    from mea_control.engine import Engine, EngineConfig  # here: `info` and the rest start light

    cls, path = load_protocol(args.protocol)
    values: dict[str, Any] = _parse_params(args.param)
    if args.sessions is not None:
        if "sessions" not in cls.parameters:
            raise UserError(f"--sessions: protocol {cls.name} has no sessions; use --duration")
        values["sessions"] = args.sessions
    try:
        protocol = cls(**values)
    except ProtocolError:
        raise
    except Exception:
        print(f"protocol {cls.name} failed while checking its parameters:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_PROTOCOL_ERROR
    if args.trials and not args.trials.endswith(".npz"):
        raise UserError(f"--trials {args.trials}: the trial table is a .npz file; end it in .npz")
    check_writable(args.summary_json, "the summary")
    check_writable(args.trials, "the trial table")
    if args.no_raw and not args.record:
        raise UserError("--no-raw applies to a recording: add --record FILE.nwb")
    limits = SafetyLimits()
    notes: tuple[str, ...] = ()
    rig: Rig | None = None
    if args.rig:
        rig = load_rig(args.rig)
        limits, notes = rig.limits, rig.notes
    meta = None
    if args.record is not None:
        from mea_control.recording.writer import check_target

        check_target(args.record, args.overwrite)
        meta = _recording_meta(args, rig)

    def log(message: str) -> None:  # --quiet hides all but warnings
        if not args.quiet or "warning:" in message:
            say(sys.stderr, message)

    history = PulseHistory.for_device(args.device, rig, log=log)
    driver = open_driver(args.device, rig=rig or "")  # read once, here: the driver takes it as is
    try:
        driver.open()
    except DriverError:
        raise
    except OSError as exc:
        raise DriverError(f"device {args.device} is not answering: {exc}") from None
    if driver.info.simulated and not names_history_file(rig):
        # a simulated device grows a fresh culture for every run: a dry run repeats exactly
        history = PulseHistory(None, args.device, log)
    config = EngineConfig(
        block_ms=args.block_ms,
        fast=args.fast,
        duration_s=args.duration,
        watchdog_ms=args.watchdog_ms,
        seed=args.seed,
        limits=limits,
    )
    progress = Progress(enabled=not args.quiet)
    for note in notes:
        log(f"[limits] {note}")
    if hint := _fast_path_hint(args, protocol):
        log(hint)
    recorder = None
    started = False
    try:
        try:
            engine = Engine(driver, protocol, config, log=_quiet_filter(log),
                            pulse_history=history)
        except ValueError as exc:  # limits or detection settings that do not fit this device
            raise UserError(str(exc)) from None
        check_start(protocol, driver.info, limits, args.seed)  # nothing has run yet
        if args.lsl:
            engine.sinks.append(_open_lsl(engine))
        if args.record is not None:  # last: it replaces an --overwrite target
            recorder = _open_recorder(args, engine, path, meta, log)
            engine.sinks.append(recorder)
        started = True
        summary = engine.run(progress=progress)
    finally:
        stop_signals.raising = False
        stopped_by = stop_signals.exit_code
        progress.close()
        driver.close()
        if recorder is not None:
            if started:
                recorder.close()  # does nothing after a run that reached its end
            else:
                recorder.discard()
    summary["protocol_file"] = str(path)
    if args.trials and engine.trials is not None:
        engine.trials.table().save_npz(args.trials)
    _write_json(args.summary_json, summary)
    if isinstance(engine.exception, ProtocolError):
        raise engine.exception
    if engine.error_kind in ("protocol", "sink"):
        who = f"protocol {protocol.name}" if engine.error_kind == "protocol" else "a recorder"
        print(f"{who} raised an error; stimulation was stopped:", file=sys.stderr)
        print(engine.error, file=sys.stderr, end="")
        return EXIT_PROTOCOL_ERROR
    if engine.error_kind == "device":
        message = engine.error or "device error"
        if "Traceback" in message:
            print(message, file=sys.stderr, end="")
            return EXIT_PROTOCOL_ERROR
        raise DriverError(message)
    if not args.quiet:
        print(_format_summary(summary))
    if recorder is not None and _report_recording(summary["recording"], args.quiet):
        return EXIT_RECORDING
    if engine.interrupted:
        return stopped_by
    if engine.stats.watchdog_trips and not engine.gate.armed:
        print("mea-control: warning: the watchdog stopped stimulation during the run "
              "(see the [watchdog] line); the trials after it were not stimulated",
              file=sys.stderr)
        return EXIT_WATCHDOG
    return 0


def _fast_path_hint(args: argparse.Namespace, protocol: Protocol) -> str | None:
    """How to run spikes only, for a --fast run on sim:// that renders voltage nobody uses.

    Not done silently: spikes-only detection is the device's, not the engine's, so the
    spikes (and responses) would differ from the same run in real time.
    """
    url = urlsplit(args.device)
    query = parse_qsl(url.query)
    uses_voltage = (
        (args.record is not None and not args.no_raw) or args.lsl
        or type(protocol).on_block is not Protocol.on_block
        or any(key == "raw" for key, _ in query)  # asked for by name
    )
    if not args.fast or url.scheme != "sim" or uses_voltage:
        return None
    fast_url = args.device.partition("?")[0] + "?" + urlencode([*query, ("raw", "0")], safe=":/")
    return (f"[fast] nothing in this run uses the voltage: --device '{fast_url}' --block-ms 100 "
            "runs spikes only, several times faster (spikes as the device detects them)")


def _recording_meta(args: argparse.Namespace, rig: Rig | None) -> Any:
    """NWB session and culture fields: options first, then the rig file's [recording] table."""
    from mea_control.recording import RecordingMeta

    defaults = rig.recording_defaults() if rig is not None else RecordingDefaults()
    return RecordingMeta(
        session_description=args.description or "",
        experimenter=tuple(args.experimenter or defaults.experimenter),
        lab=args.lab or defaults.lab,
        institution=args.institution or defaults.institution,
        culture_id=args.culture,
        species=args.species or defaults.species or RecordingMeta.species,
        div=args.div,
    )


def _open_recorder(args: argparse.Namespace, engine: Engine, protocol_file: Path, meta: Any,
                   log: Any) -> Any:
    from mea_control.recording import Recorder
    from mea_control.recording.writer import run_provenance

    if engine.info.simulated:
        meta = meta.for_simulator()
    elif meta.div is None:
        log("[recording] no --div: the file's culture has no age (DIV); nwbinspector flags that")
    provenance = run_provenance(engine.describe(), protocol_file, command_line=sys.argv,
                                   rig=str(args.rig) if args.rig else None)
    return Recorder(args.record, engine.info, provenance, meta=meta, raw=not args.no_raw,
                    overwrite=args.overwrite, duration_s=args.duration)


def _open_lsl(engine: Engine) -> Any:
    from mea_control.lsl import LslOutlet, LslUnavailable

    try:
        return LslOutlet(engine.info)
    except LslUnavailable as exc:
        raise UserError(str(exc)) from None


def _report_recording(rec: dict[str, Any], quiet: bool) -> bool:
    """Print where the recording went; warn (and return True) if it lost anything."""
    name = rec["file"]
    if not quiet:
        raw = f"{rec['samples_written']} raw samples" if rec["raw"] else "no raw samples"
        print(f"recording       {name}: {raw}, {rec['samples_lost']} lost; "
              f"`mea-control info {name}` describes it")
    problems = []
    if rec["samples_lost"]:
        why = rec["write_error"] or "the disk was too slow and the writer's backlog filled up"
        problems.append(f"{rec['samples_lost']} raw samples were not written ({why})")
    if rec["records_lost"]:
        problems.append(f"{rec['records_lost']} batches of spikes, pulses, trials or events "
                        "were not written")
    if rec.get("error"):
        problems.append(f"its tables could not be written ({rec['error']}); free space, then "
                        f"run `mea-control recover {name}`")
    for problem in problems:
        print(f"mea-control: warning: recording {name}: {problem}", file=sys.stderr)
    return bool(problems)


def _quiet_filter(log):
    """Log run events, but only the first few refusals and dropped patterns."""
    shown = {EventKind.REFUSAL: 0, EventKind.STIM_DROPPED: 0}

    def emit(message: str) -> None:
        for kind in shown:
            if message.startswith(f"[{kind}]"):
                shown[kind] += 1
                if shown[kind] == 6:
                    log(f"[{kind}] further ones are counted in the summary")
                if shown[kind] > 5:
                    return
        log(message)

    return emit


def cmd_demo(args: argparse.Namespace) -> int:
    """The experimenter's model in the loop on the simulator: the same culture probed twice,
    by the model's targeted choice and at random, after the same calibration."""
    from mea_control.cli import build_parser  # the package's parser: run's defaults

    calibration = max(1, args.sessions // 2)
    intro = (f"Demo: blind-source-separation training (Isomura et al.) on a simulated "
             f"culture, closed loop in fast mode, device {DEMO_DEVICE}: {args.sessions} "
             f"sessions of {args.trials} trials. The first {calibration} calibrate "
             "(responsive electrodes, ensembles); after them the experimenter's model chooses "
             "every pattern to identify the responses to the sequence's patterns. Run 1: "
             "targeted choice; run 2: random choice, same culture.")
    print(textwrap.fill(intro, 88) + "\n", file=sys.stderr)
    results = {}
    for selection, record in (("targeted", args.record), ("random", None)):
        print(f"-- run with selection={selection}", file=sys.stderr)
        summary = Path(args.summary_json)
        if selection == "random":
            summary = summary.with_name(f"{summary.stem}-random{summary.suffix}")
        run = [
            "run", "fep_closed_loop", "--device", DEMO_DEVICE, "--fast", "--quiet",
            "--sessions", str(args.sessions), "--param", f"trials_per_session={args.trials}",
            "--param", f"calibration_sessions={calibration}", "--param", "job=identify",
            "--param", f"selection={selection}", "--param", "probe_fraction=1",
            "--param", "drift_sd=0.01",  # follow the culture's drift from trial to trial
            "--summary-json", str(summary),
        ]
        if record:
            run += ["--trials", args.trials_file, "--record", record, "--overwrite"]
        code = cmd_run(build_parser().parse_args(run))
        if code != 0:
            return code
        results[selection] = json.loads(summary.read_text())["protocol_summary"]
    _demo_report(args, results)
    return 0


def _demo_report(args: argparse.Namespace, results: dict) -> None:
    """The recorded run's calibration and last choices, and both runs side by side."""
    import numpy as np

    from mea_control.recording import open as open_recording

    with open_recording(args.record) as rec:
        decisions = rec.decisions
    start = next(d["details"] for d in decisions if d["details"].get("kind") == "calibration")
    print(f"\nCalibration ({start['trials']} trials): {len(start['electrodes'])} responsive "
          "electrodes modelled"
          + (f"; ensembles of {len(start['members_g1'])} and {len(start['members_g2'])} "
             "electrodes for the culture's model" if "members_g1" in start else
             f"; {start.get('culture_model', '')}"))
    updates = {d["details"]["trial"]: d["details"] for d in decisions
               if d["details"].get("kind") == "update"}
    probes = [d for d in decisions if d["choice"] is not None and d["details"].get("probe")]
    print("\nThe model's last choices (targeted; mean spikes over the modelled electrodes):")
    print(f"{'trial':>6}  {'electrodes on':>13}  {'predicted':>14}  {'observed':>8}  "
          f"{'most unknown electrode sd':>25}")
    for d in probes[-5:]:
        i, k = d["details"]["trial"], d["choice"]
        pred = float(np.mean(d["details"]["prediction"][k]))
        sd = float(np.sqrt(np.mean(np.square(d["details"]["sd"][k]))))
        observed = float(np.mean(updates[i]["observed"])) if i in updates else float("nan")
        print(f"{i:>6}  {int(np.sum(d['candidates'][k])):>13}  {pred:>7.2f} +- {sd:<4.2f}  "
              f"{observed:>8.2f}  {max(d['details']['electrode_sd']):>25.3f}")
    t, r = results["targeted"], results["random"]
    print("\nWhat is still unknown about the predictions that matter (the predictive sd of "
          "the\nresponses to the sequence's patterns, weighted by how often each occurs), "
          f"after {t['probes']} choices:\n  targeted {t['target_sd']:.3f} spikes, random "
          f"{r['target_sd']:.3f} spikes"
          f" ({r['target_sd'] / t['target_sd']:.2f}x)" if t.get("target_sd") else "")
    print("Against the culture's true responses, 5 seeds: `python benchmarks/fep.py --sim-jobs`.")
    print(f"\nSummaries: {args.summary_json} and its -random twin; trial table "
          f"{args.trials_file}; recording {args.record} (`mea-control info {args.record}`; "
          "`mea-control gui` shows the model tab live).")


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
    run = sub.add_parser("run", help="run a protocol on a device or the simulator")
    run.add_argument("protocol", help="a protocol file, or the name of a shipped protocol")
    run.add_argument("--device", default="sim://",
                     help="device URL (default sim://); schemes: "
                     + ", ".join(f"{s}://" for s in sorted(installed_drivers())))
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="set a protocol parameter (repeatable)")
    stop = run.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=positive(), metavar="S",
                      help="stop after S seconds of data")
    stop.add_argument("--sessions", type=positive_int, metavar="N",
                      help="number of sessions (protocols with sessions)")
    run.add_argument("--fast", action="store_true",
                     help="run as fast as possible (simulator only); same results as real time")
    run.add_argument("--summary-json", metavar="FILE", help="write the end-of-run summary")
    run.add_argument("--trials", metavar="FILE.npz", help="write the trial table (o, s, r)")
    run.add_argument("--rig", metavar="FILE.toml",
                     help="rig file with safety limits ([rig] pulse_history names the file "
                     "keeping the device's recent pulses across runs)")
    run.add_argument("--block-ms", type=positive(100.0), default=1.0,
                     help="block length, up to 100 ms (default 1 ms)")
    run.add_argument("--watchdog-ms", type=positive(), default=200.0,
                     help="stop stimulation when the loop falls this far behind (default 200)")
    run.add_argument("--seed", type=count, default=0,
                     help="seed of the protocol's random generator (default 0)")
    run.add_argument("--quiet", action="store_true", help="no progress, log or summary on screen")
    rec = run.add_argument_group("recording")
    rec.add_argument("--record", metavar="FILE.nwb",
                     help="record the run to an NWB file (crash-safe; see mea-control info)")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing recording")
    rec.add_argument("--no-raw", action="store_true",
                     help="record spikes, pulses, trials and events only, no raw samples")
    rec.add_argument("--lsl", action="store_true",
                     help="also stream raw blocks, spikes and markers to Lab Streaming Layer")
    rec.add_argument("--description", metavar="TEXT", help="session description for the file")
    rec.add_argument("--experimenter", action="append", metavar="NAME",
                     help="experimenter, 'Last, First' (repeatable; default from the rig file)")
    rec.add_argument("--lab", help="lab (default from the rig file's [recording] table)")
    rec.add_argument("--institution", help="institution (default from the rig file)")
    rec.add_argument("--culture", metavar="ID", help="culture (subject) id, e.g. MEA-17")
    rec.add_argument("--div", type=count, metavar="N", help="the culture's days in vitro")
    rec.add_argument("--species", help="species of the culture (default Rattus norvegicus)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the experimenter's model in the loop on the simulator: "
                          "its choices against random ones")
    demo.add_argument("--sessions", type=positive_int, default=4,
                      help="sessions per run; the first half calibrate")
    demo.add_argument("--trials", type=positive_int, default=64, help="trials per session")
    demo.add_argument("--summary-json", default="demo-summary.json")
    demo.add_argument("--trials-file", default="demo-trials.npz")
    demo.add_argument("--record", default="demo.nwb", metavar="FILE.nwb")
    demo.set_defaults(func=cmd_demo)
