"""Where a Linear's input comes from, for the pre-norm (Llama-style) decoder structure.

In a pre-norm block the RMSNorm output feeds only the Linears after it (the residual stream
bypasses the norm), so a per-channel factor on those Linears' inputs can be folded exactly
into the norm's gain. SmoothQuant, AWQ and QuaRot share this map; models of any other shape
(e.g. post-norm BERT, where the LayerNorm output also feeds the residual) get no folding.
"""
from __future__ import annotations

from torch import nn

_ATTN = ("q_proj", "k_proj", "v_proj")
_MLP = ("gate_proj", "up_proj")


def norm_groups(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """[(norm, [qualified names of the Linears that read only its output])] for every pre-norm
    decoder layer (input_layernorm → q/k/v, post_attention_layernorm → gate/up)."""
    groups = []
    for name, m in model.named_modules():
        attn, mlp = getattr(m, "self_attn", None), getattr(m, "mlp", None)
        if not (hasattr(m, "input_layernorm") and hasattr(m, "post_attention_layernorm") and attn and mlp):
            continue
        pre = f"{name}." if name else ""
        if all(isinstance(getattr(attn, p, None), nn.Linear) for p in _ATTN):
            groups.append((m.input_layernorm, [f"{pre}self_attn.{p}" for p in _ATTN]))
        if all(isinstance(getattr(mlp, p, None), nn.Linear) for p in _MLP):
            groups.append((m.post_attention_layernorm, [f"{pre}mlp.{p}" for p in _MLP]))
    return [(norm, names) for norm, names in groups if _gain_only(norm)]


def _gain_only(norm: nn.Module) -> bool:
    """RMSNorm-like: a per-channel gain and no bias (a LayerNorm bias would fold too, but
    Llama has none and we keep the map to the structure we test)."""
    w = getattr(norm, "weight", None)
    return isinstance(w, nn.Parameter) and w.dim() == 1 and getattr(norm, "bias", None) is None


def llama_parts(model: nn.Module):
    """(embed_tokens, layers, final norm, lm_head) of a Llama-style causal LM, or None.

    Requires every layer to have input_layernorm, self_attn.{q,k,v,o}_proj,
    post_attention_layernorm and mlp.{gate,up,down}_proj.
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
              and all(isinstance(getattr(attn, p, None), nn.Linear) for p in _ATTN + ("o_proj",))
              and all(isinstance(getattr(mlp, p, None), nn.Linear) for p in _MLP + ("down_proj",)))
        if not ok:
            return None
    if not _gain_only(norm):
        return None
    return embed, layers, norm, lm_head
