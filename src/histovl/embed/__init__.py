"""The encoding engine and the content-keyed embedding cache."""

from histovl.embed.cache import EmbeddingCache, default_cache_dir
from histovl.embed.engine import EmbeddingResult, Failure, ImageTransform, encode_images

__all__ = ["EmbeddingCache", "EmbeddingResult", "Failure", "ImageTransform", "default_cache_dir", "encode_images"]
