"""`histovl.distributed`: the gathered contrastive loss and DDP give single-process gradients.

Two real gloo processes (torch.multiprocessing spawn) are compared with one process computing the
same loss on the whole batch; the helpers' one-process fallbacks are checked directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler

from histovl.distributed import (
    DistContext,
    all_gather_with_grad,
    barrier,
    distributed_sampler,
    init_distributed,
    is_main_process,
    rank0_only,
    seed_rank,
    shard_indices,
    wrap_ddp,
)
from histovl.train.losses import his2lip_loss
from tests.helpers.torchrun import free_port

WORLD = 2
N_GLOBAL = 8


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Linear]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(N_GLOBAL, 6, generator=gen)
    texts = torch.randn(N_GLOBAL, 4, generator=gen)
    tissue = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2])
    torch.manual_seed(1)
    return images, texts, tissue, nn.Linear(6, 4)


def _loss(proj: nn.Module, images: torch.Tensor, texts: torch.Tensor, tissue: torch.Tensor, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
    img = nn.functional.normalize(proj(images), dim=-1)
    txt = nn.functional.normalize(texts, dim=-1)
    if gather:
        img, txt, tissue = all_gather_with_grad(img), all_gather_with_grad(txt), all_gather_with_grad(tissue)
    return his2lip_loss(img, txt, torch.tensor(10.0), tissue=tissue), img


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    os.environ["HISTOVL_DIST_BACKEND"] = "gloo"
    torch.set_num_threads(1)
    ctx = init_distributed()
    images, texts, tissue, proj = _inputs()
    shard = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
    local_images = images[shard].clone().requires_grad_(True)
    model = wrap_ddp(proj)
    loss, gathered = _loss(model, local_images, texts[shard], tissue[shard], gather=True)
    loss.backward()
    torch.save(
        {
            "ctx": (ctx.rank, ctx.world_size, ctx.backend, is_main_process()),
            "loss": loss.detach(),
            "gathered": gathered.detach(),
            "input_grad": local_images.grad,
            "weight_grad": proj.weight.grad,
            "bias_grad": proj.bias.grad,
        },
        Path(out) / f"rank{rank}.pt",
    )
    barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference() -> dict[str, torch.Tensor]:
    images, texts, tissue, proj = _inputs()
    images = images.clone().requires_grad_(True)
    loss, emb = _loss(proj, images, texts, tissue, gather=False)
    loss.backward()
    assert images.grad is not None and proj.weight.grad is not None and proj.bias.grad is not None
    return {"loss": loss.detach(), "emb": emb.detach(), "input_grad": images.grad, "weight_grad": proj.weight.grad, "bias_grad": proj.bias.grad}


def test_two_gloo_ranks_see_the_global_batch_and_the_same_loss(two_rank_results: list[dict]) -> None:
    ref = _reference()
    assert [r["ctx"] for r in two_rank_results] == [(0, 2, "gloo", True), (1, 2, "gloo", False)]
    for r in two_rank_results:
        torch.testing.assert_close(r["gathered"], ref["emb"], rtol=0, atol=1e-6)
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=0, atol=1e-6)


def test_gather_backward_sums_shard_gradients_over_ranks(two_rank_results: list[dict]) -> None:
    """Each rank computes the global loss, so its shard's gradient is world_size x the reference."""
    ref = _reference()
    for rank, r in enumerate(two_rank_results):
        shard = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
        torch.testing.assert_close(r["input_grad"], WORLD * ref["input_grad"][shard], rtol=1e-5, atol=1e-6)


def test_ddp_averaging_recovers_the_single_process_parameter_gradient(two_rank_results: list[dict]) -> None:
    ref = _reference()
    assert ref["weight_grad"].abs().max() > 1e-3  # the comparison is not vacuous
    for r in two_rank_results:
        torch.testing.assert_close(r["weight_grad"], ref["weight_grad"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["bias_grad"], ref["bias_grad"], rtol=1e-5, atol=1e-6)


def test_without_gather_the_gradient_would_differ() -> None:
    """Guard: a per-rank (local-batch) loss gives a different gradient, so the tests above can fail."""
    images, texts, tissue, proj = _inputs()
    ref = _reference()
    grads = []
    for shard in (slice(0, 4), slice(4, 8)):
        proj.zero_grad()
        _loss(proj, images[shard], texts[shard], tissue[shard], gather=False)[0].backward()
        assert proj.weight.grad is not None
        grads.append(proj.weight.grad.clone())
    assert not torch.allclose(sum(grads) / 2, ref["weight_grad"], atol=1e-4)


def test_single_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed()
    assert ctx == DistContext() and ctx.is_main and not ctx.is_distributed
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    module = nn.Linear(2, 2)
    assert wrap_ddp(module) is module
    assert distributed_sampler(range(5)) is None
    assert is_main_process()
    barrier()
    assert rank0_only(lambda: 7)() == 7
    assert seed_rank(5, rank=1) == 6


def test_context_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("HISTOVL_DIST_BACKEND", "gloo")
    ctx = DistContext.from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, ctx.is_main) == (3, 4, 1, "gloo", False)
    assert ctx.device == torch.device("cpu")
    monkeypatch.delenv("RANK")
    with pytest.raises(RuntimeError, match="torchrun"):
        DistContext.from_env()


@pytest.mark.parametrize(("n", "world"), [(10, 2), (10, 3), (7, 4), (4, 1)])
def test_shard_indices_match_distributed_sampler(n: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard_indices(order, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal step counts: no rank waits in a collective
    for r, shard in enumerate(shards):
        sampler = DistributedSampler(order.tolist(), num_replicas=world, rank=r, shuffle=False)  # type: ignore[arg-type]
        expected = [int(order[i]) for i in sampler]
        assert shard.tolist() == expected
