"""Source-preferring ensembles of recorded electrodes, and their mean responses.

With hidden sources known (the published criteria, Isomura et al. 2023): an
electrode is responsive when its mean response over all trials is > 1 spike
and its lowest session mean is > 0.1; it joins ensemble 1 when the mean over
sessions of E[r | s=(1,0)] - E[r | s=(0,1)] is > 0.5, ensemble 2 when it is
< -0.5. A lone member is counted twice (the published figures do so; the
ensemble's mean response is the same).

Without sources, responsive electrodes are grouped by what drives them: each
one's profile is its mean response with each stimulated electrode on minus off.
The first principal component of the responsive electrodes' profiles splits the
stimulated electrodes into two sides (by its sign); an electrode's contrast is
its mean profile on one side minus the other, in spikes, and the published
thresholds apply to it in place of the source selectivity (> 0.5: ensemble 1,
< -0.5: ensemble 2). Ensemble 1 is the one driven by the side holding more of
the first half of the stimulated electrodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mea_control.fep.data import FEPInputError, TrialData

MIN_MEAN_RESPONSE = 1.0
MIN_SESSION_MEAN = 0.1
MIN_SELECTIVITY = 0.5


@dataclass(frozen=True)
class Ensembles:
    """Members of ensembles 1 and 2 (boolean over electrodes) and how they were found."""

    members: np.ndarray  # 2 x electrodes, bool
    responsive: np.ndarray  # electrodes, bool
    selectivity: np.ndarray  # sessions x electrodes (sources), or contrast per electrode
    method: str  # "sources" or "profiles"

    @property
    def sizes(self) -> tuple[int, int]:
        """Ensemble sizes as published: a lone member counts twice."""
        return tuple(2 if n == 1 else int(n) for n in self.members.sum(1))  # type: ignore[return-value]

    def responses(self, r: np.ndarray) -> np.ndarray:
        """Mean response of each ensemble's members per trial: 2 x trials."""
        return np.stack([r[:, m].sum(1, dtype=np.int64 if r.dtype.kind in "iub" else float)
                         / m.sum() for m in self.members])


def selectivity(r: np.ndarray, s: np.ndarray, sessions: int) -> np.ndarray:
    """Per session and electrode: E[r | s=(1,0)] - E[r | s=(0,1)] (sessions x electrodes)."""
    rs = np.asarray(r, float).reshape(sessions, -1, r.shape[1])
    ss = s.reshape(sessions, -1, s.shape[1])
    a = ((ss[..., 0] == 1) & (ss[..., 1] == 0)).astype(float)
    b = ((ss[..., 0] == 0) & (ss[..., 1] == 1)).astype(float)
    na, nb = a.sum(1), b.sum(1)
    if (na == 0).any() or (nb == 0).any():
        raise FEPInputError("a session has no trial with only source 1 or only source 2 on; "
                            "source-preferring ensembles need both in every session")
    contrast = a / na[:, None] - b / nb[:, None]
    return (contrast[:, None, :] @ rs)[:, 0]


def responsive(r: np.ndarray, sessions: int) -> np.ndarray:
    """Electrodes with mean response > 1 spike and every session mean > 0.1."""
    session_means = np.asarray(r, float).reshape(sessions, -1, r.shape[1]).mean(1)
    return (session_means.mean(0) > MIN_MEAN_RESPONSE) & (session_means.min(0) > MIN_SESSION_MEAN)


def find(data: TrialData, r: np.ndarray | None = None) -> Ensembles:
    """Ensembles by the published criteria when the data have two sources, else by profiles.

    ``r``: the responses as floats, when the caller has them already."""
    r = data.r if r is None else r
    if data.s.shape[1] >= 2:
        found = by_sources(r, data.s, data.n_sessions)
    else:
        found = by_profiles(r, data.o, data.n_sessions)
    _check(found)
    return found


def by_sources(r: np.ndarray, s: np.ndarray, sessions: int) -> Ensembles:
    """The published criteria (module docstring)."""
    sel = selectivity(r, s, sessions)
    ok = responsive(r, sessions)
    mean_sel = sel.mean(0)
    members = np.stack([ok & (mean_sel > MIN_SELECTIVITY), ok & (mean_sel < -MIN_SELECTIVITY)])
    return Ensembles(members, ok, sel, "sources")


def by_profiles(r: np.ndarray, o: np.ndarray, sessions: int) -> Ensembles:
    """Data-driven grouping by stimulation profiles (module docstring)."""
    ok = responsive(r, sessions)
    on = o.astype(float)
    n_on = on.sum(0)
    used = (n_on > 0) & (n_on < len(o))
    if used.sum() < 2:
        raise FEPInputError("fewer than two stimulated electrodes vary across trials; cannot "
                            "group electrodes by what drives them")
    rf = r.astype(float)
    on = on[:, used]
    profile = (on.T @ rf / n_on[used, None] - (1 - on).T @ rf / (len(o) - n_on[used])[:, None]).T
    members = np.zeros((2, r.shape[1]), bool)
    contrast = np.zeros(r.shape[1])
    if ok.sum() >= 2:
        p = profile[ok]
        _, _, vt = np.linalg.svd(p - p.mean(0), full_matrices=False)
        side = vt[0] > 0
        if side.all() or not side.any():
            raise FEPInputError("the stimulated electrodes drive the responsive electrodes "
                                "alike; no two ensembles to separate without sources")
        half = len(side) // 2
        if side[:half].sum() < side[half:].sum():
            side = ~side  # ensemble 1: driven by the first half of the stimulated electrodes
        contrast = profile[:, side].mean(1) - profile[:, ~side].mean(1)
        members[0] = ok & (contrast > MIN_SELECTIVITY)
        members[1] = ok & (contrast < -MIN_SELECTIVITY)
    return Ensembles(members, ok, contrast, "profiles")


def _check(found: Ensembles) -> None:
    """FEPInputError unless both ensembles have members."""
    members, ok = found.members, found.responsive
    what = "source-preferring" if found.method == "sources" else "response-profile"
    if not ok.any():
        raise FEPInputError(
            f"no responsive electrode (mean response > {MIN_MEAN_RESPONSE} spike and every "
            f"session mean > {MIN_SESSION_MEAN}); no {what} ensemble found")
    empty = [str(i + 1) for i in range(2) if not members[i].any()]
    if empty:
        raise FEPInputError(f"no {what} ensemble {' or '.join(empty)} among the "
                            f"{int(ok.sum())} responsive electrodes; nothing to model")
