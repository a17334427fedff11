"""`mea-control gui` as a user starts it: screenshots leave the user's settings alone, a
machine without Qt's X11 libraries is told what to install, and the real window runs
under an X server (Xvfb) when one is installed."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, cli_command
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMainWindow

from mea_control.cli.gui import debian_package, missing_libraries, xcb_plugin


def _env(tmp_path, **extra) -> dict:
    """The environment of a user whose home (and Qt settings) is ``tmp_path``, with no
    display and no platform chosen, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE")}
    return env | {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)} | extra


def test_screenshot_leaves_the_users_settings_as_they_were(qtbot, tmp_path):
    """A screenshot runs offscreen, where the window is clipped to the offscreen screen: the
    geometry (and anything else) it would save must not become the user's next window."""
    settings_file = tmp_path / "mea-control" / "mea-control.conf"  # QSettings' place on Linux
    users = QMainWindow()
    qtbot.addWidget(users)
    users.resize(1400, 900)
    saved = QSettings(str(settings_file), QSettings.IniFormat)
    saved.setValue("geometry", users.saveGeometry())
    saved.setValue("device", "sim://?seed=3")
    saved.setValue("window_s", 30)
    saved.sync()
    before = settings_file.read_bytes()
    png = tmp_path / "window.png"
    proc = subprocess.run(cli_command("gui", "--screenshot", str(png), "--after", "1"),
                          capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert settings_file.read_bytes() == before


# -- Qt's X11 libraries ---------------------------------------------------------------------

#: The plugin with one library renamed (same length) to one no machine has.
LOST_LIBRARY = (b"libxcb-icccm.so.4", b"libxcb-icccz.so.4")

LAUNCH_WITH_PLUGIN = """
import sys
from pathlib import Path
from mea_control.cli import gui, main
gui.xcb_plugin = lambda: Path(sys.argv[1])
sys.exit(main(["gui"]))
"""


def _plugin_missing_a_library(folder) -> str:
    """A copy of Qt's xcb plugin that needs a library this machine lacks, laid out as in
    the Qt installation (its RUNPATH finds Qt's own libraries in ../../lib)."""
    real = xcb_plugin()
    platforms = folder / "plugins" / "platforms"
    platforms.mkdir(parents=True)
    (folder / "lib").symlink_to(real.parent.parent.parent / "lib")
    copy = platforms / real.name
    old, new = LOST_LIBRARY
    assert old in real.read_bytes()
    copy.write_bytes(real.read_bytes().replace(old, new))
    return str(copy)


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd (libc-bin) is not installed")
def test_missing_x11_libraries_print_the_install_line(tmp_path):
    """Where Qt would abort (rc 134) naming libxcb-cursor0 whatever is missing, the command
    names the missing library and the apt-get line, in one line, with exit code 2."""
    plugin = _plugin_missing_a_library(tmp_path / "qt")
    assert missing_libraries(tmp_path / "qt" / "plugins" / "platforms" / "libqxcb.so")
    proc = subprocess.run([sys.executable, "-c", LAUNCH_WITH_PLUGIN, plugin],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=_env(tmp_path, DISPLAY=":99"))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "libxcb-icccz.so.4" in proc.stderr
    assert "libxcb-icccz4" in proc.stderr.split("sudo apt-get install ")[1].split()


def test_debian_package_names():
    assert debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert debian_package("libxcb-render-util.so.0") == "libxcb-render-util0"
    assert debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert debian_package("libX11-xcb.so.1") == "libx11-xcb1"


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd (libc-bin) is not installed")
def test_readme_lists_every_x11_library_the_plugin_needs():
    listing = subprocess.run(["ldd", str(xcb_plugin())], capture_output=True, text=True,
                             check=True).stdout
    needed = {line.split("=>")[0].strip() for line in listing.splitlines() if "=>" in line}
    x11 = {lib for lib in needed if lib.startswith(("libxcb", "libxkbcommon", "libX11"))}
    assert "libxcb-icccm.so.4" in x11
    install_line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                        if line.startswith("sudo apt-get install"))
    assert {debian_package(lib) for lib in x11} <= set(install_line.split())
