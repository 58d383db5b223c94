"""SmolLM2 as shipped: its Linear weights lie exactly on a GGUF Q4_1 grid (the task's caveat)."""
from __future__ import annotations

import pytest
import torch

import refimpl
from refimpl.bench import data
from refimpl.bench.tasks import get_task
from refimpl.core.calib import find_linears
from refimpl.core.quantizer import quantize_weight, to_groups

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    task = get_task("smollm2-ppl")
    return task, task.load()


def q4_1(W: torch.Tensor) -> torch.Tensor:
    """GGUF Q4_1 re-quantization, written from its definition: per 32 inputs w ≈ m + d·q,
    m = block min (a float, not an integer zero-point), d = (max − m)/15, q ∈ {0..15}."""
    G = to_groups(W, 32)
    m = G.amin(-1, keepdim=True)
    d = (G.amax(-1, keepdim=True) - m) / 15
    d = torch.where(d > 0, d, torch.ones_like(d))
    return (m + d * torch.clamp(torch.round((G - m) / d), 0, 15)).reshape(W.shape)


def _rel(W, W_hat):
    return ((W - W_hat).norm() / W.norm()).item()


def test_linear_weights_are_exactly_on_the_q4_1_grid(smollm2):
    _, model = smollm2
    layers = find_linears(model)
    assert len(layers) == 30 * 7
    for name, layer in layers.items():
        W = layer.weight.detach()
        assert torch.equal(q4_1(W), W), name
        # and the grid is really 4-bit: at most 16 distinct values per group of 32
        assert to_groups(W[:8], 32).unique(dim=-1).shape[-1] <= 32


def test_integer_zero_point_rtn_is_not_lossless_at_q4_1_setting(smollm2):
    """Pins the caveat's number: our RTN (integer zero-point) at w4 g32 asym does not land on
    the Q4_1 grid (relative weight error ≈ 8%), though it is far below per-channel 4-bit."""
    _, model = smollm2
    W = torch.cat([l.weight.detach().reshape(-1, 32) for l in find_linears(model).values()]).reshape(-1, 576)[:20000]
    err_g32 = _rel(W, quantize_weight(W, 4, 32, sym=False))
    err_pc = _rel(W, quantize_weight(W, 4, None, sym=False))
    assert 0.05 < err_g32 < 0.12
    assert err_g32 < 0.8 * err_pc


def test_eval_and_calibration_tokens(smollm2):
    task, _ = smollm2
    ev = task.eval_tokens()
    assert ev.shape == (16, 512)
    tempest = data.works()[data.HELDOUT]
    # each row is a contiguous stretch of The Tempest; the rows are disjoint and spread over the play
    spans = []
    for row in ev:
        text = task.tokenizer.decode(row)
        start = tempest.find(text)
        assert start >= 0 and tempest.count(text) == 1
        spans.append((start, start + len(text)))
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))
    assert spans[0][0] < len(tempest) // 10 and spans[-1][1] > len(tempest) * 9 // 10
    cal = task.calib(0, 16, 256)
    assert cal.shape == (16, 256) and cal.dtype == torch.long
    assert torch.equal(cal, task.calib(0, 16, 256)) and not torch.equal(cal, task.calib(1, 16, 256))
    # no calibration row of any seed the matrix runs shares a 48-character stretch with an eval row
    held = "\n".join(task.tokenizer.decode(row) for row in ev)
    for seed in task.seeds:
        for row in task.calib(seed, 16, 256):
            assert not data.shared_stretches(held, task.tokenizer.decode(row), 48)


def test_rtn_at_the_q4_1_setting_still_loses_accuracy(smollm2):
    """256 Tempest tokens: integer-zero-point RTN at w4 g32 raises the loss (not lossless, unlike
    the float-min Q4_1 rule), but much less than per-channel 4-bit RTN."""
    import copy
    task, model = smollm2
    row = task.eval_tokens()[:1, :256]

    def nll(m):
        with torch.no_grad():
            return m(input_ids=row, labels=row, use_cache=False).loss.item()
    base = nll(model)
    d_g32 = nll(refimpl.quantize(copy.deepcopy(model), "rtn", bits=4, group_size=32)) - base
    d_pc = nll(refimpl.quantize(copy.deepcopy(model), "rtn", bits=4)) - base
    assert 0.01 < d_g32 < d_pc
