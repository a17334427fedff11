"""`mea-control gui`: open the Qt window (or save a screenshot of it)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mea_control.cli.console import UserError, check_writable
from mea_control.cli.options import positive
from mea_control.cli.run import DEMO_DEVICE


def _no_display() -> bool:
    """On Linux, no screen for Qt: no X or Wayland display and no platform chosen."""
    return (sys.platform.startswith("linux") and "QT_QPA_PLATFORM" not in os.environ
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"))


def cmd_gui(args: argparse.Namespace) -> int:
    """The Qt window; with --screenshot, save a PNG of it after --after seconds and exit."""
    if args.screenshot:
        check_writable(args.screenshot, "the screenshot")
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


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
    gui = sub.add_parser("gui", help="the Qt window: watch the culture, run and record protocols")
    gui.add_argument("--device", metavar="URL",
                     help=f"connect to this device at start (default {DEMO_DEVICE} on first use)")
    gui.add_argument("--protocol", metavar="FILE", help="a shipped protocol name or a .py file")
    gui.add_argument("--screenshot", metavar="FILE.png",
                     help="save a PNG of the whole window after --after seconds, then exit")
    gui.add_argument("--after", type=positive(3600), default=5.0, metavar="SECONDS",
                     help="with --screenshot: how long to run first (default 5)")
    gui.set_defaults(func=cmd_gui)
