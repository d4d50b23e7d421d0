"""numpy arrays <-> `tessera.v1.Tensor` (dtype + shape + raw little-endian bytes, row-major)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.v1 import common_pb2

_DTYPE_BY_ENUM: dict[int, str] = {
    common_pb2.DATA_TYPE_BOOL: "bool",
    common_pb2.DATA_TYPE_UINT8: "uint8",
    common_pb2.DATA_TYPE_INT8: "int8",
    common_pb2.DATA_TYPE_UINT16: "uint16",
    common_pb2.DATA_TYPE_INT16: "int16",
    common_pb2.DATA_TYPE_UINT32: "uint32",
    common_pb2.DATA_TYPE_INT32: "int32",
    common_pb2.DATA_TYPE_UINT64: "uint64",
    common_pb2.DATA_TYPE_INT64: "int64",
    common_pb2.DATA_TYPE_FLOAT16: "float16",
    common_pb2.DATA_TYPE_FLOAT32: "float32",
    common_pb2.DATA_TYPE_FLOAT64: "float64",
}
_ENUM_BY_DTYPE: dict[str, common_pb2.DataType.ValueType] = {
    name: common_pb2.DataType.ValueType(number) for number, name in _DTYPE_BY_ENUM.items()
}
_BFLOAT16 = "bfloat16"


def dtype_name(data_type: int) -> str:
    """numpy's name for a DataType enum value ("float32", ..., "bfloat16")."""
    if data_type == common_pb2.DATA_TYPE_BFLOAT16:
        return _BFLOAT16
    return _DTYPE_BY_ENUM.get(data_type, "unspecified")


def as_array(value: Any) -> Any:
    """A value with a dtype of its own as the numpy array of it, sent as a numpy array is (in
    that dtype, never cast): a torch tensor (detached, on the CPU), a pandas DataFrame or
    Series, a numpy scalar; anything else (a list, a scalar) as it is."""
    if isinstance(value, np.ndarray):
        return value
    if callable(getattr(value, "detach", None)) and callable(getattr(value, "numpy", None)):
        return value.detach().cpu().numpy()
    if callable(getattr(value, "to_numpy", None)) and hasattr(value, "dtypes"):
        return value.to_numpy()
    if hasattr(value, "dtype") and hasattr(value, "__array__"):
        return np.asarray(value)
    return value


def to_tensor(name: str, array: np.typing.ArrayLike) -> common_pb2.Tensor:
    """Encode an array as a Tensor; ValueError for dtypes the API does not carry."""
    array = np.asarray(as_array(array))
    if array.dtype.name == _BFLOAT16:  # ml_dtypes.bfloat16, when the caller uses it
        data_type = common_pb2.DATA_TYPE_BFLOAT16
    else:
        data_type = _ENUM_BY_DTYPE.get(array.dtype.name, common_pb2.DATA_TYPE_UNSPECIFIED)
        if data_type == common_pb2.DATA_TYPE_UNSPECIFIED:
            raise ValueError(
                f"input {name!r}: dtype {array.dtype} cannot be sent; "
                f"use one of {', '.join(sorted([f'{_BFLOAT16} (ml_dtypes)', *_ENUM_BY_DTYPE]))}"
            )
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return common_pb2.Tensor(
        name=name, dtype=data_type, shape=list(array.shape), data=np.ascontiguousarray(array).tobytes()
    )


def from_tensor(tensor: common_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor into a numpy array of its dtype and shape (a copy the caller owns)."""
    if tensor.dtype == common_pb2.DATA_TYPE_BFLOAT16:
        raw = np.frombuffer(tensor.data, dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(tuple(tensor.shape))
    name = _DTYPE_BY_ENUM.get(tensor.dtype)
    if name is None:
        raise ValueError(f"tensor {tensor.name!r} has no dtype the SDK knows ({tensor.dtype})")
    dtype = np.dtype(name).newbyteorder("<")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))
    return array.astype(np.dtype(name), copy=True)


def to_tensors(inputs: Mapping[str, np.typing.ArrayLike] | np.typing.ArrayLike) -> list[common_pb2.Tensor]:
    """A name -> array mapping as Tensors; a lone array is sent as the input named "input"."""
    if isinstance(inputs, Mapping):
        return [to_tensor(name, array) for name, array in inputs.items()]
    return [to_tensor("input", inputs)]
