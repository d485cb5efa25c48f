"""Build a module without initialising weights that a checkpoint is about to replace.

Building an open_clip ViT-B/32 draws ~150 M random numbers (``nn.init.normal_`` and friends)
that the strict load then overwrites: ~2 s of CPU on the development machines, single-threaded,
on every cold run (docs/performance.md). `build_then_load` builds the module with its
parameters on PyTorch's ``meta`` device (shapes, no memory, no init work), allocates each
parameter and persistent buffer once on the CPU, copies the checkpoint into it exactly as
``load_state_dict`` would (same dtype casts, same fresh, aligned memory) and assigns it.
Buffers are built for real, so the ones a checkpoint does not hold (open_clip's causal
``attn_mask``) are computed as before.

Safety: the result is used only if every parameter and buffer ended on a real device and no
parameter is shared between two modules (tying); otherwise, and on any error while building on
``meta``, the module is built and loaded the plain way. Only the calling thread builds on
``meta`` (a thread-local flag), and the global torch RNG is left as it was before the build.
Equality with the plain build is tested bit for bit (tests/unit/models/test_empty_init.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class NotMaterialisedError(RuntimeError):
    """A module built on ``meta`` could not be given real tensors (the plain build is used)."""


_STATE = threading.local()
_LOCK = threading.Lock()
_USERS = 0
_ORIGINAL: Any = None


def _on_meta() -> bool:
    return bool(getattr(_STATE, "depth", 0))


#: ``torch.nn.init`` functions that are skipped for a ``meta`` tensor while this thread builds on
#: ``meta``: on ``meta`` they compute nothing, yet PyTorch runs them through its Python reference
#: implementations, whose first call imports ``torch._dynamo`` (1.2-3 s of a cold run, measured
#: with ``python -X importtime``). transformers' ``no_init_weights`` skips the same list.
INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)
_ORIGINAL_INITS: dict[str, Any] = {}


def _skipped_on_meta(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def init(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if _on_meta() and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return fn(tensor, *args, **kwargs)

    return init


def _register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
    if param is not None and _on_meta() and param.device.type != "meta":
        param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _ORIGINAL(self, name, param)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within: parameters this thread registers on any `nn.Module` go to the ``meta`` device
    and ``torch.nn.init`` functions skip them (`INIT_FUNCTIONS`); buffers and other threads
    are untouched."""
    global _USERS, _ORIGINAL
    with _LOCK:
        if _USERS == 0:
            _ORIGINAL = nn.Module.register_parameter
            nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]
            for name in INIT_FUNCTIONS:
                if hasattr(nn.init, name):
                    _ORIGINAL_INITS[name] = getattr(nn.init, name)
                    setattr(nn.init, name, _skipped_on_meta(_ORIGINAL_INITS[name]))
        _USERS += 1
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                nn.Module.register_parameter = _ORIGINAL  # type: ignore[method-assign]
                for name, fn in _ORIGINAL_INITS.items():
                    setattr(nn.init, name, fn)
                _ORIGINAL_INITS.clear()


def materialise(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, owned: bool = False) -> None:
    """Give a module built under `parameters_on_meta` its checkpoint tensors: each state-dict
    entry is copied into a new CPU tensor of the module's own dtype and shape (what
    ``load_state_dict``'s ``copy_`` does), then assigned; with `owned` (tensors in fresh memory
    nothing else uses: `histovl.models._checkpoint.FreshTensors`) a tensor that already has the
    module's dtype and shape and is contiguous on the CPU is assigned as it is. Keys must match
    exactly (checked by the caller); raises `NotMaterialisedError` if anything is left on ``meta``."""
    own = module.state_dict(keep_vars=True)
    fresh = {}
    for key, target in own.items():
        src = state_dict[key]
        if owned and _usable_as_is(src, target):
            fresh[key] = src
            continue
        out = torch.empty(target.shape, dtype=target.dtype, device="cpu" if target.is_meta else target.device)
        with torch.no_grad():
            out.copy_(src)
        fresh[key] = out
    module.load_state_dict(fresh, strict=True, assign=True)
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:
        raise NotMaterialisedError(f"left on the meta device after loading: {left[:5]}")


def _usable_as_is(src: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        src.device.type == "cpu" and (target.is_meta or target.device.type == "cpu")
        and src.dtype == target.dtype and src.shape == target.shape and src.is_contiguous()
    )


def _shares_parameters(module: nn.Module) -> bool:
    """True if one parameter object is registered under two names (weight tying)."""
    seen: set[int] = set()
    for _, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            return True
        seen.add(id(p))
    return False


def build_then_load(build: Callable[[], M], load: Callable[[M, bool], None]) -> M:
    """``build()`` with parameters on ``meta``, then ``load(module, True)`` (assign); if that
    is not possible, ``build()`` and ``load(module, False)`` the plain way.

    `load` checks the checkpoint against the module (keys, shapes) before it assigns and
    raises for a mismatch: such errors are the user's and propagate as they are; only a
    `NotMaterialisedError` falls back to the plain build.
    """
    module: M | None = None
    with torch.random.fork_rng(devices=[]):
        try:
            with parameters_on_meta():
                module = build()
        except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError):
            module = None
    if module is not None and not _shares_parameters(module):
        try:
            load(module, True)
            return module
        except NotMaterialisedError:
            pass
    plain = build()
    load(plain, False)
    return plain
