"""The corruption registry: named, levelled, deterministic image corruptions.

A corruption is a plain function ``fn(images, level, seeds) -> images`` over a batch of
model-sized float images ``[B, 3, S, S]`` in ``[0, 1]``. Working on the model-sized tensor (after
resize and crop, before mean/std normalisation) makes a corruption independent of the source
image's size, and lets a sweep decode every image once and corrupt it in memory.

`Corruption.apply` wraps the function with everything a caller should not have to think about:
single images or batches, uint8/float16/float64 inputs (computed in float32 and returned in the
input dtype), inputs outside ``[0, 1]`` (clamped), level validation, and one seed per image.

Keys are namespaced: the built-ins live in ``histovl/`` (``histovl/blur``), a user's own in their
namespace (``mylab/pen``). A short name (``blur``) resolves when exactly one namespace has it.

Example:
    >>> import torch
    >>> from histovl.robustness import register_corruption, get_corruption
    >>> @register_corruption("invert", levels=(1,), namespace="demo")
    ... def invert(images, level, seeds):
    ...     return 1.0 - images
    >>> get_corruption("demo/invert").apply(torch.zeros(3, 8, 8), 1).max().item()
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from histovl.errors import UnknownNameError, did_you_mean

if TYPE_CHECKING:  # torch is imported when pixels are corrupted: a fully cached sweep never imports it
    import torch

BUILTIN_NAMESPACE = "histovl"


class CorruptionFn(Protocol):
    """``(images float32 [B, 3, H, W] in [0, 1], level, one seed per image) -> same shape``.

    Must not modify `images` in place, and must be deterministic given (image, level, seed).
    """

    def __call__(self, images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Corruption:
    """One registered corruption.

    Attributes:
        name: short name (``blur``); the CSV's ``corruption`` column.
        fn: the batched function (see `CorruptionFn`).
        levels: the allowed severity levels, mild to severe in the study's order.
        parameters: the raw parameter of each level (factor, sigma, strokes, shrink), for docs,
            run.json and the gallery captions.
        namespace: ``histovl`` for the built-ins; anything else for user corruptions.
        uses_seed: True when the output depends on the per-image seed (e.g. markup placement);
            the seed then becomes part of the cache key.
        version: bump when the implementation changes, so cached embeddings are not reused.
        description: one line for help texts and docs.
    """

    name: str
    fn: CorruptionFn
    levels: tuple[int, ...]
    parameters: Mapping[int, float] = field(default_factory=dict)
    namespace: str = BUILTIN_NAMESPACE
    uses_seed: bool = False
    version: int = 1
    description: str = ""

    @property
    def key(self) -> str:
        """The namespaced registry key, e.g. ``histovl/blur``."""
        return f"{self.namespace}/{self.name}"

    def check_level(self, level: int) -> int:
        """Return `level` if allowed, else raise a ValueError listing the allowed levels."""
        if level not in self.levels:
            raise ValueError(
                f"corruption {self.name!r} has levels {list(self.levels)}, not {level!r}"
            )
        return int(level)

    def apply(
        self, images: torch.Tensor, level: int, seeds: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """Corrupt one image ``[3, H, W]`` or a batch ``[B, 3, H, W]``.

        Args:
            images: uint8 (0..255) or floating point (values clamped to [0, 1]) RGB.
            level: a severity level of this corruption.
            seeds: one per image (an int for a single image); None means 0 for every image.

        Returns:
            The corrupted images, same shape and dtype as `images`, values in range.
        """
        import torch

        self.check_level(level)
        single = images.ndim == 3
        batch = images.unsqueeze(0) if single else images
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an RGB image [3, H, W] or batch [B, 3, H, W], got {tuple(images.shape)}")
        n = batch.shape[0]
        if seeds is None:
            seed_list = [0] * n
        elif isinstance(seeds, int):
            seed_list = [int(seeds)] * n
        else:
            seed_list = [int(s) for s in seeds]
        if len(seed_list) != n:
            raise ValueError(f"{n} images but {len(seed_list)} seeds: give one seed per image")
        dtype = batch.dtype
        if dtype == torch.uint8:
            work = batch.to(torch.float32) / 255.0
        elif dtype.is_floating_point:
            work = batch.to(torch.float64 if dtype == torch.float64 else torch.float32)
            if not bool(torch.isfinite(work).all()):
                raise ValueError("the image holds NaN or Inf; corruptions need finite pixel values")
            work = work.clamp(0.0, 1.0)
        else:
            raise TypeError(f"images must be uint8 or floating point, got {dtype}")
        out = self.fn(work, level, seed_list).clamp(0.0, 1.0)
        if out.shape != work.shape:
            raise ValueError(
                f"corruption {self.key} changed the shape {tuple(work.shape)} -> {tuple(out.shape)}"
            )
        result = (out * 255.0).round().to(torch.uint8) if dtype == torch.uint8 else out.to(dtype)
        return result[0] if single else result

    def transform(self, level: int, *, seed: int = 0) -> CorruptionTransform:
        """The `histovl.embed.ImageTransform` adapter for one level (key like ``blur:3``)."""
        return CorruptionTransform(self, self.check_level(level), seed)


@dataclass(frozen=True)
class CorruptionTransform:
    """A corruption at one level as an `histovl.embed.ImageTransform`.

    The key names the corruption and level (``blur:3``; user namespaces are kept:
    ``mylab/pen:1``), plus ``/v<version>`` after an implementation change and ``/seed=<s>`` for
    seeded corruptions, so the embedding cache never mixes different pixels under one key.
    `base_seed` must equal the ``seed`` given to `encode_images` (the sweep does this).
    """

    corruption: Corruption
    level: int
    base_seed: int = 0

    @property
    def key(self) -> str:
        c = self.corruption
        name = c.name if c.namespace == BUILTIN_NAMESPACE else c.key
        key = f"{name}:{self.level}"
        if c.version != 1:
            key += f"/v{c.version}"
        if c.uses_seed:
            key += f"/seed={self.base_seed}"
        return key

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        return self.corruption.apply(image, self.level, seed)

    def apply_batch(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Corrupt a batch in one call (what the in-memory engine uses)."""
        return self.corruption.apply(images, self.level, seeds)


