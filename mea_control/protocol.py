"""The protocol scripting API.

A protocol is a Python file with one :class:`Protocol` subclass. It declares
its parameters (type, default, unit, range) and implements any of the hooks
``setup``, ``on_block``, ``on_spikes``, ``on_clock``, ``on_trial``, ``on_stim`` and
``teardown``; each hook receives the run's :class:`~mea_control.context.Context`
(``ctx``), which gives the clock (``ctx.now``, in device samples), the layout, a
seeded random generator, ``ctx.stimulate`` and ``ctx.outcome``; :func:`electrodes`
reads an electrode-list parameter. ``planned_patterns`` says before the run what it
will send, for the check against the limits (:mod:`mea_control.preflight`);
``model_state`` gives displays the protocol's model.
See ``protocols/`` for examples.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from mea_control.context import Context
from mea_control.sinks import StimRecord
from mea_control.trials import Trial, Trials, TrialSpec, TrialTable
from mea_control.types import Block, SpikeEvents, StimPattern, parse_value

__all__ = [
    "Context",
    "Parameter",
    "Protocol",
    "ProtocolError",
    "StimRecord",
    "Trial",
    "TrialSpec",
    "TrialTable",
    "Trials",
    "electrodes",
    "load_protocol",
    "next_due",
    "shipped_protocols",
]

PROTOCOLS_DIR = Path(__file__).resolve().parent.parent / "protocols"


class ProtocolError(Exception):
    """A problem with a protocol file or its parameters that the user can fix."""


def electrodes(ctx: Context, labels: str | Sequence[str], parameter: str,
               stimulating: bool = False) -> list[int]:
    """An electrode-list parameter (comma-separated labels, or a list of them) -> the
    channels of ``ctx.layout``, in the order given. ProtocolError naming ``parameter``
    for an empty list, a label listed twice, a label the layout lacks, or (with
    ``stimulating``) the electrodes that cannot stimulate here. Words such as "auto" are
    the protocol's to handle before."""
    given = [x.strip() for x in labels.split(",")] if isinstance(labels, str) \
        else [str(x).strip() for x in labels]
    given = [x for x in given if x]
    if not given:
        raise ProtocolError(f"{parameter}: give at least one electrode label")
    twice = sorted({x for x in given if given.count(x) > 1})
    if twice:
        raise ProtocolError(f"{parameter}: {', '.join(twice)} listed twice")
    try:
        channels = [ctx.layout.channel(label) for label in given]
    except ValueError as exc:
        raise ProtocolError(f"{parameter}: {exc}") from None
    blocked = [label for label, ch in zip(given, channels, strict=True)
               if stimulating and not ctx.can_stimulate(ch)]
    if blocked:
        raise ProtocolError(f"{parameter}: {', '.join(blocked)} cannot stimulate here "
                            "(ground, reference, forbidden by the rig, or not a "
                            "stimulation electrode)")
    return channels


def next_due(due: int, step: int, now: int) -> int:
    """The sample at which a paced pulse is due after the one due at ``due``: ``step``
    later, or ``step`` after ``now`` if the clock has passed that already (the operator
    paused the protocol): a schedule resumes at its pace, not with a burst that catches
    up."""
    due += step
    return due if due > now else now + step


@dataclass(frozen=True)
class Parameter:
    """A declared protocol parameter: type, default, unit, allowed range or choices."""

    type: type
    default: Any
    unit: str = ""
    range: tuple[float, float] | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def coerce(self, name: str, value: Any) -> Any:
        """Convert (from text if needed) and validate a value; ProtocolError if it is bad."""
        if isinstance(value, str) and self.type is not str:
            value = self._parse(name, value)
        elif self.type is float and isinstance(value, (int, np.integer)) and not isinstance(
            value, bool
        ):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ProtocolError(
                f"parameter {name} must be {self.type.__name__}, not {type(value).__name__}"
            )
        if self.range is not None:
            lo, hi = self.range
            if not lo <= value <= hi:
                raise ProtocolError(
                    f"parameter {name}={value} is out of range: allowed {lo} to {hi}"
                    + (f" {self.unit}" if self.unit else "")
                )
        if self.choices is not None and value not in self.choices:
            raise ProtocolError(
                f"parameter {name}={value!r} is not one of: "
                + ", ".join(str(c) for c in self.choices)
            )
        return value

    def _parse(self, name: str, text: str) -> Any:
        try:
            return parse_value(self.type, text)
        except ValueError:
            raise ProtocolError(
                f"parameter {name}={text!r} is not a valid {self.type.__name__}"
            ) from None

    def describe(self) -> str:
        text = f"{self.type.__name__} = {self.default!r}"
        if self.unit:
            text += f" {self.unit}"
        if self.range is not None:
            text += f"  [{self.range[0]} .. {self.range[1]}]"
        if self.choices is not None:
            text += "  {" + ", ".join(str(c) for c in self.choices) + "}"
        return text


