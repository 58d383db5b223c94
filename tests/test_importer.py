"""Tests for `site_gen import-awesome` (site_gen.importer) and the classifier (site_gen.classify).

Small fixture lists are written into tmp_path by each test; the last tests run the real
import of /work/shared-style data only when those files exist.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from site_gen import ROOT
from site_gen.classify import classify_title, survey_index, survey_match, tags_for
from site_gen.importer import main, title_key
from site_gen.load import load_taxonomy, subcategories

TAXONOMY = load_taxonomy()
INDEX = survey_index(TAXONOMY)
SHARED = Path("/work/shared/data")
REAL_SOURCES = [SHARED / "awesome-list-2020-2026.json", SHARED / "htqin-awesome-list-2015-2024.json"]


def rec(title, url, venue="ICML", year=2023, code=None, **extra):
    """One awesome-list record (awesome-list-2020-2026 shape)."""
    return {"list_year": year, "venue": venue, "venue_year": year, "title": title, "url": url, "code": code, **extra}


def write_list(tmp_path: Path, name: str, records: list[dict]) -> Path:
    path = tmp_path / "src" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def run(papers: Path, *sources: Path) -> int:
    return main([*map(str, sources), "--papers", str(papers)])


def entries(papers: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(papers.glob("*/*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert path.stem == data["id"] and path.parent.name == str(data["year"])
        out[data["id"]] = data
    return out


def snapshot(papers: Path) -> dict[str, bytes]:
    return {str(p.relative_to(papers)): p.read_bytes() for p in sorted(papers.rglob("*.yaml"))}


# ---------------------------------------------------------------- deduplication
def test_duplicates_by_normalised_title_merge_and_keep_both_sources(tmp_path):
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("SA-BNN: State-\xadAware Binary Neural Network", "https://example.org/sabnn", venue="AAAI", year=2021),
    ])
    b = write_list(tmp_path, "htqin-awesome-list-2015-2024", [
        {"list_year": 2021, "venue": "AAAI", "title": "SA-BNN: State-Aware  binary neural network",
         "url": "https://example.org/sabnn", "code": None, "keywords": ["bnn"]},
    ])
    assert run(tmp_path / "papers", a, b) == 0
    got = entries(tmp_path / "papers")
    assert list(got) == ["sa-bnn"]
    e = got["sa-bnn"]
    assert e["title"] == "SA-BNN: State-Aware Binary Neural Network"      # soft hyphen gone
    assert e["sources"] == ["awesome-list-2020-2026", "htqin-awesome-list-2015-2024"]
    assert "binary" in e["tags"]                                          # htqin keyword bnn


def test_duplicates_by_arxiv_id_merge_even_when_retitled(tmp_path):
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("OWQ: Outlier-Aware Weight Quantization for Efficient Fine-Tuning and Inference of Large Language Models",
            "https://arxiv.org/pdf/2306.02272", venue="AAAI", year=2024),
        rec("OWQ: Lessons learned from activation outliers for weight quantization in large language models",
            "https://arxiv.org/abs/2306.02272v3", venue="arXiv", year=2023),
    ])
    assert run(tmp_path / "papers", a) == 0
    got = entries(tmp_path / "papers")
    assert list(got) == ["owq"]
    assert got["owq"]["venue"] == "AAAI"                     # the published record wins
    assert got["owq"]["arxiv"] == "2306.02272"
    assert got["owq"]["url"] == "https://arxiv.org/abs/2306.02272"
    assert "Lessons learned" in got["owq"]["notes"]


def test_two_papers_sharing_a_method_name_stay_apart(tmp_path):
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("Q-ViT: Accurate and Fully Quantized Low-bit Vision Transformer", "https://arxiv.org/abs/2210.06707",
            venue="NeurIPS", year=2022),
        rec("Q-ViT: Fully Differentiable Quantization for Vision Transformer", "https://arxiv.org/abs/2201.07703",
            venue="arXiv", year=2022),
    ])
    assert run(tmp_path / "papers", a) == 0
    got = entries(tmp_path / "papers")
    assert len(got) == 2
    survey = [e for e in got.values() if e["classified_by"] == "survey"]
    assert [e["arxiv"] for e in survey] == ["2210.06707"]   # only the survey's Q-ViT is matched


# ---------------------------------------------------------------- defect fixing
def test_defects_are_fixed_or_flagged(tmp_path):
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        # a 2024 arXiv paper listed under 2020 at ICML: year corrected, venue flagged
        rec("Towards Accurate Post-training Quantization for Reparameterized Models",
            "https://arxiv.org/pdf/2402.16121v1", venue="ICML", year=2020),
        # wrong arXiv link (another listed paper's id); the other list has the right one
        rec("Extreme Compression of Large Language Models via Additive Quantization",
            "https://arxiv.org/pdf/2402.04396", year=2024),
        rec("QuIP#: Even Better LLM Quantization with Hadamard Incoherence and Lattice Codebooks",
            "https://arxiv.org/pdf/2402.04396", year=2024, code="https://github.com/Cornell-RelaxML/quip-sharp"),
        # code link named after another listed paper
        rec("OMPQ: Orthogonal Mixed Precision Quantization", "https://arxiv.org/abs/2109.07865", venue="AAAI",
            code="https://github.com/MAC-AutoML/OMPQ"),
        rec("Rethinking Data-Free Quantization as a Zero-Sum Game", "https://arxiv.org/abs/2302.09572", venue="AAAI",
            code="https://github.com/MAC-AutoML/OMPQ"),
        # no URL anywhere, but a hand-checked one is known
        rec("Allowing Oscillation Quantization: Overcoming Solution Space Limitation in Low Bit-Width Quantization",
            None, venue="ICCV", year=2025),
    ])
    b = write_list(tmp_path, "htqin-awesome-list-2015-2024", [
        {"list_year": 2024, "venue": "arXiv", "title": "Extreme Compression of Large Language Models via Additive Quantization",
         "url": "https://arxiv.org/abs/2401.06118", "code": None, "keywords": []},
        {"list_year": 2021, "venue": "AAAI", "title": "OPQ: Compressing Deep Neural Networks with One-shot Pruning-Quantization",
         "url": "https://www.google.com/url?sa=t&url=https%3A%2F%2Fwww.aaai.org%2FAAAI21Papers%2FAAAI-1054.HuP.pdf&usg=x",
         "code": None, "keywords": ["qnn"]},
        {"list_year": 2019, "venue": "CoRR", "title": "Some Preprint", "url": "https://arxiv.org/abs/2001.00001",
         "code": None, "keywords": []},
    ])
    assert run(tmp_path / "papers", a, b) == 0
    got = {e["title"]: e for e in entries(tmp_path / "papers").values()}
    rep = got["Towards Accurate Post-training Quantization for Reparameterized Models"]
    assert rep["year"] == 2024 and any("venue unverified" in f for f in rep["flags"])
    aqlm = got["Extreme Compression of Large Language Models via Additive Quantization"]
    assert aqlm["arxiv"] == "2401.06118"
    assert got["QuIP#: Even Better LLM Quantization with Hadamard Incoherence and Lattice Codebooks"]["arxiv"] == "2402.04396"
    assert got["OMPQ: Orthogonal Mixed Precision Quantization"]["code"] == "https://github.com/MAC-AutoML/OMPQ"
    assert "code" not in got["Rethinking Data-Free Quantization as a Zero-Sum Game"]
    assert got["Allowing Oscillation Quantization: Overcoming Solution Space Limitation in Low Bit-Width "
               "Quantization"]["url"].startswith("https://iccv.thecvf.com/")
    assert got["OPQ: Compressing Deep Neural Networks with One-shot Pruning-Quantization"]["url"] == \
        "https://www.aaai.org/AAAI21Papers/AAAI-1054.HuP.pdf"
    pre = got["Some Preprint"]
    assert pre["venue"] == "arXiv" and pre["year"] == 2020          # CoRR -> arXiv; year from the id


def test_missing_url_without_known_fix_fails_and_writes_nothing(tmp_path, capsys):
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
            "https://arxiv.org/abs/2210.17323"),
        rec("A Paper Nobody Can Find", None),
    ])
    assert run(tmp_path / "papers", a) == 1
    err = capsys.readouterr().err
    assert "A Paper Nobody Can Find" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "papers").rglob("*.yaml"))


@pytest.mark.parametrize("content, needle", [
    ("{\"not\": \"a list\"}", "top level must be a JSON list"),
    ("[{\"list_year\": 2020, \"venue\": \"ICML\", \"title\": \"\", \"url\": null, \"code\": null}]", "field 'title'"),
    ("[{\"list_year\": \"2020\", \"venue\": \"ICML\", \"title\": \"X\", \"url\": null, \"code\": null}]", "field 'list_year'"),
    ("[1, 2", "not valid UTF-8 JSON"),
], ids=["not-a-list", "empty-title", "string-year", "truncated"])
def test_bad_source_file_is_one_line_error(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    assert run(tmp_path / "papers", path) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- merging and idempotence
def test_curated_entry_keeps_its_fields_and_gains_sources(tmp_path):
    papers = tmp_path / "papers"
    (papers / "2023").mkdir(parents=True)
    curated = {"id": "gptq", "title": "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
               "year": 2023, "venue": "ICLR", "url": "https://arxiv.org/abs/2210.17323", "arxiv": "2210.17323",
               "subcategories": ["3.2.3"], "classified_by": "curated", "refimpl": ["gptq"], "sources": ["curated"]}
    (papers / "2023" / "gptq.yaml").write_text(yaml.safe_dump(curated, sort_keys=False), encoding="utf-8")
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("GPTQ: Accurate Post-training Quantization For Generative Pre-trained Transformers",
            "https://openreview.net/forum?id=tcbBPnfwxS", venue="ICLR", code="https://github.com/IST-DASLab/gptq"),
    ])
    assert run(papers, a) == 0
    got = entries(papers)
    assert list(got) == ["gptq"]
    e = got["gptq"]
    assert e["classified_by"] == "curated" and e["refimpl"] == ["gptq"] and e["url"] == curated["url"]
    assert e["sources"] == ["awesome-list-2020-2026", "curated"]
    assert e["code"] == "https://github.com/IST-DASLab/gptq"     # missing optional field filled


def test_import_twice_gives_identical_bytes(tmp_path):
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models",
            "https://arxiv.org/abs/2211.10438", code="https://github.com/mit-han-lab/smoothquant?tab=readme-ov-file"),
        rec("MagR: Weight Magnitude Reduction for Enhancing Post-Training Quantization",
            "https://arxiv.org/abs/2406.00800", venue="NeurIPS", year=2024, code="https://github.com/AozhongZhang/MagR"),
        rec("MagR: Weight Magnitude Reduction for Enhancing Post-Training Quantization",
            "https://arxiv.org/abs/2406.00800", venue="NeurIPS", year=2024, code="https://github.com/aozhongzhang/magr"),
        rec("Learned Step Size Quantization", "https://arxiv.org/abs/1902.08153", venue="ICLR", year=2020),
    ])
    papers = tmp_path / "papers"
    assert run(papers, a) == 0
    first = snapshot(papers)
    assert run(papers, a) == 0
    assert snapshot(papers) == first
    assert entries(papers)["smoothquant"]["code"] == "https://github.com/mit-han-lab/smoothquant"


# ---------------------------------------------------------------- classification
@pytest.mark.parametrize("title, method, subs", [
    ("GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", "GPTQ", ["3.2.3"]),
    ("HAWQV3: Dyadic Neural Network Quantization", "HAWQ-V3", ["3.3.3"]),
    ("Q-Diffusion: Quantizing Diffusion Models", "Q-Diffusion", ["3.7.2", "3.7.3"]),
    ("Up or Down? Adaptive Rounding for Post-Training Quantization", "AdaRound", ["3.4.4"]),
    ("Loftq: Lora-fine-tuning-aware quantization for large language models", "LoftQ", ["3.6.3"]),
    ("SQuant: On-the-Fly Data-Free Quantization via Diagonal Hessian Approximation", "SQuant", ["3.5.1"]),
], ids=["gptq", "hawqv3-spelling", "two-boxes", "full-title", "case", "squant"])
def test_survey_match(title, method, subs):
    assert survey_match(title, INDEX) == (method, subs)


@pytest.mark.parametrize("title", [
    "S-Quant: Rethinking Weight Quantization with Seed-Based Generation",     # not SQuant
    "Q-ViT: Fully Differentiable Quantization for Vision Transformer",       # not the survey's Q-ViT
    "A2Q: Accumulator-Aware Quantization with Guaranteed Overflow Avoidance",  # not the GNN A2Q
    "Beyond GPTQ and AWQ: a study",                                         # names in the body only
], ids=["s-quant", "other-q-vit", "other-a2q", "body-mention"])
def test_survey_match_refuses_lookalikes(title):
    assert survey_match(title, INDEX) is None


@pytest.mark.parametrize("title, sub, rule", [
    ("Gradient-Aligned Calibration for Post-Training Quantization of Diffusion Models", "3.7.2", "dm-calibration"),
    ("Data-Free Quantization via Pseudo-label Filtering", "3.5.2", "df-generation"),
    ("FP8-LM: Training FP8 Large Language Models", "3.6.1", "fmt-float"),
    ("HAQ: Hardware-Aware Automated Quantization with Mixed Precision", "3.3.3", "mp-search"),
    ("Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization", "3.2.1", "oscillation"),
    ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", "3.4.3", "outlier"),
    ("QKD: Quantization-aware Knowledge Distillation", "3.2.2", "loss"),
    ("The Geometry of LLM Quantization: GPTQ as Babai's Nearest Plane Algorithm", "3.8", "fallback"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 16 else None)
def test_keyword_rules(title, sub, rule):
    assert classify_title(title) == (sub, rule)


def test_tags():
    assert tags_for("BiLLM: Pushing the Limit of Post-Training Quantization for LLMs") == ["llm", "ptq"]
    assert tags_for("XNOR Neural Engine: A Hardware Accelerator IP for 21.6-fJ/op Binary Neural Network Inference",
                    ["bnn", "hardware"]) == ["binary", "hardware"]
    assert "4-bit" in tags_for("QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs")


# ---------------------------------------------------------------- the real lists
@pytest.mark.skipif(not all(p.exists() for p in REAL_SOURCES), reason="shared source lists not present")
def test_real_import_is_idempotent_and_meets_classification_limits(tmp_path):
    papers = tmp_path / "papers"
    assert run(papers, *REAL_SOURCES) == 0
    first = snapshot(papers)
    assert run(papers, *REAL_SOURCES) == 0
    assert snapshot(papers) == first
    got = entries(papers)
    keys = [title_key(e["title"]) for e in got.values()]
    assert len(keys) == len(set(keys))
    others = sum(1 for e in got.values() if e["subcategories"] == ["3.8"])
    assert others <= 0.25 * len(got)
    used = {s for e in got.values() for s in e["subcategories"]}
    assert used == {s["id"] for s in subcategories(TAXONOMY)}


def test_committed_papers_meet_classification_limits():
    papers = ROOT / "papers"
    got = entries(papers)
    if not got:
        pytest.skip("papers/ not populated")
    others = sum(1 for e in got.values() if e["subcategories"] == ["3.8"])
    assert others <= 0.25 * len(got)
    assert {s for e in got.values() for s in e["subcategories"]} == {s["id"] for s in subcategories(TAXONOMY)}


def test_earlier_import_of_a_now_curated_paper_is_superseded(tmp_path):
    papers = tmp_path / "papers"
    a = write_list(tmp_path, "awesome-list-2020-2026", [
        rec("Scalable Methods for 8-bit Training of Neural Networks", "https://example.org/8bit", venue="NeurIPS", year=2018),
    ])
    assert run(papers, a) == 0
    assert list(entries(papers)) == ["scalable-methods-8-bit"]
    curated = {"id": "scalable-8-bit-training", "title": "Scalable Methods for 8-bit Training of Neural Networks",
               "year": 2018, "venue": "NeurIPS", "url": "https://arxiv.org/abs/1805.11046", "arxiv": "1805.11046",
               "subcategories": ["3.8"], "classified_by": "curated", "sources": ["curated"]}
    (papers / "2018" / "scalable-8-bit-training.yaml").write_text(yaml.safe_dump(curated), encoding="utf-8")
    assert run(papers, a) == 0
    got = entries(papers)
    assert list(got) == ["scalable-8-bit-training"]
    assert got["scalable-8-bit-training"]["sources"] == ["awesome-list-2020-2026", "curated"]
