"""`histovl slides tile` / `histovl slides embed`: thin options layer over `histovl.slides`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from histovl.cli.common import BatchOpt, DeviceOpt, OutOpt, QuietOpt, TrustOpt

if TYPE_CHECKING:
    from histovl.slides import TileSpec

SlideOpt = Annotated[Path, typer.Option("--slide", "-s", help="Slide file (.svs, .ndpi, .tif, ...), plain image, or folder of tiles.")]
MppOpt = Annotated[float | None, typer.Option("--mpp", help="Target µm per pixel of the tiles (e.g. 0.5).")]
MagOpt = Annotated[float | None, typer.Option("--magnification", help="Target magnification (e.g. 20); exclusive with --mpp.")]
SizeOpt = Annotated[int, typer.Option("--size", min=1, help="Tile side in pixels.")]
SlideMppOpt = Annotated[float | None, typer.Option("--slide-mpp", help="µm per level-0 pixel, when the file records none.")]
TissueOpt = Annotated[float, typer.Option("--tissue-threshold", min=0.0, max=1.0, help="Keep tiles with at least this tissue fraction.")]
ReadersOpt = Annotated[int | None, typer.Option("--readers", min=1, help="Tile-reading threads [default: cores, max 8].")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-tile even when --out holds a finished tiling of the same slide and settings.")]
BadOpt = Annotated[int | None, typer.Option("--max-bad-tiles", min=0, help="Unreadable tiles tolerated before the slide fails [default: max(5, 1%)].")]


def _spec(size: int, mpp: float | None, magnification: float | None, tissue_threshold: float, max_bad_tiles: int | None) -> TileSpec:
    from histovl.slides import TileSpec

    return TileSpec(size=size, mpp=mpp, magnification=magnification, tissue_threshold=tissue_threshold, max_bad_tiles=max_bad_tiles)


def register(app: typer.Typer) -> None:
    slides = typer.Typer(help="Whole-slide images: tiling, tile embeddings, slide zero-shot.", no_args_is_help=True)
    app.add_typer(slides, name="slides")

    @slides.command("tile")
    def tile_command(
        slide: SlideOpt,
        out: OutOpt,
        mpp: MppOpt = None,
        magnification: MagOpt = None,
        size: SizeOpt = 224,
        slide_mpp: SlideMppOpt = None,
        tissue_threshold: TissueOpt = 0.5,
        save_tiles: Annotated[bool, typer.Option("--save-tiles/--no-save-tiles", help="Also write every kept tile as PNG.")] = False,
        readers: ReadersOpt = None,
        max_bad_tiles: BadOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Detect tissue and write tiles.csv, thumbnail.png, tissue_map.png (and tiles/*.png)."""
        from histovl.slides import tile_slide

        spec = _spec(size, mpp, magnification, tissue_threshold, max_bad_tiles)
        res = tile_slide(slide, out, spec, slide_mpp=slide_mpp, save_tiles=save_tiles, num_workers=readers, force=force)
        r = res.resolution
        Console().print(
            f"{len(res.tiles)} tiles of {r.size}px (level {r.level}, {r.extent0} level-0 px each"
            + (f", {r.mpp:.3f} µm/px" if r.mpp else "") + f"); {len(res.bad_tiles)} substituted; outputs in {out}"
            + (" (finished tiling reused; --force re-tiles)" if res.reused else "")
        )

    @slides.command("embed")
    def embed_command(
        slide: SlideOpt,
        out: OutOpt,
        model: Annotated[str, typer.Option("--model", "-m", help="Model spec (see `histovl models`).")] = "histovl-lite",
        prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompt set: adds slide zero-shot and zeroshot_map.png.")] = None,
        top_j: Annotated[list[int] | None, typer.Option("--top-j", help="Tiles pooled per class (MI-Zero); repeatable.")] = None,
        cache: Annotated[Path | None, typer.Option("--cache", help="Embedding cache folder [default: ~/.cache/histovl/embeddings].")] = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not use the embedding cache.")] = False,
        mpp: MppOpt = None,
        magnification: MagOpt = None,
        size: SizeOpt = 224,
        slide_mpp: SlideMppOpt = None,
        tissue_threshold: TissueOpt = 0.5,
        readers: ReadersOpt = None,
        max_bad_tiles: BadOpt = None,
        force: ForceOpt = False,
        batch_size: BatchOpt = 64,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Tile a slide, embed its tiles into the cache; with --prompts, slide zero-shot + map."""
        from histovl.embed import EmbeddingCache
        from histovl.models import load_model
        from histovl.slides import embed_slide, slide_zeroshot, write_slide_zeroshot

        encoder = load_model(model, device=device, trust_checkpoint=trust_checkpoint)
        spec = _spec(size, mpp, magnification, tissue_threshold, max_bad_tiles)
        se = embed_slide(
            encoder, slide, out, spec, cache=None if no_cache else EmbeddingCache(cache), slide_mpp=slide_mpp,
            batch_size=batch_size, num_workers=readers, progress=not quiet, force=force,
        )
        console = Console()
        console.print(f"{len(se.tiles)} tiles: {se.n_cached} from cache, {se.n_encoded} encoded; {out}/embeddings.npy")
        if prompts and len(se.tiles):
            from histovl.prompts import load_prompt_set
            from histovl.zeroshot import build_text_classifier

            clf = build_text_classifier(encoder, load_prompt_set(prompts))
            zs = slide_zeroshot(clf, se.embeddings, tuple(top_j or (1, 5, 10, 50)))
            write_slide_zeroshot(se, zs, out)
            for j in zs.slide_scores:
                console.print(f"top-{j}: {zs.prediction(j)}")
