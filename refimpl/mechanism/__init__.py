"""3.2 Quantization mechanism: how weights are rounded and errors compensated (gptq)."""
