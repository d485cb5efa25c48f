"""Report figures memoised in the cache folder: drawn once per exact input, copied after."""

from __future__ import annotations

from pathlib import Path

from histovl.reports import Report, confusion_matrix_figure


def _write(out: Path, cache: Path | None, matrix: list[list[int]], calls: list[int]) -> bytes:
    def draw():  # type: ignore[no-untyped-def]
        calls.append(1)
        return confusion_matrix_figure(matrix, ["a", "b"])

    report = Report("memo", figure_cache=cache)
    report.add_figure("cm", draw, key=f"cm|{matrix}")
    report.write(out)
    return (out / "figures" / "cm.png").read_bytes()


def test_a_figure_is_drawn_once_per_key_and_copied_after(tmp_path: Path) -> None:
    calls: list[int] = []
    first = _write(tmp_path / "one", tmp_path / "cache", [[3, 1], [0, 4]], calls)
    again = _write(tmp_path / "two", tmp_path / "cache", [[3, 1], [0, 4]], calls)
    assert calls == [1] and again == first
    changed = _write(tmp_path / "three", tmp_path / "cache", [[2, 2], [0, 4]], calls)
    assert calls == [1, 1] and changed != first  # other numbers: drawn again
    assert len(list((tmp_path / "cache" / "figures").glob("*.png"))) == 2


def test_without_a_cache_folder_every_write_draws(tmp_path: Path) -> None:
    calls: list[int] = []
    _write(tmp_path / "one", None, [[3, 1], [0, 4]], calls)
    _write(tmp_path / "two", None, [[3, 1], [0, 4]], calls)
    assert calls == [1, 1] and not (tmp_path / "cache").exists()
