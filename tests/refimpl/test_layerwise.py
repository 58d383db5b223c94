"""core.layerwise: every Linear visited once, in execution order, grouped by shared input, and
with sequential=True each group calibrated on the outputs of the already processed layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from refimpl.core.calib import find_linears, run_model
from refimpl.core.layerwise import execution_groups, for_each_layer


def test_groups_follow_execution_and_shared_inputs(minilm):
    model, _, calib, _ = minilm
    groups = execution_groups(lambda: run_model(model, calib[0]), find_linears(model))
    assert groups[0] == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
                         "encoder.layer.0.attention.self.value"]
    assert groups[1:4] == [["encoder.layer.0.attention.output.dense"], ["encoder.layer.0.intermediate.dense"],
                           ["encoder.layer.0.output.dense"]]
    assert groups[-1] == ["pooler.dense"] and len(groups) == 6 * 4 + 1


@pytest.mark.parametrize("sequential", [False, True])
def test_every_linear_once_including_those_outside_blocks(minilm, sequential):
    model, _, calib, _ = minilm
    seen = []
    for_each_layer(model, calib[:2], lambda n, l, H: seen.append((n, H.shape)), sequential=sequential)
    names = [n for n, _ in seen]
    assert sorted(names) == sorted(find_linears(model)) and len(set(names)) == len(names)
    assert dict(seen)["encoder.layer.0.output.dense"] == (1536, 1536)


@pytest.mark.parametrize("sequential", [False, True])
def test_sequential_calibrates_on_the_processed_earlier_layers(sequential):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    calib = [torch.randn(16, 8)]

    def zero_layer(name, layer, X):
        if name == "2":
            seen.append(X)
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.zero_()

    seen = []
    for_each_layer(model, calib, zero_layer, stat="inputs", sequential=sequential)
    # after layer 0 is zeroed, layer 2 only ever sees zeros — if calibrated afterwards
    assert (seen[0] == 0).all() == sequential


def test_unused_layer_gets_none_and_empty_calib_is_refused():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    got = {}
    for_each_layer(WithUnused(), [torch.randn(2, 4)], lambda n, l, H: got.update({n: H}))
    assert got["unused"] is None and got["used"].shape == (4, 4)
    with pytest.raises(ValueError, match="^calib:"):
        for_each_layer(WithUnused(), [], lambda n, l, H: None)
    with pytest.raises(ValueError, match="^stat:"):
        for_each_layer(WithUnused(), [torch.randn(2, 4)], lambda n, l, H: None, stat="mean")
