"""The SDK's state words (SweepState, JobState, RunStatus, LoadState): equal to the word and to
the `tessera.v1` number they stand for, and UNSPECIFIED for a number a newer daemon added."""

from __future__ import annotations

import warnings

import pytest

import tessera
from tessera.v1 import inference_pb2, training_pb2

STATES = [
    (tessera.SweepState, training_pb2.SweepState, "SWEEP_STATE_"),
    (tessera.JobState, training_pb2.JobState, "JOB_STATE_"),
    (tessera.RunStatus, training_pb2.RunStatus, "RUN_STATUS_"),
    (tessera.LoadState, inference_pb2.LoadState, "LOAD_STATE_"),
]


@pytest.mark.parametrize(("words", "numbers", "prefix"), STATES)
def test_a_state_equals_its_word_and_its_proto_number(words, numbers, prefix):
    for name, number in numbers.items():
        state = words.from_proto(number)
        assert state == number and number == state and (state != number) is False
        assert state == name.removeprefix(prefix).lower()
        assert state.to_proto() == number
        assert all(state != other for other in numbers.values() if other != number)
    assert {words.from_proto(number): number for number in numbers.values()}  # hashable


@pytest.mark.parametrize(("words", "numbers", "prefix"), STATES)
def test_a_number_a_newer_daemon_added_reads_as_unspecified(words, numbers, prefix):
    state = words.from_proto(max(numbers.values()) + 40)
    assert state is words.UNSPECIFIED and str(state) == "unspecified"


def test_a_sweep_in_a_state_this_sdk_does_not_know_still_reads_and_prints():
    sweep = tessera.Sweep(None, training_pb2.Sweep(sweep_id="s1", state=77))
    assert sweep.state is tessera.SweepState.UNSPECIFIED
    assert repr(sweep) == "Sweep('s1', state='unspecified', trials=0)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sweep.state != training_pb2.SWEEP_STATE_RUNNING
