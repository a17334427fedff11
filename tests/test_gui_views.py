"""The live views draw synthetic snapshots offscreen; PNGs go to tests/output/gui_*.png."""

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6 import QtCore  # noqa: E402

from mea_control.gui.snapshot import Snapshot  # noqa: E402
from mea_control.gui.views import (  # noqa: E402
    DEFAULT_MAX_RATE_HZ,
    DENSE_ROWS,
    FE_UNITS,
    ROW_DIVISIONS,
    ArrayTraceView,
    ArrayView,
    GameView,
    ModelView,
    PsthView,
    RasterView,
    TracesPanel,
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
            "calibration_trials": 100, "trials_per_session": 100, "probes": 37,
            "free_energy": fe.tolist(),
            "x": x, "x_hat": x_hat, "W1": w1, "W0": rng.normal(0, 0.3, (2, 32)),
            "session_free_energy": [3120.0, 2840.0, 2690.0], "decisions": decisions,
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
        trace_filtered=True, trace_window_s=2.0,
        trace_threshold_uV=np.full(n_trace, -27.5), spike_t=spike_t, spike_channel=spike_ch,
        stim_t=stim_t,
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
    grid_snap = make_snapshot(layout, n_trace=layout.n_electrodes, model=False)
    views = {
        "traces": (TraceView(layout), 1000, 560),
        "traces_grid": (ArrayTraceView(layout), 1000, 640),
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
        view.update_view(grid_snap if name == "traces_grid" else snap)
        qtbot.wait(20)  # let a changed title re-lay out the plot, as the next frame would
        image = view.grab()
        assert not image.isNull()
        assert image.save(str(output_dir / f"gui_{name}{tag}.png"))
    array = views["array"][0]
    assert array.max_rate == DEFAULT_MAX_RATE_HZ  # a fixed colour scale by default
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
    snap.trace_window_s = 60.0
    trace = _show(qtbot, TraceView(layout, gain_uv=50), 1000, 600)
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


def _flat(layout, channels, lo_uv, hi_uv, window_s=2.0, bins=400, threshold=None):
    """Traces of ``channels`` whose every column spans [lo_uv, hi_uv]."""
    n = len(channels)
    return Snapshot(sample_rate=FS, now=int(60 * FS), n_electrodes=layout.n_electrodes,
                    trace_channels=list(channels),
                    trace_t=np.linspace(-window_s, 0, bins, endpoint=False),
                    trace_min=np.full((n, bins), lo_uv), trace_max=np.full((n, bins), hi_uv),
                    trace_window_s=window_s,
                    trace_threshold_uV=np.asarray(threshold if threshold is not None
                                                  else np.full(n, np.nan), float))


def _pixels(view, y):
    """Scene y (pixels) of view y values."""
    return np.array([view.plot.vb.mapViewToScene(QtCore.QPointF(0, v)).y() for v in y])


@pytest.mark.parametrize("gain", [20.0, 50.0, 200.0])
def test_gain_sets_microvolts_per_division(qtbot, gain):
    """A +-100 uV trace spans 200/gain divisions; a row is ROW_DIVISIONS divisions tall."""
    layout = load_layout("grid8x8_200um")
    panel = _show(qtbot, TracesPanel(layout), 900, 500)
    panel.set_gain(gain)
    assert panel.gain_uv == gain
    view = panel.view
    n = 4
    view.update_view(_flat(layout, range(n), -100.0, 100.0))
    qtbot.wait(20)
    y0, y1 = view.plot.vb.viewRange()[1]
    division_px = view.plot.vb.height() / (n * ROW_DIVISIONS)
    assert (y1 - y0) / (n * ROW_DIVISIONS) == pytest.approx(gain)  # one division, in uV
    lo, hi = view.curve.yData[0::2], view.curve.yData[1::2]
    span_px = np.abs(_pixels(view, [lo[0]]) - _pixels(view, [hi[0]]))[0]
    assert span_px == pytest.approx(200.0 / gain * division_px, rel=1e-3)
    bar = view.scale_bar.yData
    assert bar[1] - bar[0] == gain and view.scale_text.textItem.toPlainText() == f"{gain:g} µV"
    assert f"{gain:g} µV/div" in view.plot.titleLabel.text


@pytest.mark.parametrize("seconds", [0.2, 1.0, 5.0])
def test_time_base_sets_the_traces_window(qtbot, seconds):
    """The window asks the buffers for the time base; the traces span exactly it."""
    layout = load_layout("grid8x8_200um")
    panel = _show(qtbot, TracesPanel(layout), 900, 400)
    panel.set_time_base(seconds)
    asked = panel.request([2, 5])
    assert asked["trace_window_s"] == seconds and asked["channels"] == [2, 5]
    panel.update_view(_flat(layout, [2, 5], -10, 10, window_s=seconds))
    x0, x1 = panel.view.plot.vb.viewRange()[0]
    assert x0 == pytest.approx(-seconds)
    assert x1 == pytest.approx(seconds * (panel.view.x_margin - 1))  # the scale bar's margin


@pytest.mark.parametrize("arrangement", ["rows", "array"])
def test_threshold_line_is_at_each_electrodes_threshold(qtbot, arrangement):
    layout = load_layout("grid8x8_200um")
    panel = _show(qtbot, TracesPanel(layout), 900, 600)
    panel.set_arrangement(arrangement)
    panel.set_gain(50)
    chans = panel.request([1, 6, 9])["channels"]
    thr = -np.linspace(20, 45, len(chans))
    thr[1] = np.nan  # no threshold yet on this one
    view = panel.view
    view.update_view(_flat(layout, chans, -5, 5, threshold=thr))
    ys = view.threshold.yData
    assert np.array_equal(ys[0::2], ys[1::2]) and len(ys) == 2 * (len(chans) - 1)
    drawn = np.flatnonzero(np.isfinite(thr))
    if arrangement == "rows":
        baseline = (len(chans) - 1 - drawn) * view.spacing_uv
        assert ys[0::2] == pytest.approx(baseline + thr[drawn])
        assert view.threshold.xData[0::2] == pytest.approx(-2.0)  # across the window
    else:
        centre = layout.positions_um[np.asarray(chans)[drawn], 1]
        per_uv = view.cell_h / (ROW_DIVISIONS * 50.0)
        assert ys[0::2] == pytest.approx(centre + thr[drawn] * per_uv)
    raw = _flat(layout, chans, -5, 5, threshold=thr)
    raw.trace_filtered = False  # the detector sees filtered data only
    view.update_view(raw)
    assert len(view.threshold.yData) == 0
    panel.threshold.setChecked(False)
    view.update_view(_flat(layout, chans, -5, 5, threshold=thr))
    assert len(view.threshold.yData) == 0


def test_array_layout_places_each_trace_at_its_electrode(qtbot, output_dir, layout):
    panel = _show(qtbot, TracesPanel(layout), 1000, 700)
    panel.set_arrangement("array")
    asked = panel.request([3])
    assert asked["channels"] == list(range(layout.n_electrodes))
    snap = make_snapshot(layout, n_trace=layout.n_electrodes, model=False)
    # each channel's trace sits at a level of its own: its index in uV
    snap.trace_min = np.repeat(np.arange(layout.n_electrodes, dtype=float)[:, None],
                               len(snap.trace_t), axis=1)
    snap.trace_max = snap.trace_min + 1.0
    panel.set_gain(100)
    panel.update_view(snap)
    qtbot.wait(20)
    grid = panel.grid
    # the envelope's columns, black and (where spikes are) red
    x = np.concatenate([grid.curve.xData[0::2], grid.spikes.xData[0::2]])
    y = np.concatenate([grid.curve.yData[0::2], grid.spikes.yData[0::2]])
    assert len(grid.spikes.xData) > 0
    pos = layout.positions_um
    per_uv = grid.cell_h / (ROW_DIVISIONS * 100.0)
    for ch in (0, 7, layout.n_electrodes // 2, layout.n_electrodes - 1):
        mine = np.abs(y - (pos[ch, 1] + ch * per_uv)) < 1e-6
        mine &= np.abs(x - pos[ch, 0]) <= grid.cell_w / 2 + 1e-6
        assert mine.sum() == len(snap.trace_t)  # every column, in its electrode's cell
        cell_x = np.sort(x[mine]) - (pos[ch, 0] - grid.cell_w / 2)
        assert cell_x == pytest.approx((snap.trace_t + 2.0) / 2.0 * grid.cell_w)
    suffix = "" if layout.name == "grid8x8_200um" else f"_{layout.name}"
    assert panel.grab().save(str(output_dir / f"gui_traces_array{suffix}.png"))


def test_heatmap_colour_scale_fixed_or_automatic(qtbot):
    layout = load_layout("grid8x8_200um")
    view = _show(qtbot, ArrayView(layout), 600, 560)
    low = make_snapshot(layout, model=False)
    high = make_snapshot(layout, model=False)
    high.rates_hz = low.rates_hz * 4
    colours = []
    for snap in (low, high):
        view.update_view(snap)
        colours.append(view.cells[0].brush().color().name())
        assert view.max_rate == DEFAULT_MAX_RATE_HZ
        assert view.bar.levels() == (0, DEFAULT_MAX_RATE_HZ)
    assert colours[0] != colours[1]  # the same colour means the same rate, at any time
    view.colour_max.setValue(50.0)
    view.update_view(low)
    assert view.bar.levels() == (0, 50.0)
    view.colour_mode.setCurrentIndex(1)  # automatic: the scale follows the rates
    assert not view.colour_max.isEnabled()
    tops = []
    for snap in (low, high, low):
        view.update_view(snap)
        tops.append(view.max_rate)
        assert snap.rates_hz.max() <= view.max_rate <= 2 * snap.rates_hz.max()
        assert view.bar.levels() == (0, view.max_rate)
    assert tops[1] > tops[0] and tops[2] == tops[0]


def test_model_header_and_plot_give_free_energy_in_the_same_units(qtbot):
    layout = load_layout("grid8x8_200um")
    view = _show(qtbot, ModelView(layout), 1100, 900)
    snap = make_snapshot(layout)
    m = snap.model
    view.update_view(snap)
    per, last = m["trials_per_session"], m["session_free_energy"][-1]
    text = view.status.text()
    assert f"{last / per:.4g} nats per trial" in text and f"mean of its {per} trials" in text
    assert f"{last:.4g}" not in text  # not the session's sum beside a per-trial plot
    assert view.fe.getAxis("left").labelText == FE_UNITS.split(" (")[0] or \
        "nats per trial" in view.fe.getAxis("left").label.toPlainText()
    assert "nats per trial" in view.fe.titleLabel.text
    # the session means drawn are the header's figure, over the sessions' trials
    x, y = view.fe_sessions.xData, view.fe_sessions.yData
    assert y[-1] == pytest.approx(last / per)
    assert x[-1] == len(m["session_free_energy"]) * per - 1
    fe_x = view.fe_curve.xData
    assert x.min() >= fe_x[0]


def test_game_view_draws_a_pong_state_and_the_model_tab_ignores_it(qtbot, output_dir):
    """A snapshot whose model is pong's game state draws the court, the ball, the paddle
    and the score; fep's Model tab keeps its placeholder for it."""
    state = {"view": "pong", "condition": "stimulus", "frame": 412, "ball_x": 0.3,
             "ball_y": 0.7, "paddle_y": 0.4, "paddle_size": 0.25, "in_play": True,
             "event": "hit", "rally": 2, "hits": 5, "misses": 3, "aces": 1,
             "longest_rally": 3}
    snap = Snapshot(sample_rate=FS, now=int(16.5 * FS), n_electrodes=64, model=state)
    game = _show(qtbot, GameView(), 500, 460)
    game.update_view(Snapshot(sample_rate=FS, now=0, n_electrodes=64))
    assert game.stack.currentIndex() == 0
    game.update_view(snap)
    assert game.stack.currentIndex() == 1
    x, y = game.ball.getData()
    assert (list(x), list(y)) == ([0.3], [0.7])
    assert list(game.paddle.getData()[1]) == pytest.approx([0.275, 0.525])
    text = game.score.text()
    assert "hits 5" in text and "misses 3" in text and "aces 1" in text and "62%" in text
    qtbot.wait(20)
    image = game.grab()
    assert not image.isNull()
    image.save(str(output_dir / "gui_game_pong.png"))
    game.update_view(Snapshot(sample_rate=FS, now=0, n_electrodes=64,
                              model={**state, "frame": 413, "in_play": False}))
    assert len(game.ball.getData()[0]) == 0  # the ball waits for its serve
    model = _show(qtbot, ModelView(load_layout("grid8x8_200um")), 500, 400)
    model.update_view(snap)
    assert model.stack.currentIndex() == 0
