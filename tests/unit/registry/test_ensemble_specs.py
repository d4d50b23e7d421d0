"""Ensemble specs as the registry reads them, and how the serving layer combines member outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tessera.ensembles import ensemble_spec, fit_stacking
from tesserad.errors import InvalidArgument
from tesserad.registry.ensembles import Member, parse_ensemble_spec
from tesserad.serving.ensemble import EnsemblePlan, combine


def spec_bytes(**fields: object) -> bytes:
    return json.dumps(
        {"members": [{"model": "a", "version": 1}, {"model": "b", "version": 2}], **fields}
    ).encode()


def test_sdk_spec_reads_back_the_same() -> None:
    spec = parse_ensemble_spec(ensemble_spec([("a", 1), "b:2"], "weighted_mean", weights=[2, 1]))
    assert spec.members == (Member("a", 1), Member("b", 2))
    assert (spec.combine, spec.weights) == ("weighted_mean", (2.0, 1.0))


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (spec_bytes(combine="mean", extra=1), "unknown key(s) extra"),
        (spec_bytes(combine="median"), "got 'median'"),
        (spec_bytes(combine="mean", weights=[1, 1]), "weights are for combine weighted_mean, not mean"),
        (spec_bytes(combine="weighted_mean", weights=[1, -1]), ">= 0 with a positive sum"),
        (spec_bytes(combine="weighted_mean", weights=[1, "x"]), "list of finite numbers"),
        (spec_bytes(combine="stacking"), "combine stacking needs stacking"),
        (spec_bytes(combine="stacking", stacking={"weights": [[1, 0]] * 3, "bias": [0, 0]}), "got 3 rows"),
        (
            json.dumps({"members": [{"model": "a", "version": 0}] * 2, "combine": "mean"}).encode(),
            "members[0].version",
        ),
        (json.dumps({"members": [{"version": 1}] * 2, "combine": "mean"}).encode(), "members[0].model"),
    ],
)
def test_bad_specs_name_the_field(data: bytes, text: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_ensemble_spec(data)
    assert text in raised.value.message


def plan(**fields: object) -> EnsemblePlan:
    return EnsemblePlan(parse_ensemble_spec(spec_bytes(**fields)), ())


def test_combines_keep_the_members_dtype() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    b = np.array([[0.4, 0.6], [0.3, 0.7]], dtype=np.float32)
    answers = [{"y": a}, {"y": b}]
    mean = combine(plan(combine="mean"), answers, ["y"])["y"]
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)
    weighted = combine(plan(combine="weighted_mean", weights=[1, 3]), answers, ["y"])["y"]
    np.testing.assert_allclose(weighted, (a + 3 * b) / 4, rtol=1e-6)
    np.testing.assert_array_equal(
        combine(plan(combine="vote"), answers, ["y"])["y"], [[0.5, 0.5], [0.0, 1.0]]
    )


def test_fitted_stacking_recovers_a_linear_combination() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((50, 3)), rng.random((50, 3))
    combiner = fit_stacking([a, b], 0.25 * a + 2 * b - 0.5, ridge=1e-9)
    stacked = plan(combine="stacking", stacking=combiner)
    out = combine(stacked, [{"y": a}, {"y": b}], ["y"])["y"]
    np.testing.assert_allclose(out, 0.25 * a + 2 * b - 0.5, atol=1e-6)


def test_fit_stacking_on_class_labels_beats_the_worse_member() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    good = np.eye(2)[labels] * 0.6 + rng.random((400, 2)) * 0.5  # mostly right
    noise = rng.random((400, 2))  # a member that knows nothing
    combiner = fit_stacking([good, noise], labels)
    out = np.concatenate([good, noise], axis=1) @ np.asarray(combiner["weights"]) + combiner["bias"]
    assert (out.argmax(axis=1) == labels).mean() >= (good.argmax(axis=1) == labels).mean() - 0.01
    with pytest.raises(ValueError, match=r"integers in 0\.\.1"):
        fit_stacking([good, noise], labels + 5)
