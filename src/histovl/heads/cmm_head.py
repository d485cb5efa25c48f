"""`CMMHead`: the CMM module behind a scikit-learn-style estimator, with atomic save/load.

`fit` trains with BCE-with-logits (the paper's eq. 5), AdamW, a linear warm-up then cosine decay
of the learning rate, and one `random_state` that drives initialisation, dropout and shuffling.
Learned state ends in ``_``; `save` writes ``head.safetensors`` + ``head.json`` (each atomically)
and `load` rebuilds the estimator with strict key/shape checks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from histovl._io import atomic_write_json, atomic_write_with
from histovl.distributed import (
    all_gather_rows_with_grad,
    all_reduce_sum,
    current_context,
    rank_device,
    wrap_ddp,
)
from histovl.errors import HistovlError, NonFiniteError
from histovl.heads.cmm import CrossModalMatching, KVMode

HEAD_FORMAT = "histovl-cmm-head/1"


class CMMHead:
    """Cross-Modal Matching head (HistoCLIP) trained on frozen features.

    Args:
        kv_mode: ``tokens`` (per-image tokens [N, T, D]; batch-independent) or ``pooled`` (the
            paper's pooled features [N, D]; attention runs across the batch).
        n_heads, ffn_dim, dropout: decoder block sizes.
        epochs, warmup_epochs, lr, weight_decay, batch_size: optimisation (AdamW).
        random_state: seeds initialisation, dropout and shuffling.
        device: where to train (``cpu``, ``cuda``).

    Example:
        >>> head = CMMHead(epochs=50, random_state=0).fit(tokens, y, class_embeddings=w)  # doctest: +SKIP
        >>> head.predict_proba(tokens).shape  # doctest: +SKIP
        (n_images, n_classes)
    """

    extra_: dict[str, Any]  # set by `load`: what `save(extra=...)` recorded (model spec, tokens)

    def __init__(
        self,
        *,
        kv_mode: KVMode = "tokens",
        n_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        epochs: int = 100,
        warmup_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        random_state: int = 0,
        device: str = "cpu",
    ) -> None:
        self.kv_mode = kv_mode
        self.n_heads = n_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.random_state = random_state
        self.device = device

    # ---- scikit-learn protocol -----------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn's `get_params`)."""
        keys = ("kv_mode", "n_heads", "ffn_dim", "dropout", "epochs", "warmup_epochs", "lr",
                "weight_decay", "batch_size", "random_state", "device")
        return {k: getattr(self, k) for k in keys}

    def _check_features(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        x = x.detach().float()
        want = 3 if self.kv_mode == "tokens" else 2
        if x.ndim != want:
            shape = "[N, T, D]" if want == 3 else "[N, D]"
            raise ValueError(f"kv_mode={self.kv_mode!r} needs features {shape}, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("no images to fit or predict on")
        if not torch.isfinite(x).all():
            row = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero()[0, 0])
            raise NonFiniteError(f"features of image {row} contain NaN/Inf")
        return x

    def fit(
        self,
        features: np.ndarray | torch.Tensor,
        y: np.ndarray,
        *,
        class_embeddings: np.ndarray | torch.Tensor,
        class_names: Sequence[str] | None = None,
    ) -> CMMHead:
        """Train on frozen `features` and a binary label matrix `y` [N, C]; returns self."""
        x = self._check_features(features)
        targets = torch.as_tensor(np.asarray(y), dtype=torch.float32)
        queries = torch.as_tensor(np.asarray(class_embeddings), dtype=torch.float32)
        if targets.ndim != 2 or targets.shape[0] != x.shape[0] or targets.shape[1] != queries.shape[0]:
            raise ValueError(
                f"y must be [n_images={x.shape[0]}, n_classes={queries.shape[0]}], got {tuple(targets.shape)}"
            )
        if not ((targets == 0) | (targets == 1)).all():
            raise ValueError("y must hold only 0 and 1")
        if queries.shape[1] != x.shape[-1]:
            raise ValueError(f"class embeddings have {queries.shape[1]} dims, features {x.shape[-1]}")
        ctx = current_context()  # a torchrun job (process group up) trains data-parallel
        device = rank_device(ctx, self.device)
        torch.manual_seed(self.random_state)
        module = CrossModalMatching(
            queries, n_heads=self.n_heads, ffn_dim=self.ffn_dim, dropout=self.dropout, kv_mode=self.kv_mode
        ).to(device)
        optimiser = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / self.batch_size)
        total, warmup = self.epochs * steps_per_epoch, self.warmup_epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _warmup_cosine(s, warmup, total))
        gen = torch.Generator().manual_seed(self.random_state)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        history: list[float] = []
        steps: list[float] = []
        module.train()
        trainer: torch.nn.Module = module
        if ctx.is_distributed:
            if self.kv_mode == "pooled":
                module.batch_gather = all_gather_rows_with_grad
            trainer = wrap_ddp(module)  # broadcasts rank 0's initial weights; averages gradients
            torch.manual_seed(self.random_state + ctx.rank)  # independent dropout masks per rank
        for epoch in range(self.epochs):
            order = torch.randperm(n, generator=gen)  # same seed: the same global batches on every rank
            running = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                if ctx.is_distributed:
                    loss, global_loss = self._distributed_step(trainer, x, targets, idx, ctx.rank, ctx.world_size, device)
                else:
                    logits = trainer(x[idx].to(device))
                    loss = loss_fn(logits, targets[idx].to(device))
                    global_loss = float(loss.detach())
                if not math.isfinite(global_loss):
                    raise NonFiniteError(f"CMM loss became NaN/Inf at epoch {epoch}; lower --lr")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                running += global_loss * len(idx)
                steps.append(global_loss)
            history.append(running / n)
        module.batch_gather = None
        module.to(self.device).eval()
        self.module_ = module
        self.class_names_ = list(class_names) if class_names is not None else [str(i) for i in range(len(queries))]
        self.n_features_in_ = int(x.shape[-1])
        self.loss_history_ = history
        self.step_loss_history_ = steps
        return self

    @staticmethod
    def _distributed_step(
        trainer: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor,
        rank: int, world: int, device: str,
    ) -> tuple[torch.Tensor, float]:
        """One rank's share of a global batch: (loss to back-propagate, the global batch's loss).

        Rank r takes every `world`-th image of the batch (as `DistributedSampler` splits data).
        The back-propagated loss is this rank's BCE *sum* scaled by ``world / (batch x classes)``,
        so DDP's gradient average equals the one-process gradient of the global mean, also when
        the shards differ in size. The logged loss is the global batch's mean (all-reduced).
        """
        local = idx[rank::world]
        logits = trainer(x[local].to(device))
        summed = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[local].to(device), reduction="sum")
        denominator = len(idx) * targets.shape[1]
        global_loss = float(all_reduce_sum(summed.detach())) / denominator
        return summed * (world / denominator), global_loss

    def _check_fitted(self) -> CrossModalMatching:
        if not hasattr(self, "module_"):
            raise HistovlError("this CMMHead is not fitted yet: call fit(...) or CMMHead.load(dir)")
        return self.module_

    @torch.no_grad()
    def decision_function(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Per-class logits [N, C]. In ``pooled`` mode images are attended in `batch_size` groups."""
        module = self._check_fitted()
        x = self._check_features(features)
        if x.shape[-1] != self.n_features_in_:
            raise ValueError(f"features have {x.shape[-1]} dims, the head was fitted on {self.n_features_in_}")
        out = [module(x[s : s + self.batch_size].to(self.device)).cpu() for s in range(0, len(x), self.batch_size)]
        return torch.cat(out).double().numpy()

    def predict_proba(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """sigma(logit) per class [N, C] (independent labels; the paper's eq. 6 uses >= 0.5)."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(features)))

    def predict(self, features: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
        """Boolean label matrix [N, C]."""
        return self.predict_proba(features) >= threshold

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
        """Write ``head.safetensors`` and ``head.json`` (atomically) into `directory`.

        `extra` (e.g. the model spec and feature settings) is stored under ``"extra"`` so that
        `cmm eval` can rebuild the same features.
        """
        module = self._check_fitted()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        atomic_write_with(out / "head.safetensors", lambda p: save_file(tensors, str(p)))
        meta = {
            "format": HEAD_FORMAT, "params": self.get_params(), "class_names": self.class_names_,
            "n_features_in": self.n_features_in_, "loss_history": self.loss_history_,
            "step_loss_history": getattr(self, "step_loss_history_", []), "extra": extra or {},
        }
        atomic_write_json(out / "head.json", meta)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str = "cpu") -> CMMHead:
        """Rebuild a fitted head from `save`'s folder (safetensors only: no code can run)."""
        root = Path(directory)
        meta_path, weights_path = root / "head.json", root / "head.safetensors"
        if not meta_path.is_file() or not weights_path.is_file():
            raise HistovlError(f"{root} is not a CMM head folder (needs head.json and head.safetensors); run `histovl cmm fit`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != HEAD_FORMAT:
            raise HistovlError(f"{meta_path} has format {meta.get('format')!r}, expected {HEAD_FORMAT!r}")
        params = dict(meta["params"], device=device)
        head = cls(**params)
        state = load_file(str(weights_path))
        if "queries" not in state:
            raise HistovlError(f"{weights_path} has no 'queries' tensor; it was not written by CMMHead.save")
        module = CrossModalMatching(
            state["queries"], n_heads=head.n_heads, ffn_dim=head.ffn_dim, dropout=head.dropout, kv_mode=head.kv_mode
        )
        expected = module.state_dict()
        problems = sorted(set(expected) ^ set(state)) + [
            f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items() if k in state and state[k].shape != v.shape
        ]
        if problems:
            raise HistovlError(f"{weights_path} does not match the head described in head.json: {problems}")
        module.load_state_dict(state, strict=True)
        head.module_ = module.to(device).eval()
        head.class_names_ = list(meta["class_names"])
        head.n_features_in_ = int(meta["n_features_in"])
        head.loss_history_ = list(meta.get("loss_history", []))
        head.step_loss_history_ = list(meta.get("step_loss_history", []))
        head.extra_ = dict(meta.get("extra", {}))
        return head


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (the multiplier of the base learning rate)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
