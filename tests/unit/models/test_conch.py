"""CONCH family: the architecture's key layout, its text mask, a tiny checkpoint loaded and saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from histovl.models import (
    CheckpointMismatchError,
    get_card,
    load_model,
    register_card,
    save_model_dir,
)
from histovl.models._conch import ConchEncoder, ConchModel
from tests.helpers.tiny import (
    make_hub_cache,
    save_safetensors,
    tiny_conch_card,
    tiny_conch_cfg,
    write_conch_style_tokenizer,
)

PROMPTS = ["an H&E image of lung adenocarcinoma.", "benign lung tissue", "squamous cell carcinoma"]


def test_full_size_layout_matches_conch_checkpoint_shapes() -> None:
    """Shapes of CONCH's published state dict (from conch_ViT-B-16.json and CONCH's modules)."""
    with torch.device("meta"):
        model = ConchModel(get_card("conch").extra["model_cfg"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "visual.trunk.pos_embed": (1, 785, 768),  # 1 CLS + (448/16)^2 patches
        "visual.trunk.patch_embed.proj.weight": (768, 3, 16, 16),
        "visual.attn_pool_contrast.query": (1, 512),
        "visual.attn_pool_contrast.attn.k_proj_weight": (512, 768),
        "visual.ln_contrast.weight": (512,),
        "visual.proj_contrast": (512, 512),
        "visual.attn_pool_caption.query": (256, 768),
        "visual.ln_caption.weight": (768,),
        "text.cls_emb": (768,),
        "text.token_embedding.weight": (32007, 768),
        "text.positional_embedding": (128, 768),
        "text.text_projection": (768, 512),
        "text.transformer.resblocks.11.mlp.c_fc.weight": (3072, 768),
        "logit_scale": (),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert not any(k.startswith("text_decoder") for k in shapes)
    assert 195e6 < sum(v.numel() for v in model.state_dict().values()) < 205e6


def _conch_reference_text(model: ConchModel, tokens: torch.Tensor) -> torch.Tensor:
    """CONCH's TextTransformer.forward, written out with its own CLS-mask construction."""
    t = model.text
    seq = tokens.shape[1] + 1
    x = torch.cat([t.token_embedding(tokens), t.cls_emb.reshape(1, 1, -1).expand(tokens.shape[0], 1, -1)], 1)
    cls_mask = (tokens != 0).unsqueeze(1)
    cls_mask = F.pad(cls_mask, (1, 0, cls_mask.shape[2], 0), value=True)
    additive = torch.zeros(cls_mask.shape).masked_fill(~cls_mask, float("-inf"))
    mask = t.attn_mask[None, :seq, :seq] + additive.repeat_interleave(t.heads, 0)
    x = x + t.positional_embedding[:seq]
    x = t.transformer(x, attn_mask=mask)
    return t.ln_final(x[:, -1]) @ t.text_projection


@pytest.fixture
def conch_files(tmp_path: Path) -> Path:
    """A tiny CONCH checkpoint (with captioning-decoder keys, as the real one has) + tokenizer."""
    torch.manual_seed(0)
    folder = tmp_path / "conch"
    folder.mkdir()
    sd = dict(ConchModel(tiny_conch_cfg()).state_dict())
    sd["text_decoder.resblocks.0.ln_1.weight"] = torch.ones(32)
    save_safetensors(sd, folder / "model.safetensors")
    write_conch_style_tokenizer(folder / "tokenizer.json")
    return folder


def test_tiny_conch_loads_strictly_and_matches_reference(conch_files: Path, scratch_cards) -> None:
    register_card(tiny_conch_card(str(conch_files / "model.safetensors")))
    enc = load_model("tiny-conch")
    assert isinstance(enc, ConchEncoder)
    tokens = enc.tokenizer(PROMPTS)
    assert tokens.shape == (3, 15) and tokens[0, 0] == 1 and (tokens[1] == 2).sum() == 1
    with torch.no_grad():
        ref = F.normalize(_conch_reference_text(enc.model, tokens), dim=-1)
        torch.testing.assert_close(enc.encode_text(PROMPTS), ref, rtol=0, atol=2e-6)
        pixels = torch.randn(2, 3, 32, 32)
        img = enc.encode_image(pixels)
        m = enc.model.visual
        ref_img = m.ln_contrast(m.attn_pool_contrast(m.trunk.forward_features(pixels))[:, 0]) @ m.proj_contrast
        torch.testing.assert_close(img, F.normalize(ref_img, dim=-1), rtol=0, atol=1e-6)
    assert enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_conch_missing_key_is_reported(conch_files: Path, scratch_cards) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(conch_files / "model.safetensors"))
    del sd["visual.proj_contrast"]
    save_safetensors(sd, conch_files / "model.safetensors")
    register_card(tiny_conch_card(str(conch_files / "model.safetensors")))
    with pytest.raises(CheckpointMismatchError, match="visual.proj_contrast"):
        load_model("tiny-conch")


def test_conch_hub_pickle_needs_trust_and_round_trips(conch_files: Path, offline_hub: Path, tmp_path: Path, scratch_cards) -> None:
    from safetensors.torch import load_file

    from histovl.errors import UntrustedCheckpointError

    torch.save(load_file(str(conch_files / "model.safetensors")), conch_files / "pytorch_model.bin")
    make_hub_cache(
        offline_hub, "histovl-test/tiny-conch",
        {"pytorch_model.bin": conch_files / "pytorch_model.bin", "tokenizer.json": conch_files / "tokenizer.json"},
    )
    register_card(tiny_conch_card("hf-hub:histovl-test/tiny-conch"))
    with pytest.raises(UntrustedCheckpointError):
        load_model("tiny-conch")
    enc = load_model("tiny-conch", trust_checkpoint=True)
    out = save_model_dir(enc, tmp_path / "saved")
    back = load_model(out)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_text(PROMPTS), enc.encode_text(PROMPTS), rtol=0, atol=0)
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(back.encode_image(x), enc.encode_image(x), rtol=0, atol=0)


def test_missing_tokenizer_says_where_to_get_it(conch_files: Path, scratch_cards, monkeypatch) -> None:
    (conch_files / "tokenizer.json").unlink()
    monkeypatch.delenv("HISTOVL_CONCH_TOKENIZER", raising=False)
    register_card(tiny_conch_card(str(conch_files / "model.safetensors")))
    with pytest.raises(FileNotFoundError, match="HISTOVL_CONCH_TOKENIZER"):
        load_model("tiny-conch")


def test_conch_card_refuses_the_pickle_before_downloading_anything(offline_hub: Path) -> None:
    from histovl.errors import UntrustedCheckpointError

    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_model("conch")  # nothing cached, offline: the trust check comes first
