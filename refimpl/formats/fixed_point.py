"""Fixed-point quantization with power-of-two scales and an integer-only matmul (F8Net).

Paper: Jin, Yang, Liao, "F8Net: Fixed-Point 8-bit Only Multiplication for Network
Quantization" (ICLR 2022, arXiv 2202.05239). Taxonomy: 3.6.2 Fixed Point.

A b-bit fixed-point number with fractional length f is a signed integer scaled by 2^-f:

    q = clamp(round(x · 2^f), −2^(b−1), 2^(b−1) − 1),    x̂ = q · 2^−f

Because every scale is a power of two, a Linear layer runs on integers alone. With input
codes q_x (fractional length f_x) and weight codes q_W (f_w per output channel j):

    acc_j = Σ_i q_x,i · q_W,ji  (+ b_q,j, the bias at the accumulator's scale 2^−(f_x+f_w,j))
    y_j ≈ acc_j · 2^−(f_x + f_w,j),      y_q,j = RNE(acc_j / 2^(f_x + f_w,j − f_y))

i.e. an int32/int64 accumulation and a final arithmetic shift to the output's fractional
length f_y — no multiplier at all in the rescaling. Dyadic rescaling: integer-only pipelines
with arbitrary scales must multiply by M = s_x·s_w/s_y, approximated by a dyadic number
m / 2^c (integer multiply, then shift; see `dyadic`). With power-of-two scales M is already
dyadic with m = 1, so the rescale is the shift alone.

Fractional lengths: per output channel, the f minimising ‖W_j − Ŵ_j‖² among f0 .. f0+b−1,
f0 = floor(log2((2^(b−1)−1) / max|W_j|)) being the finest length that clips nothing.
Simplified vs the paper: F8Net derives f from the weights' standard deviation and learns it
during QAT; here f is searched post-training. Activations (with act_bits) get one dynamic
per-tensor fractional length, chosen by the same rule on each input.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.gridtag import record
from refimpl.core.act import set_module
from refimpl.core.calib import find_linears
from refimpl.core.quantizer import qrange
from refimpl.core.registry import Claim, Deviation, register


def fixed_codes(x: torch.Tensor, bits: int, f: torch.Tensor) -> torch.Tensor:
    """q = clamp(round(x · 2^f)) as float integers; f broadcasts against x."""
    qmin, qmax = qrange(bits, sym=True)
    return torch.clamp(torch.round(torch.ldexp(x, f)), qmin, qmax)


def frac_length(W: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row fractional length `[rows, 1]` (int32) minimising the row's squared error."""
    qmax = qrange(bits, sym=True)[1]
    amax = W.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)
    # finest f with max|W|·2^f ≤ qmax (no clipping); larger f = finer grid but clipped tails
    f0 = torch.floor(torch.log2(qmax / amax)).to(torch.int32)
    cands = [f0 + k for k in range(bits)]
    err = torch.stack([(W - torch.ldexp(fixed_codes(W, bits, f), -f)).pow(2).sum(-1, keepdim=True)
                       for f in cands])
    # argmin takes the first minimum: on ties, the candidate that clips least
    return torch.gather(torch.stack(cands), 0, err.argmin(0, keepdim=True))[0]


