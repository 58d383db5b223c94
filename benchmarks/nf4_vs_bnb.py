"""NF4: ours (refimpl.formats) vs bitsandbytes on CPU, on every Linear weight of SmolLM2-135M.

Blocks of 64, with and without double quantization of the absmax scales (QLoRA's DQ:
8-bit scales in blocks of 256). Checks bit-exact agreement of the dequantized weights
(torch.equal per layer) and reports the time of each (quantize + dequantize, all layers).

    .venv/bin/python benchmarks/nf4_vs_bnb.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import Timer, smollm2, write  # noqa: E402

from refimpl.bench.records import package_version  # noqa: E402
from refimpl.core.calib import find_linears  # noqa: E402
from refimpl.formats import quantize  # noqa: E402

BLOCK = 64


def bnb_nf4(W: torch.Tensor, double_quant: bool) -> torch.Tensor:
    import bitsandbytes.functional as F
    q, state = F.quantize_4bit(W, blocksize=BLOCK, quant_type="nf4", compress_statistics=double_quant)
    return F.dequantize_4bit(q, state).reshape(W.shape)


def main() -> int:
    _, fp = smollm2()
    weights = {n: l.weight.detach().contiguous() for n, l in find_linears(fp).items()}
    body = {"setup": {"block_size": BLOCK, "layers": len(weights), "bitsandbytes": package_version("bitsandbytes"),
                      "threads": torch.get_num_threads()}, "by_mode": {}}
    for dq in (False, True):
        ours, peer = {}, {}
        with Timer() as t_ours:
            for n, W in weights.items():
                ours[n] = quantize(W, "nf4", block_size=BLOCK, double_quant=dq)
        with Timer() as t_peer:
            for n, W in weights.items():
                peer[n] = bnb_nf4(W, dq)
        mismatched = [n for n in weights if not torch.equal(ours[n], peer[n])]
        worst = max(((ours[n] - peer[n]).abs().max().item() for n in weights), default=0.0)
        err = lambda d: (sum((weights[n] - d[n]).pow(2).sum().item() for n in weights)  # noqa: E731
                         / sum(W.pow(2).sum().item() for W in weights.values())) ** 0.5
        body["by_mode"]["double_quant" if dq else "plain"] = {
            "bit_exact_layers": len(weights) - len(mismatched), "mismatched_layers": mismatched[:10],
            "max_abs_diff": worst, "weight_rel_err_ours": err(ours), "weight_rel_err_bnb": err(peer),
            "seconds_ours": round(t_ours.s, 3), "seconds_bnb": round(t_peer.s, 3),
            "time_ratio_ours_over_peer": round(t_ours.s / t_peer.s, 3)}
    path = write("nf4_vs_bnb", body, technique="nf4")
    print(json.dumps(body, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
