"""The live views draw synthetic snapshots offscreen; PNGs go to tests/output/gui_*.png."""

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6 import QtCore  # noqa: E402

from mea_control.gui.snapshot import Snapshot  # noqa: E402
from mea_control.gui.views import (  # noqa: E402
    DENSE_ROWS,
    ArrayView,
    ModelView,
    PsthView,
    RasterView,
    TraceView,
)
from mea_control.layouts import load_layout  # noqa: E402

FS = 25_000.0


def _spikes(rng, n, window_s):
    """Background firing at 0.5-4 Hz plus network bursts that recruit most electrodes."""
    t, ch = [], []
    for c in range(n):
        k = rng.poisson(rng.uniform(0.5, 4.0) * window_s)
        t.append(rng.uniform(-window_s, 0, k))
        ch.append(np.full(k, c))
    for start in np.arange(-window_s + 2.5, -0.5, 6.0):
        for c in np.flatnonzero(rng.random(n) < 0.8):
            k = rng.integers(2, 8)
            t.append(start + rng.gamma(2.0, 0.04, k))
            ch.append(np.full(k, c))
    t, ch = np.concatenate(t), np.concatenate(ch)
    order = np.argsort(t)
    keep = t[order] < 0
    return t[order][keep], ch[order][keep].astype(np.int32)


def _envelope(rng, n_ch, t_s, spike_t, spike_ch, channels, bins=1000):
    """Min/max of 25 kHz noise (about +-20 uV) per pixel bin, spikes of -80 uV."""
    per = int(t_s * FS) // bins
    noise = rng.normal(0, 5.5, (n_ch, bins, per))
    lo, hi = noise.min(axis=2), noise.max(axis=2)
    t = -t_s + np.arange(bins) * per / FS
    for row, c in enumerate(channels):
        ts = spike_t[(spike_ch == c) & (spike_t >= t[0])]
        b = np.searchsorted(t, ts) - 1
        lo[row, b] = -80 + rng.normal(0, 8, len(b))
        hi[row, b] = np.maximum(hi[row, b], 25 + rng.normal(0, 4, len(b)))  # repolarisation
    return t, lo, hi


def _model_state(rng, trials=320, n_candidates=16):
    fe = 60 * np.exp(-np.arange(trials) / 120) + 25 + rng.normal(0, 3, trials)
    x = np.clip(rng.random((trials, 2)) * 0.6 + 0.2 * (rng.random((trials, 2)) < 0.5), 0, 1)
    x_hat = np.clip(x + rng.normal(0, 0.12, x.shape), 0, 1)
    w1 = rng.normal(0, 0.4, (2, 32))
    w1[0, :16] += 1.2
    w1[1, 16:] += 1.0
    decisions = []
    for i in range(8):
        probe = i % 3 == 1
        scores = rng.normal(-1, 0.3, n_candidates if probe else 1).round(6).tolist()
        decisions.append({"trial": trials - 8 + i, "probe": probe,
                          "method": "infomax" if probe else "generative",
                          "choice": int(np.argmax(scores)), "scores": scores})
    after = np.arange(100, trials)
    observed = rng.poisson(3.0, (len(after), 12)).astype(float)
    predicted = np.clip(observed + rng.normal(0, 1.0, observed.shape), 0, None)
    return {"running": True, "job": "control", "selection": "efe", "trials": trials,
            "calibration_trials": 100, "probes": 37, "free_energy": fe.tolist(),
            "x": x, "x_hat": x_hat, "W1": w1, "W0": rng.normal(0, 0.3, (2, 32)),
            "session_free_energy": [31.2, 28.4, 26.9], "decisions": decisions,
            "channels": np.flatnonzero(layout_channels(rng))[:32].tolist(),
            "electrode_sd": np.linspace(0.05, 0.3, 32)[rng.permutation(32)],
            "update_trials": after.tolist(), "update_probe": (after % 3 == 1).tolist(),
            "observed": observed, "predicted": predicted, "predicted_sd": np.ones_like(observed),
            "measure_name": "success",
            "measure": (rng.random(len(after)) < np.linspace(0.2, 0.8, len(after))).tolist(),
            "success_rate": 0.71}


def layout_channels(rng):
    """Which of 60 electrodes stimulated (the first 32 of a shuffled set)."""
    return np.isin(np.arange(60), rng.permutation(59)[:32])


