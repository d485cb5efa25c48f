"""PyTorch distributed plumbing so training commands run unchanged under `torchrun`.

`torchrun --nproc-per-node N --no-python histovl finetune ...` starts N copies of the command
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the
environment. `init_distributed` reads them and joins the process group (gloo on CPU, nccl on
GPU); without them it is a no-op and every helper here degrades to its single-process meaning, so
library code calls these helpers unconditionally.

The one piece that is easy to get wrong is the contrastive loss: a CLIP-style loss over a global
batch needs every rank's embeddings, *with* gradients. `all_gather_with_grad` is open_clip's
``gather_features(..., gather_with_grad=True)`` (`torch.distributed.nn.all_gather`, re-stated on
public collectives because that function is deprecated in torch 2.14): its backward sums each
shard's gradient over ranks. Every rank then computes the same global loss, so each
local gradient is ``world_size`` times the single-process one, and DDP's gradient *averaging*
turns it back into exactly the single-process gradient (tested in
tests/unit/train/test_distributed.py).

Example:
    >>> ctx = init_distributed()  # no torchrun environment: a one-process context
    >>> ctx.world_size, ctx.is_main
    (1, True)
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes outputs).
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
        backend: ``gloo``, ``nccl`` or ``none`` (single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @classmethod
    def from_env(cls) -> DistContext:
        """Read the variables torchrun sets; absent or ``WORLD_SIZE=1`` means one process."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        try:
            rank = int(os.environ["RANK"])
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except (KeyError, ValueError) as err:
            raise RuntimeError(
                f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or not integers: "
                "start the command with `torchrun --nproc-per-node N --no-python histovl ...`"
            ) from err
        return cls(rank=rank, world_size=world, local_rank=local, backend=default_backend())

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This rank's device: its own GPU under nccl, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def default_backend() -> str:
    """nccl when CUDA is usable, gloo otherwise (``HISTOVL_DIST_BACKEND`` overrides)."""
    forced = os.environ.get("HISTOVL_DIST_BACKEND")
    if forced:
        return forced
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_distributed() -> DistContext:
    """Join the process group torchrun describes (idempotent); a no-op for one process.

    Returns the context for this process. Under nccl it also selects this rank's GPU.
    """
    ctx = DistContext.from_env()
    if not ctx.is_distributed:
        return ctx
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run with one process")
    if not dist.is_initialized():
        if ctx.backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=ctx.backend, rank=ctx.rank, world_size=ctx.world_size)
    return ctx


