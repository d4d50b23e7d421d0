"""The JSON of the Open Inference Protocol's HTTP inference requests: parsed, and each input's
JSON data made into its array, with the checks that refuse values the array would not hold.

A parser process (tesserad.api.oip_parsers) imports this module alone: it imports numpy, the
error types and the datatype table, not the daemon's serving code (seconds of imports).
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from tesserad.client_json import parse_client_json
from tesserad.dtypes import MAX_ARRAY_DIMS, refuse_unmakeable_empty, too_many_dims
from tesserad.errors import InvalidArgument
from tesserad.serving.oip_dtypes import OIP_DTYPES, string_array

HEADER_LENGTH = "Inference-Header-Content-Length"
_FLOAT_NAMES = frozenset({"FP32", "FP64"})
# Where NaN, Infinity and -Infinity, which JSON lacks, are taken: Triton parses request bodies with
# rapidjson's kParseNanAndInfFlag (since 22.02) and writes them back in answers, as json does here.
NON_FINITE_TAKEN = "tesserad takes NaN, Infinity and -Infinity in FP32 and FP64 data only, as Triton does"
# Datatypes that travel as binary data only, as in Triton: JSON numbers have no 16-bit float form
# (the protocol calls FP16 in JSON problematic), so values would be rounded on the way.
BINARY_ONLY = frozenset({"FP16", "BF16"})
# Python's parser reads a literal past a double's range (1e400) as infinite, as it reads Infinity.
PAST_A_DOUBLE = "a number beyond a double's range"
LARGEST_DOUBLE = repr(sys.float_info.max)


@dataclass(frozen=True)
class NonFinite:
    """NaN, Infinity or -Infinity as the body spelled it, told apart from a number past a
    double's range, which the parser reads as infinite too."""

    text: str

    def __float__(self) -> float:
        return float(self.text)


def parse_document(text: bytes, whole_body: bool) -> Any:
    """The JSON `text` of an inference request; `whole_body`: it is the whole body (no
    Inference-Header-Content-Length), so JSON followed by other bytes is told to send that header."""
    try:
        return parse_client_json(
            text,
            "the request body",
            "send each tensor's data flat, row-major (nesting is optional)",
            parse_constant=NonFinite,
        )
    except InvalidArgument:
        end = _json_end(text) if whole_body else None
        if end is None:
            raise
        raise InvalidArgument(
            f"the request body has {len(text) - end} bytes after its JSON, which binary tensor data "
            f"needs the header {HEADER_LENGTH} for: send it with {HEADER_LENGTH}: {end}, the length "
            "in bytes of the JSON"
        ) from None


@dataclass(frozen=True)
class Converted:
    """An input's JSON data, made into its array by a parser process ahead of `infer_request`,
    or the message of the error `infer_request` raises on it. Neither: the input is refused for
    its name, datatype or shape before its data is read."""

    array: np.ndarray | None = None
    error: str | None = None

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise InvalidArgument(self.error)
        assert self.array is not None, "an input whose data is read had it converted"
        return self.array


# The fields infer_request reads, of the request and of each tensor in it: what a parser process
# sends back (any other field of a large body would cost the event loop its unpickling).
_REQUEST_FIELDS = ("id", "inputs", "outputs", "parameters")
_INPUT_FIELDS = ("name", "datatype", "shape", "parameters", "data")
_OUTPUT_FIELDS = ("name", "parameters")


