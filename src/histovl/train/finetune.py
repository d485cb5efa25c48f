"""`finetune`: contrastive fine-tuning of any registered model on image-caption pairs.

The loop is written so `torchrun` + DDP can run it unchanged: each rank takes a strided shard of
the epoch's permutation (`DistributedHooks`), embeddings are all-gathered before the loss (the
losses take full-batch embeddings), and only rank 0 writes files. A frozen tower's backbone
features are computed once and cached (`histovl.train.features`), which is what makes CPU
training of histovl-lite practical.

Example:
    >>> result = finetune("histovl-lite", "tiles/", "runs/ft", loss="his2lip", epochs=5)  # doctest: +SKIP
    >>> load_model("runs/ft")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from histovl._io import atomic_write_json, atomic_write_text
from histovl.distributed import (
    ForwardThrough,
    all_gather_object,
    all_gather_with_grad,
    barrier,
    cleanup_distributed,
    current_context,
    gradient_sync,
    init_distributed,
    run_on_shards,
    shard_bounds,
    shard_indices,
    wrap_ddp,
)
from histovl.embed.engine import encode_batch_with_backoff
from histovl.models.encoder import Encoder
from histovl.reproducibility import seed_everything
from histovl.train.captions import CaptionTemplates, load_caption_templates, sample_captions
from histovl.train.checkpoint import load_checkpoint, save_checkpoint
from histovl.train.features import (
    SplitTowers,
    backbone_text_features,
    extract_image_features,
    image_loader,
    log_logit_scale_parameter,
    parameter_groups,
    unreadable_images,
)
from histovl.train.losses import His2LipWeights, get_loss
from histovl.train.validation import zero_shot_scores

TrainMode = Literal["all", "projections", "lock-image", "lock-text"]
MODE_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("image", "text", "image_projection", "text_projection", "logit_scale"),
    "projections": ("image_projection", "text_projection", "logit_scale"),
    "lock-image": ("text", "text_projection", "logit_scale"),
    "lock-text": ("image", "image_projection", "logit_scale"),
}
MAX_LOG_SCALE = math.log(100.0)
LOG_FILE = "train_log.csv"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that changes a fine-tuning run (recorded in ``finetune.json``).

    Attributes:
        loss: ``clip`` or ``his2lip``.
        epochs, batch_size, lr, weight_decay: the usual; batch_size is per optimizer micro-step.
        accumulation: micro-batches per optimizer step (each micro-batch is its own contrastive
            batch; gradients are summed).
        warmup_fraction: share of optimizer steps with linear warm-up before the cosine decay.
        train: which parameters learn (`MODE_GROUPS`).
        seed: drives shuffling, caption sampling and initialisation.
        his2lip: weights of the his2lip loss.
        grad_clip: max global gradient norm (0 disables).
    """

    loss: str = "his2lip"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    accumulation: int = 1
    warmup_fraction: float = 0.1
    train: TrainMode = "projections"
    seed: int = 0
    his2lip: His2LipWeights = field(default_factory=His2LipWeights)
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        get_loss(self.loss)
        if self.train not in MODE_GROUPS:
            raise ValueError(f"train must be one of {sorted(MODE_GROUPS)}, got {self.train!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.accumulation < 1:
            raise ValueError("epochs >= 1, batch_size >= 2 and accumulation >= 1 are required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DistributedHooks:
    """Process layout for DDP (defaults: one process). `all_gather` concatenates over ranks."""

    rank: int = 0
    world_size: int = 1
    all_gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class FinetuneResult:
    """The output directory (a loadable model), the per-epoch log and the trained encoder."""

    out: Path
    log: pd.DataFrame
    encoder: Encoder


def _resolve_encoder(model: str | Encoder) -> Encoder:
    if isinstance(model, Encoder):
        return model
    from histovl.models import load_model

    return load_model(model)


def _resolve_set(data: Any, allow_absolute_paths: bool = False) -> Any:
    if hasattr(data, "records"):
        return data
    from histovl.data import load_image_set

    return load_image_set(data, allow_absolute_paths=allow_absolute_paths)


def _pairs_from_set(image_set: Any, templates: CaptionTemplates) -> tuple[list[str] | None, list[str] | None]:
    """Fixed captions from a `caption` column, or None (captions are drawn from labels per epoch)."""
    captions = image_set.extra_column("caption") if hasattr(image_set, "extra_column") else [None] * len(image_set)
    if all(c for c in captions):
        labels = image_set.labels if image_set.has_labels else None
        return [str(c) for c in captions], labels
    if not image_set.has_labels:
        raise ValueError(f"{image_set.source}: give a `caption` column or labels (to caption through templates)")
    return None, list(image_set.labels)


def lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to zero, as a multiplier of the base learning rate."""
    warmup = max(1, int(round(total_steps * warmup_fraction))) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def finetune(
    model: str | Encoder,
    data: Any,
    out: str | os.PathLike[str],
    *,
    config: FinetuneConfig | None = None,
    val_data: Any = None,
    val_prompts: Any = None,
    caption_templates: str | Path | None = None,
    resume: bool = False,
    feature_cache: str | Path | None = None,
    num_workers: int = 0,
    allow_absolute_paths: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    hooks: DistributedHooks | None = None,
    progress: Callable[[str], None] | None = print,
) -> FinetuneResult:
    """Fine-tune `model` contrastively on `data`; write a loadable model dir to `out`.

    Args:
        model: registry name, spec, model dir or an `Encoder`.
        data: class folder, CSV manifest or `ImageSet`; captions come from a `caption` column,
            else from the labels through `caption_templates` (the shipped file by default).
        out: output directory: the model (via `save_model_dir`), ``train_log.csv``,
            ``checkpoint.pt`` (atomic, each epoch) and ``finetune.json``.
        config: hyper-parameters (`FinetuneConfig()` by default).
        val_data, val_prompts: optional labelled validation set and prompt set (name, path or
            `PromptSet`); zero-shot macro F1 on it is logged each epoch.
        resume: continue from ``out/checkpoint.pt`` (same config required); the result equals
            an uninterrupted run.
        feature_cache: folder to keep frozen-backbone image features between runs.
        num_workers: image decode workers.
        allow_absolute_paths: accept manifest paths outside the manifest's folder.
        on_error: ``"raise"`` stops at the first unreadable image with `ImageReadError` naming
            it (checkpoints of finished epochs are kept); ``"skip"`` drops its image-caption
            pair from training (or its image from validation) and lists it, with the reason,
            under ``skipped`` in ``finetune.json``. The skip decision is made once, before the
            first epoch: in the backbone-feature pass when the image tower is frozen, else in a
            decode-only pass over the images (sharded over torchrun ranks and gathered, so every
            rank drops the same pairs).
        hooks: DDP process layout; by default read from the torchrun environment
            (`histovl.distributed`), i.e. one process unless started by torchrun. Under
            torchrun, `config.batch_size` is the global batch, split evenly across ranks.
        progress: called with one line per epoch (None for silence).
    """
    cfg = config or FinetuneConfig()
    owns_group = hooks is None and not torch.distributed.is_initialized()
    ctx = init_distributed() if hooks is None else None
    if ctx is not None:
        hooks = DistributedHooks(ctx.rank, ctx.world_size, all_gather_with_grad) if ctx.is_distributed else DistributedHooks()
    dist = cast(DistributedHooks, hooks)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch size {cfg.batch_size} (global) must divide evenly over {dist.world_size} processes")
    local_batch = cfg.batch_size // dist.world_size
    out_dir = Path(out)
    seed_everything(cfg.seed)
    encoder = _resolve_encoder(model)
    if ctx is not None and ctx.backend == "nccl":
        encoder.to(ctx.device)  # one GPU per rank
    image_set = _resolve_set(data, allow_absolute_paths)
    templates = load_caption_templates(caption_templates)
    fixed_captions, labels = _pairs_from_set(image_set, templates)
    val_inputs = _check_validation(val_data, val_prompts, allow_absolute_paths)  # before any feature pass

    trainable = set(MODE_GROUPS[cfg.train])
    split = isinstance(encoder, SplitTowers)
    towers = cast(SplitTowers, encoder)
    cache_images = split and "image" not in trainable
    cache_texts = split and "text" not in trainable
    all_paths = list(image_set.paths)
    image_feats, failures, feature_batch = _train_features(encoder, all_paths, cache_images, num_workers, feature_cache, on_error)
    keep = [i for i in range(len(all_paths)) if i not in failures]
    paths = [all_paths[i] for i in keep]
    if failures:
        fixed_captions = None if fixed_captions is None else [fixed_captions[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
        image_feats = None if image_feats is None else image_feats[keep]
    skipped = [{"path": str(all_paths[i]), "reason": r, "split": "train"} for i, r in sorted(failures.items())]
    if len(paths) < 2:
        raise ValueError(
            f"{len(paths)} of {len(all_paths)} training images could be read; contrastive training needs at least 2 "
            f"(first unreadable: {skipped[0]['path'] if skipped else 'none'})"
        )
    tissue_ids = stain_ids = None
    if labels is not None and all(lab in templates.labels for lab in labels):
        t_np, s_np = templates.metadata_ids(labels)
        tissue_ids, stain_ids = torch.from_numpy(t_np), torch.from_numpy(s_np)
    elif labels is not None:  # labels without template entries: same label = same "tissue"
        classes = sorted(set(labels))
        tissue_ids = torch.tensor([classes.index(lab) for lab in labels])

    groups = parameter_groups(encoder)
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in trainable)
    params = [p for name in MODE_GROUPS[cfg.train] for p in groups[name]]
    log_scale = log_logit_scale_parameter(encoder)
    if hasattr(encoder, "trained_backbone_prefixes"):
        encoder.trained_backbone_prefixes = tuple(  # type: ignore[assignment]
            prefix for grp, prefix in (("image", "image_backbone."), ("text", "text_backbone.")) if grp in trainable
        )
    encoder.eval()  # BatchNorm statistics and dropout stay as pretrained (small CPU batches)

    val = None
    if val_inputs is not None and dist.is_main:
        val = _prepare_validation(encoder, val_inputs[0], val_inputs[1], cache_images, num_workers, feature_cache, on_error)
        skipped += val.skipped
    if skipped and progress is not None and dist.is_main:
        progress(f"skipped {len(skipped)} unreadable image(s) (listed in finetune.json), first: "
                 f"{skipped[0]['path']} ({skipped[0]['reason']})")

    n = len(paths)
    shard = max(1, math.ceil(n / dist.world_size))
    micro_per_epoch = math.ceil(shard / local_batch)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.accumulation)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * cfg.epochs, cfg.warmup_fraction))
    loss_fn = get_loss(cfg.loss)

    rows: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        start_epoch, rows = load_checkpoint(ckpt_path, encoder, optimizer, scheduler, cfg.to_dict())

    text_cache: dict[str, torch.Tensor] = {}

    def text_embed(captions: Sequence[str]) -> torch.Tensor:
        if not cache_texts:
            return encoder.encode_text(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in text_cache]
        if missing:
            for c, f in zip(missing, backbone_text_features(towers, missing), strict=True):
                text_cache[c] = f
        feats = torch.stack([text_cache[c] for c in captions]).to(encoder.device)
        return nn.functional.normalize(towers.project_text(feats).float(), dim=-1)

    def image_embed(idx: torch.Tensor) -> torch.Tensor:
        if image_feats is not None:
            feats = image_feats[idx].to(encoder.device)
            return nn.functional.normalize(towers.project_image(feats).float(), dim=-1)
        pixels = next(iter(image_loader([paths[int(i)] for i in idx], encoder.preprocess, len(idx), 0)))
        return encoder.encode_image(pixels)

    def embed_pairs(idx: torch.Tensor, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return image_embed(idx), text_embed(captions), log_scale.clamp(max=MAX_LOG_SCALE).exp()

    # DDP averages gradients over ranks; with the gathered loss that is the global-batch gradient.
    # Whole towers may hold parameters a family's forward never touches: let DDP look for them.
    step = wrap_ddp(ForwardThrough(encoder, embed_pairs), find_unused_parameters=cfg.train != "projections")

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        order = shard_indices(order, dist.rank, dist.world_size)
        captions = fixed_captions or sample_captions(templates, labels or [], seed=cfg.seed * 7_919 + epoch)
        total, count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for micro, start in enumerate(range(0, len(order), local_batch)):
            idx = order[start : start + local_batch]
            if len(idx) * dist.world_size < 2:
                continue
            last = (micro + 1) % cfg.accumulation == 0 or start + local_batch >= len(order)
            with gradient_sync(step, last):  # DDP all-reduces only on the optimizer's micro-step
                img, txt, scale = step(idx, [captions[int(i)] for i in idx])
                img, txt = dist.all_gather(img), dist.all_gather(txt)
                gathered = dist.all_gather(idx)
                extra: dict[str, Any] = {}
                if cfg.loss == "his2lip":
                    extra = {
                        "tissue": None if tissue_ids is None else tissue_ids[gathered].to(img.device),
                        "stain": None if stain_ids is None else stain_ids[gathered].to(img.device),
                        "weights": cfg.his2lip,
                    }
                loss = loss_fn(img, txt, scale, **extra)
                (loss / cfg.accumulation).backward()
            total, count = total + float(loss.detach()), count + 1
            if last:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": total / max(1, count),
            "lr": optimizer.param_groups[0]["lr"],
            "logit_scale": float(log_scale.detach().clamp(max=MAX_LOG_SCALE).exp()),
        }
        if val is not None:
            row.update(_validate(encoder, val))
        rows.append(row)
        if dist.is_main:
            save_checkpoint(ckpt_path, encoder, optimizer, scheduler, cfg.to_dict(), epoch + 1, rows)
            atomic_write_text(out_dir / LOG_FILE, pd.DataFrame(rows).to_csv(index=False))
        if progress is not None and dist.is_main:
            progress(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    if dist.is_main:
        from histovl.models import save_model_dir

        save_model_dir(encoder, out_dir)
        atomic_write_text(out_dir / LOG_FILE, pd.DataFrame(rows).to_csv(index=False))
        atomic_write_json(
            out_dir / "finetune.json",
            {"config": cfg.to_dict(), "base_model": encoder.card.name, "n_train": n, "n_inputs": len(all_paths),
             "caption_templates": templates.name, "world_size": dist.world_size, "on_error": on_error,
             "n_skipped": len(skipped), "skipped": skipped, "feature_batch_size_used": feature_batch},
        )
    barrier()  # no rank returns before rank 0's outputs exist
    if owns_group:
        cleanup_distributed()
    return FinetuneResult(out=out_dir, log=pd.DataFrame(rows), encoder=encoder)


@dataclass
class _Validation:
    labels: list[str]
    prompt_set: Any
    features: torch.Tensor | None
    paths: list[Path]
    num_workers: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _train_features(
    encoder: Encoder, paths: list[Path], cache_images: bool, num_workers: int, feature_cache: Any,
    on_error: Literal["raise", "skip"],
) -> tuple[torch.Tensor | None, dict[int, str], int]:
    """Frozen-backbone features (or None) and the unreadable training images every rank agrees on.

    With a frozen image tower every rank computes all features (as before); the failures are
    then united over the ranks, so a file one rank could not read is dropped everywhere. Without
    cached features, ``skip`` runs a decode-only pass, each rank over its own block of images,
    gathered to all ranks. ``raise`` adds no pass: an unreadable image stops the run where it is
    first read, naming it.
    """
    if cache_images:
        extracted = extract_image_features(cast(SplitTowers, encoder), paths, num_workers=num_workers,
                                           cache_dir=feature_cache, on_error=on_error)
        failures: dict[int, str] = {}
        for part in all_gather_object(extracted.failures):
            failures.update(part)
        return extracted.features, failures, extracted.batch_size_used
    if on_error != "skip":
        return None, {}, 0

    def check_mine() -> dict[int, str]:
        ctx = current_context()
        start, stop = shard_bounds(len(paths), ctx.rank, ctx.world_size)
        found = unreadable_images(paths[start:stop], encoder.preprocess, num_workers=num_workers)
        return {start + i: r for i, r in found.items()}

    failures = {}
    for part in run_on_shards(check_mine):
        failures.update(part)
    return None, failures, 0


def _check_validation(val_data: Any, val_prompts: Any, allow_absolute_paths: bool) -> tuple[Any, Any] | None:
    """Load the validation set and prompt set and check they agree (cheap; runs before training).

    A validation label without a prompt would be scored as always wrong, silently; a typo here
    must fail before the first feature pass, not after it.
    """
    if val_data is None and val_prompts is None:
        return None
    if val_data is None or val_prompts is None:
        raise ValueError("per-epoch validation needs both val_data and val_prompts (--val-data and --val-prompts)")
    from histovl.data import validate_labels
    from histovl.prompts import load_prompt_set

    vset = _resolve_set(val_data, allow_absolute_paths)
    prompt_set = val_prompts if hasattr(val_prompts, "classes") else load_prompt_set(val_prompts)
    validate_labels(vset, list(prompt_set.classes), allow_missing_classes=True)
    return vset, prompt_set


def _prepare_validation(
    encoder: Encoder, val_data: Any, val_prompts: Any, cache: bool, num_workers: int, feature_cache: Any,
    on_error: Literal["raise", "skip"] = "raise",
) -> _Validation:
    """Validation inputs (rank 0 only); under ``skip`` unreadable images are left out and listed."""
    from histovl.prompts import load_prompt_set

    vset = _resolve_set(val_data)
    prompt_set = val_prompts if hasattr(val_prompts, "classes") else load_prompt_set(val_prompts)
    paths, labels = list(vset.paths), list(vset.labels)
    feats = None
    if cache:
        extracted = extract_image_features(cast(SplitTowers, encoder), paths, num_workers=num_workers,
                                           cache_dir=feature_cache, on_error=on_error)
        feats, failures = extracted.features, extracted.failures
    elif on_error == "skip":
        failures = unreadable_images(paths, encoder.preprocess, num_workers=num_workers)
    else:
        failures = {}
    keep = [i for i in range(len(paths)) if i not in failures]
    if not keep and failures:
        raise ValueError(f"none of the {len(paths)} validation images could be read (first: {paths[min(failures)]})")
    skipped = [{"path": str(paths[i]), "reason": r, "split": "val"} for i, r in sorted(failures.items())]
    if failures:
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        feats = None if feats is None else feats[keep]
    return _Validation(labels, prompt_set, feats, paths, num_workers, skipped)


def _validate(encoder: Encoder, val: _Validation) -> dict[str, float]:
    with torch.inference_mode():
        if val.features is not None:
            emb = nn.functional.normalize(cast(SplitTowers, encoder).project_image(val.features).float(), dim=-1)
        else:
            emb = torch.cat([encode_batch_with_backoff(encoder.encode_image, px, len(px))[0]
                             for px in image_loader(val.paths, encoder.preprocess, 64, val.num_workers)])
    return zero_shot_scores(encoder, emb.cpu().numpy().astype(np.float32), val.labels, val.prompt_set)
