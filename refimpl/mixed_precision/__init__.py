"""3.3 Mixed precision: per-layer (or per-input) bit-widths under an average-bits budget."""
