"""The Open Inference Protocol's HTTP/REST bodies <-> numpy and protobuf messages.

JSON tensors (KServe v2: datatype, shape, row-major `data`) and Triton's binary tensor data
extension: a body of JSON followed by raw little-endian tensors, the JSON's length in the
`Inference-Header-Content-Length` header; an input's `binary_data_size` parameter says how
many of those bytes it takes, in the order of the inputs; an output is answered that way when
its `binary_data` parameter, or the request's `binary_data_output`, says so. tritonclient.http
sends and asks for binary data by default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tesserad.api.convert_tensors import array_from_bytes, output_bytes
from tesserad.api.oip_json_tensors import (
    BINARY_ONLY,
    HEADER_LENGTH,
    LARGEST_DOUBLE,
    NON_FINITE_TAKEN,
    PAST_A_DOUBLE,
    Converted,
    NonFinite,
    json_values,
    parse_document,
    tensor_shape,
)
from tesserad.client_json import parse_client_json
from tesserad.dtypes import STRING_DTYPE
from tesserad.errors import InvalidArgument
from tesserad.serving.oip_dtypes import split_bytes, string_array
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

# How messages name a JSON parameter's kind.
KIND_NAMES = {
    Kind.BOOL: "boolean",
    Kind.INT: "integer",
    Kind.UINT: "integer",
    Kind.DOUBLE: "number",
    Kind.STRING: "string",
    Kind.BYTES: "string",
}
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# How much of a field's name a message shows.
_FIELD_SHOWN = 120


@dataclass(frozen=True)
class InferRequest:
    id: str
    inputs: dict[str, np.ndarray]
    output_names: list[str]
    # Outputs whose binary_data parameter is set; the others follow binary_by_default.
    binary_outputs: dict[str, bool]
    binary_by_default: bool
    parameters: dict[str, Parameter]
    # Outputs to be written into shared memory, and where.
    output_places: dict[str, TensorPlace]


def message_json(message: Message) -> dict[str, Any]:
    """`message` as Triton's HTTP endpoints answer it: protobuf's JSON with field names as in the
    .proto, fields at their defaults included, and 64-bit integers as numbers (protobuf's JSON
    writes them as strings)."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # The generated classes' DESCRIPTOR is upb's Descriptor, which has the same interface.
    _numbers(cast(Descriptor, message.DESCRIPTOR), document)
    return document


