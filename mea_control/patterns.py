"""The life of every pattern the loop sent, in device samples: waiting for the device's
report, a train still running, and how each ended (its StimRecord)."""

from __future__ import annotations

from collections import deque

from mea_control.sinks import StimRecord
from mea_control.types import StimPattern, StimReport

#: How many recent pattern records are kept in memory (and tickets looked up by ticket).
KEEP_RECENT = 10_000


class PatternLog:
    """Records of the patterns of one run. The loop's thread keeps it; a record is
    final (for the sinks) once its pattern was refused, dropped, or ran to its end."""

    def __init__(self, sample_rate: float) -> None:
        self.sample_rate = sample_rate
        #: Patterns sent and not yet reported by the device, by ticket.
        self.pending: dict[int, StimRecord] = {}
        #: The latest pattern records (executed, dropped, refused), oldest first.
        self.recent: deque[StimRecord] = deque(maxlen=KEEP_RECENT)
        #: The records of the latest KEEP_RECENT patterns sent, by ticket (ctx.outcome).
        self._by_ticket: dict[int, StimRecord] = {}
        #: Executed trains whose last pulse is still ahead, by ticket, with that pulse's
        #: sample: the sinks hear of a train once it is complete or cut, so that they
        #: list only pulses that ran.
        self._running: dict[int, tuple[StimRecord, int]] = {}

    def sent(self, ticket: int, pattern: StimPattern, trigger: int, now: int) -> None:
        record = StimRecord(ticket, pattern, trigger, now)
        self.pending[ticket] = self._by_ticket[ticket] = record
        if len(self._by_ticket) > KEEP_RECENT:  # forget the oldest ticket
            del self._by_ticket[next(iter(self._by_ticket))]

    def outcome(self, ticket: int) -> StimRecord | None:
        """The record of a ticket sent (its status "sent" until the device reports), or
        None for a ticket never sent or forgotten after KEEP_RECENT later patterns."""
        return self._by_ticket.get(ticket)

    def refused(self, pattern: StimPattern, trigger: int, now: int, reason: str) -> StimRecord:
        record = StimRecord(None, pattern, trigger, now, status="refused", reason=reason)
        self.recent.append(record)
        return record

    def reported(self, report: StimReport) -> StimRecord | None:
        """The device ran or dropped a sent pattern: its record (None: not one of ours)."""
        record = self.pending.pop(report.ticket, None)
        if record is None:
            return None
        record.execution_sample = report.sample
        record.status = "executed" if report.executed else "dropped"
        record.reason = report.reason
        self.recent.append(record)
        if report.executed and record.pattern.train_count > 1:
            last = report.sample + record.pattern.pulse_offsets(self.sample_rate)[-1]
            self._running[report.ticket] = (record, last)
        return record

    def running(self, record: StimRecord) -> bool:
        """Whether the record is of a train whose last pulse is still ahead."""
        return record.ticket in self._running

    def cut(self, report: StimReport) -> StimRecord | None:
        """The device cut a started train: its record, listing only the pulses that ran."""
        record, _ = self._running.pop(report.ticket, (None, 0))
        if record is not None:
            _ran(record, report.pulses_run,
                 f"train cut after {report.pulses_run} of {record.pattern.train_count} "
                 f"pulses ({report.reason or 'aborted'})")
        return record

    def trains_done(self, sample: int) -> list[StimRecord]:
        """The trains whose last pulse is before ``sample`` (device clock), now final."""
        if not self._running:  # (every block asks)
            return []
        done = [t for t, (_, last) in self._running.items() if last < sample]
        return [self._running.pop(t)[0] for t in done]

    def trains_unknown(self, sample: int) -> list[StimRecord]:
        """At the end of a run, the trains whose end the device never told: only the
        pulses before ``sample``, the last sample it delivered, are known to have run."""
        records = [record for record, _ in self._running.values()]
        self._running.clear()
        for record in records:
            ran = sum(record.execution_sample + o < sample
                      for o in record.pattern.pulse_offsets(self.sample_rate))
            _ran(record, ran, f"run ended after {ran} of {record.pattern.train_count} train "
                 "pulses were seen; the device did not report where it stopped the train")
        return records

    def unreported(self) -> list[StimRecord]:
        """At the end of a run, the patterns the device never reported on (sent, fate
        unknown), now final."""
        records = list(self.pending.values())
        self.recent.extend(records)
        return records

    @property
    def outstanding(self) -> bool:
        """Whether a report or a train's end is still to come."""
        return bool(self.pending or self._running)


def _ran(record: StimRecord, pulses_run: int | None, reason: str) -> None:
    """A train stopped after ``pulses_run`` pulses: a record of fewer than all says so."""
    if pulses_run is not None and pulses_run < record.pattern.train_count:
        record.pulses_run, record.reason = max(pulses_run, 0), reason
