"""open_clip family: `open_clip:<ARCH>:<PATH>`, hub repos from a local cache, save/load, truncation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import open_clip
import pytest
import torch

from histovl.models import (
    Preprocess,
    WeightsNotAvailableError,
    get_card,
    list_models,
    load_model,
    save_model_dir,
)
from histovl.models._open_clip import OpenClipEncoder
from histovl.models.card import ModelCard
from tests.helpers.tiny import tiny_encoder, tiny_open_clip_model
from tests.unit.models.conftest import PROMPTS


def _reference_model() -> torch.nn.Module:
    return tiny_open_clip_model(0)


def test_open_clip_spec_loads_the_weights_exactly(tiny_arch: str, tiny_weights: Path, pixels) -> None:
    enc = load_model(f"open_clip:{tiny_arch}:{tiny_weights}")
    ref = _reference_model()
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
        got = enc.encode_image(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert enc.weights_id == "sha256:" + hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert enc.card.architecture == tiny_arch and enc.card.image_size == 32 and enc.card.text_causal
    assert enc.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))


def test_unknown_open_clip_architecture_suggests(tiny_weights: Path) -> None:
    from histovl.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="ViT-B-32"):
        load_model(f"open_clip:ViT-B32:{tiny_weights}")
    with pytest.raises(ValueError, match="open_clip:<ARCH>:<PATH>"):
        load_model("open_clip:ViT-B-32")


def test_truncated_text_encoding_equals_full_context() -> None:
    enc = tiny_encoder(0)
    tokens = enc.tokenizer(PROMPTS)
    assert tokens.shape[1] == 77 and int((tokens != 0).sum(1).max()) < 40  # truncation does cut
    with torch.no_grad():
        full = torch.nn.functional.normalize(enc.model.encode_text(tokens), dim=-1)
        fast = enc.encode_text(PROMPTS)
    torch.testing.assert_close(fast, full, rtol=0, atol=2e-6)


def test_save_model_dir_round_trip(tmp_path: Path, tiny_arch: str, tiny_weights: Path, pixels) -> None:
    enc = load_model(f"open_clip:{tiny_arch}:{tiny_weights}")
    out = save_model_dir(enc, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.safetensors"]
    back = load_model(out)
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(x), enc.encode_image(x), rtol=0, atol=0)
        torch.testing.assert_close(back.encode_text(PROMPTS), enc.encode_text(PROMPTS), rtol=0, atol=0)
    assert back.card.preprocessing_key() == enc.card.preprocessing_key()
    assert back.card.extra["base_model"] == enc.card.name
    assert back.weights_id.startswith("sha256:")


def test_model_dir_needs_no_open_clip_registration(tmp_path: Path, pixels) -> None:
    """A saved directory carries its architecture config, so it loads anywhere."""
    original = tiny_encoder(0)
    enc = load_model(str(save_model_dir(original, tmp_path / "saved")))
    assert isinstance(enc, OpenClipEncoder)
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_image(x), original.encode_image(x), rtol=0, atol=0)


def test_hub_repo_loads_offline_from_the_local_cache(open_clip_hub_repo, pixels) -> None:
    repo, rev = open_clip_hub_repo
    enc = load_model(f"hf-hub:{repo}")
    assert enc.weights_id == f"hf-hub:{repo}@{rev}"
    with torch.no_grad():
        expected = torch.nn.functional.normalize(_reference_model().encode_image(torch.from_numpy(pixels)), dim=-1)
        torch.testing.assert_close(enc.encode_image(torch.from_numpy(pixels)), expected, rtol=0, atol=1e-6)


def test_registered_hub_card_loads_offline_and_reports_presence(open_clip_hub_repo, scratch_cards) -> None:
    from histovl.models import register_card, weights_present

    repo, rev = open_clip_hub_repo
    card = ModelCard(
        name="tiny-hub", family="open_clip", architecture="hub", source=f"hf-hub:{repo}", image_size=32,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), embed_dim=32,
    )
    register_card(card)
    assert "tiny-hub" in list_models() and weights_present(get_card("tiny-hub"))
    enc = load_model("tiny-hub")
    assert enc.weights_id.endswith(rev) and enc.card.name == "tiny-hub"
    missing = card.replace(name="not-cached", source="hf-hub:histovl-test/absent")
    register_card(missing)
    assert not weights_present(missing)
    with pytest.raises(WeightsNotAvailableError, match="HF_HUB_OFFLINE"):
        load_model("not-cached")


@pytest.mark.parametrize("name", ["openai-vit-b-16", "quiltnet-b-32", "biomedclip", "plip", "conch"])
def test_preprocess_equals_open_clip_eval_transform(name: str, rgb_image) -> None:
    card = get_card(name)
    theirs = open_clip.image_transform(
        card.image_size, is_train=False, mean=card.mean, std=card.std,
        interpolation=card.interpolation, resize_mode=card.resize_mode,
    )
    ours = Preprocess.from_card(card)
    torch.testing.assert_close(ours(rgb_image), theirs(rgb_image), rtol=0, atol=1e-6)
