"""transformers CLIPModel family: `hf-clip:<DIR>`, hub snapshot, padding, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from histovl.models import get_card, load_model, register_card, save_model_dir
from histovl.models._hf_clip import HFClipEncoder
from tests.helpers.tiny import make_hub_cache, tiny_hf_clip_dir
from tests.unit.models.conftest import PROMPTS


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_hf_clip_dir(tmp_path_factory.mktemp("hfclip") / "tiny")


@pytest.fixture(scope="module")
def hf_enc(hf_dir: Path) -> HFClipEncoder:
    enc = load_model(f"hf-clip:{hf_dir}")
    assert isinstance(enc, HFClipEncoder)
    return enc


def test_hf_clip_dir_loads_and_matches_transformers(hf_dir: Path, hf_enc: HFClipEncoder, pixels) -> None:
    enc = hf_enc
    assert isinstance(enc, HFClipEncoder)
    assert (enc.card.image_size, enc.card.context_length, enc.card.embed_dim) == (32, 77, 16)
    ref = CLIPModel.from_pretrained(str(hf_dir)).eval()
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        pooled = ref.vision_model(pixel_values=x).pooler_output
        expected = torch.nn.functional.normalize(ref.visual_projection(pooled), dim=-1)
        torch.testing.assert_close(enc.encode_image(x), expected, rtol=0, atol=1e-6)


def test_longest_padding_equals_max_length_padding(hf_enc: HFClipEncoder) -> None:
    enc = hf_enc
    longest = enc.tokenize(PROMPTS)["input_ids"]
    assert longest.shape[1] < 77  # the fast path really is shorter
    with torch.no_grad():
        fast = enc._encode_text(PROMPTS, padding="longest")
        full = enc._encode_text(PROMPTS, padding="max_length")
    torch.testing.assert_close(fast, full, rtol=0, atol=2e-6)


def test_hf_clip_save_round_trip(hf_enc: HFClipEncoder, tmp_path: Path, pixels) -> None:
    enc = hf_enc
    out = save_model_dir(enc, tmp_path / "saved")
    assert (out / "tokenizer").is_dir() and (out / "card.json").is_file()
    back = load_model(out)
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(x), enc.encode_image(x), rtol=0, atol=0)
        torch.testing.assert_close(back.encode_text(PROMPTS), enc.encode_text(PROMPTS), rtol=0, atol=0)


def test_hf_clip_hub_card_loads_offline(hf_dir: Path, offline_hub: Path, scratch_cards) -> None:
    files = {p.name: p for p in hf_dir.iterdir() if p.is_file()}
    rev = "b" * 40
    make_hub_cache(offline_hub, "histovl-test/tiny-plip", files, revision=rev)
    register_card(get_card("plip").replace(name="tiny-plip", source="hf-hub:histovl-test/tiny-plip", image_size=32, embed_dim=16))
    enc = load_model("tiny-plip")
    assert isinstance(enc, HFClipEncoder) and enc.weights_id == f"hf-hub:histovl-test/tiny-plip@{rev}"
    assert enc.encode_text(["benign lung tissue"]).shape == (1, 16)


def test_not_a_clip_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(f"hf-clip:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="hf-clip:"):
        load_model(str(tmp_path))
