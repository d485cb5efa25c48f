"""Frozen image features for the CMM head: per-image tokens or one pooled embedding.

Tokens (keys/values of the default, batch-independent mode) come from one of two sources:

* ``patch`` -- an open_clip ViT's patch tokens after its final layer norm, mapped into the shared
  embedding space with the tower's own projection (the same map the class token goes through),
  optionally average-pooled to a ``grid x grid`` map, with the pooled image embedding prepended.
* ``crops`` -- any model: the whole image plus a ``grid x grid`` set of crops, each resized to the
  model's input size and encoded with `encode_image` (1 + grid^2 forward passes per image).

``auto`` picks ``patch`` for open_clip ViTs with a class token and plain pooling, ``crops``
otherwise (e.g. histovl-lite's EfficientNet tower). Everything here is written against the
public `Encoder` contract plus, for ``patch``, open_clip's `VisionTransformer` attributes; the
models package is not modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from histovl.embed.engine import encode_batch_with_backoff
from histovl.errors import HistovlError, ImageReadError, NonFiniteError
from histovl.models.encoder import Encoder
from histovl.options import OnError

TokenSource = Literal["auto", "patch", "crops"]


def _open_clip_visual(encoder: Encoder) -> Any | None:
    model = getattr(encoder, "model", None)
    visual = getattr(model, "visual", None)
    needed = ("conv1", "class_embedding", "transformer", "ln_post", "proj")
    if visual is None or not all(hasattr(visual, a) for a in needed):
        return None
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        return None
    if getattr(visual, "pool_type", "tok") != "tok" or visual.proj is None:
        return None
    return visual


def supports_patch_tokens(encoder: Encoder) -> bool:
    """True when `encoder` is an open_clip ViT whose patch tokens we can read and project."""
    return _open_clip_visual(encoder) is not None


def resolve_token_source(encoder: Encoder, source: TokenSource) -> Literal["patch", "crops"]:
    """``auto`` -> ``patch`` or ``crops``; an explicit ``patch`` on a non-ViT is an error."""
    if source == "auto":
        return "patch" if supports_patch_tokens(encoder) else "crops"
    if source == "patch" and not supports_patch_tokens(encoder):
        raise HistovlError(
            f"{encoder.card.name} is not an open_clip ViT, so it has no patch tokens; "
            "use --tokens crops (or auto)"
        )
    if source not in ("patch", "crops"):
        raise ValueError(f"token source must be auto, patch or crops, got {source!r}")
    return source


@torch.no_grad()
def patch_tokens(encoder: Encoder, pixels: torch.Tensor, grid: int | None = None) -> torch.Tensor:
    """[B, 1 + T, D] L2-normalised: the pooled image embedding, then the projected patch tokens.

    Follows open_clip's `VisionTransformer.forward` (embed, transformer, ``ln_post``) and applies
    ``proj`` to every token; token 0 therefore equals `encoder.encode_image` (tested).
    """
    visual = _open_clip_visual(encoder)
    if visual is None:
        raise HistovlError(f"{encoder.card.name} has no readable patch tokens; use token source 'crops'")
    x = visual._embeds(pixels.to(encoder.device))
    x = visual.ln_post(visual.transformer(x))
    x = (x @ visual.proj).float()
    cls_tok, patches = x[:, :1], x[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    if grid is not None and side * side == patches.shape[1] and grid < side:
        fmap = patches.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        patches = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)
    return F.normalize(torch.cat([cls_tok, patches], dim=1), dim=-1)


@torch.no_grad()
def crop_tokens(encoder: Encoder, pixels: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """[B, 1 + grid^2, D]: the whole image's embedding, then each crop's (row-major)."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    size = pixels.shape[-1]
    views = [pixels]
    step_h, step_w = pixels.shape[-2] // grid, size // grid
    for r in range(grid):
        for c in range(grid):
            crop = pixels[..., r * step_h : (r + 1) * step_h, c * step_w : (c + 1) * step_w]
            views.append(F.interpolate(crop, size=pixels.shape[-2:], mode="bicubic", align_corners=False))
    stacked = torch.cat(views)  # [(1 + g^2) * B, 3, S, S]
    emb = encoder.encode_image(stacked).float().reshape(len(views), pixels.shape[0], -1)
    return emb.transpose(0, 1).contiguous()


def image_tokens(
    encoder: Encoder, pixels: torch.Tensor, *, source: TokenSource = "auto", grid: int = 2
) -> torch.Tensor:
    """Tokens [B, T, D] for preprocessed `pixels` from the chosen source."""
    chosen = resolve_token_source(encoder, source)
    return patch_tokens(encoder, pixels, grid) if chosen == "patch" else crop_tokens(encoder, pixels, grid)


def encode_image_tokens(
    encoder: Encoder,
    paths: Sequence[str | Path],
    *,
    source: TokenSource = "auto",
    grid: int = 2,
    batch_size: int = 32,
    on_error: OnError = "raise",
    allow_empty: bool = False,
) -> tuple[torch.Tensor, list[bool], list[tuple[str, str]]]:
    """Decode, preprocess and tokenise images: (tokens [n_ok, T, D], ok mask, failures).

    Unreadable files raise `ImageReadError` naming the file, or with ``on_error="skip"`` are
    recorded in `failures` and left out of the tokens. A batch that runs out of memory is
    retried in halves down to 1 image (`histovl.embed.engine.encode_batch_with_backoff`, which
    logs each new size); later batches keep the size that worked. When no image could be read this raises
    `ValueError`, unless `allow_empty` (one rank's shard of a larger set): then the tokens are
    an empty tensor.
    """
    from histovl.data import read_rgb

    preprocess = encoder.preprocess
    ok: list[bool] = []
    failures: list[tuple[str, str]] = []
    chunks: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []

    used = batch_size

    def tokenise(pixels: torch.Tensor) -> torch.Tensor:
        return image_tokens(encoder, pixels, source=source, grid=grid)

    def flush() -> None:
        nonlocal used
        if batch:
            # out of memory: the chunk is halved down to 1 (logged); tokens do not depend on the batch
            tokens, used = encode_batch_with_backoff(tokenise, torch.stack(batch), used)
            tokens = tokens.cpu()
            if not torch.isfinite(tokens).all():
                raise NonFiniteError("image tokens contain NaN/Inf; check the model weights")
            chunks.append(tokens)
            batch.clear()

    for path in paths:
        try:
            batch.append(preprocess(read_rgb(path)))
            ok.append(True)
        except ImageReadError as err:
            if on_error != "skip":
                raise
            ok.append(False)
            failures.append((str(path), err.reason))
        if len(batch) >= batch_size:
            flush()
    flush()
    if not chunks and allow_empty:
        return torch.empty(0), ok, failures
    if not chunks:
        raise ValueError(f"none of the {len(ok)} images could be read")
    return torch.cat(chunks), ok, failures
