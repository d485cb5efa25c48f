"""Trained heads on frozen features: HistoCLIP's Cross-Modal Matching (CMM) head."""

from histovl.heads.cmm import CrossModalMatching, KVMode
from histovl.heads.cmm_head import CMMHead

__all__ = ["CMMHead", "CrossModalMatching", "KVMode"]
