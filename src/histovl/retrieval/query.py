"""`histovl index build` / `histovl index query`: a reusable index and ad-hoc searches in it.

Build once (encode through the embedding cache, store vectors and metadata on disk), then ask
"patches like this one" (an image) or "patches matching this description" (a text, through the
model's text tower) as often as needed without re-encoding the collection.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from histovl._io import atomic_open
from histovl.embed import encode_images
from histovl.errors import HistovlError
from histovl.options import PathArg, RunOptions, refuse_runtime, resolve_options, split_overrides
from histovl.retrieval.index import METADATA_FILE, IndexFormatError, VectorIndex
from histovl.retrieval.run import embedding_cache_key, encode_records, model_provenance
from histovl.retrieval.search import SearchResult
from histovl.retrieval.storage import IndexOptions

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

#: The columns of a query's result table, in order.
QUERY_COLUMNS = ["rank", "path", "label", "group", "score"]


class ModelMismatchError(HistovlError):
    """The model given for a query is not the one whose embeddings fill the index."""


#: Why `index query` encodes with torch only (docs/runtime.md).
QUERY_NO_RUNTIME = ("it encodes one text or image per query, where exporting the towers and measuring the parity "
                    "gate cost more than they save; an index built with --runtime onnx is queried with torch")


@dataclass(frozen=True)
class IndexBuildConfig:
    """How `histovl index build` stores the vectors (the run options are in `RunOptions`).

    Attributes:
        storage: index storage type (see `histovl.retrieval.storage`); ignored when appending.
        index_options: tuning of the approximate storage types; ignored when appending.
        append: add to an existing index at `out` (images whose path is already in it are
            skipped); the model must be the one the index was built with.
        overwrite: replace an existing index at `out`; without it (or `append`) an existing
            index is refused before any model loads, never replaced silently.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    storage: str = "flat"
    index_options: IndexOptions | None = None
    append: bool = False
    overwrite: bool = False


def build_index(
    model: str | Encoder, data: PathArg | Any, out: PathArg, config: IndexBuildConfig | None = None,
    options: RunOptions | None = None, **overrides: Any,
) -> VectorIndex:
    """Encode a data set (through the embedding cache) and save it as an index folder.

    Args:
        model: a model spec (see `histovl models`) or a loaded `Encoder`.
        data: a class folder, a CSV manifest or an `ImageSet` (labels and groups optional).
        out: the index folder.
        config: storage and append (`IndexBuildConfig`).
        options: the shared run options (cache, batch size, workers, on_error, device, ...).
        overrides: fields of either, as keywords (``append=True``, ``use_cache=False``).

    Example:
        >>> idx = build_index("histovl-lite", "tiles/", "runs/lung-index")  # doctest: +SKIP
        >>> len(idx)  # doctest: +SKIP
        4500
    """
    from histovl.data import load_image_set
    from histovl.embed.runtimes import runtime_encoder

    if isinstance(options, IndexOptions):  # the spelling before RunOptions took `options=`
        warnings.warn("build_index(options=IndexOptions(...)) is deprecated; use index_options=",
                      DeprecationWarning, stacklevel=2)
        overrides, options = {**overrides, "index_options": options}, None
    cfg, opts = split_overrides(overrides, config, IndexBuildConfig, options)
    folder = Path(out)
    if (folder / METADATA_FILE).exists() and not (cfg.append or cfg.overwrite):
        raise IndexFormatError(
            f"--out {folder} already holds an index; pass --append to add to it or --overwrite to replace it"
        )
    image_set = load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    encoder = runtime_encoder(model, opts)  # --runtime (docs/runtime.md)
    index = _open_or_create(folder, encoder, model, cfg, opts)
    known = set(index.records["path"])
    encoded = encode_records(encoder, [r for r in image_set.records if str(r.path) not in known], opts)
    index.add(
        encoded.embeddings, [str(r.path) for r in encoded.records],
        labels=[r.label for r in encoded.records], groups=[r.group for r in encoded.records],
    )
    index.save(folder)
    return index


def _open_or_create(folder: Path, encoder: Encoder, spec: str | Encoder, cfg: IndexBuildConfig, opts: RunOptions) -> VectorIndex:
    """The index at `folder` when appending to one (same model, same runtime), else a new empty one."""
    if cfg.append and (folder / METADATA_FILE).exists():
        index = VectorIndex.open(folder)
        check_same_model(index, encoder, same_runtime=True)  # one index never mixes runtimes
        return index
    model = {**model_provenance(encoder, spec), "runtime": opts.runtime, "runtime_parity": opts.record()["runtime_parity"]}
    return VectorIndex(encoder.card.embed_dim, storage=cfg.storage, options=cfg.index_options,
                       model=model, cache_key=embedding_cache_key(encoder))


