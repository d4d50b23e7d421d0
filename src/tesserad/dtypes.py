"""The element types of tessera.v1.DataType, by their numpy names: one table for every domain
package that checks a dtype (signatures, dataset arrays, training targets), and the most
dimensions an array of them can have."""

from __future__ import annotations

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
)

# numpy 2's NPY_MAXDIMS (pyproject requires numpy>=2): it makes no array of more dimensions, and
# answers a shape past it with a ValueError that would reach a client as an internal error.
MAX_ARRAY_DIMS = 64
