"""Regenerate the shipped layout files: ``python -m mea_control.layouts.make_layouts``.

Needs probeinterface (a dev dependency); the runtime loader does not. Each file is a
probeinterface ProbeGroup with one probe whose contacts are in channel order:
``device_channel_indices[i] == i`` and ``contact_ids[i]`` is the electrode label. Roles
ride along as contact annotations (``can_stimulate``, ``role``) and the conventions as
probe annotations, so they survive ``read_probeinterface`` / ``write_probeinterface``.

Coordinates: x grows to the right (column 1 on the left), y grows upwards (probeinterface's
convention, so SpikeInterface plots match the vendor's map): row 1 is the top row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GRID = 8


def _grid_cells(skip_corners: bool) -> list[tuple[int, int]]:
    """(column, row) pairs, 1-based, column-major: (1,1), (1,2), ... (8,8)."""
    corners = {(1, 1), (1, GRID), (GRID, 1), (GRID, GRID)}
    return [
        (col, row)
        for col in range(1, GRID + 1)
        for row in range(1, GRID + 1)
        if not (skip_corners and (col, row) in corners)
    ]


def _positions(cells: list[tuple[int, int]], pitch_um: float) -> np.ndarray:
    return np.array(
        [[(col - 1) * pitch_um, (GRID - row) * pitch_um] for col, row in cells], dtype=float
    )


def _write(
    name: str,
    labels: list[str],
    positions: np.ndarray,
    shape: str,
    shape_params: dict[str, float],
    roles: list[str],
    annotations: dict[str, object],
) -> Path:
    from probeinterface import Probe, ProbeGroup, write_probeinterface

    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes=shape, shape_params=shape_params)
    probe.create_auto_shape(probe_type="rect")
    probe.set_contact_ids(labels)
    probe.set_device_channel_indices(np.arange(len(labels)))
    probe.annotate(**annotations)
    probe.annotate_contacts(
        can_stimulate=np.array([role == "electrode" for role in roles]),
        role=np.array(roles),
    )
    group = ProbeGroup()
    group.add_probe(probe)
    path = HERE / f"{name}.json"
    write_probeinterface(path, group)
    return path


def make_grid8x8_200um() -> Path:
    """The default 8x8 grid: 200 um pitch, 30 um discs, labels "11".."88" (column, row)."""
    cells = _grid_cells(skip_corners=False)
    return _write(
        "grid8x8_200um",
        [f"{col}{row}" for col, row in cells],
        _positions(cells, 200.0),
        "circle",
        {"radius": 15.0},
        ["electrode"] * len(cells),
        {
            "name": "grid8x8_200um",
            "description": "generic 8x8 MEA, 200 um pitch, 30 um electrodes",
            "pitch_um": 200.0,
            "label_convention": "column digit then row digit, 11..88; channels column-major",
            "y_axis": "up; row 1 is the top row",
        },
    )


def make_mcs60mea200() -> Path:
    """MCS 60MEA200/30: the 8x8 grid without corners; electrode 15 is the internal reference."""
    cells = _grid_cells(skip_corners=True)
    labels = [f"{col}{row}" for col, row in cells]
    return _write(
        "mcs60mea200",
        labels,
        _positions(cells, 200.0),
        "circle",
        {"radius": 15.0},
        ["reference" if label == "15" else "electrode" for label in labels],
        {
            "name": "mcs60mea200",
            "manufacturer": "Multi Channel Systems",
            "model_name": "60MEA200/30",
            "description": "MCS 60MEA200/30iR: 8x8 grid without corners, 200 um pitch, 30 um TiN",
            "pitch_um": 200.0,
            "label_convention": (
                "MCS: column digit then row digit, 12..87; channels in ascending label order"
            ),
            "y_axis": "up; row 1 is the top row",
        },
    )


def make_med64() -> Path:
    """MED64-style 8x8 grid: 450 um pitch, 50 x 50 um square electrodes, labels "1".."64"."""
    cells = [(col, row) for row in range(1, GRID + 1) for col in range(1, GRID + 1)]
    return _write(
        "med64",
        [str(i + 1) for i in range(len(cells))],
        _positions(cells, 450.0),
        "square",
        {"width": 50.0},
        ["electrode"] * len(cells),
        {
            "name": "med64",
            "manufacturer": "Alpha MED Scientific",
            "description": "MED64-style 8x8 grid, 450 um pitch, 50 x 50 um square electrodes",
            "pitch_um": 450.0,
            "label_convention": (
                "MED64: channels 1..64 row by row from the top left; channel = label - 1"
            ),
            "y_axis": "up; row 1 is the top row",
            "area_note": "square contacts; mea-control uses the equal-area disc diameter",
        },
    )


def main() -> int:
    for make in (make_grid8x8_200um, make_mcs60mea200, make_med64):
        print(f"wrote {make()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
