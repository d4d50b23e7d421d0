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
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tesserad.api.convert_tensors import (
    array_from_bytes,
    little_endian_bytes,
    refuse_unmakeable_empty,
    too_many_dims,
)
from tesserad.client_json import parse_client_json
from tesserad.dtypes import MAX_ARRAY_DIMS
from tesserad.errors import InvalidArgument
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

HEADER_LENGTH = "Inference-Header-Content-Length"
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
_FLOAT_NAMES = frozenset({"FP32", "FP64"})
# Where NaN, Infinity and -Infinity, which JSON lacks, are taken: Triton parses request bodies with
# rapidjson's kParseNanAndInfFlag (since 22.02) and writes them back in answers, as json does here.
_NON_FINITE_TAKEN = "tesserad takes NaN, Infinity and -Infinity in FP32 and FP64 data only, as Triton does"
# Datatypes that travel as binary data only, as in Triton: JSON numbers have no 16-bit float form
# (the protocol calls FP16 in JSON problematic), so values would be rounded on the way.
_BINARY_ONLY = frozenset({"FP16", "BF16"})
# Python's parser reads a literal past a double's range (1e400) as infinite, as it reads Infinity.
_PAST_A_DOUBLE = "a number beyond a double's range"
_LARGEST_DOUBLE = repr(sys.float_info.max)
# How much of a field's name a message shows.
_FIELD_SHOWN = 120


@dataclass(frozen=True)
class _NonFinite:
    """NaN, Infinity or -Infinity as the body spelled it, told apart from a number past a
    double's range, which the parser reads as infinite too."""

    text: str

    def __float__(self) -> float:
        return float(self.text)


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
        elif isinstance(value, _NonFinite):
            raise InvalidArgument(
                f"{where}'s parameter {key!r} is {value.text}, which is no JSON number; send a finite "
                f"number ({_NON_FINITE_TAKEN}; binary data carries any value)"
            )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(
                    f"{where}'s parameter {key!r} is {_PAST_A_DOUBLE}; send a number within "
                    f"±{_LARGEST_DOUBLE}"
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
    if header_length is None:
        length = len(body)
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidArgument(
                f"header {HEADER_LENGTH} is {header_length[:40]!r}; it must be the length in bytes of "
                f"the JSON at the start of the body (the body has {len(body)} bytes)"
            )
    try:
        document = parse_client_json(
            body[:length],
            "the request body",
            "send each tensor's data flat, row-major (nesting is optional)",
            parse_constant=_NonFinite,
        )
    except InvalidArgument:
        end = _json_end(body) if header_length is None else None
        if end is None:
            raise
        raise InvalidArgument(
            f"the request body has {len(body) - end} bytes after its JSON, which binary tensor data "
            f"needs the header {HEADER_LENGTH} for: send it with {HEADER_LENGTH}: {end}, the length "
            "in bytes of the JSON"
        ) from None
    return document, body[length:]


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
        parse_constant=_NonFinite,
    )
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object")
    found = _non_finite(document)
    if found is not None:
        # A field nested deep makes a long name: its start says where.
        field = found[0][:_FIELD_SHOWN]
        if isinstance(found[1], _NonFinite):
            raise InvalidArgument(
                f"the request body's field {field!r} is {found[1].text}, which is no JSON number; send "
                f"a finite number ({_NON_FINITE_TAKEN})"
            )
        raise InvalidArgument(
            f"the request body's field {field!r} is {_PAST_A_DOUBLE}; send a number within ±{_LARGEST_DOUBLE}"
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
        elif isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
            name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in [*path, key])
            return name.removeprefix("."), value
    return None


def _json_end(body: bytes) -> int | None:
    """Where the JSON object at the start of `body` ends, when other bytes follow it; else None."""
    try:
        # Latin-1 maps each byte to one character: the end found is a length in bytes, and binary
        # data after the JSON decodes whatever it holds.
        document, end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
    # ValueError: not JSON, or an integer too long to convert.
    except (ValueError, RecursionError):
        return None
    return end if isinstance(document, dict) and end < len(body) else None


