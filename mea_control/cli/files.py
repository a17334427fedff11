"""`mea-control info`, `recover` and `export`: the recording files after a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mea_control.cli.console import Progress, UserError


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


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
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
