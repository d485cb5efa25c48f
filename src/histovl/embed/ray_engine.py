"""`histovl embed --engine ray`: Ray Data decodes on CPU workers, model actors encode.

The same content keys, preprocessing and cache namespaces as the local engine, so a run can be
interrupted under one engine and resumed under the other, and both give the same embeddings.
Ray is an optional extra (`pip install 'histovl[ray]'`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from histovl.embed.cache import CacheNamespace, EmbeddingCache, content_keys
from histovl.embed.engine import OnError, encode_pixels
from histovl.embed.fill import CacheFill, EmbeddingResult, cache_namespace
from histovl.errors import HistovlError, ImageReadError
from histovl.models.encoder import Encoder
from histovl.models.preprocess import Preprocess


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise HistovlError("the Ray engine needs Ray: pip install 'histovl[ray]' (or use --engine local)") from err
    return ray


def _decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess) -> dict[str, Any]:
    """Ray Data batch function: paths -> normalised pixel arrays (errors carried as strings).

    A plain function, so Ray runs it as stateless tasks on as many CPUs as the cluster has,
    instead of a fixed pool of decode actors.
    """
    from histovl.data import read_rgb

    torch.set_num_threads(1)
    pixels, errors = [], []
    for p in batch["path"]:
        try:
            pixels.append(preprocess(read_rgb(str(p))).numpy())
            errors.append("")
        except ImageReadError as err:
            pixels.append(np.zeros((3, preprocess.image_size, preprocess.image_size), np.float32))
            errors.append(err.reason)
    return {"index": batch["index"], "pixels": np.stack(pixels), "error": np.array(errors, dtype=object)}


class _EncodeActor:
    """One model load per actor; encodes batches of pixels."""

    def __init__(self, encoder_ref: Any, batch_size: int, threads: int = 1) -> None:
        import ray

        torch.set_num_threads(max(1, threads))  # the CPUs Ray reserved for this actor

        # The encoder travels once through the object store; each actor fetches it once.
        self.encoder: Encoder = ray.get(encoder_ref) if isinstance(encoder_ref, ray.ObjectRef) else encoder_ref
        self.batch_size = batch_size
        self.encoder.eval()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ok = np.array([e == "" for e in batch["error"]], dtype=bool)
        dim = self.encoder.card.embed_dim
        emb = np.zeros((len(ok), dim), np.float32)
        if ok.any():
            emb[ok], _ = encode_pixels(self.encoder, torch.as_tensor(batch["pixels"][ok]), self.batch_size)
        return {"index": batch["index"], "embedding": emb, "error": batch["error"]}


def encode_images_ray(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    *,
    cache: EmbeddingCache | CacheNamespace | None = None,
    batch_size: int = 64,
    on_error: OnError = "raise",
    address: str | None = None,
    num_actors: int = 1,
    actor_cpus: int = 1,
    num_cpus: int | None = None,
) -> EmbeddingResult:
    """Like `histovl.embed.encode_images`, on Ray: CPU decode tasks + encoder actors.

    Args:
        address: a Ray cluster to join; None starts (or reuses) a local Ray instance.
        num_actors: encoder actors (each loads the model once; one GPU each when CUDA exists).
        actor_cpus: CPUs reserved per encoder actor, and its torch threads (CPU encoding on a
            big node: give the actors most cores; decode tasks use the rest).
        num_cpus: CPUs of the local Ray instance started when `address` is None.

    Example:
        >>> encode_images_ray(load_model("histovl-lite"), paths, cache=EmbeddingCache("c"))  # doctest: +SKIP
    """
    ray = _require_ray()
    str_paths = [os.fspath(p) for p in paths]
    fill = CacheFill(str_paths, content_keys(str_paths), cache_namespace(encoder, cache, None), on_error=on_error)
    todo = fill.missing()
    if todo:
        _start_ray(ray, address=address, num_cpus=num_cpus, num_actors=num_actors, actor_cpus=actor_cpus)
        with fill.flushing():
            for batch in _encoded_batches(ray, encoder, [(i, str_paths[i]) for i in todo], batch_size=batch_size,
                                          num_actors=num_actors, actor_cpus=actor_cpus):
                _take_batch(fill, batch)
    return fill.result(batch_size_used=batch_size)


def _start_ray(ray: Any, *, address: str | None, num_cpus: int | None, num_actors: int, actor_cpus: int) -> None:
    """Join (or start) Ray, and refuse actor sizes that would leave no CPU for decoding."""
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if num_actors * actor_cpus + 1 > cpus:  # decode tasks need at least one CPU, or nothing moves
        raise ValueError(
            f"{num_actors} encoder actor(s) x {actor_cpus} CPU(s) leave no CPU for decoding on a Ray cluster "
            f"with {cpus:g} CPUs; lower --ray-actors/--ray-actor-cpus (at most {max(0, int(cpus) - 1)} CPUs in all)"
        )


def _encoded_batches(
    ray: Any, encoder: Encoder, items: list[tuple[int, str]], *, batch_size: int, num_actors: int, actor_cpus: int
) -> Iterator[dict[str, Any]]:
    """The Ray Data pipeline: stateless decode tasks, then encoder actors; batches as they finish."""
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in items])
    ds = ds.map_batches(_decode_batch, fn_kwargs={"preprocess": encoder.preprocess}, batch_size=batch_size, num_cpus=1)
    gpus = 1 if torch.cuda.is_available() else 0
    ds = ds.map_batches(
        _EncodeActor, fn_constructor_args=(ray.put(encoder), batch_size, actor_cpus), batch_size=batch_size,
        concurrency=num_actors, num_gpus=gpus, num_cpus=actor_cpus,
    )
    batches: Iterator[dict[str, Any]] = ds.iter_batches(batch_size=batch_size, batch_format="numpy")
    return batches


def _take_batch(fill: CacheFill, batch: dict[str, Any]) -> None:
    """Record one encoded batch: failures by on_error, embeddings into the rows and the cache."""
    idx = [int(i) for i in batch["index"]]
    good = [j for j, e in enumerate(batch["error"]) if e == ""]
    for j, e in enumerate(batch["error"]):
        if e != "":
            fill.fail(idx[j], str(e))
    emb = np.asarray(batch["embedding"], dtype=np.float32)[good]
    fill.store([idx[j] for j in good], emb)
