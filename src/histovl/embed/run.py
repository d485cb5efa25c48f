"""`histovl embed`: fill the embedding cache for a data set, optionally export to Parquet."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from histovl._io import atomic_write_text, atomic_write_with
from histovl.embed.cache import EmbeddingCache
from histovl.embed.engine import EmbeddingResult, OnError, encode_images
from histovl.models.encoder import Encoder

Engine = Literal["local", "ray"]


@dataclass
class EmbedSummary:
    """What `embed` did: counts, the cache used, and the export file if any."""

    n: int
    n_cached: int
    n_encoded: int
    n_failed: int
    cache: Path
    export: Path | None
    result: EmbeddingResult


def embed(
    model: str | Encoder,
    data: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    engine: Engine = "local",
    export: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: OnError = "raise",
    device: str = "cpu",
    trust_checkpoint: bool = False,
    allow_absolute_paths: bool = False,
    ray_address: str | None = None,
    ray_actors: int = 1,
    ray_actor_cpus: int = 1,
    progress: bool = True,
) -> EmbedSummary:
    """Encode every image of `data` into the resumable cache at `cache`.

    Interrupt it at any time: a re-run encodes only what is missing and gives exactly the
    embeddings an uninterrupted run would have.

    Example:
        >>> embed("histovl-lite", "tiles/", cache="cache/", export="emb.parquet")  # doctest: +SKIP
    """
    from histovl.data import load_image_set
    from histovl.models import load_model

    image_set = load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    encoder = model if isinstance(model, Encoder) else load_model(model, device=device, trust_checkpoint=trust_checkpoint)
    store = EmbeddingCache(cache)
    if engine == "ray":
        from histovl.embed.ray_engine import encode_images_ray

        res = encode_images_ray(
            encoder, image_set.paths, cache=store, batch_size=batch_size, on_error=on_error, address=ray_address,
            num_actors=ray_actors, actor_cpus=ray_actor_cpus,
        )
    elif engine == "local":
        res = encode_images(
            encoder, image_set.paths, cache=store, batch_size=batch_size, num_workers=num_workers,
            on_error=on_error, progress=progress,
        )
    else:
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    out = Path(export) if export is not None else None
    if out is not None:
        ok_paths = [str(p) for p, ok in zip(image_set.paths, res.ok, strict=True) if ok]
        export_parquet(out, ok_paths, res.embeddings)
        if res.failures:  # under on_error="skip": say which inputs have no row, and why
            skipped = "path,reason\n" + "".join(f"{_csv(f.path)},{_csv(f.reason)}\n" for f in res.failures)
            atomic_write_text(skipped_list_path(out), skipped)
    return EmbedSummary(
        n=len(image_set), n_cached=res.n_cached, n_encoded=res.n_encoded, n_failed=len(res.failures),
        cache=store.root, export=out, result=res,
    )


def export_parquet(target: Path, paths: list[str], embeddings: np.ndarray) -> None:
    """Write `path` and `embedding` (list<float32>, L2-normalised) columns atomically."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = emb.shape[1] if emb.ndim == 2 else 0
    values = pa.array(emb.reshape(-1), type=pa.float32())
    col = pa.FixedSizeListArray.from_arrays(values, dim) if dim else pa.array([], pa.list_(pa.float32()))
    table = pa.table({"path": pa.array(paths, pa.string()), "embedding": col.cast(pa.list_(pa.float32()))})
    atomic_write_with(target, lambda tmp: pq.write_table(table, tmp))


def skipped_list_path(export: Path) -> Path:
    """Where `embed` lists the inputs it skipped next to an export: ``<name>.skipped.csv``."""
    return export.with_name(export.stem + ".skipped.csv")


def _csv(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'
