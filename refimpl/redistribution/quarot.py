"""QuaRot-style rotation: an orthogonal Hadamard transform spreads outliers before quantizing.

Paper: Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs"
(arXiv 2404.00456). Taxonomy: 3.4.3 Outlier Processing.

For any orthogonal Q (QQᵀ = I), x·Wᵀ = (xQ)·(WQ)ᵀ. With Q a randomised Hadamard matrix
(diag(±1)·H/√n), a channel that carries an outlier is spread evenly over all n channels, so
both the rotated activations and the rotated weights become close to Gaussian and a uniform
grid fits them far better. Hidden sizes that are not powers of two (576, 1536, 384) use the
Paley ⊗ Sylvester construction in `refimpl.core.hadamard`.

Llama-style decoders: the residual stream itself is rotated, so the rotation costs nothing
at run time. RMSNorm gains are first folded into the Linears that read them (then
RMSNorm(xQ) = RMSNorm(x)·Q, because ‖xQ‖ = ‖x‖), and

    embedding rows  E ← E·Q              readers (q/k/v, gate/up, lm_head)  W ← W·Q
    writers (o_proj, down_proj)  W ← Qᵀ·W, b ← b·Q

plus one online Hadamard on the down_proj input (x ← x·H, W_down ← W_down·H) inside a small
wrapper. Any other model (e.g. BERT, post-norm) gets the generic exact form: every Linear's
input is rotated online and its weight folded, W ← W·Q. The rotated weights are quantized
with `quantizer` "rtn" or "gptq" (the registered GPTQ technique), and with act_bits the
rotated Linear inputs are quantized per token.

Simplified vs the paper: no per-head rotation of values/outputs and no KV-cache
quantization; the online transform is a dense matmul rather than a fast Walsh–Hadamard kernel.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from refimpl.core.act import set_module
from refimpl.core.act import quantize_linear_inputs
from refimpl.core.calib import find_linears
from refimpl.core.hadamard import hadamard, is_supported
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import get, register
from refimpl.redistribution._llama import llama_parts, norm_gain, set_norm_gain


class RotateInput(nn.Module):
    """y = linear(x·Q): the online half of a rotation whose other half is folded into the weight."""

    def __init__(self, linear: nn.Module, Q: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("Q", Q)

    @property
    def weight(self):
        return self.linear.weight

    def forward(self, x):
        return self.linear(x @ self.Q.to(x.dtype))


def random_hadamard(n: int, seed: int, device, what: str) -> torch.Tensor:
    """Q = diag(±1)·H/√n in float64 (random signs from `seed`); ValueError for unsupported n."""
    if not is_supported(n):
        raise ValueError(f"model: {what} has size {n}, for which no Hadamard matrix is built "
                         "(supported: 2^k·m with m = 1 or q+1, q a prime ≡ 3 mod 4)")
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1
    return (signs[:, None] * hadamard(n, dtype=torch.float64)).to(device)


def _set(p: nn.Parameter, value: torch.Tensor) -> None:
    p.data = value.to(p.dtype).contiguous()


def fold_norm(norm: nn.Module, linears: list[nn.Linear]) -> None:
    """W ← W·diag(g), g ← 1: the norm becomes a pure RMS normalisation, which commutes with Q."""
    g = norm_gain(norm)
    for lin in linears:
        _set(lin.weight, lin.weight.double() * g)
    set_norm_gain(norm, torch.ones_like(g))


@torch.no_grad()
def rotate_llama(model: nn.Module, parts, seed: int) -> None:
    """Rotate the residual stream of a Llama-style model by Q (float-exact)."""
    embed, layers, norm, lm_head = parts
    Q = random_hadamard(embed.embedding_dim, seed, embed.weight.device, "the hidden size")
    if lm_head.weight is embed.weight:
        # tied embeddings must part: the head gets the final norm's gain, the embedding does not
        lm_head.weight = nn.Parameter(embed.weight.detach().clone())
        if hasattr(model, "config"):
            model.config.tie_word_embeddings = False
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        fold_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    fold_norm(norm, [lm_head])
    # embedding rows are residual vectors: E ← E·Q
    _set(embed.weight, embed.weight.double() @ Q)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _set(reader.weight, reader.weight.double() @ Q)          # [out, d]·[d, d]
        for writer in (attn.o_proj, mlp.down_proj):
            _set(writer.weight, Q.T @ writer.weight.double())        # [d, d]·[d, in]
            if writer.bias is not None:
                _set(writer.bias, writer.bias.double() @ Q)
        # online Hadamard on the down_proj input (the MLP's largest outliers live there)
        down = mlp.down_proj
        H = random_hadamard(down.in_features, seed + 1, down.weight.device, "the MLP (down_proj input)")
        _set(down.weight, down.weight.double() @ H)
        mlp.down_proj = RotateInput(down, H.to(down.weight.dtype))
    _set(lm_head.weight, lm_head.weight.double() @ Q)


@torch.no_grad()
def rotate_linears(model: nn.Module, layers: dict[str, nn.Linear], seed: int) -> None:
    """Generic exact rotation: each Linear computes linear(x·Q) with W ← W·Q (folded)."""
    cache: dict[tuple, torch.Tensor] = {}  # one Q per (size, device): layers of a size share it
    for name, layer in layers.items():
        key = (layer.in_features, layer.weight.device)
        if key not in cache:
            cache[key] = random_hadamard(layer.in_features, seed, layer.weight.device, f"layer {name!r} input")
        Q = cache[key]
        _set(layer.weight, layer.weight.double() @ Q)
        set_module(model, name, RotateInput(layer, Q.to(layer.weight.dtype)))


def rotate(model: nn.Module, skip, seed: int = 0) -> nn.Module:
    """The float-exact rotation alone (Llama structure when detected, else per Linear)."""
    parts = llama_parts(model)
    if parts is not None:
        rotate_llama(model, parts, seed)
    else:
        rotate_linears(model, find_linears(model, skip), seed)
    return model


@register(id="quarot", name="QuaRot (Hadamard rotation)", subcategory="3.4.3", paper="quarot",
          kind="ptq-weight-act", tasks=("smollm2-ppl", "minilm-layers"))
@torch.no_grad()
def quarot(model, cfg, calib, *, quantizer="rtn", seed=0):
    if quantizer not in ("rtn", "gptq"):
        raise ValueError(f"quantizer: expected 'rtn' or 'gptq', got {quantizer!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if quantizer == "gptq" and not calib:
        raise ValueError("calib: quarot with quantizer='gptq' needs calibration data")
    rotate(model, cfg.skip, seed)
    layers = find_linears(model, cfg.skip)
    if quantizer == "gptq":
        get("gptq").fn(model, dataclasses.replace(cfg, act_bits=None), calib)
    else:
        for layer in layers.values():
            layer.weight.copy_(quantize_weight(layer.weight, cfg.bits, cfg.group_size, cfg.sym))
    if cfg.act_bits is not None:
        # wraps the inner Linears, so the quantizer sees the rotated input
        quantize_linear_inputs(model, layers, cfg.act_bits)
    return model
