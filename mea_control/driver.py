"""The port every device implements, and the registry that finds drivers by URL scheme.

A device is named by a URL such as ``sim://?seed=3`` or ``serial:///dev/ttyACM0``. The
scheme selects the driver class; the query holds parameters that the class declares in
``params``. Drivers are plug-ins: each installed package registers its schemes as entry
points in the group ``mea_control.drivers`` (``scheme = "module:Class"``), and a driver is
imported only when its scheme is used (or when :func:`discover_devices` asks every one),
so an optional driver's dependencies are not needed by anyone else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from mea_control.types import (
    Block,
    DeviceInfo,
    SpikeEvents,
    StimPattern,
    StimReport,
    Tick,
    parse_value,
)

#: The entry-point group under which packages register their drivers.
ENTRY_POINT_GROUP = "mea_control.drivers"


class DriverError(Exception):
    """A problem a user can fix (bad URL, bad parameter, device not answering)."""


@dataclass(frozen=True)
class Param:
    """A URL parameter a driver accepts."""

    type: type
    default: Any
    help: str = ""

    def parse(self, name: str, text: str) -> Any:
        try:
            return parse_value(self.type, text)
        except ValueError:
            raise DriverError(
                f"bad value {text!r} for URL parameter {name!r}: expected {self.type.__name__}"
            ) from None


Event = Block | SpikeEvents | StimReport | Tick


class Driver(ABC):
    """A device family. Lifecycle: open -> start -> read/stimulate ... -> stop -> close.

    Threads. Every method runs on one thread, the acquisition thread (the engine's loop),
    one call at a time: open, close, start, stop, read, stimulate, earliest_stim_sample,
    drain_events, set_fast. Two methods are the exception: :meth:`abort_stimulation` and
    :meth:`rearm_stimulation` may be called from any thread (the GUI's STOP, a watchdog)
    at any moment, concurrently with any of those, including an abort racing a
    stimulate() or a read() that fires a pattern waiting in the driver; a driver keeps its
    state whole when they race (its own lock), and neither of them raises. The engine
    serialises its own stimulate() and abort with a lock of its own; a driver must not
    count on that.

    What STOP guarantees (:meth:`abort_stimulation`): once it returns, no pattern whose
    stimulate() returned before the call runs a pulse that the device could still stop.
    What a device cannot stop (a train its hardware plays whole once triggered, a trigger
    already on its way) is stated in the driver's documentation, in device samples. Every
    pattern gets exactly one final fate through :meth:`read`: executed, dropped (e.g.
    reason "aborted"), or executed and then cut (a second report with ``pulses_run``)
    where the driver can know that a train it started was cut.
    """

    scheme: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    #: What ``mea-control devices`` says when :meth:`discover` finds none (empty: nothing).
    none_found: ClassVar[str] = ""

    def __init__(self, url: str, options: dict[str, Any], location: str = "") -> None:
        self.url = url
        self.options = options
        self.location = location

    @classmethod
    def discover(cls, timeout: float = 0.5) -> list[tuple[str, str]]:
        """(URL, one-line description) of each device of this family that answers on this
        computer within about ``timeout`` seconds; [] when none does or the family has no
        search of its own (the default). It must not send a device bytes that another
        maker's device could take for a command; never raises."""
        return []

    #: What open() found; ``info`` refuses until then.
    _info: DeviceInfo | None = None

    @property
    def info(self) -> DeviceInfo:
        """What the device is; valid after open()."""
        if self._info is None:
            raise DriverError(f"{self.url}: device info is available after open()")
        return self._info

    @abstractmethod
    def open(self) -> None:
        """Connect to the device and learn what it is (:attr:`info`). Acquisition thread."""

    @abstractmethod
    def close(self) -> None:
        """Stop if running, cancel what the device still holds, let go of it. Acquisition
        thread; a second call does nothing."""

    @abstractmethod
    def start(self, block_samples: int | None = None) -> None:
        """Start streaming, in blocks of ``block_samples`` where the device lets us choose.
        Acquisition thread."""

    @abstractmethod
    def stop(self) -> None:
        """Stop streaming; read() returns None from then on. Acquisition thread."""

    @abstractmethod
    def read(self, timeout: float | None = None) -> Event | None:
        """The next Block, SpikeEvents, Tick or StimReport, or None after ``timeout`` seconds.

        A raw-streaming device sends Blocks (detection happens in the engine); a
        spikes-only device sends SpikeEvents and a Tick after each interval. A driver that
        holds patterns on the host (it cannot book them on the device) fires them from
        here. Acquisition thread.
        """

    @abstractmethod
    def stimulate(self, pattern: StimPattern) -> int:
        """Queue a pattern that already passed the safety gate; returns a ticket.

        Acquisition thread. The pattern's fate comes out of read() as StimReports with
        the ticket; an abort_stimulation() racing this call either cancels the pattern
        or comes after it (and then treats it as sent before the abort)."""

    def earliest_stim_sample(self) -> int | None:
        """The first sample at which a pattern sent now could run; None if the device
        cannot tell. Drivers with ``scheduled_stim`` should answer, so that the safety
        gate books a pulse at the sample where it will really run. Acquisition thread."""
        return None

    def abort_stimulation(self) -> None:  # noqa: B027 - optional, a no-op by default
        """Cancel every pattern sent before this call that has not run: any thread, at any
        time, concurrently with the acquisition thread's calls; never raises.

        When it returns, no pattern whose stimulate() returned before the call runs a
        pulse later, except what the device cannot stop (documented by the driver, in
        device samples: e.g. a train its hardware already began). Patterns that will not
        run are reported dropped with reason "aborted"; a started train the driver knows
        was cut gets a second report with ``pulses_run``. A device that cannot cancel
        anything: a no-op (and its documentation says so)."""

    def rearm_stimulation(self) -> None:  # noqa: B027 - optional, a no-op by default
        """A person re-armed stimulation: a device that disarmed itself (it lost the
        host's heartbeat) may run patterns again. A device without such a switch: no-op.
        Any thread, at any time, like abort_stimulation(); never raises."""

    def drain_events(self) -> list[tuple[str, str]]:
        """Problems on the link since the last call, as (kind, message): lost or corrupt
        frames and the like. The engine logs them as run events; a kind that names a
        member of mea_control.sinks.EventKind (link_error, link_gap, device_error,
        device_disarmed, ...) becomes that member, any other stays as given.
        Acquisition thread."""
        return []

    def set_fast(self, fast: bool) -> None:
        """Run as fast as possible instead of in real time (simulators only). Acquisition
        thread."""
        if fast:
            raise DriverError(f"--fast works with the simulator only, not {self.scheme}://")

    def __enter__(self) -> Driver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def installed_drivers() -> dict[str, EntryPoint]:
    """scheme -> the entry point of its driver, for every installed package's drivers, in
    scheme order (the first registration of a scheme counts)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return dict(sorted(found.items()))


def _accepted(schemes: dict[str, EntryPoint]) -> str:
    return ", ".join(f"{s}://" for s in sorted(schemes)) or (
        "none, no driver is installed: install mea-control (in a checkout: make .venv/.installed)")


def _load(entry: EntryPoint) -> type[Driver]:
    try:
        cls = entry.load()
    except ImportError as exc:
        raise DriverError(
            f"the {entry.name}:// driver needs a missing package: {exc.name}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverError(
            f"the {entry.name}:// driver {entry.value!r} is not a Driver class: check the "
            f"entry point in its package's {ENTRY_POINT_GROUP!r} group"
        )
    return cls


def driver_class(scheme: str) -> type[Driver]:
    """The driver class installed for ``scheme``; DriverError naming the installed ones."""
    schemes = installed_drivers()
    entry = schemes.get(scheme)
    if entry is None:
        raise DriverError(
            f"unknown device scheme {scheme + '://'!r}; accepted: {_accepted(schemes)}"
        )
    return _load(entry)


def discover_devices(timeout: float = 0.5) -> list[tuple[str, str]]:
    """(URL, what answered there) from every installed driver's own search; a driver that
    found none and has something to say about it (``none_found``) gives a line of its own
    (URL empty), as does a driver that cannot be loaded."""
    found: list[tuple[str, str]] = []
    asked: set[type[Driver]] = set()
    for scheme, entry in installed_drivers().items():
        try:
            cls = _load(entry)
        except DriverError as exc:
            found.append(("", f"{scheme}://  not available: {exc}"))
            continue
        if cls in asked:  # one class for several schemes (serial://, socket://)
            continue
        asked.add(cls)
        none = [("", f"{scheme}://  none: {cls.none_found}")] if cls.none_found else []
        found += cls.discover(timeout) or none
    return found


def parse_url(url: str, **defaults: Any) -> tuple[type[Driver], str, dict[str, Any]]:
    """Split a device URL into (driver class, location, parsed options).

    ``defaults`` replace the driver's own defaults for options the URL does not set
    (those the driver does not have are ignored).
    """
    if "://" not in url:
        raise DriverError(
            f"device URL {url!r} has no scheme; write it like sim://?seed=1 (accepted: "
            f"{_accepted(installed_drivers())})"
        )
    parts = urlsplit(url)
    cls = driver_class(parts.scheme)
    location = parts.netloc + parts.path
    options = {name: defaults.get(name, p.default) for name, p in cls.params.items()}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in cls.params:
            accepted = ", ".join(sorted(cls.params)) or "none"
            raise DriverError(
                f"unknown parameter {key!r} for {parts.scheme}://; accepted: {accepted}"
            )
        options[key] = cls.params[key].parse(key, value)
    return cls, location, options


def open_driver(url: str, **defaults: Any) -> Driver:
    """Build (but do not open) the driver for a device URL (``defaults``: see parse_url)."""
    cls, location, options = parse_url(url, **defaults)
    return cls(url, options, location)
