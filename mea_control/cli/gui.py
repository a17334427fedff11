"""`mea-control gui`: open the Qt window (or save a screenshot of it)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mea_control.cli.console import UserError, check_writable
from mea_control.cli.options import positive
from mea_control.cli.run import DEMO_DEVICE


def _no_display() -> bool:
    """On Linux, no screen for Qt: no X or Wayland display and no platform chosen."""
    return (sys.platform.startswith("linux") and "QT_QPA_PLATFORM" not in os.environ
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"))


def _uses_xcb() -> bool:
    """On Linux, Qt will open the window through its xcb platform (an X server)."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM")
    if platform is None:  # Qt's default, but for Wayland sessions
        return os.environ.get("XDG_SESSION_TYPE") != "wayland"
    return platform.split(";")[0].split(":")[0] == "xcb"


def xcb_plugin() -> Path:
    """Qt's xcb platform plugin, as this Qt installation loads it."""
    from PySide6.QtCore import QLibraryInfo

    plugins = QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)
    return Path(plugins) / "platforms" / "libqxcb.so"


def missing_libraries(library: Path) -> list[str]:
    """The shared libraries ``library`` needs that the system's dynamic linker cannot find
    (by ``ldd``; none when ldd or the library itself is absent)."""
    ldd = shutil.which("ldd")
    if ldd is None or not library.is_file():
        return []
    listing = subprocess.run([ldd, str(library)], capture_output=True, text=True,
                             timeout=30).stdout
    return sorted({line.split("=>")[0].strip() for line in listing.splitlines()
                   if "=> not found" in line})


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package of a shared library, by Debian's naming rule:
    libxcb-icccm.so.4 -> libxcb-icccm4, libxkbcommon-x11.so.0 -> libxkbcommon-x11-0."""
    name, _, version = soname.partition(".so.")
    name = name.lower()
    return f"{name}{'-' if name[-1].isdigit() else ''}{version}"


def _check_xcb_libraries() -> None:
    """Qt aborts when its platform plugin cannot load, naming a library that may not be the
    one missing: before that, name the missing ones and the line that installs them."""
    if not _uses_xcb():
        return
    missing = missing_libraries(xcb_plugin())
    if missing:
        packages = " ".join(sorted({debian_package(lib) for lib in missing}))
        raise UserError(f"the window cannot open: Qt's X11 (xcb) platform needs "
                        f"{', '.join(missing)}, missing on this machine; on Debian or Ubuntu "
                        f"install them with: sudo apt-get install {packages}")


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
    _check_xcb_libraries()
    if not args.screenshot:
        return _open_window(args, settings=None)
    with tempfile.TemporaryDirectory(prefix="mea-control-screenshot-") as scratch:
        return _open_window(args, settings=_scratch_settings(scratch))


def _open_window(args: argparse.Namespace, settings: Any) -> int:
    """Show the window (with ``settings``, or the user's when None) until it closes."""
    from PySide6.QtWidgets import QApplication

    from mea_control.gui.remote import yield_cpu_to_the_rig
    from mea_control.gui.window import MainWindow, screenshot_after

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow(device=args.device, protocol=args.protocol, settings=settings)
    yield_cpu_to_the_rig()  # the window's rig process has started: it keeps its priority
    window.show()
    if args.device or args.screenshot:
        window.connect_device(window.device_url.currentText().strip())
    if args.screenshot:
        screenshot_after(window, args.screenshot, args.after, window.close)
    app.exec()
    return 0


def _scratch_settings(folder: str) -> Any:
    """A copy of the user's settings in ``folder``, for a screenshot: the window starts as
    the user left it, and what it saves (the geometry of a window clipped to the offscreen
    screen, the device) goes with the folder, not into the user's next window."""
    from PySide6.QtCore import QSettings

    from mea_control.gui.window import user_settings

    user = user_settings()
    copy = QSettings(os.path.join(folder, "settings.ini"), QSettings.IniFormat)
    for key in user.allKeys():
        copy.setValue(key, user.value(key))
    return copy


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
