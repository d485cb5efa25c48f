"""Model cards, the registry and one loader per family. Imports nothing of the pipeline."""

from histovl.models.card import ModelCard
from histovl.models.encoder import Encoder
from histovl.models.preprocess import Preprocess

__all__ = ["Encoder", "ModelCard", "Preprocess"]
