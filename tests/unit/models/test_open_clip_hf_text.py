"""BiomedCLIP's layout at toy size: timm ViT image tower (timm's `test_vit`) + HF BERT text tower (CustomTextCLIP),
published as an open_clip hub repo, loaded offline from the local cache."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from histovl.models import load_model, save_model_dir
from histovl.models._open_clip import build_model
from tests.helpers.tiny import make_hub_cache, save_safetensors

WORDS = "an h & e image of lung adenocarcinoma benign tissue squamous cell carcinoma .".split()


@pytest.fixture
def biomedclip_like(tmp_path: Path, offline_hub: Path) -> tuple[str, dict, torch.nn.Module]:
    from transformers import BertConfig, BertTokenizer

    bert = tmp_path / "tiny-bert"
    bert.mkdir()
    BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    ).save_pretrained(str(bert))
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(str(bert))
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 160},
        "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    }
    torch.manual_seed(0)
    ref = build_model(cfg)
    sd = dict(ref.state_dict())
    sd["text.transformer.embeddings.position_ids"] = torch.arange(512)[None]  # legacy buffer, as in BiomedCLIP
    weights = save_safetensors(sd, tmp_path / "w.safetensors")
    pre = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    make_hub_cache(offline_hub, "histovl-test/tiny-biomedclip", {
        "open_clip_config.json": json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}),
        "open_clip_model.safetensors": weights,
    })
    return "hf-hub:histovl-test/tiny-biomedclip", cfg, ref


def test_bert_text_tower_model_loads_and_matches(biomedclip_like, tmp_path: Path) -> None:
    spec, cfg, ref = biomedclip_like
    enc = load_model(spec)
    assert not enc.card.text_causal and enc.card.context_length == 256 and enc.card.image_size == 160
    prompts = ["an H&E image of lung adenocarcinoma.", "benign lung tissue"]
    theirs = open_clip.tokenizer.HFTokenizer(cfg["text_cfg"]["hf_tokenizer_name"], context_length=256)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.encode_text(theirs(prompts)), dim=-1)
        torch.testing.assert_close(enc.encode_text(prompts), expected, rtol=0, atol=1e-6)
        x = torch.randn(1, 3, 160, 160)
        torch.testing.assert_close(enc.encode_image(x), torch.nn.functional.normalize(ref.encode_image(x), dim=-1), rtol=0, atol=1e-6)
        back = load_model(save_model_dir(enc, tmp_path / "saved"))
        torch.testing.assert_close(back.encode_text(prompts), enc.encode_text(prompts), rtol=0, atol=0)
