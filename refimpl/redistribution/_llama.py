"""Where a Linear's input comes from in a pre-norm decoder, and how to fold a factor into that norm.

In a pre-norm block the norm's output feeds only the Linears after it (the residual stream
bypasses the norm), so a per-channel factor on those Linears' inputs can be folded exactly
into the norm's gain. SmoothQuant, AWQ and QuaRot share this map. Two facts vary across
Hugging Face architectures and are handled here, never guessed:

- the norm's formula: Llama-style RMSNorm computes n(x)·w, Gemma's computes n(x)·(1 + w).
  `norm_offset` measures it on the module itself (two probe calls), so a fold writes the
  gain g back as w = g (offset 0) or w = g − 1 (offset 1); any other behaviour is refused
  with the norm's class name;
- which norm feeds the MLP: `post_attention_layernorm` in Llama, but in Gemma2's sandwich
  layout that name normalises the attention *output* and `pre_feedforward_layernorm` feeds
  the MLP. A layer with norms after its sub-blocks (`post_feedforward_layernorm`) is not a
  plain pre-norm residual stream, so the residual rotation (`llama_parts`) refuses it.

Models of any other shape (post-norm BERT, GPT-2, fused qkv_proj) get no folding.
"""
from __future__ import annotations

import torch
from torch import nn

_ATTN = ("q_proj", "k_proj", "v_proj")
_MLP = ("gate_proj", "up_proj")
# norms placed after a sub-block's output (Gemma2/3 "sandwich"): present ⇒ not a plain pre-norm stream
_POST_NORMS = ("post_feedforward_layernorm",)


def _gain_only(norm: nn.Module) -> bool:
    """A per-channel weight and no bias (a LayerNorm bias would fold too, but the decoders we
    fold into have none and we keep the map to the structure we test)."""
    w = getattr(norm, "weight", None)
    return isinstance(w, nn.Parameter) and w.dim() == 1 and getattr(norm, "bias", None) is None


@torch.no_grad()
def norm_offset(norm: nn.Module) -> int:
    """The constant c in y = n(x)·(c + w): 0 for Llama-style RMSNorm, 1 for Gemma's.

    Measured, not looked up: with w = 0 the output is n(x)·c, with w = 1 it is n(x)·(c + 1),
    so n(x) = y₁ − y₀ and c = y₀ / n(x). ValueError (naming the class) for anything else."""
    w = norm.weight
    saved = w.detach().clone()
    x = torch.randn(4, w.numel(), generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    try:
        w.fill_(0.0)
        y0 = norm(x).double()
        w.fill_(1.0)
        y1 = norm(x).double()
    finally:
        w.copy_(saved)
    n = y1 - y0
    for c in (0, 1):
        if torch.allclose(y0, c * n, rtol=1e-3, atol=1e-5) and n.abs().max() > 0:
            return c
    raise ValueError(f"model: norm {type(norm).__name__} computes neither n(x)·w nor n(x)·(1+w); "
                     "refusing to fold scales into a norm whose formula is unknown")


def norm_gain(norm: nn.Module) -> torch.Tensor:
    """The effective per-channel gain g (float64) the norm multiplies its normalised input by."""
    return norm.weight.detach().double() + norm_offset(norm)


@torch.no_grad()
def set_norm_gain(norm: nn.Module, g: torch.Tensor) -> None:
    """Make the norm multiply by gain g, whatever its formula (w = g − offset)."""
    norm.weight.copy_((g.double() - norm_offset(norm)).to(norm.weight.dtype))


def scale_norm(norm: nn.Module, factor: torch.Tensor) -> None:
    """g ← g·factor: divides the norm's output channel j by 1/factor_j, exactly for both formulas."""
    set_norm_gain(norm, norm_gain(norm) * factor.double().to(norm.weight.device))


def mlp_input_norm(layer: nn.Module) -> nn.Module | None:
    """The norm whose output feeds the MLP: pre_feedforward_layernorm when the layer has one
    (Gemma2 sandwich), else post_attention_layernorm (Llama)."""
    return getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm", None)


def norm_groups(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """[(norm, [qualified names of the Linears that read only its output])] for every pre-norm
    decoder layer (input_layernorm → q/k/v, the MLP's input norm → gate/up)."""
    groups = []
    for name, m in model.named_modules():
        attn, mlp = getattr(m, "self_attn", None), getattr(m, "mlp", None)
        if not (hasattr(m, "input_layernorm") and mlp_input_norm(m) is not None and attn and mlp):
            continue
        pre = f"{name}." if name else ""
        if all(isinstance(getattr(attn, p, None), nn.Linear) for p in _ATTN):
            groups.append((m.input_layernorm, [f"{pre}self_attn.{p}" for p in _ATTN]))
        if all(isinstance(getattr(mlp, p, None), nn.Linear) for p in _MLP):
            groups.append((mlp_input_norm(m), [f"{pre}mlp.{p}" for p in _MLP]))
    groups = [(norm, names) for norm, names in groups if _gain_only(norm)]
    for norm, _ in groups:
        norm_offset(norm)   # refuse an unknown formula before any weight is touched
    return groups


def llama_parts(model: nn.Module):
    """(embed_tokens, layers, final norm, lm_head) of a Llama-style causal LM, or None.

    Requires every layer to have input_layernorm, self_attn.{q,k,v,o}_proj,
    post_attention_layernorm and mlp.{gate,up,down}_proj, and no norm after a sub-block
    (a sandwich norm between a writer and the residual does not commute with a rotation of
    the residual stream).
    """
    inner = getattr(model, "model", None)
    lm_head = getattr(model, "lm_head", None)
    if inner is None or not isinstance(lm_head, nn.Linear):
        return None
    embed, layers, norm = (getattr(inner, a, None) for a in ("embed_tokens", "layers", "norm"))
    if not isinstance(embed, nn.Embedding) or not isinstance(layers, nn.ModuleList) or norm is None:
        return None
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ok = (attn is not None and mlp is not None and _gain_only(getattr(layer, "input_layernorm", None))
              and _gain_only(getattr(layer, "post_attention_layernorm", None))
              and not any(hasattr(layer, p) for p in _POST_NORMS + ("pre_feedforward_layernorm",))
              and all(isinstance(getattr(attn, p, None), nn.Linear) for p in _ATTN + ("o_proj",))
              and all(isinstance(getattr(mlp, p, None), nn.Linear) for p in _MLP + ("down_proj",)))
        if not ok:
            return None
    if not _gain_only(norm):
        return None
    for n in [norm] + [m for layer in layers for m in (layer.input_layernorm, layer.post_attention_layernorm)]:
        norm_offset(n)
    return embed, layers, norm, lm_head
