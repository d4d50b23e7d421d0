"""The Open Inference Protocol's datatype names and their numpy dtypes, and its BYTES encoding: a
module of its own, so that a JSON parser process (tesserad.api.oip_json_tensors) imports no more
than them."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import ml_dtypes
import numpy as np

from tesserad.dtypes import STRING_DTYPE
from tesserad.errors import InvalidArgument

# The protocol's datatype names.
OIP_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "UINT16": np.dtype(np.uint16),
    "INT16": np.dtype(np.int16),
    "UINT32": np.dtype(np.uint32),
    "INT32": np.dtype(np.int32),
    "UINT64": np.dtype(np.uint64),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    # Triton's strings: each element's bytes, served to onnxruntime as str (UTF-8).
    "BYTES": STRING_DTYPE,
}
OIP_NAME_BY_DTYPE: dict[np.dtype, str] = {dtype: name for name, dtype in OIP_DTYPES.items()}

# Triton's encoding of a BYTES tensor as one blob (raw_input_contents, binary data, shared
# memory): each element, row-major, as a 4-byte little-endian length and then its bytes.
_LENGTH = struct.Struct("<I")


def string_array(elements: Iterable[bytes | str], shape: Sequence[int], where: str) -> np.ndarray:
    """BYTES elements as the object array of str a model takes; InvalidArgument for elements of
    another count than `shape` holds, or bytes that are not UTF-8 (onnxruntime's Python API takes
    text, and would make something else of them)."""
    texts: list[str] = []
    for index, element in enumerate(elements):
        if isinstance(element, str):
            texts.append(element)
            continue
        try:
            texts.append(element.decode())
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"{where} has bytes that are not UTF-8 text in element {index} ({exc.reason} at byte "
                f"{exc.start}: {element[exc.start : exc.start + 4]!r}); tesserad serves strings to "
                "onnxruntime as text: send each element's text encoded as UTF-8"
            ) from None
    count = math.prod(shape)
    if len(texts) != count:
        raise InvalidArgument(
            f"{where} has {len(texts)} BYTES elements, but shape {list(shape)} needs {count}"
        )
    array = np.empty(len(texts), dtype=STRING_DTYPE)
    array[:] = texts
    return array.reshape(shape)


def split_bytes(data: bytes | memoryview, where: str) -> list[bytes]:
    """The elements of a BYTES blob (Triton's encoding); InvalidArgument naming the byte where a
    length or an element runs past its end."""
    elements: list[bytes] = []
    view = memoryview(data)
    offset, end = 0, len(view)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise InvalidArgument(
                f"{where} has BYTES data that ends in the middle of element {len(elements)}'s length: "
                f"{end - offset} bytes at offset {offset}, where a 4-byte little-endian length goes; "
                "each element is its length in 4 bytes, little-endian, then its bytes"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise InvalidArgument(
                f"{where} has BYTES data whose element {len(elements)} says it has {length} bytes at "
                f"offset {offset}, but only {end - offset} follow; each element is its length in 4 "
                "bytes, little-endian, then its bytes"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def string_elements(array: np.ndarray) -> list[bytes]:
    """Each element of a string output, row-major, as its UTF-8 bytes."""
    return [e.encode() if isinstance(e, str) else bytes(e) for e in array.ravel()]


def joined_bytes(array: np.ndarray) -> bytes:
    """A string output as one BYTES blob (Triton's encoding)."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in string_elements(array))
