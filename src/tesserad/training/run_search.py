"""MLflow's run search beyond equality: LIKE, ILIKE, IN and NOT IN on params, tags and run
attributes, time conditions on start_time and end_time, and orders of several keys.

Pure logic: ListRuns (tracking.py) reads the runs and applies these to each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import total_ordering
from typing import Any

from tessera.param_values import same_param_value
from tesserad.errors import InvalidArgument

TEXT_MATCHES = ("eq", "ne", "like", "ilike", "in", "not_in")
TEXT_ENTITIES = ("params", "tags", "attributes")
TEXT_ATTRIBUTES = ("run_name", "run_id", "parent_run_id")
TIME_ATTRIBUTES = ("start_time", "end_time")
ORDER_ATTRIBUTES = ("start_time", "end_time", "run_name", "status")
# A LIKE pattern's length: each % splits it into parts searched for in turn, each part a run of
# literal characters and _ (no quantifier), so matching costs at most value x pattern steps.
MAX_LIKE_PATTERN = 500
# A listing checks each run against every pattern: these bound one request's LIKE work per run
# (a long pattern over an 8,000-character tag takes tens of ms).
MAX_LIKE_FILTERS = 20
MAX_LIKE_CHARS = 2000
MAX_IN_VALUES = 1000


@dataclass(frozen=True)
class TextFilter:
    entity: str  # params, tags, attributes
    key: str
    match: str  # one of TEXT_MATCHES
    values: tuple[str, ...]


@dataclass(frozen=True)
class TimeFilter:
    attribute: str  # start_time, end_time
    op: str  # lt, le, gt, ge, eq, ne
    value_ms: int


@dataclass(frozen=True)
class SortKey:
    entity: str  # metrics, params, attributes
    key: str
    field: str  # a metric's summary field: last, min, max ("" for others)
    descending: bool


class LikePattern:
    """SQL's LIKE: % any run of characters (none too), _ any one; the whole value must match.

    Split at %, the parts are found leftmost-first in turn (the first anchored at the start, the
    last at the end): a leftmost match never loses a match a later one would give, so no
    backtracking across parts is needed and a value is read a bounded number of times."""

    def __init__(self, pattern: str, ignore_case: bool) -> None:
        self.ignore_case = ignore_case
        # lower(), as SQL's: casefold() lengthens some text ("ß" to "ss"), which _ then misses.
        text = pattern.lower() if ignore_case else pattern
        # Each part with its width: literal characters and _ match one character each.
        self.parts = [
            (re.compile("".join("." if c == "_" else re.escape(c) for c in part), re.DOTALL), len(part))
            for part in text.split("%")
        ]

    def matches(self, value: str) -> bool:
        text = value.lower() if self.ignore_case else value
        (first, _), *rest = self.parts
        if not rest:
            return first.fullmatch(text) is not None
        *middle, (last, width) = rest
        start = first.match(text)
        if start is None:
            return False
        at = start.end()
        for part, _ in middle:
            found = part.search(text, at)
            if found is None:
                return False
            at = found.end()
        # The last part ends the value and starts no earlier than where the others left off.
        begin = len(text) - width
        return begin >= at and last.fullmatch(text, begin) is not None


def check_like_budget(filters: list[TextFilter]) -> None:
    """InvalidArgument when one listing's LIKE and ILIKE patterns, together, cost too much per run."""
    patterns = [f.values[0] for f in filters if f.match in ("like", "ilike") and f.values]
    if len(patterns) > MAX_LIKE_FILTERS:
        raise InvalidArgument(
            f"texts: a listing takes at most {MAX_LIKE_FILTERS} LIKE or ILIKE conditions, got {len(patterns):,}; "
            "match the rest with = or IN"
        )
    chars = sum(len(p) for p in patterns)
    if chars > MAX_LIKE_CHARS:
        raise InvalidArgument(
            f"texts: a listing's LIKE and ILIKE patterns hold at most {MAX_LIKE_CHARS:,} characters together, "
            f"these hold {chars:,}; shorten them"
        )


def check_text_filter(f: TextFilter, where: str) -> Callable[[str], bool]:
    """InvalidArgument for a filter that cannot be applied; else a test of a stored value."""
    if f.entity not in TEXT_ENTITIES:
        raise InvalidArgument(f"{where}.entity: set PARAM, TAG or ATTRIBUTE")
    if f.entity == "attributes" and f.key not in TEXT_ATTRIBUTES:
        raise InvalidArgument(
            f"{where}.key: {f.key[:40]!r} is no text attribute; use {' or '.join(TEXT_ATTRIBUTES)} "
            "(status has statuses, start_time and end_time have times)"
        )
    if not f.key:
        raise InvalidArgument(f"{where}.key is required: the name of the {f.entity[:-1]} to match")
    if f.match not in TEXT_MATCHES:
        raise InvalidArgument(f"{where}.match: set EQ, NE, LIKE, ILIKE, IN or NOT_IN")
    listed = f.match in ("in", "not_in")
    if listed and not 1 <= len(f.values) <= MAX_IN_VALUES:
        raise InvalidArgument(
            f"{where}.values: {f.match.upper()} takes 1 to {MAX_IN_VALUES:,} values, got {len(f.values):,}"
        )
    if not listed and len(f.values) != 1:
        raise InvalidArgument(f"{where}.values: {f.match.upper()} takes one value, got {len(f.values):,}")
    numeric = f.entity == "params"

    def same(stored: str, wanted: str) -> bool:
        return same_param_value(stored, wanted) if numeric else stored == wanted

    if f.match in ("like", "ilike"):
        pattern = f.values[0]
        if len(pattern) > MAX_LIKE_PATTERN:
            raise InvalidArgument(
                f"{where}.values[0]: a {f.match.upper()} pattern is at most {MAX_LIKE_PATTERN} characters, "
                f"this one is {len(pattern):,}"
            )
        return LikePattern(pattern, f.match == "ilike").matches
    if f.match == "eq":
        return lambda stored: same(stored, f.values[0])
    if f.match == "ne":
        return lambda stored: not same(stored, f.values[0])
    if f.match == "in":
        return lambda stored: any(same(stored, v) for v in f.values)
    return lambda stored: not any(same(stored, v) for v in f.values)


def check_sort_key(k: SortKey, where: str) -> None:
    if k.entity == "attributes" and k.key not in ORDER_ATTRIBUTES:
        raise InvalidArgument(
            f"{where}.attribute: {k.key[:40]!r} orders nothing; use one of {', '.join(ORDER_ATTRIBUTES)}"
        )
    if not k.key:
        raise InvalidArgument(f"{where}: name a metric, a param or an attribute to order by")


@total_ordering
class _Descending:
    """A value that sorts in reverse (strings cannot be negated)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __hash__(self) -> int:
        return hash(self.value)


def sort_position(values: list[Any], keys: list[SortKey], run_id: str) -> tuple[Any, ...]:
    """Where a run sorts: per key, runs with the value (in its direction) before those whose metric
    is NaN, and those before runs without it, in either direction, as MLflow sorts them; then by
    run id, so the order is total."""
    out: list[Any] = []
    for value, key in zip(values, keys, strict=True):
        if value is None:
            out.append((2, 0))
        elif value != value:  # NaN, which compares with nothing
            out.append((1, 0))
        else:
            out.append((0, _Descending(value) if key.descending else value))
    out.append(run_id)
    return tuple(out)
