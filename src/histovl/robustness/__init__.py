"""Robustness: the corruption registry, in-memory corrupted encoding, and the sweep.

Example:
    >>> from histovl.robustness import get_corruption, list_corruptions
    >>> list_corruptions()[:3]
    ['brightness', 'contrast', 'saturation']
    >>> get_corruption("blur").levels
    (1, 2, 3, 4)

See docs/robustness.md for the corruption parameters and the sweep's protocol.
"""

from histovl._command_module import make_callable
from histovl.robustness.corruptions import (
    BUILTIN_CORRUPTIONS,
    COLOUR_FACTORS,
    blur_kernel,
    hue_rotation,
)
from histovl.robustness.registry import (
    Corruption,
    CorruptionFn,
    CorruptionTransform,
    add_corruption,
    get_corruption,
    list_corruptions,
    register_corruption,
    unregister_corruption,
)
from histovl.robustness.results import CSV_COLUMNS, Condition, RobustnessResult
from histovl.robustness.sweep import RobustnessConfig, plan_conditions, robustness

__all__ = [
    "BUILTIN_CORRUPTIONS",
    "CSV_COLUMNS",
    "Condition",
    "RobustnessConfig",
    "RobustnessResult",
    "plan_conditions",
    "robustness",
    "COLOUR_FACTORS",
    "Corruption",
    "CorruptionFn",
    "CorruptionTransform",
    "add_corruption",
    "blur_kernel",
    "get_corruption",
    "hue_rotation",
    "list_corruptions",
    "register_corruption",
    "unregister_corruption",
]

make_callable(__name__, robustness)  # histovl.robustness(...) runs the command
