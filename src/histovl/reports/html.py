"""A small, generic, self-contained HTML report builder.

A `Report` is an ordered list of sections: metric summaries with CIs, matplotlib figures,
pandas tables, image grids with right/wrong marks, free text and a provenance block. ``write``
renders figures to PNG and images to small JPEG thumbnails next to ``report.html`` (relative
links, so the folder can be moved or zipped), with inline CSS and no network access. Every file
is written atomically. Text and tables are HTML-escaped.

Example:
    >>> from matplotlib.figure import Figure
    >>> import pandas as pd
    >>> report = Report("Zero-shot on lung tiles", subtitle="histovl-lite")
    >>> report.add_metrics({"accuracy": 0.91, "ci95": {"accuracy": [0.88, 0.93]}}, names=["accuracy"])
    >>> fig = Figure(); _ = fig.subplots().plot([0, 1], [0, 1])
    >>> report.add_figure("curve", fig, caption="a line")
    >>> report.add_table(pd.DataFrame({"class": ["a"], "f1": [0.9]}), title="Per class")
    >>> report.add_image_grid([GridItem("tiles/a.png", "true a / pred a (0.97)", correct=True)])
    >>> # report.write("out/")  -> out/report.html, out/figures/curve.png, out/thumbnails/...
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from histovl._io import atomic_path, atomic_write_bytes, atomic_write_text
from histovl.reports.figures import save_figure
from histovl.reports.table import NA_REP, Table

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

THUMBNAIL_PX = 160
FIGURES_DIR = "figures"
#: Bump when a figure function draws differently, so memoised PNGs (`Report.figure_cache`) are redrawn.
FIGURE_STYLE = "2"
THUMBNAILS_DIR = "thumbnails"


@dataclass(frozen=True)
class GridItem:
    """One image in an image grid.

    Attributes:
        image: a file path or an in-memory PIL image.
        caption: text under the image (e.g. ``"true: lung_aca / pred: lung_n (0.93)"``).
        correct: True/False adds a ✓/✗ mark and a green/red frame; None shows neither.
    """

    image: str | Path | Image.Image
    caption: str = ""
    correct: bool | None = None


@dataclass
class _Section:
    kind: str
    title: str
    payload: Any
    caption: str = ""


@dataclass
class Report:
    """An HTML report assembled section by section, in the order the ``add_*`` calls are made."""

    title: str
    subtitle: str = ""
    sections: list[_Section] = field(default_factory=list)
    figure_cache: Path | None = None
    """A folder of figures already drawn (``<folder>/figures/<sha256>.png``): a figure added with a
    ``key`` is copied from there when present, and drawn and kept there when not. A re-run on
    unchanged results then imports no matplotlib and draws nothing (docs/performance.md)."""

    def add_text(self, text: str, *, title: str = "") -> None:
        """A paragraph of plain text (escaped; blank lines start new paragraphs)."""
        self.sections.append(_Section("text", title, text))

    def add_metrics(
        self,
        metrics: Mapping[str, Any],
        *,
        names: Sequence[str] | None = None,
        title: str = "Summary",
        caption: str = "",
    ) -> None:
        """A table of scalar metrics with their interval from ``metrics["ci95"]`` when present.

        ``names`` picks and orders the metrics; by default every numeric top-level entry.
        """
        cis = metrics.get("ci95") or {}
        level = metrics.get("ci_level", 0.95)
        ci_header = f"{level:.0%} CI" if isinstance(level, int | float) else "CI"
        keys = (
            list(names) if names is not None else [k for k, v in metrics.items() if _is_number(v)]
        )
        rows = []
        for key in keys:
            interval = cis.get(key)
            rows.append(
                {"metric": key, "value": _fmt(metrics.get(key)), ci_header: _fmt_interval(interval)}
            )
        self.sections.append(_Section("table", title, Table.from_rows(rows), caption))

    def add_figure(
        self, name: str, figure: Figure | Callable[[], Figure], *, title: str = "", caption: str = "",
        key: str | None = None,
    ) -> None:
        """A matplotlib figure, saved as ``figures/<name>.png`` when the report is written.

        `figure` may be a function that draws it, called only when the PNG is not memoised: with a
        `key` (every input of the drawing, as text) and `figure_cache` set, the PNG is looked up
        by the key's hash first.
        """
        self.sections.append(_Section("figure", title, (_safe_name(name), figure, key), caption))

    def add_table(
        self, table: pd.DataFrame | Table, *, title: str = "", caption: str = "", index: bool = False
    ) -> None:
        """A pandas table or a `Table` (cells escaped; floats with 4 decimals; a `Table` renders
        as pandas would, without importing it)."""
        self.sections.append(_Section("table_index" if index else "table", title, table, caption))

    def add_image_grid(
        self, items: Sequence[GridItem], *, title: str = "", caption: str = ""
    ) -> None:
        """Thumbnails with captions; right/wrong marks when ``GridItem.correct`` is set."""
        self.sections.append(_Section("grid", title, list(items), caption))

    def add_provenance(self, run_record: Mapping[str, Any], *, title: str = "Provenance") -> None:
        """Models, prompt set, seed, versions and commits from a run record, plus the full record."""
        self.sections.append(_Section("provenance", title, dict(run_record)))

    def write(self, out_dir: str | Path, *, filename: str = "report.html") -> Path:
        """Render assets and the HTML into ``out_dir``; returns the HTML path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        body = [f"<h1>{_e(self.title)}</h1>"]
        if self.subtitle:
            body.append(f'<p class="subtitle">{_e(self.subtitle)}</p>')
        for index, section in enumerate(self.sections):
            body.append(self._render(section, index, out))
        page = _PAGE.format(title=_e(self.title), css=_CSS, body="\n".join(body))
        target = out / filename
        atomic_write_text(target, page)
        return target

    def _render(self, section: _Section, index: int, out: Path) -> str:
        parts = ["<section>"]
        if section.title:
            parts.append(f"<h2>{_e(section.title)}</h2>")
        if section.kind == "text":
            parts.extend(f"<p>{_e(p)}</p>" for p in str(section.payload).split("\n\n") if p.strip())
        elif section.kind in ("table", "table_index"):
            parts.append(_table_html(section.payload, index=section.kind == "table_index"))
        elif section.kind == "figure":
            name, figure, key = section.payload
            rel = f"{FIGURES_DIR}/{name}.png"
            self._save_figure(figure, key, out / rel)
            parts.append(
                f'<figure><img src="{_e(rel)}" alt="{_e(section.title or name)}"></figure>'
            )
        elif section.kind == "grid":
            parts.append(_grid_html(section.payload, index, out))
        elif section.kind == "provenance":
            parts.append(_provenance_html(section.payload))
        if section.caption:
            parts.append(f'<p class="caption">{_e(section.caption)}</p>')
        parts.append("</section>")
        return "\n".join(parts)


    def _save_figure(self, figure: Figure | Callable[[], Figure], key: str | None, target: Path) -> None:
        """Draw `figure` to `target`, or copy the PNG memoised under `key` (`figure_cache`)."""
        memo = None
        if key is not None and self.figure_cache is not None:
            from histovl.reports.run_record import distribution_version

            digest = hashlib.sha256(f"{FIGURE_STYLE}|{distribution_version('matplotlib')}|{key}".encode()).hexdigest()
            memo = self.figure_cache / FIGURES_DIR / f"{digest}.png"
            if memo.is_file():
                atomic_write_bytes(target, memo.read_bytes())
                return
        save_figure(figure if not callable(figure) else figure(), target)
        if memo is not None:
            try:
                memo.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(memo, target.read_bytes())
            except OSError:  # a read-only or full cache only costs the next run a redraw
                pass


