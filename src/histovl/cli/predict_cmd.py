"""`histovl predict`: parse options, call `histovl.predict.predict`, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from histovl._compat import StrEnum
from histovl.cli.common import (
    OneModelOpt,
    OutOpt,
    print_metrics,
    print_skipped,
    with_run_options,
)
from histovl.cli.slides_cmd import BadOpt, MagOpt, MppOpt, SizeOpt, SlideMppOpt, TissueOpt
from histovl.cli.zeroshot_cmd import CLASSIFICATION_KEYS, AggregateChoice
from histovl.options import RunOptions


class LabelsChoice(StrEnum):
    auto = "auto"
    ignore = "ignore"


class PoolingChoice(StrEnum):
    top_j = "top-j"
    mean = "mean"


class GeojsonObjectChoice(StrEnum):
    tile = "tile"
    annotation = "annotation"


PredictDataOpt = Annotated[Path, typer.Option("--data", "-d", help="Folder of images (flat, nested, or class sub-folders), CSV manifest (path, optional label), or a slide file.")]


@with_run_options()
def predict_command(
    model: OneModelOpt,
    data: PredictDataOpt,
    out: OutOpt,
    options: RunOptions,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompt-set name or YAML file: zero-shot scoring.")] = None,
    head: Annotated[Path | None, typer.Option("--head", help="Few-shot head folder (histovl fewshot fit). With --prompts too, the head scores and both must name the same classes.")] = None,
    aggregate: Annotated[AggregateChoice, typer.Option("--aggregate", help="With --prompts: class score from the mean of prompt embeddings, or the best description.")] = AggregateChoice.mean,
    labels: Annotated[LabelsChoice, typer.Option("--labels", help="auto: use labels when the data has them (adds metrics); ignore: never.")] = LabelsChoice.auto,
    as_slide: Annotated[bool, typer.Option("--as-slide", help="Read a --data folder as one slide made of tile_x<X>_y<Y>.png tiles.")] = False,
    size: SizeOpt = 224,
    mpp: MppOpt = None,
    magnification: MagOpt = None,
    slide_mpp: SlideMppOpt = None,
    tissue_threshold: TissueOpt = 0.5,
    max_bad_tiles: BadOpt = None,
    tiling: Annotated[Path | None, typer.Option("--tiling", help="Slide tiling folder to reuse or fill [default: <out>/tiling].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-tile the slide even when the tiling folder holds a finished tiling.")] = False,
    pooling: Annotated[PoolingChoice, typer.Option("--pooling", help="Slide score: top-j mean (MI-Zero) or mean of tile probabilities.")] = PoolingChoice.top_j,
    top_j: Annotated[int, typer.Option("--top-j", min=1, help="Tiles pooled per class with --pooling top-j.")] = 10,
    geojson_objects: Annotated[GeojsonObjectChoice, typer.Option("--geojson-objects", help="QuPath object type of each tile in predictions.geojson.")] = GeojsonObjectChoice.tile,
) -> None:
    """Classify unlabelled (or labelled) images or a whole slide with a prompt set or a few-shot head."""
    from histovl.predict import PredictConfig, predict

    config = PredictConfig(
        prompts=prompts, head=head, aggregate=aggregate.value, labels=labels.value, as_slide=as_slide,
        tile_size=size, mpp=mpp, magnification=magnification, slide_mpp=slide_mpp,
        tissue_threshold=tissue_threshold, max_bad_tiles=max_bad_tiles, tiling=tiling, force=force,
        pooling=pooling.value, top_j=top_j, geojson_object=geojson_objects.value,
    )
    res = predict(model, data, out, config, options)
    console = Console()
    if res.slide is not None:
        s = res.slide
        console.print(f"slide prediction: {s['prediction']} ({s['probabilities'][s['prediction']]:.3f}); "
                      f"{s['n_tiles']} tiles: {s['n_tiles_encoded']} encoded, {s['n_tiles_from_cache']} from cache; "
                      f"tiling {'reused' if s['tiling_reused'] else 'computed'}")
    elif res.metrics.get("labelled"):
        print_metrics(res.metrics, CLASSIFICATION_KEYS, console=console)
    else:
        counts = ", ".join(f"{c} {n}" for c, n in res.metrics["predicted_counts"].items())
        console.print(f"predicted: {counts}")
    print_skipped(res.skipped, console)
    typer.echo(f"n = {len(res.predictions)}; report: {out / 'report.html'}")
