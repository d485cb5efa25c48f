"""Tiny real architectures for unit tests (seconds, not minutes; random weights, fixed seed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from histovl.models._open_clip import OpenClipEncoder
from histovl.models.card import OPENAI_MEAN, OPENAI_STD, ModelCard

TINY_IMAGE_SIZE = 32


def tiny_open_clip_model(seed: int = 0) -> CLIP:
    """A 2-layer ViT / 2-layer causal text transformer with OpenAI CLIP's layout."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=TINY_IMAGE_SIZE)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
    return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()


def tiny_card(name: str = "tiny-clip") -> ModelCard:
    return ModelCard(
        name=name,
        family="open_clip",
        architecture="tiny-ViT",
        source="test",
        image_size=TINY_IMAGE_SIZE,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        context_length=77,
        tokenizer="ViT-B-32",
        embed_dim=32,
        text_causal=True,
    )


def tiny_encoder(seed: int = 0) -> OpenClipEncoder:
    model = tiny_open_clip_model(seed)
    return OpenClipEncoder(
        model, open_clip.get_tokenizer("ViT-B-32"), tiny_card(), f"tiny-seed{seed}", model_cfg=tiny_open_clip_cfg()
    )


# ---- tiny configs and on-disk layouts for every loader (tests/unit/models) ---------------------

TINY_ARCH = "histovl-tiny-vit"  # registered with open_clip by `register_tiny_open_clip_arch`


def tiny_open_clip_cfg() -> dict:
    """open_clip model config of `tiny_open_clip_model` (what an open_clip_config.json holds)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def register_tiny_open_clip_arch(folder: Path) -> str:
    """Make `TINY_ARCH` a known open_clip architecture (so `open_clip:<ARCH>:<PATH>` can name it)."""
    path = Path(folder) / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(tiny_open_clip_cfg()))
    open_clip.add_model_config(path)
    return TINY_ARCH


def save_safetensors(module_or_sd: torch.nn.Module | dict, path: Path) -> Path:
    """Write a state dict (or a module's) as safetensors; returns the path."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, torch.nn.Module) else module_or_sd
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))
    return Path(path)


def write_clip_tokenizer(folder: Path) -> Path:
    """A real CLIP BPE tokenizer for transformers, built offline from open_clip's vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    simple = SimpleTokenizer()
    # open_clip spells the special tokens <start_of_text>/<end_of_text>; transformers' CLIP
    # tokenizer uses <|startoftext|>/<|endoftext|> for the same ids (49406/49407).
    renames = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renames.get(token, token): idx for token, idx in simple.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(pair) for pair, _ in merges) + "\n", encoding="utf-8"
    )
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))
    return folder


def tiny_hf_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A transformers CLIPModel folder (config, safetensors weights, tokenizer, preprocessor)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407,
            "bos_token_id": 49406, "pad_token_id": 49407,
        },
        vision_config={
            "image_size": TINY_IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    folder = Path(folder)
    model.save_pretrained(str(folder))
    write_clip_tokenizer(folder)
    pre = {
        "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, "do_center_crop": True,
        "do_normalize": True, "do_resize": True, "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD),
        "resample": 3, "size": {"shortest_edge": TINY_IMAGE_SIZE},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def tiny_conch_cfg() -> dict:
    """CONCH's architecture (conch_ViT-B-16.json layout) at toy sizes."""
    return {
        "embed_dim": 16,
        "embed_dim_caption": 32,
        "vision_cfg": {
            "image_size": TINY_IMAGE_SIZE, "patch_size": 8, "layers": 2, "width": 32, "num_heads": 2,
            "mlp_ratio": 4, "attn_pooler_heads": 2, "n_queries_contrast": 1, "n_queries_caption": 4,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2, "pad_id": 0},
    }


TINY_CONCH_WORDS = "an h&e image of lung adenocarcinoma benign tissue squamous cell carcinoma tumour stroma".split()


def write_conch_style_tokenizer(path: Path) -> Path:
    """A HF `tokenizers` file with CONCH's special tokens (<pad>=0, <start_of_text>=1,
    <end_of_text>=2), lower-casing and a start/end template, over a toy word vocabulary."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {"<pad>": 0, "<start_of_text>": 1, "<end_of_text>": 2, "<unk>": 3}
    for word in TINY_CONCH_WORDS + [".", ","]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)],
    )
    tok.save(str(path))
    return Path(path)


def tiny_conch_card(source: str, name: str = "tiny-conch") -> ModelCard:
    """A card of the conch family for `tiny_conch_cfg` weights at `source`."""
    return ModelCard(
        name=name, family="conch", architecture="conch_ViT-B-16-tiny", source=source,
        image_size=TINY_IMAGE_SIZE, mean=OPENAI_MEAN, std=OPENAI_STD, context_length=16,
        tokenizer="tokenizer.json", embed_dim=16, text_causal=False,
        extra={"model_cfg": tiny_conch_cfg(), "tokenizer_file": "tokenizer.json"},
    )


def make_hub_cache(root: Path, repo_id: str, files: dict[str, Path | bytes | str], revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay out a Hugging Face hub cache entry: ``models--org--name/{refs/main,snapshots/<rev>/...}``."""
    repo_dir = Path(root) / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    for name, content in files.items():
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return snap
