"""`histovl cmm fit` / `histovl cmm eval`: train HistoCLIP's CMM head and evaluate it.

fit: data -> frozen features (tokens or pooled) + class queries from the text classifier
     -> `CMMHead.fit` -> head folder (head.safetensors, head.json, train_log.csv) plus the
     standard outputs on the training data.
     Under `torchrun` (docs/scale-out.md) the feature pass is split over the ranks and gathered,
     the head trains data-parallel (DDP; `train_batch_size` is the global batch) and rank 0
     alone evaluates and writes; every rank returns the same result.
eval: head folder -> same model and feature settings -> standard outputs on new data.

Both are named steps: `_prepare_fit` / `_prepare_eval` (every input checked, the model loaded),
`cmm_features`, `CMMHead.fit` or the loaded head, `_score`, `_write`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from histovl._io import atomic_write_text
from histovl.data.records import ImageSet
from histovl.distributed import broadcast_object, distributed_job, rank_device, run_on_blocks
from histovl.errors import HistovlError
from histovl.heads.cmm import KVMode
from histovl.heads.cmm_head import CMMHead
from histovl.heads.features import TokenSource, encode_image_tokens, resolve_token_source
from histovl.models.encoder import Encoder
from histovl.options import (
    PathArg,
    RunOptions,
    config_record,
    refuse_runtime,
    resolve_options,
    split_overrides,
)
from histovl.outputs_guard import staged_folder
from histovl.zeroshot.multilabel.outputs import (
    evaluate_multilabel,
    label_matrix,
    require_multilabel,
    write_multilabel_outputs,
)

#: The CMM commands' run options when none are given: a smaller forward batch (token features
#: of a ViT are larger than pooled embeddings).
CMM_OPTIONS = RunOptions(batch_size=32)


@dataclass(frozen=True)
class CmmFeatures:
    """Which frozen features the head reads.

    Attributes:
        kv_mode: ``tokens`` (per-image tokens [N, T, D]) or ``pooled`` (embeddings [N, D], the
            paper's form; read through the embedding cache).
        tokens: token source for ``tokens``: ViT ``patch`` tokens, ``crops``, or ``auto``.
        grid: token grid (patch pooling or crops per side).
    """

    kv_mode: KVMode = "tokens"
    tokens: TokenSource = "auto"
    grid: int = 2


#: Why cmm fit / eval encode with torch only (one line of their refusal; docs/runtime.md).
CMM_NO_RUNTIME = ("its default features are the encoder's patch tokens, which the ONNX towers (pooled embeddings "
                  "only) do not output")


@dataclass(frozen=True)
class CmmFitConfig:
    """What `histovl cmm fit` trains (the run options are in `RunOptions`).

    Attributes:
        kv_mode, tokens, grid: the features (`CmmFeatures`).
        epochs, warmup_epochs, lr, weight_decay: the head's optimisation (AdamW, warm-up then cosine).
        train_batch_size: images per head training step (the global batch under torchrun).
        n_heads, ffn_dim, dropout: the decoder block (`CMMHead`).
        allow_missing_classes: allow prompt-set classes with no images.
    """
    NO_RUNTIME_REASON: ClassVar[str] = CMM_NO_RUNTIME  # docs/runtime.md

    kv_mode: KVMode = "tokens"
    tokens: TokenSource = "auto"
    grid: int = 2
    epochs: int = 100
    warmup_epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    train_batch_size: int = 64
    n_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    allow_missing_classes: bool = False

    @property
    def features(self) -> CmmFeatures:
        return CmmFeatures(self.kv_mode, self.tokens, self.grid)

    def new_head(self, *, seed: int, device: str) -> CMMHead:
        """An unfitted `CMMHead` with these hyper-parameters."""
        return CMMHead(kv_mode=self.kv_mode, n_heads=self.n_heads, ffn_dim=self.ffn_dim, dropout=self.dropout,
                       epochs=self.epochs, warmup_epochs=self.warmup_epochs, lr=self.lr, weight_decay=self.weight_decay,
                       batch_size=self.train_batch_size, random_state=seed, device=device)


@dataclass
class CMMRunResult:
    """A fitted or evaluated head with its metrics, probabilities and timings."""

    head: CMMHead
    metrics: dict[str, Any]
    probabilities: np.ndarray
    out: Path | None
    timing_s: dict[str, float]


Features = tuple[torch.Tensor, list[bool], list[dict[str, str]]]
"""(features of the readable images, ok flag per input image, skipped ``{"path", "reason"}``)."""


def cmm_features(encoder: Encoder, image_set: ImageSet, features: CmmFeatures, options: RunOptions) -> Features:
    """Frozen features for the head: tokens [N, T, D] or pooled embeddings [N, D] (cached).

    In a torchrun job rank r encodes the r-th contiguous block of the images (`run_on_blocks`),
    so the frozen encoder's pass is divided by the number of processes and each image is
    encoded (and written to the cache, whose per-process shard files are safe to fill
    concurrently) exactly once; the blocks are gathered in rank order, which is the input
    order, on every rank. An error on any rank stops every rank. One process: one pass.
    """
    paths = list(image_set.paths)
    parts = run_on_blocks(len(paths), lambda start, stop: _path_features(encoder, paths[start:stop], features, options))
    blocks = [feats.cpu() for feats, _, _ in parts if feats.numel()]
    if not blocks:
        raise ValueError(f"none of the {len(paths)} images could be read")
    return (torch.cat(blocks), [flag for _, ok, _ in parts for flag in ok],
            [failure for _, _, failures in parts for failure in failures])


def _path_features(encoder: Encoder, paths: list[Path], features: CmmFeatures, opts: RunOptions) -> Features:
    """One block's features; an empty block, or one with no readable image, gives an empty tensor."""
    if not paths:
        return torch.empty(0), [], []
    if features.kv_mode == "pooled":
        from histovl.embed import cache_for, encode_images

        res = encode_images(encoder, paths, cache=cache_for(opts), batch_size=opts.batch_size, num_workers=opts.workers,
                            on_error=opts.on_error, progress=False, seed=opts.seed)
        return (torch.as_tensor(res.embeddings), list(map(bool, res.ok)),
                [{"path": str(f.path), "reason": f.reason} for f in res.failures])
    feats, ok, failures = encode_image_tokens(encoder, paths, source=features.tokens, grid=features.grid,
                                              batch_size=opts.batch_size, on_error=opts.on_error, allow_empty=True)
    return feats, ok, [{"path": p, "reason": r} for p, r in failures]


@dataclass
class _Inputs:
    """Every input of a run, loaded and checked."""

    image_set: ImageSet
    class_names: list[str]
    encoder: Encoder
    prompt_set: Any


@dataclass
class _Scored:
    """The readable images' records, probabilities and metrics."""

    records: list[Any]
    probs: np.ndarray
    metrics: dict[str, Any]
    skipped: list[dict[str, str]]


def _load_set(data: Any, opts: RunOptions) -> ImageSet:
    from histovl.data import load_image_set

    image_set = load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    require_multilabel(image_set)
    return image_set


def _score(head: CMMHead, feats: torch.Tensor, image_set: ImageSet, ok: list[bool], skipped: list[dict[str, str]],
           class_names: list[str], opts: RunOptions) -> _Scored:
    probs = head.predict_proba(feats)
    records = [r for r, keep in zip(image_set.records, ok, strict=True) if keep]
    return _Scored(records, probs, evaluate_multilabel(records, probs, class_names, n_boot=opts.n_boot, seed=opts.seed), skipped)


def _write(out_dir: Path, inputs: _Inputs, scored: _Scored, opts: RunOptions, *, title: str, command: str,
           config: dict[str, Any], extra: dict[str, Any]) -> None:
    """metrics.json, predictions.csv, run.json and report.html (the multilabel outputs)."""
    write_multilabel_outputs(
        out_dir, title=title, command=command, metrics=scored.metrics, records=scored.records,
        root=inputs.image_set.root, predictions=scored.probs >= 0.5, scores=scored.probs,
        class_names=inputs.class_names, models=[inputs.encoder.card], prompt_set=inputs.prompt_set, seed=opts.seed,
        inputs=inputs.image_set.paths, skipped=scored.skipped,
        config={**config, **opts.record(), "data": str(inputs.image_set.source)}, extra=extra,
    )


# ---- fit -----------------------------------------------------------------------------------------


def cmm_fit(
    model: str | Encoder, data: PathArg | Any, prompts: PathArg | Any, out: PathArg | None = None,
    config: CmmFitConfig | None = None, options: RunOptions | None = None, **overrides: Any,
) -> CMMRunResult:
    """Fit a CMM head on a multi-label set and save it (with training-set outputs) to `out`.

    Args:
        model: a model spec or a loaded `Encoder`.
        data: a multi-label manifest (a ``labels`` column) or an `ImageSet`.
        prompts: a prompt-set name, YAML path or `PromptSet` (the class queries).
        out: the head folder; None fits without writing.
        config: what to train (`CmmFitConfig`).
        options: the shared run options (default `CMM_OPTIONS`: forward batches of 32).
        overrides: fields of either, as keywords (``epochs=50``, ``n_boot=0``).

    Example:
        >>> r = cmm_fit("histovl-lite", "mosaics/train.csv", "lung-he-v1", "runs/cmm")  # doctest: +SKIP
        >>> cmm_eval("runs/cmm", "mosaics/test.csv", "runs/cmm-test").metrics["macc"]  # doctest: +SKIP
    """
    from histovl.reproducibility import seed_everything
    from histovl.zeroshot.classifier import build_text_classifier

    cfg, opts = split_overrides(overrides, config, CmmFitConfig, options if options is not None else CMM_OPTIONS)
    out_dir = Path(out) if out is not None else None
    with distributed_job() as ctx:
        opts = opts.replace(device=rank_device(ctx, opts.device))
        seed_everything(opts.seed)
        inputs = _prepare_fit(model, data, prompts, cfg, opts)
        source = resolve_token_source(inputs.encoder, cfg.tokens) if cfg.kv_mode == "tokens" else "pooled"
        t0 = time.perf_counter()
        feats, ok, skipped = cmm_features(inputs.encoder, inputs.image_set, cfg.features, opts)
        t1 = time.perf_counter()
        records = [r for r, keep in zip(inputs.image_set.records, ok, strict=True) if keep]
        clf = build_text_classifier(inputs.encoder, inputs.prompt_set, "mean")
        head = cfg.new_head(seed=opts.seed, device=opts.device).fit(
            feats, label_matrix(records, inputs.class_names), class_embeddings=clf.weights, class_names=inputs.class_names)
        t2 = time.perf_counter()
        result: tuple[dict[str, Any], np.ndarray, dict[str, float]] = ({}, np.empty(0), {})
        if ctx.is_main:  # the head is the same on every rank: rank 0 evaluates and writes
            scored = _score(head, feats, inputs.image_set, ok, skipped, inputs.class_names, opts)
            timing = {"features": round(t1 - t0, 3), "fit": round(t2 - t1, 3), "total": round(time.perf_counter() - t0, 3)}
            if out_dir is not None:
                _write_fit(out_dir, model, head, inputs, scored, cfg, opts, source, timing, ctx.world_size)
            result = (scored.metrics, scored.probs, timing)
        # the other ranks wait here until rank 0 has written, then return the same result
        metrics, probs, timing = broadcast_object(result)
    return CMMRunResult(head, metrics, probs, out_dir, timing)


def _prepare_fit(model: Any, data: Any, prompts: Any, cfg: CmmFitConfig, opts: RunOptions) -> _Inputs:
    """Load and check the data and prompts, then load the model."""
    from histovl.data import validate_labels
    from histovl.models import load_model
    from histovl.prompts import load_prompt_set

    image_set = _load_set(data, opts)
    prompt_set = load_prompt_set(prompts)
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=cfg.allow_missing_classes)
    encoder = load_model(model, device=opts.device, trust_checkpoint=opts.trust_checkpoint)
    return _Inputs(image_set, class_names, encoder, prompt_set)


