"""`histovl slides tile` / `histovl slides embed`: parse options, call `histovl.slides.tile_slide`
/ `histovl.slides.slides_embed`, print a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from histovl.cli.common import (
    ALL_RUN_OPTIONS,
    RUNTIME_OPTIONS,
    OneModelOpt,
    OutOpt,
    deprecated_alias,
    with_run_options,
)
from histovl.options import RunOptions

if TYPE_CHECKING:
    from histovl.slides import TileSpec

SlideOpt = Annotated[Path, typer.Option("--slide", "-s", help="Slide file (.svs, .ndpi, .tif, ...), plain image, or folder of tiles.")]
MppOpt = Annotated[float | None, typer.Option("--mpp", help="Target µm per pixel of the tiles (e.g. 0.5).")]
MagOpt = Annotated[float | None, typer.Option("--magnification", help="Target magnification (e.g. 20); exclusive with --mpp.")]
SizeOpt = Annotated[int, typer.Option("--size", min=1, help="Tile side in pixels.")]
SlideMppOpt = Annotated[float | None, typer.Option("--slide-mpp", help="µm per level-0 pixel, when the file records none.")]
TissueOpt = Annotated[float, typer.Option("--tissue-threshold", min=0.0, max=1.0, help="Keep tiles with at least this tissue fraction.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-tile even when --out holds a finished tiling of the same slide and settings.")]
BadOpt = Annotated[int | None, typer.Option("--max-bad-tiles", min=0, help="Unreadable tiles tolerated before the slide fails (default: max(5, 1% of the tiles)).")]
ReadersOpt = Annotated[int | None, typer.Option("--readers", min=1, hidden=True, help="Deprecated spelling of --workers.")]

#: `--workers` for slides: the threads that read tiles (OpenSlide and Pillow release the GIL).
WORKERS_HELP = {"workers": "Tile-reading threads for slides (default: cores, at most 8)."}
TILE_OPTIONS = ("workers",)
EMBED_OPTIONS = ("cache", "use_cache", "batch_size", "workers", "device", "trust_checkpoint", "progress", *RUNTIME_OPTIONS)


def _spec(size: int, mpp: float | None, magnification: float | None, tissue_threshold: float, max_bad_tiles: int | None) -> TileSpec:
    from histovl.slides import TileSpec

    return TileSpec(size=size, mpp=mpp, magnification=magnification, tissue_threshold=tissue_threshold, max_bad_tiles=max_bad_tiles)


def _workers(readers: int | None, options: RunOptions) -> RunOptions:
    """`options` with ``--readers`` (the old spelling, one more release) applied to ``workers``."""
    return options.replace(workers=deprecated_alias(readers, options.workers, old="--readers", new="--workers"))


@with_run_options(exclude=[f for f in ALL_RUN_OPTIONS if f not in TILE_OPTIONS], help_overrides=WORKERS_HELP)
def slides_tile_command(
    slide: SlideOpt,
    out: OutOpt,
    options: RunOptions,
    mpp: MppOpt = None,
    magnification: MagOpt = None,
    size: SizeOpt = 224,
    slide_mpp: SlideMppOpt = None,
    tissue_threshold: TissueOpt = 0.5,
    save_tiles: Annotated[bool, typer.Option("--save-tiles/--no-save-tiles", help="Also write every kept tile as PNG.")] = False,
    max_bad_tiles: BadOpt = None,
    force: ForceOpt = False,
    readers: ReadersOpt = None,
) -> None:
    """Detect tissue and write tiles.csv, thumbnail.png, tissue_map.png (and tiles/*.png)."""
    from histovl.slides import tile_slide

    opts = _workers(readers, options)
    spec = _spec(size, mpp, magnification, tissue_threshold, max_bad_tiles)
    res = tile_slide(slide, out, spec, slide_mpp=slide_mpp, save_tiles=save_tiles, num_workers=opts.workers, force=force)
    r = res.resolution
    Console().print(
        f"{len(res.tiles)} tiles of {r.size}px (level {r.level}, {r.extent0} level-0 px each"
        + (f", {r.mpp:.3f} µm/px" if r.mpp else "") + f"); {len(res.bad_tiles)} substituted; outputs in {out}"
        + (" (finished tiling reused; --force re-tiles)" if res.reused else "")
    )


@with_run_options(exclude=[f for f in ALL_RUN_OPTIONS if f not in EMBED_OPTIONS], help_overrides=WORKERS_HELP)
def slides_embed_command(
    slide: SlideOpt,
    out: OutOpt,
    options: RunOptions,
    model: OneModelOpt = "histovl-lite",
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompt set: adds slide zero-shot and zeroshot_map.png.")] = None,
    top_j: Annotated[list[int] | None, typer.Option("--top-j", help="Tiles pooled per class (MI-Zero); repeatable.")] = None,
    mpp: MppOpt = None,
    magnification: MagOpt = None,
    size: SizeOpt = 224,
    slide_mpp: SlideMppOpt = None,
    tissue_threshold: TissueOpt = 0.5,
    max_bad_tiles: BadOpt = None,
    force: ForceOpt = False,
    readers: ReadersOpt = None,
) -> None:
    """Tile a slide, embed its tiles into the cache; with --prompts, slide zero-shot + map."""
    from histovl.slides import SlideEmbedConfig, slides_embed
    from histovl.slides.run import DEFAULT_TOP_J

    config = SlideEmbedConfig(
        spec=_spec(size, mpp, magnification, tissue_threshold, max_bad_tiles), slide_mpp=slide_mpp, force=force,
        top_j=tuple(top_j) if top_j else DEFAULT_TOP_J,
    )
    se = slides_embed(model, slide, out, config, _workers(readers, options), prompts=prompts or None)
    console = Console()
    console.print(f"{len(se.tiles)} tiles: {se.n_cached} from cache, {se.n_encoded} encoded; {out}/embeddings.npy")
    if se.zeroshot is not None:
        for j in se.zeroshot.slide_scores:
            console.print(f"top-{j}: {se.zeroshot.prediction(j)}")
