"""What the GUI draws, taken from the live buffers about 30 times a second.

The acquisition thread fills a :class:`~mea_control.gui.feed.LiveFeed`; the GUI
thread asks :class:`~mea_control.gui.live.LiveBuffers` for a :class:`Snapshot`
and hands that to every view. A snapshot holds copies only: views never touch
the buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Snapshot:
    """One frame's data. Times are seconds relative to ``now`` (negative: the past)."""

    sample_rate: float
    #: The views' clock just after the newest data: the device's sample, shifted to run on
    #: across runs whose device clock restarted (LiveBuffers).
    now: int
    n_electrodes: int
    # Traces of the selected electrodes as a min/max envelope, one column a pixel bin.
    trace_channels: list[int] = field(default_factory=list)
    trace_t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (P,) s
    trace_min: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (C, P) uV
    trace_max: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (C, P) uV
    trace_filtered: bool = True
    #: The traces' window (the time base), seconds.
    trace_window_s: float = 10.0
    #: The spike detector's threshold of each trace's electrode (uV, negative; NaN: none
    #: yet, as in its warm-up, or on a device that detects spikes itself).
    trace_threshold_uV: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (C,)
    # Spikes and pulses in the raster window (or the traces' when that is longer).
    spike_t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (S,) s
    spike_channel: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    stim_t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) s, executed
    stim_channels: list[tuple[int, ...]] = field(default_factory=list)
    window_s: float = 10.0
    # Firing rate per electrode over the last ``rate_window_s`` seconds, Hz.
    rates_hz: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rate_window_s: float = 2.0
    # Peri-stimulus time histogram: mean spikes per pulse per bin, all electrodes.
    psth_edges_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    psth: np.ndarray = field(default_factory=lambda: np.zeros(0))
    psth_pulses: int = 0
    # Electrodes that stimulated in the raster window (for marking on the array).
    stimulated: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    # Loop and device health: blocks, blocks_dropped, latency_p50_ms, latency_p99_ms,
    # watchdog ("armed" / "disarmed: why"), spikes, stims_executed, stims_refused.
    status: dict[str, Any] = field(default_factory=dict)
    # Run events and model decisions since the previous snapshot (oldest first).
    events: list[Any] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    # The protocol's model_state() when it returns one (see protocols/fep_closed_loop.py).
    model: dict[str, Any] | None = None
