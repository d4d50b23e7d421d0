"""`hidden_character_problem` against every code point of the categories it refuses: its fast
path (text `str.isprintable` passes) must never let one of them through."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from tesserad.text import hidden_character_problem

REFUSED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
JOINERS = ("\u200c", "\u200d")


def code_points(*categories: str) -> list[str]:
    return [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in categories and chr(code) not in JOINERS
    ]


@pytest.mark.parametrize("category", REFUSED_CATEGORIES)
def test_every_character_of_a_refused_category_is_refused_wherever_it_stands(category):
    refused = code_points(category)
    assert refused
    for hidden in refused:
        for text in (hidden, f"loss{hidden}", f"{hidden}loss", "x" * 249 + hidden):
            assert hidden_character_problem(text).startswith(f"holds U+{ord(hidden):04X},"), (hidden, text)


def test_the_first_hidden_character_is_named():
    assert hidden_character_problem("a\u202eb\x00").startswith("holds U+202E,")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "train/loss",
        "val accuracy (top-5)",
        "می\u200cخواهم",  # the zero-width non-joiner Persian spelling needs
        "\U0001f469\u200d\U0001f4bb",  # an emoji sequence's zero-width joiner
        "no\u00a0break",  # separators other than lines' and paragraphs' are shown as space
        "ideographic\u3000space",
        "private\ue000use",
        "学习率",
    ],
)
def test_text_without_a_refused_character_passes(text):
    assert hidden_character_problem(text) == ""
