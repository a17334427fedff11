"""Record spontaneous activity; never stimulates."""

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

    def setup(self, ctx):
        self.counts = [0] * ctx.n_channels
        self.start = ctx.now

    def on_spikes(self, ctx, spikes):
        for ch in spikes.channel:
            self.counts[ch] += 1

    def teardown(self, ctx):
        self.seconds = max((ctx.now - self.start) / ctx.sample_rate, 1e-9)

    def summary(self):
        seconds = getattr(self, "seconds", 0.0)
        if not seconds:
            return {}
        rates = [c / seconds for c in self.counts]
        active = [r for r in rates if r >= self.p.active_rate_hz]
        return {
            "active_electrodes": len(active),
            "mean_rate_active_hz": round(sum(active) / len(active), 3) if active else 0.0,
        }
