"""Explanations: per-position attributions of a model's output, and helpers to read them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tessera.tensors import from_tensor
from tessera.v1 import inference_pb2 as pb

METHODS: dict[str, pb.ExplainMethod.ValueType] = {
    "integrated_gradients": pb.EXPLAIN_METHOD_INTEGRATED_GRADIENTS,
    "saliency": pb.EXPLAIN_METHOD_SALIENCY,
    "occlusion": pb.EXPLAIN_METHOD_OCCLUSION,
    "gradient_shap": pb.EXPLAIN_METHOD_GRADIENT_SHAP,
}
"""Explanation methods by name."""

SHORT_NAMES = {"ig": "integrated_gradients", "shap": "gradient_shap"}
"""Short names the CLI and SDK also take."""


def method_number(method: str) -> pb.ExplainMethod.ValueType:
    """The ExplainMethod of a method name (or short name); ValueError naming the choices."""
    name = SHORT_NAMES.get(method, method)
    if name not in METHODS:
        choices = ", ".join([*METHODS, *(f"{short} ({full})" for short, full in SHORT_NAMES.items())])
        raise ValueError(f"unknown explanation method {method!r}; choose one of {choices}")
    return METHODS[name]


@dataclass
class Explanation:
    """Attributions by input name, each shaped as its input (rows first): how much each position
    contributed to output `output_indices[row]` of that row. `explained_version` is the torch
    version explained (the lineage parent when `version` is an ONNX export)."""

    attributions: dict[str, np.ndarray]
    model: str
    version: int
    explained_version: int
    output_indices: list[int]
    convergence_delta: list[float]
    queue_time_us: int
    compute_time_us: int

    def __getitem__(self, name: str) -> np.ndarray:
        return self.attributions[name]

    @classmethod
    def from_proto(cls, response: pb.ExplainResponse) -> Explanation:
        return cls(
            attributions={tensor.name: from_tensor(tensor) for tensor in response.attributions},
            model=response.model,
            version=response.version,
            explained_version=response.explained_version,
            output_indices=list(response.output_indices),
            convergence_delta=list(response.convergence_delta),
            queue_time_us=response.queue_time_us,
            compute_time_us=response.compute_time_us,
        )


def top_positions(attribution: np.ndarray, count: int = 10) -> list[tuple[tuple[int, ...], float]]:
    """The `count` positions with the largest absolute attribution, largest first, as
    (index tuple, value); ties keep row-major order."""
    flat = np.asarray(attribution).ravel()
    order = np.argsort(-np.abs(flat), kind="stable")[: max(count, 0)]
    return [
        (tuple(int(i) for i in np.unravel_index(int(k), attribution.shape)), float(flat[k])) for k in order
    ]


def time_slice(
    attribution: np.ndarray, time: int, *, row: int = 0, channels: Sequence[int] = ()
) -> np.ndarray:
    """One time step of a 4-D attribution: (D, H, W), summed over the channels (all, or those
    given). Takes one row of (C, T, D, H, W), or the whole (N, C, T, D, H, W) with `row`."""
    array = np.asarray(attribution)
    if array.ndim == 6:
        if not 0 <= row < array.shape[0]:
            raise ValueError(f"row must be in 0..{array.shape[0] - 1}, got {row}")
        array = array[row]
    if array.ndim != 5:
        raise ValueError(
            f"time_slice takes a (C, T, D, H, W) attribution or (N, C, T, D, H, W) rows, got shape {list(array.shape)}"
        )
    if not 0 <= time < array.shape[1]:
        raise ValueError(f"time must be in 0..{array.shape[1] - 1}, got {time}")
    picked = array[list(channels)] if channels else array
    return np.asarray(picked[:, time].sum(axis=0))
