"""Rig files: one parse into typed sections, the same one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mea_control.limits import SafetyLimits, effective_limits
from mea_control.rig import RecordingDefaults, RigFileError, load_rig, rig_option


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rig2.toml"
    path.write_text(text)
    return path


def test_load_rig(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[rig]
name = "rig 2"
room = "B.214"

[limits]
max_current_uA = 5
max_voltage_mV = 1200.0
forbidden = ["15", "27"]

[stimulator]
settle_ms = 2
""",
    )
    rig = load_rig(path)
    assert rig.name == "rig 2" and rig.path == path
    assert rig.limits.max_current_uA == 5.0 and rig.limits.max_voltage_mV == 1200.0
    assert rig.limits.forbidden == ("15", "27") and rig.limits.max_charge_nC == 4.0
    assert rig.stimulator == {"settle_ms": 2} and rig.channels is None and rig.recording == {}
    assert len(rig.notes) == 1 and "max_voltage_mV" in rig.notes[0]
    limits, notes = effective_limits(rig.limits, {"max_voltage_mV": 1000.0})
    assert limits.max_voltage_mV == 1000.0 and "max_voltage_mV" in notes[0]


def test_rig_without_tables_uses_defaults(tmp_path: Path) -> None:
    rig = load_rig(write(tmp_path, ""))
    assert rig.name == "rig2" and rig.limits == SafetyLimits()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[limits\nmax_current_uA = 5", "not valid TOML"),
        ("[limits]\nmax_curent_uA = 5", "max_curent_uA; did you mean max_current_uA"),
        ("[limits]\nmax_current_uA = '5'", r"max_current_uA must be a number in uA"),
        ("[limits]\nmax_current_uA = true", "max_current_uA must be a number"),
        ("[limits]\nmax_current_uA = -5", r"max_current_uA = -5 is not allowed; give a value >= 0"),
        ("[limits]\nmean_window_s = 0", r"mean_window_s = 0 is not allowed; give a value > 0"),
        ("[limits]\nforbidden = [15, 27]", r'forbidden = \["15", "27"\]'),
        ("[limits]\nforbidden = '15'", "forbidden must be a list"),
        ("max_current_uA = 5", "outside any table; put it under \\[limits\\]"),
        ("[limit]\nmax_current_uA = 5", r"unknown table \[limit\]; did you mean \[limits\]"),
        ("[rig]\nname = 2", "name must be a string"),
        ("[limits]\nmin_phase_us = 600", "min_phase_us"),
        ("limits = 3", r"'limits' must be a table: write \[limits\] on its own line"),
        ("rig = 'rig 2'", r"'rig' must be a table: write \[rig\] on its own line"),
        ("[[limits]]\nmax_current_uA = 5", r"'limits' must be a table: write \[limits\]"),
        ("name = 'rig 2'", r"outside any table; put it under \[rig\]"),
        (
            "[limits]\nmax_current_uA = nan",
            "max_current_uA = nan is not allowed; give a value >= 0, a finite number",
        ),
        (
            "[limits]\nmax_charge_nC = inf",
            "max_charge_nC = inf is not allowed; give a value >= 0, a finite number",
        ),
        ("[limits]\nmean_window_s = -inf", "mean_window_s = -inf is not allowed"),
        ("[limits]\nmean_window_s = 1e308", r"mean_window_s = 1e\+308 is not allowed.*<= 3600"),
        ("[limits]\nburst_window_ms = 60000", r"burst_window_ms = 60000 .*<= 10000"),
        ("[limits]\nburst_window_ms = 1", r"burst_rate_hz x burst_window_ms allows 0.2 pulses"),
        ("[limits]\nmean_rate_hz = 0", r"mean_rate_hz x mean_window_s allows 0 pulses"),
    ],
)
def test_bad_rig_files(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RigFileError, match=match) as info:
        load_rig(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value).strip() or "TOML" in str(info.value)


def test_missing_rig_file(tmp_path: Path) -> None:
    with pytest.raises(RigFileError, match="no such file"):
        load_rig(tmp_path / "absent.toml")
    assert issubclass(RigFileError, ValueError)


def test_unreadable_rig_files(tmp_path: Path) -> None:
    path = tmp_path / "rig2.toml"
    path.write_bytes(b"\xff\xfe[limits]")
    with pytest.raises(RigFileError, match="not UTF-8 text") as info:
        load_rig(path)
    assert str(path) in str(info.value)
    folder = tmp_path / "rigs.toml"
    folder.mkdir()
    with pytest.raises(RigFileError, match="is a directory, not a rig file") as info:
        load_rig(folder)
    assert str(folder) in str(info.value)


def test_a_note_names_each_limit_the_rig_loosens(tmp_path: Path) -> None:
    rig = load_rig(write(tmp_path, '[rig]\nname = "rig 2"\n[limits]\nmax_current_uA = 20\n'
                                   "max_phase_us = 100\n"))
    assert rig.notes == ("rig 'rig 2' loosens max_current_uA to 20 uA (default 10 uA)",)


def test_the_recording_table_gives_typed_defaults(tmp_path: Path) -> None:
    rig = load_rig(write(tmp_path, '[recording]\nexperimenter = "Doe, J"\nlab = "Culture Lab"\n'))
    assert rig.recording_defaults() == RecordingDefaults(("Doe, J",), "Culture Lab", None, None)
    assert load_rig(write(tmp_path, "")).recording_defaults() == RecordingDefaults()


@pytest.mark.parametrize("text, message", [
    ('[recording]\nroom = "B"', "unknown key [recording] room; accepted: experimenter, lab, "
                                "institution, species"),
    ("[recording]\nlab = 3", "[recording] lab must be text"),
    ("[recording]\nexperimenter = [1]", "[recording] experimenter must be text"),
])
def test_a_bad_recording_table_is_named_when_a_run_records(tmp_path: Path, text: str,
                                                           message: str) -> None:
    rig = load_rig(write(tmp_path, text))  # a run that does not record does not read it
    with pytest.raises(RigFileError) as info:
        rig.recording_defaults()
    assert str(info.value) == f"rig file {tmp_path / 'rig2.toml'}: {message}"


def test_a_driver_s_rig_option_is_the_parsed_rig_or_a_path_to_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[rig]\nname = "rig 2"\n[channels]\n"A-000" = "12"\n')
    rig = load_rig(path)
    path.unlink()
    assert rig_option(rig) is rig  # the CLI's rig, not read again
    assert rig_option("") is None
    with pytest.raises(RigFileError, match="no such file"):
        rig_option(str(path))
    path.write_text('[channels]\n"A-000" = "12"\n')
    assert rig_option(str(path)).channels == {"A-000": "12"}
