"""The run's figures, kept in constant memory while it runs: what the loop processed,
what became of the patterns it sent, trigger -> execution latency and loop cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def expand_counts(counts: Counter[int]) -> np.ndarray:
    """The values of a value -> count tally, each repeated count times, sorted."""
    values = sorted(counts)
    return np.repeat(np.array(values, np.int64), [counts[v] for v in values])


class LoopCost:
    """Histogram of per-block processing time in microseconds (constant memory)."""

    def __init__(self) -> None:
        self.hist = np.zeros(100_001, np.int64)

    def add(self, seconds: float) -> None:
        self.hist[min(int(seconds * 1e6), 100_000)] += 1

    def quantiles(self) -> dict[str, float | None]:
        total = int(self.hist.sum())
        if not total:
            return {"p50": None, "p99": None, "max": None}
        cum = np.cumsum(self.hist)
        q = {k: float(np.searchsorted(cum, p * total)) for k, p in (("p50", 0.5), ("p99", 0.99))}
        q["max"] = float(np.flatnonzero(self.hist)[-1])
        return q


@dataclass
class RunStats:
    """Counts of one run; the loop's thread adds to them."""

    blocks: int = 0
    spikes: int = 0
    samples_lost: int = 0
    gaps: int = 0
    executed: int = 0
    dropped: int = 0
    refused: int = 0
    watchdog_trips: int = 0
    #: trigger -> execution latency in samples -> number of executed patterns
    latency: Counter[int] = field(default_factory=Counter)
    loop_cost: LoopCost = field(default_factory=LoopCost)

    def latency_samples(self) -> np.ndarray:
        """Trigger -> execution, in samples, for every executed pattern."""
        return expand_counts(self.latency)

    def counts(self, block_samples: int) -> dict[str, int]:
        """Blocks, lost data, spikes and the patterns' fates, as the run's summary names them."""
        return {
            "blocks": self.blocks,
            "blocks_dropped": -(-self.samples_lost // block_samples),
            "samples_lost": self.samples_lost,
            "spikes": self.spikes,
            "stims_executed": self.executed,
            "stims_dropped": self.dropped,
            "stims_refused": self.refused,
        }

    def latency_quantiles(self) -> dict[str, Any]:
        lat = self.latency_samples()
        return {
            "p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99": float(np.percentile(lat, 99)) if len(lat) else None,
            "max": int(lat.max()) if len(lat) else None,
        }
