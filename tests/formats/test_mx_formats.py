"""MXFP4 / MXFP8 (OCP Microscaling v1.0) against torchao's to_mx, and the spec's scale rule."""
from __future__ import annotations

import pytest
import torch

from refimpl.formats import quantize
from refimpl.formats.minifloat import FP4_E2M1, FP8_E4M3
from refimpl.formats.mx import MX_ELEMENTS, mx_encode

mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
TORCHAO_ELEM = {"mxfp8": torch.float8_e4m3fn, "mxfp4": torch.float4_e2m1fn_x2}


def torchao_mx(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """torchao's reference MX cast (FLOOR scale mode, the spec's rule) and back."""
    scale, data = mx.to_mx(x, TORCHAO_ELEM[fmt], 32)
    return mx.to_dtype(data, scale, TORCHAO_ELEM[fmt], 32, x.dtype)


def heavy_tailed(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.exp(2 * torch.randn(shape, generator=g))


@pytest.mark.parametrize("fmt", sorted(TORCHAO_ELEM))
def test_matches_torchao_on_heavy_tailed_data(fmt):
    x = heavy_tailed((128, 1024))
    assert torch.equal(quantize(x, fmt), torchao_mx(x, fmt))


@pytest.mark.parametrize("fmt", sorted(TORCHAO_ELEM))
def test_matches_torchao_on_real_minilm_weights_fp32_and_bf16(minilm, fmt):
    model = minilm[0]
    layer = model.encoder.layer[0]
    for W in (layer.attention.self.query.weight, layer.intermediate.dense.weight, layer.output.dense.weight):
        W = W.detach()
        assert torch.equal(quantize(W, fmt), torchao_mx(W, fmt))
        Wb = W.bfloat16()
        assert torch.equal(quantize(Wb, fmt), torchao_mx(Wb, fmt))


@pytest.mark.parametrize("fmt,spec", [("mxfp4", FP4_E2M1), ("mxfp8", FP8_E4M3)])
def test_block_max_lands_in_the_top_binade_of_the_element(fmt, spec):
    x = heavy_tailed((64, 256), seed=1)
    P, E = mx_encode(x, MX_ELEMENTS[fmt])
    top = P.abs().amax(-1)
    # floor(log2 amax) - emax_elem puts |amax / X| in [2^emax, 2^(emax+1)): it rounds into
    # [2^emax, max_finite] (saturating above max_finite)
    assert (top >= 2.0 ** spec.emax).all() and (top <= spec.max_finite).all()
    assert E.dtype == torch.int32 and E.min() >= -127 and E.max() <= 127


@pytest.mark.parametrize("fmt", sorted(TORCHAO_ELEM))
def test_power_of_two_scaling_commutes_and_blocks_are_independent(fmt):
    x = heavy_tailed((8, 128), seed=2)
    base = quantize(x, fmt)
    # E8M0 scales absorb any power of two exactly: Q(2^k x) = 2^k Q(x)
    for k in (-20, -3, 5, 30):
        assert torch.equal(quantize(x * 2.0 ** k, fmt), base * 2.0 ** k)
    # an outlier changes only its own block of 32
    y = x.clone()
    y[0, 40] = 1e4
    diff = (quantize(y, fmt) != base).nonzero()
    assert diff.numel() and (diff[:, 0] == 0).all() and (diff[:, 1] // 32 == 1).all()


def test_zero_block_and_idempotence():
    x = heavy_tailed((4, 64), seed=3)
    x[1, :32] = 0
    for fmt in TORCHAO_ELEM:
        q = quantize(x, fmt)
        assert (q[1, :32] == 0).all()
        assert torch.equal(quantize(q, fmt), q)


def test_mx_block_must_divide_last_dim():
    with pytest.raises(ValueError, match="block_size"):
        quantize(torch.randn(4, 48), "mxfp4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = heavy_tailed((64, 256))
    for fmt in TORCHAO_ELEM:
        assert torch.equal(quantize(x.cuda(), fmt).cpu(), quantize(x, fmt))
