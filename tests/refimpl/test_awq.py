"""AWQ: α = 0 is RTN, only foldable groups are scaled and each fold is float-exact, the clip search
matches a loop reference, blocks are calibrated on float outputs, and AWQ beats RTN on real MiniLM
activations."""
from __future__ import annotations

import copy

import pytest
import torch

import refimpl
from refimpl.core.act import QuantLinear
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.core.config import QuantConfig
from refimpl.core.quantizer import quantize_weight
from refimpl.redistribution._llama import norm_groups
from refimpl.redistribution.awq import apply_scale, clip_quant, output_error, scale_groups, scaled_quant, search_scale
from _refimpl_helpers import layer_error as _layer_error


def _real_layer(minilm):
    model, _, calib, _ = minilm
    layer = model.encoder.layer[1].intermediate.dense
    X = capture_inputs(lambda: [run_model(model, b) for b in calib], {"l": layer})["l"]
    return layer.weight.detach(), X


def test_alpha_zero_is_rtn_and_search_never_loses_to_it(minilm):
    W, X = _real_layer(minilm)
    cfg = QuantConfig(bits=3, group_size=64)
    assert torch.equal(scaled_quant(W, torch.ones(W.shape[1]), cfg), quantize_weight(W, 3, 64))
    s, alpha = search_scale([W], X, cfg, grid=20)
    C = X.T @ X / X.shape[0]
    e_awq = output_error(W - scaled_quant(W, s, cfg), C)
    e_rtn = output_error(W - quantize_weight(W, 3, 64), C)
    assert alpha > 0 and e_awq < e_rtn
    # the closed form equals the error measured on the real rows
    assert torch.allclose(e_rtn, (X @ (W - quantize_weight(W, 3, 64)).T).pow(2).sum() / X.shape[0], rtol=1e-4)


def _reference_clip(W, C, bits, g, n_grid=20, max_shrink=0.5):
    """Group by group, ratio by ratio with plain loops: clamp to ±r·max|w|, round min-max
    asymmetric, keep the ratio with the lowest δᵀ·C_gg·δ."""
    out = torch.empty_like(W)
    for o in range(W.shape[0]):
        for k in range(W.shape[1] // g):
            # float32 like the module: with a symmetric clamp −lo/s is an exact half, so the zero
            # point's rounding (and the grid) depends on the last bit of s
            w, Cg = W[o, k * g:(k + 1) * g].float(), C[k * g:(k + 1) * g, k * g:(k + 1) * g].double()
            best = None
            for i in range(int(max_shrink * n_grid)):
                m = w.abs().max() * (1 - i / n_grid)
                wc = torch.maximum(torch.minimum(w, m), -m)
                lo, hi = wc.min().clamp(max=0), wc.max().clamp(min=0)
                s = (hi - lo) / (2 ** bits - 1)
                z = torch.round(-lo / s)
                q = (torch.clamp(torch.round(wc / s) + z, 0, 2 ** bits - 1) - z) * s
                d = (w - q).double()
                err = float(d @ Cg @ d)
                if best is None or err < best[0]:
                    best = (err, q)
            out[o, k * g:(k + 1) * g] = best[1].to(W.dtype)
    return out


def test_clip_search_matches_a_loop_reference_and_helps_on_real_rows(minilm):
    W, X = _real_layer(minilm)
    C = X.T @ X / X.shape[0]
    cfg = QuantConfig(bits=3, group_size=64)
    rows = slice(0, 8)
    assert torch.allclose(clip_quant(W[rows], C, cfg), _reference_clip(W[rows], C, 3, 64), atol=1e-5)
    # on the real layer the search must find groups where a shrunk range is strictly better
    Wq = clip_quant(W, C, cfg)
    assert not torch.equal(Wq, quantize_weight(W, 3, 64))
    assert output_error(W - Wq, C) < 0.95 * output_error(W - quantize_weight(W, 3, 64), C)


def _llama(kv_heads):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=kv_heads)).eval()


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_only_foldable_groups_are_scaled_and_folds_are_exact(kv_heads):
    model = _llama(kv_heads)
    layer = model.model.layers[0]
    groups = scale_groups(layer, find_linears(layer, ()))
    consumers = [names for _, _, names in groups]
    expected = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    if kv_heads < 4:   # grouped-query attention: one value channel feeds two heads, o_proj is skipped
        expected.remove(["self_attn.o_proj"])
    assert consumers == expected
    # every group's 1/s lands in a norm gain or a producer's rows: the float model is unchanged
    scaled = copy.deepcopy(model)
    lay = scaled.model.layers[0]
    torch.manual_seed(1)
    for norm, prev, names in scale_groups(lay, find_linears(lay, ())):
        apply_scale(lay, names, torch.rand(lay.get_submodule(names[0]).in_features) + 0.5, norm, prev)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.allclose(scaled(ids).logits, model(ids).logits, atol=1e-5)
    # and the whole method adds no run-time divisor anywhere
    calib = torch.randint(0, 64, (4, 16))
    out = refimpl.quantize(copy.deepcopy(model), "awq", bits=4, group_size=16, calib=calib, grid=4)
    assert not any(isinstance(m, QuantLinear) for m in out.modules())