def check_same_model(index: VectorIndex, encoder: Encoder, *, same_runtime: bool = False) -> None:
    """Raise `ModelMismatchError` unless `encoder` produced the index's vectors: the same weights,
    under any runtime (a torch query against an index built with ``--runtime onnx``: the parity
    gate bounds the difference), or under the same runtime with `same_runtime` (appending)."""
    from histovl.embed.runtimes import torch_weights_id

    expected = index.model.get("weights_id")
    given = encoder.weights_id if same_runtime else torch_weights_id(encoder.weights_id)
    if expected and (expected if same_runtime else torch_weights_id(expected)) != given:
        raise ModelMismatchError(
            f"the index was built with {index.model.get('spec')!r} (weights {expected}), but the query "
            f"model has weights {encoder.weights_id}; embeddings of different models cannot be compared. "
            "Query with the index's model (omit --model) or rebuild the index"
        )


def query_index(
    index: str | os.PathLike[str] | VectorIndex,
    *,
    image: str | os.PathLike[str] | None = None,
    text: str | None = None,
    k: int = 10,
    model: str | Encoder | None = None,
    include_self: bool = False,
    out: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """The top-k images for one image or one text, as a table (rank, path, label, group, score).

    Args:
        index: an index folder or an open `VectorIndex`.
        image / text: exactly one of them.
        k: how many results.
        model: defaults to the model the index was built with (its stored spec).
        include_self: keep the query image itself in the results when it is in the index.
        out: also write the table as CSV here (atomically).
        options: the run options a query uses: ``device`` and ``trust_checkpoint`` (also as
            keywords), and the cache: a query text is looked up in the prompt-embedding cache
            (`histovl.embed.text`), so a repeated text query loads no model; the query image is
            encoded without the cache.

    Example:
        >>> query_index("runs/lung-index", text="lung adenocarcinoma", k=5)  # doctest: +SKIP
    """
    if (image is None) == (text is None):
        raise ValueError("give exactly one of an image (--image) or a text (--text) to query with")
    opts = resolve_options(options, **overrides)
    refuse_runtime(opts, "index query", QUERY_NO_RUNTIME)
    idx = index if isinstance(index, VectorIndex) else VectorIndex.open(index)
    encoder = _query_model(idx, model, opts)
    if text is not None:
        from histovl.embed.text import encode_texts

        vector, exclude = encode_texts(encoder, [text]), -1  # through the prompt cache
    else:
        vector = encode_images(encoder, [str(image)], cache=None, num_workers=0, progress=False).embeddings
        exclude = -1 if include_self else _position(idx, Path(str(image)))
    table = results_table(idx, idx.search(vector, k, exclude_ids=np.array([exclude])))
    if out is not None:
        with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
            table.to_csv(fh, index=False)
    return table


def _position(idx: VectorIndex, image: Path) -> int:
    """Where `image` sits in the index (by resolved path), or -1."""
    target = str(image.resolve())
    same = [i for i, p in enumerate(idx.records["path"]) if str(Path(p).resolve()) == target]
    return same[0] if same else -1


def results_table(idx: VectorIndex, result: SearchResult) -> pd.DataFrame:
    """The first query's hits as rows of `QUERY_COLUMNS` (padding ids of -1 dropped)."""
    rows = [
        {
            "rank": j + 1,
            "path": idx.records["path"][i],
            "label": idx.records["label"][i],
            "group": idx.records["group"][i],
            "score": float(result.scores[0, j]),
        }
        for j, i in enumerate(result.ids[0].tolist())
        if i >= 0
    ]
    return pd.DataFrame(rows, columns=QUERY_COLUMNS)


def _query_model(idx: VectorIndex, model: str | Encoder | None, opts: RunOptions) -> Encoder:
    """The given model, or the one the index records; refused unless it made the index. Opened
    like every command's (`histovl.embed.encoders.open_encoder`): loaded only when a text or
    image has to be encoded."""
    from histovl.embed.encoders import open_encoder

    if model is None:
        model = idx.model.get("spec")
        if not model:
            raise ValueError("the index does not record its model; pass --model")
    encoder = open_encoder(model, opts)
    check_same_model(idx, encoder)
    return encoder
