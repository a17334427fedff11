"""The NWB file's fixed structure, written once by pynwb before the first sample.

Names used across the package (the file layout is documented in the README):

- ``acquisition/ElectricalSeries``: raw int16 samples (samples x electrodes),
  ``conversion`` = volts per bit, ``starting_time`` 0 = the run's first sample.
- ``general/extracellular_ephys/electrodes``: one row per electrode with
  ``channel_name`` (the layout's label), ``rel_x``/``rel_y`` in um,
  ``diameter_um``, ``can_stimulate``.
- ``scratch/mea_control_provenance``: JSON with the protocol's source and
  parameters, software version, driver URL, DeviceInfo, limits and seed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mea_control.types import DeviceInfo

SERIES = "ElectricalSeries"
SERIES_PATH = f"acquisition/{SERIES}"
PROVENANCE = "mea_control_provenance"
SUMMARY = "mea_control_summary"
#: Raw rows per HDF5 chunk and per flush, in seconds of data.
CHUNK_S = 0.1


#: Days in vitro written for a simulated culture.
SIMULATED_DIV = 28


@dataclass(frozen=True)
class RecordingMeta:
    """Who, what and which culture: NWBFile and Subject fields (rig file or CLI options)."""

    session_description: str = ""
    experimenter: tuple[str, ...] = ()
    lab: str | None = None
    institution: str | None = None
    culture_id: str | None = None
    species: str = "Rattus norvegicus"
    #: Days in vitro; stored as the Subject's age (ISO 8601, e.g. P28D).
    div: int | None = None
    culture_description: str = "dissociated cortical culture on a microelectrode array"
    notes: str | None = None
    keywords: tuple[str, ...] = field(default=("microelectrode array", "closed loop"))

    def for_simulator(self) -> RecordingMeta:
        """The simulated culture's age and description where the user gave no age (it models
        a mature culture, 3-5 weeks)."""
        if self.div is not None:
            return self
        return replace(self, div=SIMULATED_DIV, culture_id=self.culture_id or "simulated",
                       culture_description="simulated culture (mea-control hardware_sim)")


def chunk_rows(sample_rate: float) -> int:
    return max(1, int(round(sample_rate * CHUNK_S)))


def create(
    path: Path,
    info: DeviceInfo,
    meta: RecordingMeta,
    provenance: dict[str, Any],
    raw: bool,
    start_time: datetime,
) -> None:
    """Write the structure (no samples yet) to ``path`` with pynwb."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject

    layout = info.layout
    protocol = provenance.get("protocol", "")
    description = meta.session_description or (
        f"mea-control run of protocol {protocol} on {info.name}"
    )
    nwb = NWBFile(
        session_description=description,
        identifier=str(uuid.uuid4()),
        session_start_time=start_time,
        experimenter=list(meta.experimenter) or None,
        lab=meta.lab,
        institution=meta.institution,
        keywords=list(meta.keywords),
        notes=meta.notes,
        protocol=f"{protocol} {json.dumps(provenance.get('parameters', {}), default=str)}",
        source_script=provenance.get("protocol_source") or None,
        source_script_file_name=provenance.get("protocol_file") or None,
        was_generated_by=[("mea-control", str(provenance.get("software_version", "")))],
        subject=Subject(
            subject_id=meta.culture_id or f"culture-{start_time:%Y%m%d-%H%M%S}",
            species=meta.species,
            sex="U",  # cultures pool neurons of several animals
            age=f"P{meta.div}D" if meta.div is not None else None,
            description=meta.culture_description
            + (f"; {meta.div} days in vitro" if meta.div is not None else "; age unknown"),
        ),
    )
    device = nwb.create_device(
        name=info.name.replace("/", "_").replace(":", "_"),  # NWB names take neither
        description=json.dumps(info.describe(), default=str),
    )
    group = nwb.create_electrode_group(
        name="array",
        description=f"microelectrode array, layout {layout.name}",
        location="in vitro culture",
        device=device,
    )
    nwb.add_electrode_column("channel_name", "electrode label on the array")
    nwb.add_electrode_column("diameter_um", "electrode diameter in um")
    nwb.add_electrode_column("can_stimulate", "whether the electrode may stimulate")
    for i, label in enumerate(layout.labels):
        x, y = layout.positions_um[i]
        nwb.add_electrode(
            group=group,
            location="in vitro culture",
            rel_x=float(x),
            rel_y=float(y),
            channel_name=label,
            diameter_um=float(layout.diameters_um[i]),
            can_stimulate=bool(layout.can_stimulate[i]),
        )
    if raw:
        n = info.n_channels
        nwb.add_acquisition(ElectricalSeries(
            name=SERIES,
            description="raw voltage, as sampled by the device",
            data=H5DataIO(np.empty((0, n), np.int16), maxshape=(None, n),
                          chunks=(chunk_rows(info.sample_rate), n)),
            electrodes=nwb.create_electrode_table_region(list(range(n)), "all electrodes"),
            rate=float(info.sample_rate),
            starting_time=0.0,
            conversion=info.uV_per_bit * 1e-6,
        ))
    nwb.add_scratch(
        json.dumps(provenance, indent=1, default=str),
        name=PROVENANCE,
        description="mea-control provenance: protocol source and parameters, software "
        "version, driver URL and device info, safety limits in force, seed (JSON)",
    )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
