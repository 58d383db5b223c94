"""A complete llama.cpp GGUF file for a Llama-architecture causal LM, written with the `gguf` package.

Hugging Face names map onto llama.cpp's (token_embd, blk.N.attn_q, ..., output_norm, output);
quantized Linears become Q4_0/Q4_1/Q8_0 blocks packed from their recorded codes
(`ggml_blocks`), skipped Linears, embeddings and norms float tensors. llama.cpp stores the q
and k projections with the two rotary halves of each head interleaved (the layout of the
original Meta checkpoints), so their rows — codes, scales and zero-points alike — are permuted
the way transformers' GGUF loader undoes. Hyper-parameters come from the model's config;
tokenizer and descriptive metadata are carried over from `metadata_from`, an existing GGUF
of the same model (SmolLM2 ships one), since the atlas never rebuilds a tokenizer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from refimpl.deploy.ggml_blocks import pack
from refimpl.deploy.plan import Entry

_LINEAR_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
_FILE_TYPES = {"Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q8_0": "MOSTLY_Q8_0"}
# keys the writer sets from the model itself; everything else (tokenizer.*, general.*) is carried over
_OWN_PREFIXES = ("llama.", "general.architecture", "general.file_type", "general.quantization_version", "GGUF.")


def check_llama(model: nn.Module) -> None:
    """ValueError unless `model` is a LlamaForCausalLM this writer maps tensor for tensor."""
    cfg = getattr(model, "config", None)
    arch = getattr(cfg, "model_type", type(model).__name__)
    if arch != "llama":
        raise ValueError(f"model: GGUF export maps the llama architecture (LlamaForCausalLM) only; got {arch!r}")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"model: rope_type {rope.get('rope_type')!r} is not written by this exporter; only 'default'")
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            raise ValueError(f"model: layer {name!r} has a bias (e.g. from bias_correction); the llama GGUF "
                             "layout written here has no Linear biases; nearest: a technique that adds none")


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp tensor name for a Hugging Face parameter name (None: not part of the file)."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"]:
        return None
    i, rest = parts[2], ".".join(parts[3:-1])
    norms = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    short = _LINEAR_NAMES.get(rest) or norms.get(rest)
    return f"blk.{i}.{short}.{parts[-1]}" if short else None


def rotary_rows(rows: int, n_head: int) -> torch.Tensor:
    """Row order of llama.cpp's q/k layout: per head, the two rotary halves interleaved."""
    hd = rows // n_head
    return torch.arange(rows).reshape(n_head, 2, hd // 2).transpose(1, 2).reshape(-1)


def _permute(entry: Entry, n_head: int) -> Entry:
    idx = rotary_rows(entry.layer.out_features, n_head)
    if entry.grid is None:
        return entry
    g = entry.grid
    return dataclasses.replace(entry, grid=dataclasses.replace(g, codes=g.codes[idx], scale=g.scale[idx],
                                                                 zero=g.zero[idx]))


def _float(t: torch.Tensor, float_type: str) -> np.ndarray:
    return t.detach().to(torch.float16 if float_type == "f16" else torch.float32).cpu().numpy()


def _copy_metadata(writer, source: Path) -> None:
    import gguf
    reader = gguf.GGUFReader(source)
    for key, field in reader.fields.items():
        if key.startswith(_OWN_PREFIXES):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def write(model: nn.Module, entries: list[Entry], path: Path, *, metadata_from: Path | None = None,
          float_type: str = "f32") -> dict[str, str]:
    """Write the GGUF file; returns {gguf tensor name: type name}."""
    import gguf
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    by_name = {e.name: e for e in entries}
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    writer = gguf.GGUFWriter(str(path), "llama")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if metadata_from is not None:
        _copy_metadata(writer, Path(metadata_from))
    types: dict[str, str] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        gname = gguf_name(pname)
        if gname is None or (tied and gname == "output.weight") or gname in types:
            continue
        entry = by_name.get(pname.rsplit(".", 1)[0])
        if entry is not None and pname.endswith(".weight"):
            heads = n_head if pname.endswith("q_proj.weight") else n_kv if pname.endswith("k_proj.weight") else None
            if heads is not None:
                entry = _permute(entry, heads)
            if entry.grid is not None:
                kind, data = pack(entry.grid, entry.name)
                writer.add_tensor(gname, data, raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
                types[gname] = kind
                continue
            weight = entry.layer.weight.detach()
            if heads is not None:
                weight = weight[rotary_rows(weight.shape[0], heads)]
            writer.add_tensor(gname, _float(weight, float_type))
        else:
            # norms stay float32 (llama.cpp computes them in f32); embeddings follow float_type
            writer.add_tensor(gname, _float(p, "f32" if p.dim() == 1 else float_type))
        types[gname] = "F32" if p.dim() == 1 or float_type == "f32" else "F16"
    quant = sorted({t for t in types.values() if t in _FILE_TYPES})
    ftype = _FILE_TYPES[quant[0]] if len(quant) == 1 else ("ALL_F32" if float_type == "f32" else "MOSTLY_F16")
    writer.add_file_type(getattr(gguf.LlamaFileType, ftype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types
