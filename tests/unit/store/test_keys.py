"""The key encoding sorts exactly like the tuples it encodes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tesserad.store.keys import pack, pack_int, prefix_range, trailing_int, unpack

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Keep each tuple homogeneous per position, as real keys are (a table's schema fixes the types).
key_schemas = st.lists(st.sampled_from(["int", "str", "bytes"]), min_size=1, max_size=4)
values = {"int": ints, "str": st.text(max_size=12), "bytes": st.binary(max_size=12)}


@st.composite
def key_pairs(draw: st.DrawFn) -> tuple[tuple, tuple]:
    schema = draw(key_schemas)
    a = tuple(draw(values[kind]) for kind in schema)
    b = tuple(draw(values[kind]) for kind in schema[: draw(st.integers(1, len(schema)))])
    return a, b


def _comparable(key: tuple) -> tuple:
    return tuple(part.encode() if isinstance(part, str) else part for part in key)


@given(key_pairs())
def test_byte_order_equals_tuple_order(pair: tuple[tuple, tuple]) -> None:
    a, b = pair
    assert (pack(a) < pack(b)) == (_comparable(a) < _comparable(b))
    assert (pack(a) == pack(b)) == (a == b)


@given(st.lists(st.one_of(ints, st.text(max_size=20), st.binary(max_size=20)), max_size=6))
def test_round_trip(parts: list) -> None:
    assert unpack(pack(tuple(parts))) == tuple(parts)


@given(st.text(max_size=8), st.lists(st.one_of(ints, st.text(max_size=8)), max_size=3), st.text(max_size=8))
def test_prefix_range_holds_exactly_the_extensions(head: str, tail: list, other: str) -> None:
    low, high = prefix_range((head,))
    assert low <= pack((head, *tail)) < high
    if other != head:
        assert not low <= pack((other, *tail)) < high


@given(st.text(max_size=12), ints)
def test_an_integer_packed_alone_extends_a_packed_prefix(head: str, value: int) -> None:
    assert pack((head,)) + pack_int(value) == pack((head, value))
    assert trailing_int(pack((head, value))) == value


def test_negative_integers_sort_first() -> None:
    assert pack((-1,)) < pack((0,)) < pack((1,)) < pack((2**40,))


@pytest.mark.parametrize("bad", [True, 1.5, None, 2**63])
def test_rejects_what_cannot_be_a_key(bad: object) -> None:
    with pytest.raises((TypeError, OverflowError)):
        pack((bad,))  # type: ignore[arg-type]
