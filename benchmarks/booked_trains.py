"""A protocol that always has pulses booked on the device: for the process-fault benchmark.

Every ``every_ms`` of device time it books a train of ``count`` pulses at ``rate_hz`` on
the next of eight electrodes, ``ahead_ms`` ahead, so that whenever the host dies a train
is in flight or booked (within the default limits: 5 uA x 200 us; each electrode gets a
train every 8 x ``every_ms``).

``mea-control run benchmarks/booked_trains.py --device serial://PTY --record f.nwb``
"""

from mea_control.protocol import Parameter, Protocol
from mea_control.types import StimPattern, StimPulse

ELECTRODES = (9, 14, 18, 27, 36, 45, 50, 54)


class BookedTrains(Protocol):
    """Trains booked ahead on eight electrodes in turn, without end."""

    name = "booked_trains"
    parameters = {
        "every_ms": Parameter(float, 100.0, unit="ms", range=(20.0, 10_000.0)),
        "ahead_ms": Parameter(float, 250.0, unit="ms", range=(0.0, 10_000.0)),
        "count": Parameter(int, 10, range=(1, 10)),
        "rate_hz": Parameter(float, 20.0, unit="Hz", range=(1.0, 200.0)),
    }

    def setup(self, ctx):
        self.pulse = StimPulse.biphasic(5.0, 200.0)
        self.next_at = ctx.now
        self.sent = 0

    def on_block(self, ctx, block, filtered):
        p = self.p
        if ctx.now < self.next_at:
            return
        self.next_at = ctx.now + int(p.every_ms * ctx.sample_rate / 1000)
        at = ctx.now + int(p.ahead_ms * ctx.sample_rate / 1000)
        electrode = ELECTRODES[self.sent % len(ELECTRODES)]
        ctx.stimulate(StimPattern.train(electrode, self.pulse, p.count, p.rate_hz, at_sample=at))
        self.sent += 1