def make_snapshot(layout, n_trace=8, window_s=30.0, seed=1, model=True):
    """A realistic frame: 2 s of traces, a raster with bursts, rates, a PSTH, a model."""
    rng = np.random.default_rng(seed)
    n = layout.n_electrodes
    spike_t, spike_ch = _spikes(rng, n, window_s)
    channels = list(range(n_trace))
    trace_t, lo, hi = _envelope(rng, n_trace, 2.0, spike_t, spike_ch, channels)
    stim_t = np.arange(-window_s + 0.7, 0, 4.0)
    stim_ch = np.flatnonzero(layout.can_stimulate)[[3, 20, 35]]
    centre = layout.positions_um.mean(axis=0) + (300, -200)
    dist = np.linalg.norm(layout.positions_um - centre, axis=1)
    rates = 30 * np.exp(-dist / 500) * rng.uniform(0.6, 1.0, n)
    rates[list(layout.reference)] = 0.0
    edges = np.arange(0, 102, 2.0)
    mid = edges[:-1] + 1
    psth = 0.08 + 1.6 * np.exp(-0.5 * ((mid - 20) / 6) ** 2) + rng.normal(0, 0.03, len(mid))
    return Snapshot(
        sample_rate=FS, now=int(600 * FS), n_electrodes=n,
        trace_channels=channels, trace_t=trace_t, trace_min=lo, trace_max=hi,
        trace_filtered=True, spike_t=spike_t, spike_channel=spike_ch, stim_t=stim_t,
        stim_channels=[tuple(stim_ch)] * len(stim_t), window_s=window_s, rates_hz=rates,
        rate_window_s=2.0, psth_edges_ms=edges, psth=np.clip(psth, 0, None),
        psth_pulses=len(stim_t) * 20, stimulated=stim_ch.astype(np.int32),
        model=_model_state(rng) if model else None,
    )


def _show(qtbot, view, w, h):
    qtbot.addWidget(view)
    view.resize(w, h)
    view.show()
    qtbot.waitExposed(view)
    return view


@pytest.fixture(params=["grid8x8_200um", "mcs60mea200"])
def layout(request):
    return load_layout(request.param)


def test_views_draw_a_realistic_frame(qtbot, output_dir, layout):
    snap = make_snapshot(layout)
    views = {
        "traces": (TraceView(layout), 1000, 560),
        "raster": (RasterView(layout), 1000, 520),
        "array": (ArrayView(layout), 620, 560),
        "psth": (PsthView(), 560, 360),
        "model": (ModelView(layout), 1100, 980),
    }
    tag = "" if layout.name == "grid8x8_200um" else f"_{layout.name}"
    for name, (view, w, h) in views.items():
        _show(qtbot, view, w, h)
        if name == "array":
            view.set_selection([layout.channel("34"), layout.channel("45")])
        view.update_view(snap)
        qtbot.wait(20)  # let a changed title re-lay out the plot, as the next frame would
        image = view.grab()
        assert not image.isNull()
        assert image.save(str(output_dir / f"gui_{name}{tag}.png"))
    array = views["array"][0]
    top = snap.rates_hz.max()
    assert top <= array.max_rate <= 2 * top  # the colour bar's top follows the rates
    assert len(array.stimulated.data) == len(snap.stimulated)
    model = views["model"][0]
    assert len(model.cells.data) == 32  # one cell for each stimulated electrode
    assert len(model.pred_points.data) == 40  # the last n_trials trials
    assert "success 71%" in model.status.text()
    assert len(model.job_curve.xData) == len(snap.model["measure"]) - 19  # 20-trial means
    trace = views["traces"][0]
    assert len(trace.curve.xData) == 2 * 8 * len(snap.trace_t)
    assert len(trace.spikes.xData) > 0


def test_views_accept_an_empty_snapshot(qtbot, output_dir, layout):
    empty = Snapshot(sample_rate=FS, now=0, n_electrodes=layout.n_electrodes)
    views = {"traces": TraceView(layout), "raster": RasterView(layout),
             "array": ArrayView(layout), "psth": PsthView()}
    for name, view in views.items():
        _show(qtbot, view, 500, 400)
        view.update_view(empty)
        view.update_view(empty)
        qtbot.wait(20)
        image = view.grab()
        assert not image.isNull()
        if layout.name == "grid8x8_200um":
            image.save(str(output_dir / f"gui_empty_{name}.png"))
    model = ModelView(layout)
    _show(qtbot, model, 500, 400)
    model.update_view(empty)
    assert model.stack.currentIndex() == 0
    model.grab().save(str(output_dir / "gui_model_none.png"))
    calibrating = {"running": False, "trials": 40, "calibration_trials": 100, "free_energy": [],
                   "x": np.zeros((0, 2)), "x_hat": np.zeros((0, 2)), "W1": None, "W0": None,
                   "session_free_energy": [], "decisions": []}
    model.update_view(Snapshot(sample_rate=FS, now=0, n_electrodes=60, model=calibrating))
    assert model.stack.currentIndex() == 1
    assert "Calibrating: 40 of 100" in model.status.text()


