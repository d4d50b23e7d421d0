"""Tensors <-> numpy: tessera.v1.Tensor (dtype + shape + raw little-endian bytes) and the Open
Inference Protocol's tensors (datatype string, typed contents or raw bytes)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence

import ml_dtypes
import numpy as np

from tessera.v1 import common_pb2
from tesserad.dtypes import MAX_ARRAY_DIMS, STRING_DTYPE, refuse_unmakeable_empty, too_many_dims
from tesserad.errors import InvalidArgument
from tesserad.oip import grpc_service_pb2 as oip
from tesserad.serving.oip_dtypes import joined_bytes, split_bytes, string_array
from tesserad.serving.open_inference import (
    OIP_DTYPES,
    OIP_NAME_BY_DTYPE,
    SHM_REGION,
    Kind,
    Parameter,
    place_parameters,
    refuse_classification,
    tensor_place,
    unserved_datatype,
)
from tesserad.serving.shared_memory import Lease, TensorPlace
from tesserad.serving.signature import STRINGS_ELSEWHERE, Signature, TensorSpec

DTYPE_BY_PROTO: dict[common_pb2.DataType.ValueType, np.dtype] = {
    common_pb2.DATA_TYPE_BOOL: np.dtype(np.bool_),
    common_pb2.DATA_TYPE_UINT8: np.dtype(np.uint8),
    common_pb2.DATA_TYPE_INT8: np.dtype(np.int8),
    common_pb2.DATA_TYPE_UINT16: np.dtype(np.uint16),
    common_pb2.DATA_TYPE_INT16: np.dtype(np.int16),
    common_pb2.DATA_TYPE_UINT32: np.dtype(np.uint32),
    common_pb2.DATA_TYPE_INT32: np.dtype(np.int32),
    common_pb2.DATA_TYPE_UINT64: np.dtype(np.uint64),
    common_pb2.DATA_TYPE_INT64: np.dtype(np.int64),
    common_pb2.DATA_TYPE_FLOAT16: np.dtype(np.float16),
    common_pb2.DATA_TYPE_BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    common_pb2.DATA_TYPE_FLOAT32: np.dtype(np.float32),
    common_pb2.DATA_TYPE_FLOAT64: np.dtype(np.float64),
}
# Strings are in signatures only: no Tensor carries them (tensor_to_array refuses them).
PROTO_BY_DTYPE: dict[np.dtype, common_pb2.DataType.ValueType] = {
    **{dtype: proto for proto, dtype in DTYPE_BY_PROTO.items()},
    STRING_DTYPE: common_pb2.DATA_TYPE_STRING,
}
_PROTO_DTYPE_NAMES: dict[common_pb2.DataType.ValueType, str] = {
    value: name for name, value in common_pb2.DataType.items()
}
# Tensors travel little-endian; on a little-endian host (x86, arm64) the bytes are used as they
# are, with no byte-order dtype built and no astype/copy per request.
_NATIVE_IS_WIRE = sys.byteorder == "little"

# Which typed-contents field carries each Open Inference Protocol datatype.
_OIP_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "UINT64": "uint64_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# InferParameter's oneof fields, as the protocol's kinds and as messages name them.
_KINDS = {
    "bool_param": Kind.BOOL,
    "int64_param": Kind.INT,
    "uint64_param": Kind.UINT,
    "double_param": Kind.DOUBLE,
    "string_param": Kind.STRING,
    "bytes_param": Kind.BYTES,
}
KIND_NAMES = {kind: field for field, kind in _KINDS.items()}


def parameters_of(
    parameters: Mapping[str, oip.InferParameter] | Mapping[str, oip.ModelRepositoryParameter],
) -> dict[str, Parameter]:
    """A request's or a tensor's parameters, as the protocol's transports share them."""
    converted: dict[str, Parameter] = {}
    for key, parameter in parameters.items():
        field = parameter.WhichOneof("parameter_choice")
        converted[key] = (
            Parameter(None, None) if field is None else Parameter(getattr(parameter, field), _KINDS[field])
        )
    return converted


# These run on every request: messages are only formatted for the error.


def _shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if len(shape) > MAX_ARRAY_DIMS:
        raise too_many_dims(shape, f"input {name!r}")
    if min(shape, default=0) < 0:
        raise InvalidArgument(f"input {name!r} has shape {list(shape)}; dimensions cannot be negative")
    return tuple(shape)