def parsed_request(text: bytes, whole_body: bool) -> Any:
    """What a parser process makes of a large request's JSON `text` (`parse_document`'s
    arguments): the document, holding only the fields `infer_request` reads and only as much of
    them as it reads, each input's data already converted as `infer_request` would convert it
    (`Converted`), so that it refuses the request with the same error at the same point as it
    would have inline, and the event loop unpickles no more than that."""
    document = parse_document(text, whole_body)
    if not isinstance(document, dict):
        return document
    document = {key: document[key] for key in _REQUEST_FIELDS if key in document}
    if "parameters" in document:
        document["parameters"] = _read_parameters(document["parameters"])
    inputs, outputs = document.get("inputs"), document.get("outputs")
    if isinstance(inputs, list):
        objects = [_read_tensor(t, _INPUT_FIELDS) for t in inputs if isinstance(t, dict)]
        # Inputs that are not all objects are refused whatever the others hold; those that are
        # objects are kept, for the batch size their shapes say (`declared_shapes`).
        document["inputs"] = objects if len(objects) == len(inputs) else [*objects, None]
    elif isinstance(inputs, dict):
        document["inputs"] = {}
    if isinstance(outputs, list):
        objects = [_read_tensor(t, _OUTPUT_FIELDS) for t in outputs if isinstance(t, dict)]
        document["outputs"] = objects if len(objects) == len(outputs) else [None]
    elif isinstance(outputs, dict):
        document["outputs"] = {}
    for tensor in document["inputs"] if isinstance(document.get("inputs"), list) else ():
        if isinstance(tensor, dict) and "data" in tensor:
            tensor["data"] = _converted(tensor)
    return document


def _read_tensor(tensor: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`tensor`'s `fields` as far as `infer_request` reads them: a name that is no string, and a
    shape that is no list of integers, are refused whatever they hold; a datatype that is no
    string, by the start of its repr."""
    read = {key: tensor[key] for key in fields if key in tensor}
    if "name" in read and not isinstance(read["name"], str):
        read["name"] = None
    if "datatype" in read and not isinstance(read["datatype"], str):
        read["datatype"] = _Repr(repr(read["datatype"])[:40])
    shape = read.get("shape")
    if "shape" in read and not (
        isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        read["shape"] = None
    if "parameters" in read:
        read["parameters"] = _read_parameters(read["parameters"])
    return read


@dataclass(frozen=True)
class _Repr:
    """A value that is no datatype, sent back as its repr's start: what its refusal shows of it."""

    text: str

    def __repr__(self) -> str:
        return self.text


def _read_parameters(parameters: Any) -> Any:
    """`parameters` as far as `json_parameters` reads them: it refuses a list or an object, as
    parameters or as a parameter's value, naming only its kind; so such a value is sent back
    empty, and the parameters after it (the request is refused by then) not at all."""
    if not isinstance(parameters, dict):
        return [] if isinstance(parameters, list) else parameters
    read: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, (list, dict)):
            read[key] = type(value)()
            break
        read[key] = value
    return read


def _converted(tensor: dict[str, Any]) -> Converted:
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str) or datatype not in OIP_DTYPES:
        return Converted()
    if datatype in BINARY_ONLY:
        return Converted()
    where = f"input {name!r}"
    try:
        shape = tensor_shape(tensor, where)
    except InvalidArgument:
        return Converted()
    try:
        return Converted(array=json_values(tensor["data"], datatype, shape, where))
    except InvalidArgument as exc:
        return Converted(error=exc.message)


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


