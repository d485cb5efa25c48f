"""Self-attention exported as one ONNX Runtime ``Attention`` node (com.microsoft domain).

Why: a plain export spells every attention block as about twenty nodes (the Q/K/V split by
Gather, Transposes to heads and back, two batched MatMuls and a Softmax), and ONNX Runtime's
transformer optimiser does not recognise these exports' pattern. Its fused CPU kernel does the
packed QKV projection and the per-head attention in one operator with no layout copies: ViT-B-32's
image tower ran 4-11 % faster in fp32 and ~20 % faster in int8 (where the QKV projection is then
quantised too, as ``QAttention``); docs/runtime.md has the measurement.

How: while an image tower is exported, `fused_attention` swaps the eligible attention modules for
wrappers (and puts the originals back afterwards). A wrapper's forward is the same arithmetic in
torch (what tracing runs) through `_AttentionOp`, whose ONNX form is the fused node, followed by
the module's own output projection. Eligible modules, recognised by exact class (a subclass may
change the arithmetic):

* torch's ``nn.MultiheadAttention`` (open_clip towers: OpenAI CLIP, QuiltNet, ...);
* timm's ``Attention`` (CONCH's and BiomedCLIP's ViT trunks) without q/k norms, scale norm or gate;
* transformers' ``CLIPAttention`` (PLIP and other Hugging Face CLIP checkpoints).

A call that does not fit the fused node (a mask, cross-attention as in CONCH's attentional
poolers, attention weights asked for) runs the original module, so it is exported as before.
The caller checks the exported graph against torch and exports again without fusion on any
mismatch (`histovl.models.runtime.encoder`), so a fusion can cost speed but never correctness.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: The ONNX operator the wrappers export to, and its domain's version.
DOMAIN = "com.microsoft"
OP = "Attention"
CUSTOM_OPSETS = {DOMAIN: 1}


class _AttentionOp(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d)) V over heads, with Q, K, V = x @ weight + bias split in three.

    x: [B, S, H]; weight: [H, 3H] (columns: Q, then K, then V, each head-major); bias: [3H].
    Exported by the TorchScript exporter as ``com.microsoft::Attention`` (default scale)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
        batch, seq, hidden = x.shape
        qkv = torch.addmm(bias, x.reshape(batch * seq, hidden), weight)
        q, k, v = qkv.reshape(batch, seq, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, seq, hidden)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, heads: int) -> Any:
        out = g.op(f"{DOMAIN}::{OP}", x, weight, bias, num_heads_i=heads)
        out.setType(x.type())  # same shape and type as the input: lets shape inference carry on
        return out


def _fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, heads: int) -> torch.Tensor:
    if bias is None:
        bias = torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return _AttentionOp.apply(x, weight, bias, heads)  # type: ignore[no-any-return]


class _FusedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (same call signature), fused when called as plain self-attention."""

    def __init__(self, original: nn.MultiheadAttention) -> None:
        super().__init__()
        self.original = original

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        mha = self.original
        if not (query is key is value) or key_padding_mask is not None or attn_mask is not None or need_weights or is_causal:
            return mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,  # type: ignore[no-any-return]
                       attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        x = query if mha.batch_first else query.transpose(0, 1)
        assert mha.in_proj_weight is not None
        out = mha.out_proj(_fused(x, mha.in_proj_weight.t(), mha.in_proj_bias, mha.num_heads))
        return (out if mha.batch_first else out.transpose(0, 1)), None


class _FusedTimmAttention(nn.Module):
    """timm's ``Attention`` (same call signature), fused when called without a mask."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        attn: Any = self.original
        if attn_mask is not None or is_causal:
            return attn(x, attn_mask=attn_mask, is_causal=is_causal)  # type: ignore[no-any-return]
        out = _fused(x, attn.qkv.weight.t(), attn.qkv.bias, attn.num_heads)
        return attn.proj_drop(attn.proj(out))  # type: ignore[no-any-return]


class _FusedHfClipAttention(nn.Module):
    """transformers' ``CLIPAttention`` (same call signature), fused when called without a mask."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        attn: Any = self.original
        if attention_mask is not None or kwargs.get("causal_attention_mask") is not None or kwargs.get("output_attentions"):
            return attn(hidden_states, attention_mask, **kwargs)  # type: ignore[no-any-return]
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t()
        bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        return attn.out_proj(_fused(hidden_states, weight, bias, attn.num_heads)), None


def _default_scale(module: Any) -> bool:
    return abs(float(module.scale) - module.head_dim ** -0.5) < 1e-9


def _wrapper(module: nn.Module) -> nn.Module | None:
    """The fused stand-in for `module`, or None where it is not eligible."""
    cls = type(module)
    where = (cls.__module__, cls.__name__)
    if cls is nn.MultiheadAttention:
        mha: Any = module
        square = mha._qkv_same_embed_dim and mha.embed_dim % mha.num_heads == 0
        if square and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn:
            return _FusedMultiheadAttention(mha)
        return None
    if where == ("timm.layers.attention", "Attention"):
        timm: Any = module
        plain = all(isinstance(getattr(timm, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
        square = timm.qkv.in_features == timm.num_heads * timm.head_dim
        if plain and square and getattr(timm, "gate", None) is None and _default_scale(timm):
            return _FusedTimmAttention(timm)
        return None
    if where == ("transformers.models.clip.modeling_clip", "CLIPAttention"):
        hf: Any = module
        biased = all(getattr(hf, n).bias is not None for n in ("q_proj", "k_proj", "v_proj"))
        if biased and not hf.is_causal and hf.embed_dim == hf.num_heads * hf.head_dim and _default_scale(hf):
            return _FusedHfClipAttention(hf)
    return None


@contextmanager
def fused_attention(root: nn.Module) -> Iterator[int]:
    """Within the block, every eligible attention module under `root` is swapped for its fused
    stand-in; yields how many were swapped. The originals are put back on exit, always."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                wrapper = _wrapper(child)
                if wrapper is not None:
                    setattr(parent, name, wrapper)
                    swaps.append((parent, name, child))
        yield len(swaps)
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)


def fused_nodes(path: Any) -> int:
    """How many fused attention nodes (``Attention`` or, once quantised, ``QAttention``) a graph holds."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.domain == DOMAIN and node.op_type in (OP, f"Q{OP}") for node in graph.node)
