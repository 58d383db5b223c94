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
weights when the algorithm reaches a group's first column. With `act_order=True` columns are
visited by decreasing diag H; the group scales are then fixed beforehand from the original
weights ("static groups"), so each group of g consecutive inputs still shares one grid.
Simplified vs the paper: no fused kernels or packing; weights are stored dequantized.
"""
from __future__ import annotations

import torch

from refimpl.core.layerwise import for_each_layer
from refimpl.core.gridtag import record_if_param
from refimpl.core.quantizer import fake_quant, minmax_qparams, quantize_weight, to_groups
from refimpl.core.registry import Claim, Deviation, register


def damped_Hinv_chol(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ (H⁻¹ = UᵀU), in float64. λ = percdamp · mean(diag H)."""
    H = H.to(torch.float64).clone()
    diag = torch.arange(H.shape[0], device=H.device)
    H[diag, diag] += percdamp * H.diagonal().mean()
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False,
                  blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False) -> torch.Tensor:
    """GPTQ of one weight `W [out, in]` given its proxy Hessian `H [in, in]`; returns the dequantized Ŵ."""
    return gptq_with_grid(W, H, bits, group_size, sym, blocksize, percdamp, act_order)[0]


def gptq_with_grid(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False,
                   blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False):
    """`gptq_quantize`, also returning the grid it used: (Ŵ, s, z) with s, z `[out, in/g, 1]`."""
    out_f, in_f = W.shape
    in_dtype, dtype = W.dtype, torch.promote_types(W.dtype, torch.float32)
    W_param, W = W, W.to(dtype).clone()
    H = H.to(torch.float64).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    g = in_f if group_size is None else group_size

    # scales fixed before the loop: per channel, or static groups under act_order
    s_all, z_all = minmax_qparams(to_groups(W, g), bits, sym)  # [out, in/g, 1]
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(in_f, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    static = act_order or group_size is None
    s, z = s_all[:, 0], z_all[:, 0]

    U = damped_Hinv_chol(H, percdamp).to(dtype)
    Q = torch.zeros_like(W)
    for b1 in range(0, in_f, blocksize):
        b2 = min(b1 + blocksize, in_f)
        W1, U1 = W[:, b1:b2].clone(), U[b1:b2, b1:b2]
        Err1 = torch.zeros_like(W1)
        for i in range(b2 - b1):
            col = b1 + i
            if static:
                grp = int(perm[col]) // g
                s, z = s_all[:, grp], z_all[:, grp]
            elif col % g == 0:
                s, z = minmax_qparams(_current_group(W, W1, Err1, U, b1, i, b2, g), bits, sym)
                s_all[:, col // g], z_all[:, col // g] = s, z
            w, d = W1[:, i], U1[i, i]
            q = fake_quant(w.unsqueeze(1), s, z, bits, sym).squeeze(1)
            Q[:, col] = q
            # Err = (w − q) / [H_F⁻¹]_qq, pushed onto the rest of the block at once
            Err1[:, i] = (w - q) / d
            W1[:, i:] -= Err1[:, i:i + 1] @ U1[i:i + 1, i:]
        # lazy batch update of every column after the block: W_{:, >b} −= Err_b · U_{b, >b}
        W[:, b2:] -= Err1 @ U[b1:b2, b2:]
    record_if_param(W_param, s_all, z_all, bits, group_size, sym)
    return Q[:, torch.argsort(perm)].to(in_dtype), s_all, z_all


def _current_group(W, W1, Err1, U, b1, i, b2, g):
    """Columns [b1+i, b1+i+g) with every update so far applied, including the lazy, pending ones."""
    end = b1 + i + g
    inside = W1[:, i:min(end, b2) - b1]
    if end <= b2:
        return inside
    # columns beyond the block have not yet received the updates of columns b1..b1+i−1
    beyond = W[:, b2:end] - Err1[:, :i] @ U[b1:b1 + i, b2:end]
    return torch.cat([inside, beyond], dim=1)


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
def gptq(model, cfg, calib, *, blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False):
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize: expected a positive integer, got {blocksize!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0 < percdamp < 1:
        raise ValueError(f"percdamp: expected a number in (0, 1), got {percdamp!r}")
    if not isinstance(act_order, bool):
        raise ValueError(f"act_order: expected True or False, got {act_order!r}")

    def quantize_layer(name, layer, H):
        W = layer.weight
        if H is None:  # never ran during calibration: nothing to compensate against
            Wq = quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym)
        else:
            Wq = gptq_quantize(W, H, cfg.bits, cfg.group_size, cfg.sym, blocksize, float(percdamp), act_order)
        W.copy_(Wq.to(W.dtype))

    for_each_layer(model, calib, quantize_layer, skip=cfg.skip, stat="hessian")
    return model
