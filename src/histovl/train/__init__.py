"""Fine-tuning: the loop (`finetune`), the losses (`clip`, `his2lip`) and caption templates."""

from histovl.train.captions import CaptionTemplates, load_caption_templates, sample_captions
from histovl.train.finetune import DistributedHooks, FinetuneConfig, FinetuneResult, finetune
from histovl.train.losses import His2LipWeights, clip_loss, get_loss, his2lip_loss

__all__ = [
    "CaptionTemplates",
    "DistributedHooks",
    "FinetuneConfig",
    "FinetuneResult",
    "His2LipWeights",
    "clip_loss",
    "finetune",
    "get_loss",
    "his2lip_loss",
    "load_caption_templates",
    "sample_captions",
]
