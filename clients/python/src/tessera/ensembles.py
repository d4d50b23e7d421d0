"""Ensembles: the spec an ensemble version stores, and the stacking combiner fitted here.

A stacking ensemble's combiner is linear: the members' outputs side by side on the last axis
(members x classes values per row) times a weight matrix, plus a bias. `fit_stacking` fits it
by ridge-regularised least squares on held-out rows the caller has already run through each
member (one-hot targets for class labels), so the daemon only stores and applies the weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tessera.messages import whole_number

COMBINES = ("mean", "vote", "weighted_mean", "stacking")

Member = tuple[str, int] | str
"""A member version: ("model", 3) or "model:3"."""


def member_pair(member: Member) -> tuple[str, int]:
    """("model", version) from a pair or "model:version"; ValueError saying the accepted forms."""
    if isinstance(member, str):
        model, _, version = member.rpartition(":")
        try:
            number = whole_number(version)
        except ValueError:
            number = 0
        if not model or number < 1:
            raise ValueError(f"ensemble member {member!r}: write it MODEL:VERSION, e.g. clf:3")
        return model, number
    name, number = member
    return name, int(number)


def ensemble_spec(
    members: Sequence[Member],
    combine: str = "mean",
    *,
    weights: Sequence[float] | None = None,
    stacking: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON artifact of an ensemble version (the daemon checks it in full at registration)."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    if combine == "weighted_mean" and weights is None:
        raise ValueError("combine weighted_mean needs weights=[...], one per member")
    if combine == "stacking" and stacking is None:
        raise ValueError("combine stacking needs stacking={'weights', 'bias'} (fit_stacking fits one)")
    spec: dict[str, Any] = {
        "members": [{"model": m, "version": v} for m, v in map(member_pair, members)],
        "combine": combine,
    }
    if weights is not None:
        spec["weights"] = [float(w) for w in weights]
    if stacking is not None:
        spec["stacking"] = {
            "weights": np.asarray(stacking["weights"], dtype=np.float64).tolist(),
            "bias": np.asarray(stacking["bias"], dtype=np.float64).tolist(),
        }
    return json.dumps(spec, separators=(",", ":")).encode()


def fit_stacking(
    member_outputs: Sequence[np.ndarray], targets: np.ndarray, ridge: float = 1e-3
) -> dict[str, list[Any]]:
    """A linear combiner for combine "stacking", fitted on held-out rows.

    `member_outputs`: each member's output for the same rows, shape (rows, classes), in the
    ensemble's member order. `targets`: class labels (rows,) or target scores (rows, classes).
    Minimises ||features @ W + b - Y||^2 + ridge * ||W||^2 (the bias is not penalised).
    """
    outputs = [np.asarray(o, dtype=np.float64) for o in member_outputs]
    if not outputs or any(o.ndim != 2 or o.shape != outputs[0].shape for o in outputs):
        raise ValueError("member_outputs must be arrays of one shape (rows, classes), one per member")
    rows, classes = outputs[0].shape
    y = np.asarray(targets)
    if y.ndim == 1:
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
            raise ValueError(f"class-label targets must be integers in 0..{classes - 1}")
        y = np.eye(classes)[y]
    if y.shape != (rows, classes):
        raise ValueError(f"targets must be ({rows},) labels or ({rows}, {classes}) scores, got {y.shape}")
    features = np.concatenate(outputs, axis=1)
    mean_x, mean_y = features.mean(axis=0), y.mean(axis=0)
    centred = features - mean_x
    gram = centred.T @ centred + ridge * np.eye(features.shape[1])
    weights = np.linalg.solve(gram, centred.T @ (y - mean_y))
    bias = mean_y - mean_x @ weights
    return {"weights": weights.tolist(), "bias": bias.tolist()}
