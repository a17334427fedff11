"""Electrode layouts as probeinterface JSON files, loaded without probeinterface.

Shipped layouts (regenerate with ``python -m mea_control.layouts.make_layouts``):

- ``grid8x8_200um`` (default): 8x8 grid, 200 um pitch, 30 um discs; labels "11".."88"
  (column digit, then row digit); channels column-major (11, 12, ... 18, 21, ... 88).
- ``mcs60mea200``: MCS 60MEA200/30, the same grid without its corners; labels "12".."87";
  channels in ascending label order; electrode "15" is the internal reference.
- ``med64``: MED64-style 8x8 grid, 450 um pitch, 50 x 50 um square electrodes; labels
  "1".."64" row by row from the top left; channel = label - 1.

Positions are in um with x to the right and y upwards (row 1 is the top row). A contact
that is not a disc gets the diameter of the disc of equal area, so ``Layout.area_cm2`` is
the true geometric area. Contact annotations ``can_stimulate`` (bool) and ``role``
("electrode", "reference" or "ground") carry the roles; a file without them (e.g. one
written by SpikeInterface) gets every contact as a stimulating electrode.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mea_control.types import Layout

DEFAULT_LAYOUT = "grid8x8_200um"
LAYOUT_NAMES: tuple[str, ...] = ("grid8x8_200um", "mcs60mea200", "med64")
ROLES: tuple[str, ...] = ("electrode", "reference", "ground")

_UNIT_TO_UM = {"um": 1.0, "mm": 1e3, "m": 1e6}


class LayoutError(ValueError):
    """A layout name or file that cannot be used; the message says why and what to do."""


def load_layout(name_or_path: str = DEFAULT_LAYOUT) -> Layout:
    """A shipped layout by name, or any probeinterface JSON file by path."""
    if name_or_path in LAYOUT_NAMES:
        ref = resources.files(__name__).joinpath(f"{name_or_path}.json")
        return _parse(_read_json(ref.read_text(encoding="utf-8"), name_or_path), name_or_path)
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix.lower() == ".json" or len(path.parts) > 1
    if not path.is_file():
        if looks_like_path:
            raise LayoutError(
                f"no layout file at {str(path)!r}; give a probeinterface JSON file "
                f"or one of the shipped layouts: {', '.join(LAYOUT_NAMES)}"
            )
        raise LayoutError(
            f"unknown layout {name_or_path!r}; accepted names: {', '.join(LAYOUT_NAMES)} "
            "(or a path to a probeinterface JSON file)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"cannot read layout file {str(path)!r}: {exc}") from None
    return _parse(_read_json(text, str(path)), path.stem, source=str(path))


def _read_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(
            f"layout file {where!r} is not valid JSON ({exc}); "
            "write it with probeinterface.write_probeinterface"
        ) from None


def _fail(where: str, problem: str) -> LayoutError:
    return LayoutError(
        f"layout file {where!r} is not a probeinterface file mea-control can use: {problem}; "
        "write it with probeinterface.write_probeinterface (one 2-D probe)"
    )


def _parse(doc: Any, name: str, source: str = "") -> Layout:
    where = source or name
    if not isinstance(doc, dict) or doc.get("specification") != "probeinterface":
        raise _fail(where, 'no "specification": "probeinterface" at the top level')
    probes = doc.get("probes")
    if not isinstance(probes, list) or len(probes) != 1:
        n = len(probes) if isinstance(probes, list) else 0
        raise _fail(where, f"it holds {n} probes, mea-control needs exactly one")
    probe = probes[0]
    try:
        return _probe_to_layout(probe, name, source)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, LayoutError):
            raise
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _fail(where, detail) from None


def _probe_to_layout(probe: dict[str, Any], name: str, source: str) -> Layout:
    if probe.get("ndim", 2) != 2:
        raise ValueError(f"ndim is {probe.get('ndim')}, a planar MEA needs 2")
    unit = probe.get("si_units", "um")
    if unit not in _UNIT_TO_UM:
        raise ValueError(f"si_units {unit!r} is not one of {', '.join(_UNIT_TO_UM)}")
    positions = np.asarray(probe["contact_positions"], dtype=np.float64) * _UNIT_TO_UM[unit]
    n = len(positions)
    if n == 0 or positions.shape != (n, 2):
        raise ValueError("contact_positions must be a non-empty list of [x, y] pairs")
    ids = probe.get("contact_ids") or [str(i) for i in range(n)]
    labels = [str(x) for x in _per_contact(ids, n, "contact_ids")]
    if any(label == "" for label in labels):
        raise ValueError("contact_ids has empty labels; give every contact a label")
    shapes = _per_contact(probe.get("contact_shapes", "circle"), n, "contact_shapes")
    params = _per_contact(probe.get("contact_shape_params", {}), n, "contact_shape_params")
    diameters = np.array(
        [
            _disc_diameter(s, p, label, unit) * _UNIT_TO_UM[unit]
            for s, p, label in zip(shapes, params, labels, strict=True)
        ]
    )

    annotations = probe.get("contact_annotations", {}) or {}
    roles = [str(r) for r in _per_contact(annotations.get("role", "electrode"), n, "role")]
    bad = sorted({r for r in roles if r not in ROLES})
    if bad:
        raise ValueError(f"unknown contact role(s) {bad}; accepted: {', '.join(ROLES)}")
    can_stim = np.array(
        [bool(x) for x in _per_contact(annotations.get("can_stimulate", True), n, "can_stimulate")]
    )
    can_stim &= np.array([r == "electrode" for r in roles])

    order = _channel_order(probe.get("device_channel_indices"), n)
    labels = [labels[i] for i in order]
    roles = [roles[i] for i in order]
    extra = dict(probe.get("annotations", {}) or {})
    if source:
        extra["source"] = source
    return Layout(
        name=name,
        labels=tuple(labels),
        positions_um=positions[order],
        diameters_um=diameters[order],
        can_stimulate=can_stim[order],
        ground=tuple(ch for ch, r in enumerate(roles) if r == "ground"),
        reference=tuple(ch for ch, r in enumerate(roles) if r == "reference"),
        annotations=extra,
    )


def _per_contact(value: Any, n: int, field: str) -> list[Any]:
    """A per-contact list; a scalar (or a single dict) applies to every contact."""
    if isinstance(value, (str, bool, int, float, dict)):
        return [value] * n
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{field} must list one value per contact ({n})")
    return value


def _disc_diameter(shape: str, params: dict[str, Any], label: str, unit: str) -> float:
    """Diameter of the disc with the contact's area (in the file's units).

    Every size must be finite and > 0: the safety gate divides by the area.
    """
    keys = {"circle": ("radius",), "square": ("width",), "rect": ("width", "height")}.get(shape)
    if keys is None:
        raise ValueError(f"contact shape {shape!r} is not circle, square or rect")
    sizes = [float(params[key]) for key in keys]
    for key, size in zip(keys, sizes, strict=True):
        if not (math.isfinite(size) and size > 0):
            raise ValueError(
                f"contact {label!r} has {key} {size:g} {unit}; electrode sizes must be "
                "finite and > 0 (the charge density limits divide by the area)"
            )
    if shape == "circle":
        return 2.0 * sizes[0]
    area = sizes[0] ** 2 if shape == "square" else sizes[0] * sizes[1]
    return 2.0 * math.sqrt(area / math.pi)


def _channel_order(indices: Any, n: int) -> list[int]:
    """Contact index for each channel 0..m-1; contacts wired to -1 are left out."""
    if indices is None:
        return list(range(n))
    indices = [int(i) for i in _per_contact(indices, n, "device_channel_indices")]
    wired = sorted((ch, contact) for contact, ch in enumerate(indices) if ch >= 0)
    if [ch for ch, _ in wired] != list(range(len(wired))) or not wired:
        raise ValueError(
            "device_channel_indices must number the wired contacts 0..m-1, each once "
            "(-1 for an unwired contact)"
        )
    return [contact for _, contact in wired]