def array_from_bytes(
    data: bytes, dtype: np.dtype, shape: tuple[int, ...], name: str, dtype_name: str
) -> np.ndarray:
    """`data` as an array of `shape`, sharing its memory (read-only, as the bytes are)."""
    # math.prod, not np.prod: ~20 us less per request on small shapes (measured).
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"input {name!r} has {len(data)} bytes of data, but shape {list(shape)} of {dtype_name} "
            f"needs {expected} ({dtype.itemsize} bytes per element, little-endian)"
        )
    if not expected:
        refuse_unmakeable_empty(shape, dtype, f"input {name!r}", dtype_name)
    if _NATIVE_IS_WIRE:
        # One array over the bytes, not frombuffer then reshape (two arrays): 0.5 us against 0.85.
        return np.ndarray(shape, dtype, data)
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def tensor_to_array(tensor: common_pb2.Tensor) -> np.ndarray:
    name = tensor.name
    proto_dtype = tensor.dtype
    dtype = DTYPE_BY_PROTO.get(proto_dtype)
    if proto_dtype == common_pb2.DATA_TYPE_STRING:
        raise InvalidArgument(f"input {name!r} has dtype DATA_TYPE_STRING; {STRINGS_ELSEWHERE}")
    if dtype is None:
        raise InvalidArgument(
            f"input {name!r} has no dtype; set dtype to one of the DataType values (e.g. DATA_TYPE_FLOAT32)"
        )
    return array_from_bytes(
        tensor.data, dtype, _shape(tensor.shape, name), name, _PROTO_DTYPE_NAMES[proto_dtype]
    )


def tensors_to_arrays(tensors: Sequence[common_pb2.Tensor]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name in arrays:
            raise InvalidArgument(f"input {tensor.name!r} is given twice; send each input once")
        arrays[tensor.name] = tensor_to_array(tensor)
    return arrays


def little_endian_bytes(array: np.ndarray) -> bytes:
    if _NATIVE_IS_WIRE and array.dtype.isnative:
        return array.tobytes()  # C order, whatever the array's layout
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def array_to_tensor(name: str, array: np.ndarray) -> common_pb2.Tensor:
    tensor = common_pb2.Tensor()
    fill_tensor(tensor, name, array)
    return tensor


def fill_tensor(tensor: common_pb2.Tensor, name: str, array: np.ndarray) -> None:
    """Write `array` into `tensor` in place, e.g. one made by a response's `outputs.add()`
    (building a Tensor and passing it to the response copies it)."""
    tensor.name = name
    tensor.dtype = PROTO_BY_DTYPE[array.dtype]
    tensor.shape.extend(array.shape)
    tensor.data = little_endian_bytes(array)


def spec_to_proto(spec: TensorSpec) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=spec.name, dtype=PROTO_BY_DTYPE[spec.dtype], shape=spec.shape)


def signature_to_proto(signature: Signature) -> common_pb2.Signature:
    return common_pb2.Signature(
        inputs=[spec_to_proto(s) for s in signature.inputs],
        outputs=[spec_to_proto(s) for s in signature.outputs],
    )


def reads_shared_memory(request: oip.ModelInferRequest) -> bool:
    """Whether an input of `request` names a shared-memory region."""
    return any(SHM_REGION in tensor.parameters for tensor in request.inputs)


def oip_inputs_to_arrays(request: oip.ModelInferRequest, lease: Lease) -> dict[str, np.ndarray]:
    """Inputs from shared memory (read through `lease`), typed `contents` or, when given,
    `raw_input_contents` (one per input not in shared memory, in order, as tritonclient sends)."""
    places = {
        index: place
        for index, tensor in enumerate(request.inputs)
        if tensor.parameters
        and (place := tensor_place(parameters_of(tensor.parameters), f"input {tensor.name!r}", KIND_NAMES))
        is not None
    }
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs) - len(places):
        if places:
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs) - len(places)} "
                f"inputs not in shared memory; give one per input not in shared memory, in the order "
                "of inputs"
            )
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the order of inputs"
        )
    arrays: dict[str, np.ndarray] = {}
    raw_index = 0
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}"
        if tensor.name in arrays:
            raise InvalidArgument(f"{where} is given twice; send each input once")
        dtype = OIP_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise unserved_datatype(where, tensor.datatype)
        shape = _shape(tensor.shape, tensor.name)
        place = places.get(index) if places else None
        if place is not None:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"{where} has contents as well as shared_memory_region; send its data in one of them"
                )
            if dtype == STRING_DTYPE:
                # A BYTES tensor's size is its encoding's, which only its bytes tell.
                data = lease.read(place, place.byte_size, where)
                arrays[tensor.name] = string_array(split_bytes(data, where), shape, where)
            else:
                data = lease.read(place, math.prod(shape) * dtype.itemsize, where)
                arrays[tensor.name] = array_from_bytes(data, dtype, shape, tensor.name, tensor.datatype)
            continue
        if raw:
            if tensor.HasField("contents"):
                # As Triton: one of the two would be ignored.
                raise InvalidArgument(
                    f"{where} has contents as well as raw_input_contents; send each input's data "
                    "in one of them"
                )
            if dtype == STRING_DTYPE:
                arrays[tensor.name] = string_array(split_bytes(raw[raw_index], where), shape, where)
            else:
                arrays[tensor.name] = array_from_bytes(
                    raw[raw_index], dtype, shape, tensor.name, tensor.datatype
                )
            raw_index += 1
            continue
        field = _OIP_CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise InvalidArgument(f"{where}: {tensor.datatype} travels only in raw_input_contents")
        others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
        if others:
            # Values of another type than the datatype says: read as it says, they would be taken
            # for no data, or (beside values in its own field) be ignored.
            raise InvalidArgument(
                f"{where} is {tensor.datatype}, whose values go in contents.{field}, but it has values "
                f"in contents.{others[0]}; send the datatype its values are, or send them in "
                f"contents.{field}"
            )
        values = getattr(tensor.contents, field)
        if len(values) != math.prod(shape):
            if not values:
                raise InvalidArgument(
                    f"{where} has no data: send its {math.prod(shape)} values of shape {list(shape)} "
                    f"in raw_input_contents (one entry per input, in order) or in contents.{field}"
                )
            raise InvalidArgument(
                f"{where} has {len(values)} values in contents.{field}, but shape {list(shape)} "
                f"needs {math.prod(shape)}"
            )
        if not values:
            refuse_unmakeable_empty(shape, dtype, where, tensor.datatype)
        if dtype == STRING_DTYPE:
            arrays[tensor.name] = string_array(values, shape, where)
        elif tensor.datatype in _NARROWER_THAN_CONTENTS:
            arrays[tensor.name] = _narrowed(values, dtype, where, field, tensor.datatype).reshape(shape)
        else:
            arrays[tensor.name] = np.asarray(values, dtype=dtype).reshape(shape)
    return arrays


