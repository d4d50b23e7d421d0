"""LIKE patterns (run_search.LikePattern) against SQL's reading, and their cost on long values."""

from __future__ import annotations

import itertools
import re

from tesserad.training.run_search import LikePattern


def _sql_like(pattern: str, value: str) -> bool:
    """SQL's LIKE as a backtracking regex: the reference, fine on these short strings."""
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.DOTALL) is not None


def test_every_short_pattern_matches_as_sql_reads_it() -> None:
    values = ["".join(v) for n in range(5) for v in itertools.product("ab\n", repeat=n)]
    patterns = ["".join(p) for n in range(5) for p in itertools.product("a%_", repeat=n)]
    for pattern in patterns:
        like = LikePattern(pattern, ignore_case=False)
        for value in values:
            assert like.matches(value) == _sql_like(pattern, value), (pattern, value)


def test_case_and_regex_characters() -> None:
    assert LikePattern("ResNet%", ignore_case=False).matches("ResNet50")
    assert not LikePattern("resnet%", ignore_case=False).matches("ResNet50")
    assert LikePattern("resnet%", ignore_case=True).matches("ResNet50")
    assert LikePattern("a.b(c)*", ignore_case=False).matches("a.b(c)*")
    assert not LikePattern("a.b", ignore_case=False).matches("axb")


def test_a_pattern_of_many_wildcards_reads_a_long_value_once_per_part() -> None:
    # A backtracking regex of 200 ".*a" would not end on this value.
    assert not LikePattern("%a" * 200 + "%b", ignore_case=False).matches("a" * 6000)
    assert LikePattern("%a" * 200 + "%", ignore_case=False).matches("a" * 6000)


def test_ilike_compares_lowercased_text_as_sql_lower_does() -> None:
    # casefold() turns "ß" into "ss", two characters: "_" would no longer match it.
    assert LikePattern("_", ignore_case=True).matches("ß")
    assert LikePattern("stra_e", ignore_case=True).matches("STRAßE")
    assert not LikePattern("strasse", ignore_case=True).matches("straße")
