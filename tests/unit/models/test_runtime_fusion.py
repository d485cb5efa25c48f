"""Fused attention in exported image towers (`histovl.models.runtime.fusion`): every attention
layout it claims (torch's MultiheadAttention, timm's Attention, transformers' CLIPAttention)
exports to ONNX Runtime's Attention node and matches torch; calls it does not fit (masks,
cross-attention) export as before; a wrong fusion is caught and the tower exported plainly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from histovl.models.runtime import apply_runtime, fusion
from histovl.models.runtime import export as ex
from histovl.options import RunOptions
from tests.helpers.tiny import TINY_IMAGE_SIZE, tiny_conch_cfg, tiny_encoder, tiny_open_clip_model

ort = pytest.importorskip("onnxruntime")


class _Tower(nn.Module):
    def __init__(self, fn: Any, owner: nn.Module) -> None:
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fn(pixels)


def _export_and_run(tower: nn.Module, tmp_path: Path, x: torch.Tensor, *, example: torch.Tensor | None = None,
                    batch_axis: int = 0) -> tuple[Path, np.ndarray, str]:
    """Export `tower` with fusion at `example` (default: the first two of `x`), run the graph on
    `x`; returns the file, its output and the exporter used."""
    target = tmp_path / "tower.onnx"
    example = x[:2] if example is None else example
    exporter = ex.export_module(tower, (example,), ("pixels",), target, {"pixels": {batch_axis: "n"}}, fuse_attention=True)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return target, session.run(None, {"pixels": x.numpy()})[0], exporter


def _assert_matches(a: np.ndarray, b: torch.Tensor) -> None:
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(a), b.float(), dim=-1)
    assert cos.min().item() >= 0.99999
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-3, atol=1e-4)


def _pixels(n: int, size: int = TINY_IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))


def _timm_trunk() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=TINY_IMAGE_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()


def _hf_vision() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    return CLIPVisionModelWithProjection(cfg).eval()


def _conch_visual() -> nn.Module:
    from histovl.models._conch import ConchVisual

    torch.manual_seed(0)
    cfg = tiny_conch_cfg()
    return ConchVisual(cfg["embed_dim"], cfg["embed_dim_caption"], cfg["vision_cfg"]).eval()


# (name, module builder, forward, attention nodes expected in the graph)
LAYOUTS = [
    ("open_clip MultiheadAttention", lambda: tiny_open_clip_model(0), lambda m: m.encode_image, 2),
    ("timm Attention", _timm_trunk, lambda m: m, 2),
    ("transformers CLIPAttention", _hf_vision, lambda m: (lambda p: m(pixel_values=p).image_embeds), 2),
    # CONCH: the timm trunk fuses; the attentional poolers (cross-attention) keep their plain graph
    ("CONCH trunk and poolers", _conch_visual, lambda m: m, 2),
]


@pytest.mark.parametrize(("name", "build", "forward", "nodes"), LAYOUTS, ids=[row[0] for row in LAYOUTS])
def test_each_layout_fuses_and_matches_torch(name: str, build: Any, forward: Any, nodes: int, tmp_path: Path) -> None:
    model = build()
    tower = _Tower(forward(model), model)
    pixels = _pixels(5)
    with torch.inference_mode():
        reference = tower(pixels)
    target, out, exporter = _export_and_run(tower, tmp_path, pixels)
    assert exporter == "torchscript"
    assert fusion.fused_nodes(target) == nodes
    _assert_matches(out, reference)
    # another batch size runs through the same graph
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        _assert_matches(session.run(None, {"pixels": pixels[:1].numpy()})[0], tower(pixels[:1]))
    # the originals are back in the model
    kinds = {type(m).__name__ for m in model.modules()}
    assert not any(k.startswith("_Fused") for k in kinds)


def test_masked_attention_is_exported_as_before(tmp_path: Path) -> None:
    """open_clip's causal text tower passes a mask: no fused node, same numbers."""
    model = tiny_open_clip_model(0)
    blocks = model.transformer
    mask = model.attn_mask[:7, :7]
    tower = _Tower(lambda x: blocks(x, attn_mask=mask), blocks)
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(1))
    target, out, _ = _export_and_run(tower, tmp_path, x, example=x)
    assert fusion.fused_nodes(target) == 0
    with torch.inference_mode():
        _assert_matches(out.reshape(3, -1), tower(x).reshape(3, -1))


def test_modules_are_restored_when_the_export_fails() -> None:
    model = tiny_open_clip_model(0)
    before = [id(m) for m in model.modules()]
    with pytest.raises(RuntimeError), fusion.fused_attention(model) as swapped:
        assert swapped == 4  # two image blocks, two text blocks
        raise RuntimeError("export failed")
    assert [id(m) for m in model.modules()] == before


