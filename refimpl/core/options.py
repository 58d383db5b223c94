"""One parser for technique options given as text (command line, matrix variants, records).

`coerce_option(name, value, default)` converts text to the type of the option's default
(bool, int, float, tuple of numbers); an option without a typed default (None) becomes None,
a number, a tuple of numbers, or stays text. Non-text values pass through unchanged, so Python
callers give typed values directly. Errors name the option.
"""
from __future__ import annotations


def parse_numbers(text: str, name: str):
    """"6" → 6, "0.5" → 0.5, "3,4,8" or "(3, 4, 8)" → (3, 4, 8); anything else is a ValueError naming `name`."""
    parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
    try:
        numbers = tuple(int(p) if p.lstrip("+-").isdigit() else float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{name}: expected a number or comma-separated numbers, got {text!r}") from None
    return numbers[0] if len(numbers) == 1 and "," not in text else numbers


def coerce_option(name: str, value, default=None):
    """`value` converted to the type of `default` when it is text (see the module docstring)."""
    if not isinstance(value, str):
        return value
    if isinstance(default, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"option {name}: expected a bool, got {value!r}")
    if default is None:
        if value.lower() == "none":
            return None
        try:
            return parse_numbers(value, name)
        except ValueError:
            return value
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            parsed = parse_numbers(value, name)
            return parsed if isinstance(parsed, tuple) else (parsed,)
    except ValueError:
        raise ValueError(f"option {name}: expected a {type(default).__name__}, got {value!r}") from None
    return value