def _numbers(descriptor: Descriptor, document: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for item in value.values():
                    _numbers(value_field.message_type, item)
            elif value_field.type in _INT64_TYPES:
                document[field.name] = {k: int(v) for k, v in value.items()}
        elif message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                _numbers(message_type, item)
        elif field.type in _INT64_TYPES:
            document[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


def json_parameters(document: Mapping[str, Any], where: str) -> dict[str, Parameter]:
    raw = document.get("parameters", {})
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}'s parameters must be a JSON object")
    parameters: dict[str, Parameter] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            parameters[key] = Parameter(value, Kind.BOOL)
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                # Triton reads such a number as a double, which no integer parameter takes; here it
                # would pass as a uint64 it does not fit.
                raise InvalidArgument(
                    f"{where}'s parameter {key!r} is {value}, which no 64-bit integer holds; send an "
                    f"integer in {-(2**63)}..{2**64 - 1}"
                )
            parameters[key] = Parameter(value, Kind.INT if value < 2**63 else Kind.UINT)
        elif isinstance(value, NonFinite):
            raise InvalidArgument(
                f"{where}'s parameter {key!r} is {value.text}, which is no JSON number; send a finite "
                f"number ({NON_FINITE_TAKEN}; binary data carries any value)"
            )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(
                    f"{where}'s parameter {key!r} is {PAST_A_DOUBLE}; send a number within ±{LARGEST_DOUBLE}"
                )
            parameters[key] = Parameter(value, Kind.DOUBLE)
        elif isinstance(value, str):
            parameters[key] = Parameter(value, Kind.STRING)
        else:
            # As Triton: a parameter has one of the protocol's kinds; taking a list or an object
            # would let a request through that Triton refuses, its value read by nothing.
            kind = "null" if value is None else "a list" if isinstance(value, list) else "an object"
            raise InvalidArgument(
                f"{where}'s parameter {key!r} is {kind}; a parameter's value must be a boolean, "
                "integer, number or string"
            )
    return parameters


def _flag(parameters: Mapping[str, Parameter], key: str, where: str) -> bool | None:
    parameter = parameters.get(key)
    if parameter is None:
        return None
    if parameter.kind is not Kind.BOOL:
        raise InvalidArgument(f"{where}'s parameter {key!r} must be a boolean")
    return bool(parameter.value)


def split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """(the JSON document, the binary data after it)."""
    length = json_length(body, header_length)
    return parse_document(body[:length], header_length is None), body[length:]


def json_length(body: bytes, header_length: str | None) -> int:
    """How many bytes at the start of `body` are its JSON: `header_length` (the
    Inference-Header-Content-Length header) checked against it, or all of it without one."""
    if header_length is None:
        return len(body)
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidArgument(
            f"header {HEADER_LENGTH} is {header_length[:40]!r}; it must be the length in bytes of "
            f"the JSON at the start of the body (the body has {len(body)} bytes)"
        )
    return length


def settings_object(body: bytes) -> dict[str, object]:
    """A body that is no inference request (settings, the repository's, shared memory's) as a JSON
    object; an empty body is an empty object. None of their fields takes NaN, Infinity, -Infinity
    or a number past a double's range (which the parser would read as infinite): InvalidArgument
    naming the field that holds one."""
    if not body.strip():
        return {}
    # Not split_body: binary tensor data, and its hints, are for inference requests alone.
    document = parse_client_json(
        body,
        "the request body",
        "send a JSON object of the fields the protocol names for this request",
        parse_constant=NonFinite,
    )
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object")
    found = _non_finite(document)
    if found is not None:
        # A field nested deep makes a long name: its start says where.
        field = found[0][:_FIELD_SHOWN]
        if isinstance(found[1], NonFinite):
            raise InvalidArgument(
                f"the request body's field {field!r} is {found[1].text}, which is no JSON number; send "
                f"a finite number ({NON_FINITE_TAKEN})"
            )
        raise InvalidArgument(
            f"the request body's field {field!r} is {PAST_A_DOUBLE}; send a number within ±{LARGEST_DOUBLE}"
        )
    return document


def _non_finite(document: dict[str, Any]) -> tuple[str, object] | None:
    """The first field of `document` (its name, as `a.b[2]`) holding NaN, Infinity, -Infinity or
    a number past a double's range, with its value; None when none does. Iterators on a stack,
    not recursion: a body nested as deep as the parser goes passes it, and would then exhaust the
    interpreter's recursion; nor a name made per value, for a body of millions of them."""
    path: list[str | int] = []
    levels: list[Iterator[tuple[str | int, Any]]] = [iter(document.items())]
    while levels:
        step = next(levels[-1], None)
        if step is None:
            levels.pop()
            if path:
                path.pop()
            continue
        key, value = step
        if isinstance(value, dict):
            path.append(key)
            levels.append(iter(value.items()))
        elif isinstance(value, list):
            path.append(key)
            levels.append(enumerate(value))
        elif isinstance(value, NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
            name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in [*path, key])
            return name.removeprefix("."), value
    return None


def reads_shared_memory(document: Any) -> bool:
    """Whether an input of the request `document` names a shared-memory region (a malformed one:
    False, and `infer_request` says what is wrong)."""
    if not isinstance(document, dict) or not isinstance(tensors := document.get("inputs"), list):
        return False
    return any(
        isinstance(tensor, dict)
        and isinstance(parameters := tensor.get("parameters"), dict)
        and SHM_REGION in parameters
        for tensor in tensors
    )


def declared_shapes(document: Any) -> dict[str, list[int]]:
    """The shapes the inputs of the request `document` say they have, of those that say one as a
    list of whole numbers (the others are refused once the request is read)."""
    if not isinstance(document, dict) or not isinstance(tensors := document.get("inputs"), list):
        return {}
    return {
        tensor["name"]: shape
        for tensor in tensors
        if isinstance(tensor, dict)
        and isinstance(tensor.get("name"), str)
        and isinstance(shape := tensor.get("shape"), list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    }


def infer_request(document: Any, binary: bytes, lease: Lease) -> InferRequest:
    """The request; inputs in shared memory are read through `lease`, and the regions of outputs
    to be written there are held in it."""
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object with 'inputs'")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("the request's id must be a string")
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise InvalidArgument("the request needs 'inputs': a list of tensors, each a JSON object")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("every input needs a name (a string)")
        where = f"input {name!r}"
        if name in inputs:
            raise InvalidArgument(f"{where} is given twice; send each input once")
        parameters = json_parameters(tensor, where)
        datatype = tensor.get("datatype")
        # A list or object there is unhashable: `in` would raise TypeError.
        if not isinstance(datatype, str) or datatype not in OIP_DTYPES:
            raise unserved_datatype(where, datatype)
        shape = tensor_shape(tensor, where)
        size = parameters.get("binary_data_size")
        place = tensor_place(parameters, where, KIND_NAMES) if parameters else None
        if place is not None:
            if size is not None or "data" in tensor:
                raise InvalidArgument(
                    f"{where} has {'data' if size is None else 'binary_data_size'} as well as "
                    "shared_memory_region; send its data in one of them"
                )
            dtype = OIP_DTYPES[datatype]
            if dtype == STRING_DTYPE:
                # A BYTES tensor's size is its encoding's, which only its bytes tell.
                data = lease.read(place, place.byte_size, where)
                inputs[name] = string_array(split_bytes(data, where), shape, where)
            else:
                data = lease.read(place, math.prod(shape) * dtype.itemsize, where)
                inputs[name] = array_from_bytes(data, dtype, shape, name, datatype)
        elif size is not None:
            if size.kind is not Kind.INT or not isinstance(size.value, int) or size.value < 0:
                raise InvalidArgument(
                    f"{where}'s parameter 'binary_data_size' must be an integer of at least 0"
                )
            if "data" in tensor:
                raise InvalidArgument(
                    f"{where} has data as well as binary_data_size; send its data in one of them"
                )
            if offset + size.value > len(binary):
                raise InvalidArgument(
                    f"{where} takes {size.value} bytes of binary data from offset {offset}, but the body "
                    f"has {len(binary)} bytes after the JSON (header {HEADER_LENGTH})"
                )
            chunk = binary[offset : offset + size.value]
            if datatype == "BYTES":
                inputs[name] = string_array(split_bytes(chunk, where), shape, where)
            else:
                inputs[name] = array_from_bytes(chunk, OIP_DTYPES[datatype], shape, name, datatype)
            offset += size.value
        elif "data" in tensor:
            if datatype in BINARY_ONLY:
                raise InvalidArgument(
                    f"{where} is {datatype}, which JSON data cannot carry (as in Triton); send it as "
                    "binary data: its bytes after the JSON, with the parameter binary_data_size "
                    "(tritonclient: set_data_from_numpy(..., binary_data=True))"
                )
            data = tensor["data"]
            inputs[name] = (
                data.result() if isinstance(data, Converted) else json_values(data, datatype, shape, where)
            )
        else:
            raise InvalidArgument(
                f"{where} has no data: send its {math.prod(shape)} values of shape {list(shape)} in "
                "data, or as binary data with the parameter binary_data_size"
            )
    if offset != len(binary):
        raise InvalidArgument(
            f"the body has {len(binary)} bytes of binary data after the JSON, but the inputs' "
            f"binary_data_size parameters take {offset}"
        )
    output_names: list[str] = []
    binary_outputs: dict[str, bool] = {}
    output_places: dict[str, TensorPlace] = {}
    requested = document.get("outputs", [])
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise InvalidArgument("the request's 'outputs' must be a list of JSON objects, each with a name")
    for output in requested:
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("every requested output needs a name (a string)")
        if name in output_names:
            raise InvalidArgument(f"output {name!r} is requested twice; request each output once")
        where = f"output {name!r}"
        parameters = json_parameters(output, where)
        refuse_classification(parameters, name)
        place = tensor_place(parameters, where, KIND_NAMES) if parameters else None
        if place is not None:
            lease.reserve(place, where)
            output_places[name] = place
        flag = _flag(parameters, "binary_data", f"output {name!r}")
        if flag is not None:
            binary_outputs[name] = flag
        output_names.append(name)
    parameters = json_parameters(document, "the request")
    return InferRequest(
        id=request_id,
        inputs=inputs,
        output_names=output_names,
        binary_outputs=binary_outputs,
        binary_by_default=bool(_flag(parameters, "binary_data_output", "the request")),
        parameters=parameters,
        output_places=output_places,
    )


def _json_data(name: str, array: np.ndarray) -> list[Any]:
    datatype = OIP_NAME_BY_DTYPE[array.dtype]
    if datatype in BINARY_ONLY:
        raise InvalidArgument(
            f"output {name!r} is {datatype}, which JSON data cannot carry (as in Triton); ask for it as "
            "binary data: the output's parameter binary_data: true, or the request's "
            "binary_data_output: true (tritonclient: InferRequestedOutput(..., binary_data=True))"
        )
    values: list[Any] = array.ravel().tolist()
    return values


def infer_response(
    model: str, version: int, request: InferRequest, outputs: Mapping[str, np.ndarray], lease: Lease
) -> tuple[bytes, int | None]:
    """(the body, the length of its JSON when binary data follows it). Outputs to be written into
    shared memory are, through `lease`; the body says where, with no data of theirs."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": OIP_NAME_BY_DTYPE[array.dtype],
            "shape": list(array.shape),
        }
        place = request.output_places.get(name) if request.output_places else None
        if place is not None:
            raw = output_bytes(array)
            lease.write(place, raw, f"output {name!r}")
            tensor["parameters"] = place_parameters(place, len(raw))
        elif request.binary_outputs.get(name, request.binary_by_default):
            raw = output_bytes(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _json_data(name, array)
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id:
        document["id"] = request.id
    document["outputs"] = tensors
    header = json.dumps(document).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