def _shape(tensor: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{where} needs a shape: a list of integers")
    if len(shape) > MAX_ARRAY_DIMS:
        raise too_many_dims(shape, where)
    if min(shape, default=0) < 0:
        raise InvalidArgument(f"{where} has shape {shape}; dimensions cannot be negative")
    return tuple(shape)


def _json_values(values: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The `data` of an input as an array of `shape`; refuses values of another kind than
    `datatype` (a float or a boolean for an integer, a number for BOOL) and values outside its
    range, which numpy would round, wrap around or make infinite: the model would be answering
    other numbers."""
    dtype = OIP_DTYPES[datatype]
    count = math.prod(shape)
    try:
        flat = np.asarray(values)
    except ValueError:
        raise InvalidArgument(
            f"{where} has data of uneven nesting; send its values flat, row-major"
        ) from None
    if flat.size:
        if datatype == "BOOL":
            if flat.dtype.kind != "b":
                raise _not_of_kind(datatype, where, _one_of(values, (_NonFinite,)))
        elif flat.dtype.kind == "O" or (flat.dtype.kind == "f" and datatype not in _FLOAT_NAMES):
            flat = _wide_numbers(values, flat, datatype, where)
        elif flat.dtype.kind not in "iuf":
            raise _not_of_kind(datatype, where, _one_of(values, (bool,)))
        # numpy makes numbers of true and false among numbers: [true, 2] is [1, 2].
        elif (stray := _one_of(values, (bool,))) is not None:
            raise _not_of_kind(datatype, where, stray)
        elif flat.dtype.kind == "f" and not np.isfinite(flat).all():
            # Of literals alone (NaN and Infinity make objects): some past a double's range.
            raise _out_of_range(where, _PAST_A_DOUBLE, datatype, _float_bounds(dtype), past=True)
    if flat.size != count:
        raise InvalidArgument(
            f"{where} has {flat.size} values in data, but shape {list(shape)} needs {count}"
        )
    if not count:
        refuse_unmakeable_empty(shape, dtype, where, datatype)
    if dtype.kind in "iu" and flat.size:
        limits = np.iinfo(dtype)
        # As Python integers: those past int64 compare exactly.
        low, high = int(flat.min()), int(flat.max())
        if low < limits.min or high > limits.max:
            outside = low if low < limits.min else high
            raise _out_of_range(where, str(outside), datatype, f"{limits.min}..{limits.max}")
    if dtype.kind == "f" and flat.size:
        finite = flat[np.isfinite(flat)]
        # Those that round to the datatype's largest value are taken, as numpy takes them: FP32's,
        # as numpy and %g print it (3.4028235e38), is a little past it as a double.
        with np.errstate(over="ignore"):
            past = finite[np.isinf(finite.astype(dtype))]
        if past.size:
            raise _out_of_range(where, repr(float(past[0])), datatype, _float_bounds(dtype), past=True)
    return flat.astype(dtype).reshape(shape)


def _wide_numbers(values: Any, flat: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """`values`, of which numpy made `flat` floats (integers that int64 and uint64 do not both
    hold: -1 and 2**63) or objects (integers past uint64, NaN and Infinity), as exact Python
    integers for an integer datatype and as float64 for a floating-point one."""
    exact = np.asarray(values, dtype=object)
    floating = datatype in _FLOAT_NAMES
    numbers = (int, float, _NonFinite) if floating else (int,)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in exact.flat):
        raise _not_of_kind(datatype, where, _one_of(values, (bool, _NonFinite)))
    if not floating:
        return exact
    dtype = OIP_DTYPES[datatype]
    if any(isinstance(v, float) and math.isinf(v) for v in exact.flat):
        raise _out_of_range(where, _PAST_A_DOUBLE, datatype, _float_bounds(dtype), past=True)
    try:
        return exact.astype(np.float64)
    except OverflowError:
        # An integer past float64: json read it whole, float() cannot take it.
        huge = next(v for v in exact.flat if isinstance(v, int) and abs(v) > sys.float_info.max)
        raise _out_of_range(
            where, f"an integer of {len(str(abs(huge)))} digits", datatype, _float_bounds(dtype), past=True
        ) from None


def _one_of(values: Any, kinds: tuple[type, ...]) -> Any:
    """An item of `values` (lists, nested or not) of one of `kinds`; None when there is none."""
    pending = [values]
    while pending:
        items = pending.pop()
        if not isinstance(items, list):
            if isinstance(items, kinds):
                return items
            continue
        # By the items' types, which the whole list is scanned for at C speed.
        types = set(map(type, items))
        if any(issubclass(t, kinds) for t in types):
            return next(v for v in items if isinstance(v, kinds))
        if list in types:
            pending.extend(v for v in items if isinstance(v, list))
    return None


def _not_of_kind(datatype: str, where: str, stray: Any = None) -> InvalidArgument:
    expected = (
        "true or false" if datatype == "BOOL" else "numbers" if datatype in _FLOAT_NAMES else "integers"
    )
    message = f"{where} is {datatype}: its data must be {expected}"
    if isinstance(stray, _NonFinite):
        # Python's parser, like Triton's, takes NaN, Infinity and -Infinity, which JSON lacks.
        message += f", and {stray.text} is none (JSON has no {stray.text}; {_NON_FINITE_TAKEN})"
    elif isinstance(stray, bool):
        # As Triton, which refuses them there too.
        message += f", and {json.dumps(stray)} is none (true and false are BOOL data)"
    return InvalidArgument(message)


def _float_bounds(dtype: np.dtype) -> str:
    """The range of the floating-point `dtype`, exact."""
    return f"±{float(np.finfo(dtype).max)!r}"


def _out_of_range(where: str, value: str, datatype: str, bounds: str, past: bool = False) -> InvalidArgument:
    return InvalidArgument(
        f"{where} has {value} in data, {'past' if past else 'outside'} {datatype}'s range {bounds}; "
        "every value must fit the datatype the input is sent as"
    )


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
        shape = _shape(tensor, where)
        size = parameters.get("binary_data_size")
        place = tensor_place(parameters, where, KIND_NAMES) if parameters else None
        if place is not None:
            if size is not None or "data" in tensor:
                raise InvalidArgument(
                    f"{where} has {'data' if size is None else 'binary_data_size'} as well as "
                    "shared_memory_region; send its data in one of them"
                )
            dtype = OIP_DTYPES[datatype]
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
            inputs[name] = array_from_bytes(
                binary[offset : offset + size.value], OIP_DTYPES[datatype], shape, name, datatype
            )
            offset += size.value
        elif "data" in tensor:
            if datatype in _BINARY_ONLY:
                raise InvalidArgument(
                    f"{where} is {datatype}, which JSON data cannot carry (as in Triton); send it as "
                    "binary data: its bytes after the JSON, with the parameter binary_data_size "
                    "(tritonclient: set_data_from_numpy(..., binary_data=True))"
                )
            inputs[name] = _json_values(tensor["data"], datatype, shape, where)
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
    if datatype in _BINARY_ONLY:
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
            raw = little_endian_bytes(array)
            lease.write(place, raw, f"output {name!r}")
            tensor["parameters"] = place_parameters(place, len(raw))
        elif request.binary_outputs.get(name, request.binary_by_default):
            raw = little_endian_bytes(array)
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
