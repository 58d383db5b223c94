"""The code hash that decides whether a record is stale ignores declared deviations and claims
(they change no number) and nothing else."""
from __future__ import annotations

import pytest

from refimpl.bench.records import without_declarations

PLAIN = b'''from refimpl.core.registry import register


@register(id="t", name="T \xc3\xa9", subcategory="3.1", paper="p", kind="ptq-weight",
          tasks=("digits-cnn",))
def t(model, cfg, calib):
    return model  # \xe2\x89\x88 non-ASCII before and after the call
'''

DECLARED = b'''from refimpl.core.registry import Claim, Deviation, register


@register(id="t", name="T \xc3\xa9", subcategory="3.1", paper="p", kind="ptq-weight",
          tasks=("digits-cnn",),
          deviations=(
              Deviation(what="\xc3\xa9", why="w)", effect="e"),
          ),
          claims=(Claim(text="(", task="digits-cnn", setting="s", versus="rtn/s", metric="accuracy",
                        higher_is_better=True),))
def t(model, cfg, calib):
    return model  # \xe2\x89\x88 non-ASCII before and after the call
'''


def test_declarations_are_cut_back_to_the_undeclared_source():
    assert without_declarations(DECLARED) == PLAIN


def test_a_source_without_declarations_is_unchanged():
    assert without_declarations(PLAIN) == PLAIN


@pytest.mark.parametrize("edit", [
    (b"return model", b"return None"),                    # code
    (b'tasks=("digits-cnn",),\n', b'tasks=("digits-cnn",), needs_calib=True,\n'),   # another argument
])
def test_any_other_edit_still_changes_the_hash_input(edit):
    assert without_declarations(DECLARED.replace(*edit)) != PLAIN


def test_declarations_before_other_arguments_are_kept_verbatim():
    """Only trailing declarations are cut; elsewhere the bytes are hashed as they are (too strict, never lax)."""
    src = DECLARED.replace(b'tasks=("digits-cnn",),\n', b"").replace(b"def t(", b"def u(").replace(
        b"higher_is_better=True),))", b'higher_is_better=True),), tasks=("digits-cnn",))')
    assert without_declarations(src) == src
