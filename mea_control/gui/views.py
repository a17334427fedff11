"""The live views: pyqtgraph widgets that each draw one :class:`Snapshot` a frame.

Every view is a QWidget with ``update_view(snapshot)``, called about 30 times a second
from the GUI thread. To draw a frame in a few milliseconds the views keep few items (one
curve for many segments through a ``connect`` array), set their ranges themselves (no
auto-range, no pyqtgraph downsampling) and touch an item only when its data changed.
Neutral items use pyqtgraph's foreground colour, so a light or dark theme both read.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from mea_control.gui.snapshot import Snapshot
from mea_control.types import Layout

SPIKE_COLOUR = "#ff4d4d"
STIM_COLOUR = (255, 165, 0, 200)
SELECT_COLOUR = "#ff3df5"
THRESHOLD_COLOUR = (44, 168, 160, 190)
ENSEMBLE_COLOURS = ("#4c9be8", "#f28e2b")
N_COLOURS = 256
FE_UNITS = "free energy (nats per trial)"
#: The top of the firing-rate colour scale until the operator sets another (Hz).
DEFAULT_MAX_RATE_HZ = 20.0
#: Items that never change are painted from a pixmap: 64 outlined discs cost 1 ms a frame
CACHED = QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache


def _foreground(alpha: int = 255) -> QtGui.QColor:
    colour = pg.mkColor(pg.getConfigOption("foreground"))
    colour.setAlpha(alpha)
    return colour


def _segments(x0, y0, x1, y1) -> tuple[np.ndarray, np.ndarray]:
    """Segment ends interleaved for a ``connect="pairs"`` curve."""
    n = len(x0)
    x, y = np.empty(2 * n), np.empty(2 * n)
    x[0::2], x[1::2], y[0::2], y[1::2] = x0, x1, y0, y1
    return x, y


def _columns(t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertical segments from ``lo`` to ``hi`` (rows x columns at ``t``: one x a column,
    or rows x columns of x) ``where`` True, as :func:`_segments` gives them."""
    at = np.flatnonzero(where)  # faster than 2-D masks and nonzero
    x = t.ravel()[at] if t.ndim == 2 else t[at % len(t)]
    return _segments(x, lo.ravel()[at], x, hi.ravel()[at])


def _spiky(t: np.ndarray, rows: np.ndarray, st: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Which envelope columns (rows x len(t), where ``have`` data) hold a spike of
    ``rows`` at times ``st``."""
    spiky = np.zeros_like(have)
    cols = np.clip(np.searchsorted(t, st, "right") - 1, 0, len(t) - 1)
    spiky.ravel()[rows * len(t) + cols] = True
    return spiky & have


def _thresholds(snap: Snapshot, n: int) -> np.ndarray:
    """The detection threshold of each of the ``n`` traces (uV; NaN: none, or raw traces,
    which the detector does not see)."""
    thr = np.asarray(snap.trace_threshold_uV, float)
    if not snap.trace_filtered or thr.shape != (n,):
        return np.full(n, np.nan)
    return thr


def _vlines(t: np.ndarray, y0: float, y1: float) -> tuple[np.ndarray, np.ndarray]:
    return _segments(t, np.full(len(t), y0), t, np.full(len(t), y1))


def _one_a_pixel(rows: np.ndarray, t: np.ndarray, n_rows: int, t0: float, t1: float,
                 columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Events (row, time in [t0, t1]) thinned to one per row and column of ``columns``
    over [t0, t1], the column's left edge for its time: all a screen can show."""
    cols = np.clip(((t - t0) / (t1 - t0) * columns).astype(np.int64), 0, columns - 1)
    have = np.zeros(n_rows * columns, bool)
    have[rows * columns + cols] = True
    rows, cols = np.divmod(np.flatnonzero(have), columns)
    return rows, t0 + (t1 - t0) * cols / columns


def _label_rows(axis: pg.AxisItem, positions, labels: list[str]) -> None:
    """Label rows on ``axis``: each of up to DENSE_ROWS rows; of more, every 8th row, and
    every 4th, 2nd and each while they have room (64 labels do not fit beside 64 rows a
    few pixels tall)."""
    rows = list(zip(positions, labels, strict=True))
    if len(rows) <= DENSE_ROWS:
        axis.setTicks([[(float(p), label) for p, label in rows], []])
        return
    levels = [[(float(p), label) for i, (p, label) in enumerate(rows)
               if i % step == 0 and (step == 8 or i % (2 * step))] for step in (8, 4, 2, 1)]
    axis.setTicks(levels)
    axis.setStyle(textFillLimits=[(0, 0.9), (2, 0.7), (4, 0.6), (6, 0.55)])


def _shown_spikes(snap: Snapshot, chans: list[int], t0: float,
                  t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Row (index in ``chans``) and time of the snapshot's spikes in [t0, t1] on those rows."""
    st, sc = np.asarray(snap.spike_t, float), np.asarray(snap.spike_channel, int)
    if len(st) != len(sc):
        st, sc = st[:0], sc[:0]
    row_of = np.full(max(snap.n_electrodes, max(chans) + 1, int(sc.max(initial=-1)) + 1), -1)
    row_of[chans] = np.arange(len(chans))
    keep = (st >= t0) & (st <= t1)
    rows = row_of[sc[keep]]
    return rows[rows >= 0], st[keep][rows >= 0]


def _segment_curve(pen: QtGui.QPen) -> pg.PlotCurveItem:
    """A curve of separate line segments, drawn with one QPainter.drawLines call."""
    curve = pg.PlotCurveItem(pen=pen, connect="pairs", skipFiniteCheck=True)
    curve.setSegmentedLineMode("on")  # 2-3x faster than a path of many segments
    return curve


def _one_update_rect(view: QtWidgets.QGraphicsView) -> None:
    """Repaint one rectangle around all changes: with pyqtgraph's default (a region of
    several rectangles) Qt clips 64k trace segments against each, 3x slower."""
    view.setViewportUpdateMode(QtWidgets.QGraphicsView.ViewportUpdateMode.BoundingRectViewportUpdate)


def _label(layout: Layout, ch: int) -> str:
    return layout.labels[ch] if 0 <= ch < layout.n_electrodes else str(ch)


#: Pixel columns a view draws: at least, and when it is not on screen.
MIN_COLUMNS = 200
DEFAULT_COLUMNS = 1000
#: Above this many rows the trace view draws one envelope column every two pixels.
DENSE_ROWS = 16
#: A trace's row (or array cell) is this many divisions tall, its baseline in the middle.
ROW_DIVISIONS = 2
#: The traces' gains (uV per division) and time bases (s) to choose from, and the defaults.
GAINS_UV = (5, 10, 20, 25, 50, 75, 100, 150, 200, 300, 500, 1000)
DEFAULT_GAIN_UV = 75.0
TIME_BASES_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60)
DEFAULT_TIME_BASE_S = 1.0


class _PlotView(QtWidgets.QWidget):
    """A QWidget holding one PlotItem with auto-range off; ranges set only on change."""

    #: The x range is this times the window (TraceView: room for its scale bar).
    x_margin = 1.0

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = pg.PlotWidget()
        _one_update_rect(self.plot_widget)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.hideButtons()
        self.plot.disableAutoRange()
        # the axes and title overlap the data's repaint rectangle: blit them, unchanged
        for item in (self.plot.getAxis("left"), self.plot.getAxis("bottom"), self.plot.titleLabel,
                     self.plot.titleLabel.item):
            item.setCacheMode(CACHED)
        box = QtWidgets.QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.plot_widget)
        self._range: tuple | None = None
        self._title: str | None = None
        self._set_title(" ")

    def pixels(self) -> int:
        """The width in device pixels of the plot's x range up to its window's end (the
        rest is the margin): the columns worth drawing."""
        width = self.plot.getViewBox().width() * self.devicePixelRatioF() / self.x_margin
        return max(MIN_COLUMNS, int(width)) if self.isVisible() else DEFAULT_COLUMNS

    def _set_range(self, x: tuple[float, float], y: tuple[float, float]) -> None:
        if (x, y) != self._range:
            self._range = (x, y)
            self.plot.setRange(xRange=x, yRange=y, padding=0)

    def _set_title(self, title: str) -> None:
        if title != self._title:
            self._title = title
            self.plot.setTitle(title)


