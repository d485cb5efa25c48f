"""`finetune`: contrastive fine-tuning of any registered model on image-caption pairs.

The loop is written so `torchrun` + DDP can run it unchanged: each rank takes a strided shard of
the epoch's permutation (`DistributedHooks`), embeddings are all-gathered before the loss (the
losses take full-batch embeddings), and only rank 0 writes files. A frozen tower's backbone
features are computed once and cached (`histovl.train.features`), which is what makes CPU
training of histovl-lite practical.

The run is named steps: `_prepare_pairs` (captions, the skip decision, frozen features),
`_prepare_model` (which parameters learn), `_prepare_validation`, `_Trainer.epoch` (one pass over
this rank's shard), `_run_epochs` (validation, checkpoint and log after each epoch) and
`_write_outputs`.

Example:
    >>> result = finetune("histovl-lite", "tiles/", "runs/ft", loss="his2lip", epochs=5)  # doctest: +SKIP
    >>> load_model("runs/ft")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import pandas as pd
import torch
from torch import nn

from histovl._io import atomic_write_json, atomic_write_text
from histovl.distributed import (
    DistContext,
    ForwardThrough,
    all_gather_object,
    all_gather_with_grad,
    barrier,
    distributed_job,
    gradient_sync,
    run_on_blocks,
    shard_indices,
    wrap_ddp,
)
from histovl.models.encoder import Encoder
from histovl.options import RunOptions, split_overrides
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
from histovl.train.validation import ValidationSet, check_validation, validate

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

    The run options (decode workers, device, on_error, ...) are in `RunOptions`; there
    ``batch_size`` is the batch of the frozen-feature and validation passes, not this one.

    Attributes:
        loss: ``clip`` or ``his2lip``.
        epochs, batch_size, lr, weight_decay: the usual; batch_size is per optimizer micro-step.
        accumulation: micro-batches per optimizer step (each micro-batch is its own contrastive
            batch; gradients are summed).
        warmup_fraction: share of optimizer steps with linear warm-up before the cosine decay.
        train: which parameters learn (`MODE_GROUPS`).
        seed: drives shuffling, caption sampling and initialisation (part of the resume check,
            so it lives here; `RunOptions.seed` may only repeat it).
        his2lip: weights of the his2lip loss.
        grad_clip: max global gradient norm (0 disables).
    """
    NO_RUNTIME_REASON: ClassVar[str] = (  # docs/runtime.md
        "it trains the encoder, and gradients flow through torch only (evaluate the fine-tuned model with --runtime)")

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
    config: FinetuneConfig | None = None,
    options: RunOptions | None = None,
    *,
    val_data: Any = None,
    val_prompts: Any = None,
    caption_templates: str | Path | None = None,
    resume: bool = False,
    feature_cache: str | Path | None = None,
    hooks: DistributedHooks | None = None,
    progress: Callable[[str], None] | None = print,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune `model` contrastively on `data`; write a loadable model dir to `out`.

    Args:
        model: registry name, spec, model dir or an `Encoder`.
        data: class folder, CSV manifest or `ImageSet`; captions come from a `caption` column,
            else from the labels through `caption_templates` (the shipped file by default).
        out: output directory: the model (via `save_model_dir`), ``train_log.csv``,
            ``checkpoint.pt`` (atomic, each epoch) and ``finetune.json``.
        config: hyper-parameters (`FinetuneConfig()` by default).
        options: the shared run options: ``workers`` (image decode workers; None means 0 here),
            ``device``, ``trust_checkpoint``, ``allow_absolute_paths``, ``batch_size`` (of the
            frozen-feature and validation passes), ``progress`` (the per-epoch lines) and
            ``on_error``: ``"raise"`` stops at the first unreadable image with `ImageReadError`
            naming it (checkpoints of finished epochs are kept); ``"skip"`` drops its
            image-caption pair from training (or its image from validation) and lists it, with
            the reason, under ``skipped`` in ``finetune.json``. The skip decision is made once,
            before the first epoch: in the backbone-feature pass when the image tower is
            frozen, else in a decode-only pass over the images (sharded over torchrun ranks and
            gathered, so every rank drops the same pairs).
        val_data, val_prompts: optional labelled validation set and prompt set (name, path or
            `PromptSet`); zero-shot macro F1 on it is logged each epoch.
        resume: continue from ``out/checkpoint.pt`` (same config required); the result equals
            an uninterrupted run.
        feature_cache: folder to keep frozen-backbone image features between runs.
        hooks: DDP process layout; by default read from the torchrun environment
            (`histovl.distributed`), i.e. one process unless started by torchrun. Under
            torchrun, `config.batch_size` is the global batch, split evenly across ranks.
        progress: called with one line per epoch (None for silence) and with the note on
            skipped images (even when ``options.progress`` is False).
        overrides: fields of `FinetuneConfig` or `RunOptions` as keywords (``epochs=5``);
            ``batch_size`` and ``seed`` go to the config.
    """
    cfg, opts = _seed_from_config(*split_overrides(overrides, config, FinetuneConfig, options))
    with _process_layout(hooks) as (dist, ctx):
        if cfg.batch_size % dist.world_size:
            raise ValueError(f"batch size {cfg.batch_size} (global) must divide evenly over {dist.world_size} processes")
        out_dir = Path(out)
        seed_everything(cfg.seed)
        from histovl.models import load_model

        encoder = load_model(model, device=opts.device, trust_checkpoint=opts.trust_checkpoint)
        if ctx is not None and ctx.backend == "nccl":
            encoder.to(ctx.device)  # one GPU per rank
        pairs, val_inputs = _prepare_pairs(encoder, data, val_data, val_prompts, caption_templates, feature_cache, cfg, opts)
        params, log_scale = _prepare_model(encoder, cfg)
        val = _prepare_validation(encoder, val_inputs, cfg, opts, feature_cache) if val_inputs is not None and dist.is_main else None
        skipped = pairs.skipped + (val.skipped if val is not None else [])
        if skipped and progress is not None and dist.is_main:
            progress(f"skipped {len(skipped)} unreadable image(s) (listed in finetune.json), first: "
                     f"{skipped[0]['path']} ({skipped[0]['reason']})")
        trainer = _Trainer.build(encoder, cfg, dist, pairs, params, log_scale)
        rows = _run_epochs(trainer, out_dir, resume, val, progress if opts.progress else None)
        if dist.is_main:
            _write_outputs(out_dir, encoder, rows, cfg, opts, pairs, skipped, dist.world_size)
        barrier()  # no rank returns before rank 0's outputs exist
    return FinetuneResult(out=out_dir, log=pd.DataFrame(rows), encoder=encoder)


def _seed_from_config(cfg: FinetuneConfig, opts: RunOptions) -> tuple[FinetuneConfig, RunOptions]:
    """One seed: `FinetuneConfig.seed` (recorded, checked on resume). A `RunOptions.seed` set
    alone is taken over into the config; two different non-default seeds are an error."""
    default = RunOptions().seed
    if opts.seed != cfg.seed:
        if cfg.seed != default and opts.seed != default:
            raise ValueError(f"two seeds given (config {cfg.seed}, options {opts.seed}); finetune takes one")
        if opts.seed != default:
            cfg = dataclasses.replace(cfg, seed=opts.seed)
    return cfg, opts.replace(seed=cfg.seed)


@contextlib.contextmanager
def _process_layout(hooks: DistributedHooks | None) -> Iterator[tuple[DistributedHooks, DistContext | None]]:
    """The given `hooks`, or the torchrun job's layout (its process group joined and left here)."""
    if hooks is not None:
        yield hooks, None
        return
    with distributed_job() as ctx:
        yield (DistributedHooks(ctx.rank, ctx.world_size, all_gather_with_grad) if ctx.is_distributed
               else DistributedHooks()), ctx