def _write_fit(out_dir: Path, *args: Any) -> None:
    """The head folder, staged: it replaces `out_dir` as a whole (docs/reliability.md)."""
    with staged_folder(out_dir) as stage:
        _write_fit_files(stage, *args)


def _write_fit_files(out_dir: Path, model: Any, head: CMMHead, inputs: _Inputs, scored: _Scored, cfg: CmmFitConfig,
                     opts: RunOptions, source: str, timing: dict[str, float], world_size: int) -> None:
    """The head folder (what `cmm eval` needs to rebuild the features) and the training-set outputs."""
    encoder, prompt_set = inputs.encoder, inputs.prompt_set
    head.save(out_dir, extra={
        "model": model if isinstance(model, str) else encoder.card.name,
        "weights_id": encoder.weights_id, "card": encoder.card.to_dict(), "token_source": source,
        "grid": cfg.grid, "prompt_set": prompt_set.model_dump() if hasattr(prompt_set, "model_dump") else None,
    })
    log = "epoch,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(head.loss_history_))
    atomic_write_text(out_dir / "train_log.csv", log)
    _write(out_dir, inputs, scored, opts, title="CMM head (training data)", command="cmm fit",
           config={**config_record(cfg), "token_source": source},
           extra={"timing_s": timing, "split": "train", **({"world_size": world_size} if world_size > 1 else {})})


