"""The HTTP/REST bodies of the Open Inference Protocol: JSON and binary tensors, BF16 included
(no ONNX model here serves BF16, so the daemon tests cannot send it)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tesserad.api.oip_json import (
    declared_shapes,
    infer_request,
    infer_response,
    message_json,
    reads_shared_memory,
    settings_object,
    split_body,
)
from tesserad.api.oip_json_tensors import parse_document, parsed_request
from tesserad.errors import InvalidArgument, NotFound
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.serving.shared_memory import SharedMemory

# Requests with no tensor in shared memory read nothing through it.
NO_REGIONS = SharedMemory(256).lease()


def test_bf16_travels_as_binary_data_only_as_in_triton() -> None:
    x = np.array([[1.5, -2.0, 3.0]], dtype=ml_dtypes.bfloat16)
    as_json = {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1, 3], "data": [1.5, -2, 3]}]}
    with pytest.raises(InvalidArgument) as refused:
        infer_request(as_json, b"", NO_REGIONS)
    assert refused.value.message.startswith("input 'x' is BF16, which JSON data cannot carry (as in Triton)")
    header = json.dumps(
        {
            "id": "a",
            "inputs": [
                {"name": "x", "datatype": "BF16", "shape": [1, 3], "parameters": {"binary_data_size": 6}}
            ],
            "outputs": [{"name": "b", "parameters": {"binary_data": True}}],
        }
    ).encode()
    request = infer_request(*split_body(header + x.tobytes(), str(len(header))), NO_REGIONS)
    np.testing.assert_array_equal(request.inputs["x"], x)
    body, length = infer_response("m", 1, request, {"b": x}, NO_REGIONS)
    assert length is not None
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 6}
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype=ml_dtypes.bfloat16), x.ravel())
    # An output asked for as JSON (here by default) is refused, saying how to ask for it.
    with pytest.raises(InvalidArgument) as refused:
        infer_response("m", 1, infer_request({"inputs": []}, b"", NO_REGIONS), {"j": x}, NO_REGIONS)
    assert refused.value.message.startswith("output 'j' is BF16, which JSON data cannot carry (as in Triton)")


def test_binary_inputs_take_their_bytes_in_order() -> None:
    a, b = np.arange(3, dtype=np.int16), np.array([True, False])
    header = json.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "INT16", "shape": [3], "parameters": {"binary_data_size": 6}},
                {"name": "b", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}},
            ]
        }
    ).encode()
    request = infer_request(*split_body(header + a.tobytes() + b.tobytes(), str(len(header))), NO_REGIONS)
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], b)
    with pytest.raises(InvalidArgument, match="bytes of binary data after the JSON"):
        infer_request(*split_body(header + a.tobytes() + b.tobytes() + b"x", str(len(header))), NO_REGIONS)
    with pytest.raises(InvalidArgument, match="Inference-Header-Content-Length"):
        split_body(header, str(len(header) + 1))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "INT32", "shape": [2], "data": [1.5, 2]}, "its data must be integers"),
        ({"datatype": "UINT8", "shape": [1], "data": [-1]}, "outside UINT8's range 0..255"),
        ({"datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}, "uneven nesting"),
        ({"datatype": "FP32", "shape": [-1], "data": []}, "dimensions cannot be negative"),
        ({"datatype": "FP32", "shape": [2]}, "has no data"),
    ],
)
def test_json_data_of_another_kind_or_size_is_refused(tensor: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        infer_request({"inputs": [{"name": "x", **tensor}]}, b"", NO_REGIONS)


def test_tensors_in_shared_memory_are_read_from_and_written_to_their_region(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "obj").write_bytes(bytes(16) + x.tobytes() + bytes(64))
    memory = SharedMemory(256, tmp_path)
    memory.register("r", "/obj", 16, 24 + 64)
    document = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 24},
            },
            {"name": "z", "datatype": "INT8", "shape": [1], "data": [7]},
        ],
        "outputs": [
            {
                "name": "y",
                "parameters": {
                    "shared_memory_region": "r",
                    "shared_memory_byte_size": 64,
                    "shared_memory_offset": 24,
                },
            },
            {"name": "w", "parameters": {"binary_data": False}},
        ],
    }
    with memory.lease() as lease:
        request = infer_request(document, b"", lease)
        np.testing.assert_array_equal(request.inputs["x"], x)
        body, length = infer_response("m", 1, request, {"y": x * 2, "w": x[:1]}, lease)
    assert length is None
    y, w = json.loads(body)["outputs"]
    # As Triton: the output in shared memory is told by its parameters, with no data of its own.
    assert y == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {
            "shared_memory_region": "r",
            "shared_memory_byte_size": 24,
            "shared_memory_offset": 24,
        },
    }
    assert w["data"] == [0.0, 1.0, 2.0]
    written = (tmp_path / "obj").read_bytes()[16 + 24 : 16 + 48]
    np.testing.assert_array_equal(np.frombuffer(written, dtype=np.float32).reshape(2, 3), x * 2)
    memory.close()


@pytest.mark.parametrize(
    ("parameters", "error", "message"),
    [
        (
            {"shared_memory_region": "r"},
            InvalidArgument,
            "has shared_memory_region but no shared_memory_byte_size",
        ),
        (
            {"shared_memory_byte_size": 24},
            InvalidArgument,
            "has shared_memory_byte_size but no shared_memory_region",
        ),
        ({"shared_memory_offset": 4}, InvalidArgument, "shared_memory_offset without"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 24}, InvalidArgument, "must be a string"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 20}, InvalidArgument, "need 24 bytes"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 24, "shared_memory_offset": 16},
            InvalidArgument,
            "24 bytes at offset 16 do not fit in shared-memory region 'r', which has 32 bytes",
        ),
        (
            {"shared_memory_region": "absent", "shared_memory_byte_size": 24},
            NotFound,
            "'absent', which is not registered",
        ),
    ],
)
def test_a_tensor_placed_in_shared_memory_wrongly_is_refused(
    tmp_path: Path, parameters: dict[str, object], error: type[Exception], message: str
) -> None:
    (tmp_path / "obj").write_bytes(bytes(32))
    memory = SharedMemory(256, tmp_path)
    memory.register("r", "obj", 0, 32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": parameters}
    with memory.lease() as lease, pytest.raises(error, match=message):
        infer_request({"inputs": [tensor]}, b"", lease)
    memory.close()


def test_messages_in_json_have_64_bit_integers_as_numbers() -> None:
    stats = pb.ModelStatisticsResponse(
        model_stats=[pb.ModelStatistics(name="m", inference_count=3, last_inference=2**40)]
    )
    (entry,) = message_json(stats)["model_stats"]
    assert (entry["inference_count"], entry["last_inference"], entry["execution_count"]) == (3, 2**40, 0)
    metadata = message_json(
        pb.ModelMetadataResponse(inputs=[pb.ModelMetadataResponse.TensorMetadata(shape=[-1, 4])])
    )
    assert metadata["inputs"][0]["shape"] == [-1, 4]


def test_json_integers_are_taken_exactly_where_the_datatype_holds_them() -> None:
    """numpy makes floats of integers that int64 and uint64 do not both hold (-1 and 2**63) and
    objects of those past uint64: they are integers all the same."""
    tensors = [
        {"name": "u", "datatype": "UINT64", "shape": [3], "data": [1, 2**63, 2**64 - 1]},
        {"name": "f", "datatype": "FP64", "shape": [2], "data": [2**70, -1]},
    ]
    request = infer_request({"inputs": tensors}, b"", NO_REGIONS)
    assert request.inputs["u"].tolist() == [1, 2**63, 2**64 - 1]
    assert request.inputs["f"].tolist() == [float(2**70), -1.0]
    # Rounded to FP32 they would be infinite: the model would be answering another number.
    for value, said in (
        (10**400, "an integer of 401 digits"),
        (1e39, "1e+39"),
        (-(2**130), "-1.361129467683754e+39"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            infer_request(
                {"inputs": [{"name": "f", "datatype": "FP32", "shape": [2], "data": [0.5, value]}]},
                b"",
                NO_REGIONS,
            )
        assert refused.value.message == (
            f"input 'f' has {said} in data, past FP32's range ±3.4028234663852886e+38; every value must "
            "fit the datatype the input is sent as"
        )


def _body(datatype: str, data: str, parameters: str = "{}") -> bytes:
    return (
        f'{{"inputs": [{{"name": "f", "datatype": "{datatype}", "shape": [2], "data": {data}}}], '
        f'"parameters": {parameters}}}'
    ).encode()


def test_floating_point_data_is_refused_only_where_the_datatype_would_make_it_infinite() -> None:
    """The largest FP32 as numpy and %g print it (3.4028235e38, a little past it as a double)
    rounds to it; a value the cast makes infinite is refused, the bound said exactly."""
    request = infer_request(*split_body(_body("FP32", "[3.4028235e38, -3.4028235e38]"), None), NO_REGIONS)
    largest = np.finfo(np.float32).max
    assert request.inputs["f"].tolist() == [largest, -largest]
    with pytest.raises(InvalidArgument) as refused:
        infer_request(*split_body(_body("FP32", "[0, -3.4028236e38]"), None), NO_REGIONS)
    assert refused.value.message == (
        "input 'f' has -3.4028236e+38 in data, past FP32's range ±3.4028234663852886e+38; every value "
        "must fit the datatype the input is sent as"
    )


@pytest.mark.parametrize(
    ("datatype", "data", "bound"),
    [
        ("FP32", "[1e400, 0]", "3.4028234663852886e+38"),
        ("FP64", "[0, -1e309]", "1.7976931348623157e+308"),
        ("FP64", "[Infinity, 1e309]", "1.7976931348623157e+308"),
    ],
)
def test_a_number_past_a_double_s_range_is_refused_not_read_as_infinity(
    datatype: str, data: str, bound: str
) -> None:
    """Python's parser reads such a literal as infinite: it is no Infinity the client sent."""
    with pytest.raises(InvalidArgument) as refused:
        infer_request(*split_body(_body(datatype, data), None), NO_REGIONS)
    assert refused.value.message == (
        f"input 'f' has a number beyond a double's range in data, past {datatype}'s range ±{bound}; "
        "every value must fit the datatype the input is sent as"
    )
    infinite = infer_request(*split_body(_body(datatype, "[Infinity, -Infinity]"), None), NO_REGIONS)
    assert infinite.inputs["f"].tolist() == [np.inf, -np.inf]
    with pytest.raises(InvalidArgument) as refused:
        split = split_body(_body(datatype, "[0, 1]", '{"scale": 1e400}'), None)
        infer_request(*split, NO_REGIONS)
    assert refused.value.message == (
        "the request's parameter 'scale' is a number beyond a double's range; send a number within "
        "±1.7976931348623157e+308"
    )


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT32", [True, 1], "integers"),
        ("INT64", [[1], [False]], "integers"),
        ("UINT64", [True, 2**64], "integers"),
        ("FP32", [True, 1.5], "numbers"),
        ("FP64", [2**70, False], "numbers"),
    ],
)
def test_a_boolean_in_numeric_data_is_refused_as_triton_refuses_it(
    datatype: str, data: list[object], expected: str
) -> None:
    stray = json.dumps(next(v for v in np.asarray(data, dtype=object).flat if isinstance(v, bool)))
    tensor = {"name": "x", "datatype": datatype, "shape": [2], "data": data}
    with pytest.raises(InvalidArgument) as refused:
        infer_request({"inputs": [tensor]}, b"", NO_REGIONS)
    assert refused.value.message == (
        f"input 'x' is {datatype}: its data must be {expected}, and {stray} is none (true and false "
        "are BOOL data)"
    )
    with pytest.raises(InvalidArgument) as refused:
        infer_request({"inputs": [{**tensor, "datatype": "BOOL"}]}, b"", NO_REGIONS)
    assert refused.value.message == "input 'x' is BOOL: its data must be true or false"