_REGISTRY: dict[str, Corruption] = {}


def add_corruption(corruption: Corruption) -> Corruption:
    """Register a `Corruption`; a duplicate key is an error (no silent override)."""
    if "/" in corruption.name or ":" in corruption.name or not corruption.name:
        raise ValueError(f"corruption names may not be empty or contain '/' or ':', got {corruption.name!r}")
    if not corruption.levels:
        raise ValueError(f"corruption {corruption.name!r} needs at least one level")
    if corruption.key in _REGISTRY:
        raise ValueError(
            f"corruption {corruption.key!r} is already registered; choose another name or namespace"
        )
    _REGISTRY[corruption.key] = corruption
    return corruption


def register_corruption(
    name: str,
    *,
    levels: Sequence[int],
    parameters: Mapping[int, float] | None = None,
    namespace: str = "user",
    uses_seed: bool = False,
    version: int = 1,
    description: str = "",
) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator registering a batched corruption function under ``namespace/name``.

    Example:
        >>> @register_corruption("dim", levels=(1, 2), namespace="doc")
        ... def dim(images, level, seeds):
        ...     return images * (1 - 0.2 * level)
        >>> get_corruption("doc/dim").levels
        (1, 2)
    """

    def decorate(fn: CorruptionFn) -> CorruptionFn:
        add_corruption(
            Corruption(
                name=name, fn=fn, levels=tuple(int(x) for x in levels), parameters=dict(parameters or {}),
                namespace=namespace, uses_seed=uses_seed, version=version, description=description,
            )
        )
        return fn

    return decorate


def unregister_corruption(key: str) -> None:
    """Remove a corruption (tests and notebooks that re-register)."""
    _REGISTRY.pop(get_corruption(key).key, None)


def get_corruption(name: str) -> Corruption:
    """Look up by full key (``histovl/blur``) or unique short name (``blur``).

    Raises:
        UnknownNameError: nothing matches (with close-match suggestions), or a short name is
            registered in several namespaces (the message lists the full keys to use).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    matches = [c for c in _REGISTRY.values() if c.name == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UnknownNameError(
            f"corruption {name!r} is registered in several namespaces: "
            f"{', '.join(sorted(c.key for c in matches))}; use the full key"
        )
    names = sorted({c.name for c in _REGISTRY.values()} | set(_REGISTRY))
    raise UnknownNameError(
        f"unknown corruption {name!r}.{did_you_mean(name, names)} "
        f"Known: {', '.join(list_corruptions())}."
    )


def list_corruptions(namespace: str | None = None) -> list[str]:
    """Registered corruptions: short names for built-ins, full keys for the others."""
    out = []
    for c in _REGISTRY.values():
        if namespace is None or c.namespace == namespace:
            out.append(c.name if c.namespace == BUILTIN_NAMESPACE else c.key)
    return out
