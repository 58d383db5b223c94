"""Low-Bit Atlas site generator: load, validate, import, add, bench and render the knowledge base."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
