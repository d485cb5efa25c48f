"""Atomic per-epoch training checkpoints and exact resume.

A checkpoint holds the trainable tensors, the optimizer and scheduler state, the finished epoch
and the log rows. It is written with temp file + rename, so a crash leaves the previous epoch's
checkpoint intact; it is read with ``weights_only=True`` (no code in checkpoints). Because every
epoch's randomness is derived from (seed, epoch), a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from histovl._io import atomic_path
from histovl.errors import HistovlError

CHECKPOINT_FORMAT = 1


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a run's configuration (resuming with another config is refused)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
    epoch: int,
    rows: list[dict[str, Any]],
) -> None:
    """Write the state after `epoch` finished epochs to `path`, atomically."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in trainable}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config_hash": config_hash(config),
        "epoch": epoch,
        "model": state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rows_json": json.dumps(rows),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
) -> tuple[int, list[dict[str, Any]]]:
    """Restore a checkpoint in place; returns (finished epochs, log rows)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise HistovlError(f"{path} has checkpoint format {payload.get('format')!r}; expected {CHECKPOINT_FORMAT}")
    if payload["config_hash"] != config_hash(config):
        raise HistovlError(
            f"{path} was written with another configuration; resume with the same options, "
            "or use a new --out folder to start over"
        )
    missing = model.load_state_dict(payload["model"], strict=False)
    if missing.unexpected_keys:
        raise HistovlError(f"{path} holds tensors this model does not have: {missing.unexpected_keys[:5]}")
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return int(payload["epoch"]), list(json.loads(payload["rows_json"]))
