"""`mea-control`: run protocols on a device or the simulator.

Errors a user can cause print one line on stderr and exit with code 2; a
protocol that raises prints its traceback and exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from drivers.base import REGISTRY, DriverError, open_driver
from mea_control import __version__
from mea_control.engine import Engine, EngineConfig
from mea_control.protocol import Protocol, ProtocolError, load_protocol, shipped_protocols
from mea_control.pulse_history import PulseHistory, names_history_file
from mea_control.recording.errors import RecordingError
from mea_control.safety import Rig, RigFileError, SafetyLimits, load_rig

EXIT_PROTOCOL_ERROR = 1
EXIT_USER_ERROR = 2
#: The run ended with stimulation stopped by the watchdog (no one re-armed it).
EXIT_WATCHDOG = 3
#: The run finished but its recording lost raw samples or could not be finished.
EXIT_RECORDING = 4
EXIT_INTERRUPTED = 130
#: A run ended by `kill` (SIGTERM) or a closed terminal (SIGHUP) exits with 128 + the
#: signal's number, as the shell reports a killed program, after ending as Ctrl-C does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

DEMO_DEVICE = "sim://?seed=1&raw=false"


class UserError(Exception):
    """Reported as one line and exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the run ends as on Ctrl-C (the engine stops it cleanly)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While a run is prepared and runs, SIGTERM and SIGHUP end it as Ctrl-C does.

    The first such signal raises :class:`Terminated` in the main thread; later ones are
    ignored, so that a second `kill` cannot cut the recording's last writes short.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        #: False once the run has ended: a signal then only ends what is left of the command.
        self.raising = True

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None and self.raising:
            self.signum = signum
            raise Terminated(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signum is None else 128 + self.signum


def _say(stream: Any, text: str, end: str = "\n") -> None:
    """Write to the terminal, which may be gone (SIGHUP): the run goes on without it."""
    try:
        stream.write(text + end)
        stream.flush()
    except (OSError, ValueError):
        pass


class Progress:
    """A progress bar on stderr; plain lines every 10 % when stderr is not a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        self.started = time.monotonic()

    def __call__(self, fraction: float, text: str) -> None:
        if not self.enabled:
            return
        if 0.01 <= fraction < 1.0:
            left = (time.monotonic() - self.started) * (1.0 - fraction) / fraction
            text += f", about {left:.0f} s left"
        if self.tty:
            bar = "#" * int(fraction * 30)
            _say(sys.stderr, f"\r[{bar:<30}] {fraction * 100:5.1f}% {text}   ", end="")
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            _say(sys.stderr, f"{fraction * 100:5.1f}% {text}")

    def close(self) -> None:
        if self.enabled and self.tty:
            _say(sys.stderr, "")


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
        lines.append(f"{s['protocol']:<15} " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    return "\n".join(lines)


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def _check_writable(path: str | None, what: str) -> None:
    """Fail before the run, not after it, if a result file cannot be written."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"cannot write {what} to {path}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise UserError(f"cannot write {what} to {path}: folder {target.parent} does not exist")
    existed = target.exists()
    try:
        with open(target, "ab"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} to {path}: {exc.strerror}") from None
    if not existed:
        os.unlink(target)


def cmd_run(args: argparse.Namespace) -> int:
    with StopSignals() as stop_signals:
        return _run(args, stop_signals)


def _run(args: argparse.Namespace, stop_signals: StopSignals) -> int:
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
    _check_writable(args.summary_json, "the summary")
    _check_writable(args.trials, "the trial table")
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
            _say(sys.stderr, message)

    history = PulseHistory.for_device(args.device, rig, log=log)
    driver = open_driver(args.device, rig=str(args.rig) if args.rig else "")
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
    if engine.watchdog_trips and not engine.gate.armed:
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

    table = dict(rig.tables.get("recording", {})) if rig is not None else {}
    known = ("experimenter", "lab", "institution", "species")
    for key, value in table.items():
        if key not in known:
            raise RigFileError(f"rig file {args.rig}: unknown key [recording] {key}; "
                               f"accepted: {', '.join(known)}")
        if not (isinstance(value, str) or (key == "experimenter" and isinstance(value, list)
                                           and all(isinstance(v, str) for v in value))):
            raise RigFileError(f"rig file {args.rig}: [recording] {key} must be text")
    experimenter = args.experimenter or table.get("experimenter") or []
    if isinstance(experimenter, str):
        experimenter = [experimenter]
    return RecordingMeta(
        session_description=args.description or "",
        experimenter=tuple(experimenter),
        lab=args.lab or table.get("lab"),
        institution=args.institution or table.get("institution"),
        culture_id=args.culture,
        species=args.species or table.get("species") or RecordingMeta.species,
        div=args.div,
    )


def _open_recorder(args: argparse.Namespace, engine: Engine, protocol_file: Path, meta: Any,
                   log: Any) -> Any:
    from mea_control.recording import Recorder
    from mea_control.recording.writer import engine_provenance

    if engine.info.simulated:
        meta = meta.for_simulator()
    elif meta.div is None:
        log("[recording] no --div: the file's culture has no age (DIV); nwbinspector flags that")
    provenance = engine_provenance(engine, protocol_file, command_line=sys.argv,
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
    shown = {"refusal": 0, "stim_dropped": 0}

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


def cmd_info(args: argparse.Namespace) -> int:
    from mea_control.recording import describe, open

    with open(args.file) as rec:
        print(describe(rec))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from mea_control.recording import recover

    contents = recover(args.file)
    print(f"{args.file}: recovered {len(contents.spikes)} spikes, {len(contents.stims)} "
          f"patterns, {len(contents.trials)} trials and {len(contents.events)} events"
          + (f" ({contents.torn_lines} torn line(s) of the side journal skipped)"
             if contents.torn_lines else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mea_control.recording import open
    from mea_control.recording.export import export_compressed

    src = Path(args.file)
    dst = Path(args.output) if args.output else src.with_name(f"{src.stem}-{args.compress}.nwb")
    if dst.suffix.lower() != ".nwb":
        raise UserError(f"export to {dst}: the copy is an NWB file; end it in .nwb")
    if args.compress == "lzf" and args.level is not None:
        raise UserError("--level is for gzip; lzf has no levels")
    with open(src) as rec:  # a clear error for anything but a recording
        if rec.journal is not None:
            raise UserError(f"{src} is incomplete; run `mea-control recover {src}` first")
    progress = Progress()
    try:
        result = export_compressed(src, dst, compression=args.compress,
                                   level=(args.level or 4) if args.compress == "gzip" else None,
                                   overwrite=args.overwrite,
                                   progress=lambda f: progress(f, f"writing {dst}"))
    finally:
        progress.close()
    print(f"{dst}: {result.dst_bytes / 1e6:.1f} MB ({result.ratio:.2f}x smaller than "
          f"{result.src_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Reverse-engineer each culture in a file with the free-energy model."""
    import warnings

    from mea_control.fep import FEPInputError

    _check_writable(args.json, "the analysis")
    if args.plots:
        try:
            Path(args.plots).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"--plots {args.plots}: not a folder") from None
        except OSError as exc:
            raise UserError(f"--plots {args.plots}: cannot create it: {exc.strerror}") from None
    progress = Progress(enabled=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            results = _analyze_cultures(args, progress)
        except FEPInputError as exc:
            raise UserError(str(exc)) from None
        finally:
            progress.close()
            for message in dict.fromkeys(str(w.message) for w in caught):  # once each
                print(f"mea-control: warning: {' '.join(message.split())}", file=sys.stderr)
    print("\n\n".join(_format_analysis(i, a) for i, a in results))
    if args.json:
        cultures = [{"culture": i, **a.to_json()} for i, a in results]
        for culture in cultures:
            bad = _nonfinite(culture)
            if bad:
                raise UserError(f"culture {culture['culture']}: the analysis gave NaN or "
                                f"infinite {', '.join(bad)}; {args.json} not written")
        parameters = {"culture": args.culture, "baseline": args.baseline, "lambda": args.lam,
                      "gain": args.gain, "initial_sessions": args.initial_sessions,
                      "trials_per_session": args.trials_per_session}
        out = {"file": args.file, "parameters": parameters, "cultures": cultures}
        text = json.dumps(out, indent=2, allow_nan=False, default=_json_value)
        Path(args.json).write_text(text + "\n")
    return 0


def _analyze_cultures(args: argparse.Namespace, progress: Progress) -> list[tuple[int, Any]]:
    """Load FILE and analyse the chosen cultures (and plot them): [(index, Analysis)]."""
    from mea_control.fep import FEPInputError, analyze, load

    path = Path(args.file)
    cultures = load(path, args.trials_per_session)
    if args.culture is not None and args.culture >= len(cultures):
        raise UserError(f"--culture {args.culture}: {path} has {len(cultures)} culture(s), "
                        f"numbered 0 to {len(cultures) - 1}")
    chosen = range(len(cultures)) if args.culture is None else [args.culture]
    progress.enabled = len(chosen) > 1
    results = []
    for n, i in enumerate(chosen):
        data = cultures[i]
        try:
            a = analyze(data, args.baseline, args.lam, args.gain, args.initial_sessions)
        except FEPInputError as exc:
            where = "" if data.name and data.name in str(exc) else f"{data.name}: "
            raise UserError(f"culture {i}: {where}{exc}") from None
        if args.plots:
            from mea_control.fep import plots

            plots.write(a, data, args.plots, f"{path.stem}_c{i}", f"culture {i} ({data.name})")
        results.append((i, a))
        progress((n + 1) / len(chosen), f"analysed culture {i}")
    return results


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a job on one recorded culture: the model chooses, the recording answers."""
    from mea_control.fep import FEPInputError, load, replay

    _check_writable(args.json, "the replay")
    if args.selection not in replay.SELECTIONS[args.job]:
        raise UserError(f"--selection {args.selection} does not fit --job {args.job}: "
                        f"{args.job} takes {', '.join(replay.SELECTIONS[args.job])}")
    if args.criterion is not None and args.job != "identify":
        raise UserError("--criterion is for --job identify; control reports success rates")
    path = Path(args.file)
    progress = Progress()
    try:
        cultures = load(path, args.trials_per_session)
        if args.culture >= len(cultures):
            raise UserError(f"--culture {args.culture}: {path} has {len(cultures)} culture(s), "
                            f"numbered 0 to {len(cultures) - 1}")
        out = replay.replay(cultures[args.culture], args.job, args.selection, args.order,
                            args.trials, args.seed, args.criterion, progress)
    except FEPInputError as exc:
        raise UserError(str(exc)) from None
    finally:
        progress.close()
    out = {"file": args.file, "culture": args.culture, **out}
    print(_format_replay(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, allow_nan=False,
                                              default=_json_value) + "\n")
    return 0


def _format_replay(out: dict[str, Any]) -> str:
    head = (f"replay          {out['job']} with {out['selection']}, culture {out['culture']} "
            f"({out['culture_name']}), {out['order']}, {out['trials']} trials, seed {out['seed']}")
    if out["job"] == "identify":
        ttc = out["trials_to_criterion"]
        return "\n".join([
            head,
            f"outputs         {out['outputs']} responsive electrodes, {out['patterns']} "
            "distinct patterns",
            f"error           {out['error'][0]:.3f} -> {out['final_error']:.3f} (frequency-"
            f"weighted RMS, spikes); equal-weight {out['final_error_equal']:.3f}",
            f"criterion       {out['criterion']:.3f} ({out['criterion_from']}): reached at "
            + (f"trial {ttc}" if ttc is not None else "no trial (null)")])
    return "\n".join([
        head,
        f"success         {out['success_rate_last100']:.2f} of the last 100 trials in the "
        f"preferred state; random {out['random_success_rate_last100']:.2f}, oracle "
        f"{out['oracle_success_rate']:.2f} (best fixed pattern, on its truth responses)"])


def _format_analysis(i: int, a: Any) -> str:
    from mea_control.fep.analysis import POST_SESSIONS

    j = a.to_json()
    fe, pfe, last = a.free_energy, a.predicted_free_energy, len(a.free_energy)
    post = min(POST_SESSIONS, last - a.initial_sessions)
    corr = "null" if a.corr_post is None else f"{a.corr_post:.3f}"
    lines = [
        f"culture {i:<8}{a.name}: {last} sessions of {a.trials_per_session} trials, "
        f"baseline {a.baseline:.4g}",
        f"ensembles       n_g1 {j['n_g1']}, n_g2 {j['n_g2']} electrodes "
        f"(by {a.ensembles.method})",
        "thresholds      phi1 " + ", ".join(f"{v:.3f}" for v in j["phi1"])
        + "; phi0 " + ", ".join(f"{v:.3f}" for v in j["phi0"]),
        f"prediction      corr_post {corr}, mse_post {a.mse_post:.4f} (sessions "
        f"{last - post + 1}-{last}, predicted from sessions 1-{a.initial_sessions})",
        f"free energy     {fe[0]:.1f} -> {fe[-1]:.1f} nats (session 1 -> {last}); "
        f"predicted {pfe[0]:.1f} -> {pfe[-1]:.1f}",
    ]
    if "A_distance" in j:
        lines.append(f"A_distance      {j['A_distance']:.4f}, D_distance {j['D_distance']:.4f} "
                     "(mean |A - A|, |D - D| learned from the true sources)")
    return "\n".join(lines)


def _nonfinite(value: Any, key: str = "") -> list[str]:
    """The keys of a JSON-like value that hold NaN or infinite numbers."""
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in _nonfinite(v, k)]
    if isinstance(value, list | tuple):
        return list(dict.fromkeys(b for v in value for b in _nonfinite(v, key)))
    if isinstance(value, float) and not math.isfinite(value):
        return [key]
    return []


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _no_display() -> bool:
    """On Linux, no screen for Qt: no X or Wayland display and no platform chosen."""
    return (sys.platform.startswith("linux") and "QT_QPA_PLATFORM" not in os.environ
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"))


def cmd_gui(args: argparse.Namespace) -> int:
    """The Qt window; with --screenshot, save a PNG of it after --after seconds and exit."""
    if args.screenshot:
        _check_writable(args.screenshot, "the screenshot")
    if _no_display():
        if not args.screenshot:
            raise UserError("no display to open the window on (DISPLAY and WAYLAND_DISPLAY are "
                            "unset); log in graphically or use ssh -X, or set "
                            "QT_QPA_PLATFORM=offscreen")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    from PySide6.QtWidgets import QApplication

    from mea_control.gui.remote import yield_cpu_to_the_rig
    from mea_control.gui.window import MainWindow, screenshot_after

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow(device=args.device, protocol=args.protocol)
    yield_cpu_to_the_rig()  # the window's rig process has started: it keeps its priority
    window.show()
    if args.device or args.screenshot:
        window.connect_device(window.device_url.currentText().strip())
    if args.screenshot:
        screenshot_after(window, args.screenshot, args.after, window.close)
    app.exec()
    return 0


def cmd_protocols(args: argparse.Namespace) -> int:
    for name, path in shipped_protocols().items():
        cls, _ = load_protocol(str(path))
        print(f"{name}: {cls.describe()}")
        for pname, p in cls.parameters.items():
            line = f"    {pname:<20} {p.describe()}"
            if p.help:
                line += f"  -- {p.help}"
            print(line)
    return 0


def cmd_sim_serve(args: argparse.Namespace) -> int:
    import json
    import signal
    import threading

    from hardware_sim.device import LinkFaults, PtyLink, SimDevice, TcpLink
    from hardware_sim.mea import SimError

    params = "&".join(p for p in (f"seed={args.seed}", args.sim.lstrip("?")) if p)
    try:
        faults = LinkFaults.parse(args.faults) if args.faults else None
    except ValueError as exc:
        raise UserError(f"--faults {args.faults}: {exc}") from None
    pulse_log = None
    if args.pulse_log:
        try:
            log_file = open(args.pulse_log, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the device
        except OSError as exc:
            raise UserError(f"--pulse-log {args.pulse_log}: {exc.strerror}") from None

        def pulse_log(entry: dict) -> None:  # one JSON line an entry, flushed: survives a kill
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
    try:
        device = SimDevice(f"sim://?{params}", spikes_only=args.spikes_only,
                           log=lambda m: print(m, file=sys.stderr, flush=True),
                           host_timeout_ms=args.host_timeout_ms, pulse_log=pulse_log,
                           faults=faults)
    except SimError as exc:
        raise UserError(str(exc)) from None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        try:
            link = TcpLink(host or "127.0.0.1", int(port))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or "give it as HOST:PORT"
            raise UserError(f"--tcp {args.tcp}: cannot listen there: {reason}") from None
    else:
        link = PtyLink()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving on {link.name}", flush=True)
    try:
        device.serve(link, stop)
    finally:
        link.close()
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    print("sim://  the simulator, in-process (`mea-control sim serve` puts it behind a port)")
    # other makers' devices first: a port one of them claims is not sent our Ping, whose
    # bytes could mean something to that device (a Pulse Pal trigger, say)
    found = _discovered(args.timeout)
    claimed = {urlsplit(url).netloc + urlsplit(url).path for url, _ in found if url}
    ports = [(f"serial://{p.device}", p.description) for p in sorted(list_ports.comports())
             if p.device not in claimed]
    for url, description in ports + [(url, "") for url in args.url]:
        try:
            with open_driver(url, timeout=args.timeout) as driver:
                answer = _describe_device(driver.info)
        except DriverError as exc:
            answer = f"no mea-control device: {exc}"
        print(f"{url}  {description + ': ' if description and description != 'n/a' else ''}"
              f"{answer}", flush=True)
    if not ports and not claimed:
        print("no serial ports found", flush=True)
    for url, answer in found:
        print(f"{url}  {answer}" if url else answer, flush=True)
    return 0


#: Drivers of other makers' devices, each with a ``discover(timeout)`` of its own, and
#: what to say when it finds none.
DISCOVERING = {
    "drivers.intan_rhx": "rhx://  none: no Intan RHX TCP command server listens on this "
                         "computer's port 5000 (in RHX: Network > Remote TCP Control > Connect)",
    "drivers.pulsepal": "pulsepal://  none: no serial port answers the Pulse Pal handshake",
    "drivers.cl_api": "cl://  none: no Cortical Labs device opens (the cl package needs "
                      "Python >= 3.12; see docs/cl-api.md)",
}


def _discovered(timeout: float) -> list[tuple[str, str]]:
    """(URL, what answered there) from each vendor driver's own search, or a line saying
    it found none (URL empty)."""
    import importlib

    found = []
    for module, none in DISCOVERING.items():
        found += importlib.import_module(module).discover(timeout) or [("", none)]
    return found


def _describe_device(info: Any) -> str:
    stream = "raw samples" if info.capabilities.raw_stream else "spikes only"
    return (f"{info.name}: {info.n_channels} channels at {info.sample_rate / 1000:g} kHz, "
            f"layout {info.layout.name}, {stream}")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"mea-control: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _positive(upper: float = math.inf) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= upper):
            limit = "" if upper == math.inf else f" and at most {upper:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0{limit}")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mea-control",
        description="Closed-loop acquisition and stimulation for MEA cultures.",
    )
    parser.add_argument("--version", action="version", version=f"mea-control {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a protocol on a device or the simulator")
    run.add_argument("protocol", help="a protocol file, or the name of a shipped protocol")
    run.add_argument("--device", default="sim://",
                     help="device URL (default sim://); schemes: "
                     + ", ".join(f"{s}://" for s in sorted(REGISTRY)))
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="set a protocol parameter (repeatable)")
    stop = run.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=_positive(), metavar="S",
                      help="stop after S seconds of data")
    stop.add_argument("--sessions", type=_positive_int, metavar="N",
                      help="number of sessions (protocols with sessions)")
    run.add_argument("--fast", action="store_true",
                     help="run as fast as possible (simulator only); same results as real time")
    run.add_argument("--summary-json", metavar="FILE", help="write the end-of-run summary")
    run.add_argument("--trials", metavar="FILE.npz", help="write the trial table (o, s, r)")
    run.add_argument("--rig", metavar="FILE.toml",
                     help="rig file with safety limits ([rig] pulse_history names the file "
                     "keeping the device's recent pulses across runs)")
    run.add_argument("--block-ms", type=_positive(100.0), default=1.0,
                     help="block length, up to 100 ms (default 1 ms)")
    run.add_argument("--watchdog-ms", type=_positive(), default=200.0,
                     help="stop stimulation when the loop falls this far behind (default 200)")
    run.add_argument("--seed", type=_count, default=0,
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
    rec.add_argument("--div", type=_count, metavar="N", help="the culture's days in vitro")
    rec.add_argument("--species", help="species of the culture (default Rattus norvegicus)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the experimenter's model in the loop on the simulator: "
                          "its choices against random ones")
    demo.add_argument("--sessions", type=_positive_int, default=4,
                      help="sessions per run; the first half calibrate")
    demo.add_argument("--trials", type=_positive_int, default=64, help="trials per session")
    demo.add_argument("--summary-json", default="demo-summary.json")
    demo.add_argument("--trials-file", default="demo-trials.npz")
    demo.add_argument("--record", default="demo.nwb", metavar="FILE.nwb")
    demo.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="summarise a recording: duration, spikes, pulses, health")
    info.add_argument("file", help="a recording (.nwb)")
    info.set_defaults(func=cmd_info)

    recover = sub.add_parser(
        "recover", help="write a crashed recording's spikes, pulses and trials into it")
    recover.add_argument("file", help="a recording (.nwb) whose run did not stop cleanly")
    recover.set_defaults(func=cmd_recover)

    export = sub.add_parser("export", help="write a compressed copy of a recording")
    export.add_argument("file", help="a recording (.nwb)")
    export.add_argument("--compress", choices=("gzip", "lzf"), nargs="?", const="gzip",
                        default="gzip",
                        help="compression (default gzip)")
    export.add_argument("--level", type=int, choices=range(1, 10), metavar="1-9",
                        help="gzip level (default 4)")
    export.add_argument("-o", "--output", metavar="FILE.nwb",
                        help="the copy (default: FILE-gzip.nwb beside the original)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing copy")
    export.set_defaults(func=cmd_export)

    analyze = sub.add_parser(
        "analyze", help="fit the free-energy model to a culture's trials (Isomura et al. 2023)")
    analyze.add_argument("file", help="a recording (.nwb), a .mat like the published data, "
                         "or an .npz with o, s, r")
    analyze.add_argument("--culture", type=_count, metavar="I",
                         help="analyse only the I-th culture in the file (from 0)")
    analyze.add_argument("--baseline", type=_positive(), metavar="B",
                         help="reference mean ensemble response, spikes a trial (default: the "
                         "culture's own over the initial sessions)")
    analyze.add_argument("--lambda", dest="lam", type=_positive(), default=3000.0, metavar="L",
                         help="prior strength of the weights, in trials (default 3000)")
    analyze.add_argument("--gain", type=_positive(), default=2.0, metavar="G",
                         help="weight on the initial sessions when predicting (default 2)")
    analyze.add_argument("--initial-sessions", type=_positive_int, default=10, metavar="N",
                         help="sessions fitted; later ones are predicted (default 10)")
    analyze.add_argument("--trials-per-session", type=_positive_int, default=256, metavar="N",
                         help="for files without session labels (default 256)")
    analyze.add_argument("--json", metavar="OUT", help="write the results as JSON")
    analyze.add_argument("--plots", metavar="DIR", help="write PNG figures to this folder")
    analyze.set_defaults(func=cmd_analyze)

    rp = sub.add_parser(
        "replay", help="replay a job on a recorded culture: the model chooses patterns, the "
                       "recorded responses answer")
    rp.add_argument("file", help="a .mat like the published data, an .npz or a recording")
    rp.add_argument("--culture", type=_count, default=0, metavar="I",
                    help="which culture of the file (from 0; default 0)")
    rp.add_argument("--job", choices=("identify", "control"), required=True)
    rp.add_argument("--selection", required=True,
                    choices=("infomax", "targeted", "efe", "random", "passive"),
                    help="identify: infomax, targeted, random, passive; control: efe, random")
    rp.add_argument("--order", choices=("shuffled", "chronological"), default="shuffled",
                    help="shuffled (default): odd sessions' responses in random order, the "
                         "truth from even sessions 12 on; chronological: sessions 1-10 in "
                         "order, the truth from 11 on")
    rp.add_argument("--trials", type=_positive_int, metavar="N",
                    help="trials to replay (default: identify 400, control 300)")
    rp.add_argument("--seed", type=_count, default=0, metavar="S")
    rp.add_argument("--criterion", type=_positive(), metavar="E",
                    help="identify: the error to reach (default: random's after 400 trials)")
    rp.add_argument("--trials-per-session", type=_positive_int, default=256, metavar="N",
                    help="for files without session labels (default 256)")
    rp.add_argument("--json", metavar="OUT", help="write the settings and measures as JSON")
    rp.set_defaults(func=cmd_replay)

    gui = sub.add_parser("gui", help="the Qt window: watch the culture, run and record protocols")
    gui.add_argument("--device", metavar="URL",
                     help=f"connect to this device at start (default {DEMO_DEVICE} on first use)")
    gui.add_argument("--protocol", metavar="FILE", help="a shipped protocol name or a .py file")
    gui.add_argument("--screenshot", metavar="FILE.png",
                     help="save a PNG of the whole window after --after seconds, then exit")
    gui.add_argument("--after", type=_positive(3600), default=5.0, metavar="SECONDS",
                     help="with --screenshot: how long to run first (default 5)")
    gui.set_defaults(func=cmd_gui)

    sim = sub.add_parser("sim", help="the simulated device")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    serve = sim_sub.add_parser(
        "serve", help="serve the simulated device over the wire protocol until Ctrl-C")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true",
                       help="on a pseudo-terminal, like a USB serial port (the default)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="on a TCP port (port 0: any free one)")
    serve.add_argument("--seed", type=_count, default=0, help="seed of the culture (default 0)")
    serve.add_argument("--spikes-only", action="store_true",
                       help="stream detected spikes only, as a rig that detects on board")
    serve.add_argument("--sim", default="", metavar="PARAMS",
                       help="more sim:// URL parameters, e.g. 'layout=mcs60&noise_uV=5'")
    serve.add_argument("--host-timeout-ms", type=int, default=300, metavar="N",
                       help="dead-man switch: cancel all patterns when the host is silent this "
                            "long while streaming (default 300)")
    serve.add_argument("--pulse-log", metavar="FILE",
                       help="write the device's own log (every pulse the culture received, "
                            "aborts, trips, ...) as JSON lines")
    serve.add_argument("--faults", metavar="SPEC",
                       help="spoil the frames sent while streaming, seeded, e.g. "
                            "'garbage=0.01,flip=0.01,dup=0.01,reorder=0.01,truncate=0.01,"
                            "drop=0.01,seed=1' (silent_at=SAMPLE: send nothing from there)")
    serve.set_defaults(func=cmd_sim_serve)

    devices = sub.add_parser(
        "devices", help="list serial ports and which of them answer as mea-control devices")
    devices.add_argument("url", nargs="*", help="also try these device URLs (socket://...)")
    devices.add_argument("--timeout", type=_positive(30.0), default=1.0,
                         help="seconds to wait for each port's answer (default 1)")
    devices.set_defaults(func=cmd_devices)

    protocols = sub.add_parser("protocols", help="list shipped protocols and their parameters")
    protocols.set_defaults(func=cmd_protocols)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ProtocolError, DriverError, RigFileError, RecordingError) as exc:
        print(f"mea-control: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        _say(sys.stderr, f"mea-control: interrupted{f' ({exc})' if str(exc) else ''}")
        return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
