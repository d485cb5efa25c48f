"""CMM token features back off on out-of-memory and give the un-split result."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from histovl.heads import features
from histovl.heads.features import encode_image_tokens


@pytest.mark.parametrize("source", ["patch", "crops"])
def test_tokens_back_off_on_oom_and_equal_the_unsplit_run(
    tiny_clip, class_folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, source: str  # type: ignore[no-untyped-def]
) -> None:
    paths = sorted(class_folder.rglob("*.png"))
    plain, ok, _ = encode_image_tokens(tiny_clip, paths, source=source, batch_size=12)  # type: ignore[arg-type]
    real = features.image_tokens
    sizes: list[int] = []

    def small_memory(encoder, pixels: torch.Tensor, **kw):  # type: ignore[no-untyped-def]
        if len(pixels) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(len(pixels))
        return real(encoder, pixels, **kw)

    monkeypatch.setattr(features, "image_tokens", small_memory)
    with caplog.at_level(logging.WARNING, logger="histovl.embed.engine"):
        tokens, ok2, _ = encode_image_tokens(tiny_clip, paths, source=source, batch_size=12)  # type: ignore[arg-type]
    assert "batch size 6" in caplog.text and "batch size 3" in caplog.text
    assert set(sizes) == {3} and ok2 == ok
    torch.testing.assert_close(tokens, plain, rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(features, "image_tokens", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("sim")))
    with pytest.raises(torch.OutOfMemoryError):  # not even one image fits: raised after batch size 1
        encode_image_tokens(tiny_clip, paths, source=source, batch_size=12)  # type: ignore[arg-type]
    assert "batch size 1" in caplog.text
