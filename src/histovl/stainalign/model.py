"""HistoStainAlign: predict an IHC status from the H&E slide, trained with paired H&E/IHC slides.

Architecture (HistoStainAlign, arXiv:2506.15853, as implemented here; docs/stainalign.md):

- one `GatedAttentionPool` per stain turns a bag of frozen tile embeddings into a slide
  embedding; a linear projection per stain maps it into a shared space (L2-normalised);
- training minimises ``CE(classifier(e_HE), y) + align_weight × InfoNCE_sym(e_HE, e_IHC)``
  jointly, so the H&E embedding is pulled towards the IHC embedding of the same case (no tile
  registration, no tile labels);
- prediction uses only the H&E branch: ``classifier(e_HE)``.

``align=False`` is the paper's baseline: the same encoder, pooling, projection and classifier,
trained with the classification loss alone (the IHC branch is unused).

Inside a torchrun job (`histovl stainalign fit` under `torchrun`, docs/scale-out.md) `fit` trains
data-parallel: each rank takes its share of every global batch of ``batch_size`` pairs, DDP
averages the gradients, and the alignment loss sees the slide embeddings of all ranks (gathered
with gradients), so the loss curve equals one process's (with ``dropout=0``; dropout masks are
drawn per rank). One process: unchanged.

The estimator follows scikit-learn's contract: `__init__` stores parameters, `fit` returns self,
learned state ends in ``_``, and `random_state` fixes initialisation, shuffling and tile sampling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from histovl._io import atomic_path, atomic_write_json
from histovl.distributed import (
    DistContext,
    ForwardThrough,
    all_gather_rows_with_grad,
    all_reduce_sum,
    current_context,
    wrap_ddp,
)
from histovl.errors import NonFiniteError
from histovl.stainalign.mil import GatedAttentionPool, pad_bags, symmetric_contrastive_loss

FORMAT_VERSION = 1
META_FILE = "stainalign.json"


@dataclass(frozen=True)
class StainAlignParams:
    """Hyper-parameters (all of `HistoStainAlign.__init__`; defaults as in docs/stainalign.md)."""

    align: bool = True
    """False is the paper's baseline: classification loss only, the IHC branch unused."""
    hidden_dim: int = 128
    """Width of the attention-MIL pooling (per stain)."""
    attention_dim: int = 64
    projection_dim: int = 64
    """Dimension of the shared, L2-normalised H&E/IHC slide space."""
    temperature: float = 0.1
    """Of the symmetric InfoNCE alignment loss."""
    align_weight: float = 1.0
    dropout: float = 0.1
    """In the attention-MIL pooling while training."""
    epochs: int = 60
    batch_size: int = 16
    """Paired slides per training step (the global batch under torchrun)."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_tiles: int = 512
    """Tiles sampled per bag and step when a bag is larger."""
    class_weight: str | None = "balanced"
    num_threads: int | None = 1
    """torch threads while training and predicting (None: leave as is; see `torch_threads`)."""
    random_state: int = 0

    @classmethod
    def coerce(cls, params: StainAlignParams | Mapping[str, Any] | None, **changes: Any) -> StainAlignParams:
        """`params` (a `StainAlignParams`, a partial mapping of its fields, or None for the
        defaults) with `changes` applied; an unknown name is a `TypeError` naming it."""
        base = asdict(params) if isinstance(params, StainAlignParams) else dict(params or {})
        merged = {**base, **changes}
        unknown = set(merged) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown HistoStainAlign parameter(s): {sorted(unknown)}")
        return cls(**merged)


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder written by `HistoStainAlign.save` (``histovl stainalign fit``'s output)."""
    return (Path(path) / META_FILE).is_file()