# ---- step 1: the training pairs ------------------------------------------------------------------


@dataclass
class _Pairs:
    """The training pairs after the skip decision (the same on every rank)."""

    paths: list[Path]
    captions: list[str] | None
    """Fixed captions (a ``caption`` column); None: drawn from the labels each epoch."""
    labels: list[str] | None
    templates: CaptionTemplates
    image_feats: torch.Tensor | None
    """Frozen-backbone image features (the image tower is frozen), else None."""
    tissue_ids: torch.Tensor | None
    stain_ids: torch.Tensor | None
    n_inputs: int
    skipped: list[dict[str, str]]
    feature_batch: int

    def epoch_captions(self, seed: int, epoch: int) -> list[str]:
        return self.captions or sample_captions(self.templates, self.labels or [], seed=seed * 7_919 + epoch)


def _pairs_from_set(image_set: Any) -> tuple[list[str] | None, list[str] | None]:
    """Fixed captions from a `caption` column, or None (captions are drawn from labels per epoch)."""
    captions = image_set.extra_column("caption") if hasattr(image_set, "extra_column") else [None] * len(image_set)
    if all(c for c in captions):
        labels = image_set.labels if image_set.has_labels else None
        return [str(c) for c in captions], labels
    if not image_set.has_labels:
        raise ValueError(f"{image_set.source}: give a `caption` column or labels (to caption through templates)")
    return None, list(image_set.labels)


