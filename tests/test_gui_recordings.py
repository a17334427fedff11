"""Recording file names as labs keep them: dated, numbered, never an existing file."""

from datetime import date

from mea_control.gui.recordings import dated_name, next_free, taken

DAY = date(2026, 12, 7)


def test_dated_names_number_on_from_the_highest_taken(tmp_path):
    assert dated_name(tmp_path, "MEA-17", DAY) == tmp_path / "2026-12-07_MEA-17_001.nwb"
    (tmp_path / "2026-12-07_MEA-17_001.nwb").touch()
    (tmp_path / "2026-12-07_MEA-17_004.nwb.journal").touch()  # a crashed run's journal
    (tmp_path / "2026-12-07_MEA-18_009.nwb").touch()  # another culture
    assert dated_name(tmp_path, "MEA-17", DAY).name == "2026-12-07_MEA-17_005.nwb"
    assert dated_name(tmp_path, "MEA-18", DAY).name == "2026-12-07_MEA-18_010.nwb"
    assert dated_name(tmp_path, "", DAY).name == "2026-12-07_001.nwb"
    assert dated_name(tmp_path, " dish 3/a ", DAY).name == "2026-12-07_dish-3-a_001.nwb"


def test_a_taken_name_has_a_free_one_beside_it(tmp_path):
    pilot = tmp_path / "pilot.nwb"
    assert not taken(pilot)
    pilot.touch()
    assert taken(pilot) and next_free(pilot) == tmp_path / "pilot_001.nwb"
    (tmp_path / "pilot_001.nwb.journal").touch()
    assert taken(tmp_path / "pilot_001.nwb")
    assert next_free(tmp_path / "pilot_001.nwb").name == "pilot_002.nwb"