def tensor_shape(tensor: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{where} needs a shape: a list of integers")
    if len(shape) > MAX_ARRAY_DIMS:
        raise too_many_dims(shape, where)
    if min(shape, default=0) < 0:
        raise InvalidArgument(f"{where} has shape {shape}; dimensions cannot be negative")
    return tuple(shape)


def json_values(values: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The `data` of an input as an array of `shape`; refuses values of another kind than
    `datatype` (a float or a boolean for an integer, a number for BOOL) and values outside its
    range, which numpy would round, wrap around or make infinite: the model would be answering
    other numbers."""
    if datatype == "BYTES":
        return string_array(_json_strings(values, where), shape, where)
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
                raise _not_of_kind(datatype, where, _one_of(values, (NonFinite,)))
        elif flat.dtype.kind == "O" or (flat.dtype.kind == "f" and datatype not in _FLOAT_NAMES):
            flat = _wide_numbers(values, flat, datatype, where)
        elif flat.dtype.kind not in "iuf":
            raise _not_of_kind(datatype, where, _one_of(values, (bool,)))
        # numpy makes numbers of true and false among numbers: [true, 2] is [1, 2].
        elif (stray := _one_of(values, (bool,))) is not None:
            raise _not_of_kind(datatype, where, stray)
        elif flat.dtype.kind == "f" and not np.isfinite(flat).all():
            # Of literals alone (NaN and Infinity make objects): some past a double's range.
            raise _out_of_range(where, PAST_A_DOUBLE, datatype, _float_bounds(dtype), past=True)
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


def _json_strings(values: Any, where: str) -> list[str]:
    """BYTES data: JSON strings, flat or nested in lists, row-major; InvalidArgument naming a
    value of another kind (a number is no text: Triton refuses it too)."""
    strings: list[str] = []
    pending = [iter(values if isinstance(values, list) else [values])]
    while pending:
        value = next(pending[-1], _END)
        if value is _END:
            pending.pop()
        elif isinstance(value, list):
            pending.append(iter(value))
        elif isinstance(value, str):
            strings.append(value)
        else:
            shown = value.text if isinstance(value, NonFinite) else json.dumps(value)[:40]
            raise InvalidArgument(
                f"{where} is BYTES: its data must be strings, and {shown} is none; send each element as "
                "a JSON string, or as binary data (each element's length in 4 bytes, little-endian, "
                "then its bytes)"
            )
    return strings


_END = object()


def _wide_numbers(values: Any, flat: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """`values`, of which numpy made `flat` floats (integers that int64 and uint64 do not both
    hold: -1 and 2**63) or objects (integers past uint64, NaN and Infinity), as exact Python
    integers for an integer datatype and as float64 for a floating-point one."""
    exact = np.asarray(values, dtype=object)
    floating = datatype in _FLOAT_NAMES
    numbers = (int, float, NonFinite) if floating else (int,)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in exact.flat):
        raise _not_of_kind(datatype, where, _one_of(values, (bool, NonFinite)))
    if not floating:
        return exact
    dtype = OIP_DTYPES[datatype]
    if any(isinstance(v, float) and math.isinf(v) for v in exact.flat):
        raise _out_of_range(where, PAST_A_DOUBLE, datatype, _float_bounds(dtype), past=True)
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
    if isinstance(stray, NonFinite):
        # Python's parser, like Triton's, takes NaN, Infinity and -Infinity, which JSON lacks.
        message += f", and {stray.text} is none (JSON has no {stray.text}; {NON_FINITE_TAKEN})"
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


# The levels a parsed document gains (its fields, the answer around it) before it is pickled.
_PICKLE_LEVELS = 64


def serve_parses(connection: Connection, recursion_limit: int) -> None:
    """A parser process: each request's (whole_body, JSON bytes) answered with ("ok", document),
    ("invalid", message) or ("failed", description), until the daemon closes the pipe.
    `recursion_limit`: the daemon's, which bounds how deep the parser nests, as it does inline."""
    # The daemon decides when it ends: a Ctrl-C in its terminal reaches this process too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setrecursionlimit(recursion_limit)
    # Started (its imports done): a parse's deadline counts from here.
    connection.send_bytes(b"")
    while True:
        try:
            whole_body = connection.recv()
            text = connection.recv_bytes()
        except EOFError:
            return
        try:
            answer: tuple[str, Any] = ("ok", parsed_request(text, whole_body))
        except InvalidArgument as exc:
            answer = ("invalid", exc.message)
        except Exception as exc:  # any other failure is the daemon's, told to it
            answer = ("failed", f"{type(exc).__name__}: {exc}")
        del text
        # Pickling recurses once per level the document nests, a few more than the parse took
        # (unpickling does not recurse).
        sys.setrecursionlimit(recursion_limit + _PICKLE_LEVELS)
        try:
            # Pickled whole before a byte is written: a failure leaves the pipe as it was.
            connection.send(answer)
        except RecursionError as exc:
            connection.send(("failed", f"the parsed document could not be pickled: {exc}"))
        finally:
            sys.setrecursionlimit(recursion_limit)
