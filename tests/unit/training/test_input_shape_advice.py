"""Samples that are the declared input_shape with the channel axis moved are told to move the
axis back (np.moveaxis), not to set input_shape to the moved shape, which trains on the wrong axes."""

from __future__ import annotations

from tesserad.nn.specs import Cnn4dSpec, LstmSpec, PythonSpec
from tesserad.training.spec import _input_shape_advice

CHANNELS_LAST = "; the data looks channels-last: move its channel axis first before pushing it again, "


def test_channels_last_clips_are_told_to_move_the_axis_not_to_set_the_moved_shape() -> None:
    advice = _input_shape_advice(Cnn4dSpec(input_shape=(2, 4, 5, 6, 7), output_size=2), (4, 5, 6, 7, 2))
    assert advice == CHANNELS_LAST + "np.moveaxis(x, -1, 1) (keep input_shape)"
    # A python module's layout is its own: channels-first data for a channels-last shape moves too.
    advice = _input_shape_advice(PythonSpec(input_shape=(4, 5, 6, 7, 2), output_size=2), (2, 4, 5, 6, 7))
    assert advice.endswith(
        "the data looks channels-first: move its channel axis last before pushing it again, "
        "np.moveaxis(x, 1, -1) (keep input_shape)"
    )


def test_a_shape_that_is_no_channel_move_still_gets_the_shape_to_set() -> None:
    assert _input_shape_advice(Cnn4dSpec(input_shape=(2, 4, 5, 6, 7), output_size=2), (3, 4, 5, 6, 7)) == (
        "; set input_shape to [3, 4, 5, 6, 7]"
    )
    # A cnn4d leads with its channels: samples led by the declared last axis fit it as they are.
    assert _input_shape_advice(Cnn4dSpec(input_shape=(4, 5, 6, 7, 2), output_size=2), (2, 4, 5, 6, 7)) == (
        "; set input_shape to [2, 4, 5, 6, 7]"
    )
    # (T, F) has no channel axis.
    assert (
        _input_shape_advice(LstmSpec(input_shape=(3, 5), output_size=2), (5, 3))
        == "; set input_shape to [5, 3]"
    )
