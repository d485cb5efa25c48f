"""Leaderboards: every ``leaderboard.csv`` under the roots (a `histovl bench` folder), shown as a
table sortable by any column. Only the file itself is read; its columns are shown as they are."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from histovl.serve.files import FileRegistry, path_id

BOARD_FILE = "leaderboard.csv"
MAX_ROWS = 5000


@dataclass
class BoardEntry:
    """One leaderboard."""

    id: str
    folder: Path
    name: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    file_id: str | None = None
    error: str | None = None


def load_board(folder: Path, name: str, registry: FileRegistry) -> BoardEntry:
    """Read one leaderboard; a file that does not parse becomes the entry's error."""
    entry = BoardEntry(id=path_id(folder, "board"), folder=folder, name=name)
    try:
        table = pd.read_csv(folder / BOARD_FILE, nrows=MAX_ROWS, keep_default_na=False, na_values=[""])
        entry.columns = [str(c) for c in table.columns]
        entry.numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
        entry.rows = [[_cell(v) for v in row] for row in table.itertuples(index=False)]
        entry.file_id = registry.add(folder / BOARD_FILE)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        entry.error = f"{type(err).__name__}: {err}"
    return entry


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value
