"""Shipped electrode layouts and the probeinterface JSON loader."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mea_control.layouts import DEFAULT_LAYOUT, LAYOUT_NAMES, LayoutError, load_layout

LAYOUT_DIR = Path(__file__).resolve().parents[1] / "mea_control" / "layouts"


def _pitch(positions: np.ndarray) -> float:
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return float(d[d > 0].min())


def test_names_and_default() -> None:
    assert DEFAULT_LAYOUT == "grid8x8_200um"
    assert set(LAYOUT_NAMES) == {"grid8x8_200um", "mcs60mea200", "med64"}
    assert load_layout().name == DEFAULT_LAYOUT
    for name in LAYOUT_NAMES:
        assert (LAYOUT_DIR / f"{name}.json").is_file()


def test_grid8x8_200um() -> None:
    layout = load_layout("grid8x8_200um")
    assert layout.n_electrodes == 64
    assert layout.labels[:3] == ("11", "12", "13") and layout.labels[-1] == "88"
    assert sorted(layout.labels) == [f"{c}{r}" for c in range(1, 9) for r in range(1, 9)]
    assert _pitch(layout.positions_um) == pytest.approx(200.0)
    np.testing.assert_allclose(layout.diameters_um, 30.0)
    assert layout.can_stimulate.all() and layout.ground == () and layout.reference == ()
    # column digit then row digit; row 1 on top (y up), column 1 on the left
    x11, y11 = layout.positions_um[layout.channel("11")]
    x21, _ = layout.positions_um[layout.channel("21")]
    _, y12 = layout.positions_um[layout.channel("12")]
    assert x21 - x11 == pytest.approx(200.0) and y11 - y12 == pytest.approx(200.0)


def test_mcs60mea200() -> None:
    layout = load_layout("mcs60mea200")
    assert layout.n_electrodes == 60
    expected = [
        f"{c}{r}"
        for c in range(1, 9)
        for r in range(1, 9)
        if (c, r) not in {(1, 1), (1, 8), (8, 1), (8, 8)}
    ]
    assert list(layout.labels) == expected
    assert layout.labels[0] == "12" and layout.labels[-1] == "87"
    assert _pitch(layout.positions_um) == pytest.approx(200.0)
    np.testing.assert_allclose(layout.diameters_um, 30.0)
    ref = layout.channel("15")
    assert layout.reference == (ref,) and layout.ground == ()
    assert not layout.can_stimulate[ref] and layout.can_stimulate.sum() == 59


def test_mcs60_positions_match_the_full_grid() -> None:
    grid, mcs = load_layout("grid8x8_200um"), load_layout("mcs60mea200")
    for ch, label in enumerate(mcs.labels):
        np.testing.assert_allclose(mcs.positions_um[ch], grid.positions_um[grid.channel(label)])


def test_med64() -> None:
    layout = load_layout("med64")
    assert layout.n_electrodes == 64
    assert list(layout.labels) == [str(i) for i in range(1, 65)]
    assert _pitch(layout.positions_um) == pytest.approx(450.0)
    # 50 x 50 um squares: the equal-area disc keeps the true area for charge density
    assert layout.area_cm2(0) == pytest.approx(50e-4 * 50e-4)
    np.testing.assert_allclose(layout.diameters_um, 2 * math.sqrt(2500 / math.pi))
    # row by row from the top left
    x1, y1 = layout.positions_um[0]
    x2, y2 = layout.positions_um[1]
    x9, y9 = layout.positions_um[8]
    assert (x2 - x1, y2 - y1) == pytest.approx((450.0, 0.0))
    assert (x9 - x1, y1 - y9) == pytest.approx((0.0, 450.0))


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_json_channel_order_is_label_order(name: str) -> None:
    doc = json.loads((LAYOUT_DIR / f"{name}.json").read_text())
    probe = doc["probes"][0]
    assert probe["device_channel_indices"] == list(range(len(probe["contact_ids"])))
    assert tuple(probe["contact_ids"]) == load_layout(name).labels


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_probeinterface_reads_the_same_layout(name: str) -> None:
    pi = pytest.importorskip("probeinterface")
    layout = load_layout(name)
    group = pi.read_probeinterface(LAYOUT_DIR / f"{name}.json")
    assert len(group.probes) == 1
    probe = group.probes[0]
    order = np.argsort(probe.device_channel_indices)
    assert tuple(probe.contact_ids[order]) == layout.labels
    np.testing.assert_allclose(probe.contact_positions[order], layout.positions_um)
    roles = probe.contact_annotations["role"][order]
    assert [i for i, r in enumerate(roles) if r == "reference"] == list(layout.reference)
    np.testing.assert_array_equal(
        probe.contact_annotations["can_stimulate"][order], layout.can_stimulate
    )


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_roles_round_trip_through_probeinterface(name: str, tmp_path: Path) -> None:
    pi = pytest.importorskip("probeinterface")
    group = pi.read_probeinterface(LAYOUT_DIR / f"{name}.json")
    out = tmp_path / f"{name}.json"
    pi.write_probeinterface(out, group)
    again, original = load_layout(str(out)), load_layout(name)
    assert again.labels == original.labels
    np.testing.assert_allclose(again.positions_um, original.positions_um)
    np.testing.assert_allclose(again.diameters_um, original.diameters_um)
    np.testing.assert_array_equal(again.can_stimulate, original.can_stimulate)
    assert again.reference == original.reference and again.ground == original.ground
    assert again.name == name and again.annotations["source"] == str(out)


def test_make_layouts_reproduces_the_shipped_files(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("probeinterface")
    from mea_control.layouts import make_layouts

    monkeypatch.setattr(make_layouts, "HERE", tmp_path)
    make_layouts.main()
    for name in LAYOUT_NAMES:
        fresh = json.loads((tmp_path / f"{name}.json").read_text())
        shipped = json.loads((LAYOUT_DIR / f"{name}.json").read_text())
        fresh.pop("version"), shipped.pop("version")  # the probeinterface version may differ
        assert fresh == shipped, (
            f"{name}.json is stale; run python -m mea_control.layouts.make_layouts"
        )


def test_loader_does_not_import_probeinterface() -> None:
    import subprocess

    code = (
        "import sys; from mea_control.layouts import load_layout; "
        "[load_layout(n) for n in ('grid8x8_200um', 'mcs60mea200', 'med64')]; "
        "print('probeinterface' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_channel_order_follows_device_channel_indices(tmp_path: Path) -> None:
    doc = {
        "specification": "probeinterface",
        "version": "0.4.2",
        "probes": [
            {
                "ndim": 2,
                "si_units": "um",
                "contact_positions": [[0, 0], [100, 0], [200, 0]],
                "contact_shapes": ["circle", "rect", "circle"],
                "contact_shape_params": [
                    {"radius": 10},
                    {"width": 20, "height": 10},
                    {"radius": 5},
                ],
                "contact_ids": ["a", "b", "c"],
                "device_channel_indices": [1, 0, -1],
                "contact_annotations": {"role": ["electrode", "ground", "electrode"]},
            }
        ],
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc))
    layout = load_layout(str(path))
    assert layout.name == "mine" and layout.labels == ("b", "a")
    np.testing.assert_allclose(layout.positions_um, [[100, 0], [0, 0]])
    assert layout.ground == (0,) and layout.can_stimulate.tolist() == [False, True]
    assert layout.area_cm2(0) == pytest.approx(200e-8)


def test_unknown_name_lists_the_accepted_names() -> None:
    with pytest.raises(
        ValueError, match="unknown layout 'grid8x8'.*grid8x8_200um.*mcs60mea200.*med64"
    ):
        load_layout("grid8x8")


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(LayoutError, match="no layout file at .*nope.json"):
        load_layout(str(missing))


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"electrodes": [1, 2]}), "specification"),
        (json.dumps([1, 2, 3]), "specification"),
        (json.dumps({"specification": "probeinterface", "probes": []}), "0 probes"),
        (
            json.dumps({"specification": "probeinterface", "probes": [{"ndim": 2}]}),
            "contact_positions",
        ),
        (
            json.dumps(
                {
                    "specification": "probeinterface",
                    "probes": [
                        {
                            "contact_positions": [[0, 0], [1, 1]],
                            "contact_shapes": "circle",
                            "contact_shape_params": {"radius": 5},
                            "device_channel_indices": [0, 0],
                        }
                    ],
                }
            ),
            "device_channel_indices",
        ),
    ],
)
def test_not_probeinterface_format(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(LayoutError, match=problem) as info:
        load_layout(str(path))
    assert "bad.json" in str(info.value) and "write_probeinterface" in str(info.value)


@pytest.mark.parametrize(
    "shape, params, problem",
    [
        ("circle", {"radius": 0}, "radius 0"),
        ("circle", {"radius": -5}, "radius -5"),
        ("circle", {"radius": float("nan")}, "radius nan"),
        ("square", {"width": 0}, "width 0"),
        ("square", {"width": -20}, "width -20"),
        ("rect", {"width": 20, "height": 0}, "height 0"),
        ("rect", {"width": -20, "height": -10}, "width -20"),
    ],
)
def test_electrode_size_must_be_positive(
    tmp_path: Path, shape: str, params: dict, problem: str
) -> None:
    doc = {
        "specification": "probeinterface",
        "probes": [
            {
                "ndim": 2,
                "si_units": "um",
                "contact_positions": [[0, 0], [100, 0]],
                "contact_shapes": ["circle", shape],
                "contact_shape_params": [{"radius": 15}, params],
                "contact_ids": ["a", "b"],
            }
        ],
    }
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LayoutError, match=f"contact 'b'.*{problem}") as info:
        load_layout(str(path))
    assert "sizes.json" in str(info.value) and "> 0" in str(info.value)
