"""Baselines from the survey's basics (section 2): round-to-nearest, binary, ternary."""
