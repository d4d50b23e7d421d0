"""The element types of tessera.v1.DataType, by their numpy names: one table for every domain
package that checks a dtype (signatures, dataset arrays, training targets), and the most
dimensions an array of them can have."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tesserad.errors import InvalidArgument

INTEGER_DTYPES: frozenset[str] = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"}
)

# In the order of the DataType enum.
TENSOR_DTYPES: tuple[str, ...] = (
    "bool",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "string",
)
# Text: ONNX's tensor(string), the Open Inference Protocol's BYTES. Served as numpy object arrays
# of str (onnxruntime's string tensors); no dataset array or tessera.v1.Tensor holds it.
STRING = "string"
STRING_DTYPE = np.dtype(object)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a TENSOR_DTYPES name."""
    return STRING_DTYPE if name == STRING else np.dtype(name)


# numpy 2's NPY_MAXDIMS (pyproject requires numpy>=2): it makes no array of more dimensions, and
# answers a shape past it with a ValueError that would reach a client as an internal error.
MAX_ARRAY_DIMS = 64


def too_many_dims(shape: Sequence[int], where: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where} has {len(shape)} dimensions; an array has at most {MAX_ARRAY_DIMS}: send the shape its data has"
    )


# The most bytes numpy lets an array's dimensions span, even an array with a dimension of 0.
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max


def refuse_unmakeable_empty(shape: Sequence[int], dtype: np.dtype, where: str, dtype_name: str) -> None:
    """For a `shape` of no elements: InvalidArgument when its other dimensions span more bytes
    than numpy makes an array of (its ValueError would be an internal error)."""
    spanned = math.prod(d for d in shape if d) * dtype.itemsize
    if spanned > _MAX_ARRAY_BYTES:
        raise InvalidArgument(
            f"{where} has shape {list(shape)}: its dimensions other than 0 multiply to {spanned} bytes of "
            f"{dtype_name}, more than an array can span ({_MAX_ARRAY_BYTES} bytes), though it holds no "
            "values; send the shape its data has"
        )
