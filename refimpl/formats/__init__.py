"""Number formats of the survey's section 3.6: integers, NF4, FP8/FP4 and MX, plus the
format techniques [fp_formats], [nf4] and [fixed_point].

    from refimpl.formats import quantize, FORMATS
    x_hat = quantize(x, "nf4", block_size=64, double_quant=True)
"""
from refimpl.formats.api import FORMATS, format_bits, quantize

__all__ = ["FORMATS", "format_bits", "quantize"]