@pytest.mark.parametrize(
    ("document", "reads"),
    [
        ({"inputs": [{"name": "x", "parameters": {"shared_memory_region": "r"}}]}, True),
        ({"inputs": [{"name": "x", "data": [1]}, {"parameters": {"shared_memory_region": "r"}}]}, True),
        ({"inputs": [{"name": "x", "data": [1], "parameters": {"binary_data_size": 4}}]}, False),
        ({"inputs": [{"name": "x", "parameters": ["shared_memory_region"]}]}, False),
        ({"inputs": "x"}, False),
        ([], False),
    ],
)
def test_only_a_request_naming_a_region_is_read_off_the_event_loop(document: object, reads: bool) -> None:
    # The others are decoded on the loop: a thread would cost a hand-off per request and gain
    # nothing, since the JSON parse holds the interpreter on any thread.
    assert reads_shared_memory(document) is reads


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"a": {"b": [1, 2, {"c": 1e400}]}, "d": NaN}', "'a.b[2].c' is a number beyond a double's range"),
        (b'{"x": [1.5, 2], "y": {"z": -Infinity}}', "'y.z' is -Infinity"),
        # Nested about as deep as the parser goes: named by its start, not an error of the daemon's.
        (b'{"a": ' + b"[" * 800 + b"NaN" + b"]" * 800 + b"}", "'a" + "[0]" * 39 + "[0' is NaN"),
    ],
)
def test_a_settings_body_names_the_field_holding_a_non_finite_number(body: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(f"the request body's field {field}")):
        settings_object(body)


