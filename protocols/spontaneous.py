"""Record spontaneous activity; never stimulates.

A culture at rest, for a baseline or before another protocol; the run lasts ``--duration``
(or until Ctrl-C). Parameter: ``active_rate_hz`` (Hz), the rate from which an electrode
counts as active. Records the spikes (the run's summary and recording); its summary adds
``active_electrodes`` (how many) and ``mean_rate_active_hz`` (their mean rate, Hz).
"""

import numpy as np

from mea_control.protocol import Parameter, Protocol


class Spontaneous(Protocol):
    """Record spontaneous activity without stimulation; reports firing rates."""

    name = "spontaneous"
    parameters = {
        "active_rate_hz": Parameter(
            float, 0.1, unit="Hz", range=(0.0, 100.0),
            help="an electrode firing at least this often counts as active",
        ),
    }

    def planned_patterns(self, ctx):
        return []  # never stimulates

    def setup(self, ctx):
        self.counts = np.zeros(ctx.n_channels, np.int64)
        self.start = ctx.now

    def on_spikes(self, ctx, spikes):
        self.counts += np.bincount(spikes.channel, minlength=ctx.n_channels)

    def teardown(self, ctx):
        self.seconds = max((ctx.now - self.start) / ctx.sample_rate, 1e-9)

    def summary(self):
        seconds = getattr(self, "seconds", 0.0)
        if not seconds:
            return {}
        rates = self.counts / seconds
        active = rates[rates >= self.p.active_rate_hz]
        return {
            "active_electrodes": int(len(active)),
            "mean_rate_active_hz": round(float(active.mean()), 3) if len(active) else 0.0,
        }
