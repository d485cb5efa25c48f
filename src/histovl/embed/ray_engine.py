"""`histovl embed --engine ray`: Ray Data decodes on CPU workers, model actors encode.

The same content keys, preprocessing and cache namespaces as the local engine, so a run can be
interrupted under one engine and resumed under the other, and both give the same embeddings.
Ray is an optional extra (`pip install 'histovl[ray]'`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from histovl.embed.cache import CacheNamespace, EmbeddingCache, content_keys
from histovl.embed.engine import (
    EmbeddingResult,
    Failure,
    OnError,
    check_finite,
    encode_batch_with_backoff,
)
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
            with torch.inference_mode():
                feats, _ = encode_batch_with_backoff(self.encoder.encode_image, torch.as_tensor(batch["pixels"][ok]), self.batch_size)
            emb[ok] = feats.cpu().numpy()
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
    ns = (
        cache.namespace(weights_id=encoder.weights_id, preprocessing=encoder.card.preprocessing_key(), meta={"model": encoder.card.name})
        if isinstance(cache, EmbeddingCache)
        else cache
    )
    keys = content_keys(str_paths)
    out: list[np.ndarray | None] = [None] * len(str_paths)
    failures: dict[int, str] = {i: "file missing or unreadable" for i, k in enumerate(keys) if k is None}
    n_cached = 0
    if ns is not None:
        hit, rows = ns.get(keys)
        for hit_index, row in zip(np.flatnonzero(hit), rows, strict=True):
            out[int(hit_index)] = row
        n_cached = int(hit.sum())
    if failures and on_error == "raise":
        first = min(failures)
        raise ImageReadError(str_paths[first], failures[first])
    todo = [i for i in range(len(str_paths)) if out[i] is None and i not in failures]

    if todo:
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if num_actors * actor_cpus + 1 > cpus:  # decode tasks need at least one CPU, or nothing moves
            raise ValueError(
                f"{num_actors} encoder actor(s) x {actor_cpus} CPU(s) leave no CPU for decoding on a Ray cluster "
                f"with {cpus:g} CPUs; lower --ray-actors/--ray-actor-cpus (at most {max(0, int(cpus) - 1)} CPUs in all)"
            )
        ds = ray.data.from_items([{"index": i, "path": str_paths[i]} for i in todo])
        ds = ds.map_batches(_decode_batch, fn_kwargs={"preprocess": encoder.preprocess}, batch_size=batch_size, num_cpus=1)
        gpus = 1 if torch.cuda.is_available() else 0
        ds = ds.map_batches(
            _EncodeActor, fn_constructor_args=(ray.put(encoder), batch_size, actor_cpus), batch_size=batch_size,
            concurrency=num_actors, num_gpus=gpus, num_cpus=actor_cpus,
        )
        try:
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                idx = [int(i) for i in batch["index"]]
                good = [j for j, e in enumerate(batch["error"]) if e == ""]
                for j, e in enumerate(batch["error"]):
                    if e != "":
                        if on_error == "raise":
                            raise ImageReadError(str_paths[idx[j]], str(e))
                        failures[idx[j]] = str(e)
                emb = np.asarray(batch["embedding"], dtype=np.float32)[good]
                check_finite(emb, [str_paths[idx[j]] for j in good])
                for row, j in zip(emb, good, strict=True):
                    out[idx[j]] = row
                if ns is not None and good:
                    ns.put([keys[idx[j]] for j in good], emb)  # type: ignore[misc]
        finally:
            if ns is not None:
                ns.flush()

    ok = np.array([o is not None for o in out], dtype=bool)
    rows_ok = [o for o in out if o is not None]
    dim = rows_ok[0].shape[0] if rows_ok else 0
    return EmbeddingResult(
        embeddings=np.stack(rows_ok) if rows_ok else np.zeros((0, dim), np.float32),
        ok=ok,
        failures=[Failure(str_paths[i], r) for i, r in sorted(failures.items())],
        n_cached=n_cached,
        n_encoded=len(todo) - sum(1 for i in todo if i in failures),
        batch_size_used=batch_size,
    )
