"""Multi-label zero-shot classification: HistoCLIP's baseline, one-vs-rest, power-set and top-k.

The strategies are pure functions over embeddings (`strategies`); `multilabel(...)` runs one end
to end on a data set, as its `MultilabelConfig` says, and writes the standard evaluation outputs
(`pipeline`).
"""

from histovl.zeroshot.multilabel.pipeline import (
    STRATEGIES,
    MultilabelConfig,
    MultilabelResult,
    multilabel,
)
from histovl.zeroshot.multilabel.prompts import (
    TextEmbeddingMemo,
    embed_subsets,
    subset_prompt_texts,
)
from histovl.zeroshot.multilabel.strategies import (
    MAX_POWERSET_LABELS,
    MultilabelDecision,
    baseline_decision,
    ovr_decision,
    powerset_decision,
    topk_decision,
)

__all__ = [
    "MAX_POWERSET_LABELS",
    "STRATEGIES",
    "MultilabelConfig",
    "MultilabelDecision",
    "MultilabelResult",
    "TextEmbeddingMemo",
    "baseline_decision",
    "embed_subsets",
    "multilabel",
    "ovr_decision",
    "powerset_decision",
    "subset_prompt_texts",
    "topk_decision",
]