def _table_html(table: pd.DataFrame | Table, *, index: bool) -> str:
    if isinstance(table, Table):
        text = None if index else table.to_html()
        if text is not None:
            return text
        table = table.to_frame()
    return str(
        table.to_html(
            index=index,
            escape=True,
            border=0,
            classes="data",
            na_rep=NA_REP,
            float_format=lambda v: f"{v:.4f}",
        )
    )


def _grid_html(items: list[GridItem], section_index: int, out: Path) -> str:
    cells = []
    for i, item in enumerate(items):
        rel = f"{THUMBNAILS_DIR}/s{section_index:02d}_{i:03d}_{_thumb_stem(item.image)}.jpg"
        ok = _write_thumbnail(item.image, out / rel)
        mark, cls = {True: ("✓", "right"), False: ("✗", "wrong"), None: ("", "")}[item.correct]
        img = (
            f'<img src="{_e(rel)}" alt="{_e(item.caption)}">'
            if ok
            else '<div class="missing">image unreadable</div>'
        )
        mark_html = f'<span class="mark {cls}">{mark}</span> ' if mark else ""
        cells.append(
            f'<div class="cell {cls}">{img}<div class="cap">{mark_html}{_e(item.caption)}</div></div>'
        )
    if not cells:
        return '<p class="caption">(no images)</p>'
    return '<div class="grid">' + "\n".join(cells) + "</div>"


