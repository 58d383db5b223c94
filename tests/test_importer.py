"""Tests for `site_gen import-awesome` (site_gen.kb.importer) and the keyword hints (site_gen.kb.classify).

Small fixture lists are written into tmp_path by each test; the last test reads the real
lists in /work/shared/data only when they exist. Nothing is ever filed by keyword: the queue
lists candidates, and only a reader's decisions file writes entries.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from site_gen.kb.classify import suggest_subcategory, survey_index, survey_match, tags_for
from site_gen.kb.importer import main
from site_gen.kb.load import dump_paper, load_taxonomy

TAXONOMY = load_taxonomy()
INDEX = survey_index(TAXONOMY)
SHARED = Path("/work/shared/data")
NEW_LISTS = [SHARED / f"{n}.json" for n in (
    "efficient-ml-awesome-2026-05-11", "pprp-awesome-llm-quantization-2026-04-20",
    "zhen-dong-awesome-quantization-papers-2024-11-24",
    "zhen-dong-awesome-quantization-papers-legacy-joint-table-2024-11-24")]
SOURCE = "efficient-ml-awesome-2026-05-11"


def rec(title, url=None, arxiv=None, line=1, venue="ICML 2023", year=2023, code=None):
    """One record in the shape of the new lists (source, commit, file, line, ...)."""
    return {"source": "owner/list", "commit": "0123456789abcdef0123", "file": "README.md", "line": line,
            "section": "Papers", "title": title, "url": url, "code": code, "venue": venue, "year": year,
            "arxiv": arxiv, "kb_match": {"by": "title", "id": "not-trusted"}}


def write_list(tmp_path: Path, name: str, records: list[dict]) -> Path:
    path = tmp_path / "src" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    """A knowledge base root: the real taxonomy (with the test venues) and one paper (GPTQ)."""
    from test_check import GOOD, taxonomy_text
    (tmp_path / "taxonomy.yaml").write_text(taxonomy_text(), encoding="utf-8")
    (tmp_path / "papers" / "2023").mkdir(parents=True)
    (tmp_path / "papers" / "2023" / "gptq.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "papers" / "removed.yaml").write_text("[]\n", encoding="utf-8")
    return tmp_path


def queue(kb: Path, *sources: Path) -> list[dict]:
    """Run `--queue` and return the candidates."""
    out = kb / "queue.yaml"
    assert main([*map(str, sources), "--queue", str(out), "--papers", str(kb / "papers"),
                 "--taxonomy", str(kb / "taxonomy.yaml")]) == 0
    return yaml.safe_load(out.read_text(encoding="utf-8"))


def decide(kb: Path, decisions: list[dict], *sources: Path) -> int:
    path = kb / "decisions.yaml"
    path.write_text(yaml.safe_dump(decisions, sort_keys=False), encoding="utf-8")
    return main([*map(str, sources), "--decisions", str(path), "--papers", str(kb / "papers"),
                 "--taxonomy", str(kb / "taxonomy.yaml")])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "papers").rglob("*.yaml"))}


SMOOTH = "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models"
HASH = "Deep Hashing with Binary Codes for Image Retrieval"


def smooth_entry(**extra) -> dict:
    entry = {"id": "smoothquant", "title": SMOOTH, "authors": ["A. Author"], "year": 2023, "venue": "ICML",
             "url": "https://arxiv.org/abs/2211.10438", "arxiv": "2211.10438", "subcategories": ["3.4.3"],
             "why": "migrates activation outliers into the weights with a per-channel scale → 3.4.3"}
    return entry | extra


# ---------------------------------------------------------------- the queue
def test_queue_dedups_by_arxiv_and_title_within_and_between_lists_and_skips_known_papers(kb, tmp_path):
    a = write_list(tmp_path, SOURCE, [
        rec(SMOOTH, "https://arxiv.org/abs/2211.10438", line=10),
        rec("SmoothQuant: accurate and efficient post-training quantization for LLMs (v2)",
            "https://arxiv.org/pdf/2211.10438v3.pdf", line=11),                   # same arXiv id, other title
        rec("GPTQ: Accurate Post-training Quantization for Generative Pre-trained Transformers",
            "https://openreview.net/forum?id=x", line=12),                        # already in papers/ (title)
        rec("Some retitled GPTQ", "https://arxiv.org/abs/2210.17323", line=13),  # already in papers/ (arXiv id)
    ])
    b = write_list(tmp_path, "pprp-awesome-llm-quantization-2026-04-20", [
        rec("smoothquant -- ACCURATE and efficient post training quantization for large language models",
            "https://example.org/sq", line=5),                                  # same normalised title
        rec(HASH, "https://example.org/hash", line=6),
    ])
    items = queue(kb, a, b)
    assert [i["title"] for i in items] == [HASH, SMOOTH]
    sq = items[1]
    assert sq["key"] == "2211.10438" and sq["arxiv"] == "2211.10438"
    assert sq["sources"] == ["efficient-ml-awesome-2026-05-11", "pprp-awesome-llm-quantization-2026-04-20"]
    assert sq["where"] == ["owner/list@0123456789ab README.md:10 (Papers)", "owner/list@0123456789ab README.md:11 (Papers)",
                           "owner/list@0123456789ab README.md:5 (Papers)"]
    assert "subcategories" not in sq and "kb_match" not in json.dumps(items)   # nothing filed, guesses ignored


def test_queue_is_idempotent(kb, tmp_path):
    a = write_list(tmp_path, SOURCE, [rec(SMOOTH, "https://arxiv.org/abs/2211.10438"), rec(HASH, "https://example.org/h")])
    queue(kb, a)
    first = (kb / "queue.yaml").read_bytes()
    queue(kb, a)
    assert (kb / "queue.yaml").read_bytes() == first


def test_survey_figure_method_is_noted_but_not_filed(kb, tmp_path):
    a = write_list(tmp_path, SOURCE, [rec("QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs",
                                          "https://arxiv.org/abs/2404.00456")])
    [item] = queue(kb, a)
    assert item["survey_files_it"] == {"method": "QuaRot", "subcategories": ["3.4.3"]}
    assert item["suggested_id"] == "quarot"


# ---------------------------------------------------------------- decisions
def test_decisions_file_and_skip_then_nothing_reappears_and_rerun_changes_nothing(kb, tmp_path):
    a = write_list(tmp_path, SOURCE, [rec(SMOOTH, "https://arxiv.org/abs/2211.10438"), rec(HASH, "https://example.org/h")])
    keys = {i["title"]: i["key"] for i in queue(kb, a)}
    decisions = [{"key": keys[SMOOTH], "entry": smooth_entry()},
                 {"key": keys[HASH], "skip": "deep hashing for retrieval, not quantization of a network"}]
    assert decide(kb, decisions, a) == 0
    written = yaml.safe_load((kb / "papers" / "2023" / "smoothquant.yaml").read_text(encoding="utf-8"))
    assert written["classified_by"] == "curated" and written["sources"] == [SOURCE]
    removed = yaml.safe_load((kb / "papers" / "removed.yaml").read_text(encoding="utf-8"))
    assert removed == [{"id": "deep-hashing-binary-codes", "title": HASH, "url": "https://example.org/h",
                        "reason": "deep hashing for retrieval, not quantization of a network"}]
    assert queue(kb, a) == []                   # filed and skipped papers never come back
    before = snapshot(kb)
    # a later skip is appended: the reviewer's header and earlier items keep their text
    header = "# reviewed by hand\n" + (kb / "papers" / "removed.yaml").read_text(encoding="utf-8")
    (kb / "papers" / "removed.yaml").write_text(header, encoding="utf-8")
    b = write_list(tmp_path, "other-list", [rec("Vector Quantised Image Tokens", "https://example.org/v")])
    [item] = queue(kb, b)
    assert decide(kb, [{"key": item["key"], "skip": "image tokenizer, not a quantized network"}], b) == 0
    text = (kb / "papers" / "removed.yaml").read_text(encoding="utf-8")
    assert text.startswith(header) and len(yaml.safe_load(text)) == 2
    (kb / "papers" / "removed.yaml").write_text(header, encoding="utf-8")
    before = snapshot(kb)
    assert decide(kb, decisions, a) == 0        # applying the same decisions again is a no-op
    assert snapshot(kb) == before


def test_a_removed_paper_is_not_queued_by_title_arxiv_or_id(kb, tmp_path):
    (kb / "papers" / "removed.yaml").write_text(yaml.safe_dump([
        {"id": "old", "title": "Quantization of Control Inputs", "url": "https://example.org/c", "reason": "control"},
        {"id": "other", "title": "Another title", "url": "https://arxiv.org/abs/2101.00001", "reason": "off-topic"},
        {"id": "deep-hashing-binary-codes", "title": "x", "url": "https://example.org/x", "reason": "hashing"},
    ]), encoding="utf-8")
    a = write_list(tmp_path, SOURCE, [
        rec("Quantization of control inputs", "https://example.org/other"),       # normalised title
        rec("Renamed", "https://example.org/r", arxiv="2101.00001"),             # arXiv id
        rec(HASH, "https://example.org/h"),                                      # the id it would get
    ])
    assert queue(kb, a) == []


def test_a_bad_filing_writes_nothing(kb, tmp_path, capsys):
    a = write_list(tmp_path, SOURCE, [rec(SMOOTH, "https://arxiv.org/abs/2211.10438"), rec(HASH, "https://example.org/h")])
    keys = {i["title"]: i["key"] for i in queue(kb, a)}
    decisions = [{"key": keys[HASH], "skip": "hashing"},
                 {"key": keys[SMOOTH], "entry": smooth_entry(why=None, subcategories=["9.9"])}]
    before = snapshot(kb)
    assert decide(kb, decisions, a) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err and "9.9" in err and "why" in err
    assert snapshot(kb) == before


@pytest.mark.parametrize("decisions, needle", [
    ({"key": "x"}, "must be a YAML list"),
    ([{"key": "x", "entry": {}, "skip": "y"}], "exactly one of"),
    ([{"key": "x", "skip": " "}], "one-line reason"),
    ([{"key": "x", "file": {}}], "must be a mapping with `key`"),
], ids=["not-a-list", "both", "blank-skip", "unknown-key"])
def test_bad_decisions_are_one_line_errors(kb, tmp_path, capsys, decisions, needle):
    a = write_list(tmp_path, SOURCE, [rec(HASH, "https://example.org/h")])
    assert decide(kb, decisions, a) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("content, needle", [
    ("{\"not\": \"a list\"}", "top level must be a JSON list"),
    ("[{\"title\": \"\", \"venue\": \"ICML\"}]", "field 'title'"),
    ("[{\"title\": \"X\", \"year\": \"2020\"}]", "field 'year'"),
    ("[1, 2", "not valid UTF-8 JSON"),
], ids=["not-a-list", "empty-title", "string-year", "truncated"])
def test_bad_source_file_is_one_line_error(kb, tmp_path, capsys, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    assert main([str(path), "--queue", str(kb / "q.yaml"), "--papers", str(kb / "papers")]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- survey match and keyword hints
@pytest.mark.parametrize("title, method, subs", [
    ("GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", "GPTQ", ["3.2.3"]),
    ("HAWQV3: Dyadic Neural Network Quantization", "HAWQ-V3", ["3.3.3"]),
    ("Q-Diffusion: Quantizing Diffusion Models", "Q-Diffusion", ["3.7.2", "3.7.3"]),
    ("Up or Down? Adaptive Rounding for Post-Training Quantization", "AdaRound", ["3.4.4"]),
    ("Loftq: Lora-fine-tuning-aware quantization for large language models", "LoftQ", ["3.6.3"]),
    ("SQuant: On-the-Fly Data-Free Quantization via Diagonal Hessian Approximation", "SQuant", ["3.5.1"]),
    ("Fine-grained Data Distribution Alignment for Post-Training Quantization", "FDDA", ["3.3.4"]),
    ("Stochastic Precision Ensemble: Self-Knowledge Distillation for Quantized Deep Neural Networks", "SPEQ", ["3.8"]),
    ("Post-training Quantization on Diffusion Models", "PTQ4DM", ["3.3.1", "3.7.2"]),
], ids=["gptq", "hawqv3-spelling", "two-boxes", "full-title", "case", "squant", "fdda", "speq", "ptq4dm-two-boxes"])
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
    ("Deep Learning with Posits", "3.6.1", "fmt-float"),
    ("A Dynamic Precision Approach to Quantization", "3.3.4", "mp-dynamic"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 16 else None)
def test_keyword_hints(title, sub, rule):
    hint = suggest_subcategory(title)
    assert hint is not None and (hint[0], hint[1].name) == (sub, rule)


# Real titles from papers/ that the old rules filed wrongly (issue 10): each false hint is gone.
@pytest.mark.parametrize("title, wrong", [
    ("Training Binary Weight Networks via Semi-Binary Decomposition", "3.6.1"),        # posit in decomposition
    ("Position-based Scaled Gradient for Model Quantization and Pruning", "3.6.1"),     # posit in position
    ("Incremental Network Quantization: Towards Lossless CNNs with Low-Precision Weights", "3.2.2"),  # INQ
    ("SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight Compression", "3.2.2"),
    ("Understanding Learning Dynamics of Binary Neural Networks via Information Bottleneck", "3.3.4"),
    ("Training Dynamics Impact Post-Training Quantization Robustness", "3.3.4"),
    ("LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale", "3.1.1"),
    ("Intriguing Properties of Quantization at Scale", "3.1.1"),
    ("XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks", "3.1.1"),
    ("Structured Binary Neural Networks for Accurate Image Classification and Semantic Segmentation", "3.1.1"),
    ("Ternary Weight Networks", "3.1.1"),
], ids=["decomposition", "position", "inq-lossless", "spqr-lossless", "dynamics", "training-dynamics",
        "llm-int8-at-scale", "at-scale", "xnor", "binary", "ternary"])
def test_word_boundary_false_positives_are_not_suggested(title, wrong):
    hint = suggest_subcategory(title)
    assert hint is None or hint[0] != wrong, (title, hint[1].name)


def test_no_catch_all_hint():
    assert suggest_subcategory("The Geometry of LLM Quantization: GPTQ as Babai's Nearest Plane Algorithm") is None
    assert suggest_subcategory("Binarized Neural Networks") is None


def test_tags():
    assert tags_for("BiLLM: Pushing the Limit of Post-Training Quantization for LLMs") == ["llm", "ptq"]
    assert tags_for("XNOR Neural Engine: A Hardware Accelerator IP for 21.6-fJ/op Binary Neural Network Inference",
                    ["bnn", "hardware"]) == ["binary", "hardware"]
    assert "4-bit" in tags_for("QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs")


# ---------------------------------------------------------------- the real lists
@pytest.mark.skipif(not all(p.exists() for p in NEW_LISTS), reason="shared source lists not present")
def test_real_lists_queue_is_idempotent(tmp_path):
    out = tmp_path / "q.yaml"
    args = [*map(str, NEW_LISTS), "--queue", str(out)]
    assert main(args) == 0
    first = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == first
    items = yaml.safe_load(first)
    keys = [i["key"] for i in items]
    assert len(keys) == len(set(keys)) and all(i["where"] for i in items)
