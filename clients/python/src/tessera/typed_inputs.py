"""predict's inputs in the dtypes the model's signature gives them. A list or a scalar has no
dtype of its own (numpy makes 0.5 float64, 1 int64): where the version refuses that dtype, it is
made an array of the input's dtype; a numpy array (a DataFrame, a torch tensor: their arrays)
keeps the dtype its caller chose, and one the model does not take is refused by the daemon, with
the cast to make said here."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tessera.tensors import as_array, dtype_name, input_kind
from tessera.v1 import common_pb2

Inputs = Mapping[str, np.typing.ArrayLike] | np.typing.ArrayLike
"""Input arrays by name, or one array sent as the input named "input". The first dimension is the batch."""

# The dtypes a list is made into: numbers and booleans (text that numpy would read as numbers
# is left for the encoder to refuse).
_NUMERIC_KINDS = "biuf"


def named_inputs(inputs: Inputs) -> dict[str, np.typing.ArrayLike]:
    """The inputs by name, each with a dtype of its own (a DataFrame, a torch tensor) as its
    numpy array, which is typed as any array is; a lone array is the input named "input"."""
    if isinstance(inputs, Mapping):
        return {name: as_array(value, name) for name, value in inputs.items()}
    return {"input": as_array(inputs, "input")}


def input_kinds(inputs: Inputs) -> dict[str, str]:
    """What each input was given as (see `tessera.tensors.input_kind`), by name."""
    if isinstance(inputs, Mapping):
        return {name: input_kind(value) for name, value in inputs.items()}
    return {"input": input_kind(inputs)}


def untyped(inputs: Mapping[str, np.typing.ArrayLike]) -> bool:
    """Whether an input has no dtype of its own (a list, a scalar), so the signature decides it."""
    return any(not isinstance(value, np.ndarray) for value in inputs.values())


def arrays(inputs: Mapping[str, np.typing.ArrayLike]) -> bool:
    """Whether an input is a numpy array, whose dtype its caller chose."""
    return any(isinstance(value, np.ndarray) for value in inputs.values())


def input_dtypes(signature: common_pb2.Signature) -> dict[str, np.dtype]:
    """Each input's numpy dtype (bfloat16, which numpy lacks, left out)."""
    dtypes = {}
    for spec in signature.inputs:
        name = dtype_name(spec.dtype)
        if name not in ("bfloat16", "unspecified"):
            dtypes[spec.name] = np.dtype(name)
    return dtypes


def as_input_dtypes(
    inputs: Mapping[str, np.typing.ArrayLike], dtypes: Mapping[str, np.dtype]
) -> dict[str, np.typing.ArrayLike]:
    """`inputs` with each list or scalar made an array of its input's dtype; ValueError for
    values that dtype cannot hold (1.5 or 300 for a uint8 input). Arrays are left as they are."""
    typed: dict[str, np.typing.ArrayLike] = {}
    for name, value in inputs.items():
        dtype = dtypes.get(name)
        given = value if isinstance(value, np.ndarray) else np.asarray(value)
        if isinstance(value, np.ndarray) or dtype is None or given.dtype.kind not in _NUMERIC_KINDS:
            typed[name] = value
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            cast = given.astype(dtype)
        # A float input holds any number to its precision (NaN and inf given stay as they are); an
        # int or bool one must hold it exactly.
        if dtype.kind == "f":
            held = bool((np.isfinite(cast) | ~np.isfinite(given)).all())
        else:
            held = np.array_equal(cast, given)
        if not held:
            raise ValueError(
                f"input {name!r}: the model expects {dtype}, which cannot hold the values given "
                f"(as {given.dtype}); send values {dtype} holds"
            )
        typed[name] = cast
    return typed


def recast(
    inputs: Mapping[str, np.typing.ArrayLike],
    sent: Mapping[str, np.typing.ArrayLike],
    typed: Mapping[str, np.typing.ArrayLike],
) -> bool:
    """Whether `typed` (from as_input_dtypes) makes a list or a scalar of `inputs` another dtype
    than it was `sent` as (as numpy makes it, or cast already)."""
    return any(
        not isinstance(value, np.ndarray) and np.asarray(sent[name]).dtype != np.asarray(typed[name]).dtype
        for name, value in inputs.items()
    )


# The cast that makes an input of each kind another dtype, as its caller writes it.
_CASTS = {
    "tensor": "x.to(torch.{})",
    "frame": 'df.astype("{}")',
    "frame-like": "x.to_numpy().astype(np.{})",
    "array": "x.astype(np.{})",
}


def astype_fix(
    inputs: Mapping[str, np.typing.ArrayLike], dtypes: Mapping[str, np.dtype], kinds: Mapping[str, str]
) -> str:
    """The cast that makes each array the dtype the model expects, where one differs, written
    for what the input was given as (`kinds`: a torch tensor, a DataFrame, another frame, a
    numpy array); "" if none differs."""
    casts = [
        f"input {name!r} as " + _CASTS[kinds.get(name) or "array"].format(dtypes[name])
        for name, value in inputs.items()
        if isinstance(value, np.ndarray) and name in dtypes and value.dtype != dtypes[name]
    ]
    if not casts:
        return ""
    sent = ", ".join(casts)
    return f"the SDK casts lists to the model's dtypes, not arrays, frames or tensors: send {sent}"
