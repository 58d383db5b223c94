"""3.5 Data-free quantization: techniques that need no calibration data."""
