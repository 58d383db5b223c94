"""The Deploy page renders its numbers from benchmark records only, and says so when there are none."""
from __future__ import annotations

import json

from site_gen.site import deploy_page


def test_without_records_the_page_says_not_measured(tmp_path):
    text = deploy_page.page(tmp_path)
    assert "Q4_0" in text and "bits 2/3 (→ 4)" in text
    assert text.count("_Not measured yet") == 2


def test_records_render_as_rows_with_provenance(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    row = {"technique": "gptq", "bits": 4, "group_size": 64, "sym": True, "format": "gguf", "bytes": 98_000_000,
           "max_rel_weight_err": 4.7e-4, "ours": {"ppl": 41.25}, "exported": {"ppl": 41.26}}
    (results / "export_scale_rounding.json").write_text(json.dumps(
        {"rows": [row], "provenance": {"commit": "abcdef1234567", "date": "2026-11-30T16:00", "cpu": "EPYC"}}))
    text = deploy_page.page(tmp_path)
    assert "| gptq w4 g64 sym | gguf | 98.0 | 4.7e-04 | 41.250 | 41.260 |" in text
    assert "Measured abcdef1234, 2026-11-30, EPYC." in text
    assert text.count("_Not measured yet") == 1
