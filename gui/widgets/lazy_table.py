"""A table model that shows rows on demand: a 1 GB JSONL never becomes a million widget rows."""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt

from gui.plain import plain_tooltip

CHUNK = 200          # rows added per fetchMore
MAX_CELL_CHARS = 300  # long cells are cut for display; the tooltip shows more


class RowSource:
    """Uniform access to rows: a list of dicts, or a core.data.LazyJsonlTable (offset index)."""

    def __init__(self, rows_or_table: Any, columns: list[str] | None = None, line_numbers: list[int] | None = None):
        self._target = rows_or_table
        self._line_numbers = line_numbers  # the file's line/row number of each row (lists of rows)
        self.columns = list(columns if columns is not None else getattr(rows_or_table, "columns", []) or [])
        if not self.columns and isinstance(rows_or_table, list):
            seen: dict[str, None] = {}
            for row in rows_or_table[:200]:
                if isinstance(row, dict):
                    seen.update(dict.fromkeys(row))
            self.columns = list(seen)

    def __len__(self) -> int:
        return len(self._target)

    def row(self, index: int) -> Any:
        getter = getattr(self._target, "row", None)
        return getter(index) if callable(getter) else self._target[index]

    def line_number(self, index: int) -> int | None:
        if self._line_numbers is not None and index < len(self._line_numbers):
            return self._line_numbers[index]
        getter = getattr(self._target, "line_number", None)
        return getter(index) if callable(getter) else None

    def index_of_line(self, line: int) -> int | None:
        """The row index showing the file's ``line`` (line numbers grow with the index: binary search)."""
        low, high = 0, len(self) - 1
        while low <= high:
            middle = (low + high) // 2
            number = self.line_number(middle)
            number = middle + 1 if number is None else number
            if number == line:
                return middle
            if number < line:
                low = middle + 1
            else:
                high = middle - 1
        return None


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


class LazyTableModel(QAbstractTableModel):
    """Rows appear CHUNK at a time as the view scrolls (canFetchMore / fetchMore)."""

    def __init__(self, source: RowSource | None = None, parent=None):
        super().__init__(parent)
        self._source = source or RowSource([], [])
        self._loaded = 0
        self._cache: dict[int, Any] = {}

    def set_source(self, source: RowSource) -> None:
        self.beginResetModel()
        self._source = source
        self._loaded = min(CHUNK, len(source))
        self._cache.clear()
        self.endResetModel()

    @property
    def total_rows(self) -> int:
        return len(self._source)

    def row_for_line(self, line: int) -> int | None:
        """The table row of the file's ``line``, fetching rows up to it; None when it is not shown."""
        index = self._source.index_of_line(line)
        if index is None:
            return None
        if index >= self._loaded:
            self.beginInsertRows(QModelIndex(), self._loaded, index)
            self._loaded = index + 1
            self.endInsertRows()
        return index

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else self._loaded

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._source.columns)

    def canFetchMore(self, parent: QModelIndex = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self._loaded < len(self._source)

    def fetchMore(self, parent: QModelIndex = QModelIndex()) -> None:  # noqa: B008
        if parent.isValid():
            return
        extra = min(CHUNK, len(self._source) - self._loaded)
        if extra <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._loaded, self._loaded + extra - 1)
        self._loaded += extra
        self.endInsertRows()

    def _row(self, index: int) -> Any:
        if index not in self._cache:
            if len(self._cache) > 2000:  # keep memory flat while scrolling a huge file
                self._cache.clear()
            try:
                self._cache[index] = self._source.row(index)
            except Exception as exc:  # noqa: BLE001 - a bad line shows as such instead of breaking the view
                self._cache[index] = exc
        return self._cache[index]

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self._row(index.row())
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            if isinstance(row, Exception):
                text = f"(unreadable: {row})" if index.column() == 0 else ""
                return text if role == Qt.ItemDataRole.DisplayRole else (plain_tooltip(text) if text else None)
            value = row.get(self._source.columns[index.column()]) if isinstance(row, dict) else None
            text = _cell_text(value)
            if role == Qt.ItemDataRole.DisplayRole:
                text = text.replace("\n", " ⏎ ")
                return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS] + "…"
            return plain_tooltip(text) if len(text) > 80 else None  # dataset text: never rich text
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self._source.columns[section] if section < len(self._source.columns) else None
        line = self._source.line_number(section)
        return str(line if line is not None else section + 1)