# ---- eval ----------------------------------------------------------------------------------------


def cmm_eval(
    head: PathArg | CMMHead, data: PathArg | Any, out: PathArg | None = None,
    options: RunOptions | None = None, *, model: str | Encoder | None = None, **overrides: Any,
) -> CMMRunResult:
    """Evaluate a saved CMM head on a multi-label set, recomputing features with its model.

    The model is the one recorded in the head folder unless `model` overrides it; its weights
    identity must match the one the head was trained on. `options` (default `CMM_OPTIONS`) and
    its fields as keywords (``n_boot=0``) as in `cmm_fit`.
    """
    from histovl.reproducibility import seed_everything

    opts = resolve_options(options if options is not None else CMM_OPTIONS, **overrides)
    refuse_runtime(opts, "cmm eval", CMM_NO_RUNTIME)
    seed_everything(opts.seed)
    fitted = head if isinstance(head, CMMHead) else CMMHead.load(head, device=opts.device)
    inputs = _prepare_eval(fitted, data, model, opts)
    extra = getattr(fitted, "extra_", {})
    recorded = extra.get("token_source", "auto")
    features = CmmFeatures(fitted.kv_mode, "auto" if recorded == "pooled" else recorded, int(extra.get("grid", 2)))
    t0 = time.perf_counter()
    feats, ok, skipped = cmm_features(inputs.encoder, inputs.image_set, features, opts)
    t1 = time.perf_counter()
    scored = _score(fitted, feats, inputs.image_set, ok, skipped, inputs.class_names, opts)
    timing = {"features": round(t1 - t0, 3), "predict": round(time.perf_counter() - t1, 3),
              "total": round(time.perf_counter() - t0, 3)}
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        _write(out_dir, inputs, scored, opts, title="CMM head evaluation", command="cmm eval",
               config={"head": str(head) if not isinstance(head, CMMHead) else None, "head_params": fitted.get_params(),
                       "token_source": recorded, "grid": features.grid},
               extra={"timing_s": timing, "split": "eval"})
    return CMMRunResult(fitted, scored.metrics, scored.probs, out_dir, timing)


def _prepare_eval(fitted: CMMHead, data: Any, model: str | Encoder | None, opts: RunOptions) -> _Inputs:
    """The data checked against the head's classes, and the head's model (or `model`, same weights)."""
    from histovl.data import validate_labels
    from histovl.models import load_model

    extra = getattr(fitted, "extra_", {})
    image_set = _load_set(data, opts)
    class_names = list(fitted.class_names_)
    validate_labels(image_set, class_names, allow_missing_classes=True)
    spec = model if model is not None else extra.get("model")
    if spec is None:
        raise HistovlError("the head folder does not record its model; pass model=... (--model)")
    encoder = load_model(spec, device=opts.device, trust_checkpoint=opts.trust_checkpoint)
    if extra.get("weights_id") and extra["weights_id"] != encoder.weights_id:
        raise HistovlError(
            f"the head was trained on features of weights {extra['weights_id'][:12]}…, but "
            f"{encoder.card.name} has weights {encoder.weights_id[:12]}…; evaluate with the same model"
        )
    return _Inputs(image_set, class_names, encoder, extra.get("prompt_set"))
