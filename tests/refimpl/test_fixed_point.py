"""[fixed_point]: power-of-two scales, MSE-optimal fractional lengths, and an integer-only Linear
that agrees exactly with the fake-quant float path on real MiniLM activations."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refimpl
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.formats.fixed_point import (FixedPointLinear, dyadic, fixed_codes, frac_length, int_linear,
                                         shift_round)


def block0(minilm):
    return copy.deepcopy(minilm[0].encoder.layer[0])


@torch.no_grad()
def real_inputs(minilm, name="attention.self.query"):
    model, _, calib, _ = minilm
    layer = find_linears(model.encoder.layer[0])[name]
    return capture_inputs(lambda: [run_model(model, b) for b in calib[:4]], {name: layer})[name]


@pytest.mark.parametrize("bits", [4, 8])
def test_frac_length_is_mse_optimal_over_all_lengths(minilm, bits):
    W = find_linears(minilm[0].encoder.layer[1])["intermediate.dense"].weight.detach()[:64]
    f = frac_length(W, bits)
    # brute force over every length from very coarse to very fine
    errs = torch.stack([(W - torch.ldexp(fixed_codes(W, bits, torch.tensor(k)), torch.tensor(-k)))
                        .pow(2).sum(1) for k in range(-4, 30)])
    best = (errs.min(0).values)
    ours = (W - torch.ldexp(fixed_codes(W, bits, f), -f)).pow(2).sum(1)
    assert torch.equal(ours, best)


def test_weights_become_integers_times_powers_of_two(minilm):
    q = refimpl.quantize(block0(minilm), "fixed_point", sym=True, bits=8)
    for n, l in find_linears(q).items():
        W = l.weight.detach()
        f = frac_length(W, 8)
        codes = torch.ldexp(W, f)
        assert torch.equal(codes, codes.round()) and codes.abs().max() <= 128, n


def test_shift_round_is_round_half_even():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-2 ** 40, 2 ** 40, (4000,), generator=g)
    acc[:64] = torch.arange(-32, 32) * 8 + 4          # exact ties at shift 3
    for s in (-3, 0, 1, 3, 11, 20):
        ref = torch.round(acc.double() / 2.0 ** s).long()
        assert torch.equal(shift_round(acc, torch.tensor(s)), ref), s


def test_integer_only_linear_equals_fake_quant_float64_path(minilm):
    model = block0(minilm)
    lin = model.attention.self.query
    q = refimpl.quantize(model, "fixed_point", sym=True, bits=8, act_bits=8)
    fpl = q.attention.self.query
    assert isinstance(fpl, FixedPointLinear)
    X = real_inputs(minilm)
    q_x, fx = fpl.quantize_input(X)
    b_q = fpl.bias_codes(fx)
    # fake-quant float path, in float64 so every value is exact: ŷ = x̂ Ŵᵀ + b̂
    x_hat = torch.ldexp(q_x.double(), torch.tensor(-fx))
    W_hat = lin.weight.double()
    b_hat = torch.ldexp(b_q.double(), -(fx + fpl.fw))
    y_float = x_hat @ W_hat.T + b_hat
    for fy in (fx + int(fpl.fw.min()), 4, 12):
        y_int = int_linear(q_x, fpl.W_q, fx, fpl.fw, fy, b_q)
        assert torch.equal(y_int, torch.round(torch.ldexp(y_float, torch.tensor(fy))).long()), fy
    # the module's own float32 forward is the same computation within one output LSB
    fy = 8
    y_int = int_linear(q_x, fpl.W_q, fx, fpl.fw, fy, b_q)
    y32 = torch.round(fpl(X).double() * 2 ** fy).long()
    assert (y_int - y32).abs().max() <= 1
    # 8-bit codes: the accumulator fits int32 on real data (as F8Net's hardware assumes)
    acc = int_linear(q_x, fpl.W_q, fx, fpl.fw, fx + int(fpl.fw.min()) - 64, b_q)
    assert (acc.abs() < 2 ** 31).all()


def test_dyadic_approximation():
    for M in (2.0 ** -7, 0.3, 1.0 / 3, 123.456, 1e-5):
        m, c = dyadic(M)
        assert 0 < m < 2 ** 31 and abs(m / 2 ** c - M) <= M * 2.0 ** -31
    # a power of two is exactly dyadic with a power-of-two multiplier: the rescale is a shift
    m, c = dyadic(2.0 ** -9)
    assert m == 2 ** 30 and m / 2 ** c == 2.0 ** -9


@torch.no_grad()
def test_more_bits_less_error_and_activation_quantization_costs_some(minilm):
    X = real_inputs(minilm, "intermediate.dense")
    ref = minilm[0].encoder.layer[0].intermediate.dense(X)

    def err(**kw):
        q = refimpl.quantize(block0(minilm), "fixed_point", sym=True, **kw)
        y = q.intermediate.dense(X)
        return float((y - ref).norm() / ref.norm())
    e8, e4, e8a8 = err(bits=8), err(bits=4), err(bits=8, act_bits=8)
    assert e8 < e8a8 < e4 and e8 < 0.02


@pytest.mark.parametrize("kwargs,param", [(dict(bits=1, sym=True), "bits"),
                                          (dict(bits=8, sym=True, act_bits=0), "act_bits"),
                                          (dict(bits=8, sym=True, f_range=3), "f_range"),
                                          (dict(bits=4, sym=True, group_size=8), "group_size"),
                                          (dict(bits=4), "sym")])
def test_bad_input(kwargs, param):
    # groups and zero-points do not exist on this grid: refused, never silently ignored
    with pytest.raises(ValueError, match=f"^{param}: "):
        refimpl.quantize(nn.Sequential(nn.Linear(16, 8)), "fixed_point", **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_integer_path_matches_cpu():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(10, 64)
    model = refimpl.quantize(nn.Sequential(copy.deepcopy(lin)), "fixed_point", sym=True, bits=8, act_bits=8)
    gpu = refimpl.quantize(nn.Sequential(copy.deepcopy(lin)).cuda(), "fixed_point", sym=True, bits=8, act_bits=8)
    outs = []
    for m, xx in ((model[0], x), (gpu[0], x.cuda())):
        q_x, fx = m.quantize_input(xx)
        outs.append(int_linear(q_x, m.W_q, fx, m.fw, 6, m.bias_codes(fx)).cpu())
    assert torch.equal(*outs)
    assert torch.allclose(gpu(x.cuda()).cpu(), model(x), atol=1e-5)