# Integer types whose typed contents travel as 32-bit values (int_contents, uint_contents).
_NARROWER_THAN_CONTENTS = frozenset({"INT8", "INT16", "UINT8", "UINT16"})


def _narrowed(values: Sequence[int], dtype: np.dtype, where: str, field: str, name: str) -> np.ndarray:
    """`values` as `dtype`; InvalidArgument for one out of its range, which numpy would wrap
    around (as Triton keeps the low bytes): the model would be answering another number."""
    wide = np.asarray(values, dtype=np.int64)
    limits = np.iinfo(dtype)
    outside = wide[(wide < limits.min) | (wide > limits.max)]
    if outside.size:
        raise InvalidArgument(
            f"{where} has {outside[0]} in contents.{field}, outside {name}'s range "
            f"{limits.min}..{limits.max}; every value must fit the datatype the input is sent as"
        )
    return wide.astype(dtype)


def oip_requested_outputs(
    request: oip.ModelInferRequest, lease: Lease
) -> tuple[list[str], dict[str, TensorPlace]]:
    """The outputs a request names, in its order (none: every output), and where in shared memory
    those to be written there go (their regions held in `lease` from now on)."""
    names: list[str] = []
    places: dict[str, TensorPlace] = {}
    for requested in request.outputs:
        name = requested.name
        if name in names:
            raise InvalidArgument(f"output {name!r} is requested twice; request each output once")
        if requested.parameters:
            refuse_classification(requested.parameters, name)
            where = f"output {name!r}"
            place = tensor_place(parameters_of(requested.parameters), where, KIND_NAMES)
            if place is not None:
                lease.reserve(place, where)
                places[name] = place
        names.append(name)
    return names, places


def oip_output(name: str, array: np.ndarray) -> tuple[oip.ModelInferResponse.InferOutputTensor, bytes]:
    """An output's metadata and its raw bytes (Triton answers in raw_output_contents)."""
    tensor = oip.ModelInferResponse.InferOutputTensor(
        name=name, datatype=OIP_NAME_BY_DTYPE[array.dtype], shape=array.shape
    )
    return tensor, output_bytes(array)


def output_bytes(array: np.ndarray) -> bytes:
    """An output's bytes as the protocol sends them raw: BYTES in Triton's length-prefixed
    encoding (what tritonclient decodes), others little-endian."""
    return joined_bytes(array) if array.dtype == STRING_DTYPE else little_endian_bytes(array)


def oip_shared_output(
    name: str, array: np.ndarray, place: TensorPlace, lease: Lease
) -> oip.ModelInferResponse.InferOutputTensor:
    """An output written into shared memory: its metadata, with parameters that say where."""
    data = output_bytes(array)
    lease.write(place, data, f"output {name!r}")
    tensor = oip.ModelInferResponse.InferOutputTensor(
        name=name, datatype=OIP_NAME_BY_DTYPE[array.dtype], shape=array.shape
    )
    for key, value in place_parameters(place, len(data)).items():
        if isinstance(value, str):
            tensor.parameters[key].string_param = value
        else:
            tensor.parameters[key].int64_param = value
    return tensor
