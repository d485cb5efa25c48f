"""HistoStainAlign: predict an IHC status from the H&E slide, trained with paired H&E/IHC slides.

Architecture (HistoStainAlign, arXiv:2506.15853, as implemented here; docs/stainalign.md):

- the tile features of each stain are standardised (per-feature mean and standard deviation of
  the training tiles, kept in the model);
- one `GatedAttentionPool` per stain turns a bag of frozen tile embeddings into a slide
  embedding; a linear projection per stain maps it into a shared space (L2-normalised);
- the classifier is linear on the H&E embedding times ``logit_scale`` (a cosine classifier: on
  unit vectors a default-initialised linear layer gives logits of ±0.1, which is how the first
  version collapsed to one class);
- ``schedule="two-stage"``: stage 1 trains both branches with the symmetric InfoNCE between the
  H&E and IHC embeddings of the pairs in a batch, labelled or not; stage 2 fits an
  L2-regularised logistic regression on the frozen H&E embeddings of the labelled pairs.
  ``schedule="joint"`` minimises ``CE(labelled pairs) + align_weight × InfoNCE(all pairs)``
  together. ``schedule="auto"`` (default) is two-stage when some pairs are unlabelled and joint
  otherwise, the better of the two in each case on the planted benchmark;
- the binary decision threshold is chosen on the training pairs (best balanced accuracy with
  ``class_weight="balanced"``) and folded into the probabilities as a prior correction, so 0.5
  is the decision point of `predict_proba`;
- prediction uses only the H&E branch.

``align=False`` is the paper's baseline: the same standardisation, pooling, projection and
classifier, trained with the classification loss alone (the IHC branch and unlabelled pairs are
unused).

Inside a torchrun job (`histovl stainalign fit` under `torchrun`, docs/scale-out.md) the gradient
steps run data-parallel: each rank takes its share of every global batch of ``batch_size`` pairs,
DDP averages the gradients, and the alignment loss sees the slide embeddings of all ranks
(gathered with gradients), so the loss curve equals one process's (with ``dropout=0``; dropout
masks are drawn per rank). The two-stage head and the threshold are computed by every rank on
the same data. One process: unchanged.

The estimator follows scikit-learn's contract: `__init__` stores parameters, `fit` returns self,
learned state ends in ``_``, and `random_state` fixes initialisation, shuffling and tile sampling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from histovl._io import atomic_path, atomic_write_json
from histovl.distributed import ForwardThrough, current_context, wrap_ddp
from histovl.stainalign.network import StainAlignNetwork
from histovl.stainalign.params import StainAlignParams, resolve_schedule
from histovl.stainalign.training import (
    TrainingData,
    as_bags,
    choose_threshold,
    embed_he,
    fit_head,
    train_epochs,
    training_data,
)

__all__ = ["FORMAT_VERSION", "META_FILE", "HistoStainAlign", "StainAlignParams", "is_model_folder",
           "resolve_schedule", "torch_threads"]

FORMAT_VERSION = 2
META_FILE = "stainalign.json"


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder written by `HistoStainAlign.save` (``histovl stainalign fit``'s output)."""
    return (Path(path) / META_FILE).is_file()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch threads (None: leave as is), then restore the old setting.

    The MIL head is tiny (a few thousand tiles × a few hundred dims): with several threads the
    thread hand-offs cost more than the arithmetic. On the shared 2-core development machine
    30 epochs on 31 bags took 11.6 s with 2 threads and 0.84 s with 1.
    """
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _prior_correct(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Binary: shift the log-odds so that `threshold` on P(second class) becomes 0.5."""
    if threshold is None or probs.shape[1] != 2:
        return probs
    t = float(np.clip(threshold, 1e-12, 1 - 1e-12))
    eps = torch.finfo(probs.dtype).tiny
    log_odds = torch.log(probs[:, 1] + eps) - torch.log(probs[:, 0] + eps) - float(np.log(t / (1 - t)))
    p1 = torch.sigmoid(log_odds)
    return torch.stack([1 - p1, p1], dim=1)


