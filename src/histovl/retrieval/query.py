"""`histovl index build` / `histovl index query`: a reusable index and ad-hoc searches in it.

Build once (encode through the embedding cache, store vectors and metadata on disk), then ask
"patches like this one" (an image) or "patches matching this description" (a text, through the
model's text tower) as often as needed without re-encoding the collection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from histovl._io import atomic_open
from histovl.embed import EmbeddingCache, encode_images
from histovl.errors import HistovlError
from histovl.models.encoder import Encoder
from histovl.retrieval.index import METADATA_FILE, VectorIndex
from histovl.retrieval.run import embedding_cache_key, model_provenance
from histovl.retrieval.storage import IndexOptions


class ModelMismatchError(HistovlError):
    """The model given for a query is not the one whose embeddings fill the index."""


def build_index(
    model: str | Encoder,
    data: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    *,
    storage: str = "flat",
    options: IndexOptions | None = None,
    append: bool = False,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    allow_absolute_paths: bool = False,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> VectorIndex:
    """Encode a data set and save it as an index folder.

    Args:
        out: the index folder.
        append: add to an existing index at `out` (images whose path is already in it are
            skipped); the model must be the one the index was built with.
        storage / options: see `histovl.retrieval.storage` (ignored when appending).

    Example:
        >>> idx = build_index("histovl-lite", "tiles/", "runs/lung-index")  # doctest: +SKIP
        >>> len(idx)  # doctest: +SKIP
        4500
    """
    from histovl.data import load_image_set
    from histovl.models import load_model

    image_set: Any = data if hasattr(data, "records") else load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    encoder = model if isinstance(model, Encoder) else load_model(str(model), device=device, trust_checkpoint=trust_checkpoint)
    folder = Path(out)
    if append and (folder / METADATA_FILE).exists():
        index = VectorIndex.open(folder)
        check_same_model(index, encoder)
    else:
        index = VectorIndex(encoder.card.embed_dim, storage=storage, options=options,
                            model=model_provenance(encoder, model), cache_key=embedding_cache_key(encoder))
    known = set(index.records["path"])
    records = [r for r in image_set.records if str(r.path) not in known]
    res = encode_images(
        encoder, [str(r.path) for r in records], cache=EmbeddingCache(cache) if use_cache else None,
        batch_size=batch_size, num_workers=num_workers, on_error=on_error, progress=progress,
    )
    kept = [r for r, ok in zip(records, res.ok, strict=True) if ok]
    index.add(
        res.embeddings, [str(r.path) for r in kept],
        labels=[r.label for r in kept], groups=[r.group for r in kept],
    )
    index.save(folder)
    return index


def check_same_model(index: VectorIndex, encoder: Encoder) -> None:
    """Raise `ModelMismatchError` unless `encoder` produced the index's vectors."""
    expected = index.model.get("weights_id")
    if expected and expected != encoder.weights_id:
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
    device: str = "cpu",
    trust_checkpoint: bool = False,
) -> pd.DataFrame:
    """The top-k images for one image or one text, as a table (rank, path, label, group, score).

    Args:
        index: an index folder or an open `VectorIndex`.
        image / text: exactly one of them.
        model: defaults to the model the index was built with (its stored spec).
        include_self: keep the query image itself in the results when it is in the index.
        out: also write the table as CSV here (atomically).

    Example:
        >>> query_index("runs/lung-index", text="lung adenocarcinoma", k=5)  # doctest: +SKIP
    """
    if (image is None) == (text is None):
        raise ValueError("give exactly one of an image (--image) or a text (--text) to query with")
    idx = index if isinstance(index, VectorIndex) else VectorIndex.open(index)
    encoder = _query_model(idx, model, device=device, trust_checkpoint=trust_checkpoint)
    exclude = np.array([-1])
    if text is not None:
        vector = encoder.encode_text([text]).detach().cpu().numpy().astype(np.float32)
    else:
        res = encode_images(encoder, [str(image)], cache=None, num_workers=0, progress=False)
        vector = res.embeddings
        if not include_self:
            target = str(Path(str(image)).resolve())
            same = [i for i, p in enumerate(idx.records["path"]) if str(Path(p).resolve()) == target]
            exclude = np.array([same[0] if same else -1])
    result = idx.search(vector, k, exclude_ids=exclude)
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
    table = pd.DataFrame(rows, columns=["rank", "path", "label", "group", "score"])
    if out is not None:
        with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
            table.to_csv(fh, index=False)
    return table


def _query_model(idx: VectorIndex, model: str | Encoder | None, *, device: str, trust_checkpoint: bool) -> Encoder:
    from histovl.models import load_model

    if isinstance(model, Encoder):
        encoder = model
    else:
        spec = model or idx.model.get("spec")
        if not spec:
            raise ValueError("the index does not record its model; pass --model")
        encoder = load_model(str(spec), device=device, trust_checkpoint=trust_checkpoint)
    check_same_model(idx, encoder)
    return encoder
