"""A status line that never changes its size: one line, long text elided, the whole
text its tooltip, so the controls around it keep their places."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QLabel, QSizePolicy


class StatusLine(QLabel):
    """One line of status that never changes its size (the details are in the log)."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(self.fontMetrics().lineSpacing() + 4)
        self.setAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        self._full = ""
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        if text == self._full and self.toolTip() == text:
            return  # every frame sets it: a label re-laid out for nothing costs
        self._full = text
        self.setToolTip(text)
        self._elide()

    def text(self) -> str:
        """The whole text (what is shown may be elided)."""
        return self._full

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = QFontMetrics(self.font()).elidedText(self._full, Qt.ElideRight,
                                                     max(self.width(), 1))
        super().setText(shown)