def shift_round(acc: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """acc · 2^−s on int64, rounded half to even (s may be ≤ 0: then an exact left shift)."""
    s1 = s.clamp(min=1)
    q = acc >> s1                         # floor division by 2^s
    r = acc - (q << s1)                   # remainder in [0, 2^s)
    half = 1 << (s1 - 1)
    q = q + ((r > half) | ((r == half) & (q & 1 == 1))).to(acc.dtype)
    return torch.where(s > 0, q, acc << (-s).clamp(min=0))


def int_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact integer product A [n, in] · B [out, in]ᵀ -> int64 [n, out]."""
    if A.device.type == "cpu":
        return A.long() @ B.long().T
    # no int64 GEMM on CUDA: float64 is exact for these integer sums (|acc| < 2^53)
    return (A.double() @ B.double().T).round().long()


def int_linear(x_q, W_q, fx: int, fw: torch.Tensor, fy: int, b_q=None) -> torch.Tensor:
    """Integer-only Linear: output codes y_q (int64) with fractional length fy.

    x_q [n, in] and W_q [out, in] integer codes, fx an int, fw [out] ints, b_q [out] the bias
    codes at the accumulator scale 2^−(fx+fw). acc = x_q·W_qᵀ + b_q; y_q = RNE(acc / 2^(fx+fw−fy)).
    """
    acc = int_matmul(x_q, W_q)
    if b_q is not None:
        acc = acc + b_q.long()
    return shift_round(acc, (fx + fw.long() - fy).reshape(1, -1))


def dyadic(M: float, bits: int = 31) -> tuple[int, int]:
    """(m, c) with m < 2^bits and m / 2^c ≈ M (relative error ≤ 2^−bits): multiply, then shift."""
    frac, e = torch.frexp(torch.tensor(float(M), dtype=torch.float64))
    m, c = round(float(frac) * 2 ** bits), bits - int(e)
    return (m // 2, c - 1) if m == 2 ** bits else (m, c)


class FixedPointLinear(nn.Module):
    """Linear with fixed-point weights (codes W_q, lengths fw) and dynamic fixed-point inputs."""

    def __init__(self, linear: nn.Linear, W_q: torch.Tensor, fw: torch.Tensor, act_bits: int):
        super().__init__()
        self.act_bits, self.linear = act_bits, linear
        self.register_buffer("W_q", W_q.to(torch.int32))
        self.register_buffer("fw", fw.reshape(-1))

    @property
    def weight(self):
        return self.linear.weight

    def quantize_input(self, x: torch.Tensor):
        """(x codes, fx): one fractional length for the whole input tensor."""
        x = x.detach().float()
        fx = frac_length(x.reshape(1, -1), self.act_bits)
        return fixed_codes(x, self.act_bits, fx), int(fx)

    def bias_codes(self, fx: int):
        b = self.linear.bias
        return None if b is None else torch.round(torch.ldexp(b.float(), fx + self.fw))

    def forward(self, x):
        """Fake-quant float path: x̂ Ŵᵀ + b̂ with x̂ = q_x·2^−fx, b̂ at the accumulator scale."""
        q_x, fx = self.quantize_input(x)
        b_q = self.bias_codes(fx)
        b = None if b_q is None else torch.ldexp(b_q, -(fx + self.fw)).to(x.dtype)
        return nn.functional.linear(torch.ldexp(q_x, torch.tensor(-fx)).to(x.dtype), self.weight, b)


@register(id="fixed_point", name="Fixed-point (power-of-two scales)", subcategory="3.6.2", paper="f8net",
          kind="ptq-weight-act", tasks=("smollm2-ppl", "minilm-layers"), bits=tuple(range(2, 17)),
          channel_sym_only=True,
          deviations=(
              Deviation(what="Fractional lengths are searched post-training on the weight error; F8Net derives them from the "
                             "weights' standard deviation and trains them in QAT.",
                        why="The transformer tasks are post-training.",
                        effect="Power-of-two steps lose up to half a step of resolution without training to compensate."),
              Deviation(what="Activations (with act_bits) get one dynamic per-tensor fractional length, not per-layer "
                             "statically trained ones.",
                        why="No training loop on these tasks.",
                        effect="A dynamic range is kinder to activations than the paper's fixed one."),
          ),
          claims=(
              Claim(text="Power-of-two (fixed-point) scales cost little against arbitrary scales at 4 bits.",
                    task="minilm-layers", setting="w4-pc-sym", versus="rtn/w4-pc-asym", metric="layer_rel_err",
                    higher_is_better=False,
                    cause="F8Net's claim is at 8 bits with QAT; at 4 bits post-training a power-of-two step is up to 2x too "
                          "coarse, and the versus grid is asymmetric."),
          ))
@torch.no_grad()
def fixed_point(model, cfg, calib):
    """Weights to b-bit fixed point per channel; with act_bits, inputs to dynamic fixed point."""
    # a power-of-two scale per output channel on a signed grid: groups or a zero-point would be
    # silently ignored, so they are refused
    if cfg.group_size is not None:
        raise ValueError("group_size: fixed_point uses one fractional length per output channel; use None")
    if not cfg.sym:
        raise ValueError("sym: fixed_point codes are signed integers (a symmetric grid); pass sym=True")
    for name, layer in find_linears(model, cfg.skip).items():
        W = layer.weight
        fw = frac_length(W.float(), cfg.bits)
        W_q = fixed_codes(W.float(), cfg.bits, fw)
        # Ŵ = W_q · 2^−fw is exact in any float dtype with ≥ b mantissa bits
        W.copy_(torch.ldexp(W_q, -fw))
        step = torch.ldexp(torch.ones_like(W[:, :1], dtype=torch.float32), -fw)
        record(W, step, torch.zeros_like(step), cfg.bits, None, True)
        if cfg.act_bits is not None:
            set_module(model, name, FixedPointLinear(layer, W_q, fw, cfg.act_bits))
    return model