def test_ineligible_modules_are_left_alone() -> None:
    from timm.layers import Attention

    normed = Attention(32, num_heads=2, qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm)
    with_bias_kv = nn.MultiheadAttention(32, 2, add_bias_kv=True, batch_first=True)
    other_kdim = nn.MultiheadAttention(32, 2, kdim=16, vdim=16, batch_first=True)
    root = nn.ModuleDict({"a": normed, "b": with_bias_kv, "c": other_kdim})
    with fusion.fused_attention(root) as swapped:
        assert swapped == 0


def test_seq_first_multihead_attention_fuses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    holder = nn.Sequential(nn.MultiheadAttention(32, 4, batch_first=False).eval())
    tower = _Tower(lambda x: holder[0](x, x, x, need_weights=False)[0], holder)  # looked up at call time
    x = torch.randn(6, 3, 32, generator=torch.Generator().manual_seed(2))  # [S, B, H]
    target, out, _ = _export_and_run(tower, tmp_path, x, example=x, batch_axis=1)
    assert fusion.fused_nodes(target) == 1
    with torch.inference_mode():
        _assert_matches(out.reshape(6, -1), tower(x).reshape(6, -1))


def _image_entry(opts: RunOptions) -> dict[str, Any]:
    record = opts.runtime_parity["tiny-clip"]
    meta = json.loads((Path(record["export"]) / "meta.json").read_text())
    return {**meta["towers"]["image"], "_folder": record["export"], "_passed": record["passed"]}


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_runtime_export_records_fused_attention(runtime: str, tmp_path: Path) -> None:
    encoder = tiny_encoder()
    opts = RunOptions(cache=tmp_path, runtime=runtime)  # type: ignore[arg-type]
    rt = apply_runtime(encoder, opts)
    pixels = _pixels(4)
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(rt.encode_image(pixels), encoder.encode_image(pixels), dim=-1)
    assert cos.min().item() >= (0.9999 if runtime == "onnx" else 0.99)
    entry = _image_entry(opts)
    assert entry["_passed"] is True and entry["attention"].startswith("fused: 2 com.microsoft.Attention nodes")
    assert fusion.fused_nodes(Path(entry["_folder"]) / "image.onnx") == 2  # QAttention once quantised


def test_a_wrong_fusion_is_caught_and_the_tower_exported_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused node that computes something else (here: a different head count) never reaches
    results: the export's own check sees it and exports the tower without fusion."""
    symbolic = fusion._AttentionOp.symbolic

    def wrong_heads(g: Any, x: Any, weight: Any, bias: Any, heads: int) -> Any:
        return symbolic(g, x, weight, bias, heads * 2)

    monkeypatch.setattr(fusion._AttentionOp, "symbolic", staticmethod(wrong_heads))
    encoder = tiny_encoder()
    opts = RunOptions(cache=tmp_path, runtime="onnx")
    rt = apply_runtime(encoder, opts)
    pixels = _pixels(4)
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(rt.encode_image(pixels), encoder.encode_image(pixels), dim=-1)
    assert cos.min().item() >= 0.9999
    entry = _image_entry(opts)
    assert entry["attention"].startswith("plain: the fused graph reached cosine min")
    assert fusion.fused_nodes(Path(entry["_folder"]) / "image.onnx") == 0 and entry["_passed"] is True


def test_a_fused_graph_onnx_runtime_cannot_run_is_exported_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attribute the installed ONNX Runtime's kernel refuses (as an older build might) costs the
    fusion, not the run."""

    def bad_attribute(g: Any, x: Any, weight: Any, bias: Any, heads: int) -> Any:
        out = g.op(f"{fusion.DOMAIN}::{fusion.OP}", x, weight, bias, num_heads_i=heads, qkv_hidden_sizes_i=[1, 2, 3])
        out.setType(x.type())
        return out

    monkeypatch.setattr(fusion._AttentionOp, "symbolic", staticmethod(bad_attribute))
    opts = RunOptions(cache=tmp_path, runtime="onnx")
    rt = apply_runtime(tiny_encoder(), opts)
    with torch.inference_mode():
        rt.encode_image(_pixels(4))
    entry = _image_entry(opts)
    assert entry["attention"].startswith("plain: the fused graph did not run in ONNX Runtime")
    assert fusion.fused_nodes(Path(entry["_folder"]) / "image.onnx") == 0 and entry["_passed"] is True
