"""The benchmark text: Gutenberg licence stripped, one edition per work, The Tempest held out."""
from __future__ import annotations

import pytest

from refimpl.bench import data

BODY = "ACT I\n\nPROSPERO.\nOur revels now are ended.\n"


@pytest.mark.parametrize("header,footer", [
    ("The Project Gutenberg EBook of The Tempest\nLicence text\n"
     "*** START OF THIS PROJECT GUTENBERG EBOOK THE TEMPEST ***\n",
     "\n*** END OF THIS PROJECT GUTENBERG EBOOK THE TEMPEST ***\nMore licence\n"),
    ("**The Project Gutenberg Etext of The Tempest**\nsmall print\n"
     "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n",
     "\nEnd of Project Gutenberg Etext of The Tempest\n"),
    ("", ""),
], ids=["modern-markers", "1990s-small-print", "no-licence"])
def test_strip_gutenberg_keeps_exactly_the_body(header, footer):
    assert data.strip_gutenberg(header + BODY + footer) == BODY.strip()


def test_shipped_works_have_no_licence_text_and_one_edition_each():
    works = data.works()
    assert len(works) == 42
    assert not any(name.endswith("_f") for name in works)        # no First Folio duplicates
    for name, text in works.items():
        assert "gutenberg" not in text.lower(), name
        assert len(text) > 1000, name


def test_tempest_is_never_in_calibration():
    tempest = data.works()[data.HELDOUT]
    assert data.HELDOUT not in data.calibration_works()
    for seed in (0, 1, 2):
        for passage in data.sample_passages(seed, 16, 400):
            # each passage comes from another work and is not a Tempest passage
            assert passage not in tempest
            assert any(passage in data.works()[w] for w in data.calibration_works())
    held = set(data.sentences(tempest))
    assert not held & set(data.calibration_sentences(0, 200))


def test_no_stretch_of_the_tempest_is_in_any_calibration_work():
    """Calibration text is drawn only from the calibration works (above); none of them holds any
    48-character stretch (about ten words) of The Tempest, so no evaluation text, wherever the task
    takes it from the play, can reach a technique through calibration."""
    tempest = data.works()[data.HELDOUT]
    for work in data.calibration_works():
        assert not data.shared_stretches(tempest, data.works()[work], 48), work


def test_the_stretch_check_finds_a_quoted_line():
    """The check above can fail: a work quoting one Tempest line is caught."""
    line = "We are such stuff as dreams are made on, and our little life is rounded with a sleep."
    assert data.shared_stretches(data.works()[data.HELDOUT], "PROSPERO.\n" + line.replace(", ", ",\n"), 48)


def test_sampling_is_seeded():
    assert data.sample_passages(3, 4, 200) == data.sample_passages(3, 4, 200)
    assert data.sample_passages(3, 4, 200) != data.sample_passages(4, 4, 200)
    assert data.calibration_sentences(0, 8) != data.calibration_sentences(1, 8)
    assert data.heldout_sentences(8) == data.heldout_sentences(8)


def test_sentences_drop_stage_directions_and_speaker_tags():
    text = "ACT 1\nSCENE 1\n[Enter a SHIPMASTER and a BOATSWAIN]\n\nMASTER.\nGood! Speak to the mariners: fall to't yarely, or\nwe run ourselves aground.\n"
    assert data.sentences(text, min_words=2) == ["Speak to the mariners: fall to't yarely, or we run ourselves aground."]
