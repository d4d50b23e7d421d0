"""What a served model takes and returns, and the check every request passes before it is queued."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np

from tesserad.dtypes import STRING_DTYPE
from tesserad.errors import InvalidArgument


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, element type and shape; -1 marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def describe(self, dtype_names: Mapping[np.dtype, str] | None = None) -> str:
        return f"{self.name} {_dtype_name(self.dtype, dtype_names)}{list(self.shape)}"


def _dtype_name(dtype: np.dtype, dtype_names: Mapping[np.dtype, str] | None) -> str:
    return dtype.name if dtype_names is None else dtype_names.get(dtype, dtype.name)


@dataclass(frozen=True)
class Signature:
    """Derived views are computed once: every request is checked against them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @cached_property
    def batchable(self) -> bool:
        """True when every tensor's first dimension is dynamic: requests can be stacked as rows."""
        return all(spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs))

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    @cached_property
    def strings(self) -> tuple[TensorSpec, ...]:
        """Its string tensors, inputs then outputs."""
        return tuple(spec for spec in (*self.inputs, *self.outputs) if spec.dtype == STRING_DTYPE)

    @cached_property
    def input_by_name(self) -> Mapping[str, TensorSpec]:
        return MappingProxyType({spec.name: spec for spec in self.inputs})


def validate_request(
    signature: Signature,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    label: str,
    dtype_names: Mapping[np.dtype, str] | None = None,
    strings: bool = False,
) -> int:
    """Check inputs and wanted outputs against the signature; the request's rows (1 if unbatched).

    Raises InvalidArgument naming the offending input and what `label` (the model version)
    expects, so the caller can fix the request without reading the model. `dtype_names`: the
    names the caller's protocol gives dtypes (the Open Inference Protocol's FP32), else numpy's.
    `strings`: the caller's protocol carries string tensors; without it a version that takes or
    returns one is refused, naming the protocol that does.
    """
    if not strings and signature.strings:
        raise InvalidArgument(
            f"{label} takes or returns strings ({signature.strings[0].describe(_STRING_NAMES)}), which "
            f"this API does not carry: {STRINGS_ELSEWHERE}"
        )
    specs = signature.input_by_name
    for name in inputs:
        if name not in specs:
            raise InvalidArgument(
                f"input {name!r} is not an input of {label}; its inputs are "
                + ", ".join(spec.describe(dtype_names) for spec in signature.inputs)
            )
    rows: int | None = None
    batchable = signature.batchable
    for spec in signature.inputs:
        array = inputs.get(spec.name)
        if array is None:
            raise InvalidArgument(
                f"input {spec.name!r} is missing; {label} expects {spec.describe(dtype_names)}"
            )
        if array.dtype != spec.dtype:
            field = "dtype" if dtype_names is None else "datatype"
            raise InvalidArgument(
                f"input {spec.name!r} has {field} {_dtype_name(array.dtype, dtype_names)}; {label} "
                f"expects {_dtype_name(spec.dtype, dtype_names)}"
            )
        if array.ndim != len(spec.shape):
            raise InvalidArgument(
                f"input {spec.name!r} has shape {list(array.shape)} (rank {array.ndim}); "
                f"{label} expects rank {len(spec.shape)}: {list(spec.shape)}{_batch_hint(array.shape, spec.shape)}"
            )
        for axis, (got, expected) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if expected == -1 and got < 1:
                raise InvalidArgument(
                    f"input {spec.name!r} has size {got} in dimension {axis}; it must be at least 1"
                )
            if expected != -1 and got != expected:
                raise InvalidArgument(
                    f"input {spec.name!r} has size {got} in dimension {axis}; {label} expects "
                    f"{expected} there (shape {list(spec.shape)}, -1 is any size)"
                )
        if batchable:
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidArgument(
                    f"input {spec.name!r} has {array.shape[0]} rows but the other inputs have {rows}; "
                    "every input's first dimension is the batch and must agree"
                )
    known_outputs = signature.output_names
    requested: set[str] = set()
    for name in output_names:
        # As the Open Inference Protocol's requested outputs: the answer has one tensor per name.
        if name in requested:
            raise InvalidArgument(f"output {name!r} is requested twice; request each output once")
        requested.add(name)
        if name not in known_outputs:
            raise InvalidArgument(
                f"output {name!r} is not an output of {label}; its outputs are {', '.join(known_outputs)}"
            )
    return rows if rows is not None else 1


# Where a caller whose protocol carries no strings is sent.
STRINGS_ELSEWHERE = (
    "a tessera.v1.Tensor holds numbers only (fixed-size little-endian elements), so call the model "
    "through the Open Inference Protocol on the same port, ModelInfer with datatype BYTES "
    "(tritonclient.grpc; or tritonclient.http against serving.oip_http_listen)"
)
_STRING_NAMES = {STRING_DTYPE: "string"}


def _batch_hint(shape: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """For one sample sent without the batch dimension (shape [1, 4, 4] where [-1, 1, 4, 4] is
    expected), the likeliest slip, how to send it; else nothing."""
    sample = expected[1:]
    if not expected or expected[0] != -1 or len(shape) != len(sample):
        return ""
    if any(want not in (-1, got) for got, want in zip(shape, sample, strict=True)):
        return ""
    return f"; the first dimension is the batch: send one sample shaped {[1, *shape]}"


def sample_is_random(dtype: np.dtype) -> bool:
    """Whether sample_inputs draws an input of `dtype` at random (floats), or gives zeros."""
    return dtype.kind == "f"


def sample_inputs(signature: Signature, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the signature's shape for warm-up: `rows` rows, other dynamic dims 1."""
    inputs = {}
    for spec in signature.inputs:
        shape = [
            rows if axis == 0 and signature.batchable else max(dim, 1) for axis, dim in enumerate(spec.shape)
        ]
        if sample_is_random(spec.dtype):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == STRING_DTYPE:
            inputs[spec.name] = np.full(shape, "", dtype=STRING_DTYPE)
        else:
            # Zeros are a safe index or id for any integer or boolean input.
            inputs[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return inputs
