"""`histovl retrieve` and `histovl index build|query`: parse options, call `histovl.retrieval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from histovl._compat import StrEnum
from histovl.cli.common import (
    ALL_RUN_OPTIONS,
    DataOpt,
    OneModelOpt,
    OutOpt,
    print_metrics,
    print_skipped,
    with_run_options,
)
from histovl.options import RunOptions

#: The summary lines `histovl retrieve` prints.
RETRIEVAL_KEYS = ("ha@5", "ha@10", "recall@1", "recall@5", "mmv@5", "map@10")


class StorageChoice(StrEnum):
    flat = "flat"
    flat_f16 = "flat-f16"
    ivf = "ivf"
    hnsw = "hnsw"


class GroupByChoice(StrEnum):
    data = "data"
    near_duplicates = "near-duplicates"
    none = "none"


StorageOpt = Annotated[StorageChoice, typer.Option("--storage", help="flat (exact, float32), flat-f16 (exact, half memory), ivf or hnsw (approximate).")]
NlistOpt = Annotated[int | None, typer.Option("--nlist", min=1, help="IVF lists [default: 4*sqrt(n)].")]
NprobeOpt = Annotated[int, typer.Option("--nprobe", min=1, help="IVF lists searched per query.")]
EfSearchOpt = Annotated[int, typer.Option("--ef-search", min=1, help="HNSW search breadth.")]


@with_run_options()
def retrieve_command(
    model: OneModelOpt,
    data: DataOpt,
    out: OutOpt,
    options: RunOptions,
    k: Annotated[list[int] | None, typer.Option("--k", min=1, help="Extra cut-offs to report (1, 5 and 10 always are).")] = None,
    exclude_same_group: Annotated[bool, typer.Option("--exclude-same-group/--include-same-group", help="Never retrieve images of the query's own group.")] = True,
    group_by: Annotated[GroupByChoice, typer.Option("--group-by", help="Groups from the data's `group` column, from near-duplicate detection, or none.")] = GroupByChoice.data,
    storage: StorageOpt = StorageChoice.flat,
    save_index: Annotated[bool, typer.Option("--save-index", help="Also write the index to OUT/index.")] = False,
) -> None:
    """Leave-one-out image→image retrieval on a labelled set: HA@K, recall@K, mMV@K, mAP@K."""
    from histovl.retrieval import RetrieveConfig, retrieve

    config = RetrieveConfig(
        k=tuple(k or (5, 10)), exclude_same_group=exclude_same_group, group_by=group_by.value,
        storage=storage.value, save_index=save_index,
    )
    res = retrieve(model, data, out, config, options)
    print_metrics(res.metrics, RETRIEVAL_KEYS, width=10)
    print_skipped(res.skipped)
    typer.echo(f"n = {res.metrics['n']}; excluded: {res.metrics['exclusion']}; report: {out / 'report.html'}")


@with_run_options(exclude=("n_boot", "seed"))  # `index query` encodes with torch (docs/runtime.md)
def index_build_command(
    model: OneModelOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder.")],
    options: RunOptions,
    storage: StorageOpt = StorageChoice.flat,
    append: Annotated[bool, typer.Option("--append", help="Add new images to an existing index at OUT.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index at OUT (refused without it).")] = False,
    nlist: NlistOpt = None,
    nprobe: NprobeOpt = 16,
    ef_search: EfSearchOpt = 128,
) -> None:
    """Encode a data set (through the embedding cache) and save it as an index folder."""
    from histovl.retrieval import IndexBuildConfig, IndexOptions, build_index

    config = IndexBuildConfig(
        storage=storage.value, index_options=IndexOptions(nlist=nlist, nprobe=nprobe, ef_search=ef_search),
        append=append, overwrite=overwrite,
    )
    index = build_index(model, data, out, config, options)
    typer.echo(f"index {out}: {len(index)} vectors of {index.dim}-d, storage {index.storage}")


@with_run_options(exclude=tuple(f for f in ALL_RUN_OPTIONS if f not in ("device", "trust_checkpoint")))
def index_query_command(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index folder (from `histovl index build`).")],
    options: RunOptions,
    image: Annotated[Path | None, typer.Option("--image", help="Find images like this one.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Find images matching this description.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Results to return.")] = 10,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model spec [default: the index's model].")] = None,
    include_self: Annotated[bool, typer.Option("--include-self", help="Keep the query image itself if it is in the index.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the results as CSV.")] = None,
) -> None:
    """Print (and optionally write) the top-K images with paths and cosine scores."""
    from histovl.retrieval import query_index

    table = query_index(index, image=image, text=text, k=k, model=model, include_self=include_self, out=out, options=options)
    view = Table(title=f"top {k} for {'image ' + str(image) if image else repr(text)}")
    for col in ("rank", "score", "label", "group", "path"):
        view.add_column(col)
    for row in table.itertuples(index=False):
        view.add_row(str(row.rank), f"{row.score:.4f}", str(row.label or ""), str(row.group or ""), str(row.path))
    Console().print(view)
    if out is not None:
        typer.echo(f"written: {out}")
