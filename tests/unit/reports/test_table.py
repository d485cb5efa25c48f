"""`Table` writes what pandas writes (CSV bytes, report HTML), and the pandas-free report helpers
give what their pandas versions gave (docs/performance.md, "What a fully cached zero-shot run
costs")."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from histovl.reports import (
    Table,
    multilabel_predictions_frame,
    multilabel_predictions_table,
    predictions_table,
)
from histovl.reports.figures import confident_example_rows, select_confident_examples
from histovl.reports.html import _table_html

HTML_OPTIONS = {"escape": True, "border": 0, "classes": "data", "na_rep": "–", "float_format": lambda v: f"{v:.4f}"}


def _csv(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def _tables() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    floats = np.concatenate([rng.random(6), [1e-20, 3.5e-7, 1.0, 0.0, 1e20, 123456.789]])
    n = len(floats)
    return [
        {"path": [f"d/x,{i}.png" if i % 3 == 0 else f'q"{i}.png' if i % 3 == 1 else f" s{i} " for i in range(n)],
         "label": ["a<b" if i % 2 else "c&d" for i in range(n)],
         "group": [None if i % 4 == 0 else f"g{i % 3}" for i in range(n)],
         "score:a": floats, "score:b": (1 - floats).astype(np.float64)},
        {"class": ["x", "y", "z"], "support": [3, 4, 5], "precision": [0.5, None, 1 / 3],
         "recall": [1, None, 2], "f1": [float("nan"), 0.25, 0.125], "ci": ["[0.1, 0.2]", "–", ""],
         "ok": [True, False, True], "n": np.array([1, 2, 3])},
        {"metric": ["accuracy", "n"], "value": ["0.5000", "12"], "95% CI": ["[0.4, 0.6]", "–"]},
        {"empty": [], "scores": np.empty(0)},
        {"only_none": [None, None], "inf": [float("inf"), -float("inf")]},
    ]


@pytest.mark.parametrize("case", range(len(_tables())))
def test_csv_and_html_equal_pandas(case: int) -> None:
    columns = _tables()[case]
    table = Table(columns)
    frame = pd.DataFrame(columns)
    buf = io.StringIO()
    table.write_csv(buf)
    assert buf.getvalue() == _csv(frame)
    assert _table_html(table, index=False) == frame.to_html(index=False, **HTML_OPTIONS)
    assert _table_html(table, index=True) == frame.to_html(index=True, **HTML_OPTIONS)


def test_rows_and_unusual_columns_fall_back_to_pandas() -> None:
    rows = [{"a": 1, "b": "x"}, {"b": "y", "c": 0.5}]
    assert Table.from_rows(rows).to_frame().equals(pd.DataFrame(rows))
    mixed = Table({"m": ["text", 1.5, None]})  # strings and numbers: pandas decides
    assert mixed.to_html() is None
    buf = io.StringIO()
    mixed.write_csv(buf)
    assert buf.getvalue() == _csv(pd.DataFrame({"m": ["text", 1.5, None]}))
    assert _table_html(mixed, index=False) == pd.DataFrame({"m": ["text", 1.5, None]}).to_html(index=False, **HTML_OPTIONS)


def _old_predictions_frame(paths, labels, scores, names, groups=None):  # the pandas code it replaced
    s = np.asarray(scores, dtype=np.float64)
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    if labels is not None:
        frame["label"] = [str(x) for x in labels]
    if groups is not None:
        frame["group"] = list(groups)
    frame["prediction"] = [names[i] for i in s.argmax(axis=1)] if len(s) else []
    for c, name in enumerate(names):
        frame[f"score:{name}"] = s[:, c]
    return frame


@pytest.mark.parametrize("n", [0, 7])
def test_predictions_table_equals_the_pandas_frame(n: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.dirichlet(np.ones(3), size=n)
    paths, labels, groups = [f"t/{i}.png" for i in range(n)], [f"c{i % 3}" for i in range(n)], [None] * n
    for kw in ({}, {"groups": groups}):
        table = predictions_table(paths, labels, scores, ["c0", "c1", "c2"], **kw)
        old = _old_predictions_frame(paths, labels, scores, ["c0", "c1", "c2"], **kw)
        pd.testing.assert_frame_equal(table.to_frame(), old)
        buf = io.StringIO()
        table.write_csv(buf)
        assert buf.getvalue() == _csv(old)
    decisions = scores > 0.3
    ml = multilabel_predictions_table(paths, [["c0"]] * n, decisions, scores, ["c0", "c1", "c2"])
    buf = io.StringIO()
    ml.write_csv(buf)
    assert buf.getvalue() == _csv(multilabel_predictions_frame(paths, [["c0"]] * n, decisions, scores, ["c0", "c1", "c2"]))


def _old_select(frame: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:  # the pandas code it replaced
    frame = frame.copy()
    score_columns = [c for c in frame.columns if str(c).startswith("score:")]
    column_of = {str(c)[len("score:"):]: i for i, c in enumerate(score_columns)}
    scores = frame[score_columns].to_numpy(dtype=np.float64)
    col = np.array([column_of.get(str(p), -1) for p in frame["prediction"]], dtype=np.int64)
    confidence = np.full(len(frame), np.nan)
    known = col >= 0
    confidence[known] = scores[np.flatnonzero(known), col[known]]
    frame["confidence"] = confidence
    correct = frame["label"].astype(str) == frame["prediction"].astype(str)
    right = frame[correct].sort_values("confidence", ascending=False, kind="mergesort").head(k)
    wrong = frame[~correct].sort_values("confidence", ascending=False, kind="mergesort").head(k)
    return right, wrong


def test_confident_examples_equal_the_pandas_selection() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.dirichlet(np.ones(3), size=40), 1)  # many ties
    table = predictions_table([f"{i}.png" for i in range(40)], [f"c{i % 3}" for i in range(40)], scores, ["c0", "c1", "c2"])
    columns = {c: table[c] for c in table.columns}
    columns["prediction"] = [p if i % 9 else "unknown" for i, p in enumerate(table["prediction"])]  # no score column
    frame = pd.DataFrame(columns)
    for k in (0, 3, 8, 40):
        old_right, old_wrong = _old_select(frame, k)
        right, wrong = select_confident_examples(frame, k=k)
        pd.testing.assert_frame_equal(right, old_right)
        pd.testing.assert_frame_equal(wrong, old_wrong)
        rows_right, rows_wrong = confident_example_rows(Table(columns), k=k)
        assert [r["path"] for r in rows_right] == list(old_right["path"])
        assert [r["path"] for r in rows_wrong] == list(old_wrong["path"])
        np.testing.assert_array_equal([r["confidence"] for r in rows_wrong], old_wrong["confidence"].to_numpy())
