"""One seed for everything: Python, NumPy, torch (CPU and CUDA) and data-loader workers.

`seed_everything` seeds torch at once (importing it). `seed_run` is for commands whose warm runs
never need torch (a fully cached zero-shot, multi-label, retrieval or robustness run): it seeds
Python and NumPy now and torch either now (when it is already imported) or at the moment a model
is loaded (`histovl.models.lazy.loaded_model` calls `apply_pending_torch_seed`), so a run that
loads no model does not import torch just to seed it, and one that does is seeded as before.
"""

from __future__ import annotations

import os
import random
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_pending_torch_seed: int | None = None


def _check(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")


def _seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every random source histovl uses and return a torch generator for samplers.

    DataLoader workers derive their seeds from torch's global RNG, so seeding it here makes
    worker-side randomness reproducible too.

    Example:
        >>> g = seed_everything(0)
        >>> type(g).__name__
        'Generator'
    """
    import torch

    global _pending_torch_seed
    _check(seed)
    random.seed(seed)
    np.random.seed(seed)
    _seed_torch(seed)
    _pending_torch_seed = None
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def seed_run(seed: int) -> None:
    """Seed Python and NumPy now, and torch now or when a model is loaded (module docstring).

    Example:
        >>> seed_run(0)
    """
    global _pending_torch_seed
    _check(seed)
    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if "torch" in sys.modules:
        _seed_torch(seed)
        _pending_torch_seed = None
    else:
        _pending_torch_seed = seed


def apply_pending_torch_seed() -> None:
    """Seed torch with the seed `seed_run` deferred, if any (called just before a model loads)."""
    global _pending_torch_seed
    if _pending_torch_seed is not None:
        seed, _pending_torch_seed = _pending_torch_seed, None
        _seed_torch(seed)
