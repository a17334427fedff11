"""What the engine's watchdog measures: how far the loop is behind the device, and where
in the protocol's own file a hook is (for a hook that failed or hangs)."""

from __future__ import annotations

import inspect
import threading
import time
import traceback

#: How fast the watchdog lets the loop's offset from the device clock creep: drift
#: between the device's clock and the computer's (crystals: tens of ppm).
DRIFT_ALLOWANCE = 2e-4
#: After the run asked its loop to stop, a hook still running this long counts as hung.
STOP_GRACE_S = 2.0


class LagWatch:
    """The loop's lag behind the device (real time only).

    Lag is the growth of (wall time - data time) above its running minimum,
    which is allowed to creep up by DRIFT_ALLOWANCE so that the drift between
    the device's and the computer's clocks, and the time setup took, are not
    taken for lag. The backlog after a stall is.

    Callers on several threads measure and act under ``lock``, so that one lag is
    acted on once.
    """

    def __init__(self, sample_rate: float) -> None:
        self.sample_rate = sample_rate
        self.lock = threading.Lock()
        self._anchor: tuple[float, float] | None = None  # (offset s, wall s)
        #: The furthest the loop fell behind the device, in ms.
        self.max_ms = 0.0

    def restart(self) -> None:
        """Measure from now on, as if the loop had just started (after a re-arm)."""
        with self.lock:
            self._anchor = None

    def behind_ms(self, samples_done: int) -> float:
        """How far behind the device the loop is, having processed ``samples_done``
        samples since the run started (0 the first time). Call with ``lock`` held."""
        wall = time.perf_counter()
        offset = wall - samples_done / self.sample_rate
        if self._anchor is None:
            self._anchor = (offset, wall)
            return 0.0
        anchor, since = self._anchor
        anchor = min(offset, anchor + DRIFT_ALLOWANCE * (wall - since))
        self._anchor = (anchor, wall)
        behind = (offset - anchor) * 1000.0
        self.max_ms = max(self.max_ms, behind)
        return behind


def where_in(protocol: object, frames: traceback.StackSummary) -> str:
    """'(at FILE:LINE in HOOK)' for the deepest of ``frames`` in the protocol's own file."""
    try:
        source = inspect.getsourcefile(type(protocol))
    except TypeError:
        return ""
    mine = [f for f in frames if f.filename == source]
    if not mine:
        return ""
    f = mine[-1]
    return f"(at {f.filename}:{f.lineno} in {f.name})"
