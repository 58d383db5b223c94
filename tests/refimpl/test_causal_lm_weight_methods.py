"""Every layer-wise / task-loss / baseline weight technique of this group also runs on a Hugging
Face causal LM (Llama architecture, random weights, no download) fed a LongTensor of token ids."""
from __future__ import annotations

import pytest
import torch

import refimpl

transformers = pytest.importorskip("transformers")

METHODS = [("gptq", 3, {}), ("mse_clip", 3, {}), ("task_loss_scale", 3, dict(steps=5)),
           ("bias_correction", 3, {}), ("adaround", 3, dict(iters=20)), ("xnor", 1, {}), ("twn", 2, {})]


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("method, bits, opts", METHODS, ids=[m for m, _, _ in METHODS])
def test_quantize_runs_on_a_causal_lm_and_keeps_logits_finite(method, bits, opts):
    model = tiny_llama()
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    refimpl.quantize(model, method, bits=bits, group_size=32, calib=ids, **opts)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (4, 16, 128) and torch.isfinite(logits).all()
    # the Linear weights of the blocks changed, the lm_head (skipped by default) did not
    assert not torch.equal(model.model.layers[1].mlp.down_proj.weight, before["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])
