"""Helpers several technique tests share (imported by name; pytest does not collect this file)."""
from __future__ import annotations

import torch

from refimpl.core.calib import capture_inputs, run_model


def layer_error(ref, quant, X: dict) -> float:
    """Mean relative output error of each named Linear of `quant` against `ref` on inputs X[name]."""
    errs = []
    with torch.no_grad():
        for name, x in X.items():
            y = ref.get_submodule(name)(x)
            errs.append(float((quant.get_submodule(name)(x) - y).norm() / y.norm()))
    return sum(errs) / len(errs)


def tiny_llama(tied: bool | None = None):
    """A 2-layer random Llama with non-trivial RMSNorm gains, so that folding into weights is tested."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    extra = {} if tied is None else {"tie_word_embeddings": tied}
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def block_inputs(minilm, block: int, names, *, heldout: bool = False) -> dict:
    """{name: real input rows [N, in]} of the named Linears of MiniLM block `block`
    (calibration sentences, or the held-out ones)."""
    model, _, calib, held = minilm
    layers = {n: model.encoder.layer[block].get_submodule(n) for n in names}
    batches = held if heldout else calib
    return capture_inputs(lambda: [run_model(model, b) for b in batches], layers)
