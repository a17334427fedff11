"""Where recordings go and what they say of the culture: the recording panel's fields.

Each recording gets a name of its own, as Open Ephys and Multi Channel Experimenter give
one: the day, the culture and a number, ``2026-12-07_MEA-17_001.nwb``, in a chosen
folder; the number follows the highest one that day's files of that culture took, so no
file is ever overwritten. A name the operator types is used as it is (the window asks
what to do if it exists). The folder, culture, DIV, experimenter and description are kept
in the window's settings, so the next run and the next session start from them; the DIV
counts up by itself from one day to the next.
"""

from __future__ import annotations

import glob
import re
from datetime import date
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from mea_control.recording.journal import SUFFIX, journal_path
from mea_control.recording.nwbfile import RecordingMeta

#: Digits of a recording's number (001, 002, ...).
DIGITS = 3
#: The DIV spin box's value for "not given".
NO_DIV = -1


def taken(path: Path) -> bool:
    """Whether recording to ``path`` would replace something: the file or its side journal."""
    return path.exists() or journal_path(path).exists()


def _safe(text: str) -> str:
    """``text`` as part of a file name on any system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")


def numbered(folder: Path, stem: str) -> Path:
    """``folder/stem_NNN.nwb``, NNN one above the highest number taken (001 if none)."""
    pattern = re.compile(rf"{re.escape(stem)}_(\d{{{DIGITS},}})\.nwb")
    used = [int(m.group(1)) for p in folder.glob(f"{glob.escape(stem)}_*")
            if (m := pattern.fullmatch(p.name.removesuffix(SUFFIX)))]
    return folder / f"{stem}_{max(used, default=0) + 1:0{DIGITS}d}.nwb"


def dated_name(folder: Path, culture: str, day: date) -> Path:
    """The next recording of ``culture`` on ``day`` in ``folder``:
    ``2026-12-07_MEA-17_001.nwb`` (``2026-12-07_001.nwb`` without a culture)."""
    stem = "_".join(filter(None, (day.isoformat(), _safe(culture))))
    return numbered(folder, stem)


def next_free(path: Path) -> Path:
    """A name beside ``path`` that is free: ``pilot.nwb`` -> ``pilot_001.nwb``, ...; a
    numbered name (``..._003.nwb``) goes on from its number."""
    stem = re.sub(rf"_\d{{{DIGITS},}}$", "", path.stem)
    return numbered(path.parent, stem)


class RecordingFields(QWidget):
    """Folder and file name of the next recording, and the culture's fields for its file;
    ``file_label`` heads the file name's row (the window's "Record protocol runs to")."""

    def __init__(self, file_label: QWidget | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder = QLineEdit(str(Path.cwd()))
        self.folder.setToolTip("the folder recordings go to")
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.setToolTip("choose the folder")
        browse.clicked.connect(self._browse)
        self.name = QLineEdit()
        self.name.setToolTip("leave empty for a new dated, numbered name for each recording; "
                             "a name typed here is used as it is")
        self.culture = QLineEdit()
        self.culture.setPlaceholderText("e.g. MEA-17")
        self.culture.setToolTip("the culture (the file's subject id); part of the file name")
        self.div = QSpinBox(minimum=NO_DIV, maximum=999, specialValueText="unknown")
        self.div.setValue(NO_DIV)
        self.div.setToolTip("days in vitro; counts up by itself from one day to the next")
        self.experimenter = QLineEdit()
        self.experimenter.setPlaceholderText("experimenter")
        self.experimenter.setToolTip("experimenter(s): Last, First; several separated by ;")
        self.description = QLineEdit()
        self.description.setPlaceholderText("the session's description")
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder)
        folder_row.addWidget(browse)
        culture_row = QHBoxLayout()
        culture_row.addWidget(self.culture, 1)
        culture_row.addWidget(QLabel("DIV"))
        culture_row.addWidget(self.div)
        culture_row.addWidget(QLabel("by"))
        culture_row.addWidget(self.experimenter, 1)
        form = QFormLayout(self)  # compact: the side panel's height is for the protocol
        form.setContentsMargins(0, 0, 0, 0)
        form.setVerticalSpacing(2)
        if file_label is None:
            form.addRow("File", self.name)
        else:  # the label's own row: the other labels stay narrow
            file_row = QHBoxLayout()
            file_row.addWidget(file_label)
            file_row.addWidget(self.name, 1)
            form.addRow(file_row)
        form.addRow("Folder", folder_row)
        form.addRow("Culture", culture_row)
        form.addRow("Notes", self.description)
        for field in (self.folder, self.culture):
            field.textChanged.connect(self.show_next_name)
        self._timer = QTimer(self, interval=1000)  # files appear as recordings start
        self._timer.timeout.connect(self.show_next_name)
        self._timer.start()
        self.show_next_name()

    def target(self, day: date | None = None) -> tuple[Path, bool]:
        """The next recording's file, and whether the operator typed its name (else it is
        a new dated, numbered one, free by construction)."""
        folder = Path(self.folder.text().strip() or ".").expanduser()
        typed = self.name.text().strip()
        if typed:
            path = folder / typed
            return (path if path.suffix.lower() == ".nwb" else Path(f"{path}.nwb")), True
        return dated_name(folder, self.culture.text(), day or date.today()), False

    def show_next_name(self) -> None:
        """The name an empty File field stands for, in its placeholder."""
        folder = Path(self.folder.text().strip() or ".").expanduser()
        if folder.is_dir():
            name = dated_name(folder, self.culture.text(), date.today()).name
            self.name.setPlaceholderText(f"new: {name}")
        else:
            self.name.setPlaceholderText("the folder does not exist")

    def meta(self) -> RecordingMeta:
        """The NWB session and culture fields, as `mea-control run` takes them from its
        options."""
        people = tuple(p.strip() for p in self.experimenter.text().split(";") if p.strip())
        return RecordingMeta(session_description=self.description.text().strip(),
                             experimenter=people, culture_id=self.culture.text().strip() or None,
                             div=None if self.div.value() == NO_DIV else self.div.value())

    # -- settings ------------------------------------------------------------------------------
    def restore(self, settings: QSettings, today: date | None = None) -> None:
        """The fields as saved last (a DIV saved days ago has grown by those days)."""
        old = settings.value("record_path")  # before folders: its folder
        folder = settings.value("recording/folder") or (str(Path(old).parent) if old else "")
        if folder:
            self.folder.setText(folder)
        self.name.setText(settings.value("recording/name", ""))
        self.culture.setText(settings.value("recording/culture", ""))
        self.experimenter.setText(settings.value("recording/experimenter", ""))
        self.description.setText(settings.value("recording/description", ""))
        div, since = settings.value("recording/div"), settings.value("recording/div_on")
        if div is not None and int(div) != NO_DIV and since:
            days = ((today or date.today()) - date.fromisoformat(since)).days
            self.div.setValue(int(div) + max(days, 0))

    def save(self, settings: QSettings, today: date | None = None) -> None:
        settings.setValue("recording/folder", self.folder.text())
        settings.setValue("recording/name", self.name.text())
        settings.setValue("recording/culture", self.culture.text())
        settings.setValue("recording/experimenter", self.experimenter.text())
        settings.setValue("recording/description", self.description.text())
        settings.setValue("recording/div", self.div.value())
        settings.setValue("recording/div_on", (today or date.today()).isoformat())

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Record to the folder",
                                                  self.folder.text())
        if folder:
            self.folder.setText(folder)
