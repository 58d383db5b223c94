"""AWQ: α = 0 is RTN, the scaling is float-exact, and the searched scales beat RTN on real
MiniLM activations."""
from __future__ import annotations

import copy

import pytest
import torch

import refimpl
from refimpl.core.act import QLinear
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.core.config import QuantConfig
from refimpl.core.quantizer import quantize_weight
from refimpl.redistribution._llama import norm_groups
from refimpl.redistribution.awq import apply_scale, clip_quant, output_error, scaled_quant, search_scale
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


def test_clip_search_never_worse_than_unclipped(minilm):
    W, X = _real_layer(minilm)
    cfg = QuantConfig(bits=3, group_size=64)
    C = X.T @ X / X.shape[0]
    assert output_error(W - clip_quant(W, C, cfg), C) <= output_error(W - quantize_weight(W, 3, 64), C)


def test_float_transform_is_exact_on_bert_and_llama(minilm):
    model, _, _, heldout = minilm
    bert = copy.deepcopy(model)
    block = bert.encoder.layer[0]
    torch.manual_seed(0)
    apply_scale(block, ["attention.self.query"], torch.rand(384) + 0.5, None)
    assert isinstance(block.attention.self.query, QLinear)
    with torch.no_grad():
        for b in heldout:
            assert torch.allclose(bert(**b).last_hidden_state, model(**b).last_hidden_state, atol=1e-4)
    from transformers import LlamaConfig, LlamaForCausalLM
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    scaled = copy.deepcopy(llama)
    layer = scaled.model.layers[0]
    for norm, names in norm_groups(layer):
        apply_scale(layer, names, torch.rand(48) + 0.5, norm)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.allclose(scaled(ids).logits, llama(ids).logits, atol=1e-5)
    assert isinstance(layer.self_attn.q_proj, torch.nn.Linear)  # folded into the RMSNorm


def _first_blocks(model, n):
    """A copy of MiniLM keeping its first n encoder layers (keeps the test fast on 2 cores)."""
    small = copy.deepcopy(model)
    small.encoder.layer = torch.nn.ModuleList(list(small.encoder.layer)[:n])
    return small


@pytest.mark.parametrize("bits", [3, 4])
def test_beats_rtn_on_real_activations(minilm, bits):
    model, _, calib, heldout = minilm
    model = _first_blocks(model, 2)
    X = capture_inputs(lambda: [run_model(model, b) for b in heldout], find_linears(model))
    rtn = refimpl.quantize(copy.deepcopy(model), "rtn", bits=bits, group_size=64)
    aq = refimpl.quantize(copy.deepcopy(model), "awq", bits=bits, group_size=64, calib=calib, grid=10)
    assert _layer_error(model, aq, X) < _layer_error(model, rtn, X)
    # a weight-only method: the wrappers keep float inputs
    assert all(m.act_bits is None for m in aq.modules() if isinstance(m, QLinear))


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
