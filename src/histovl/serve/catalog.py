"""What the server shows, found once at start: runs, slides, indexes, leaderboards under the roots.

One walk per root (symlinked folders are not followed, hidden ones skipped). A folder is a run
when it holds ``run.json``, a tiling when it holds ``tiling.json``, an index when its
``metadata.parquet`` carries histovl's index settings, a bench folder when it holds
``leaderboard.csv``; slide files are listed by suffix. Every file a page links to enters the
allow-list (`histovl.serve.files`) here and only here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from histovl.errors import HistovlError
from histovl.serve.boards import BOARD_FILE, BoardEntry, load_board
from histovl.serve.files import FileRegistry, walk_root
from histovl.serve.runs import RunEntry, load_run
from histovl.serve.search import INDEX_FILE, IndexEntry, load_index
from histovl.serve.slides import SLIDE_SUFFIXES, SlideEntry, load_slide_file, load_tiling_slide


@dataclass
class Catalog:
    """Everything found under the roots, by id."""

    roots: list[Path]
    registry: FileRegistry
    runs: dict[str, RunEntry] = field(default_factory=dict)
    slides: dict[str, SlideEntry] = field(default_factory=dict)
    indexes: dict[str, IndexEntry] = field(default_factory=dict)
    boards: dict[str, BoardEntry] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{len(self.runs)} runs, {len(self.slides)} slides, {len(self.indexes)} indexes, "
                f"{len(self.boards)} leaderboards, {len(self.registry)} files allowed "
                f"(scanned in {self.seconds:.1f} s)")


def check_roots(roots: list[str | os.PathLike[str]]) -> list[Path]:
    """The roots as paths; each must be an existing folder."""
    paths = [Path(r) for r in roots] or [Path.cwd()]
    for path in paths:
        if not path.is_dir():
            raise HistovlError(f"{path}: not a folder; give the folders of your runs (e.g. `histovl serve runs/`)")
    return paths


def scan(roots: list[Path], *, roots_only: bool = False) -> Catalog:
    """Walk the roots and read what is there (see the module docstring)."""
    start = time.perf_counter()
    registry = FileRegistry(roots, roots_only=roots_only)
    catalog = Catalog(roots=[Path(r) for r in roots], registry=registry)
    tilings: list[tuple[Path, str]] = []
    slide_files: list[tuple[Path, str]] = []
    for root in catalog.roots:
        for folder, _dirs, files in walk_root(root):
            name = _display_name(root, folder)
            names = set(files)
            if "run.json" in names:
                run = load_run(folder, name, registry)
                catalog.runs[run.id] = run
            if "tiling.json" in names:
                tilings.append((folder, name))
            if INDEX_FILE in names and (index := load_index(folder, name, registry)) is not None:
                catalog.indexes[index.id] = index
            if BOARD_FILE in names:
                board = load_board(folder, name, registry)
                catalog.boards[board.id] = board
            slide_files += [(folder / f, _display_name(root, folder / f)) for f in files
                            if Path(f).suffix.lower() in SLIDE_SUFFIXES]
    _add_slides(catalog, tilings, slide_files)
    catalog.seconds = time.perf_counter() - start
    return catalog


def _add_slides(catalog: Catalog, tilings: list[tuple[Path, str]], slide_files: list[tuple[Path, str]]) -> None:
    run_ids = {run.folder: run.id for run in catalog.runs.values()}
    shown: set[Path] = set()
    for folder, name in tilings:
        label = name.removesuffix("/tiling") if folder.name == "tiling" and folder.parent in run_ids else name
        entry = load_tiling_slide(folder, label, catalog.registry, run_ids)
        catalog.slides[entry.id] = entry
        if entry.slide_path is not None:
            shown.add(Path(os.path.realpath(entry.slide_path)))
    for path, name in slide_files:
        if Path(os.path.realpath(path)) in shown:
            continue
        found = load_slide_file(path, name, catalog.registry)
        if found is not None:
            catalog.slides[found.id] = found


def _display_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return f"{root.name}/{rel}" if rel != "." else root.name or str(root)
