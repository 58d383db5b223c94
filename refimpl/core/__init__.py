"""Shared core: quantizers, configuration, calibration plumbing and the technique registry."""
from refimpl.core.config import QuantConfig, check_bits
from refimpl.core.registry import Technique, all_techniques, get, register

__all__ = ["QuantConfig", "Technique", "all_techniques", "check_bits", "get", "register"]
