"""Round-to-nearest (RTN): the baseline every other technique is measured against.

Paper: Nagel et al., "A White Paper on Neural Network Quantization" (arXiv 2106.08295), §2.
Taxonomy: baseline (the survey's basics, section 2).

Each weight group is mapped onto a uniform grid spanning its own min and max (or ±max|w|
when symmetric) and every weight is rounded to the nearest grid point:

    Ŵ = s · (clamp(round(W / s) + z, 0, 2^b − 1) − z),   s = (max W − min W) / (2^b − 1)

No calibration data, no search: whatever a technique gains over RTN at the same setting is
what its extra machinery buys. With `act_bits`, the inputs of every Linear are quantized
per token with the same min-max rule (the naive W·A baseline).
"""
from __future__ import annotations

import torch

from refimpl.core.act import quantize_linear_inputs
from refimpl.core.calib import map_weights
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import Claim, Deviation, register


@register(id="rtn", name="Round-to-nearest", subcategory="baseline", paper="nagel-white-paper",
          kind="ptq-weight-act", tasks=("smollm2-ppl", "minilm-layers", "digits-cnn"),
          deviations=(),
          claims=(
              Claim(text="Finer granularity lowers the error: groups of 64 beat one scale per output channel at 4 bits.",
                    task="smollm2-ppl", setting="w4-g64-asym", versus="rtn/w4-pc-asym", metric="ppl",
                    higher_is_better=False),
          ))
@torch.no_grad()
def rtn(model, cfg, calib):
    layers = map_weights(model, cfg.skip, lambda W: quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym))
    if cfg.act_bits is not None:
        quantize_linear_inputs(model, layers, cfg.act_bits)
    return model
