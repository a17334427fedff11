"""Trial data for the free-energy model: o, s and r of one culture, in whole sessions.

Sources, one culture per :class:`TrialData`:

- a mea-control recording (its trial table; the sessions come from the table);
- a MATLAB file laid out like the published data (``data_<name>``: a list of
  cultures, each with ``s`` trials x sources, ``o`` trials x stimulated
  electrodes, ``r`` trials x recorded electrodes);
- an ``.npz`` with arrays ``o``, ``s``, ``r`` (one culture, trials first; or
  cultures x trials x ... for several), optionally ``session`` (the session of
  each trial, as a saved :class:`~mea_control.trials.TrialTable` has).

Files without session labels are cut into sessions of ``trials_per_session``
trials (256, as in the published experiment).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Trials per session in the published BSS experiment (256 one-second trials).
TRIALS_PER_SESSION = 256


class FEPInputError(ValueError):
    """Trial data the model cannot use, with a one-line reason."""


@dataclass(frozen=True)
class TrialData:
    """One culture's trials: o (trials x stim electrodes), s (trials x sources), r (trials x
    electrodes), ``trials_per_session`` consecutive trials to a session."""

    o: np.ndarray
    s: np.ndarray
    r: np.ndarray
    trials_per_session: int
    name: str = ""

    def __post_init__(self) -> None:
        o, s, r = self.o, self.s, self.r
        where = f"{self.name}: " if self.name else ""
        if o.ndim != 2 or r.ndim != 2 or s.ndim != 2:
            raise FEPInputError(f"{where}o, s and r must be 2-D (trials first); got shapes "
                                f"{o.shape}, {s.shape}, {r.shape}")
        n = len(r)
        if len(o) != n or len(s) != n:
            raise FEPInputError(f"{where}o, s and r have different trial counts: "
                                f"{len(o)}, {len(s)}, {len(r)}")
        if n == 0:
            raise FEPInputError(f"{where}no trials")
        for key, a in (("o", o), ("s", s), ("r", r)):
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise FEPInputError(f"{where}{key} has {int((~np.isfinite(a)).sum())} NaN or "
                                    "infinite values; remove or fill those trials first")
            if a.size and a.min() < 0:
                raise FEPInputError(f"{where}{key} has negative values")
        if ((o != 0) & (o != 1)).any():
            raise FEPInputError(f"{where}o must be 0 or 1 (stimulated or not)")
        if s.size and ((s != 0) & (s != 1)).any():
            raise FEPInputError(f"{where}s must be 0 or 1 (hidden sources off or on)")
        if self.trials_per_session < 1 or n % self.trials_per_session:
            raise FEPInputError(
                f"{where}{n} trials are not a whole number of sessions of "
                f"{self.trials_per_session} trials")

    @property
    def n_sessions(self) -> int:
        return len(self.r) // self.trials_per_session

    @property
    def has_sources(self) -> bool:
        return self.s.shape[1] > 0


def _culture(name: str, o, s, r, trials_per_session: int) -> TrialData:
    o, r = np.asarray(o), np.asarray(r)
    s = np.zeros((len(r), 0), np.uint8) if s is None else np.asarray(s)
    if s.ndim == 1:
        s = s[:, None]
    return TrialData(o, s, r, trials_per_session, name)


def from_table(table, name: str = "") -> TrialData:
    """A :class:`~mea_control.trials.TrialTable`, cut at its session labels.

    An unfinished last session (a run stopped early) is left out with a warning.
    """
    session = np.asarray(table.session)
    if not len(session):
        raise FEPInputError(f"{name or 'the recording'}: the trial table is empty")
    counts = np.bincount(session - session.min())
    per = int(counts[0])
    if (counts[:-1] != per).any():
        raise FEPInputError(f"{name}: sessions have different trial counts {sorted(set(counts))}")
    keep = len(session)
    if counts[-1] != per:
        keep -= int(counts[-1])
        warnings.warn(f"{name}: the last session has {counts[-1]} of {per} trials; "
                      f"analysing the first {len(counts) - 1} whole sessions", stacklevel=2)
        if keep == 0:
            raise FEPInputError(f"{name}: not one whole session of {per} trials")
    return _culture(name, table.o[:keep], table.s[:keep], table.r[:keep], per)


def load(path: str | Path, trials_per_session: int = TRIALS_PER_SESSION) -> list[TrialData]:
    """All cultures in a recording, a .mat or an .npz file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FEPInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return _load_mat(path, trials_per_session)
    if suffix == ".npz":
        return _load_npz(path, trials_per_session)
    return _load_recording(path)


def _load_mat(path: Path, per: int) -> list[TrialData]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path, simplify_cells=True)
    except Exception as exc:  # scipy raises several types for unreadable files
        raise FEPInputError(f"{path}: not a readable MATLAB file ({exc})") from None
    keys = [k for k in mat if not k.startswith("__")]
    data = [k for k in keys if k.startswith("data")] or keys
    if len(data) != 1:
        raise FEPInputError(f"{path}: expected one data variable (a list of cultures with s, "
                            f"o, r), found {', '.join(keys) or 'none'}")
    cultures = mat[data[0]]
    if isinstance(cultures, dict):
        cultures = [cultures]
    out = []
    for i, c in enumerate(cultures):
        if not isinstance(c, dict) or not {"o", "r"} <= set(c):
            raise FEPInputError(f"{path}: culture {i} has no o and r arrays")
        out.append(_culture(f"{path.name}[{i}]", c["o"], c.get("s"), c["r"], per))
    return out


def _load_npz(path: Path, per: int) -> list[TrialData]:
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise FEPInputError(f"{path}: not a readable .npz file ({exc})") from None
    with f:
        missing = [k for k in ("o", "r") if k not in f.files]
        if missing:
            raise FEPInputError(f"{path}: no {' or '.join(missing)} array (has "
                                f"{', '.join(f.files) or 'nothing'})")
        o, r = f["o"], f["r"]
        s = f["s"] if "s" in f.files else None
        if "session" in f.files:
            if o.ndim != 2:
                raise FEPInputError(f"{path}: with a session array, o must be trials x electrodes")
            from types import SimpleNamespace

            table = SimpleNamespace(o=o, r=r, session=f["session"],
                                    s=np.zeros((len(r), 0), np.uint8) if s is None else s)
            return [from_table(table, path.name)]
    if o.ndim == 3:
        counts = {len(o), len(r)} | (set() if s is None else {len(s)})
        if len(counts) > 1 or r.ndim != 3:
            raise FEPInputError(f"{path}: o, s and r must hold the same number of cultures "
                                "(cultures x trials x electrodes)")
        return [_culture(f"{path.name}[{i}]", o[i], None if s is None else s[i], r[i], per)
                for i in range(len(o))]
    return [_culture(path.name, o, s, r, per)]


def _load_recording(path: Path) -> list[TrialData]:
    from mea_control import recording
    from mea_control.recording.errors import RecordingError

    try:
        with recording.open(path) as rec:
            table = rec.trials
    except (RecordingError, OSError) as exc:
        raise FEPInputError(f"{path}: not a .mat, .npz or readable recording ({exc})") from None
    if table is None:
        raise FEPInputError(f"{path}: the recording has no trials (run a trial protocol)")
    return [from_table(table, path.name)]
