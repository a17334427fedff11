"""`mea-control gui` as a user starts it: screenshots leave the user's settings alone, a
machine without Qt's X11 libraries is told what to install, and the real window runs
under an X server (Xvfb) when one is installed."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli_command, skip_or_fail_on_ci
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
def test_readme_and_ci_install_every_x11_library_the_plugin_needs():
    listing = subprocess.run(["ldd", str(xcb_plugin())], capture_output=True, text=True,
                             check=True).stdout
    needed = {line.split("=>")[0].strip() for line in listing.splitlines() if "=>" in line}
    x11 = {lib for lib in needed if lib.startswith(("libxcb", "libxkbcommon", "libX11"))}
    assert "libxcb-icccm.so.4" in x11
    packages = {debian_package(lib) for lib in x11}
    install_line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                        if line.startswith("sudo apt-get install"))
    assert packages <= set(install_line.split())
    ci = re.search(r'X11_PACKAGES="([^"]*)"', (ROOT / ".ci" / "run").read_text())
    assert packages | {"xvfb", "xdotool"} <= set(ci.group(1).split())


# -- the real window under an X server -----------------------------------------------------

#: What the smoke test needs beside the X11 libraries (`.ci/run` installs it on CI).
XVFB_INSTALL = "sudo apt-get install xvfb xdotool (and the X11 libraries the README lists)"
#: Window sizes of the screenshots (docs/img/, shown in the README).
SHOT_SIZES = ((1024, 700), (1600, 1000))
SMOKE_WAIT_S = 120.0

#: `mea-control gui` (the CLI's main) with a timer that prints, twice a second, where the
#: Connect button is on the screen, its text, the window's size and the seconds of data
#: received, and closes the window once the file argv[1] exists.
GUI_REPORTING = """
import os, sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from mea_control.cli import main
app = QApplication(sys.argv[:1])
def report():
    window = next((w for w in app.topLevelWidgets() if hasattr(w, "connect_button")), None)
    if window is None or not window.isVisible():
        return
    if os.path.exists(sys.argv[1]):
        window.close()
        return
    button = window.connect_button
    centre = button.mapToGlobal(button.rect().center())
    data = window.session.buffers.now / 25000 if window.session.connected else 0
    print(int(window.winId()), button.text(), centre.x(), centre.y(), window.width(),
          window.height(), f"{data:.1f}", flush=True)
timer = QTimer()
timer.timeout.connect(report)
timer.start(500)
sys.exit(main(["gui"]))
"""


def _require_x_server_tools() -> None:
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        skip_or_fail_on_ci(f"{' and '.join(missing)} not installed: {XVFB_INSTALL}")
    libraries = missing_libraries(xcb_plugin())
    if libraries:
        skip_or_fail_on_ci(f"Qt's xcb platform lacks {', '.join(libraries)}: {XVFB_INSTALL}")


@pytest.fixture
def x_display():
    """A virtual X server (Xvfb) on a free display: its DISPLAY value."""
    _require_x_server_tools()
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0",
                               "1920x1200x24", "-nolisten", "tcp"], pass_fds=(write,),
                              stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as announced:
        number = announced.readline().strip()
    assert number, "Xvfb did not start"
    yield f":{number}"
    server.terminate()
    server.wait(timeout=30)


class GuiReport:
    """The latest state line of a GUI_REPORTING window."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def wait(self, condition) -> list[str]:
        """Read state lines until ``condition(fields)`` holds (SMOKE_WAIT_S at most)."""
        deadline = time.monotonic() + SMOKE_WAIT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            assert line, f"the window ended: {self.proc.stderr.read()}"
            fields = line.split()
            if len(fields) == 7 and condition(fields):
                return fields
        raise AssertionError("the window did not get there in time")


def _xdotool(display: str, *args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=60, env=os.environ | {
        "DISPLAY": display})


GRAB = """
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication(sys.argv[:1])
sys.exit(0 if app.primaryScreen().grabWindow(int(sys.argv[1])).save(sys.argv[2]) else 1)
"""


def _grab(display: str, window: str, path) -> None:
    """What the X server shows of ``window``, as a PNG (a capture, not a rendering)."""
    subprocess.run([sys.executable, "-c", GRAB, window, str(path)], check=True, timeout=60,
                   env=os.environ | {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb"})


def test_the_real_window_under_an_x_server(x_display, tmp_path, output_dir):
    """`mea-control gui` on Qt's xcb platform under Xvfb: Connect clicked with xdotool (a
    real pointer click at the button's place on the screen), live data, screenshots at
    1024x700 and 1600x1000 (`make screenshots` copies them to docs/img), a clean close."""
    close = tmp_path / "close"
    proc = subprocess.Popen([sys.executable, "-c", GUI_REPORTING, str(close)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path, DISPLAY=x_display, QT_QPA_PLATFORM="xcb"))
    try:
        report = GuiReport(proc)
        window, text, x, y, *_ = report.wait(lambda f: True)
        assert text == "Connect"
        _xdotool(x_display, "mousemove", "--sync", x, y, "click", "1")
        report.wait(lambda f: f[1] == "Disconnect" and float(f[6]) > 3.0)
        for width, height in SHOT_SIZES:
            _xdotool(x_display, "windowsize", "--sync", window, str(width), str(height))
            report.wait(lambda f, w=width, h=height: f[4:6] == [str(w), str(h)])
            report.wait(lambda f: True)  # a frame or more at that size
            report.wait(lambda f: True)
            _grab(x_display, window, output_dir / f"gui_{width}x{height}.png")
        close.touch()
        assert proc.wait(timeout=SMOKE_WAIT_S) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