class TraceView(_PlotView):
    """The selected electrodes' traces stacked top to bottom, with spikes and pulses.

    Each row is drawn from the snapshot's min/max envelope, a vertical segment per pixel
    bin; all rows are one curve. Rows are ROW_DIVISIONS divisions apart at a fixed gain
    (``gain_uv`` microvolts a division, the scale bar one division); the x range is the
    snapshot's trace window. Red ticks above a row are its spikes, orange lines pulses, a
    teal line the detector's threshold on each filtered trace (``show_threshold``).
    """

    x_margin = 1.12

    def __init__(self, layout: Layout, gain_uv: float = DEFAULT_GAIN_UV,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.electrode_layout = layout
        self.gain_uv = float(gain_uv)
        self.show_threshold = True
        self.plot.setLabel("bottom", "time relative to now", units="s")
        self.plot.setLabel("left", "electrode")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.stims = _segment_curve(pg.mkPen(STIM_COLOUR, width=1))
        self.curve = _segment_curve(pg.mkPen(_foreground()))
        # spike ticks are 2 px wide as two 1-px lines: a 2-px pen costs Qt 8x more
        self.spikes = _segment_curve(pg.mkPen(SPIKE_COLOUR, width=1))
        self.threshold = _segment_curve(pg.mkPen(THRESHOLD_COLOUR))  # solid: dashed costs 1 ms
        self.scale_bar = pg.PlotCurveItem(pen=pg.mkPen(_foreground(), width=3))
        self.scale_text = pg.TextItem(anchor=(0, 0.5), color=_foreground())
        for item in (self.stims, self.curve, self.spikes, self.threshold, self.scale_bar,
                     self.scale_text):
            self.plot.addItem(item)
        self._channels: list[int] | None = None
        self._bar: tuple | None = None

    @property
    def spacing_uv(self) -> float:
        """Microvolts between two rows' baselines."""
        return ROW_DIVISIONS * self.gain_uv

    def columns(self, rows: int) -> int:
        """Envelope columns to ask a snapshot for: one a pixel, or one every two pixels
        when more than DENSE_ROWS rows share the plot (each then only a few pixels tall;
        every extreme is still drawn, over 2 pixels of time)."""
        return self.pixels() // 2 if rows > DENSE_ROWS else self.pixels()

    def update_view(self, snap: Snapshot) -> None:
        """Draw the snapshot's envelope, spikes, pulses and thresholds."""
        chans = [int(c) for c in snap.trace_channels]
        n, t = len(chans), np.asarray(snap.trace_t, float)
        lo, hi = np.asarray(snap.trace_min, float), np.asarray(snap.trace_max, float)
        ok = n > 0 and len(t) > 0 and lo.shape == hi.shape == (n, len(t))
        s = self.spacing_uv
        offsets = (n - 1 - np.arange(n)) * s
        if chans != self._channels:
            self._channels = chans
            _label_rows(self.plot.getAxis("left"), offsets,
                        [_label(self.electrode_layout, c) for c in chans])
        kind = "filtered" if snap.trace_filtered else "raw"
        threshold = (" <span style='color:#2ca8a0'>— threshold</span>"
                     if self.show_threshold and snap.trace_filtered else "")
        self._set_title(f"Traces, <b>{kind}</b>, {self.gain_uv:g} µV/div, "
                        f"{snap.trace_window_s:g} s; "
                        f"<span style='color:{SPIKE_COLOUR}'>| spikes</span> "
                        f"<span style='color:#ffa500'>| pulses</span>{threshold}" if n else
                        "Traces: no electrode selected (click electrodes on the array)")
        t0, t1 = -float(snap.trace_window_s), 0.0
        y_range = (-0.5 * s, (n - 0.5) * s) if n else (-0.5 * s, 0.5 * s)
        if not ok:
            for item in (self.curve, self.spikes, self.stims, self.threshold, self.scale_bar):
                item.setData([], [])
            self.scale_text.setText("")
            self._bar = None
            self._set_range((t0, t1), y_range)
            return
        # the snapshot's window, not its bins' times: those shift a little every frame,
        # and a moving range makes pyqtgraph rebuild the axis and repaint twice a frame
        rows, st = _shown_spikes(snap, chans, t0, t1)
        # one vertical segment from min to max per pixel bin and row; bins without data
        # (NaN: before the run, gaps) are left out, as the curve skips finite checks
        have = np.isfinite(lo) & np.isfinite(hi)
        lo, hi = lo + offsets[:, None], hi + offsets[:, None]
        if n > DENSE_ROWS:
            # rows a few pixels tall: a spike is its envelope column drawn red (a tick
            # above the row would touch the next row up)
            spiky = _spiky(t, rows, st, have)
            have &= ~spiky
            self.spikes.setData(*_columns(t, lo, hi, spiky))
        else:
            # a tick in the upper part of the row where a pixel column of it holds
            # spikes (all the screen can show), 2 px wide as two 1-px lines
            rows, xt = _one_a_pixel(rows, st, n, t0, t1, self.columns(n))
            xt = np.concatenate([xt, xt + (t1 - t0) / self.pixels()])
            base = offsets[np.tile(rows, 2)]
            self.spikes.setData(*_segments(xt, base + 0.32 * s, xt, base + 0.48 * s))
        self.curve.setData(*_columns(t, lo, hi, have))
        stim = np.asarray(snap.stim_t, float)
        stim = stim[(stim >= t0) & (stim <= t1)]
        self.stims.setData(*_vlines(stim, -0.5 * s, (n - 0.5) * s))
        thr = _thresholds(snap, n) if self.show_threshold else np.full(n, np.nan)
        drawn = np.flatnonzero(np.isfinite(thr))
        y = offsets[drawn] + thr[drawn]
        self.threshold.setData(*_segments(np.full(len(drawn), t0), y, np.full(len(drawn), t1), y))
        # a vertical scale bar of one division right of the traces, by the top row
        xb = t1 + 0.012 * (t1 - t0)
        yb = offsets[0]
        if (xb, yb, self.gain_uv) != self._bar:
            self._bar = (xb, yb, self.gain_uv)
            self.scale_bar.setData([xb, xb], [yb, yb + self.gain_uv])
            self.scale_text.setText(f"{self.gain_uv:g} µV")
            self.scale_text.setPos(xb, yb + self.gain_uv / 2)
        self._set_range((t0, t1 + (self.x_margin - 1) * (t1 - t0)), y_range)


class ArrayTraceView(_PlotView):
    """Every electrode's trace in a small cell at its place on the array (as MC_Rack
    shows an 8x8 MEA), with its label, spikes (red), pulses (orange) and threshold.

    A cell is ROW_DIVISIONS divisions of ``gain_uv`` microvolts tall (a trace is clipped
    to its cell) and spans the snapshot's trace window. All cells are one curve.
    """

    #: A cell's width and height as fractions of the electrode pitch.
    CELL_W, CELL_H = 0.92, 0.84

    def __init__(self, layout: Layout, gain_uv: float = DEFAULT_GAIN_UV,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.electrode_layout = layout
        self.gain_uv = float(gain_uv)
        self.show_threshold = True
        pos = layout.positions_um
        self.pitch = p = _pitch(pos)
        for axis in ("left", "bottom"):
            self.plot.hideAxis(axis)
        self.plot.setMouseEnabled(False, False)
        self.plot.setMenuEnabled(False)
        self.cell_w, self.cell_h = self.CELL_W * p, self.CELL_H * p
        left, bottom = pos[:, 0] - self.cell_w / 2, pos[:, 1] - self.cell_h / 2
        right, top = left + self.cell_w, bottom + self.cell_h
        frames = _segment_curve(pg.mkPen(_foreground(60), width=1))
        frames.setData(*_segments(np.concatenate([left, left, left, right]),
                                  np.concatenate([bottom, top, bottom, bottom]),
                                  np.concatenate([right, right, left, right]),
                                  np.concatenate([bottom, top, top, top])))
        self.plot.addItem(frames)
        self.stims = _segment_curve(pg.mkPen(STIM_COLOUR, width=1))
        self.curve = _segment_curve(pg.mkPen(_foreground()))
        self.spikes = _segment_curve(pg.mkPen(SPIKE_COLOUR, width=1))
        self.threshold = _segment_curve(pg.mkPen(THRESHOLD_COLOUR))  # solid: dashed costs 1 ms
        for item in (self.stims, self.curve, self.spikes, self.threshold):
            self.plot.addItem(item)
        font = QtGui.QFont()
        font.setPointSizeF(7)
        for ch in range(layout.n_electrodes):
            self.plot.addItem(_tag(layout.labels[ch], left[ch], top[ch], font))
        lo, hi = pos.min(axis=0) - 0.5 * p, pos.max(axis=0) + 0.5 * p
        self._set_range((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))

    def channels(self) -> list[int]:
        """Every electrode of the layout."""
        return list(range(self.electrode_layout.n_electrodes))

    def columns(self) -> int:
        """Envelope columns to ask a snapshot for: one a pixel of a cell's width."""
        x0, x1 = self._range[0] if self._range else (0.0, 1.0)
        width = self.plot.getViewBox().width() * self.devicePixelRatioF()
        if not self.isVisible():
            width = DEFAULT_COLUMNS
        return max(16, int(width * self.cell_w / (x1 - x0)))

    def update_view(self, snap: Snapshot) -> None:
        """Draw each electrode's envelope, spikes, pulses and threshold in its cell."""
        chans = np.asarray(snap.trace_channels, int)
        n, t = len(chans), np.asarray(snap.trace_t, float)
        lo, hi = np.asarray(snap.trace_min, float), np.asarray(snap.trace_max, float)
        ok = (n > 0 and len(t) > 0 and lo.shape == hi.shape == (n, len(t))
              and chans.max() < self.electrode_layout.n_electrodes)
        kind = "filtered" if snap.trace_filtered else "raw"
        self._set_title(f"Traces on the array, <b>{kind}</b>, {self.gain_uv:g} µV/div, "
                        f"{snap.trace_window_s:g} s a cell")
        if not ok:
            for item in (self.curve, self.spikes, self.stims, self.threshold):
                item.setData([], [])
            return
        t0, t1 = -float(snap.trace_window_s), 0.0
        pos = self.electrode_layout.positions_um[chans]
        left, mid = pos[:, 0] - self.cell_w / 2, pos[:, 1]
        x = left[:, None] + (t - t0)[None, :] * (self.cell_w / (t1 - t0))
        g, per_uv = self.gain_uv, self.cell_h / (ROW_DIVISIONS * self.gain_uv)
        have = np.isfinite(lo) & np.isfinite(hi)
        lo = mid[:, None] + np.clip(lo, -g, g) * per_uv
        hi = mid[:, None] + np.clip(hi, -g, g) * per_uv
        rows, st = _shown_spikes(snap, chans.tolist(), t0, t1)
        spiky = _spiky(t, rows, st, have)
        self.spikes.setData(*_columns(x, lo, hi, spiky))
        self.curve.setData(*_columns(x, lo, hi, have & ~spiky))
        stim = np.asarray(snap.stim_t, float)
        stim = stim[(stim >= t0) & (stim <= t1)]
        xs = (left[:, None] + (stim - t0)[None, :] * (self.cell_w / (t1 - t0))).ravel()
        ys = np.repeat(mid, len(stim))
        self.stims.setData(*_segments(xs, ys - self.cell_h / 2, xs, ys + self.cell_h / 2))
        thr = _thresholds(snap, n) if self.show_threshold else np.full(n, np.nan)
        drawn = np.flatnonzero(np.isfinite(thr))
        y = mid[drawn] + np.clip(thr[drawn], -g, g) * per_uv
        self.threshold.setData(*_segments(left[drawn], y, left[drawn] + self.cell_w, y))


class TracesPanel(QtWidgets.QWidget):
    """The traces with their display controls: rows of the selected electrodes or every
    electrode on the array, gain (uV/div), time base and the detection threshold.

    The window asks :meth:`request` what to put in the snapshot and hands the snapshot
    to :meth:`update_view`.
    """

    ARRANGEMENTS = ("rows", "array")

    def __init__(self, layout: Layout, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows = TraceView(layout)
        self.grid = ArrayTraceView(layout)
        self.arrangement = QtWidgets.QComboBox()
        self.arrangement.addItem("rows: selected electrodes", "rows")
        self.arrangement.addItem("array: every electrode", "array")
        self.gain = QtWidgets.QComboBox()
        for g in GAINS_UV:
            self.gain.addItem(f"{g:g} µV/div", float(g))
        self.time_base = QtWidgets.QComboBox()
        for tb in TIME_BASES_S:
            self.time_base.addItem(f"{tb:g} s" if tb >= 1 else f"{tb * 1000:g} ms", float(tb))
        self.threshold = QtWidgets.QCheckBox("threshold")
        self.threshold.setToolTip("draw the spike detector's threshold on each filtered trace")
        self.threshold.setChecked(True)
        bar = QtWidgets.QHBoxLayout()
        bar.setContentsMargins(4, 0, 4, 0)
        for label, control in (("traces", self.arrangement), ("gain", self.gain),
                               ("time base", self.time_base), (None, self.threshold)):
            if label:
                bar.addWidget(QtWidgets.QLabel(label))
            bar.addWidget(control)
        bar.addStretch()
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.rows)
        self.stack.addWidget(self.grid)
        box = QtWidgets.QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addLayout(bar)
        box.addWidget(self.stack, 1)
        self.arrangement.currentIndexChanged.connect(self._arranged)
        self.gain.currentIndexChanged.connect(self._gain_changed)
        self.threshold.toggled.connect(self._threshold_toggled)
        self.set_gain(DEFAULT_GAIN_UV)
        self.set_time_base(DEFAULT_TIME_BASE_S)

    # -- the controls --------------------------------------------------------------------
    @property
    def gain_uv(self) -> float:
        return float(self.gain.currentData())

    @property
    def time_base_s(self) -> float:
        return float(self.time_base.currentData())

    @property
    def view(self) -> TraceView | ArrayTraceView:
        """The trace view shown."""
        return self.grid if self.arrangement.currentData() == "array" else self.rows

    def set_gain(self, uv_per_div: float) -> None:
        """Show ``uv_per_div`` microvolts a division (one of GAINS_UV)."""
        self.gain.setCurrentIndex(_choice(self.gain, uv_per_div))
        self._gain_changed()

    def set_time_base(self, seconds: float) -> None:
        """Show the last ``seconds`` (one of TIME_BASES_S)."""
        self.time_base.setCurrentIndex(_choice(self.time_base, seconds))

    def set_arrangement(self, name: str) -> None:
        """"rows" (the selected electrodes) or "array" (every electrode at its place)."""
        self.arrangement.setCurrentIndex(self.ARRANGEMENTS.index(name))

    def _arranged(self) -> None:
        self.stack.setCurrentWidget(self.view)

    def _gain_changed(self) -> None:
        self.rows.gain_uv = self.grid.gain_uv = self.gain_uv

    def _threshold_toggled(self, on: bool) -> None:
        self.rows.show_threshold = self.grid.show_threshold = on

    # -- the frame -----------------------------------------------------------------------
    def request(self, selected: list[int]) -> dict:
        """What the shown view needs in a snapshot (keywords of LiveBuffers.snapshot)."""
        channels = self.grid.channels() if self.view is self.grid else list(selected)
        return {"channels": channels, "pixels": self.columns(len(channels)),
                "trace_window_s": self.time_base_s}

    def columns(self, rows: int) -> int:
        """Envelope columns the shown view draws for ``rows`` traces."""
        return self.grid.columns() if self.view is self.grid else self.rows.columns(rows)

    def update_view(self, snap: Snapshot) -> None:
        self.view.update_view(snap)


def _choice(combo: QtWidgets.QComboBox, value: float) -> int:
    """The index of the item whose data is nearest ``value``."""
    values = [float(combo.itemData(i)) for i in range(combo.count())]
    return int(np.argmin(np.abs(np.log(np.asarray(values) / max(float(value), 1e-9)))))


class RasterView(_PlotView):
    """Every electrode's spikes over the snapshot's window, one row an electrode.

    Channel 0 is the top row; all spikes are one curve of short vertical ticks and the
    pulses are orange lines across all rows.
    """

    def __init__(self, layout: Layout, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.electrode_layout = layout
        n = layout.n_electrodes
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "time relative to now", units="s")
        self.plot.setLabel("left", "electrode")
        _label_rows(self.plot.getAxis("left"), range(n), [_label(layout, ch) for ch in range(n)])
        self.stims = _segment_curve(pg.mkPen(STIM_COLOUR, width=1))
        self.spikes = _segment_curve(pg.mkPen(_foreground(), width=1))
        self.plot.addItem(self.stims)
        self.plot.addItem(self.spikes)

    def update_view(self, snap: Snapshot) -> None:
        """Draw the snapshot's spikes (one tick a row and pixel) and pulses over its window."""
        n = max(self.electrode_layout.n_electrodes, snap.n_electrodes)
        t0 = -float(snap.window_s)
        t = np.asarray(snap.spike_t, float)
        ch = np.asarray(snap.spike_channel, int)
        if len(ch) != len(t):
            t, ch = t[:0], ch[:0]
        keep = (t >= t0) & (t <= 0.0) & (ch >= 0) & (ch < n)
        ch, t = _one_a_pixel(ch[keep], t[keep], n, t0, 0.0, self.pixels())
        self.spikes.setData(*_segments(t, ch - 0.4, t, ch + 0.4))
        stim = np.asarray(snap.stim_t, float)
        stim = stim[stim >= t0]  # the traces' window may be longer
        self.stims.setData(*_vlines(stim, -0.5, n - 0.5))
        # no spike count here: a title that changes every frame re-lays out the plot
        self._set_title(f"Spike raster, last {snap.window_s:g} s; "
                        f"<span style='color:#ffa500'>| {len(stim)} pulses</span>")
        self._set_range((-float(snap.window_s), 0.0), (-0.5, n - 0.5))


def _pitch(positions: np.ndarray) -> float:
    """The smallest distance between two electrodes (100 um for a single one)."""
    if len(positions) < 2:
        return 100.0
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    d[d == 0] = np.inf
    return float(d.min())


def _nice_ceiling(x: float) -> float:
    """The first of 5, 10, 20, 30, 50, 100, 200, 300, 500, ... at or above x."""
    k = 0
    while True:
        for m in (1, 2, 3, 5):
            if m * 10**k >= max(x, 5):
                return float(m * 10**k)
        k += 1


class ArrayView(QtWidgets.QWidget):
    """The electrode layout as a heatmap of firing rates; click an electrode to select it.

    Each electrode is a square cell at its position coloured by its rate (grey: no rate
    yet). White discs mark the electrodes that can stimulate, orange stars those that
    stimulated in the raster window, magenta frames the selection. Clicking a cell
    toggles it and emits ``selection_changed`` with the sorted selected channels.
    Cells, discs and labels are plain Qt items (painted in C++: a frame costs little).

    The colour scale is fixed (0 to ``max_rate_hz``, so colours compare over time) unless
    the operator sets it automatic (None): it then follows the highest rate.
    """

    selection_changed = QtCore.Signal(list)

    def __init__(self, layout: Layout, max_rate_hz: float | None = DEFAULT_MAX_RATE_HZ,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.electrode_layout = layout
        self.fixed_max = max_rate_hz
        self.max_rate = max_rate_hz or 5.0
        pos = layout.positions_um
        self.pitch = p = _pitch(pos)
        self.glw = pg.GraphicsLayoutWidget()
        _one_update_rect(self.glw)
        self.plot = self.glw.addPlot(row=0, col=0)
        self.plot.setAspectLocked(True)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(False, False)
        self.cmap = pg.colormap.get("viridis")
        lut = self.cmap.getLookupTable(0.0, 1.0, nPts=N_COLOURS, alpha=False)
        self._brushes = [pg.mkBrush(*rgb) for rgb in lut.tolist()]
        self._no_rate = pg.mkBrush(110, 110, 110)
        self.cells, self.frames = [], []
        font = QtGui.QFont()
        font.setPointSizeF(7.5)
        roles = {c: "ref" for c in layout.reference} | {c: "gnd" for c in layout.ground}
        for ch, (x, y) in enumerate(pos):
            square = QtCore.QRectF(x - 0.47 * p, y - 0.47 * p, 0.94 * p, 0.94 * p)
            cell = QtWidgets.QGraphicsRectItem(square)
            cell.setPen(pg.mkPen(None))
            cell.setBrush(self._no_rate)
            frame = QtWidgets.QGraphicsRectItem(square)
            frame.setPen(pg.mkPen(SELECT_COLOUR, width=4))
            frame.setZValue(3)
            frame.setCacheMode(CACHED)
            frame.setVisible(False)
            self.plot.addItem(cell)
            self.plot.addItem(frame)
            self.cells.append(cell)
            self.frames.append(frame)
            if layout.can_stimulate[ch]:
                r = 0.1 * p
                disc = QtWidgets.QGraphicsEllipseItem(x - r, y - r, 2 * r, 2 * r)
                disc.setPen(pg.mkPen("k", width=1.5))
                disc.setBrush(pg.mkBrush("w"))
                disc.setZValue(1)
                disc.setCacheMode(CACHED)
                self.plot.addItem(disc)
            self.plot.addItem(_tag(layout.labels[ch] + (f" {roles[ch]}" if ch in roles else ""),
                                   x - 0.47 * p, y + 0.47 * p, font))
        self.stimulated = pg.ScatterPlotItem(symbol="star", size=0.42 * p, pxMode=False,
                                             pen=pg.mkPen("k", width=1.5), brush=STIM_COLOUR[:3])
        self.stimulated.setZValue(2)
        self.plot.addItem(self.stimulated)
        lo, hi = pos.min(axis=0) - 0.5 * p, pos.max(axis=0) + 0.5 * p
        self.plot.setRange(xRange=(lo[0], hi[0]), yRange=(lo[1], hi[1]), padding=0.02)
        self.bar = pg.ColorBarItem(values=(0, self.max_rate), colorMap=self.cmap,
                                   label="firing rate (Hz)", interactive=False, width=18)
        self.glw.addItem(self.bar, row=0, col=1)
        self.legend = QtWidgets.QLabel(
            "<span style='color:#888'>○</span> can stimulate &nbsp; "
            "<span style='color:#ffa500'>★</span> stimulated in the raster window &nbsp; "
            f"<span style='color:{SELECT_COLOUR}'>□</span> selected (click to toggle) &nbsp; "
            "<span style='color:#6e6e6e'>■</span> no rate yet")
        self.legend.setWordWrap(True)
        box = QtWidgets.QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addLayout(self._colour_controls())
        box.addWidget(self.glw, 1)
        box.addWidget(self.legend)
        self._selection: list[int] = []
        self._colour_idx = np.full(layout.n_electrodes, -1)
        self._stimulated: np.ndarray | None = None
        self._window: float | None = None
        self._bar_max = self.max_rate
        self.glw.scene().sigMouseClicked.connect(self._clicked)

    def _colour_controls(self) -> QtWidgets.QHBoxLayout:
        """Colour scale: fixed from 0 to a rate the operator sets, or automatic."""
        self.colour_mode = QtWidgets.QComboBox()
        self.colour_mode.addItems(["fixed", "automatic"])
        self.colour_max = QtWidgets.QDoubleSpinBox(minimum=0.5, maximum=1000.0, decimals=1,
                                                   suffix=" Hz")
        self.colour_max.setValue(self.fixed_max or DEFAULT_MAX_RATE_HZ)
        self.colour_max.setToolTip("the firing rate at the top of the colour scale")
        self.set_colour_scale(self.fixed_max)
        self.colour_mode.currentIndexChanged.connect(self._colour_changed)
        self.colour_max.valueChanged.connect(self._colour_changed)
        bar = QtWidgets.QHBoxLayout()
        bar.setContentsMargins(4, 0, 4, 0)
        for widget in (QtWidgets.QLabel("colour scale"), self.colour_mode,
                       QtWidgets.QLabel("0 to"), self.colour_max):
            bar.addWidget(widget)
        bar.addStretch()
        return bar

    def set_colour_scale(self, max_hz: float | None) -> None:
        """Fix the colour scale at 0 to ``max_hz``, or (None) make it automatic."""
        for widget in (self.colour_mode, self.colour_max):
            widget.blockSignals(True)
        self.colour_mode.setCurrentIndex(1 if max_hz is None else 0)
        if max_hz is not None:
            self.colour_max.setValue(max_hz)
        self.colour_max.setEnabled(max_hz is not None)
        for widget in (self.colour_mode, self.colour_max):
            widget.blockSignals(False)
        self.fixed_max = None if max_hz is None else float(self.colour_max.value())
        # automatic: the next frame sets the top from its rates (5 Hz is the lowest top)
        self.max_rate = self.fixed_max or 5.0

    def _colour_changed(self) -> None:
        fixed = self.colour_mode.currentIndex() == 0
        self.set_colour_scale(self.colour_max.value() if fixed else None)
        self._colour_idx[:] = -2  # recolour every cell at the next frame

    @property
    def selection(self) -> list[int]:
        return list(self._selection)

    def set_selection(self, channels) -> None:
        """Select these channels (no signal: the caller knows)."""
        n = self.electrode_layout.n_electrodes
        self._selection = sorted({int(c) for c in channels if 0 <= int(c) < n})
        chosen = set(self._selection)
        for ch, frame in enumerate(self.frames):
            frame.setVisible(ch in chosen)

    def channel_at(self, x_um: float, y_um: float) -> int | None:
        """The electrode whose cell holds this point (layout coordinates), or None."""
        d = np.abs(self.electrode_layout.positions_um - (x_um, y_um)).max(axis=1)
        ch = int(np.argmin(d))
        return ch if d[ch] <= 0.5 * self.pitch else None

    def _clicked(self, ev) -> None:
        if ev.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pt = self.plot.vb.mapSceneToView(ev.scenePos())
        ch = self.channel_at(pt.x(), pt.y())
        if ch is None:
            return
        ev.accept()
        self.set_selection(set(self._selection) ^ {ch})
        self.selection_changed.emit(self.selection)

    def update_view(self, snap: Snapshot) -> None:
        """Colour the cells by ``rates_hz`` and mark the stimulated electrodes."""
        n = self.electrode_layout.n_electrodes
        rates = np.full(n, np.nan)
        given = np.asarray(snap.rates_hz, float)[:n]
        rates[:len(given)] = given
        finite = np.isfinite(rates)
        if self.fixed_max is None and finite.any():
            top = float(rates[finite].max())
            if top > self.max_rate or top < self.max_rate / 4:
                self.max_rate = _nice_ceiling(top)
        if self.max_rate != self._bar_max:
            self._bar_max = self.max_rate
            self.bar.setLevels((0, self.max_rate))
        scaled = np.clip(np.nan_to_num(rates) / self.max_rate, 0, 1) * (N_COLOURS - 1)
        idx = np.where(finite, scaled.astype(int), -1)
        for ch in np.flatnonzero(idx != self._colour_idx):
            self.cells[ch].setBrush(self._brushes[idx[ch]] if idx[ch] >= 0 else self._no_rate)
        self._colour_idx = idx
        stim = np.unique(np.asarray(snap.stimulated, int))
        stim = stim[(stim >= 0) & (stim < n)]
        if self._stimulated is None or not np.array_equal(stim, self._stimulated):
            self._stimulated = stim
            self.stimulated.setData(pos=self.electrode_layout.positions_um[stim])
        if snap.rate_window_s != self._window:
            self._window = snap.rate_window_s
            self.plot.setTitle(f"Firing rate over the last {snap.rate_window_s:g} s")


def _tag(text: str, x: float, y: float, font: QtGui.QFont) -> QtWidgets.QGraphicsItem:
    """A small label on a dark chip whose top left is at (x, y), not scaled with the view."""
    label = QtWidgets.QGraphicsSimpleTextItem(text)
    label.setFont(font)
    label.setBrush(pg.mkBrush("w"))
    size = label.boundingRect().adjusted(0, 0, 4, 0)
    chip = QtWidgets.QGraphicsRectItem(size)
    chip.setPen(pg.mkPen(None))
    chip.setBrush(pg.mkBrush(0, 0, 0, 120))
    chip.setFlag(QtWidgets.QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
    chip.setPos(x, y)
    chip.setZValue(2)
    chip.setCacheMode(CACHED)
    label.setParentItem(chip)
    label.setCacheMode(CACHED)
    label.setPos(2, 0)
    return chip


class PsthView(_PlotView):
    """Peri-stimulus time histogram: spikes per pulse per bin, all electrodes summed."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot.setLabel("bottom", "time after the pulse (ms)")
        self.plot.setLabel("left", "spikes per pulse per bin")
        self.plot.showGrid(y=True, alpha=0.25)
        self.hist = pg.PlotDataItem(stepMode="center", fillLevel=0,
                                    pen=pg.mkPen(ENSEMBLE_COLOURS[0], width=2),
                                    brush=(76, 155, 232, 90))
        self.plot.addItem(self.hist)
        self.plot.addItem(pg.InfiniteLine(0, pen=pg.mkPen(STIM_COLOUR, width=1)))

    def update_view(self, snap: Snapshot) -> None:
        """Draw the PSTH; the title gives the number of pulses it averages."""
        edges = np.asarray(snap.psth_edges_ms, float)
        psth = np.asarray(snap.psth, float)
        pulses = snap.psth_pulses
        # a pulse counts once the data hold its whole window: the latest ones wait for it
        span = f"{edges[-1]:g} ms" if len(edges) else "window"
        self._set_title(f"PSTH, all electrodes, {pulses} pulse{'s' * (pulses != 1)} with "
                        f"their {span} after them" if pulses else "PSTH: no pulses yet")
        if len(edges) < 2 or len(psth) != len(edges) - 1:
            self.hist.setData([], [])
            self._set_range((0.0, 100.0), (0.0, 1.0))
            return
        self.hist.setData(edges, psth)
        top = float(np.nanmax(psth, initial=0.0))
        # the y range moves in steps, so it does not jitter from frame to frame
        self._set_range((float(edges[0]), float(edges[-1])), (0.0, _step_up(top)))


def _step_up(x: float) -> float:
    """A range top for small values: the next of 0.1, 0.2, 0.5, 1, 2, 5 above x."""
    for top in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0):
        if x * 1.05 <= top:
            return top
    return _nice_ceiling(x)


def _placeholder(text: str) -> QtWidgets.QLabel:
    """The grey centred text a view shows while its protocol has nothing for it."""
    label = QtWidgets.QLabel(text)
    label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
    label.setWordWrap(True)
    label.setStyleSheet("color: #888; font-size: 14pt")
    return label


def _wrapping_label() -> QtWidgets.QLabel:
    """A status label whose long lines wrap: it never widens the tab (nor the window)
    when data arrive."""
    label = QtWidgets.QLabel()
    label.setWordWrap(True)
    label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                        QtWidgets.QSizePolicy.Policy.Preferred)
    return label


class ModelView(QtWidgets.QWidget):
    """The protocol's two models: the culture's (free energy, predicted vs observed ensemble
    responses, weights) and the experimenter's (what is still unknown per stimulated
    electrode on the array, predicted vs observed response of each trial, the job's
    measure), and the last decisions.

    Draws ``snapshot.model`` (the dict of ``FEPClosedLoop.model_state()``); without one it
    shows a placeholder. ``n_trials`` sets how many recent trials the response plots show.
    """

    def __init__(self, layout: Layout | None = None, n_trials: int = 40,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.electrode_layout = layout
        self.n_trials = n_trials
        self.placeholder = _placeholder("No model in this protocol.\n\nRun fep_closed_loop "
                                        "to see its free energy, predictions and weights.")
        self.status = _wrapping_label()
        self.glw = pg.GraphicsLayoutWidget()
        self.fe = self.glw.addPlot(
            row=0, col=0, rowspan=2, title="Free energy, nats per trial: "
            f"— each trial, <span style='color:{ENSEMBLE_COLOURS[1]}'>— session mean</span>")
        self.fe.setLabel("bottom", "trial")
        self.fe.setLabel("left", FE_UNITS)
        self.fe_curve = self.fe.plot(pen=pg.mkPen(_foreground(), width=1))
        self.fe_sessions = self.fe.plot(pen=pg.mkPen(ENSEMBLE_COLOURS[1], width=2),
                                        connect="pairs")
        self.observed, self.predicted, self.resp = [], [], []
        for k, colour in enumerate(ENSEMBLE_COLOURS):
            title = (f"Ensemble {k + 1}: <span style='color:{colour}'>● observed x</span>, "
                     f"<span style='color:{colour}'>— predicted x_hat</span>")
            plot = self.glw.addPlot(row=k, col=1, colspan=2, title=title)
            plot.setLabel("left", "x (0-1)")
            plot.setYRange(0, 1, padding=0.12)
            plot.getAxis("left").setTicks([[(0, "0"), (0.5, "0.5"), (1, "1")]])
            plot.showGrid(y=True, alpha=0.2)
            self.observed.append(plot.plot(pen=None, symbol="o", symbolSize=6, symbolPen=None,
                                           symbolBrush=colour))
            self.predicted.append(plot.plot(pen=pg.mkPen(colour, width=2)))
            self.resp.append(plot)
        self.resp[1].setLabel("bottom", "trial")
        self.resp[1].setXLink(self.resp[0])
        self.weights = self.glw.addPlot(row=2, col=0, colspan=2,
                                        title="Effective weights W1 − W0")
        self.weights.setLabel("left", "ensemble")
        self.weights.setLabel("bottom", "stimulated electrode (1-16 group 1, 17-32 group 2)")
        self.weights.getAxis("left").setTicks([[(0.5, "1"), (1.5, "2")]])
        self.weights.setMouseEnabled(False, False)
        self.weights.hideButtons()
        self.image = pg.ImageItem()
        self.weights.addItem(self.image)
        self.group_line = pg.InfiniteLine(16, pen=pg.mkPen(_foreground(), width=2))
        self.weights.addItem(self.group_line)
        self.wbar = pg.ColorBarItem(values=(-1, 1), colorMap=pg.colormap.get("CET-D1"),
                                    label="W1 − W0", interactive=False, width=15)
        self.wbar.setImageItem(self.image)
        self.glw.addItem(self.wbar, row=2, col=2)
        for row, stretch in enumerate((2, 2, 3)):
            self.glw.ci.layout.setRowStretchFactor(row, stretch)
        self.table = QtWidgets.QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(
            ["trial", "kind", "method", "choice", "chosen score", "scores (best first)"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(170)
        page = QtWidgets.QWidget()
        col = QtWidgets.QVBoxLayout(page)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.status)
        col.addWidget(self.glw, 3)
        col.addWidget(self._experimenter_plots(), 2)
        col.addWidget(QtWidgets.QLabel("Last decisions (newest first)"))
        col.addWidget(self.table)
        # the plots never get narrower than their titles, axes and colour bars need (they
        # would be clipped): a narrower tab scrolls
        for glw in (self.glw, self.unknown.getViewWidget()):
            glw.setMinimumWidth(int(np.ceil(glw.ci.layout.minimumWidth())))
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setWidget(page)
        self.stack = QtWidgets.QStackedLayout(self)
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(scroll)
        self._key: tuple | None = None

    def update_view(self, snap: Snapshot) -> None:
        """Redraw when the model has learned since the last frame."""
        m = snap.model
        if m is None or "view" in m:  # no model, or a state for another view (pong's game)
            self.stack.setCurrentIndex(0)
            if self._key is not None:
                self.clear()
            return
        self.stack.setCurrentIndex(1)
        fe = np.asarray(m.get("free_energy", []), float)
        decisions = m.get("decisions", [])
        key = (m.get("trials"), len(fe), len(decisions), decisions[-1]["trial"] if decisions
               else None, m.get("running"))
        if key == self._key:
            return
        if self._key is not None and (key[0] or 0) < (self._key[0] or 0):
            self.clear()  # a new run's model: none of the previous run's data and axes
        self._key = key
        self._status(m)
        trials = int(m.get("trials", len(fe)))
        first = trials - len(fe)
        self.fe_curve.setData(np.arange(first, trials), fe)
        self._session_means(m, first)
        self.fe.enableAutoRange()
        x = np.asarray(m.get("x", np.zeros((0, 2))), float).reshape(-1, 2)[-self.n_trials:]
        xh = np.asarray(m.get("x_hat", np.zeros((0, 2))), float).reshape(-1, 2)[-len(x):]
        tx = np.arange(trials - len(x), trials)
        for k in range(2):
            self.observed[k].setData(tx, x[:, k] if len(x) else [])
            self.predicted[k].setData(tx[-len(xh):] if len(xh) else [], xh[:, k] if len(xh)
                                      else [])
        if len(x):
            self.resp[0].setXRange(tx[0] - 0.5, tx[-1] + 0.5, padding=0)
        self._weights(m)
        self._unknown(m)
        self._predictions(m)
        self._measure(m)
        self._decisions(decisions)

    def clear(self) -> None:
        """Forget the drawn model: empty plots with automatic axes, no decisions."""
        self._key = None
        self._sd_layout = None
        self.status.setText("")
        for curve in (self.fe_curve, *self.observed, *self.predicted, self.job_curve,
                      self.diagonal):
            curve.setData([], [])
        self.image.clear()
        self.cells.clear()
        self.pred_points.clear()
        for plot in (self.fe, *self.resp, self.pred, self.job_plot):
            plot.enableAutoRange()
        self.table.setRowCount(0)

    def _status(self, m: dict) -> None:
        sfe = m.get("session_free_energy") or []
        if not m.get("running", True):
            text = (f"Calibrating: {m.get('trials', 0)} of {m.get('calibration_trials', '?')} "
                    "trials; the model starts after calibration.")
        else:
            rate = m.get("success_rate")
            per = m.get("trials_per_session")
            last = ""
            if sfe and per:  # the plot's quantity: nats per trial
                last = (f", last session's free energy {sfe[-1] / per:.4g} nats per trial "
                        f"(mean of its {per} trials)")
            elif sfe:
                last = f", last session's free energy {sfe[-1]:.4g} nats (sum over its trials)"
            text = (f"Job: {m.get('job', '?')}, selection: {m.get('selection', '?')}; "
                    f"trials {m.get('trials', '?')}, probes {m.get('probes', 0)}"
                    + (f"; success {rate:.0%} of the last {min(m.get('probes', 0), 100)} "
                       "probes" if rate is not None else "")
                    + f"; sessions done {len(sfe)}{last}")
        self.status.setText(text)

    def _session_means(self, m: dict, first: int) -> None:
        """Each finished session's free energy per trial (its sum over its trials, as
        the status line gives it) as a line over its trials, for those in the plot."""
        sfe, per = np.asarray(m.get("session_free_energy") or [], float), m.get(
            "trials_per_session")
        if not per or not len(sfe):
            self.fe_sessions.setData([], [])
            return
        start = np.arange(len(sfe)) * per
        keep = start + per > first
        x0, mean = np.maximum(start[keep], first), sfe[keep] / per
        self.fe_sessions.setData(*_segments(x0, mean, start[keep] + per - 1, mean))

    def _weights(self, m: dict) -> None:
        w1, w0 = m.get("W1"), m.get("W0")
        if w1 is None or w0 is None:
            self.image.clear()
            return
        w = np.asarray(w1, float) - np.asarray(w0, float)  # ensembles x stimulated electrodes
        top = float(np.nanmax(np.abs(w), initial=0.0)) or 1.0
        self.image.setImage(w.T, autoLevels=False)
        self.wbar.setLevels((-top, top))
        self.weights.setRange(xRange=(0, w.shape[1]), yRange=(0, w.shape[0]), padding=0)
        self.group_line.setValue(w.shape[1] / 2)
        channels = m.get("channels")
        if channels is not None and self.electrode_layout is not None:
            names = [_label(self.electrode_layout, int(c)) for c in channels]
            self.weights.setLabel("bottom", "stimulated electrode (label)")
        else:
            names = [str(j + 1) for j in range(w.shape[1])]
        self.weights.getAxis("bottom").setTicks(
            [[(j + 0.5, names[j]) for j in range(0, w.shape[1], 4)],
             [(j + 0.5, names[j]) for j in range(w.shape[1]) if j % 4]])

    # -- the experimenter's model ---------------------------------------------------------
    def _experimenter_plots(self) -> pg.GraphicsLayoutWidget:
        """What is still unknown on the array, predicted vs observed, the job's measure."""
        glw = pg.GraphicsLayoutWidget()
        self.unknown = glw.addPlot(row=0, col=0, title="Still unknown (sd per electrode)")
        self.unknown.setAspectLocked(True)
        for axis in ("left", "bottom"):
            self.unknown.hideAxis(axis)
        self.unknown.setMouseEnabled(False, False)
        self.unknown.hideButtons()
        if self.electrode_layout is not None:  # every electrode, faintly, under the map
            pos = self.electrode_layout.positions_um
            self.unknown.addItem(pg.ScatterPlotItem(
                pos=pos, symbol="s", pxMode=False, size=0.9 * _pitch(pos), pen=None,
                brush=pg.mkBrush(110, 110, 110, 70)))
        self.cells = pg.ScatterPlotItem(symbol="s", pxMode=False, pen=None)
        self.unknown.addItem(self.cells)
        self.sd_cmap = pg.colormap.get("magma")
        self.sd_bar = pg.ColorBarItem(values=(0, 0.3), colorMap=self.sd_cmap, label="sd",
                                      interactive=False, width=12)
        glw.addItem(self.sd_bar, row=0, col=1)
        self.pred = glw.addPlot(row=0, col=2, title="Predicted vs observed "
                                "(<span style='color:#ffa500'>●</span> probes)")
        self.pred.setLabel("bottom", "predicted")
        self.pred.setLabel("left", "observed")
        self.pred_points = pg.ScatterPlotItem(size=6, pen=None)
        self.pred.addItem(self.pred_points)
        self.diagonal = self.pred.plot(pen=pg.mkPen(_foreground(120), width=1,
                                                    style=QtCore.Qt.PenStyle.DashLine))
        self.job_plot = glw.addPlot(row=0, col=3, title="Job")
        self.job_plot.setLabel("bottom", "trial")
        self.job_plot.getAxis("left").enableAutoSIPrefix(False)
        self.job_curve = self.job_plot.plot(pen=pg.mkPen(_foreground(), width=2))
        self._sd_layout: tuple | None = None
        for column, stretch in enumerate((3, 0, 3, 3)):
            glw.ci.layout.setColumnStretchFactor(column, stretch)
        return glw

    def _unknown(self, m: dict) -> None:
        """electrode_sd at the stimulated electrodes' positions (by index without a layout)."""
        sd, channels = m.get("electrode_sd"), m.get("channels") or []
        if sd is None or len(sd) != len(channels):
            self.cells.clear()
            return
        sd = np.asarray(sd, float)
        if self.electrode_layout is not None:
            pos = self.electrode_layout.positions_um[np.asarray(channels, int)]
            pitch = _pitch(self.electrode_layout.positions_um)
        else:
            pos = np.column_stack([np.arange(len(sd)) % 8, -(np.arange(len(sd)) // 8)]) * 1.0
            pitch = 1.0
        top = _step_up(float(sd.max(initial=0.0)))
        colours = self.sd_cmap.map(np.clip(sd / top, 0, 1), mode="qcolor")
        self.cells.setData(pos=pos, size=0.9 * pitch, brush=colours)
        self.sd_bar.setLevels((0, top))
        key = (len(pos), float(pitch))
        if key != self._sd_layout:
            self._sd_layout = key
            every = (self.electrode_layout.positions_um if self.electrode_layout is not None
                     else pos)
            lo, hi = every.min(0) - pitch, every.max(0) + pitch
            self.unknown.setRange(xRange=(lo[0], hi[0]), yRange=(lo[1], hi[1]), padding=0)

    def _predictions(self, m: dict) -> None:
        observed = np.asarray(m.get("observed", []), float)
        predicted = np.asarray(m.get("predicted", []), float)
        if observed.ndim != 2 or observed.shape != predicted.shape or not len(observed):
            self.pred_points.clear()
            self.diagonal.setData([], [])
            return
        obs = observed[-self.n_trials:].mean(1)
        pred = predicted[-self.n_trials:].mean(1)
        probe = np.asarray(m.get("update_probe", [False] * len(observed)), bool)
        probe = probe[-len(obs):]
        brushes = [pg.mkBrush(STIM_COLOUR) if p else pg.mkBrush(_foreground(160))
                   for p in probe]
        self.pred_points.setData(pred, obs, brush=brushes)
        top = _step_up(float(max(obs.max(), pred.max(), 0.0)))
        self.diagonal.setData([0, top], [0, top])
        self.pred.setRange(xRange=(0, top), yRange=(0, top), padding=0.05)

    def _measure(self, m: dict) -> None:
        values = np.asarray(m.get("measure", []), float)
        trials = np.asarray(m.get("update_trials", []), float)[-len(values):]
        if m.get("measure_name") == "success":
            self.job_plot.setTitle("Control: success (20 trials)")
            self.job_plot.setLabel("left", "success")
            kernel = np.ones(min(20, len(values)) or 1)
            values = (np.convolve(values, kernel, "valid") / len(kernel) if len(values)
                      else values)
            trials = trials[len(trials) - len(values):]
            self.job_plot.setYRange(0, 1, padding=0.05)
        elif m.get("measure_name") == "separation":
            self.job_plot.setTitle("Train: predicted separation of the sources")
            self.job_plot.setLabel("left", "separation")
            self.job_plot.enableAutoRange()
        else:
            self.job_plot.setTitle("Identify: sd of the targets")
            self.job_plot.setLabel("left", "sd (spikes)")
            self.job_plot.enableAutoRange()
        self.job_curve.setData(trials, values)

    def _decisions(self, decisions: list[dict]) -> None:
        rows = list(reversed(decisions))
        self.table.setRowCount(len(rows))
        for r, d in enumerate(rows):
            scores = np.asarray(d.get("scores", []), float)
            choice = d.get("choice")
            chosen = (f"{scores[choice]:.4g}" if isinstance(choice, (int, np.integer))
                      and 0 <= choice < len(scores) else "")
            best = ", ".join(f"{v:.3g}" for v in np.sort(scores)[::-1][:5])
            if len(scores) > 5:
                best += f", ... ({len(scores)})"
            cells = [d.get("trial", ""), "probe" if d.get("probe") else "training",
                     d.get("method", ""), choice, chosen, best]
            for c, value in enumerate(cells):
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(str(value)))
        self.table.resizeColumnsToContents()


PADDLE_COLOUR = "#4c9be8"
BALL_COLOUR = "#f28e2b"


class GameView(QtWidgets.QWidget):
    """A game's court: the ball, the paddle and the score, from ``snapshot.model`` when it
    is a game state (``{"view": "pong", ...}``, see ``protocols/pong.py``); without one it
    shows a placeholder. Court units: x 0 (the paddle's line) to 1, y 0 to 1."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.placeholder = _placeholder("No game in this protocol.\n\nRun pong to see "
                                        "the ball, the paddle and the score.")
        self.score = _wrapping_label()
        self.plot_widget = pg.PlotWidget()
        plot = self.plot = self.plot_widget.getPlotItem()
        plot.hideButtons()
        plot.setMouseEnabled(False, False)
        plot.setAspectLocked(True)
        plot.setRange(xRange=(-0.06, 1.02), yRange=(-0.02, 1.02), padding=0)
        plot.setLabel("bottom", "x (court widths; the paddle at 0)")
        plot.setLabel("left", "y (court heights)")
        walls = pg.PlotCurveItem([0, 1, 1, 0], [1, 1, 0, 0], pen=pg.mkPen(_foreground(), width=2))
        plot.addItem(walls)
        self.paddle = pg.PlotCurveItem(pen=pg.mkPen(PADDLE_COLOUR, width=8))
        self.ball = pg.ScatterPlotItem(size=14, pen=None, brush=BALL_COLOUR)
        plot.addItem(self.paddle)
        plot.addItem(self.ball)
        page = QtWidgets.QWidget()
        col = QtWidgets.QVBoxLayout(page)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.score)
        col.addWidget(self.plot_widget, 1)
        self.stack = QtWidgets.QStackedLayout(self)
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(page)
        self._key: tuple | None = None

    def update_view(self, snap: Snapshot) -> None:
        """Redraw when the game moved on since the last frame."""
        m = snap.model
        if m is None or m.get("view") != "pong":
            self.stack.setCurrentIndex(0)
            self._key = None
            return
        self.stack.setCurrentIndex(1)
        key = (m.get("frame"), m.get("condition"))
        if key == self._key:
            return
        self._key = key
        half = float(m.get("paddle_size", 0.0)) / 2
        y = float(m.get("paddle_y", 0.5))
        self.paddle.setData([-0.02, -0.02], [y - half, y + half])
        if m.get("in_play", True):
            self.ball.setData([float(m.get("ball_x", 0.5))], [float(m.get("ball_y", 0.5))])
        else:
            self.ball.setData([], [])  # the ball waits for its serve
        event = m.get("event")
        outcomes = m.get("hits", 0) + m.get("misses", 0)
        rate = f"{m.get('hits', 0) / outcomes:.0%}" if outcomes else "–"
        self.score.setText(
            f"<b>pong, {m.get('condition', '?')}</b>: hits {m.get('hits', 0)}, misses "
            f"{m.get('misses', 0)} (aces {m.get('aces', 0)}), hit rate {rate}; rally "
            f"{m.get('rally', 0)}, longest {m.get('longest_rally', 0)}"
            + (f" — <b>{event}</b>" if event else ""))
