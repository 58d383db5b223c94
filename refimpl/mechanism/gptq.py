"""GPTQ: quantize one column at a time and push its error onto the columns not yet quantized.

Paper: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv 2210.17323, ICLR 2023).
Taxonomy: 3.2.3 Other Enlightening Mechanisms.

For a Linear with weight W `[out, in]` and calibration inputs X, GPTQ minimises the
layer-output error ‖WX − ŴX‖², whose Hessian w.r.t. each row is H = 2XXᵀ. Columns are
quantized left to right; after quantizing column q, the remaining columns F absorb its error
(Optimal Brain Surgeon update, rows independently):

    Err = (w_q − quant(w_q)) / [H_F⁻¹]_qq,        W_F ← W_F − Err · [H_F⁻¹]_{q,F}

Three stages make this fast and stable, as in the paper:

1. damping: H ← H + λI with λ = percdamp · mean(diag H); a column whose input is always zero
   (diag H = 0) is "dead": its weight is irrelevant and set to 0;
2. Cholesky: the rows of the upper Cholesky factor of H⁻¹ are exactly the [H_F⁻¹]_{q,F}
   needed at every step, so H⁻¹ is factorised once instead of being updated per column;
3. lazy batches: updates inside a block of `blocksize` columns are applied immediately, the
   update of all later columns is applied once per block as one matrix product
   (W_{:, >b} −= Err_b · Hinv_{b, >b}); this is exact, not an approximation.

Group-wise scales (group_size g) are computed from the current, already error-compensated
weights when the algorithm reaches a group's first column (as in the paper's code). With
`act_order=True` columns are visited by decreasing diag H; the group scales are then fixed
beforehand from the original weights ("static groups"), so each group of g consecutive inputs
still shares one grid; `static_groups=True` fixes them beforehand without reordering, as
llm-compressor always does.

Symmetric grid, `sym_range` (core.symgrid): "restricted" (default, the core quantizer's and so every other
technique's and RTN's: s = max|w|/(2^(b-1)−1), code −2^(b-1) unused) or "full" (compressed-tensors /
llm-compressor: s = max|w|/((2^b−1)/2), codes clamped to [−2^(b-1), 2^(b-1)−1], a finer step).
The default stays "restricted" so that GPTQ and RTN records differ only by the algorithm; "full" is
the peer's convention, used where we are compared with it (benchmarks/gptq_vs_llmcompressor.py).

Cost (profiled on SmolLM2-135M, benchmarks/gptq_vs_llmcompressor.py): calibration dominates, so the
Hessians come from `core.hessian` (two passes per block, float32, one Xᵀ X per distinct input); the
Cholesky factor is computed once per distinct H (q/k/v and gate/up share their inputs), in float32;
in the column loop W is held transposed (a column is a contiguous row), U's rows are pre-divided by
its diagonal, so a column costs six small in-place kernels; per-layer work runs on one thread.
Simplified vs the paper: no fused kernels or packing; weights are stored dequantized.
"""
from __future__ import annotations

import torch

from refimpl.core.gridtag import record_if_param
from refimpl.core.hessian import hessians_block_by_block
from refimpl.core.quantizer import to_groups
from refimpl.core.registry import Claim, Deviation, register
from refimpl.core.symgrid import SYM_RANGES, grid_qparams, round_on_grid, rtn_on_grid
from refimpl.core.threads import one_thread