def _write_thumbnail(image: str | Path | Image.Image, target: Path) -> bool:
    """Save a small RGB JPEG; an unreadable file gives a placeholder instead of failing the report."""
    try:
        if isinstance(image, Image.Image):
            img = image.copy()
        else:
            with Image.open(image) as opened:
                img = ImageOps.exif_transpose(opened)
                img.load()
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
        img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        with atomic_path(target, suffix=".jpg") as tmp:
            img.save(tmp, format="JPEG", quality=85)
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _provenance_html(record: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    for key in ("command", "time_utc", "seed"):
        if key in record:
            rows.append((key, str(record[key])))
    for model in record.get("models") or []:
        if isinstance(model, Mapping):
            rows.append(
                (
                    "model",
                    f"{model.get('name', '?')} ({model.get('architecture', '?')}, {model.get('source', '?')})",
                )
            )
    prompt_set = record.get("prompt_set")
    if isinstance(prompt_set, Mapping):
        rows.append(
            (
                "prompt set",
                f"{prompt_set.get('name', '?')}: {len(prompt_set.get('classes') or {})} classes, "
                f"{len(prompt_set.get('templates') or [])} templates",
            )
        )
    for which in ("histovl_git", "cwd_git"):
        git = record.get(which)
        if isinstance(git, Mapping) and git.get("commit"):
            rows.append((which, f"{git['commit']}{' (dirty)' if git.get('dirty') else ''}"))
    versions = record.get("versions")
    if isinstance(versions, Mapping):
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    if "input_hash" in record:
        rows.append(
            ("inputs", f"{record.get('n_inputs', '?')} files, sha256 {record['input_hash']}")
        )
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    parts = [f'<table class="data prov">{table}</table>']
    if isinstance(prompt_set, Mapping):
        parts.append(
            _details(
                "Prompt set (capped: see its _capped note)" if "_capped" in prompt_set else "Prompt set (full text)",
                json.dumps(prompt_set, indent=2, ensure_ascii=False, default=str),
            )
        )
    parts.append(
        _details("Full run record", json.dumps(record, indent=2, ensure_ascii=False, default=str))
    )
    return "\n".join(parts)


def _details(summary: str, text: str) -> str:
    return f"<details><summary>{_e(summary)}</summary><pre>{_e(text)}</pre></details>"


def _thumb_stem(image: str | Path | Image.Image) -> str:
    if isinstance(image, Image.Image):
        return "image"
    stem = _safe_name(Path(image).stem)[:40]
    return f"{stem}_{hashlib.sha1(str(image).encode()).hexdigest()[:8]}"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "item"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _fmt_interval(interval: Any) -> str:
    if not interval or len(interval) != 2 or interval[0] is None or interval[1] is None:
        return "–"
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.subtitle{color:#666;margin-top:0}.caption{color:#555;font-size:.9em}
table.data{border-collapse:collapse;font-size:.9em;margin:.5em 0}
table.data th,table.data td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
table.data thead th{background:#f3f3f3}table.prov th{background:#f8f8f8;white-space:nowrap}
figure{margin:.5em 0}figure img{max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.cell{width:172px;border:3px solid #ccc;border-radius:4px;padding:3px;font-size:.78em}
.cell.right{border-color:#2e8b57}.cell.wrong{border-color:#c0392b}
.cell img{width:160px;height:auto;display:block;margin:auto}
.cap{margin-top:3px;word-wrap:break-word}.mark.right{color:#2e8b57;font-weight:bold}
.mark.wrong{color:#c0392b;font-weight:bold}.missing{height:80px;background:#eee;text-align:center;padding-top:30px}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em;max-height:30em}
details{margin:.4em 0}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""
