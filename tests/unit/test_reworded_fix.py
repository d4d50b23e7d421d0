"""errors.reworded_fix: a front end's words for the fix that ends a message, and only for it."""

from __future__ import annotations

import re

from tesserad.errors import reworded_fix

FIXES = (
    ("ListVersions lists them", "GET /models/m lists them"),
    ("create it with CreateModel", "push it"),
    (re.compile(r"load it with LoadModel naming version (\d+)"), r"load version \1 with POST /load"),
)


def test_the_fix_that_ends_the_message_or_its_bracket_is_reworded():
    assert reworded_fix("model 'm' does not exist; create it with CreateModel", FIXES) == (
        "model 'm' does not exist; push it"
    )
    assert reworded_fix("model 'm' has no version 9 (the newest is 2; ListVersions lists them)", FIXES) == (
        "model 'm' has no version 9 (the newest is 2; GET /models/m lists them)"
    )
    assert reworded_fix("version 3 is not loaded; load it with LoadModel naming version 3", FIXES) == (
        "version 3 is not loaded; load version 3 with POST /load"
    )


def test_the_same_words_earlier_in_the_message_stay_as_they_are():
    quoted = "run 'ListVersions lists them; create it with CreateModel' does not exist"
    assert reworded_fix(quoted, FIXES) == quoted
    assert reworded_fix(f"{quoted}; create it with CreateModel", FIXES) == (
        "run 'ListVersions lists them; create it with CreateModel' does not exist; push it"
    )
    # A closing bracket ends the fix only where nothing follows it.
    kept = "load failed (create it with CreateModel) on warm-up"
    assert reworded_fix(kept, FIXES) == kept