def test_selected_channels_without_data_and_with_no_selection(qtbot):
    layout = load_layout("grid8x8_200um")
    view = _show(qtbot, TraceView(layout), 600, 300)
    view.update_view(Snapshot(sample_rate=FS, now=0, n_electrodes=64, trace_channels=[3, 5]))
    snap = make_snapshot(layout, model=False)
    view.update_view(snap)
    snap.trace_channels = []
    view.update_view(snap)
    assert "no electrode selected" in view.plot.titleLabel.text


def test_click_on_an_electrode_toggles_it(qtbot, layout):
    view = _show(qtbot, ArrayView(layout), 600, 560)
    view.update_view(make_snapshot(layout, model=False))
    ch = layout.channel("34")

    def click():
        x, y = layout.positions_um[ch]
        scene = view.plot.vb.mapViewToScene(QtCore.QPointF(x, y))
        pos = view.glw.mapFromScene(scene)
        qtbot.mouseClick(view.glw.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pos)

    with qtbot.waitSignal(view.selection_changed, timeout=1000) as blocker:
        click()
    assert blocker.args == [[ch]]
    assert view.selection == [ch]
    with qtbot.waitSignal(view.selection_changed, timeout=1000) as blocker:
        click()
    assert blocker.args == [[]]
    assert view.channel_at(-1e4, -1e4) is None


@pytest.mark.parametrize("n_trace", [64, 8])
def test_the_heaviest_frame_shows_each_spike_once_in_its_row(qtbot, n_trace):
    """64 electrodes over 60 s (its cost is measured by benchmarks/gui.py --part frames):
    above DENSE_ROWS traces a spike is its row's envelope column drawn red, else a tick in
    the upper part of its row; the raster thins to one tick a row and pixel."""
    layout = load_layout("grid8x8_200um")
    snap = make_snapshot(layout, n_trace=n_trace, window_s=60.0, model=False)
    trace = _show(qtbot, TraceView(layout, spacing_uv=100), 1000, 600)
    raster = _show(qtbot, RasterView(layout), 1000, 400)
    trace.update_view(snap)
    raster.update_view(snap)
    qtbot.wait(20)
    assert not trace.grab().isNull() and not raster.grab().isNull()
    s, t = trace.spacing_uv, np.asarray(snap.trace_t)
    offsets = (n_trace - 1 - np.arange(n_trace)) * s
    st, sc = np.asarray(snap.spike_t), np.asarray(snap.spike_channel)
    shown = (sc < n_trace) & (st >= -snap.window_s)
    rows_with_spikes = set(sc[shown].tolist())
    xs, ys = trace.spikes.xData, trace.spikes.yData
    assert len(xs) > 0 and np.array_equal(xs[0::2], xs[1::2])  # vertical segments
    mid = (ys[0::2] + ys[1::2]) / 2
    rows = np.rint((offsets[0] - mid) / s).astype(int)
    assert set(rows.tolist()) <= rows_with_spikes
    if n_trace > DENSE_ROWS:
        # red columns at the bins holding spikes, left out of the black envelope
        cols = np.clip(np.searchsorted(t, st[shown], "right") - 1, 0, len(t) - 1)
        want = set(zip(sc[shown].tolist(), t[cols].tolist(), strict=True))
        assert set(zip(rows.tolist(), xs[0::2].tolist(), strict=True)) == want
        black = set(zip(np.rint((offsets[0] - trace.curve.yData[0::2]) / s).astype(int).tolist(),
                        trace.curve.xData[0::2].tolist(), strict=True))
        assert not black & want
    else:
        above = ys - offsets[np.repeat(rows, 2)]
        assert above.min() >= 0.32 * s - 1e-9 and above.max() <= 0.48 * s + 1e-9
        assert set(rows.tolist()) == rows_with_spikes
        assert len(xs) // 2 <= 2 * len(rows_with_spikes) * trace.columns(n_trace)
    ticks = raster.spikes.xData[0::2]
    tick_rows = np.rint((raster.spikes.yData[0::2] + raster.spikes.yData[1::2]) / 2).astype(int)
    assert set(tick_rows.tolist()) == set(sc[st >= -snap.window_s].tolist())
    assert len(set(zip(tick_rows.tolist(), ticks.tolist(), strict=True))) == len(ticks)
    assert len(ticks) < len(st)  # 60 s of a busy array: more spikes than pixels
