"""core.hessian: the fast block-by-block Hessians are the ones layerwise.for_each_layer gathers
(float64 running means, one forward per sequence, full passes), in the same order, with less work."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from refimpl.core.calib import as_batches, find_linears
from refimpl.core.hessian import add_upper_gram, hessians, hessians_block_by_block, stack_batches
from refimpl.core.layerwise import for_each_layer
from _refimpl_helpers import tiny_llama


@pytest.fixture(scope="module")
def llama64():
    """A 2-block random Llama in float64 and 5 calibration sequences of 12 tokens."""
    ids = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(1))
    return tiny_llama().double(), ids


def test_upper_gram_and_mirror_give_xtx():
    X = torch.randn(300, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    G = torch.zeros(70, 70, dtype=torch.float64)
    add_upper_gram(G, X, chunk=32)  # chunks that do not divide 70
    assert torch.allclose(G.triu(), (X.T @ X).triu(), atol=1e-10)
    assert (G[32:, :32] == 0).all() and (G[64:, :64] == 0).all()   # below the diagonal blocks: not computed


def test_stacking_keeps_every_sequence_within_the_token_budget():
    rows = [torch.arange(i * 10, i * 10 + 10)[None] for i in range(7)]
    stacked = stack_batches(rows, max_tokens=30)
    assert [b.shape for b in stacked] == [(3, 10), (3, 10), (1, 10)]
    assert torch.equal(torch.cat(stacked), torch.cat(rows))
    dicts = [{"input_ids": r} for r in rows]
    assert stack_batches(dicts) is dicts                      # anything but token-id tensors: as given
    floats = [torch.randn(1, 4) for _ in range(3)]           # not token ids: never stacked
    assert stack_batches(floats) is floats
    ragged = [torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)]
    assert stack_batches(ragged) is ragged


def test_same_hessians_in_the_same_order_as_for_each_layer(llama64):
    """Same H as the straightforward path to 1e-10 relative (float64 model: only the summation order differs),
    for every Linear, visited in the same order, on inputs from the previously processed blocks."""
    model, ids = llama64

    def collect(into):
        def fn(name, layer, H):
            into.append((name, H.clone()))
            layer.weight.mul_(0.5)  # "quantize": the next block must see this block's new outputs
        return fn

    ref, fast = [], []
    for_each_layer(copy.deepcopy(model), as_batches(ids), collect(ref), stat="hessian")
    hessians_block_by_block(copy.deepcopy(model), as_batches(ids), collect(fast))
    assert [n for n, _ in fast] == [n for n, _ in ref] == list(find_linears(model))
    for (name, Hf), (_, Hr) in zip(fast, ref):
        assert ((Hf - Hr).norm() / Hr.norm()).item() < 1e-10, name


def test_two_passes_per_block_and_the_first_stops_at_the_last_linear_input(llama64):
    model, ids = copy.deepcopy(llama64[0]), llama64[1]
    calls = {"block": 0, "down_proj": 0}
    model.model.layers[1].register_forward_pre_hook(lambda m, a: calls.__setitem__("block", calls["block"] + 1))
    model.model.layers[1].mlp.down_proj.register_forward_hook(   # after the product: it ran
        lambda m, a, out: calls.__setitem__("down_proj", calls["down_proj"] + 1))
    hessians_block_by_block(model, as_batches(ids), lambda n, l, H: None)
    # 5 sequences stacked into one batch: block 1 runs twice, down_proj only in the second (full) pass
    assert calls == {"block": 2, "down_proj": 1}


def test_shared_inputs_share_one_hessian_and_unused_layers_get_none():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.unused = nn.Linear(6, 3), nn.Linear(6, 3), nn.Linear(3, 2), nn.Linear(6, 6)

        def forward(self, x):
            return self.c(self.a(x) + self.b(x))

    torch.manual_seed(0)
    net, xs = Net(), [torch.randn(4, 6) for _ in range(3)]
    H = hessians(lambda x: net(x), xs, find_linears(net))
    X = torch.cat(xs)
    assert torch.allclose(H["a"], 2 * X.T @ X / 12, atol=1e-5) and torch.equal(H["a"], H["b"])
    assert "unused" not in H
    got = {}
    hessians_block_by_block(net, xs, lambda n, l, h: got.update({n: h}))
    assert got["unused"] is None and torch.equal(got["a"], got["b"]) and torch.allclose(got["c"], H["c"])
    Y = torch.cat([net.a(x) + net.b(x) for x in xs]).detach()
    assert torch.allclose(got["c"], 2 * Y.T @ Y / 12, atol=1e-5)
