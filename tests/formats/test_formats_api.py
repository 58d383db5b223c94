"""`refimpl.formats.quantize`: integer formats, shapes/dtypes, bad input, and error ordering on real weights."""
from __future__ import annotations

import pytest
import torch

from refimpl.formats import FORMATS, quantize


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("block", [None, 32], ids=["tensor", "block32"])
def test_int_formats_match_torch_fake_quantize(bits, block):
    torch.manual_seed(bits)
    x = torch.randn(16, 128) * 3
    qmax = 2 ** (bits - 1) - 1
    view = x.reshape(1, -1) if block is None else x.reshape(-1, block)
    s = view.abs().amax(-1) / qmax
    # torch's own fake-quant op, one channel per block: an independent rounding implementation
    ref = torch.fake_quantize_per_channel_affine(view, s, torch.zeros_like(s, dtype=torch.int32), 0, -qmax, qmax)
    ours = quantize(x, f"int{bits}", block_size=block)
    assert torch.allclose(ours, ref.reshape(x.shape), rtol=0, atol=1e-6)
    levels = (ours.reshape(view.shape) / s[:, None]).round()
    assert levels.abs().max() == qmax                    # absmax element lands on the top code
    assert torch.equal(quantize(ours, f"int{bits}", block_size=block), ours)


def test_int2_is_ternary_per_block():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    q = quantize(x, "int2", block_size=16).reshape(-1, 16)
    s = x.reshape(-1, 16).abs().amax(-1, keepdim=True)
    assert ((q == 0) | (q == s) | (q == -s)).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_shape_dtype_device_preserved_and_all_zero_stays_zero(fmt, dtype):
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 64) * 0.1).to(dtype)
    out = quantize(x, fmt)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert not torch.equal(out, torch.zeros_like(out))
    z = torch.zeros(2, 64, dtype=dtype)
    assert torch.equal(quantize(z, fmt), z)


def test_input_is_not_modified():
    x = torch.randn(4, 64)
    before = x.clone()
    for fmt in FORMATS:
        quantize(x, fmt)
    assert torch.equal(x, before)


@pytest.mark.parametrize("fmt,hint", [("fp8e4m3", "fp8_e4m3"), ("NF4", "nf4"), ("mxfp6", "mxfp4"), ("int16", "int")])
def test_unknown_format_suggests_near_names(fmt, hint):
    with pytest.raises(ValueError, match=rf"^fmt: unknown number format .*{hint}"):
        quantize(torch.randn(4, 64), fmt)


@pytest.mark.parametrize("block", [0, -32, 2.5, True, "32", 48])
def test_bad_block_size(block):
    with pytest.raises(ValueError, match="^block_size: "):
        quantize(torch.randn(4, 64), "int4", block_size=block)


@pytest.mark.parametrize("x", [torch.arange(64), torch.ones(64, dtype=torch.int8), [1.0, 2.0], 3.0], ids=str)
def test_non_float_input(x):
    with pytest.raises(ValueError, match="^x: "):
        quantize(x, "int8")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("fmt", ["int4", "fp8_e4m3", "nf4", "mxfp4"])
def test_nan_inf_refused(bad, fmt):
    x = torch.randn(4, 64)
    x[2, 7] = bad
    with pytest.raises(ValueError, match="^x: contains NaN or Inf"):
        quantize(x, fmt)


def test_double_quant_is_nf4_only():
    with pytest.raises(ValueError, match="^double_quant: "):
        quantize(torch.randn(4, 64), "int4", double_quant=True)
    with pytest.raises(ValueError, match="^double_quant: "):
        quantize(torch.randn(4, 64), "nf4", double_quant=1)


def test_error_ordering_on_real_minilm_weights(minilm):
    """Relative squared error ‖Ŵ−W‖²/‖W‖² on three real layers. Asserted: what the formats
    guarantee (more bits, less error) and QLoRA's claim (NF4 beats 4-bit absmax int at the same
    block size on normally distributed weights). Measured on all 37 MiniLM Linears:
    int8/row 9.9e-5 < fp8_e4m3/row 6.8e-4 < mxfp8 9.3e-4 < nf4/64 8.8e-3 < mxfp4 1.38e-2
    ≈ int4/64 1.32e-2 < fp4_e2m1/row 1.47e-2 < int4/row 2.47e-2."""
    layer = minilm[0].encoder.layer[2]
    Ws = [layer.attention.self.key.weight.detach(), layer.intermediate.dense.weight.detach()]

    def err(fmt, block):
        num = sum((quantize(W, fmt, block_size=block or W.shape[1]) - W).pow(2).sum() for W in Ws)
        return float(num / sum(W.pow(2).sum() for W in Ws))

    e = {f"{f}/{b or 'row'}": err(f, b) for f, b in [
        ("fp8_e4m3", None), ("fp4_e2m1", None), ("int8", None), ("int4", None), ("int4", 64),
        ("nf4", 64), ("mxfp8", 32), ("mxfp4", 32), ("int3", 64), ("int2", 64)]}
    assert e["fp8_e4m3/row"] < e["fp4_e2m1/row"]
    assert e["mxfp8/32"] < e["mxfp4/32"]
    assert e["int8/row"] < e["int4/row"]
    assert e["int4/64"] < e["int3/64"] < e["int2/64"]
    assert e["nf4/64"] < e["int4/64"]              # QLoRA's claim holds on these weights
    assert e["fp4_e2m1/row"] < e["int4/row"]       # a float grid suits bell-shaped rows better
