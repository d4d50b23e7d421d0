"""Signature checks and differences, without a server."""

from __future__ import annotations

import pytest

from tesserad.errors import InvalidArgument
from tesserad.registry import Signature, TensorSpec
from tesserad.registry.artifacts import signature_differences, signature_mismatches
from tesserad.registry.validation import validate_signature

GRAPH = Signature((TensorSpec("input", "float32", (-1, 3, 8)),), (TensorSpec("output", "float32", (-1, 2)),))


def test_a_declared_signature_may_narrow_dynamic_dims_but_not_change_fixed_ones():
    narrower = Signature((TensorSpec("input", "float32", (4, 3, 8)),), GRAPH.outputs)
    assert signature_mismatches(narrower, GRAPH) == []
    wrong = Signature((TensorSpec("input", "float32", (-1, 3)),), (TensorSpec("logits", "float32", (-1, 2)),))
    assert signature_mismatches(wrong, GRAPH) == [
        "input 'input': rank 2 vs the graph's 3",
        "output 'logits' is not in the graph (its outputs: output)",
        "the graph's output 'output' is not in the declared signature",
    ]


def test_differences_read_like_the_contract():
    other = Signature((TensorSpec("input", "float32", (-1, 3, 16)),), GRAPH.outputs)
    assert signature_differences(GRAPH, other) == ["input 'input': shape [-1, 3, 8] vs [-1, 3, 16]"]


def test_validation_names_the_field():
    with pytest.raises(InvalidArgument, match=r"signature.inputs\[0\] \('x'\).dtype is required"):
        validate_signature(Signature((TensorSpec("x", "", (1,)),), GRAPH.outputs), required=True)
    with pytest.raises(InvalidArgument, match="dims must be -1"):
        validate_signature(Signature((TensorSpec("x", "float32", (0,)),), GRAPH.outputs), required=True)