class HistoStainAlign:
    """Attention-MIL H&E→IHC status classifier with (or, as baseline, without) stain alignment.

    Example:
        >>> model = HistoStainAlign(epochs=5).fit(he_bags, ihc_bags, labels)  # doctest: +SKIP
        >>> model.predict_proba(he_bags).shape  # doctest: +SKIP
        (n_slides, 2)
    """

    def __init__(self, **params: Any) -> None:
        self.params = StainAlignParams.coerce(params)

    @classmethod
    def from_params(cls, params: StainAlignParams | Mapping[str, Any] | None = None, **changes: Any) -> HistoStainAlign:
        """An unfitted model from `params` (typed, a partial mapping, or None) with `changes` applied."""
        return cls(**asdict(StainAlignParams.coerce(params, **changes)))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return asdict(self.params)

    def set_params(self, **params: Any) -> HistoStainAlign:
        self.params = StainAlignParams.coerce(self.params, **params)
        return self

    # ---- training -----------------------------------------------------------------------------
    def fit(
        self, he_bags: Sequence[np.ndarray], ihc_bags: Sequence[np.ndarray] | None, y: Sequence[str | None]
    ) -> HistoStainAlign:
        """Train on paired bags (`ihc_bags` may be None only when ``align=False``).

        A label that is None or empty marks a pair without a recorded status: the aligned model
        uses it in the alignment term only, the baseline ignores it.
        """
        p = self.params
        data = training_data(p, he_bags, ihc_bags, y)
        ctx = current_context()  # inside a torchrun job (process group up): data-parallel
        with torch.random.fork_rng(devices=[]), torch_threads(p.num_threads):
            torch.manual_seed(p.random_state)
            gen = torch.Generator().manual_seed(p.random_state)
            net = StainAlignNetwork(data.dim, len(data.classes), p)
            if p.standardize:
                net.standardise(data.he, data.ihc)
            trainer: nn.Module = net
            if ctx.is_distributed:
                net.to(ctx.device)  # the CPU under gloo, this rank's GPU under nccl
                # DDP broadcasts rank 0's weights and averages gradients; the baseline never uses
                # the IHC branch, so DDP must not wait for its gradients
                trainer = wrap_ddp(ForwardThrough(net, net.branches), find_unused_parameters=data.ihc is None)
                torch.manual_seed(p.random_state + ctx.rank)  # independent dropout masks per rank
            schedule = resolve_schedule(p.schedule, bool((~data.labelled).any())) if p.align else "classification only"
            two_stage = schedule == "two-stage"
            history, steps = train_epochs(net, trainer, p, data, gen, ctx, cls_weight=0.0 if two_stage else 1.0)
            net = net.cpu()
            if two_stage:
                fit_head(net, p, data)
        self.network_ = net.eval()
        self.classes_, self.n_features_in_, self.schedule_ = data.classes, data.dim, schedule
        self.history_, self.step_history_ = history, steps
        self.n_labelled_, self.n_unlabelled_ = int(data.labelled.sum()), int((~data.labelled).sum())
        self.threshold_ = self._training_threshold(data)
        return self

    def _training_threshold(self, data: TrainingData) -> float | None:
        """The binary decision threshold on P(second class), chosen on the labelled training pairs."""
        if self.params.threshold == "none" or len(data.classes) != 2:
            return None
        with torch_threads(self.params.num_threads):
            emb, _ = embed_he(self.network_, [b for b, lab in zip(data.he, data.labelled, strict=True) if lab])
            with torch.inference_mode():
                scores = torch.softmax(self.network_.logits(emb).double(), dim=-1)[:, 1].numpy()
        return choose_threshold(scores, data.target[data.labelled].numpy(), self.params.class_weight == "balanced")

    # ---- inference ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError("this HistoStainAlign is not fitted yet: call fit() or HistoStainAlign.load()")

    def _he_forward(self, he_bags: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[np.ndarray]]:
        self._check_fitted()
        with torch_threads(self.params.num_threads):
            emb, att = embed_he(self.network_, as_bags(he_bags, "H&E", self.n_features_in_), batch=32)
        return emb, [a.numpy() for a in att]

    def transform(self, he_bags: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned H&E slide embeddings [N, projection_dim] (L2-normalised)."""
        return self._he_forward(he_bags)[0].numpy()

    def predict_proba(self, he_bags: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, C] (columns in `classes_` order) from H&E bags only.

        Binary: prior-corrected with `threshold_` (when chosen), so 0.5 is the decision point.
        """
        emb, _ = self._he_forward(he_bags)
        with torch.inference_mode():
            probs = torch.softmax(self.network_.logits(emb).double(), dim=-1)
        return _prior_correct(probs, getattr(self, "threshold_", None)).numpy()

    def predict(self, he_bags: Sequence[np.ndarray]) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(he_bags).argmax(axis=1)]

    def attention(self, he_bags: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per slide, the H&E attention weight of each tile (sums to 1): the heatmap values."""
        return self._he_forward(he_bags)[1]

    # ---- persistence --------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write ``stainalign.safetensors`` + ``stainalign.json`` (no pickle) into `out_dir`."""
        self._check_fitted()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.network_.state_dict().items()}
        with atomic_path(out / "stainalign.safetensors", suffix=".safetensors") as tmp:
            save_file(state, str(tmp))
        atomic_write_json(
            out / META_FILE,
            {
                "format_version": FORMAT_VERSION,
                "params": asdict(self.params),
                "classes": self.classes_,
                "n_features_in": self.n_features_in_,
                "threshold": getattr(self, "threshold_", None),
                "schedule": getattr(self, "schedule_", None),
                "n_labelled": getattr(self, "n_labelled_", None),
                "n_unlabelled": getattr(self, "n_unlabelled_", None),
                "history": self.history_,
                "step_history": getattr(self, "step_history_", []),
                **(extra or {}),
            },
        )
        return out

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> tuple[HistoStainAlign, dict[str, Any]]:
        """Read a model written by `save`; returns the model and its full JSON record.

        A format-1 folder (before standardisation, the logit scale and the threshold) loads with
        ``standardize=False``, ``logit_scale=1``, ``threshold="none"``: its predictions are unchanged.
        """
        folder = Path(model_dir)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not a stainalign model folder (no stainalign.json); run `histovl stainalign fit` first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"{folder}: stainalign format {version} is not supported (expected {FORMAT_VERSION})")
        params = meta["params"] if version == FORMAT_VERSION else {
            **meta["params"], "standardize": False, "logit_scale": 1.0, "threshold": "none", "schedule": "joint"}
        model = cls(**params)
        net = StainAlignNetwork(int(meta["n_features_in"]), len(meta["classes"]), model.params)
        missing, unexpected = net.load_state_dict(load_file(str(folder / "stainalign.safetensors")), strict=False)
        if unexpected or any(not k.endswith(("_mean", "_std")) for k in missing):
            raise ValueError(f"{folder}: stainalign.safetensors does not match its stainalign.json ({missing + unexpected})")
        model.network_, model.classes_ = net.eval(), list(meta["classes"])
        model.n_features_in_, model.history_ = int(meta["n_features_in"]), list(meta.get("history", []))
        model.step_history_ = list(meta.get("step_history", []))
        model.threshold_, model.schedule_ = meta.get("threshold"), meta.get("schedule")
        return model, meta
