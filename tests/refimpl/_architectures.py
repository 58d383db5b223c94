"""Tiny random-init causal LMs of the common Hugging Face architectures, built from their configs
(no download): what a user pointing `refimpl.quantize` at their own model would bring.

Norm gains are drawn away from their initial value so that a wrong norm formula or a fold into
the wrong norm shows up as an output change, not as a no-op."""
from __future__ import annotations

import torch

_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=128)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, **_IDS)

# architecture → (config class, model class, config keyword arguments)
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_DECODER, head_dim=16)),
    "mistral": ("MistralConfig", "MistralForCausalLM", _DECODER),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _DECODER),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _DECODER),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                 num_attention_heads=4, word_embed_proj_dim=64,
                                                 max_position_embeddings=64, **_IDS)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, **_IDS)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=64, n_layer=2, n_head=4, **_IDS)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_DECODER, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_DECODER, head_dim=16)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_DECODER, num_local_experts=4,
                                                            num_experts_per_tok=2)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, **_IDS)),
}


def build(arch: str, seed: int = 0):
    """The tiny model of `arch` in eval mode, fp32, with every norm weight perturbed."""
    import transformers
    cfg_cls, model_cls, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln" in name.split(".")[-2:][0]:
                p.add_(torch.empty_like(p).uniform_(-0.4, 0.4))
    return model
