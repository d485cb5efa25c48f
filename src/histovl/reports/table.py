"""A small column table that writes ``predictions.csv`` and report tables without pandas.

Importing pandas costs ~0.8 s of CPU, more than the rest of a fully cached zero-shot run
(docs/performance.md, "What a fully cached zero-shot run costs"). `Table` holds columns of
strings, integers, floats and booleans, and writes them exactly as pandas does: `write_csv` is
byte for byte ``DataFrame.to_csv(index=False)``, `to_html` is ``DataFrame.to_html`` with the
report's options (tests/unit/reports/test_table.py compares both with pandas). A column of any
other kind falls back to pandas (`to_frame`), so the output never depends on which path ran.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: how `Report` tables show a missing value and a float (pandas' ``na_rep`` and ``float_format``)
NA_REP = "–"
HTML_INDENT = "  "


def _is_na(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _kind(values: Sequence[Any] | np.ndarray) -> str | None:
    """The dtype pandas gives a column of these values: ``str``, ``int``, ``float`` or ``bool``;
    None for anything else (mixed strings and numbers, objects), which `Table` leaves to pandas."""
    if isinstance(values, np.ndarray):
        return {"f": "float", "i": "int", "u": "int", "b": "bool", "U": "str"}.get(values.dtype.kind)
    seen = {"str" if isinstance(v, str) else "none" if v is None else _number_kind(v) for v in values}
    if seen == {"none"}:
        return None  # an object column of None: pandas shows "None"
    seen = {"na" if k == "none" else k for k in seen}
    if seen <= {"str", "na"} and seen != {"na"}:
        return "str"
    if seen in ({"int"}, {"bool"}):
        return seen.pop()
    if seen <= {"int", "float", "na"}:
        return "float"
    return None


def _number_kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "na" if math.isnan(value) else "float"
    return "other"


class Table:
    """Named columns of equal length, in order; each a list or a 1-D NumPy array.

    Example:
        >>> t = Table({"path": ["a.png", "b.png"], "score:x": np.array([0.25, 0.5])})
        >>> len(t), t.columns
        (2, ['path', 'score:x'])
    """

    def __init__(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        self._columns = {str(k): v for k, v in columns.items()}
        lengths = {len(v) for v in self._columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in self._columns.items()} }")
        self._len = lengths.pop() if lengths else 0

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Table:
        """Rows as dicts; the columns are every key in the order first seen, a missing one None
        (as ``pd.DataFrame(rows)``)."""
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(row))
        return cls({n: [row.get(n) for row in rows] for n in names})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Table:
        """A pandas DataFrame's columns (numeric ones as arrays, the others as lists)."""
        return cls({str(c): (s.to_numpy() if s.dtype.kind in "fiub" else s.tolist()) for c, s in frame.items()})

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return self._len

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __getitem__(self, name: str) -> Sequence[Any] | np.ndarray:
        return self._columns[name]

    def to_frame(self) -> pd.DataFrame:
        """The same table as a pandas DataFrame (imports pandas)."""
        import pandas as pd

        return pd.DataFrame({k: (v if isinstance(v, np.ndarray) else list(v)) for k, v in self._columns.items()})

    def _kinds(self) -> list[str | None]:
        return [_kind(v) for v in self._columns.values()]

    def write_csv(self, fh: IO[str]) -> None:
        """``to_frame().to_csv(fh, index=False)``, byte for byte, without pandas where the column
        kinds allow."""
        kinds = self._kinds()
        if None in kinds:
            self.to_frame().to_csv(fh, index=False)
            return
        writer = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(self.columns)
        cells = [_csv_cells(v, str(k)) for v, k in zip(self._columns.values(), kinds, strict=True)]
        writer.writerows(zip(*cells, strict=True) if cells else [])

    def to_html(self) -> str | None:
        """``to_frame().to_html(index=False, escape=True, border=0, classes="data",
        na_rep="–", float_format="{:.4f}")``, or None when a column's kind needs pandas."""
        kinds = self._kinds()
        if None in kinds:
            return None
        head = "".join(f"{HTML_INDENT * 3}<th>{_escape(c)}</th>\n" for c in self.columns)
        cells = [_html_cells(v, str(k)) for v, k in zip(self._columns.values(), kinds, strict=True)]
        body = "".join(
            f"{HTML_INDENT * 2}<tr>\n" + "".join(f"{HTML_INDENT * 3}<td>{c}</td>\n" for c in row) + f"{HTML_INDENT * 2}</tr>\n"
            for row in _rows(cells, self._len)
        )
        return (
            f'<table class="dataframe data">\n{HTML_INDENT}<thead>\n{HTML_INDENT * 2}<tr style="text-align: right;">\n'
            f"{head}{HTML_INDENT * 2}</tr>\n{HTML_INDENT}</thead>\n{HTML_INDENT}<tbody>\n{body}{HTML_INDENT}</tbody>\n</table>"
        )


def _rows(cells: list[list[str]], n: int) -> Iterator[tuple[str, ...]]:
    return zip(*cells, strict=True) if cells else iter([()] * n)


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _csv_cells(values: Sequence[Any] | np.ndarray, kind: str) -> list[str]:
    """A column as pandas writes it to CSV: floats as NumPy's ``astype(str)``, missing as ''."""
    if kind == "float":
        arr = np.asarray([np.nan if v is None else v for v in values] if not isinstance(values, np.ndarray) else values,
                         dtype=np.float64)
        text = arr.astype(str).tolist()
        return ["" if math.isnan(v) else t for v, t in zip(arr.tolist(), text, strict=True)]
    if isinstance(values, np.ndarray):
        return [str(v) for v in values.tolist()]
    return ["" if _is_na(v) else str(v) for v in values]


def _html_cells(values: Sequence[Any] | np.ndarray, kind: str) -> list[str]:
    """A column as the report's pandas tables show it: floats with 4 decimals, missing as '–'."""
    if kind == "float":
        seq = values.tolist() if isinstance(values, np.ndarray) else values
        return [NA_REP if _is_na(v) else f"{float(v):.4f}" for v in seq]
    seq = values.tolist() if isinstance(values, np.ndarray) else values
    return [NA_REP if _is_na(v) else _escape(str(v).strip()) for v in seq]
