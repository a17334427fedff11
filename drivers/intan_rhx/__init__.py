"""``rhx://HOST:5000?waveform=5001&spikes=5002``: Intan RHS and RHD systems through RHX's TCP.

Follows the Intan RHX software 3.3.0 as published (github.com/Intan-Technologies/Intan-RHX,
commit 0829e0b47cf4a9a2a961e5e597a678c7d4d1b096: ``GUI/Widgets/tcpdisplay.cpp`` for the
command syntax, ``Engine/Processing/commandparser.cpp`` for answers and error strings,
``Engine/Threads/tcpdataoutputthread.cpp`` for the waveform and spike streams,
``Engine/Processing/stimparameters.cpp`` for the stimulation parameters). See
``docs/intan-rhx.md`` for the setup in RHX, the rig file and the limits.

- Commands are text separated by ``;``. ``set``/``execute`` answer nothing on success, so
  every batch whose outcome matters ends with ``get runmode``: the text before its answer
  is the batch's errors (RHX's own strings). ``set runmode run`` goes alone (RHX parses
  what follows it in the same batch only once acquisition stops).
- The waveform port carries blocks of 128 frames (magic 0x2ef07a08, then per frame an
  int32 timestamp and a uint16 per enabled output); ``TCPNumberDataBlocksPerWrite`` is set
  to 1, so a block of 128 samples (4.27 ms at 30 kHz) is the latency floor. Each block is
  a :class:`Block` in the layout's channel order, mapped by the rig file's ``[channels]``
  table (native name such as ``"A-010"`` -> electrode label).
- Stimulation (RHS only): a pattern is mapped onto one of the keys F1-F8: the channels
  whose Source is that key and whose stimulation is enabled fire together on ``execute
  ManualStimTriggerPulse F<k>``. A pattern that matches what a key holds already fires
  with that one command (the fast path); any other pattern first needs the differing
  parameters set and each changed channel uploaded (``execute UploadStimParameters
  a-010``), which costs a round trip and the controller's upload time. The rig file's
  ``[stimulator]`` table may pre-upload patterns onto keys before the run. A pattern RHS
  hardware cannot play (voltage mode, monophasic or four-phase pulses, unequal triphasic
  outer phases, durations that are not whole samples, amplitudes that are not whole steps
  of the controller's step size) is refused, reported as not run.
- RHX says nothing when a pulse runs: the driver streams each stimulating channel's STIM
  band too and reports a pattern at the first sample its pulse shows there. A pattern
  whose pulse does not show within ``REPORT_TIMEOUT_S`` is reported as not run.
- ``detect=rhx`` uses RHX's own spike detector (spike port, 14-byte records) instead of
  raw samples: SpikeEvents (amplitude unknown: NaN) and a Tick a block behind the stream.

The package, a module a job: ``settings`` (our parameters <-> RHX's items, pure),
``link`` (the command and data sockets, RHX's data streams), ``stimulation`` (booking,
firing, aborts, reports), ``discovery`` (RHX on this computer, without connecting) and
``driver`` (RHXDriver, tying them together).
"""

from drivers.intan_rhx import discovery, link, settings, stimulation
from drivers.intan_rhx.driver import RHXDriver
from drivers.intan_rhx.settings import Preset, Unmappable, channel_map, presets, rhs_settings
from drivers.intan_rhx.stimulation import REPORT_TIMEOUT_S

__all__ = ["REPORT_TIMEOUT_S", "Preset", "RHXDriver", "Unmappable", "channel_map",
           "discovery", "link", "presets", "rhs_settings", "settings", "stimulation"]
