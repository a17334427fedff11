"""A sink through which recordings start and stop at any moment of a run.

The CLI records a whole run with a :class:`~mea_control.recording.Recorder` as
one of the engine's sinks. The GUI records when the operator says so: every run
gets a :class:`RecordingSwitch`, and a recorder is put in or taken out while
the run goes on.
"""

from __future__ import annotations

import threading
from typing import Any

from mea_control.sinks import RunDescription, Sink


class RecordingSwitch(Sink):
    """Forwards a run's sink calls to the recorder in force, if any.

    The GUI starts and stops recordings at any moment of a run: :meth:`take`
    detaches the recorder under the lock the acquisition thread holds while
    forwarding, so no block reaches a recorder after it was taken. Like every
    sink, it knows the run only by what it is handed (its description, its clock).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.recorder: Any = None
        self._run: RunDescription | None = None
        self._now = 0  # the run's clock (acquisition thread)

    def put(self, recorder: Any) -> None:
        """Record the run from its next block on."""
        with self._lock:
            if self.recorder is not None:
                raise RuntimeError(f"already recording to {self.recorder.path}")
            self.recorder = recorder

    def take(self) -> Any:
        """Detach the recorder (None if there was none); the caller ends it."""
        with self._lock:
            recorder, self.recorder = self.recorder, None
            return recorder

    def finish(self, summary: dict[str, Any]) -> Any:
        """Detach the recorder and close its file with the run's ``summary`` (see
        :meth:`close`). Returns the recorder, or None."""
        recorder = self.take()
        if recorder is None:
            return None
        self.close(recorder, summary)
        return recorder

    def close(self, recorder: Any, summary: dict[str, Any]) -> None:
        """Close a detached recorder's file with ``summary``, the run's figures (at the
        run's end, or what the face asked the engine for when the operator stopped the
        recording); its duration is the recording's, up to the run's clock now."""
        own = dict(summary)
        run = self._run
        if run is not None and recorder.t0 is not None:
            own["duration_s"] = (self._now - recorder.t0) / run.info.sample_rate
        recorder.on_stop(own)
        summary["recording"] = own.get("recording")  # the run's summary tells of it too

    def _forward(self, method: str, *args: Any) -> None:
        if self.recorder is None:  # no recording: no lock on the acquisition thread
            return
        with self._lock:
            if self.recorder is not None:
                getattr(self.recorder, method)(*args)

    def on_start(self, run: RunDescription) -> None:
        self._run, self._now = run, run.start_sample
        self._forward("on_start", run)

    def on_clock(self, sample: int) -> None:
        self._now = sample
        self._forward("on_clock", sample)

    def on_block(self, block: Any, filtered: Any) -> None:
        self._forward("on_block", block, filtered)

    def on_spikes(self, spikes: Any) -> None:
        self._forward("on_spikes", spikes)

    def on_stim(self, record: Any) -> None:
        self._forward("on_stim", record)

    def on_trial(self, trial: Any) -> None:
        self._forward("on_trial", trial)

    def on_decision(self, sample: int, decision: dict[str, Any]) -> None:
        self._forward("on_decision", sample, decision)

    def on_event(self, event: Any) -> None:
        self._forward("on_event", event)

    def on_stop(self, summary: dict[str, Any]) -> None:
        self.finish(summary)
