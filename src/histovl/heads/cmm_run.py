"""`histovl cmm fit` / `histovl cmm eval`: train HistoCLIP's CMM head and evaluate it.

fit: data -> frozen features (tokens or pooled) + class queries from the text classifier
     -> `CMMHead.fit` -> head folder (head.safetensors, head.json, train_log.csv) plus the
     standard outputs on the training data.
     Under `torchrun` (docs/scale-out.md) the feature pass is split over the ranks and gathered,
     the head trains data-parallel (DDP; `train_batch_size` is the global batch) and rank 0
     alone evaluates and writes; every rank returns the same result.
eval: head folder -> same model and feature settings -> standard outputs on new data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from histovl._io import atomic_write_text
from histovl.data.records import ImageSet
from histovl.distributed import (
    broadcast_object,
    cleanup_distributed,
    current_context,
    init_distributed,
    run_on_shards,
    shard_bounds,
)
from histovl.errors import HistovlError
from histovl.heads.cmm import KVMode
from histovl.heads.cmm_head import CMMHead
from histovl.heads.features import TokenSource, encode_image_tokens, resolve_token_source
from histovl.models.encoder import Encoder
from histovl.zeroshot.multilabel.outputs import (
    evaluate_multilabel,
    label_matrix,
    require_multilabel,
    write_multilabel_outputs,
)


@dataclass
class CMMRunResult:
    """A fitted or evaluated head with its metrics, probabilities and timings."""

    head: CMMHead
    metrics: dict[str, Any]
    probabilities: np.ndarray
    out: Path | None
    timing_s: dict[str, float]


def cmm_features(
    encoder: Encoder,
    image_set: ImageSet,
    *,
    kv_mode: KVMode,
    tokens: TokenSource = "auto",
    grid: int = 2,
    batch_size: int = 32,
    on_error: Literal["raise", "skip"] = "raise",
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, list[bool], list[dict[str, str]]]:
    """Frozen features for the head: tokens [N, T, D] or pooled embeddings [N, D] (cached)."""
    feats, ok, failures = _path_features(
        encoder, list(image_set.paths), kv_mode=kv_mode, tokens=tokens, grid=grid, batch_size=batch_size,
        on_error=on_error, cache=cache, use_cache=use_cache, seed=seed, progress=progress, allow_empty=False,
    )
    return feats, ok, failures


def _path_features(
    encoder: Encoder,
    paths: list[Path],
    *,
    kv_mode: KVMode,
    tokens: TokenSource,
    grid: int,
    batch_size: int,
    on_error: Literal["raise", "skip"],
    cache: str | os.PathLike[str] | None,
    use_cache: bool,
    seed: int,
    progress: bool,
    allow_empty: bool,
) -> tuple[torch.Tensor, list[bool], list[dict[str, str]]]:
    if not paths and allow_empty:
        return torch.empty(0), [], []
    if kv_mode == "pooled":
        from histovl.embed import EmbeddingCache, encode_images

        res = encode_images(
            encoder, paths, cache=EmbeddingCache(cache) if use_cache else None,
            batch_size=batch_size, on_error=on_error, progress=progress, seed=seed,
        )
        return (torch.as_tensor(res.embeddings), list(map(bool, res.ok)),
                [{"path": str(f.path), "reason": f.reason} for f in res.failures])
    feats, ok, failures = encode_image_tokens(
        encoder, paths, source=tokens, grid=grid, batch_size=batch_size, on_error=on_error, allow_empty=allow_empty
    )
    return feats, ok, [{"path": p, "reason": r} for p, r in failures]


def sharded_cmm_features(
    encoder: Encoder,
    image_set: ImageSet,
    *,
    kv_mode: KVMode,
    tokens: TokenSource = "auto",
    grid: int = 2,
    batch_size: int = 32,
    on_error: Literal["raise", "skip"] = "raise",
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, list[bool], list[dict[str, str]]]:
    """`cmm_features` split over the ranks of a torchrun job, gathered on every rank.

    Rank r encodes the r-th contiguous block of the images (`shard_bounds`), so the frozen
    encoder's pass is divided by the number of processes and each image is encoded (and written
    to the cache, whose per-process shard files are safe to fill concurrently) exactly once;
    the blocks are then gathered in rank order, which is the input order. An error on any rank
    stops every rank. One process: exactly `cmm_features`.
    """
    ctx = current_context()
    if not ctx.is_distributed:
        return cmm_features(encoder, image_set, kv_mode=kv_mode, tokens=tokens, grid=grid, batch_size=batch_size,
                            on_error=on_error, cache=cache, use_cache=use_cache, seed=seed)
    start, stop = shard_bounds(len(image_set), ctx.rank, ctx.world_size)
    paths = list(image_set.paths)[start:stop]
    parts = run_on_shards(lambda: _path_features(
        encoder, paths, kv_mode=kv_mode, tokens=tokens, grid=grid, batch_size=batch_size, on_error=on_error,
        cache=cache, use_cache=use_cache, seed=seed, progress=False, allow_empty=True,
    ))
    blocks = [feats.cpu() for feats, _, _ in parts if feats.numel()]
    if not blocks:
        raise ValueError(f"none of the {len(image_set)} images could be read")
    return (torch.cat(blocks), [flag for _, ok, _ in parts for flag in ok],
            [failure for _, _, failures in parts for failure in failures])


def _load_inputs(data: Any, prompts: Any | None, allow_absolute_paths: bool) -> tuple[ImageSet, Any]:
    from histovl.data import load_image_set
    from histovl.prompts import load_prompt_set

    image_set = data if hasattr(data, "records") else load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    require_multilabel(image_set)
    prompt_set = None if prompts is None else (prompts if hasattr(prompts, "classes") else load_prompt_set(prompts))
    return image_set, prompt_set


def cmm_fit(
    model: str | Encoder,
    data: str | os.PathLike[str] | Any,
    prompts: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str] | None = None,
    *,
    kv_mode: KVMode = "tokens",
    tokens: TokenSource = "auto",
    grid: int = 2,
    epochs: int = 100,
    warmup_epochs: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    train_batch_size: int = 64,
    n_heads: int = 8,
    ffn_dim: int = 1024,
    dropout: float = 0.1,
    batch_size: int = 32,
    on_error: Literal["raise", "skip"] = "raise",
    allow_missing_classes: bool = False,
    allow_absolute_paths: bool = False,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> CMMRunResult:
    """Fit a CMM head on a multi-label set and save it (with training-set outputs) to `out`.

    Example:
        >>> r = cmm_fit("histovl-lite", "mosaics/train.csv", "lung-he-v1", "runs/cmm")  # doctest: +SKIP
        >>> cmm_eval("runs/cmm", "mosaics/test.csv", "runs/cmm-test").metrics["macc"]  # doctest: +SKIP
    """
    from histovl.data import validate_labels
    from histovl.models import load_model
    from histovl.reproducibility import seed_everything
    from histovl.zeroshot.classifier import build_text_classifier

    owns_group = not torch.distributed.is_initialized()
    ctx = init_distributed()  # one process unless started by torchrun
    if ctx.backend == "nccl":
        device = str(ctx.device)  # one GPU per rank
    seed_everything(seed)
    image_set, prompt_set = _load_inputs(data, prompts, allow_absolute_paths)
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=allow_missing_classes)
    encoder = model if isinstance(model, Encoder) else load_model(str(model), device=device, trust_checkpoint=trust_checkpoint)
    source = resolve_token_source(encoder, tokens) if kv_mode == "tokens" else "pooled"
    t0 = time.perf_counter()
    feats, ok, skipped = sharded_cmm_features(encoder, image_set, kv_mode=kv_mode, tokens=tokens, grid=grid,
                                              batch_size=batch_size, on_error=on_error, cache=cache,
                                              use_cache=use_cache, seed=seed)
    t1 = time.perf_counter()
    records = [r for r, keep in zip(image_set.records, ok, strict=True) if keep]
    clf = build_text_classifier(encoder, prompt_set, "mean")
    head = CMMHead(kv_mode=kv_mode, n_heads=n_heads, ffn_dim=ffn_dim, dropout=dropout, epochs=epochs,
                   warmup_epochs=warmup_epochs, lr=lr, weight_decay=weight_decay,
                   batch_size=train_batch_size, random_state=seed, device=device)
    head.fit(feats, label_matrix(records, class_names), class_embeddings=clf.weights, class_names=class_names)
    t2 = time.perf_counter()
    out_dir = Path(out) if out is not None else None
    metrics: dict[str, Any] = {}
    probs = np.empty(0)
    timing: dict[str, float] = {}
    if ctx.is_main:  # the head is the same on every rank: rank 0 evaluates and writes
        probs = head.predict_proba(feats)
        metrics = evaluate_multilabel(records, probs, class_names, n_boot=n_boot, seed=seed)
        timing = {"features": round(t1 - t0, 3), "fit": round(t2 - t1, 3), "total": round(time.perf_counter() - t0, 3)}
    if ctx.is_main and out_dir is not None:
        extra = {
            "model": model if isinstance(model, str) else encoder.card.name,
            "weights_id": encoder.weights_id, "card": encoder.card.to_dict(), "token_source": source,
            "grid": grid, "prompt_set": prompt_set.model_dump() if hasattr(prompt_set, "model_dump") else None,
        }
        head.save(out_dir, extra=extra)
        log = "epoch,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(head.loss_history_))
        atomic_write_text(out_dir / "train_log.csv", log)
        write_multilabel_outputs(
            out_dir, title="CMM head (training data)", command="cmm fit", metrics=metrics, records=records,
            root=image_set.root, predictions=probs >= 0.5, scores=probs, class_names=class_names,
            models=[encoder.card], prompt_set=prompt_set, seed=seed, inputs=image_set.paths, skipped=skipped,
            config={**head.get_params(), "token_source": source, "grid": grid, "data": str(image_set.source)},
            extra={"timing_s": timing, "split": "train",
                   **({"world_size": ctx.world_size} if ctx.is_distributed else {})},
        )
    # the other ranks wait here until rank 0 has written, then return the same result
    metrics, probs, timing = broadcast_object((metrics, probs, timing))
    if owns_group:
        cleanup_distributed()
    return CMMRunResult(head, metrics, probs, out_dir, timing)


def cmm_eval(
    head: str | os.PathLike[str] | CMMHead,
    data: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str] | None = None,
    *,
    model: str | Encoder | None = None,
    batch_size: int = 32,
    on_error: Literal["raise", "skip"] = "raise",
    allow_absolute_paths: bool = False,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> CMMRunResult:
    """Evaluate a saved CMM head on a multi-label set, recomputing features with its model.

    The model is the one recorded in the head folder unless `model` overrides it; its weights
    identity must match the one the head was trained on.
    """
    from histovl.data import validate_labels
    from histovl.models import load_model
    from histovl.reproducibility import seed_everything

    seed_everything(seed)
    fitted = head if isinstance(head, CMMHead) else CMMHead.load(head, device=device)
    extra = getattr(fitted, "extra_", {})
    image_set, _ = _load_inputs(data, None, allow_absolute_paths)
    class_names = list(fitted.class_names_)
    validate_labels(image_set, class_names, allow_missing_classes=True)
    spec = model if model is not None else extra.get("model")
    if spec is None:
        raise HistovlError("the head folder does not record its model; pass model=... (--model)")
    encoder = spec if isinstance(spec, Encoder) else load_model(str(spec), device=device, trust_checkpoint=trust_checkpoint)
    if extra.get("weights_id") and extra["weights_id"] != encoder.weights_id:
        raise HistovlError(
            f"the head was trained on features of weights {extra['weights_id'][:12]}…, but "
            f"{encoder.card.name} has weights {encoder.weights_id[:12]}…; evaluate with the same model"
        )
    t0 = time.perf_counter()
    tokens = extra.get("token_source", "auto")
    feats, ok, skipped = cmm_features(encoder, image_set, kv_mode=fitted.kv_mode,
                                      tokens="auto" if tokens == "pooled" else tokens,
                                      grid=int(extra.get("grid", 2)), batch_size=batch_size, on_error=on_error,
                                      cache=cache, use_cache=use_cache, seed=seed)
    t1 = time.perf_counter()
    probs = fitted.predict_proba(feats)
    records = [r for r, keep in zip(image_set.records, ok, strict=True) if keep]
    metrics = evaluate_multilabel(records, probs, class_names, n_boot=n_boot, seed=seed)
    timing = {"features": round(t1 - t0, 3), "predict": round(time.perf_counter() - t1, 3),
              "total": round(time.perf_counter() - t0, 3)}
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        write_multilabel_outputs(
            out_dir, title="CMM head evaluation", command="cmm eval", metrics=metrics, records=records,
            root=image_set.root, predictions=probs >= 0.5, scores=probs, class_names=class_names,
            models=[encoder.card], prompt_set=extra.get("prompt_set"), seed=seed, inputs=image_set.paths,
            skipped=skipped, config={"head": str(head) if not isinstance(head, CMMHead) else None,
                                     **fitted.get_params(), "data": str(image_set.source)},
            extra={"timing_s": timing, "split": "eval"},
        )
    return CMMRunResult(fitted, metrics, probs, out_dir, timing)
