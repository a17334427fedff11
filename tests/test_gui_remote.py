"""The rig process behind the window: it outlives a window that dies, and closes the file."""

import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, wait_until

from mea_control import recording
from mea_control.gui.remote import RemoteSession, RigProcessError

GUI = """
import sys, time
from mea_control.gui.remote import RemoteSession
session = RemoteSession()
session.connect("sim://?seed=5")
session.start("spontaneous", {}, record_path=sys.argv[1])
while session.buffers.now < 2 * 25000 or not session.recording:
    time.sleep(0.05)
print(session._process.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_window_leaves_a_complete_recording(tmp_path):
    path = tmp_path / "orphan.nwb"
    gui = subprocess.Popen([sys.executable, "-c", GUI, str(path)], stdout=subprocess.PIPE,
                           text=True, cwd=ROOT)
    try:
        rig = int(gui.stdout.readline())
    finally:
        gui.kill()  # as a crash would: no atexit, no closeEvent
        gui.wait()
    wait_until(lambda: not _alive(rig), what="the rig process ending with its window")
    with recording.open(path) as r:
        assert r.complete and r.n_samples >= 2 * 25000 and len(r.spikes) > 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (the dead window was its parent) has exited
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def test_errors_cross_the_process_boundary_and_a_dead_rig_is_reported(tmp_path):
    session = RemoteSession()
    try:
        with pytest.raises(RuntimeError, match="connect a device first"):
            session.start("spontaneous", {})
        info = session.connect("sim://?seed=6")
        assert info.n_channels == 64 and session.connected
        with pytest.raises(Exception, match="no protocol file"):
            session.start("no_such_protocol", {})
        assert session.buffers.wait_for(lambda: session.buffers.now > 25000, 60)
        os.kill(session._process.pid, signal.SIGKILL)
        session._process.join(10)
        with pytest.raises(RigProcessError, match="rig process has ended"):
            session.start("spontaneous", {})
        assert not session.connected and not session.running
    finally:
        assert not session.close(timeout=5)  # not clean: it had died


def test_the_window_thread_yields_the_cpu_to_the_rig_once(monkeypatch):
    """On a thread of its own, which ends with the test: the suite keeps its priority."""
    from mea_control.gui import remote

    monkeypatch.setattr(remote, "_yielded", False)
    seen = {}

    def window_thread():
        tid = threading.get_native_id()
        seen["before"] = os.getpriority(os.PRIO_PROCESS, tid)
        remote.yield_cpu_to_the_rig()
        remote.yield_cpu_to_the_rig()  # once only
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)

    thread = threading.Thread(target=window_thread)
    thread.start()
    thread.join()
    assert seen["after"] == min(19, seen["before"] + remote.GUI_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < seen["after"]