def _frozen(encoder: Encoder, cfg: FinetuneConfig, tower: str) -> bool:
    """True when `tower`'s backbone does not learn and its features can be computed once."""
    return isinstance(encoder, SplitTowers) and tower not in MODE_GROUPS[cfg.train]


def _prepare_pairs(
    encoder: Encoder, data: Any, val_data: Any, val_prompts: Any, caption_templates: str | Path | None,
    feature_cache: str | Path | None, cfg: FinetuneConfig, opts: RunOptions,
) -> tuple[_Pairs, tuple[Any, Any] | None]:
    """Every input checked (validation too, before any feature pass), then the pairs to train on."""
    from histovl.data import load_image_set

    image_set = load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    templates = load_caption_templates(caption_templates)
    captions, labels = _pairs_from_set(image_set)
    val_inputs = check_validation(val_data, val_prompts, opts.allow_absolute_paths)
    all_paths = list(image_set.paths)
    feats, failures, feature_batch = _feature_pass(encoder, all_paths, _frozen(encoder, cfg, "image"), opts,
                                                   feature_cache, all_ranks=True)
    keep, skipped = _leave_out(all_paths, failures, "train")
    if failures:
        captions = None if captions is None else [captions[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
        feats = None if feats is None else feats[keep]
    paths = [all_paths[i] for i in keep]
    if len(paths) < 2:
        raise ValueError(
            f"{len(paths)} of {len(all_paths)} training images could be read; contrastive training needs at least 2 "
            f"(first unreadable: {skipped[0]['path'] if skipped else 'none'})"
        )
    tissue_ids, stain_ids = _metadata_ids(labels, templates)
    pairs = _Pairs(paths, captions, labels, templates, feats, tissue_ids, stain_ids, len(all_paths), skipped, feature_batch)
    return pairs, val_inputs


def _metadata_ids(labels: list[str] | None, templates: CaptionTemplates) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Tissue and stain ids for his2lip: from the caption templates, else one "tissue" per label."""
    if labels is None:
        return None, None
    if all(lab in templates.labels for lab in labels):
        t_np, s_np = templates.metadata_ids(labels)
        return torch.from_numpy(t_np), torch.from_numpy(s_np)
    classes = sorted(set(labels))
    return torch.tensor([classes.index(lab) for lab in labels]), None


def _feature_pass(
    encoder: Encoder, paths: list[Path], frozen: bool, opts: RunOptions, feature_cache: Any, *, all_ranks: bool
) -> tuple[torch.Tensor | None, dict[int, str], int]:
    """Frozen-backbone features (or None), index -> reason of unreadable images, and the batch size used.

    With a frozen image tower the features are computed (every rank computes all of them) and
    their failures are the unreadable images. Otherwise ``skip`` runs a decode-only pass and
    ``raise`` adds no pass (an unreadable image stops the run where it is first read, naming it).
    With `all_ranks` (the training set, on every rank of a job) the failures are united over the
    ranks, so a file one rank could not read is dropped everywhere, and the decode-only pass is
    split over the ranks and gathered; without it (validation, rank 0 alone) no collective runs.
    """
    workers = opts.workers or 0
    if frozen:
        extracted = extract_image_features(cast(SplitTowers, encoder), paths, batch_size=opts.batch_size,
                                           num_workers=workers, cache_dir=feature_cache, on_error=opts.on_error)
        failures = dict(extracted.failures)
        if all_ranks:
            for part in all_gather_object(extracted.failures):
                failures.update(part)
        return extracted.features, failures, extracted.batch_size_used
    if opts.on_error != "skip":
        return None, {}, 0

    def check(start: int, stop: int) -> dict[int, str]:
        found = unreadable_images(paths[start:stop], encoder.preprocess, batch_size=opts.batch_size, num_workers=workers)
        return {start + i: r for i, r in found.items()}

    if not all_ranks:
        return None, check(0, len(paths)), 0
    failures = {}
    for part in run_on_blocks(len(paths), check):
        failures.update(part)
    return None, failures, 0


def _leave_out(paths: Sequence[Path], failures: dict[int, str], split: str) -> tuple[list[int], list[dict[str, str]]]:
    """Indices to keep and the ``skipped`` records of the rest (as finetune.json lists them)."""
    keep = [i for i in range(len(paths)) if i not in failures]
    return keep, [{"path": str(paths[i]), "reason": r, "split": split} for i, r in sorted(failures.items())]


# ---- step 2: the model and validation ------------------------------------------------------------


def _prepare_model(encoder: Encoder, cfg: FinetuneConfig) -> tuple[list[nn.Parameter], nn.Parameter]:
    """Freeze what `cfg.train` leaves alone; returns the parameters that learn and the log logit scale."""
    trainable = set(MODE_GROUPS[cfg.train])
    groups = parameter_groups(encoder)
    for name, group in groups.items():
        for p in group:
            p.requires_grad_(name in trainable)
    params = [p for name in MODE_GROUPS[cfg.train] for p in groups[name]]
    log_scale = log_logit_scale_parameter(encoder)
    if hasattr(encoder, "trained_backbone_prefixes"):
        encoder.trained_backbone_prefixes = tuple(  # type: ignore[assignment]
            prefix for grp, prefix in (("image", "image_backbone."), ("text", "text_backbone.")) if grp in trainable
        )
    encoder.eval()  # BatchNorm statistics and dropout stay as pretrained (small CPU batches)
    return params, log_scale


def _prepare_validation(
    encoder: Encoder, val_inputs: tuple[Any, Any], cfg: FinetuneConfig, opts: RunOptions, feature_cache: Any
) -> ValidationSet:
    """Validation inputs (rank 0 only); under ``skip`` unreadable images are left out and listed."""
    vset, prompt_set = val_inputs
    paths, labels = list(vset.paths), list(vset.labels)
    feats, failures, _ = _feature_pass(encoder, paths, _frozen(encoder, cfg, "image"), opts, feature_cache, all_ranks=False)
    keep, skipped = _leave_out(paths, failures, "val")
    if not keep and failures:
        raise ValueError(f"none of the {len(paths)} validation images could be read (first: {paths[min(failures)]})")
    if failures:
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        feats = None if feats is None else feats[keep]
    return ValidationSet(labels, prompt_set, feats, paths, opts.batch_size, opts.workers or 0, skipped)


# ---- step 3: training ----------------------------------------------------------------------------


class _PairEmbedder:
    """(image embeddings, text embeddings, logit scale) of a batch of pairs; a frozen tower runs
    only its projection, on backbone features computed once."""

    def __init__(self, encoder: Encoder, pairs: _Pairs, log_scale: nn.Parameter, cache_texts: bool) -> None:
        self.encoder, self.pairs, self.log_scale, self.cache_texts = encoder, pairs, log_scale, cache_texts
        self.towers = cast(SplitTowers, encoder)
        self.text_cache: dict[str, torch.Tensor] = {}

    def text(self, captions: Sequence[str]) -> torch.Tensor:
        if not self.cache_texts:
            return self.encoder.encode_text(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self.text_cache]
        if missing:
            for c, f in zip(missing, backbone_text_features(self.towers, missing), strict=True):
                self.text_cache[c] = f
        feats = torch.stack([self.text_cache[c] for c in captions]).to(self.encoder.device)
        return nn.functional.normalize(self.towers.project_text(feats).float(), dim=-1)

    def image(self, idx: torch.Tensor) -> torch.Tensor:
        if self.pairs.image_feats is not None:
            feats = self.pairs.image_feats[idx].to(self.encoder.device)
            return nn.functional.normalize(self.towers.project_image(feats).float(), dim=-1)
        pixels = next(iter(image_loader([self.pairs.paths[int(i)] for i in idx], self.encoder.preprocess, len(idx), 0)))
        return self.encoder.encode_image(pixels)

    def __call__(self, idx: torch.Tensor, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.image(idx), self.text(captions), self.log_scale.clamp(max=MAX_LOG_SCALE).exp()


@dataclass
class _Trainer:
    """One run's moving parts; `epoch` is one pass over this rank's shard of the pairs."""

    encoder: Encoder
    cfg: FinetuneConfig
    dist: DistributedHooks
    pairs: _Pairs
    params: list[nn.Parameter]
    log_scale: nn.Parameter
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: nn.Module
    local_batch: int

    @classmethod
    def build(cls, encoder: Encoder, cfg: FinetuneConfig, dist: DistributedHooks, pairs: _Pairs,
              params: list[nn.Parameter], log_scale: nn.Parameter) -> _Trainer:
        local_batch = cfg.batch_size // dist.world_size
        shard = max(1, math.ceil(len(pairs.paths) / dist.world_size))
        steps_per_epoch = math.ceil(math.ceil(shard / local_batch) / cfg.accumulation)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * cfg.epochs, cfg.warmup_fraction))
        embedder = _PairEmbedder(encoder, pairs, log_scale, cache_texts=_frozen(encoder, cfg, "text"))
        # DDP averages gradients over ranks; with the gathered loss that is the global-batch gradient.
        # Whole towers may hold parameters a family's forward never touches: let DDP look for them.
        step = wrap_ddp(ForwardThrough(encoder, embedder), find_unused_parameters=cfg.train != "projections")
        return cls(encoder, cfg, dist, pairs, params, log_scale, optimizer, scheduler, step, local_batch)

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns its log row."""
        cfg, dist, batch = self.cfg, self.dist, self.local_batch
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.pairs.paths), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        order = shard_indices(order, dist.rank, dist.world_size)
        captions = self.pairs.epoch_captions(cfg.seed, epoch)
        total, count = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for micro, start in enumerate(range(0, len(order), batch)):
            idx = order[start : start + batch]
            if len(idx) * dist.world_size < 2:
                continue
            last = (micro + 1) % cfg.accumulation == 0 or start + batch >= len(order)
            with gradient_sync(self.step, last):  # DDP all-reduces only on the optimizer's micro-step
                loss = self._loss(idx, [captions[int(i)] for i in idx])
                (loss / cfg.accumulation).backward()
            total, count = total + float(loss.detach()), count + 1
            if last:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        return {
            "epoch": epoch + 1,
            "train_loss": total / max(1, count),
            "lr": self.optimizer.param_groups[0]["lr"],
            "logit_scale": float(self.log_scale.detach().clamp(max=MAX_LOG_SCALE).exp()),
        }

    def _loss(self, idx: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The loss of the global batch (embeddings and metadata gathered from every rank)."""
        dist, pairs = self.dist, self.pairs
        img, txt, scale = self.step(idx, captions)
        img, txt = dist.all_gather(img), dist.all_gather(txt)
        gathered = dist.all_gather(idx)
        extra: dict[str, Any] = {}
        if self.cfg.loss == "his2lip":
            extra = {
                "tissue": None if pairs.tissue_ids is None else pairs.tissue_ids[gathered].to(img.device),
                "stain": None if pairs.stain_ids is None else pairs.stain_ids[gathered].to(img.device),
                "weights": self.cfg.his2lip,
            }
        return get_loss(self.cfg.loss)(img, txt, scale, **extra)


def _run_epochs(
    trainer: _Trainer, out_dir: Path, resume: bool, val: ValidationSet | None, progress: Callable[[str], None] | None
) -> list[dict[str, Any]]:
    """The remaining epochs (all, or those after ``checkpoint.pt`` with `resume`); rank 0 writes
    the checkpoint and the log after each one."""
    cfg, dist = trainer.cfg, trainer.dist
    rows: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        start_epoch, rows = load_checkpoint(ckpt_path, trainer.encoder, trainer.optimizer, trainer.scheduler, cfg.to_dict())
    for epoch in range(start_epoch, cfg.epochs):
        row = trainer.epoch(epoch)
        if val is not None:
            row.update(validate(trainer.encoder, val))
        rows.append(row)
        if dist.is_main:
            save_checkpoint(ckpt_path, trainer.encoder, trainer.optimizer, trainer.scheduler, cfg.to_dict(), epoch + 1, rows)
            atomic_write_text(out_dir / LOG_FILE, pd.DataFrame(rows).to_csv(index=False))
        if progress is not None and dist.is_main:
            progress(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


# ---- step 4: outputs -----------------------------------------------------------------------------


def _write_outputs(
    out_dir: Path, encoder: Encoder, rows: list[dict[str, Any]], cfg: FinetuneConfig, opts: RunOptions,
    pairs: _Pairs, skipped: list[dict[str, str]], world_size: int,
) -> None:
    """The model folder, the log and ``finetune.json`` (rank 0)."""
    from histovl.models import save_model_dir

    save_model_dir(encoder, out_dir)
    atomic_write_text(out_dir / LOG_FILE, pd.DataFrame(rows).to_csv(index=False))
    atomic_write_json(
        out_dir / "finetune.json",
        {"config": cfg.to_dict(), "base_model": encoder.card.name, "n_train": len(pairs.paths),
         "n_inputs": pairs.n_inputs, "caption_templates": pairs.templates.name, "world_size": world_size,
         "on_error": opts.on_error, "n_skipped": len(skipped), "skipped": skipped,
         "feature_batch_size_used": pairs.feature_batch},
    )
