"""papers/paper.schema.json: generated from the validator's field table, equal to it, and fresh."""
from __future__ import annotations

import json

import pytest

from site_gen import ROOT
from site_gen.kb import check, schema

VOCAB, _ = check.load_vocab(ROOT / "taxonomy.yaml")
SCHEMA = schema.paper_schema(VOCAB)
JSON_TYPE = {str: "string", int: "integer", list: "array"}


def test_fields_types_and_required_equal_the_field_table():
    props = SCHEMA["properties"]
    assert list(props) == list(check.FIELD_TYPES)
    assert {name: p["type"] for name, p in props.items()} == {n: JSON_TYPE[t] for n, t in check.FIELD_TYPES.items()}
    assert SCHEMA["required"] == list(check.REQUIRED)
    assert SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize("name, values", [
    ("subcategories", lambda v: v.subcategories), ("tags", lambda v: v.tags), ("refimpl", lambda v: v.refimpl),
    ("venue", lambda v: v.venues), ("contribution", lambda v: v.contributions),
    ("classified_by", lambda v: check.CLASSIFIED_BY), ("sources", lambda v: check.SOURCES),
])
def test_enums_are_the_taxonomy_vocabularies(name, values):
    prop = SCHEMA["properties"][name]
    enum = prop["items"]["enum"] if prop["type"] == "array" else prop["enum"]
    assert set(enum) == set(values(VOCAB)) and len(enum) == len(set(enum))


def test_string_limits_follow_the_validator():
    props = SCHEMA["properties"]
    assert props["why"]["maxLength"] == check.MAX_LEN["why"] == 300
    assert props["title"]["maxLength"] == check.MAX_LEN["title"]


def test_conditional_rules_name_the_validator_constants():
    text = json.dumps(SCHEMA["allOf"])
    assert json.dumps(check.METHOD) in text
    assert {"why", "authors"} <= set(SCHEMA["required"]) and '"rule"' not in json.dumps(SCHEMA)


def test_committed_schema_is_fresh():
    committed = (ROOT / schema.SCHEMA_PATH).read_text(encoding="utf-8")
    assert committed == schema.render(VOCAB), "run `python -m site_gen build`"


def test_template_points_editors_at_the_schema():
    first = (ROOT / "papers" / "TEMPLATE.yaml.example").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../paper.schema.json"
    assert "yaml-language-server: $schema=../paper.schema.json" in (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
