"""A fake Intan RHX: its three TCP servers, speaking RHX's protocol, over the simulated culture.

It follows the Intan RHX software, version 3.3.0 (github.com/Intan-Technologies/Intan-RHX:
``GUI/Widgets/tcpdisplay.cpp`` for the command syntax, ``Engine/Processing/commandparser.cpp``
and ``stateitem.cpp`` for the answers and error strings, ``Engine/Threads/
tcpdataoutputthread.cpp`` for the data streams) and an RHS stimulation/recording controller:

- command port (server.py, :class:`FakeRHX`): text commands separated by ``;``; ``set``/
  ``execute`` answer nothing on success and an error string on failure, ``get`` answers
  ``Return: <Name> <value>``. One client at a time; RHX listens again only when the user
  clicks Connect (:meth:`FakeRHX.enable_command_server`).
- settable items (items.py): the global and per channel state items, what each accepts and
  RHX's error strings; the native channel names (:func:`default_wiring`).
- waveform and spike ports (streams.py): while running, one write per
  ``TCPNumberDataBlocksPerWrite`` blocks; a block is the magic number 0x2ef07a08 and 128
  frames of an int32 timestamp and one uint16 per enabled output (per channel in RHX's
  order: WIDE, LOW, HIGH, DC, STIM). The fake's LOW and HIGH bands repeat WIDE and DC
  reads 0 V; the STIM word has bit 0 (on), bit 8 (negative) and the phase's amplitude in
  steps (settle and recovery bits are not drawn). Spike records (14 bytes: magic
  0x3ae2710f, 5-char native name, uint32 timestamp, uint8 id 1) for threshold crossings of
  ``SpikeThresholdMicroVolts`` on channels with ``TCPDataOutputEnabledSpike``.
- stimulation (server.py; stimulation.py makes the pulse and the STIM words of the
  uploaded parameters): per channel parameters that take effect at ``execute
  UploadStimParameters`` (one channel at any time, all channels only while stopped);
  ``execute ManualStimTriggerPulse F1`` fires, at the sample the clock is at, every channel
  whose uploaded Source is KeyPressF1 and StimEnabled is True, unless it is still within
  its last pulse's RefractoryPeriodMicroseconds. The culture (``sim://``'s, fast, driven by
  this clock) receives the pulses, so spikes are real and stimuli evoke responses.

Everything runs on one thread, clocked at the sample rate in real time (``fast=True``:
as fast as the waveform client reads). Test hooks: :attr:`FakeRHX.commands` (every command
text received), :attr:`FakeRHX.received` (the bytes), :attr:`FakeRHX.pulses` (every pulse
the culture received: the device's own record of what ran), :meth:`FakeRHX.clock` (the
sample the board is at), :meth:`FakeRHX.hang_up`, :meth:`FakeRHX.inject`.
``python -m hardware_sim.intan_rhx [SECONDS]`` serves one and prints its URL.
"""

from hardware_sim.intan_rhx.items import default_wiring
from hardware_sim.intan_rhx.server import FakeRHX

__all__ = ["FakeRHX", "default_wiring"]