class Protocol:
    """Base class of every protocol. Subclasses set ``parameters`` and override hooks."""

    #: Declared parameters, by name.
    parameters: ClassVar[dict[str, Parameter]] = {}
    #: Shown in listings and recordings; defaults to the class name.
    name: ClassVar[str] = "Protocol"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        for pname, param in cls.parameters.items():
            try:
                param.coerce(pname, param.default)
            except ProtocolError as exc:
                raise ProtocolError(
                    f"protocol {cls.name}: the default of parameter {pname} is invalid ({exc})"
                ) from None

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.parameters))
        if unknown:
            accepted = ", ".join(sorted(self.parameters)) or "none"
            raise ProtocolError(
                f"{self.name} has no parameter {unknown[0]!r}; accepted: {accepted}"
            )
        resolved = {
            name: p.coerce(name, values.get(name, p.default)) for name, p in self.parameters.items()
        }
        #: The validated parameter values, as attributes (``self.p.mixing``).
        self.p = SimpleNamespace(**resolved)
        self.values: dict[str, Any] = resolved
        self.validate()

    def validate(self) -> None:
        """Check parameters against each other; raise ProtocolError with a clear message."""

    def planned_patterns(self, ctx: Context) -> list[StimPattern | list[StimPattern]] | None:
        """The patterns this run will send, checked against the limits in force before it
        starts (:mod:`mea_control.preflight`); None: the protocol cannot tell (its
        parameters in uA or mV are checked instead), []: it never stimulates.

        Each distinct pattern once, or the largest a trial can send; its ``at_sample`` is
        ignored. A burst sequence (what ``StimPattern.bursts`` returns) goes in as one
        item, a list, and is checked together at its samples. Electrodes may be labels.
        ``ctx`` is the run's device (layout, ``can_stimulate``) and a ``ctx.rng`` that
        draws as the run's will, with the clock at 0; it cannot stimulate. Raise
        ProtocolError for a set-up that cannot work on this device.
        Set nothing on ``self`` here: the run starts from ``setup``."""
        return None

    @classmethod
    def describe(cls) -> str:
        """The summary of the class docstring: its first paragraph, on one line."""
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split())

    # Hooks, all optional. They run on the engine's acquisition thread.
    def setup(self, ctx: Context) -> None:
        """Called once, before the first block."""

    def on_block(self, ctx: Context, block: Block, filtered: np.ndarray | None) -> None:
        """Called for every block; ``filtered`` is band-passed microvolts (or None)."""

    def on_spikes(self, ctx: Context, spikes: SpikeEvents) -> None:
        """Called with the spikes detected in the latest block (only when there are any)."""

    def on_clock(self, ctx: Context, sample: int) -> None:
        """Called each time the device's clock moves to ``sample`` (``ctx.now``): after
        every block (its ``on_block`` and ``on_spikes``) and, on a device that streams
        spikes only, after every tick (every spike before ``sample`` has been heard; on
        a raw stream the host's detector reports a spike up to
        ``SpikeDetector.max_report_delay_samples`` after its peak).
        The place to pace pulses on any device (:func:`next_due` keeps a schedule from
        catching up in a burst after a pause). Not called while the operator pauses the
        protocol, nor once the run is ending (``ctx.finish()``, a stop, an error)."""

    def on_trial(self, ctx: Context, trial: Trial) -> None:
        """Called when a trial's response window has closed."""

    def on_stim(self, ctx: Context, record: StimRecord) -> None:
        """Called once a pattern this run sent has its final fate, with the record the
        sinks get (``record.ticket`` is what ``ctx.stimulate`` returned): "executed" at
        ``record.execution_sample`` (a train once its last pulse has run, or with
        ``pulses_run`` set when it was cut short) or "dropped" by the device. A refused
        pattern raised SafetyRefusal from ``ctx.stimulate`` instead and is not told here.
        Never called from inside ``ctx.stimulate``; while the operator pauses the
        protocol, the fates settled meanwhile are told on resume; fates settled once the
        run is ending (a stop asked for, an error, after ``teardown``) are not told.
        ``ctx.outcome(ticket)`` looks a ticket up at any time."""

    def teardown(self, ctx: Context) -> None:
        """Called once at the end of the run, also after an error or Ctrl-C."""

    def summary(self) -> dict[str, Any]:
        """Protocol-specific figures for the end-of-run summary."""
        return {}

    def model_state(self) -> dict[str, Any] | None:
        """A snapshot of the protocol's model for displays (the GUI's model panel), or
        None: nothing to show (the default).

        Threading: unlike the hooks, it is called from another thread (the GUI's, a few
        times a second) while the hooks run on the loop's. It may read only what it
        guards with a lock of its own that the hooks hold briefly, or values the hooks
        replace whole; it returns copies, must not block or take long, and must not
        call ``ctx`` (see protocols/fep_closed_loop.py)."""
        return None


def shipped_protocols() -> dict[str, Path]:
    """Shipped protocol names -> files."""
    return {
        p.stem: p
        for p in sorted(PROTOCOLS_DIR.glob("*.py"))
        if not p.name.startswith("_")
    }


def _module_from_file(path: Path) -> ModuleType:
    name = f"mea_protocol_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProtocolError(f"cannot load protocol file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ProtocolError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except ProtocolError:
        raise
    except Exception as exc:  # a user's module may raise anything at import
        raise ProtocolError(f"{path}: error while loading: {type(exc).__name__}: {exc}") from exc
    return module


def load_protocol(name_or_path: str) -> tuple[type[Protocol], Path]:
    """The Protocol subclass in a file, or in a shipped protocol named without ``.py``."""
    shipped = shipped_protocols()
    path = Path(name_or_path)
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif not path.exists():
        raise ProtocolError(
            f"no protocol file {name_or_path!r}; give a path to a .py file or one of: "
            + ", ".join(shipped)
        )
    if path.is_dir() or path.suffix != ".py":
        raise ProtocolError(f"{path} is not a Python protocol file (.py)")
    module = _module_from_file(path.resolve())
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Protocol)
        and obj is not Protocol
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        what = "no Protocol subclass" if not found else "more than one Protocol subclass"
        raise ProtocolError(f"{path} defines {what}; a protocol file defines exactly one")
    return found[0], path.resolve()