def current_context() -> DistContext:
    """The context of an initialised process group, or the one-process context."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return DistContext(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))
    return DistContext()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one rank that writes files."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if _active():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group after a final barrier (no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_job() -> Iterator[DistContext]:
    """A training command's process group: joined on entry (`init_distributed`; one process
    unless started by torchrun) and left on a clean exit if this call joined it (a group the
    caller set up stays up). After an error the group is left alone: `cleanup_distributed`'s
    barrier would wait for ranks that may never arrive, and the process is about to exit."""
    owns = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed()
    yield ctx
    if owns:
        cleanup_distributed()


def rank_device(ctx: DistContext, requested: str) -> str:
    """Where this rank computes: its own GPU under nccl (one GPU per rank), else `requested`."""
    return str(ctx.device) if ctx.backend == "nccl" else requested


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0, keeping the autograd graph.

    Rows come in rank order, so rank r's rows are ``[r * n, (r + 1) * n)``; every rank must pass
    the same shape. The backward pass sums the gradient of each shard over ranks and returns it to
    the rank that owns the shard, so with DDP's gradient averaging a global loss computed on every
    rank yields exactly the single-process gradient. Integer and bool tensors (ids, labels) are
    gathered without autograd. One process: returned unchanged.
    """
    if not _active():
        return tensor
    if not (tensor.is_floating_point() or tensor.is_complex()):
        # ids live where the caller keeps them (often the CPU); nccl can only move CUDA tensors
        wire = tensor.to(current_context().device).contiguous()
        parts = [torch.empty_like(wire) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, wire)
        return torch.cat(parts, dim=0).to(tensor.device)
    return _GatherWithGrad.apply(tensor)  # type: ignore[no-any-return]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradient over ranks and keeps this rank's rows.

    The same maths as `torch.distributed.nn.all_gather` (deprecated in torch 2.14) on public,
    backend-neutral collectives: all_reduce works on gloo and nccl alike, and the embeddings of
    a contrastive batch are small, so reducing the whole gradient costs nothing measurable.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        local = tensor.contiguous()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        ctx.rows = (rank * local.shape[0], (rank + 1) * local.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return total[start:stop]


def wrap_ddp(module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap `module` in DistributedDataParallel when distributed, else return it unchanged.

    DDP broadcasts rank 0's parameters at construction and averages gradients over ranks in
    backward. Buffers are not re-broadcast each step (training keeps the model in eval mode, so
    every rank's buffers stay equal; they are synchronised once at construction).
    """
    if not _active():
        return module
    ctx = current_context()
    device_ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, forward_sync_buffers=False, find_unused_parameters=find_unused_parameters
    )


class ForwardThrough(nn.Module):
    """Give DDP a forward pass: calling it runs `fn`, and `module`'s parameters belong to it.

    DDP only synchronises gradients of work done inside its ``forward``; a training loop whose
    embedding step is a closure (cached features, projection heads, the logit scale) wraps that
    closure here and calls ``wrap_ddp(ForwardThrough(encoder, embed_step))`` instead.
    """

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Skip DDP's all-reduce for accumulation micro-steps (``sync=False``); no-op without DDP."""
    if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
        yield
        return
    with module.no_sync():
        yield


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch's index order, exactly as `DistributedSampler` splits it.

    The order is padded by wrapping round to a multiple of `world_size` (so every rank runs the
    same number of steps and no collective waits forever), then rank r takes every
    ``world_size``-th index from r. Consecutive blocks of ``world_size * b`` indices of the padded
    order therefore form the same global batches as one process with batch ``world_size * b``.
    """
    if world_size <= 1:
        return order
    total = -(-len(order) // world_size) * world_size
    if total > len(order):
        reps = -(-total // len(order))
        order = order.repeat(reps)[:total]
    return order[rank:total:world_size]


def distributed_sampler(
    dataset: Sized, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> DistributedSampler[Any] | None:
    """A `DistributedSampler` for this rank, or None for one process (use plain shuffling).

    Call ``sampler.set_epoch(epoch)`` each epoch so the shuffle changes between epochs.
    """
    if not _active():
        return None
    return DistributedSampler(
        dataset,  # type: ignore[arg-type]
        num_replicas=dist.get_world_size(),
        rank=dist.get_rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


def seed_rank(seed: int, rank: int | None = None) -> int:
    """Seed Python, NumPy and torch with ``seed + rank`` and return it.

    For per-rank randomness (augmentation, dropout) only: model initialisation and the epoch
    shuffle must use the shared `seed` so every rank agrees.
    """
    rank = current_context().rank if rank is None else rank
    value = (seed + rank) % 2**32
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value


def rank0_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Decorator: run `fn` on rank 0 only (other ranks get None); use it for every file write."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        if is_main_process():
            return fn(*args, **kwargs)
        return None

    return wrapper


# ---- helpers for the head trainers (`cmm fit`, `stainalign fit`) -----------------------------


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous block ``[start, stop)`` of `n` items (block sizes differ by <= 1).

    Contiguous (not strided) so that concatenating the ranks' results in rank order restores
    the input order; a rank whose block is empty (``n < world_size``) gets ``start == stop``.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_gather_object(obj: R) -> list[R]:
    """Every rank's picklable `obj`, in rank order (``[obj]`` for one process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: R, src: int = 0) -> R:
    """Rank `src`'s picklable `obj` on every rank (`obj` itself for one process)."""
    if not _active():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[no-any-return]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks, returned on the tensor's own device; no autograd."""
    if not _active():
        return value
    wire = value.detach().to(current_context().device, dtype=torch.float64).clone()
    dist.all_reduce(wire, op=dist.ReduceOp.SUM)
    return wire.to(value.device, dtype=value.dtype)


def run_on_shards(fn: Callable[[], R]) -> list[R]:
    """Run `fn` on every rank and gather the results in rank order; a failure fails every rank.

    A rank that raised re-raises its own error; the others raise `RuntimeError` naming that
    rank and its error, instead of waiting forever in the gather. One process: ``[fn()]``.
    """
    if not _active():
        return [fn()]
    error: Exception | None = None
    result: Any = None
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - re-raised below on this rank, reported on the others
        error = err
    messages = all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, msg) for rank, msg in enumerate(messages) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise RuntimeError(f"rank {rank} failed, so this rank stops too: {msg}")
    return all_gather_object(result)


def run_on_blocks(n: int, fn: Callable[[int, int], R]) -> list[R]:
    """`run_on_shards` over `n` items: each rank runs ``fn(start, stop)`` on its own contiguous
    block (`shard_bounds`), and the results come back in rank order, i.e. in item order.
    One process: ``[fn(0, n)]``."""

    def mine() -> R:
        ctx = current_context()
        return fn(*shard_bounds(n, ctx.rank, ctx.world_size))

    return run_on_shards(mine)


def all_gather_rows_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """`all_gather_with_grad` for shards of different sizes (even empty ones).

    Returns the rows of every rank in rank order and the slice of them that is this rank's own.
    Rows are padded to the largest shard for the collective and the padding is dropped again,
    so the gradient reaching each rank's rows is the sum over ranks, as in
    `all_gather_with_grad`. One process: ``(tensor, slice(0, len(tensor)))``.
    """
    if not _active():
        return tensor, slice(0, tensor.shape[0])
    sizes = [int(s) for s in all_gather_with_grad(torch.tensor([tensor.shape[0]], dtype=torch.long)).tolist()]
    rank, widest = dist.get_rank(), max(sizes)
    start = sum(sizes[:rank])
    own = slice(start, start + sizes[rank])
    if widest == 0:
        return tensor, own
    padding = tensor.new_zeros((widest - tensor.shape[0], *tensor.shape[1:]))
    gathered = all_gather_with_grad(torch.cat([tensor, padding]))
    keep = torch.cat([torch.arange(r * widest, r * widest + s) for r, s in enumerate(sizes)]).to(gathered.device)
    return gathered.index_select(0, keep), own
