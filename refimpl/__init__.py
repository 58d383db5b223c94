"""Low-Bit Atlas reference implementations: one small, tested module per technique.

    import refimpl
    refimpl.quantize(model, "gptq", bits=4, group_size=64, calib=token_ids)
    refimpl.formats.quantize(x, "nf4", block_size=64)
"""
from refimpl import formats
from refimpl.api import quantize

__all__ = ["formats", "quantize"]
