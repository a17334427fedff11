"""`mea-control devices` and `sim serve`: find devices, serve the simulated one."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlsplit

from mea_control.cli.console import UserError
from mea_control.cli.options import count, positive
from mea_control.driver import DriverError, discover_devices, open_driver


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
    found = discover_devices(args.timeout)
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


def _describe_device(info: Any) -> str:
    stream = "raw samples" if info.capabilities.raw_stream else "spikes only"
    return (f"{info.name}: {info.n_channels} channels at {info.sample_rate / 1000:g} kHz, "
            f"layout {info.layout.name}, {stream}")


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
    sim = sub.add_parser("sim", help="the simulated device")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    serve = sim_sub.add_parser(
        "serve", help="serve the simulated device over the wire protocol until Ctrl-C")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true",
                       help="on a pseudo-terminal, like a USB serial port (the default)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="on a TCP port (port 0: any free one)")
    serve.add_argument("--seed", type=count, default=0, help="seed of the culture (default 0)")
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
    devices.add_argument("--timeout", type=positive(30.0), default=1.0,
                         help="seconds to wait for each port's answer (default 1)")
    devices.set_defaults(func=cmd_devices)