def damped_Hinv_chol(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ (H⁻¹ = UᵀU), λ = percdamp · mean(diag H), in H's precision.

    With J the order-reversing permutation and J H J = L Lᵀ: H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J), and J L⁻¹ J is
    upper triangular with a positive diagonal, so U = J L⁻¹ J: one Cholesky and one triangular
    solve instead of inverting H and factorising H⁻¹ again. float32 suffices after damping (on
    SmolLM2 the layer errors agree with float64's within 0.2%, as closely as with two float32
    Hessians); an H whose float32 Cholesky fails (a tiny percdamp) is factorised in float64."""
    H = H.clone()
    H.diagonal().add_(percdamp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if info.item() != 0 and H.dtype != torch.float64:
        L = torch.linalg.cholesky(H.flip(0, 1).double())
    eye = torch.eye(H.shape[0], dtype=L.dtype, device=H.device)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)


@one_thread()
def hessian_factor(H: torch.Tensor, percdamp: float = 0.01, act_order: bool = False):
    """What GPTQ needs from H, shared by every layer fed the same inputs (q/k/v, gate/up):
    (dead inputs, column order, U = chol((H + λI)⁻¹) in that order), at least in float32."""
    H = H.to(torch.promote_types(H.dtype, torch.float32), copy=True)
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    if not act_order:
        return dead, torch.arange(H.shape[0], device=H.device), damped_Hinv_chol(H, percdamp)
    perm = torch.argsort(H.diagonal(), descending=True)
    return dead, perm, damped_Hinv_chol(H[perm][:, perm], percdamp)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False,
                  blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False, **opts) -> torch.Tensor:
    """GPTQ of one weight `W [out, in]` given its proxy Hessian `H [in, in]`; returns the dequantized Ŵ."""
    return gptq_with_grid(W, H, bits, group_size, sym, blocksize, percdamp, act_order, **opts)[0]


@one_thread()
def gptq_with_grid(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False,
                   blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                   sym_range: str = "restricted", static_groups: bool = False, factor=None):
    """`gptq_quantize`, also returning the grid it used: (Ŵ, s, z) with s, z `[out, in/g, 1]`.

    `factor`: `hessian_factor(H, percdamp, act_order)` when already computed for another layer."""
    out_f, in_f = W.shape
    dtype = torch.promote_types(W.dtype, torch.float32)
    dead, perm, U = factor if factor is not None else hessian_factor(H, percdamp, act_order)
    # V = U / diag(U) row-wise: W_F −= (w_q − q) · V_{q,F} is the OBS update without a division per column
    V = (U / U.diagonal()[:, None]).to(dtype)
    W0 = W.to(dtype).clone()
    W0[:, dead] = 0.0
    g = in_f if group_size is None else group_size
    # scales fixed before the loop: per channel, static groups, or groups under act_order
    s_all, z_all = grid_qparams(to_groups(W0, g), bits, sym, sym_range)  # [out, in/g, 1]
    static = act_order or group_size is None or static_groups
    group_of = (perm // g).tolist()  # group of the column visited at each step
    # columns are the sequential axis: keep them as contiguous rows, WT [in, out] in visiting order
    WT = W0[:, perm].T.contiguous()
    QT = torch.empty_like(WT)
    ErrT = torch.empty(min(blocksize, in_f), out_f, dtype=dtype, device=W.device)
    for b1 in range(0, in_f, blocksize):
        b2 = min(b1 + blocksize, in_f)
        W1, V1, Err1 = WT[b1:b2], V[b1:b2, b1:b2], ErrT[:b2 - b1]
        for i in range(b2 - b1):
            col = b1 + i
            if static:
                if i == 0 or group_of[col] != group_of[col - 1]:
                    s, z = s_all[:, group_of[col], 0], z_all[:, group_of[col], 0]
            elif col % g == 0:  # a group's scale, from its weights as compensated so far
                s_all[:, col // g], z_all[:, col // g] = grid_qparams(
                    _current_group(WT, Err1, V, b1, i, b2, g), bits, sym, sym_range)
                s, z = s_all[:, col // g, 0], z_all[:, col // g, 0]
            q = round_on_grid(W1[i], s, z, bits, sym, out=QT[col])
            # the error pushed at once onto the rest of the block: W_F −= (w − q) · V_{q,F}
            err = torch.sub(W1[i], q, out=Err1[i])
            W1[i + 1:].addcmul_(V1[i, i + 1:, None], err, value=-1)
        # lazy batch update of every column after the block: W_{:, >b} −= Err_b · V_{b, >b}
        WT[b2:].addmm_(V[b1:b2, b2:].T, Err1, alpha=-1)
    record_if_param(W, s_all, z_all, bits, group_size, sym)
    return QT.T[:, torch.argsort(perm)].to(W.dtype), s_all, z_all


def _current_group(WT, Err1, V, b1, i, b2, g):
    """Columns [b1+i, b1+i+g) as `[out, g]`, with every update so far applied, including the pending lazy ones."""
    end = b1 + i + g
    inside = WT[b1 + i:min(end, b2)]
    if end <= b2:
        return inside.T
    # columns beyond the block have not yet received the updates of columns b1..b1+i−1
    beyond = WT[b2:end] - V[b1:b1 + i, b2:end].T @ Err1[:i]
    return torch.cat([inside, beyond]).T


@register(id="gptq", name="GPTQ", subcategory="3.2.3", paper="gptq", kind="ptq-weight",
          tasks=("smollm2-ppl", "minilm-layers", "digits-cnn"), needs_calib=True,
          deviations=(
              Deviation(what="No packed storage or fused kernels: weights are stored dequantized.",
                        why="The reference shows the algorithm; speed is not measured here.",
                        effect="None on accuracy."),
          ),
          claims=(
              Claim(text="Second-order error compensation beats round-to-nearest at 3-bit g64.",
                    task="smollm2-ppl", setting="w3-g64-asym", versus="rtn/w3-g64-asym", metric="ppl",
                    higher_is_better=False),
          ))
@torch.no_grad()
def gptq(model, cfg, calib, *, blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
         sym_range: str = "restricted", static_groups: bool = False):
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize: expected a positive integer, got {blocksize!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0 < percdamp < 1:
        raise ValueError(f"percdamp: expected a number in (0, 1), got {percdamp!r}")
    if not isinstance(act_order, bool):
        raise ValueError(f"act_order: expected True or False, got {act_order!r}")
    if sym_range not in SYM_RANGES:
        raise ValueError(f"sym_range: expected one of {SYM_RANGES}, got {sym_range!r}")
    if not isinstance(static_groups, bool):
        raise ValueError(f"static_groups: expected True or False, got {static_groups!r}")
    last = {}  # the previous layer's H and its factor: q/k/v (gate/up) share one H, factorised once

    def quantize_layer(name, layer, H):
        W = layer.weight
        if H is None:  # never ran during calibration: nothing to compensate against
            W.copy_(rtn_on_grid(W, cfg.bits, cfg.group_size, cfg.sym, sym_range))
            return
        if not ("H" in last and (last["H"] is H or last["H"].shape == H.shape and torch.equal(last["H"], H))):
            last.update(H=H, factor=hessian_factor(H, float(percdamp), act_order))
        Wq = gptq_quantize(W, H, cfg.bits, cfg.group_size, cfg.sym, blocksize, float(percdamp), act_order,
                           sym_range=sym_range, static_groups=static_groups, factor=last["factor"])
        W.copy_(Wq.to(W.dtype))

    hessians_block_by_block(model, calib, quantize_layer, skip=cfg.skip)
    return model
