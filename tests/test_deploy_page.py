"""The Deploy page renders its numbers from benchmark records only, and says so when there are none."""
from __future__ import annotations

import json

from site_gen.site import deploy_page


def test_without_records_the_page_says_not_measured(tmp_path):
    text = deploy_page.page(tmp_path)
    assert "Q4_0" in text and "bits 2/3 (→ 4)" in text
    assert text.count("_Not measured yet") == 3


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
    assert text.count("_Not measured yet") == 2


def _runtime_record():
    row = {"setting": "gptq-w4-g64-sym", "technique": "gptq", "bits": 4, "group_size": 64, "sym": True,
           "ggml_type": "Q4_0", "size_mb": 98.2, "load_s": 0.31, "prompt_tok_s": 412.0, "gen_tok_s": 61.5,
           "peak_rss_mb": 410.0, "ours": {"ppl": 41.25}, "file_ppl": {"ppl": 41.26},
           "runtime": {"f16": {"ppl": 41.30}, "f32": {"ppl": 41.29}}, "emulated": {"ppl": 41.28},
           "agreement": {"tolerance": 0.004, "runtime_vs_ours_signed": 0.0012, "within": True},
           "command": "python -m refimpl export gptq --task smollm2-ppl --bits 4 --group-size 64 --sym --format gguf"}
    base = {"setting": "float f32", "technique": None, "ggml_type": "F32", "size_mb": 540.0, "ours": {"ppl": 36.48},
            "runtime": {"f16": {"ppl": 36.49}}}
    return {"threads": 2, "rounds": 3, "rows": [row, base], "llama": {"llama_cpp_python": "0.3.36"},
            "noise_floor": 0.0021, "eval": "16 rows × 512 tokens",
            "load_average_1_5_15min": {"start": [3.2, 3, 3], "end": [5.1, 4, 3]},
            "provenance": {"git_commit": "abcdef1234567", "date": "2026-11-30T19:00", "cpu": "EPYC"}}


def test_runtime_record_renders_one_table_per_gguf_type_float_first(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "llama_cpp_runtime.json").write_text(json.dumps(_runtime_record()))
    text = deploy_page.page(tmp_path)
    assert r"### Q4\_0 \(4-bit symmetric, blocks of 32\)" in text and r"### F32 \(unquantized, float32\)" in text
    assert ("| gptq | w4 g64 sym | 98.2 | 0.31 | 412 | 61.5 | 410 | 41.250 | 41.260 | 41.280 | 41.300 | +0.12% "
            "| 0.40% | yes |") in text
    # a float file has no agreement entry: its cells say "not measured", they are not invented
    assert "| – | float f32 | 540.0 | – | – | – | – | 36.480 | – | – | 36.490 | – | – | – |" in text
    flat = " ".join(text.split())
    assert "noise floor of 0.21%" in flat and "within the tolerance in 1 of 1 files" in flat
    assert "llama-cpp-python 0.3.36 built from its PyPI sdist" in text and "load average 3.2–5.1" in text
    assert text.index("### F32") < text.index(r"### Q4\_0")


def test_technique_export_section_lists_its_files_with_the_command():
    record = _runtime_record()
    text = deploy_page.technique_exports("gptq", ("smollm2-ppl",), record, "../deploy.md")
    assert r"| Q4\_0 | w4 g64 sym | 98.2 | 61.5 | 41.250 | 41.300 | +0.12% | yes |" in text
    assert "```sh\npython -m refimpl export gptq --task smollm2-ppl" in text
    other = deploy_page.technique_exports("nf4", ("smollm2-ppl",), record, "../deploy.md")
    assert "No exported file" in other and "```sh\npython -m refimpl export nf4 --task smollm2-ppl" in other
    assert "not run on one here" in " ".join(deploy_page.technique_exports("lsq", ("digits-cnn",), None, "../deploy.md").split())


def test_torchao_record_shows_ratios_and_errors(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    rows = [{"name": "dense fp32", "dtype": "torch.float32", "linear_mb": 424.7, "ppl_row0": 41.78},
            {"name": "int8 weight-only (per row)", "dtype": "torch.float32", "linear_mb": 106.9, "prompt_vs_fp32": 0.9,
             "gen_vs_fp32": 0.946, "max_abs_logit_diff_vs_dequant": 9.3e-5, "ppl_row0": 41.64},
            {"name": "int4 plain_int32", "dtype": "torch.float32", "error": "NotImplementedError: no cpu | yet"}]
    (results / "torchao_cpu_kernels.json").write_text(json.dumps(
        {"torchao": "0.18.0", "threads": 1, "prompt_tokens": 128, "gen_tokens": 8, "rows": rows,
         "provenance": {"git_commit": "abc", "date": "2026-11-30", "cpu": "EPYC"}}))
    text = deploy_page.page(tmp_path)
    assert r"| int8 weight-only \(per row\) | float32 | 106.9 | 0.90× | 0.95× | 9.3e-05 | 41.64 |  |" in text
    assert "NotImplementedError: no cpu &#124; yet" in text   # a record's text is escaped, not a new cell
