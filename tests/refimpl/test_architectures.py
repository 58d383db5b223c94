"""Every post-training weight technique on the common Hugging Face causal-LM architectures.

The defining property, per architecture × technique: every matmul weight outside the skipped
head ends on the technique's grid (or the model is refused with the offending weights named),
and the float-exact transforms (AWQ/SmoothQuant scale folding, QuaRot rotation) leave the
logits unchanged when the grid is fine enough (16 bits) to make rounding negligible.
"""
from __future__ import annotations

import pytest
import torch

import refimpl
from refimpl.core.calib import find_linears
from refimpl.core.grid import grid_of, recorded
from refimpl.core.quantizer import to_groups
from refimpl.core.registry import all_techniques

from _architectures import ARCHITECTURES, build

pytest.importorskip("transformers")

WEIGHT_KINDS = ("ptq-weight", "ptq-weight-act")
# only to keep the matrix fast; each technique's own tests run its defaults
FAST = {"adaround": dict(iters=5), "task_loss_scale": dict(steps=2), "mse_clip": dict(grid=10), "awq": dict(grid=5)}
TECHS = [t for t in all_techniques() if t.kind in WEIGHT_KINDS]
REFUSED = {"mixtral": "MoE expert"}
CALIB = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def _setting(tech):
    bits = tech.bits[0] if tech.bits and 3 not in tech.bits else 3
    return (dict(bits=bits, group_size=None, sym=True) if tech.channel_sym_only
            else dict(bits=bits, group_size=32, sym=False))


def _levels(W: torch.Tensor, group_size: int | None) -> int:
    """Most distinct values in any (row, group): at most 2^bits on a grid, ≈ group size in float."""
    Wg = to_groups(W.detach(), group_size)
    return max(int(torch.unique(Wg[o, k]).numel()) for o in range(Wg.shape[0]) for k in range(Wg.shape[1]))


@pytest.mark.parametrize("tech", TECHS, ids=[t.id for t in TECHS])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_weight_ends_on_the_grid_or_the_model_is_refused_by_name(arch, tech):
    model = build(arch)
    setting = _setting(tech)
    if arch in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[arch]) as err:
            refimpl.quantize(model, tech.id, calib=CALIB, **setting, **FAST.get(tech.id, {}))
        assert "experts" in str(err.value)
        return
    refimpl.quantize(model, tech.id, calib=CALIB, **setting, **FAST.get(tech.id, {}))
    layers = find_linears(model)
    assert layers and not any(type(m).__name__ == "Conv1D" for m in model.modules())
    for name, layer in layers.items():
        assert _levels(layer.weight, setting["group_size"]) <= 2 ** setting["bits"], name
        if recorded(layer):   # the grid kept on the layer reproduces its weight exactly
            assert torch.equal(grid_of(layer, name).dequantize().to(layer.weight.dtype), layer.weight), name
    with torch.no_grad():
        assert torch.isfinite(model(CALIB).logits).all()


EXACT = ("awq", "smoothquant", "quarot")


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in REFUSED])
def test_float_exact_transforms_stay_exact_at_16_bits(arch, method):
    model = build(arch)
    with torch.no_grad():
        ref = model(CALIB).logits
    # AWQ's clipping search is a quantizer refinement, not part of the transform: off here
    opts = dict(FAST.get(method, {}), **({"clip": False} if method == "awq" else {}))
    refimpl.quantize(model, method, bits=16, group_size=32, calib=CALIB, **opts)
    with torch.no_grad():
        out = model(CALIB).logits
    # 16-bit rounding alone moves these logits by < 1e-4 of their range; a wrong fold moves them by O(1)
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max(), (out - ref).abs().max()


def test_gemma_norm_offset_is_measured_and_folded_into_one_plus_w():
    from refimpl.redistribution._llama import norm_gain, norm_offset, scale_norm
    model = build("gemma")
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = norm(x)
        assert norm_offset(norm) == 1 and norm_offset(build("llama").model.layers[0].input_layernorm) == 0
        factor = torch.rand(64) + 0.5
        scale_norm(norm, factor)
        assert torch.allclose(norm(x), y * factor, rtol=1e-5, atol=1e-6)
        assert torch.allclose(norm_gain(norm), (1 + norm.weight.double()))


def test_gemma2_mlp_scales_fold_into_pre_feedforward_layernorm():
    from refimpl.redistribution._llama import norm_groups
    model = build("gemma2")
    layer = model.model.layers[0]
    groups = {tuple(n.split(".")[-1] for n in names): norm for norm, names in norm_groups(model)
              if names[0].startswith("model.layers.0.")}
    assert groups[("gate_proj", "up_proj")] is layer.pre_feedforward_layernorm
    assert groups[("q_proj", "k_proj", "v_proj")] is layer.input_layernorm


def test_unknown_norm_formula_is_refused_by_class_name():
    from refimpl.redistribution._llama import norm_offset

    class ShiftedNorm(torch.nn.Module):   # y = x·(2 + w): neither formula
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * (2 + self.weight)

    with pytest.raises(ValueError, match="ShiftedNorm"):
        norm_offset(ShiftedNorm())


def test_gpt2_conv1d_becomes_an_equal_linear_before_quantization():
    from refimpl.core.coverage import linearize_conv1d
    model = build("gpt2")
    with torch.no_grad():
        ref = model(CALIB).logits
        names = linearize_conv1d(model)
        assert "transformer.h.0.attn.c_attn" in names and len(names) == 8
        assert torch.allclose(model(CALIB).logits, ref, atol=1e-5)