def test_bert_gets_no_divisor_only_the_value_output_fold(minilm):
    model, _, calib, _ = minilm
    block = model.encoder.layer[0]
    assert [(prev, names) for _, prev, names in scale_groups(block, find_linears(block, ()))] == \
        [("attention.self.value", ["attention.output.dense"])]
    small = _first_blocks(model, 1)
    out = refimpl.quantize(small, "awq", bits=4, group_size=64, calib=calib[:4], grid=4)
    assert not any(isinstance(m, QuantLinear) for m in out.modules())


def test_next_block_is_calibrated_on_float_outputs():
    model = _llama(2)
    calib = torch.randint(0, 64, (2, 16))
    seen = []
    from refimpl.core.calib import sequential_blocks

    def record(prefix, block, run):
        seen.append(capture_inputs(run, {"q": block.self_attn.q_proj})["q"].clone())
        for lin in find_linears(block, ()).values():   # ruin the block: float propagation must not see it
            lin.weight.zero_()

    ref = capture_inputs(lambda: [model(ids.unsqueeze(0)) for ids in calib],
                         {"q": model.model.layers[1].self_attn.q_proj})["q"]
    sequential_blocks(copy.deepcopy(model), [r.unsqueeze(0) for r in calib], record, propagate="float")
    assert torch.allclose(seen[1], ref, atol=1e-5)


def _first_blocks(model, n):
    """A copy of MiniLM keeping its first n encoder layers (keeps the test fast on 2 cores)."""
    small = copy.deepcopy(model)
    small.encoder.layer = torch.nn.ModuleList(list(small.encoder.layer)[:n])
    return small


@pytest.mark.parametrize("bits", [3, 4])
def test_beats_rtn_on_real_activations(minilm, bits):
    model, _, calib, heldout = minilm
    model = _first_blocks(model, 2)
    rtn = refimpl.quantize(copy.deepcopy(model), "rtn", bits=bits, group_size=64)
    aq = refimpl.quantize(copy.deepcopy(model), "awq", bits=bits, group_size=64, calib=calib, grid=10)

    def out(m):  # the encoder output: the value → output fold changes the value layer's own basis
        with torch.no_grad():
            return torch.cat([m(**b).last_hidden_state[0] for b in heldout])
    ref = out(model)
    assert (out(aq) - ref).norm() < (out(rtn) - ref).norm()


@pytest.mark.parametrize("opt", [{"grid": 0}, {"grid": 2.5}, {"clip": "no"}], ids=lambda o: next(iter(o)))
def test_bad_options_name_the_parameter(opt):
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match=rf"^{next(iter(opt))}: "):
        refimpl.quantize(model, "awq", bits=4, calib=[torch.randn(2, 16)], **opt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_awq():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).cuda()
    calib = [torch.randn(4, 64, device="cuda") for _ in range(2)]
    refimpl.quantize(model, "awq", bits=4, group_size=32, calib=calib)
    assert model(calib[0]).is_cuda
