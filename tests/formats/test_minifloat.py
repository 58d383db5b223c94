"""FP8 (E4M3, E5M2) and FP4 (E2M1): every code, every tie, and torch/torchao casts bit for bit."""
from __future__ import annotations

import pytest
import torch

from refimpl.formats import quantize
from refimpl.formats.minifloat import FP4_E2M1, FP8_E4M3, FP8_E5M2, all_codes, decode, round_minifloat

SPECS = [FP8_E4M3, FP8_E5M2, FP4_E2M1]
TORCH_FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Compare floats by bit pattern (so -0.0 != 0.0 and NaN == NaN)."""
    return t.float().view(torch.int32)


def wide_values(n=200_000, seed=0):
    """Log-uniform magnitudes over 2^-24 .. 2^20 with random signs, plus exact zeros."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.rand(n, generator=g) * 44 - 24)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return torch.cat([mag * sign, torch.zeros(4), -torch.zeros(4)])


@pytest.mark.parametrize("fmt", sorted(TORCH_FP8))
def test_every_fp8_code_decodes_like_torch_and_round_trips(fmt):
    spec = {s.name: s for s in SPECS}[fmt]
    codes = all_codes(spec)
    ours = decode(codes, spec)
    ref = codes.to(torch.uint8).view(TORCH_FP8[fmt]).double()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isnan(ours), ~finite)      # Inf and NaN codes are exactly the non-finite ones
    assert torch.equal(bits_of(ours[finite]), bits_of(ref[finite]))
    v = ours[finite].float()
    assert torch.equal(bits_of(round_minifloat(v, spec)), bits_of(v))
    assert torch.equal(bits_of(quantize(v, fmt)), bits_of(v))


def test_fp8_special_codes_follow_ocp():
    # E4M3: only S.1111.111 is NaN, no Inf; E5M2: E = 11111 gives ±Inf (M = 0) and NaN
    assert int(torch.isnan(decode(all_codes(FP8_E4M3), FP8_E4M3)).sum()) == 2
    assert int(torch.isnan(decode(all_codes(FP8_E5M2), FP8_E5M2)).sum()) == 8
    assert decode(torch.tensor([0x7E]), FP8_E4M3).item() == 448.0
    assert decode(torch.tensor([0x7B]), FP8_E5M2).item() == 57344.0
    assert decode(torch.tensor([0x01]), FP8_E4M3).item() == 2.0 ** -9    # smallest subnormal
    assert decode(torch.tensor([0x01]), FP8_E5M2).item() == 2.0 ** -16


def test_e2m1_codes_are_the_ocp_values_and_match_torchao():
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    codes = all_codes(FP4_E2M1)
    ours = decode(codes, FP4_E2M1)
    assert sorted(set(ours.abs().tolist())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert torch.equal(bits_of(ours), bits_of(kernels.f4_unpacked_to_f32(codes.to(torch.uint8))))
    assert torch.equal(round_minifloat(ours.float(), FP4_E2M1), ours.float())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_midpoints_round_to_even_code_and_neighbours_to_nearest(spec):
    codes = all_codes(spec)[: 2 ** (spec.bits - 1)]      # positive half; value grows with the code
    vals = decode(codes, spec)
    keep = torch.isfinite(vals)
    codes, vals = codes[keep], vals[keep]
    lo, hi = vals[:-1], vals[1:]
    mid = (lo + hi) / 2                                   # exact in float64
    even = torch.where(codes[:-1] % 2 == 0, lo, hi)
    assert torch.equal(round_minifloat(mid, spec), even)
    assert torch.equal(round_minifloat(-mid, spec), -even)
    step = (hi - lo) / 64
    assert torch.equal(round_minifloat(mid - step, spec), lo)
    assert torch.equal(round_minifloat(mid + step, spec), hi)


@pytest.mark.parametrize("fmt", sorted(TORCH_FP8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fp8_cast_matches_torch_bit_for_bit(fmt, dtype):
    x = wide_values().to(dtype)
    x = x[x.isfinite()]
    # above the last rounding boundary torch's E5M2 cast gives Inf (IEEE); compared separately
    spec = {s.name: s for s in SPECS}[fmt]
    x = x[x.float().abs() < spec.max_finite + 2.0 ** (spec.emax - spec.m_bits - 1)]
    ours = quantize(x, fmt)
    assert ours.dtype == dtype
    ref = x.to(TORCH_FP8[fmt]).to(dtype)
    assert torch.equal(ours.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       ref.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_out_of_range_saturates_to_largest_finite(spec):
    m = spec.max_finite
    x = torch.tensor([m * 1.0001, m * 1.2, m * 3, 1e30, -m * 1.2, -1e30])
    assert torch.equal(quantize(x, spec.name), torch.tensor([m, m, m, m, -m, -m]))


def test_e4m3_saturation_agrees_with_torch_2_13():
    x = torch.tensor([449.0, 464.0, 480.0, 1e4, -1e6])
    assert torch.equal(quantize(x, "fp8_e4m3"), x.to(torch.float8_e4m3fn).float())


def test_fp4_matches_torchao_including_saturation():
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    x = wide_values(seed=1)
    x = x[x.abs() < 100]
    ref = kernels.f4_unpacked_to_f32(kernels.f32_to_f4_unpacked(x))
    assert torch.equal(bits_of(quantize(x, "fp4_e2m1")), bits_of(ref))


def test_float64_input_is_rounded_once():
    # 1 + 2^-4 + 2^-40 is just above the E4M3 midpoint 1.0625: a float32 detour would tie to 1.0
    x = torch.tensor([1 + 2 ** -4 + 2 ** -40], dtype=torch.float64)
    assert quantize(x, "fp8_e4m3").item() == 1.125


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = wide_values()
    x = x[x.abs() < 400]
    for fmt in ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1"):
        assert torch.equal(quantize(x.cuda(), fmt).cpu(), quantize(x, fmt))
