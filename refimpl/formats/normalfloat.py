"""NormalFloat-4 (NF4) and double quantization of its scales, as in QLoRA.

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv 2305.14314), §3.

NF4 is a 16-entry codebook, not a bit-field float: the values are quantiles of N(0, 1),
normalised to [-1, 1], built so that each code covers (about) equal probability mass for
normally distributed weights, with an exact zero (8 positive values, 7 negative, and 0).
A block of 64 weights is normalised by its absmax and every element snaps to the nearest
code:  q = argmin_j |x · (1/absmax) − c_j|,   x̂ = c_q · absmax.

Double quantization: the fp32 absmax constants (one per 64 weights, 0.5 bit/parameter) are
themselves quantized to 8 bits in blocks of 256 after subtracting their mean, which brings
the overhead down to about 0.127 bit/parameter. The paper calls these 8-bit floats; the
QLoRA release (bitsandbytes) uses the signed 8-bit "dynamic tree" code of Dettmers (arXiv
1511.04561), built in `dynamic_code`, and so do we, so that results match it bit for bit.
The 4-bit codes are always chosen with the exact absmax; only the stored scale is compressed.
"""
from __future__ import annotations

import torch

from refimpl.formats.blockwise import absmax, safe_divisor, to_blocks

# The 16 NF4 values (QLoRA, appendix E), as float32.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted codebook `code` (a tie goes to the lower entry).

    Nearest-value rounding is a threshold test against the midpoints between neighbours.
    """
    mid = (code[:-1] + code[1:]) / 2
    return torch.bucketize(x, mid)


def nf4_code(device=None) -> torch.Tensor:
    return torch.tensor(NF4_VALUES, dtype=torch.float32, device=device)


def nf4_encode(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit code indices `[..., n/k, k]` and fp32 absmax `[..., n/k, 1]` of float32 `x`."""
    xb = to_blocks(x, block_size)
    amax = absmax(xb)
    # x · (1/absmax) rather than x / absmax, as the QLoRA release computes it: the two differ in
    # the last bit, which flips about one in 10^6 elements that sit on a decision midpoint
    q = nearest_code(xb * (1 / safe_divisor(amax)), nf4_code(x.device))
    return q, amax


def dynamic_code(device=None) -> torch.Tensor:
    """The 256 values of the signed 8-bit dynamic tree code (sorted, float32, in [-1, 1]).

    After the sign bit, a run of i zero bits selects the decade 10^(i-6) (i = 0..6) and the
    remaining bits a linear fraction: 2^i evenly spaced bin centres in [0.1, 1] at decade i.
    Together with 0 and 1 that gives 2 · 127 + 2 = 256 values: wide range, 1-3 digits each.
    """
    values = [torch.tensor([0.0, 1.0])]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        values += [centres, -centres]
    return torch.cat(values).sort().values.to(device)


def double_quantize(amax: torch.Tensor, block_size: int = 256) -> torch.Tensor:
    """Dequantized 8-bit version of the absmax constants (any shape, float32).

    c = mean(absmax);  r = absmax − c;  each block of 256 of r is absmax-scaled onto the
    dynamic code;  result = code[q] · s + c. A short last block is its own block.
    """
    flat = amax.reshape(-1)
    c = flat.mean()
    r = flat - c
    n = r.numel()
    # zero padding does not change a block's absmax and is trimmed afterwards
    rb = torch.nn.functional.pad(r, (0, (-n) % block_size)).reshape(-1, block_size)
    s = absmax(rb)
    code = dynamic_code(amax.device)
    q = nearest_code(rb * (1 / safe_divisor(s)), code)
    return (code[q] * s).reshape(-1)[:n].add(c).reshape(amax.shape)


def quantize_nf4(x: torch.Tensor, block_size: int = 64, double_quant: bool = False) -> torch.Tensor:
    """Dequantized NF4 of float32 `x` with blockwise absmax along the last dim."""
    q, amax = nf4_encode(x, block_size)
    if double_quant:
        amax = double_quantize(amax)
    return (nf4_code(x.device)[q] * amax).reshape(x.shape)
