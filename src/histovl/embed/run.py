"""`histovl embed`: fill the embedding cache for a data set, optionally export to Parquet."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from histovl._io import atomic_write_text, atomic_write_with
from histovl.embed.cache import EmbeddingCache, cache_for
from histovl.embed.engine import encode_with_options
from histovl.embed.fill import EmbeddingResult, Failure
from histovl.options import RunOptions, split_overrides
from histovl.outputs_guard import check_output_file

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = ("local", "ray")


@dataclass(frozen=True)
class EmbedConfig:
    """How `histovl embed` runs (the shared options, cache folder included, are in `RunOptions`).

    Attributes:
        engine: ``local`` (DataLoader workers, this process encodes) or ``ray`` (Ray Data decode
            tasks and encoder actors; see docs/scale-out.md).
        export: also write path + embedding columns to this Parquet file (and the skipped inputs
            to ``<name>.skipped.csv`` beside it).
        ray_address: Ray cluster to join; None starts (or reuses) a local Ray instance.
        ray_actors: Ray encoder actors (one model load each; one GPU each when CUDA exists).
        ray_actor_cpus: CPUs (and torch threads) per Ray encoder actor.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    engine: Engine = "local"
    export: Path | None = None
    ray_address: str | None = None
    ray_actors: int = 1
    ray_actor_cpus: int = 1

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.export is not None and not isinstance(self.export, Path):
            object.__setattr__(self, "export", Path(os.fspath(self.export)))


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
    data: str | os.PathLike[str] | Any,
    config: EmbedConfig | None = None,
    options: RunOptions | None = None,
    **overrides: Any,
) -> EmbedSummary:
    """Encode every image of `data` into the resumable cache at ``options.cache`` (default folder
    when None).

    Interrupt it at any time: a re-run encodes only what is missing and gives exactly the
    embeddings an uninterrupted run would have. Filling the cache is the point of the command, so
    ``use_cache=False`` is refused; ``n_boot`` and ``seed`` have nothing to act on.

    Args:
        model: a model spec (see `histovl models`) or a loaded `Encoder`.
        data: a class folder, a CSV manifest or an `ImageSet`.
        config: engine and export (`EmbedConfig`).
        options: the shared run options (cache, batch size, workers, on_error, device, ...).
        overrides: fields of either, as keywords (``engine="ray"``, ``cache="cache/"``).

    Example:
        >>> embed("histovl-lite", "tiles/", cache="cache/", export="emb.parquet")  # doctest: +SKIP
    """
    from histovl.data import load_image_set

    cfg, opts = split_overrides(overrides, config, EmbedConfig, options)
    store = cache_for(opts)
    if store is None:
        raise ValueError("`embed` fills the embedding cache; it cannot run with use_cache=False (--no-cache)")
    if cfg.export is not None:  # before any model work: a folder or a non-Parquet file is refused
        check_output_file(cfg.export, option="export")
    image_set = load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    res = _encode(model, image_set.paths, store, cfg, opts)
    if cfg.export is not None:
        ok_paths = [str(p) for p, ok in zip(image_set.paths, res.ok, strict=True) if ok]
        export_parquet(cfg.export, ok_paths, res.embeddings)
        if res.failures:  # under on_error="skip": say which inputs have no row, and why
            write_skipped_list(skipped_list_path(cfg.export), res.failures)
    return EmbedSummary(
        n=len(image_set), n_cached=res.n_cached, n_encoded=res.n_encoded, n_failed=len(res.failures),
        cache=store.root, export=cfg.export, result=res,
    )


def _encode(model: Any, paths: Sequence[str | os.PathLike[str]], store: EmbeddingCache, cfg: EmbedConfig, opts: RunOptions) -> EmbeddingResult:
    """Run the chosen engine over `paths`, reading and filling `store`. The local engine opens
    the model lazily (`open_encoder`: a fully cached run loads nothing); Ray actors need it."""
    if cfg.engine == "ray":
        from histovl.embed.ray_engine import encode_images_ray
        from histovl.errors import HistovlError

        if opts.runtime != "torch":
            raise HistovlError(f"--runtime {opts.runtime} runs with --engine local only; use --runtime torch with --engine ray")
        from histovl.models import load_model

        encoder = load_model(model, device=opts.device, trust_checkpoint=opts.trust_checkpoint)
        return encode_images_ray(
            encoder, paths, cache=store, batch_size=opts.batch_size, on_error=opts.on_error,
            address=cfg.ray_address, num_actors=cfg.ray_actors, actor_cpus=cfg.ray_actor_cpus,
        )
    from histovl.embed.encoders import open_encoder

    return encode_with_options(open_encoder(model, opts), paths, opts)  # use_cache is True: the same folder


#: Rows per Parquet row group (and per Arrow conversion) when exporting: bounded extra memory.
EXPORT_CHUNK = 65536


def export_parquet(target: Path, paths: list[str], embeddings: np.ndarray, *, chunk: int = EXPORT_CHUNK) -> None:
    """Write `path` and `embedding` (list<float32>, L2-normalised) columns atomically, streamed
    `chunk` rows at a time (`pyarrow.parquet.ParquetWriter`: one row group per chunk), so the
    extra memory is one chunk's Arrow copy, not the whole table's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32()))])
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, max(len(paths), 1), chunk):
                emb = np.ascontiguousarray(embeddings[start : start + chunk], dtype=np.float32)
                values = pa.array(emb.reshape(-1), type=pa.float32())
                col = pa.FixedSizeListArray.from_arrays(values, dim) if dim else pa.array([[]] * len(emb), pa.list_(pa.float32()))
                part = paths[start : start + chunk]
                writer.write_table(pa.table({"path": pa.array(part, pa.string()), "embedding": col.cast(pa.list_(pa.float32()))},
                                            schema=schema))

    atomic_write_with(target, write)


def skipped_list_path(export: Path) -> Path:
    """Where `embed` lists the inputs it skipped next to an export: ``<name>.skipped.csv``."""
    return export.with_name(export.stem + ".skipped.csv")


def write_skipped_list(target: Path, failures: list[Failure]) -> None:
    """``path,reason`` CSV of the skipped inputs (quoted), written atomically."""
    atomic_write_text(target, "path,reason\n" + "".join(f"{_csv(f.path)},{_csv(f.reason)}\n" for f in failures))


def _csv(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'
