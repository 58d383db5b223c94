"""Low-Bit Atlas reference implementations: one small, tested module per technique.

    import refimpl
    refimpl.quantize(model, "gptq", bits=4, group_size=64, calib=token_ids)
    refimpl.formats.quantize(x, "nf4", block_size=64)
    refimpl.export(model, "gguf", "model.gguf")
"""
from refimpl import formats
from refimpl.api import quantize
from refimpl.deploy import export

__all__ = ["export", "formats", "quantize"]
