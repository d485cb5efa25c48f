"""`histovl slides embed`: tile a slide, embed its tiles, and (with prompts) slide zero-shot.

slide → `tile_slide` (tile images saved; a finished tiling reused) → `embed_slide` (through the
embedding cache) → embeddings.npy → with a prompt set: `slide_zeroshot` (MI-Zero top-j pooling)
→ zeroshot.json, tile_predictions.csv, zeroshot_map.png; encoder.json names the model and its
--runtime (with the parity gate's record; docs/runtime.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from histovl.options import RunOptions, split_overrides
from histovl.slides.embedding import (
    SlideEmbedding,
    embed_slide,
    slide_zeroshot,
    write_slide_zeroshot,
)
from histovl.slides.tiling import TileSpec

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

DEFAULT_TOP_J = (1, 5, 10, 50)


@dataclass(frozen=True)
class SlideEmbedConfig:
    """What `histovl slides embed` computes (the run options are in `RunOptions`).

    Attributes:
        spec: tile size, resolution and tissue settings.
        slide_mpp: µm per level-0 pixel when the file records none (or to override it).
        force: re-tile even when the output folder holds a finished tiling of the same slide.
        top_j: tiles pooled per class for the slide scores (MI-Zero), one result per value.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    spec: TileSpec = field(default_factory=TileSpec)
    slide_mpp: float | None = None
    force: bool = False
    top_j: tuple[int, ...] = DEFAULT_TOP_J

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_j", tuple(int(j) for j in self.top_j))


def slides_embed(
    model: str | Encoder,
    slide: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: SlideEmbedConfig | None = None,
    options: RunOptions | None = None,
    *,
    prompts: str | os.PathLike[str] | Any = None,
    **overrides: Any,
) -> SlideEmbedding:
    """Tile `slide` into `out`, embed every kept tile, and with `prompts` classify the slide.

    Writes the tiling outputs and ``embeddings.npy`` (see `embed_slide`); with `prompts` also
    ``zeroshot.json``, ``tile_predictions.csv`` and ``zeroshot_map.png`` (see
    `write_slide_zeroshot`), returned as the result's ``zeroshot``. The run options used:
    ``cache``/``use_cache``, ``batch_size``, ``workers`` (tile-reading threads), ``device``,
    ``trust_checkpoint`` and ``progress``.

    Args:
        model: a model spec or a loaded `Encoder`.
        slide: slide file, plain image or folder of tiles (see `histovl.slides.open_slide`).
        out: output folder.
        config: what to compute (`SlideEmbedConfig`).
        options: the shared run options.
        prompts: a prompt-set name, YAML path or `PromptSet`; None embeds only.
        overrides: fields of either, as keywords (``spec=TileSpec(mpp=0.5), batch_size=32``).

    Example:
        >>> se = slides_embed("histovl-lite", "slide.svs", "out/slide", prompts="lung-he-v1")  # doctest: +SKIP
        >>> se.zeroshot.prediction(10)  # doctest: +SKIP
    """
    from histovl.embed import cache_for
    from histovl.embed.runtimes import runtime_encoder

    cfg, opts = split_overrides(overrides, config, SlideEmbedConfig, options)
    encoder = runtime_encoder(model, opts)  # --runtime (docs/runtime.md)
    se = embed_slide(
        encoder, slide, out, cfg.spec, cache=cache_for(opts), slide_mpp=cfg.slide_mpp,
        batch_size=opts.batch_size, num_workers=opts.workers, progress=opts.progress, force=cfg.force,
    )
    if prompts is not None and len(se.tiles):
        from histovl.prompts import load_prompt_set
        from histovl.zeroshot import build_text_classifier

        classifier = build_text_classifier(encoder, load_prompt_set(prompts))
        se.zeroshot = slide_zeroshot(classifier, se.embeddings, cfg.top_j)
        write_slide_zeroshot(se, se.zeroshot, out)
    _write_encoder_record(out, encoder, opts)
    return se


#: Which encoder and runtime made ``embeddings.npy`` (written beside it by every run).
ENCODER_FILE = "encoder.json"


def _write_encoder_record(out: str | os.PathLike[str], encoder: Any, opts: RunOptions) -> None:
    """``encoder.json``: model, weights id (naming the runtime), the runtime and its parity gate."""
    from pathlib import Path

    from histovl._io import atomic_write_json

    record = opts.record()
    atomic_write_json(Path(out) / ENCODER_FILE, {
        "model": encoder.card.name, "weights_id": encoder.weights_id, "runtime": record["runtime"],
        "allow_approximate": record["allow_approximate"], "runtime_parity": record["runtime_parity"],
    })