def test_a_settings_body_of_finite_numbers_or_none_is_taken_as_it_stands() -> None:
    assert settings_object(b'{"ok": [1.5, {"q": -2}], "r": 1e308}') == {"ok": [1.5, {"q": -2}], "r": 1e308}
    assert settings_object(b" ") == {}


_BIG = list(range(100_000))
_X = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.5]}


@pytest.mark.parametrize(
    "document",
    [
        {"inputs": [_X], "parameters": _BIG},
        {"inputs": [_X], "parameters": {"a": 1, "labels": _BIG, "b": {"c": _BIG}}},
        {"inputs": [_X], "parameters": {"priority": 2**64, "labels": _BIG}},
        {"inputs": [_X], "outputs": _BIG},
        {"inputs": [_X], "outputs": {"y": _BIG}},
        {"inputs": [_X], "outputs": [{"name": "y", "parameters": {"n": {"k": _BIG}}}]},
        {"inputs": [_X], "outputs": [{"name": _BIG}]},
        {"inputs": [_X], "outputs": [{"name": "y", "data": _BIG}]},
        {"inputs": [{**_X, "name": _BIG}]},
        {"inputs": [{**_X, "datatype": _BIG}]},
        {"inputs": [{**_X, "shape": [str(d) for d in _BIG]}]},
        {"inputs": [{**_X, "shape": [65536, 4]}, _BIG]},
        {"inputs": {"x": _BIG}},
        {"inputs": [{**_X, "parameters": {"binary_data_size": _BIG}}]},
        {"inputs": [{**_X, "parameters": _BIG}]},
    ],
)
def test_a_parser_process_sends_back_only_what_infer_request_reads(document: dict[str, object]) -> None:
    text = json.dumps(document).encode()
    inline, parsed = parse_document(text, True), parsed_request(text, True)
    # What the event loop would unpickle: not the body's large lists.
    assert len(pickle.dumps(parsed)) < 2000 < len(text) // 100
    assert declared_shapes(parsed) == declared_shapes(inline)
    assert reads_shared_memory(parsed) == reads_shared_memory(inline)
    answers = []
    for read in (inline, parsed):
        try:
            request = infer_request(read, b"", NO_REGIONS)
        except InvalidArgument as exc:
            answers.append(exc.message)
        else:
            answers.append((request.output_names, request.parameters))
    assert answers[0] == answers[1]
