"""Empirical bias correction: remove the mean output shift that quantizing a layer's weights causes.

Paper: Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction" (DFQ, arXiv 1906.04721, ICCV 2019), §4.2 (the empirical
variant; the paper's data-free variant predicts E[x] from batch-norm statistics instead).
Taxonomy: 3.4.1 Bias.

Rounding errors ε = Ŵ − W are not zero-mean per output channel, and inputs x are not
zero-mean either, so a quantized layer's output is biased: E[Ŵx] − E[Wx] = ε · E[x].
The correction folds the negative of that shift into the layer's bias (a bias is created
when the layer has none):

    b ← b − (Ŵ − W) · E[x],      E[x] measured on calibration inputs

Weights are quantized with round-to-nearest. Layers are corrected one after another
(`for_each_layer(..., sequential=True)`), so E[x] of each layer is measured on the outputs
of the already quantized and corrected earlier layers. The correction only cancels the mean
error; the per-token error spread (and so most of the MSE) is left as it is. Calibration
batches should hold no padding tokens: they would enter E[x].
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.layerwise import for_each_layer
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import Claim, Deviation, register


def expected_shift(W: torch.Tensor, W_q: torch.Tensor, x_mean: torch.Tensor) -> torch.Tensor:
    """E[Ŵx] − E[Wx] = (Ŵ − W) · E[x]   `[out]`, computed in float64 (a difference of close numbers)."""
    return (W_q.to(torch.float64) - W.to(torch.float64)) @ x_mean.to(torch.float64)


def correct_bias(layer: nn.Linear, W_q: torch.Tensor, X: torch.Tensor | None) -> None:
    """Write Ŵ into `layer` and subtract the expected output shift from its bias (in place)."""
    W = layer.weight
    if X is not None:
        shift = expected_shift(W, W_q, X.mean(dim=0))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(W.shape[0], dtype=W.dtype, device=W.device))
        layer.bias.sub_(shift.to(layer.bias.dtype))
    W.copy_(W_q)


@register(id="bias_correction", name="Empirical bias correction", subcategory="3.4.1", paper="dfq",
          kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers", "digits-cnn"), needs_calib=True,
          deviations=(
              Deviation(what="Each layer's correction cancels only its own shift, (Ŵ − W)·E[x̂] on the inputs of the "
                             "quantized model; the paper's empirical variant compares with the float model's output "
                             "E[W x_fp], which also removes the shift inherited from earlier layers.",
                        why="Kept for the layer-wise calibration it shares with GPTQ and AdaRound; a float reference needs "
                            "a second pass over the float model.",
                        effect="Upstream mean errors survive; at 3 bits on SmolLM2 the correction ends worse than RTN."),
              Deviation(what="Weights rounded per group (g64) on the transformer tasks; the paper quantizes CNNs per tensor.",
                        why="The atlas' shared settings.",
                        effect="Smaller mean shifts to correct than in the paper's per-tensor setting."),
          ),
          claims=(
              Claim(text="Correcting the mean output shift of rounding beats plain RTN at W2A4.",
                    task="digits-cnn", setting="w2-pc-sym-a4", versus="rtn/w2-pc-sym-a4", metric="accuracy",
                    higher_is_better=True),
              Claim(text="Correcting the mean output shift of rounding beats plain RTN at 3-bit g64 on SmolLM2.",
                    task="smollm2-ppl", setting="w3-g64-asym", versus="rtn/w3-g64-asym", metric="ppl",
                    higher_is_better=False,
                    cause="Own-shift correction measured on quantized inputs: upstream shifts are not removed, and on "
                          "causal LMs the calibration mean of a token's input is a poor estimate for held-out text."),
          ))
@torch.no_grad()
def bias_correction(model, cfg, calib):
    def quantize_layer(name, layer, X):
        # X None: the layer never ran on the calibration data, so there is no shift to measure
        correct_bias(layer, quantize_weight(layer.weight, cfg.bits, cfg.group_size, cfg.sym), X)

    for_each_layer(model, calib, quantize_layer, skip=cfg.skip, stat="inputs", sequential=True)
    return model
