"""Free text a caller keeps beside a record (descriptions, tags): one rule per kind of text,
shared by every domain package and checked on write, with an InvalidArgument that names the
field and the limit. Nothing here runs on read, so records stored before a rule stay readable."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

from tesserad.config import format_size
from tesserad.errors import InvalidArgument

# Tag keys and values as MLflow bounds run tags: keys are names a person reads, values short notes.
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 8000
# A param's value (a run's, a model version's), as MLflow bounds run params.
MAX_PARAM_VALUE = 6000
# A record's description and tags together (models, versions, datasets, experiments): lists send
# up to a thousand records in one message, and versions reach every follower of their model
# (MLflow keeps a description to 5000 characters).
MAX_RECORD_TEXT = 16 * 2**10
# What a map entry (a param, a tag) takes in an answer beside its key's and value's UTF-8, at most:
# the entry's field tag and length, and its key's and value's (a value of 8,000 characters takes
# a 3-byte length).
ENTRY_WIRE_BYTES = 11

# Controls (C0, C1), line and paragraph separators, and format characters (Cf): these last are
# invisible (U+200B, U+FEFF) or reorder the text beside them ("\u202etxt.exe" shows as "exe.txt",
# the isolates U+2066..U+2069, U+200F).
_HIDDEN_CATEGORIES = frozenset(("Cc", "Zl", "Zp", "Cf"))
# But the zero-width non-joiner and joiner, which spelling needs: Persian and Indic words
# ("می\u200cخواهم"), emoji sequences.
_JOINERS = frozenset("\u200c\u200d")


def hidden_character_problem(text: str) -> str:
    """What is wrong with `text` when it holds a character a listing or a terminal would not show
    as it is ("holds U+202E, ..."), naming the first such; "" when it holds none. Checked where an
    identifier (a key, a path) is stored, never on read: those stored before stay reachable."""
    # Every refused category is one str.isprintable refuses too (as are the joiners, so text
    # with one takes the loop below): printable text, nearly all of it, skips the loop per
    # character that a batch of metric keys would pay on the event loop.
    if text.isprintable():
        return ""
    hidden = next(
        (c for c in text if unicodedata.category(c) in _HIDDEN_CATEGORIES and c not in _JOINERS), None
    )
    if hidden is None:
        return ""
    return (
        f"holds U+{ord(hidden):04X}, a control or format character (invisible, or one that reorders "
        "the text beside it) that a listing or a terminal would not show as it is"
    )


def is_entry_key(key: str) -> bool:
    """Whether `key` may name a tag or a run param."""
    return bool(key) and len(key) <= MAX_TAG_KEY and "\x00" not in key and "\n" not in key


def check_label(field: str, value: str) -> None:
    """InvalidArgument unless `value` is empty or follows a tag key's rule: a label that names
    something kept elsewhere (a lineage's run id, perhaps another tracker's), carried whole in
    every answer with its record."""
    if value and not is_entry_key(value):
        shown = f"{value[:80]!r}… ({len(value):,} characters)" if len(value) > MAX_TAG_KEY else repr(value)
        raise InvalidArgument(
            f"{field}: {shown} must be at most {MAX_TAG_KEY} characters without NUL or newlines"
        )
    hidden = hidden_character_problem(value)
    if hidden:
        raise InvalidArgument(f"{field}: {value!r} {hidden}")


def entry_problems(field: str, entries: Mapping[str, str], max_value: int = MAX_TAG_VALUE) -> list[str]:
    """What is wrong with each key or value of `entries` (tags; run params), each naming `field`."""
    problems = []
    for key, value in entries.items():
        if not is_entry_key(key):
            problems.append(
                f"{field}: key {key[:80]!r} must be 1 to {MAX_TAG_KEY} characters without NUL or newlines"
            )
        elif hidden := hidden_character_problem(key):
            problems.append(f"{field}: key {key[:80]!r} {hidden}")
        elif len(value) > max_value:
            problems.append(f"{field}[{key!r}]: value is longer than {max_value} characters")
    return problems


def check_entries(field: str, entries: Mapping[str, str], max_value: int = MAX_TAG_VALUE) -> None:
    """InvalidArgument for the first key or value of `entries` that breaks `entry_problems`' rule."""
    problems = entry_problems(field, entries, max_value)
    if problems:
        raise InvalidArgument(problems[0])


def check_tag_update(set_tags: Mapping[str, str], remove_tags: Iterable[str]) -> None:
    """InvalidArgument for a key one update both sets and removes: which it means is unclear."""
    both = sorted(set(remove_tags) & set_tags.keys())
    if both:
        raise InvalidArgument(f"tag {both[0][:80]!r} is both in set_tags and remove_tags; give it once")


def entries_bytes(entries: Mapping[str, str]) -> int:
    """What `entries`' keys and values take in UTF-8, as they are stored."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in entries.items())


def entries_wire_bytes(entries: Mapping[str, str]) -> int:
    """What `entries` take in an answer at most: their UTF-8 and each entry's field tags and
    lengths, which outweigh the text of entries of a few bytes."""
    return entries_bytes(entries) + ENTRY_WIRE_BYTES * len(entries)


def record_text_problem(what: str, description: str, tags: Mapping[str, str]) -> str:
    """Why `what`'s ("a model") description and tags are too long together; "" when they fit.
    Counted in UTF-8 bytes, as they are stored."""
    size = len(description.encode()) + entries_bytes(tags)
    if size <= MAX_RECORD_TEXT:
        return ""
    return (
        f"{what}'s description and tags take at most {format_size(MAX_RECORD_TEXT)} together, these "
        f"take {format_size(size)} ({size} bytes); keep longer documentation elsewhere and link to it"
    )


def check_record_text(what: str, description: str, tags: Mapping[str, str]) -> None:
    """InvalidArgument when `record_text_problem` finds one."""
    problem = record_text_problem(what, description, tags)
    if problem:
        raise InvalidArgument(problem)
