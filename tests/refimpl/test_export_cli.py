"""`python -m refimpl export` refuses an unrepresentable setting in one line, before loading any model."""
from __future__ import annotations

import pytest

from refimpl.__main__ import main


@pytest.mark.parametrize("argv, message", [
    (["rtn", "--bits", "3", "--group-size", "32", "--format", "gguf"], "bits: 3 has no GGUF type"),
    (["rtn", "--bits", "4", "--group-size", "16", "--format", "gguf"], "group_size=32"),
    (["rtn", "--bits", "8", "--group-size", "64", "--format", "gguf"], "sym=True"),
    (["rtn", "--bits", "12", "--format", "compressed-tensors"], "bits=8"),
], ids=["gguf-bits3", "gguf-g16", "gguf-w8-asym", "ct-bits12"])
def test_cli_refuses_before_loading(tmp_path, capsys, monkeypatch, argv, message):
    import refimpl.bench.tasks as tasks
    monkeypatch.setattr(tasks.SmolLM2Perplexity, "load", lambda self: pytest.fail("model loaded before refusal"))
    assert main(["export", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
