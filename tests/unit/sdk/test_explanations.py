"""Reading attributions: the top positions and one time slice of a 4-D attribution."""

from __future__ import annotations

import numpy as np
import pytest

from tessera import time_slice, top_positions
from tessera.explanations import method_number
from tessera.v1 import inference_pb2


def test_top_positions_rank_by_magnitude_and_keep_the_sign():
    attribution = np.zeros((2, 3, 4), np.float32)
    attribution[1, 2, 3] = -5
    attribution[0, 1, 0] = 2
    attribution[0, 0, 1] = 2
    assert top_positions(attribution, 3) == [((1, 2, 3), -5.0), ((0, 0, 1), 2.0), ((0, 1, 0), 2.0)]
    assert top_positions(attribution, 0) == []


def test_time_slice_sums_the_channels_at_one_time_step():
    rows = np.arange(2 * 2 * 3 * 2 * 2 * 2, dtype=np.float32).reshape(2, 2, 3, 2, 2, 2)  # (N, C, T, D, H, W)
    np.testing.assert_array_equal(time_slice(rows, 1, row=1), rows[1, 0, 1] + rows[1, 1, 1])
    np.testing.assert_array_equal(time_slice(rows[0], 2, channels=[1]), rows[0, 1, 2])
    assert time_slice(rows[0], 0).shape == (2, 2, 2)


@pytest.mark.parametrize(
    ("shape", "kwargs", "text"),
    [
        ((2, 3, 4), {"time": 0}, "takes a (C, T, D, H, W) attribution"),
        ((1, 3, 2, 2, 2), {"time": 3}, "time must be in 0..2"),
        ((2, 1, 3, 2, 2, 2), {"time": 0, "row": 2}, "row must be in 0..1"),
    ],
)
def test_time_slice_says_what_is_wrong(shape, kwargs, text):
    with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")):
        time_slice(np.zeros(shape), **kwargs)


def test_methods_by_name_and_short_name():
    assert (
        method_number("ig")
        == method_number("integrated_gradients")
        == inference_pb2.EXPLAIN_METHOD_INTEGRATED_GRADIENTS
    )
    assert method_number("shap") == inference_pb2.EXPLAIN_METHOD_GRADIENT_SHAP
    with pytest.raises(ValueError, match="unknown explanation method 'lime'"):
        method_number("lime")
