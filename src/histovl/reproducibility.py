"""One seed for everything: Python, NumPy, torch (CPU and CUDA) and data-loader workers."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed every random source histovl uses and return a torch generator for samplers.

    DataLoader workers derive their seeds from torch's global RNG, so seeding it here makes
    worker-side randomness reproducible too.

    Example:
        >>> g = seed_everything(0)
        >>> isinstance(g, torch.Generator)
        True
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