class _Network(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, p: StainAlignParams) -> None:
        super().__init__()
        self.he_pool = GatedAttentionPool(in_dim, p.hidden_dim, p.attention_dim, p.dropout)
        self.ihc_pool = GatedAttentionPool(in_dim, p.hidden_dim, p.attention_dim, p.dropout)
        self.he_proj = nn.Linear(p.hidden_dim, p.projection_dim)
        self.ihc_proj = nn.Linear(p.hidden_dim, p.projection_dim)
        self.classifier = nn.Linear(p.projection_dim, n_classes)

    def he_embed(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, att = self.he_pool(bags, mask)
        return F.normalize(self.he_proj(z), dim=-1), att

    def ihc_embed(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z, _ = self.ihc_pool(bags, mask)
        return F.normalize(self.ihc_proj(z), dim=-1)

    def branches(
        self, he_x: torch.Tensor, he_m: torch.Tensor, ihc_x: torch.Tensor | None = None, ihc_m: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One training forward: (H&E embeddings, class logits, IHC embeddings or None)."""
        e_he, _ = self.he_embed(he_x, he_m)
        e_ihc = self.ihc_embed(ihc_x, ihc_m) if ihc_x is not None and ihc_m is not None else None
        return e_he, self.classifier(e_he), e_ihc


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


def _pad_or_empty(bags: list[torch.Tensor], dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_bags` on `device`, or an empty batch [0, 1, dim] for a rank with no bags this step."""
    if not bags:
        return torch.zeros((0, 1, dim), device=device), torch.zeros((0, 1), dtype=torch.bool, device=device)
    x, m = pad_bags(bags)
    return x.to(device), m.to(device)


def _as_bags(bags: Sequence[np.ndarray], what: str, dim: int | None = None) -> list[torch.Tensor]:
    out = []
    for i, b in enumerate(bags):
        arr = np.asarray(b, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"{what} bag {i} must be a non-empty [n_tiles, dim] array, got shape {arr.shape}")
        if dim is not None and arr.shape[1] != dim:
            raise ValueError(f"{what} bag {i} has dimension {arr.shape[1]}, the model expects {dim}")
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"{what} bag {i} holds NaN/Inf tile embeddings; re-embed that slide")
        out.append(torch.from_numpy(arr))
    return out


@dataclass
class _TrainingData:
    """What `HistoStainAlign.fit` trains on: checked bags, class indices and class weights."""

    he: list[torch.Tensor]
    ihc: list[torch.Tensor] | None
    target: torch.Tensor
    weight: torch.Tensor | None
    classes: list[str]
    dim: int


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
    def fit(self, he_bags: Sequence[np.ndarray], ihc_bags: Sequence[np.ndarray] | None, y: Sequence[str]) -> HistoStainAlign:
        """Train on paired bags (`ihc_bags` may be None only when ``align=False``)."""
        p = self.params
        data = self._training_data(he_bags, ihc_bags, y)
        n = len(data.he)
        ctx = current_context()  # inside a torchrun job (process group up): data-parallel
        with torch.random.fork_rng(devices=[]), torch_threads(p.num_threads):
            torch.manual_seed(p.random_state)
            gen = torch.Generator().manual_seed(p.random_state)
            net = _Network(data.dim, len(data.classes), p)
            trainer: nn.Module = net
            if ctx.is_distributed:
                net.to(ctx.device)  # the CPU under gloo, this rank's GPU under nccl
                # DDP broadcasts rank 0's weights and averages gradients; the baseline never uses
                # the IHC branch, so DDP must not wait for its gradients
                trainer = wrap_ddp(ForwardThrough(net, net.branches), find_unused_parameters=data.ihc is None)
                torch.manual_seed(p.random_state + ctx.rank)  # independent dropout masks per rank
            opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
            history: list[dict[str, float]] = []
            steps: list[dict[str, float]] = []
            for epoch in range(p.epochs):
                net.train()
                sums = {"loss": 0.0, "cls": 0.0, "align": 0.0}
                for idx in self._batches(n, gen):
                    if ctx.is_distributed:
                        loss, logged = self._distributed_step(trainer, data, idx, gen, ctx)
                    else:
                        loss, logged = self._local_step(net, data, idx, gen)
                    if not np.isfinite(logged["loss"]):
                        raise NonFiniteError(f"HistoStainAlign loss became NaN/Inf at epoch {epoch}; lower --lr")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    for key, val in logged.items():
                        sums[key] += val * len(idx) / n
                    steps.append({"epoch": float(epoch), **logged})
                history.append({"epoch": float(epoch), **sums})
        self.network_ = net.cpu().eval()
        self.classes_, self.n_features_in_ = data.classes, data.dim
        self.history_, self.step_history_ = history, steps
        return self

    def _training_data(
        self, he_bags: Sequence[np.ndarray], ihc_bags: Sequence[np.ndarray] | None, y: Sequence[str]
    ) -> _TrainingData:
        """The bags as tensors (checked), class indices and class weights."""
        labels = [str(v) for v in y]
        if len(labels) != len(he_bags):
            raise ValueError(f"{len(he_bags)} H&E bags but {len(labels)} labels")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"need at least two classes to train a status classifier, got {classes}")
        dim = int(_as_bags(he_bags[:1], "H&E")[0].shape[1])
        he = _as_bags(he_bags, "H&E", dim)
        ihc: list[torch.Tensor] | None = None
        if self.params.align:
            if ihc_bags is None or len(ihc_bags) != len(he):
                raise ValueError("alignment needs one IHC bag per H&E bag (pass align=False for the baseline)")
            ihc = _as_bags(ihc_bags, "IHC", dim)
        target = torch.tensor([classes.index(v) for v in labels])
        counts = torch.bincount(target, minlength=len(classes)).float()
        weight = (counts.sum() / (len(classes) * counts.clamp(min=1))) if self.params.class_weight == "balanced" else None
        return _TrainingData(he, ihc, target, weight, classes, dim)

    def _batches(self, n: int, gen: torch.Generator) -> list[list[int]]:
        """This epoch's batches of pair indices (a last batch of one joins the one before)."""
        order = torch.randperm(n, generator=gen).tolist()
        batches = [order[s : s + self.params.batch_size] for s in range(0, n, self.params.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # InfoNCE needs >= 2 pairs
            batches[-2].extend(batches.pop())
        return batches

    def _local_step(
        self, net: _Network, data: _TrainingData, idx: list[int], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One process: the batch's loss to back-propagate and the logged losses."""
        p = self.params
        he_x, he_m = pad_bags([self._sample(data.he[i], gen) for i in idx])
        e_he, _ = net.he_embed(he_x, he_m)
        cls_loss = F.cross_entropy(net.classifier(e_he), data.target[idx], weight=data.weight)
        loss = cls_loss
        align_loss = torch.zeros(())
        if data.ihc is not None and len(idx) >= 2:
            ihc_x, ihc_m = pad_bags([self._sample(data.ihc[i], gen) for i in idx])
            align_loss = symmetric_contrastive_loss(e_he, net.ihc_embed(ihc_x, ihc_m), p.temperature)
            loss = loss + p.align_weight * align_loss
        return loss, {"loss": float(loss.detach()), "cls": float(cls_loss.detach()), "align": float(align_loss.detach())}

    def _distributed_step(
        self, trainer: nn.Module, data: _TrainingData, idx: list[int], gen: torch.Generator, ctx: DistContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """This rank's share of the global batch `idx`: (loss to back-propagate, logged losses).

        Every rank draws the tile samples of the *whole* batch from the shared generator (so the
        generators stay in step, and the samples equal a one-process run's), then keeps every
        ``world``-th bag (`DistributedSampler`'s split). Classification: this rank's weighted CE
        *sum* over the global batch's weight total, times ``world``, so DDP's gradient average
        is the one-process gradient also for shards of different sizes. Alignment: the slide
        embeddings of all ranks are gathered with gradients and every rank computes the same
        symmetric InfoNCE over the global batch (the scheme of `all_gather_with_grad`).
        """
        p, world, rank = self.params, ctx.world_size, ctx.rank
        device, he, ihc, target, weight = ctx.device, data.he, data.ihc, data.target, data.weight
        he_all = [self._sample(he[i], gen) for i in idx]
        ihc_all = [self._sample(ihc[i], gen) for i in idx] if ihc is not None and len(idx) >= 2 else None
        local = idx[rank::world]
        he_x, he_m = _pad_or_empty(he_all[rank::world], data.dim, device)
        ihc_x = ihc_m = None
        if ihc_all is not None:
            ihc_x, ihc_m = _pad_or_empty(ihc_all[rank::world], data.dim, device)
        e_he, logits, e_ihc = trainer(he_x, he_m, ihc_x, ihc_m)  # all parameters used inside DDP's forward
        y = target[local].to(device)
        w = weight.to(device) if weight is not None else None
        per_bag = F.cross_entropy(logits, y, weight=w, reduction="none")
        denominator = float((weight[target[idx]] if weight is not None else torch.ones(len(idx))).sum())
        cls_sum = per_bag.sum()
        loss = cls_sum * (world / denominator)
        cls_value = float(all_reduce_sum(cls_sum.detach())) / denominator
        align_value = 0.0
        if e_ihc is not None:
            all_he, _ = all_gather_rows_with_grad(e_he)
            all_ihc, _ = all_gather_rows_with_grad(e_ihc)
            align_loss = symmetric_contrastive_loss(all_he, all_ihc, p.temperature)
            loss = loss + p.align_weight * align_loss
            align_value = float(align_loss.detach())
        total = cls_value + p.align_weight * align_value if ihc_all is not None else cls_value
        return loss, {"loss": total, "cls": cls_value, "align": align_value}

    def _sample(self, bag: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if bag.shape[0] <= self.params.max_tiles:
            return bag
        return bag[torch.randperm(bag.shape[0], generator=gen)[: self.params.max_tiles]]

    # ---- inference ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError("this HistoStainAlign is not fitted yet: call fit() or HistoStainAlign.load()")

    def _he_forward(self, he_bags: Sequence[np.ndarray], batch: int = 32) -> tuple[torch.Tensor, list[np.ndarray]]:
        self._check_fitted()
        bags = _as_bags(he_bags, "H&E", self.n_features_in_)
        embs: list[torch.Tensor] = []
        atts: list[np.ndarray] = []
        with torch.inference_mode(), torch_threads(self.params.num_threads):
            for s in range(0, len(bags), batch):
                chunk = bags[s : s + batch]
                x, m = pad_bags(chunk)
                e, a = self.network_.he_embed(x, m)
                embs.append(e)
                atts.extend(a[i, : len(b)].numpy() for i, b in enumerate(chunk))
        return torch.cat(embs), atts

    def transform(self, he_bags: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned H&E slide embeddings [N, projection_dim] (L2-normalised)."""
        return self._he_forward(he_bags)[0].numpy()

    def predict_proba(self, he_bags: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, C] (columns in `classes_` order) from H&E bags only."""
        emb, _ = self._he_forward(he_bags)
        with torch.inference_mode():
            return torch.softmax(self.network_.classifier(emb).double(), dim=-1).numpy()

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
                "history": self.history_,
                "step_history": getattr(self, "step_history_", []),
                **(extra or {}),
            },
        )
        return out

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> tuple[HistoStainAlign, dict[str, Any]]:
        """Read a model written by `save`; returns the model and its full JSON record."""
        folder = Path(model_dir)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not a stainalign model folder (no stainalign.json); run `histovl stainalign fit` first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: stainalign format {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
        model = cls(**meta["params"])
        net = _Network(int(meta["n_features_in"]), len(meta["classes"]), model.params)
        net.load_state_dict(load_file(str(folder / "stainalign.safetensors")), strict=True)
        net.eval()
        model.network_, model.classes_ = net, list(meta["classes"])
        model.n_features_in_, model.history_ = int(meta["n_features_in"]), list(meta.get("history", []))
        model.step_history_ = list(meta.get("step_history", []))
        return model, meta
