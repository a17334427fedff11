"""`mea-control analyze` and `replay`: the free-energy model on recorded cultures."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mea_control.cli.console import Progress, UserError, check_writable
from mea_control.cli.options import count, positive, positive_int


def cmd_analyze(args: argparse.Namespace) -> int:
    """Reverse-engineer each culture in a file with the free-energy model."""
    import warnings

    from mea_control.fep import FEPInputError

    check_writable(args.json, "the analysis")
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

    check_writable(args.json, "the replay")
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


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
    analyze = sub.add_parser(
        "analyze", help="fit the free-energy model to a culture's trials (Isomura et al. 2023)")
    analyze.add_argument("file", help="a recording (.nwb), a .mat like the published data, "
                         "or an .npz with o, s, r")
    analyze.add_argument("--culture", type=count, metavar="I",
                         help="analyse only the I-th culture in the file (from 0)")
    analyze.add_argument("--baseline", type=positive(), metavar="B",
                         help="reference mean ensemble response, spikes a trial (default: the "
                         "culture's own over the initial sessions)")
    analyze.add_argument("--lambda", dest="lam", type=positive(), default=3000.0, metavar="L",
                         help="prior strength of the weights, in trials (default 3000)")
    analyze.add_argument("--gain", type=positive(), default=2.0, metavar="G",
                         help="weight on the initial sessions when predicting (default 2)")
    analyze.add_argument("--initial-sessions", type=positive_int, default=10, metavar="N",
                         help="sessions fitted; later ones are predicted (default 10)")
    analyze.add_argument("--trials-per-session", type=positive_int, default=256, metavar="N",
                         help="for files without session labels (default 256)")
    analyze.add_argument("--json", metavar="OUT", help="write the results as JSON")
    analyze.add_argument("--plots", metavar="DIR", help="write PNG figures to this folder")
    analyze.set_defaults(func=cmd_analyze)

    rp = sub.add_parser(
        "replay", help="replay a job on a recorded culture: the model chooses patterns, the "
                       "recorded responses answer")
    rp.add_argument("file", help="a .mat like the published data, an .npz or a recording")
    rp.add_argument("--culture", type=count, default=0, metavar="I",
                    help="which culture of the file (from 0; default 0)")
    rp.add_argument("--job", choices=("identify", "control"), required=True)
    rp.add_argument("--selection", required=True,
                    choices=("infomax", "targeted", "efe", "random", "passive"),
                    help="identify: infomax, targeted, random, passive; control: efe, random")
    rp.add_argument("--order", choices=("shuffled", "chronological"), default="shuffled",
                    help="shuffled (default): odd sessions' responses in random order, the "
                         "truth from even sessions 12 on; chronological: sessions 1-10 in "
                         "order, the truth from 11 on")
    rp.add_argument("--trials", type=positive_int, metavar="N",
                    help="trials to replay (default: identify 400, control 300)")
    rp.add_argument("--seed", type=count, default=0, metavar="S")
    rp.add_argument("--criterion", type=positive(), metavar="E",
                    help="identify: the error to reach (default: random's after 400 trials)")
    rp.add_argument("--trials-per-session", type=positive_int, default=256, metavar="N",
                    help="for files without session labels (default 256)")
    rp.add_argument("--json", metavar="OUT", help="write the settings and measures as JSON")
    rp.set_defaults(func=cmd_replay)
