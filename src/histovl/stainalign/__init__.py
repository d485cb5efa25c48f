"""HistoStainAlign: predict an IHC status from H&E slides, trained on paired H&E/IHC slides.

Example:
    >>> from histovl.stainalign import stainalign_fit
    >>> metrics = stainalign_fit("pairs.csv", "runs/ki67", model="histovl-lite")  # doctest: +SKIP
    >>> stainalign_eval("runs/ki67", "new_pairs.csv", "runs/ki67-eval")  # doctest: +SKIP
"""

from histovl.stainalign.bags import (
    SlideBag,
    SlideTiles,
    build_bag,
    embed_bags,
    read_pairs,
    slide_tiles,
)
from histovl.stainalign.deepliif import build_deepliif_pairs
from histovl.stainalign.evaluate import (
    CrossValidationResult,
    cross_validate,
    grouped_folds,
    summarise,
)
from histovl.stainalign.mil import GatedAttentionPool, pad_bags, symmetric_contrastive_loss
from histovl.stainalign.model import HistoStainAlign, StainAlignParams
from histovl.stainalign.planted import (
    PlantedConfig,
    PlantedPairs,
    bayes_accuracy,
    bayes_auroc,
    bayes_posterior,
    planted_pairs,
)
from histovl.stainalign.run import (
    StainAlignFitConfig,
    stainalign_eval,
    stainalign_fit,
    write_heatmaps,
)

__all__ = [
    "CrossValidationResult",
    "GatedAttentionPool",
    "HistoStainAlign",
    "PlantedConfig",
    "PlantedPairs",
    "SlideBag",
    "SlideTiles",
    "StainAlignFitConfig",
    "StainAlignParams",
    "bayes_accuracy",
    "bayes_auroc",
    "bayes_posterior",
    "build_bag",
    "build_deepliif_pairs",
    "cross_validate",
    "embed_bags",
    "grouped_folds",
    "pad_bags",
    "planted_pairs",
    "read_pairs",
    "slide_tiles",
    "stainalign_eval",
    "stainalign_fit",
    "summarise",
    "symmetric_contrastive_loss",
    "write_heatmaps",
]
