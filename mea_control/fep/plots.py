"""PNG figures of one culture's analysis: ensemble responses, prediction, effective weights
and free energy over sessions.

matplotlib is imported here only, and drawn with its Agg canvas (no pyplot, no
window, no global backend change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mea_control.fep.analysis import POST_SESSIONS, Analysis
from mea_control.fep.data import TrialData

FIGURES = ("responses", "prediction", "weights", "free_energy")
#: A stimulated electrode follows a source when P(on | only that source) exceeds
#: P(on | only the other) by this much.
SOURCE_CONTRAST = 0.4
COLOURS = {"all": "black", "s1": "tab:red", "s2": "tab:blue"}
LABELS = {"all": "all trials", "s1": "source 1 only on", "s2": "source 2 only on"}


def write(a: Analysis, data: TrialData, folder: str | Path, prefix: str,
          title: str) -> list[Path]:
    """Write the four figures as ``<prefix>_<figure>.png`` in ``folder``; return their paths.

    ``title`` names the culture in every figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    paths = []
    for name, draw in zip(FIGURES, (_responses, _prediction, _weights, _free_energy),
                          strict=True):
        fig = draw(a, data)
        fig.suptitle(f"{title}: {fig.get_suptitle()}", fontsize=11)
        FigureCanvasAgg(fig)
        path = Path(folder) / f"{prefix}_{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _figure(rows: int = 1, cols: int = 2, height: float = 3.6, width: float = 5.2):
    """A figure of rows x cols panels, each about width x height inches."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _session_means(v: np.ndarray, per: int, mask: np.ndarray | None = None) -> np.ndarray:
    """K x sessions means of v (K x trials), over the trials in ``mask`` when given."""
    vs = v.reshape(v.shape[0], -1, per)
    if mask is None:
        return vs.mean(2)
    m = mask.reshape(-1, per)
    n = m.sum(1)
    return np.divide((vs * m).sum(2), n, out=np.full(vs.shape[:2], np.nan), where=n > 0)


def _conditions(data: TrialData) -> dict[str, np.ndarray | None]:
    """Trial masks to average over: all trials, and only-source-1 / only-source-2 trials."""
    out: dict[str, np.ndarray | None] = {"all": None}
    if data.s.shape[1] >= 2:
        s1, s2 = data.s[:, 0] == 1, data.s[:, 1] == 1
        out["s1"], out["s2"] = s1 & ~s2, s2 & ~s1
    return out


def _legend(fig, ax) -> None:
    """One legend for the figure, below the panels (the lines are the same in each), in
    columns of two (observed over predicted), the initial sessions last."""
    pairs = sorted(zip(*ax.get_legend_handles_labels(), strict=True),
                   key=lambda hl: hl[1].startswith("initial"))
    fig.legend(*zip(*pairs, strict=True), loc="outside lower center", fontsize=8,
               ncols=len(pairs) if len(pairs) <= 3 else (len(pairs) + 1) // 2, frameon=False)


def _sessions(a: Analysis) -> np.ndarray:
    return np.arange(1, len(a.free_energy) + 1)


def _mark_initial(ax, a: Analysis) -> None:
    ax.axvspan(0.5, a.initial_sessions + 0.5, color="0.88", zorder=0,
               label=f"initial sessions (1-{a.initial_sessions}, fitted)")


def _session_axis(ax, a: Analysis) -> None:
    ax.set_xlabel(f"session ({a.trials_per_session} trials each)")
    ax.set_xlim(0.5, len(a.free_energy) + 0.5)


def _response_axis(ax, a: Analysis) -> None:
    """A panel of session-mean normalised responses: 0-1, sessions along x, a light grid."""
    ax.set_ylabel("normalised response x (0-1),\nsession mean")
    ax.set_ylim(0, 1)
    _session_axis(ax, a)
    ax.grid(alpha=0.3)


def _responses(a: Analysis, data: TrialData):
    fig, axes = _figure()
    per, k = a.trials_per_session, _sessions(a)
    for i, ax in enumerate(axes[0]):
        for key, mask in _conditions(data).items():
            ax.plot(k, _session_means(a.x, per, mask)[i], color=COLOURS[key], lw=1.2,
                    label=LABELS[key])
        ax.set_title(f"ensemble {i + 1} ({int(a.ensembles.members[i].sum())} electrodes)")
        _response_axis(ax, a)
    _legend(fig, axes[0, 0])
    fig.suptitle("ensemble responses over sessions")
    return fig


def _prediction(a: Analysis, data: TrialData):
    fig, axes = _figure()
    per, k = a.trials_per_session, _sessions(a)
    for i, ax in enumerate(axes[0]):
        _mark_initial(ax, a)
        for key, mask in _conditions(data).items():
            colour = COLOURS[key]
            ax.plot(k, _session_means(a.x, per, mask)[i], color=colour, lw=1.2,
                    label=f"observed x, {LABELS[key]}")
            ax.plot(k, _session_means(a.x_hat, per, mask)[i], color=colour, lw=1.2, ls="--",
                    label=f"predicted x\u0302, {LABELS[key]}")
        ax.set_title(f"ensemble {i + 1}")
        _response_axis(ax, a)
    _legend(fig, axes[0, 0])
    corr = "n/a" if a.corr_post is None else f"{a.corr_post:.3f}"
    post = min(POST_SESSIONS, len(a.free_energy) - a.initial_sessions)
    fig.suptitle(f"observed vs predicted from sessions 1-{a.initial_sessions} only\n"
                 f"last {post} sessions: r = {corr}, MSE = {a.mse_post:.3f}")
    return fig


def _stim_groups(data: TrialData) -> dict[str, np.ndarray]:
    """Stimulated electrodes that follow source 1 or 2 (empty without clear sources)."""
    if data.s.shape[1] < 2:
        return {}
    masks = _conditions(data)
    o = data.o.astype(float)
    contrast = o[masks["s1"]].mean(0) - o[masks["s2"]].mean(0)
    groups = {"s1": contrast > SOURCE_CONTRAST, "s2": contrast < -SOURCE_CONTRAST}
    return groups if all(g.any() for g in groups.values()) else {}


def _weights(a: Analysis, data: TrialData):
    fig, axes = _figure(2, 2, height=3.3)
    groups = _stim_groups(data)
    est = a.weights.W1 - a.weights.W0  # sessions x K x J
    pred = a.predicted_weights.W1 - a.predicted_weights.W0
    order = np.arange(est.shape[2])
    if groups:  # source-1 electrodes first, then source-2 ones, then the rest
        order = np.argsort(np.where(groups["s1"], 0, np.where(groups["s2"], 1, 2)), kind="stable")
    lim = float(np.abs(est).max()) or 1.0
    n = est.shape[0]
    for i in range(2):
        ax = axes[0, i]
        im = ax.imshow(est[:, i, order].T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                       origin="lower", interpolation="nearest",
                       extent=(0.5, n + 0.5, -0.5, est.shape[2] - 0.5))
        ticks = np.arange(0, est.shape[2], max(1, est.shape[2] // 8))
        ax.set_yticks(ticks, [str(order[t] + 1) for t in ticks])
        ax.set_ylabel("stimulated electrode")
        if groups:
            n1 = int(groups["s1"].sum())
            ax.axhline(n1 - 0.5, color="k", lw=0.8)
            ax.set_ylabel("stimulated electrode\n(source-1 ones below the line)")
        ax.set_title(f"ensemble {i + 1}: W1 \u2212 W0 per electrode")
        _session_axis(ax, a)
        ax = axes[1, i]
        _mark_initial(ax, a)
        lines = groups or {"all": np.ones(est.shape[2], bool)}
        for key, g in lines.items():
            label = "all stimulated electrodes" if key == "all" else \
                f"electrodes following source {key[1]}"
            ax.plot(np.arange(1, n + 1), est[:, i, g].mean(1), color=COLOURS[key], lw=1.2,
                    label=f"estimated, {label}")
            ax.plot(np.arange(1, n + 1), pred[:, i, g].mean(1), color=COLOURS[key], lw=1.2,
                    ls="--", label=f"predicted, {label}")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_ylabel("mean W1 \u2212 W0 (log-odds)")
        ax.set_title(f"ensemble {i + 1}: mean effective weight")
        _session_axis(ax, a)
        ax.grid(alpha=0.3)
    fig.colorbar(im, ax=axes[0, :], label="W1 \u2212 W0 (log-odds)", shrink=0.9)
    _legend(fig, axes[1, 0])
    fig.suptitle("effective synaptic weights over sessions")
    return fig


def _free_energy(a: Analysis, data: TrialData):
    fig, axes = _figure(1, 1, height=3.8, width=7.5)
    ax = axes[0, 0]
    k = _sessions(a)
    _mark_initial(ax, a)
    ax.plot(k, a.free_energy, color="black", lw=1.2, label="observed x, estimated weights")
    ax.plot(k, a.predicted_free_energy, color="tab:orange", lw=1.2, ls="--",
            label="predicted x\u0302, predicted weights")
    ax.set_ylabel("free energy of a session (nats,\nsum over its trials)")
    _session_axis(ax, a)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("free energy over sessions")
    return fig
