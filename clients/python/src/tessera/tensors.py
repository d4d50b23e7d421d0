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
# numpy dtype kinds the API carries: bool, int, uint, float.
_NUMBER_KINDS = "biuf"


def dtype_name(data_type: int) -> str:
    """numpy's name for a DataType enum value ("float32", ..., "bfloat16")."""
    if data_type == common_pb2.DATA_TYPE_BFLOAT16:
        return _BFLOAT16
    if data_type == common_pb2.DATA_TYPE_STRING:
        return "string"
    return _DTYPE_BY_ENUM.get(data_type, "unspecified")


def input_kind(value: Any) -> str:
    """What an input was given as, for the cast its caller can make: "tensor" (torch), "frame"
    (a pandas DataFrame or Series), "frame-like" (another with `to_numpy()`: a polars frame,
    say), "array" (numpy) or "" (a list, a scalar)."""
    if isinstance(value, np.ndarray):
        return "array"
    if callable(getattr(value, "detach", None)) and callable(getattr(value, "numpy", None)):
        return "tensor"
    if callable(getattr(value, "to_numpy", None)):
        # pandas' columns are read one by one (by position: .iloc); another frame's array is
        # whatever its to_numpy() gives, sent as an array is.
        return "frame" if hasattr(value, "iloc") else "frame-like"
    if hasattr(value, "dtype") and hasattr(value, "__array__"):
        return "array"
    return ""


def as_array(value: Any, name: str) -> Any:
    """A value with a dtype of its own as the numpy array of it, sent as a numpy array is (in
    that dtype, never cast): a torch tensor (detached, on the CPU), a pandas DataFrame or
    Series, another frame's `to_numpy()`, a numpy scalar; anything else (a list, a scalar) as it
    is. ValueError, naming input `name` (and the column), for a tensor or a pandas frame that no
    array of a dtype the API carries holds as it is."""
    kind = input_kind(value)
    if kind == "tensor":
        return _tensor_array(value, name)
    if kind == "frame":
        return _frame_array(value, name)
    if kind == "frame-like":
        return np.asarray(value.to_numpy())
    if kind == "array":
        return np.asarray(value)
    return value


def _tensor_array(tensor: Any, name: str) -> np.ndarray:
    if str(tensor.dtype) == "torch.bfloat16":
        # numpy has no bfloat16: ml_dtypes adds one, and the SDK does not depend on it.
        raise ValueError(
            f"input {name!r}: a torch bfloat16 tensor has no numpy dtype to send it as; send "
            "x.to(torch.float32), or for bfloat16 (with ml_dtypes installed) "
            "x.detach().cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16)"
        )
    # A conjugate or negated view (x.conj().imag) keeps its sign unapplied: numpy() refuses it.
    resolved = tensor.detach().resolve_conj().resolve_neg().cpu()
    try:
        array: np.ndarray = resolved.numpy()
    except TypeError:
        raise ValueError(
            f"input {name!r}: a torch {str(tensor.dtype).removeprefix('torch.')} tensor has no numpy "
            "dtype to send it as; send x.to(torch.float32) or another dtype the model takes"
        ) from None
    return array


def _frame_array(frame: Any, name: str) -> np.ndarray:
    """A DataFrame's (or a Series') values as one array of its columns' one dtype."""
    if hasattr(frame, "columns"):
        columns = [
            (f"column {label!r}", frame.iloc[:, i], f"df[{label!r}]") for i, label in enumerate(frame.columns)
        ]
    else:
        columns = [("the Series" if frame.name is None else f"the Series {frame.name!r}", frame, "s")]
    dtypes = {where: _column_dtype(values, where, code, name) for where, values, code in columns}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{where.removeprefix('column ')} {dtype}" for where, dtype in dtypes.items())
        raise ValueError(
            f"input {name!r}: the frame's columns have different dtypes ({listed}), and one array "
            'has one: make them one, df.astype("float32") for a float32 input'
        )
    dtype = next(iter(dtypes.values()), None)
    array: np.ndarray = frame.to_numpy(dtype=dtype)
    return array


def _column_dtype(values: Any, where: str, code: str, name: str) -> np.dtype:
    """The numpy dtype a column is sent as; ValueError where it holds no numbers (text, times,
    categories) or misses values (pandas' <NA>) that an array of its numbers cannot hold."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in _NUMBER_KINDS:
        return dtype
    # pandas' nullable Int64, Float32, boolean, ...: their numbers as numpy's, where none is <NA>.
    numbers = getattr(dtype, "numpy_dtype", None)
    if isinstance(numbers, np.dtype) and numbers.kind in _NUMBER_KINDS:
        if bool(values.isna().any()):
            raise ValueError(
                f"input {name!r}: {where} ({dtype}) has missing values (<NA>), which a {numbers} "
                f"array cannot hold; fill them ({code}.fillna(0)) or drop those rows"
            )
        return numbers
    raise ValueError(
        f"input {name!r}: {where} is {dtype}, not numbers, and cannot be sent; make it numbers "
        f'({code}.astype("float32"), or {code}.cat.codes for a category)'
    )


def to_tensor(name: str, array: np.typing.ArrayLike) -> common_pb2.Tensor:
    """Encode an array as a Tensor; ValueError for dtypes the API does not carry."""
    array = np.asarray(as_array(array, name))
    if array.dtype.name == _BFLOAT16:  # ml_dtypes.bfloat16, when the caller uses it
        data_type = common_pb2.DATA_TYPE_BFLOAT16
    else:
        data_type = _ENUM_BY_DTYPE.get(array.dtype.name, common_pb2.DATA_TYPE_UNSPECIFIED)
        if data_type == common_pb2.DATA_TYPE_UNSPECIFIED:
            sendable = ", ".join(sorted([f"{_BFLOAT16} (ml_dtypes)", *_ENUM_BY_DTYPE]))
            if array.dtype.kind in "USO":
                # A Tensor holds fixed-size numbers; the daemon serves text over the Open Inference Protocol.
                raise ValueError(
                    f"input {name!r}: dtype {array.dtype} cannot be sent: it is text or objects, and a "
                    f"tessera Tensor carries numbers ({sendable}); call a model that takes strings "
                    "through the Open Inference Protocol on the same port (tritonclient, datatype BYTES)"
                )
            raise ValueError(f"input {name!r}: dtype {array.dtype} cannot be sent; use one of {sendable}")
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
