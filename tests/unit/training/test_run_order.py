"""The order index's value encoding (pure): bytes sort exactly as the floats do."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from tesserad.training.run_order import order_value

values = st.floats(allow_nan=False)


@given(values, values)
def test_encoded_values_sort_as_the_floats_do(a: float, b: float) -> None:
    assert (order_value(a) < order_value(b)) == (a < b)
    assert (order_value(a) == order_value(b)) == (a == b)  # -0.0 == 0.0 included


def test_encoded_values_keep_the_extremes_in_order() -> None:
    ordered = [-math.inf, -1e308, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e308, math.inf]
    encoded = [order_value(v) for v in ordered]
    assert encoded == sorted(encoded) and encoded[4] == encoded[5]
    assert all(len(e) == 8 for e in encoded)
