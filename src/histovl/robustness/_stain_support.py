"""Whether Macenko stain normalisation can run (torchstain installed), found without importing it.

Importing torchstain imports torch, which a fully cached robustness run does not need
(`histovl.robustness.stain_lazy`); a broken install fails at the fit, with `INSTALL_HINT`.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "stain normalisation needs torchstain: pip install 'histovl[stain]'"


def stain_available() -> bool:
    """True when torchstain is installed."""
    return importlib.util.find_spec("torchstain") is not None
