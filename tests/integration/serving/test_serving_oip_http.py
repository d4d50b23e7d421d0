"""The Open Inference Protocol over HTTP/REST (KServe v2 /v2, serving.oip_http_listen), with
plain urllib: JSON tensors, Triton's binary tensor data, errors as KServe's, tokens and roles."""

from __future__ import annotations

import gzip
import http.client
import json
import math
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from serving_models import W, echo_model, half_model, linear_model, reshape_model, slow_model, upload

from tessera.v1 import system_pb2
from tesserad import cli
from tesserad.config import format_size
from tesserad.logs import JsonFormatter
from tesserad.security import Role
from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki, Tokens
from tests.integration.security.conftest import pki as pki  # the session's throwaway PKI
from tests.integration.security.conftest import tokens as tokens  # one token per role

X = np.arange(8, dtype=np.float32).reshape(2, 4)
# The origin of a browser app that `served` lets call it.
APP = "https://app.example.com"
NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "UINT16": np.uint16,
    "INT16": np.int16,
    "UINT32": np.uint32,
    "INT32": np.int32,
    "UINT64": np.uint64,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a daemon serving HTTP, with models linear (versions 1, 2), half, echo and
    never (which fails to load); pages at APP may call it from a browser (CORS)."""
    yield from _serving(tmp_path_factory.mktemp("http"), **{"serving.oip_http_cors_origins": APP})


@pytest.fixture(scope="module")
def served_in_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """As `served`, parsing the JSON of every inference request in a parser process."""
    yield from _serving(tmp_path_factory.mktemp("http"), **{"serving.oip_http_json_process_min_size": 0})


def _serving(data_dir: Path, **overrides: Any) -> Iterator[str]:
    settings = daemon_settings(data_dir, **{"serving.oip_http_listen": "127.0.0.1:0", **overrides})
    daemon = InProcessDaemon(settings).start()
    channel = daemon.channel()
    upload(channel, "linear", linear_model(1.0))
    upload(channel, "linear", linear_model(2.0))
    upload(channel, "half", half_model())
    upload(channel, "echo", echo_model())
    upload(channel, "never", reshape_model([3]))  # every run fails: it cannot warm up
    try:
        yield f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
    finally:
        daemon.stop()


def call(
    url: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); a POST when there is a body, else a GET, unless `method` says."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method=method or ("POST" if data is not None else "GET")
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def ok_json(url: str, body: dict[str, Any] | None = None) -> Any:
    status, _, answer = call(url, body)
    assert status == 200, answer
    return json.loads(answer)


def error(
    url: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, str]:
    status, answer_headers, answer = call(url, body, headers, method, context)
    assert answer_headers["Content-Type"].startswith("application/json")
    return status, json.loads(answer)["error"]


def test_health_metadata_config_and_repository(served: str) -> None:
    status, headers, _ = call(f"{served}/v2/health/live")
    # No Server header naming aiohttp's and Python's versions.
    assert (status, headers["Server"]) == (200, "tesserad")
    assert call(f"{served}/v2/health/ready")[0] == 200
    server = ok_json(f"{served}/v2")
    assert server["name"] == "tesserad" and "statistics" in server["extensions"]
    # Triton's binary tensor data extension is served here, and a server that serves it says so.
    assert "binary_tensor_data" in server["extensions"]
    metadata = ok_json(f"{served}/v2/models/linear/versions/1")
    assert metadata == {
        "name": "linear",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    config = ok_json(f"{served}/v2/models/linear/config")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [4]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    # The protocol's health answer: 4xx is false (Triton's 400, with an error saying so).
    not_ready = (
        400,
        "model 'half' is not ready: not loaded, or still loading; load it with POST "
        "/v2/repository/models/half/load",
    )
    assert error(f"{served}/v2/models/half/ready") == not_ready
    # What the registry does not hold is said so, not to be loaded (the load would be NOT_FOUND).
    assert error(f"{served}/v2/models/half/versions/7/ready") == (
        400,
        "model 'half' version 7 is not ready: model 'half' has no version 7 (the newest is 1; "
        "`tessera models versions MODEL` lists them)",
    )
    # In words a Triton client's user can act on, not the registry's RPC (CreateModel).
    register = "register it with `tessera models push MODEL FILE` or tessera.v1.Registry's UploadVersion"
    assert error(f"{served}/v2/models/nope/ready") == (
        400,
        f"model 'nope' is not ready: model 'nope' does not exist; {register}",
    )
    assert error(f"{served}/v2/models/lineer") == (
        404,
        f"model 'lineer' does not exist; did you mean 'linear'? Or {register}",
    )
    assert error(f"{served}/v2/models/lineer/infer", {"inputs": []}) == (
        404,
        f"model 'lineer' does not exist; did you mean 'linear'? Or {register}",
    )
    assert call(f"{served}/v2/repository/models/half/load", b"")[0] == 200
    assert call(f"{served}/v2/models/half/ready")[0] == 200
    index = ok_json(f"{served}/v2/repository/index", {"ready": True})
    # As Triton's answer writes a row: no reason when there is none, no version when none is known.
    assert {"name": "half", "version": "1", "state": "READY"} in index
    assert call(f"{served}/v2/repository/models/half/unload", b"")[0] == 200
    assert error(f"{served}/v2/models/half/ready") == not_ready
    index = ok_json(f"{served}/v2/repository/index", {})
    assert {"name": "half", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert {"name": "echo", "state": "UNAVAILABLE", "reason": "unloaded"} in index


def test_repository_load_takes_a_triton_config_as_grpc_does(served: str) -> None:
    load = f"{served}/v2/repository/models/linear/load"
    config = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 100}}
    assert call(load, {"parameters": {"config": json.dumps(config)}})[0] == 200
    reported = ok_json(f"{served}/v2/models/linear/config")
    assert reported["max_batch_size"] == 4
    assert int(reported["dynamic_batching"]["max_queue_delay_microseconds"]) == 100
    assert error(load, {"parameters": {"config": '{"max_batch_size": 8, "sequence_batching": {}}'}}) == (
        400,
        "config field 'sequence_batching' is not supported by tesserad, which takes name, platform, backend, "
        "version_policy, max_batch_size, dynamic_batching.max_queue_delay_microseconds, "
        "dynamic_batching.default_queue_policy.max_queue_size, instance_group[0].name/count/kind/gpus, "
        "response_cache.enable, parameters.intra_op_thread_count, and input, output and model_warmup as "
        "ModelConfig gives them; taken without effect: dynamic_batching.preferred_batch_size and "
        "default_queue_policy.allow_timeout_override, parameters.inter_op_thread_count and execution_mode, "
        "optimization's pinned-memory fields, gather_kernel_buffer_threshold and eager_batching, "
        "default_model_filename, and model_transaction_policy.decoupled false; any other field is refused "
        "unless it is a number, string or flag at its default, which JSON reads as left out: remove it",
    )
    assert error(load, {"parameters": {"config": 4}}) == (
        400,
        "parameter 'config' must be a string, got integer",
    )
    assert error(load, {"parameters": {"config": "{", "file:1/model.onnx": "b25ueA=="}})[0] == 501
    assert error(load, {"parameters": ["config"]}) == (400, "the request's parameters must be a JSON object")
    assert ok_json(f"{served}/v2/models/linear/config")["max_batch_size"] == 4  # as it was
    assert call(f"{served}/v2/repository/models/linear/unload", b"")[0] == 200


def test_unload_reads_its_body_as_triton_does(served: str) -> None:
    # tritonclient.http's unload_model sends {"parameters": {"unload_dependents": <bool>}}.
    unload = f"{served}/v2/repository/models/half/unload"
    assert error(unload, b"{not json")[0] == 400
    assert error(unload, {"parameters": {"unload_dependents": "yes"}}) == (
        400,
        "parameter 'unload_dependents' must be a boolean, got string",
    )
    assert call(unload, {"parameters": {"unload_dependents": False}})[0] == 200


def test_inference_on_a_version_not_ready_is_answered_as_triton_answers_it(served: str) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
    failed = "model 'never' version 1 failed to load, and requests do not load it again: warm-up of"
    # The first request loads it, and the load fails: it is not ready, as for later ones.
    code, message = error(f"{served}/v2/models/never/infer", body)
    assert code == 404 and message.startswith("model 'never' version 1 failed to load: warm-up of"), message
    # No version named: 404, none available to the request; a version named: 503, as in Triton.
    for path, status in (("never", 404), ("never/versions/1", 503)):
        code, message = error(f"{served}/v2/models/{path}/infer", body)
        assert code == status and message.startswith(failed), message
        assert message.endswith("load it with LoadModel or RepositoryModelLoad")
    # Its readiness says why, as the repository index does, not that it may be loading.
    for path, said in (
        ("never/versions/1", "model 'never' version 1 is not ready: it failed to load: warm-up of"),
        (
            "never",
            "model 'never' is not ready: version 1, which its requests go to, failed to load: warm-up of",
        ),
    ):
        code, message = error(f"{served}/v2/models/{path}/ready")
        assert code == 400 and message.startswith(said), message
        assert message.endswith("once the cause is fixed, load it with POST /v2/repository/models/never/load")
    (row,) = [r for r in ok_json(f"{served}/v2/repository/index", {}) if r["name"] == "never"]
    assert row["state"] == "UNAVAILABLE" and row["reason"] in message


def test_the_registry_s_fix_words_in_a_load_error_stay_as_the_model_names_them(tmp_path: Path) -> None:
    """Only the fix that ends a message is put in a Triton user's words: the same words in an
    ONNX node's name, which the error of a load that failed quotes, are the model's, not a fix."""
    node = "ListVersions lists them; create it with CreateModel"
    daemon = InProcessDaemon(daemon_settings(tmp_path, **{"serving.oip_http_listen": "127.0.0.1:0"})).start()
    try:
        upload(daemon.channel(), "named", reshape_model([3], node_name=node))
        served = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
        # The first request loads it and the load fails; the second finds it failed.
        for path in ("infer", "infer", "stats"):
            code, message = error(f"{served}/v2/models/named/{path}", body if path == "infer" else None)
            assert code == 404 and f"Name:'{node}'" in message, message
            assert "tessera models" not in message, message
    finally:
        daemon.stop()


def test_a_named_repository_is_refused_as_triton_refuses_it(served: str) -> None:
    message = (
        "repository_name 'models': tesserad has one model repository (its registry) and does not "
        "take a repository's name; send the request without repository_name"
    )
    assert error(f"{served}/v2/repository/models/index", b"") == (501, message)
    assert error(f"{served}/v2/repository/models/models/linear/load", b"") == (501, message)
    assert error(f"{served}/v2/repository/models/models/linear/unload", b"") == (501, message)


def test_json_infer_routes_to_a_version_and_counts_statistics(served: str) -> None:
    body = {
        "id": "r-1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}],
    }
    answer = ok_json(f"{served}/v2/models/linear/versions/1/infer", body)
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("linear", "1", "r-1")
    (y,) = answer["outputs"]
    assert (y["name"], y["datatype"], y["shape"]) == ("y", "FP32", [2, 3])
    np.testing.assert_allclose(np.array(y["data"]).reshape(2, 3), X @ W, rtol=1e-6)
    # Nested data, and no version: the latest (2).
    body["inputs"][0]["data"] = X.tolist()
    latest = ok_json(f"{served}/v2/models/linear/infer", body)
    assert latest["model_version"] == "2"
    np.testing.assert_allclose(np.array(latest["outputs"][0]["data"]).reshape(2, 3), X @ (W * 2), rtol=1e-6)
    stats = ok_json(f"{served}/v2/models/linear/versions/1/stats")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1 and stats["inference_count"] == 2


def test_every_datatype_round_trips_as_json_and_as_binary(served: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for name, dtype in NUMPY.items():
        if name == "BOOL":
            arrays[name] = rng.random((2, 3)) > 0.5
        else:
            arrays[name] = (rng.random((2, 3)) * 100).astype(dtype)
    # As JSON, but FP16: as in Triton, it travels as binary data only, in and out.
    inputs: list[dict[str, Any]] = [
        {"name": f"in_{t.lower()}", "datatype": t, "shape": [2, 3], "data": a.ravel().tolist()}
        for t, a in arrays.items()
        if t != "FP16"
    ]
    half = arrays["FP16"]
    inputs.append(
        {
            "name": "in_fp16",
            "datatype": "FP16",
            "shape": [2, 3],
            "parameters": {"binary_data_size": half.nbytes},
        }
    )
    outputs = [{"name": f"out_{t.lower()}", "parameters": {"binary_data": t == "FP16"}} for t in arrays]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    status, headers, answer_body = call(
        f"{served}/v2/models/echo/infer",
        header + half.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, answer_body
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(answer_body[:length])
    for output in answer["outputs"]:
        datatype = output["datatype"]
        assert output["name"] == f"out_{datatype.lower()}" and output["shape"] == [2, 3]
        if datatype == "FP16":
            got = np.frombuffer(answer_body[length:], dtype=np.float16).reshape(2, 3)
        else:
            got = np.array(output["data"], dtype=NUMPY[datatype]).reshape(2, 3)
        np.testing.assert_array_equal(got, arrays[datatype])

    # Triton's binary tensor data: the JSON, then each input's bytes in order; outputs likewise.
    binary_inputs = [
        {
            "name": f"in_{t.lower()}",
            "datatype": t,
            "shape": [2, 3],
            "parameters": {"binary_data_size": a.nbytes},
        }
        for t, a in arrays.items()
    ]
    header = json.dumps({"inputs": binary_inputs, "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(a.tobytes() for a in arrays.values())
    status, headers, answer_body = call(
        f"{served}/v2/models/echo/infer", body, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 200, answer_body
    length = int(headers["Inference-Header-Content-Length"])
    document, offset = json.loads(answer_body[:length]), length
    for output in document["outputs"]:
        size = output["parameters"]["binary_data_size"]
        datatype = output["datatype"]
        got = np.frombuffer(answer_body[offset : offset + size], dtype=NUMPY[datatype]).reshape(2, 3)
        np.testing.assert_array_equal(got, arrays[datatype])
        offset += size
    assert offset == len(answer_body)


def test_bad_requests_are_refused_with_the_status_and_message_of_grpc(served: str) -> None:
    infer = f"{served}/v2/models/linear/infer"

    def tensor(**fields: Any) -> dict[str, Any]:
        return {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3], **fields}]
        }

    assert error(infer, b"{not json")[0] == 400
    # JSON nested deeper than the parser goes is the client's error, not the daemon's.
    deep = b"[" * 100_000 + b"]" * 100_000
    assert error(
        infer, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + deep + b"}]}"
    ) == (
        400,
        "the request body nests deeper than Python's parser goes; send each tensor's data flat, "
        "row-major (nesting is optional)",
    )
    # A body of another request than inference is told of no tensors or binary data.
    load = f"{served}/v2/repository/models/linear/load"
    assert error(load, b'{"parameters": ' + deep + b"}") == (
        400,
        "the request body nests deeper than Python's parser goes; send a JSON object of the fields the "
        "protocol names for this request",
    )
    assert error(load, b"{}" + bytes(8)) == (
        400,
        "the request body is not JSON: Extra data: line 1 column 3 (char 2)",
    )
    assert error(load, {"parameters": {"config": deep.decode()}}) == (
        400,
        "parameter 'config' nests deeper than Python's parser goes; no model configuration nests so deep: "
        "send a Triton model configuration",
    )
    # So is an integer of more digits than Python converts (ValueError, a 500 too), binary data
    # after the JSON or not.
    long_integer = (
        b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [' + b"1" * 5000 + b"]}]}"
    )
    for body in (long_integer, long_integer + bytes(8)):
        assert error(infer, body) == (
            400,
            "the request body holds an integer of more than 4300 digits, which no field takes; send each "
            "number within its field's range",
        )
    # Strings sent to a number input are refused for their datatype.
    status, message = error(infer, tensor(datatype="BYTES", data=["a", "b", "c", "d"]))
    assert status == 400 and message.startswith(
        "input 'x' has datatype BYTES; model 'linear' version 2 expects FP32"
    )
    assert error(infer, tensor(datatype="FP8"))[1] == (
        "input 'x' has datatype 'FP8', which is no datatype tesserad serves; it serves BOOL, UINT8, INT8, "
        "UINT16, INT16, UINT32, INT32, UINT64, INT64, FP16, BF16, FP32, FP64, BYTES"
    )
    status, message = error(infer, tensor(datatype="INT32"))
    assert status == 400 and "'x'" in message and "int32" in message.lower()
    assert error(infer, tensor(shape=[1, 5], data=[0] * 5))[0] == 400
    assert error(infer, tensor(data=[0, 1, 2])) == (
        400,
        "input 'x' has 3 values in data, but shape [1, 4] needs 4",
    )
    assert error(infer, tensor(datatype="INT8", data=[0, 1, 2, 300]))[0] == 400
    assert error(
        f"{served}/v2/models/echo/infer",
        {"inputs": [{"name": "in_bool", "datatype": "BOOL", "shape": [1, 3], "data": [1, 0, 1]}]},
    ) == (
        400,
        "input 'in_bool' is BOOL: its data must be true or false",
    )
    assert error(infer, {**tensor(), "parameters": {"timeout": "1s"}}) == (
        400,
        "parameter 'timeout' must be an integer (microseconds), got string",
    )
    assert error(infer, {**tensor(), "parameters": {"sequence_id": 7}})[0] == 501
    # A number no 64-bit integer holds is no priority (nor any integer parameter), as in Triton.
    assert error(infer, {**tensor(), "parameters": {"priority": 2**64}}) == (
        400,
        "the request's parameter 'priority' is 18446744073709551616, which no 64-bit integer holds; send "
        "an integer in -9223372036854775808..18446744073709551615",
    )
    # As Triton: a parameter is a boolean, integer, number or string; anything else is refused.
    assert error(infer, {**tensor(), "parameters": {"labels": ["a", "b"]}}) == (
        400,
        "the request's parameter 'labels' is a list; a parameter's value must be a boolean, integer, "
        "number or string",
    )
    assert error(infer, {**tensor(), "outputs": [{"name": "y", "parameters": {"note": None}}]}) == (
        400,
        "output 'y''s parameter 'note' is null; a parameter's value must be a boolean, integer, "
        "number or string",
    )
    assert error(infer, tensor(parameters={"hint": {"a": 1}}))[0] == 400
    assert (
        error(infer, {**tensor(), "outputs": [{"name": "y", "parameters": {"classification": 2}}]})[0] == 501
    )
    status, message = error(f"{served}/v2/models/missing/infer", tensor())
    assert status == 404 and "missing" in message
    assert error(f"{served}/v2/models/linear/versions/9")[0] == 404
    assert error(f"{served}/v2/models/UPPER")[0] == 400
    assert error(f"{served}/v1/models")[0] == 404
    header = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}'
    assert error(infer, header + bytes(8), {"Inference-Header-Content-Length": str(len(header))})[0] == 400
    # Binary data sent without the header that says where the JSON ends: the answer says what to send.
    assert error(infer, header + X[:1].tobytes()) == (
        400,
        f"the request body has 16 bytes after its JSON, which binary tensor data needs the header "
        f"Inference-Header-Content-Length for: send it with Inference-Header-Content-Length: {len(header)}, "
        "the length in bytes of the JSON",
    )


def test_request_bodies_compressed_as_triton_takes_them(served: str) -> None:
    """As Triton: a request may come gzip- or deflate-compressed (tritonclient.http's
    request_compression_algorithm); one that is not what its Content-Encoding says is the client's
    error, 400, not the daemon's."""
    infer = f"{served}/v2/models/linear/versions/2/infer"
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}}
            ]
        }
    ).encode()
    body = header + X.tobytes()
    plain = call(infer, body, {"Inference-Header-Content-Length": str(len(header))})
    assert plain[0] == 200
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for encoding, compressed in (
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        # Raw deflate data, without zlib's header, as some clients send it; and codings as cased.
        ("deflate", raw_deflate.compress(body) + raw_deflate.flush()),
        ("GZip", gzip.compress(body)),
        # Gzip members one after the other (RFC 1952), as `cat a.gz b.gz` makes: it was refused.
        # Empty members are members too.
        ("gzip", gzip.compress(body[:40]) + gzip.compress(b"") * 1000 + gzip.compress(body[40:])),
    ):
        headers = {"Content-Encoding": encoding, "Inference-Header-Content-Length": str(len(header))}
        status, _, answer = call(infer, compressed, headers)
        assert (status, answer) == (200, plain[2])
    # Members whose data spans more than one 64 KiB slice of input (zlib takes it in slices).
    spaced = header + b" " * 70000
    compressed = gzip.compress(spaced[:100], 0) + gzip.compress(spaced[100:] + X.tobytes(), 0)
    assert len(compressed) > 1 << 16
    status, _, answer = call(
        infer, compressed, {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(spaced))}
    )
    assert (status, answer) == (200, plain[2])
    connection = http.client.HTTPConnection("127.0.0.1", int(served.rsplit(":", 1)[1]), timeout=30)
    for encoding, unlike in (
        ("gzip", body),
        ("deflate", body),
        ("gzip", gzip.compress(body)[:-8]),
        ("gzip", gzip.compress(body) + b"trailing"),
        ("deflate", zlib.compress(body) + zlib.compress(body)),
    ):
        headers = {"Content-Encoding": encoding, "Inference-Header-Content-Length": str(len(header))}
        connection.request("POST", "/v2/models/linear/versions/2/infer", unlike, headers)
        answer = connection.getresponse()
        assert (answer.status, json.loads(answer.read())["error"]) == (
            400,
            f"the request body is not valid {encoding} data, as its Content-Encoding header says it is; "
            f"send it compressed with {encoding} (tritonclient.http: request_compression_algorithm), or "
            "uncompressed without the header",
        )
        # The body was read whole, as its headers said: the connection serves the next request.
        assert answer.getheader("Connection") is None
    connection.close()


def test_a_content_coding_other_than_gzip_or_deflate_is_refused_as_triton_refuses_it(served: str) -> None:
    """As Triton: 415 with Accept-Encoding naming the codings taken, in the protocol's error shape,
    before the body is read (and in place of 100 Continue), closing the connection."""
    port = int(served.rsplit(":", 1)[1])
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}]}
    ).encode()
    infer = b"POST /v2/models/linear/versions/2/infer HTTP/1.1\r\nHost: localhost\r\n"
    length = f"Content-Length: {len(body)}\r\n\r\n".encode()
    identity = _raw(port, infer + b"Content-Encoding: identity\r\nConnection: close\r\n" + length + body)
    assert identity.startswith(b"HTTP/1.1 200 "), identity[:200]
    for coding in (b"br", b"zstd", b"compress", b"gzip, gzip"):
        for expect in (b"", b"Expect: 100-continue\r\n"):
            sent = body if not expect else b""
            answer = _raw(port, infer + expect + b"Content-Encoding: " + coding + b"\r\n" + length + sent)
            head = answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
            assert answer.startswith(b"HTTP/1.1 415 "), answer[:200]
            assert b"\r\naccept-encoding: gzip, deflate\r\n" in head
            assert b"\r\nconnection: close\r\n" in head
            assert _status_and_error(answer)[1] == (
                f"the request body is compressed with {coding.decode()} (its Content-Encoding header), which "
                "tesserad does not take; send it compressed with gzip or deflate (tritonclient.http: "
                "request_compression_algorithm), or uncompressed"
            )


def _rows(count: int) -> dict[str, Any]:
    """An inference request for linear of `count` rows, as JSON."""
    rows = np.arange(count * 4, dtype=np.float32).reshape(count, 4)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [count, 4], "data": rows.ravel().tolist()}]}


def test_answers_are_compressed_as_accept_encoding_asks_as_triton_picks(served: str) -> None:
    """As Triton (tritonclient.http's response_compression_algorithm): gzip or deflate, whichever
    Accept-Encoding weighs highest, the first of equals; an answer under 1 KiB goes as it is."""
    infer = f"{served}/v2/models/linear/versions/2/infer"
    status, headers, plain = call(infer, _rows(32))
    assert status == 200 and len(plain) > 1024 and "Content-Encoding" not in headers
    assert "Accept-Encoding" in headers["Vary"].split(", ")
    for accepted, coding in (
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate, br, zstd", "gzip"),  # a browser's
        ("deflate;q=0.5, gzip;q=0", "deflate"),
        ("GZip;q=0.2, identity;q=0.1", "gzip"),
        ("gzip;q=0", None),
        ("identity, gzip", None),
        ("br, *", None),
    ):
        status, headers, answer = call(infer, _rows(32), {"Accept-Encoding": accepted})
        assert status == 200 and headers.get("Content-Encoding") == coding, accepted
        decoded = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: bytes}[coding](answer)
        assert decoded == plain, accepted
    assert len(call(infer, _rows(32), {"Accept-Encoding": "gzip"})[2]) < len(plain) / 2
    # Binary data: its JSON's length is said of the answer as it decompresses, as tritonclient reads it.
    echo = f"{served}/v2/models/echo/infer"
    arrays = {t: np.ones((32, 3), dtype) for t, dtype in NUMPY.items()}
    binary, header_length = _binary_echo_request(arrays)
    sent = {"Inference-Header-Content-Length": str(header_length)}
    _, plain_headers, plain_binary = call(echo, binary, sent)
    status, headers, answer = call(echo, binary, {**sent, "Accept-Encoding": "gzip"})
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert gzip.decompress(answer) == plain_binary and len(plain_binary) > 1024
    assert headers["Inference-Header-Content-Length"] == plain_headers["Inference-Header-Content-Length"]
    # A compressed request, answered compressed.
    body = json.dumps(_rows(32)).encode()
    headers_sent = {"Content-Encoding": "deflate", "Accept-Encoding": "deflate"}
    status, headers, answer = call(infer, zlib.compress(body), headers_sent)
    assert (status, headers["Content-Encoding"], zlib.decompress(answer)) == (200, "deflate", plain)
    # Small answers (an error's, two rows') go uncompressed.
    status, headers, _ = call(infer, _rows(2), {"Accept-Encoding": "gzip"})
    assert (
        status == 200
        and "Content-Encoding" not in headers
        and "Accept-Encoding" not in headers.get("Vary", "")
    )


def test_large_answers_are_compressed_unless_they_hardly_shrink(served: str) -> None:
    """An answer of 32 KiB or more is compressed off the event loop; one that compresses to 90% of
    its size or more (random binary data) goes as it is, still saying Vary: Accept-Encoding."""
    config = json.dumps({"max_batch_size": 1024})
    assert call(f"{served}/v2/repository/models/echo/load", {"parameters": {"config": config}})[0] == 200
    rng = np.random.default_rng(7)
    ones = {t: np.ones((1024, 3), dtype) for t, dtype in NUMPY.items()}
    noise = {
        t: rng.integers(0, 2, (1024, 3)).astype(bool)
        if t == "BOOL"
        else np.frombuffer(rng.bytes(1024 * 3 * np.dtype(dtype).itemsize), dtype).reshape(1024, 3)
        for t, dtype in NUMPY.items()
    }
    try:
        for arrays, coding in ((ones, "gzip"), (noise, None)):
            binary, header_length = _binary_echo_request(arrays)
            sent = {"Inference-Header-Content-Length": str(header_length), "Accept-Encoding": "gzip"}
            status, headers, answer = call(f"{served}/v2/models/echo/infer", binary, sent)
            assert (status, headers.get("Content-Encoding")) == (200, coding), answer[:300]
            assert "Accept-Encoding" in headers["Vary"].split(", ")
            plain = gzip.decompress(answer) if coding else answer
            length = int(headers["Inference-Header-Content-Length"])
            assert len(plain) > 128 * 1024 and plain[length:] == binary[header_length:]
    finally:
        assert call(f"{served}/v2/repository/models/echo/unload", b"")[0] == 200


def test_x_request_id_is_echoed_on_every_answer_and_carried_by_its_log_lines(
    served: str, caplog: pytest.LogCaptureFixture
) -> None:
    infer = f"{served}/v2/models/linear/versions/2/infer"
    status, headers, _ = call(infer, _rows(2), {"X-Request-ID": "3f2a-9c"})
    assert (status, headers["X-Request-ID"]) == (200, "3f2a-9c")
    status, headers, _ = call(f"{served}/v2/models/nope/infer", _rows(2), {"X-Request-ID": "e-404"})
    assert (status, headers["X-Request-ID"]) == (404, "e-404")
    # Refused before its body is read, in place of 100 Continue.
    answer = _raw(
        int(served.rsplit(":", 1)[1]),
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Encoding: br\r\nX-Request-ID: e-415\r\nContent-Length: 10\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 415 ") and b"\r\nX-Request-ID: e-415\r\n" in answer
    # One that is not 1-200 visible ASCII characters, or sent twice, is dropped: the request is
    # served as without it.
    for sent in ("a b", "x" * 201, ""):
        status, headers, _ = call(infer, _rows(2), {"X-Request-ID": sent})
        assert status == 200 and "X-Request-ID" not in headers, sent
    assert call(infer, _rows(2), {"X-Request-ID": "x" * 200})[1]["X-Request-ID"] == "x" * 200
    connection = http.client.HTTPConnection("127.0.0.1", int(served.rsplit(":", 1)[1]), timeout=30)
    connection.putrequest("GET", "/v2")
    connection.putheader("X-Request-ID", "one")
    connection.putheader("X-Request-ID", "two")
    connection.endheaders()
    twice = connection.getresponse()
    assert twice.status == 200 and twice.getheader("X-Request-ID") is None
    connection.close()

    # The lines logged while a request is answered carry it (the log-settings change here), and
    # so does the access line each answer gets at log_verbose_level 1 (debug).
    caplog.handler.setFormatter(JsonFormatter())
    logging_url = f"{served}/v2/logging"
    try:
        assert call(logging_url, {"log_verbose_level": 1}, {"X-Request-ID": "verbose-on"})[0] == 200
        assert call(infer, _rows(2), {"X-Request-ID": "r-7"})[0] == 200
        # A path is logged as sent: one decoding to a line break cannot forge a line of its own.
        forged = "/v2/models/a%0A2026-12-07 ERROR tesserad: forged/infer"
        assert call(f"{served}{forged.replace(' ', '%20')}", _rows(2), {"X-Request-ID": "r-8"})[0] == 400
    finally:
        assert call(logging_url, {"log_verbose_level": 0})[0] == 200
    lines = [json.loads(line) for line in caplog.text.splitlines() if line.startswith("{")]
    (changed,) = [line for line in lines if line["logger"] == "tesserad.log_settings"][:1]
    assert changed["request_id"] == "verbose-on"
    (access,) = [line for line in lines if line.get("request_id") == "r-7"]
    assert access["logger"] == "tesserad.oip_http.access" and access["level"] == "debug"
    assert (access["msg"], access["status"]) == ("POST /v2/models/linear/versions/2/infer 200", 200)
    (access,) = [line for line in lines if line.get("request_id") == "r-8"]
    assert access["msg"] == "POST /v2/models/a%0A2026-12-07%20ERROR%20tesserad:%20forged/infer 400"


def test_pages_at_listed_origins_may_call_from_a_browser(served: str) -> None:
    """CORS (serving.oip_http_cors_origins): a preflight from a listed origin is answered, and its
    answers name it, with credentials and the Authorization header allowed; any other origin's
    preflight is 403 and its answers carry no Access-Control-Allow-Origin."""
    infer = f"{served}/v2/models/linear/versions/2/infer"
    preflight = {"Origin": APP, "Access-Control-Request-Method": "POST"}
    status, headers, _ = call(
        infer, None, {**preflight, "Access-Control-Request-Headers": "authorization"}, "OPTIONS"
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert "Authorization" in headers["Access-Control-Allow-Headers"].split(", ")
    assert "Inference-Header-Content-Length" in headers["Access-Control-Allow-Headers"]
    # The page's own call, a POST with its Origin: served (the cross-site guard lets it through).
    status, headers, _ = call(infer, _rows(2), {"Origin": APP, "X-Request-ID": "p-1"})
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, APP)
    assert "X-Request-ID" in headers["Access-Control-Expose-Headers"]
    assert headers["Vary"] == "Origin"
    # An error too, so that the page can read what it says.
    status, headers, _ = call(f"{served}/v2/models/nope/infer", _rows(2), {"Origin": APP})
    assert (status, headers["Access-Control-Allow-Origin"]) == (404, APP)
    other = "https://evil.example.com"
    assert error(infer, None, {"Origin": other, "Access-Control-Request-Method": "POST"}, "OPTIONS") == (
        403,
        f"a page at {other!r} may not call this tesserad from a browser: add its origin to "
        "serving.oip_http_cors_origins (env TESSERA_SERVING_OIP_HTTP_CORS_ORIGINS)",
    )
    status, headers, _ = call(f"{served}/v2", None, {"Origin": other})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"
    assert error(infer, _rows(2), {"Origin": other})[0] == 403
    # An OPTIONS that is no preflight is answered as before.
    assert error(infer, None, {"Origin": APP}, "OPTIONS")[0] == 405


def test_any_page_may_read_under_a_star_and_change_only_with_a_token(tmp_path: Path, tokens: Tokens) -> None:
    """`*` lets any page read; a page it alone takes may change something only where callers need
    a token, which a browser never sends by itself (a page must put it in Authorization)."""
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "serving.oip_http_cors_origins": f"{APP}, *",
            "security.tokens_file": str(tokens.file),
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        other = "https://elsewhere.example.com"
        as_admin = {"Authorization": f"Bearer {tokens.token[Role.ADMIN]}"}
        status, headers, _ = call(f"{base}/v2", None, {"Origin": other, **as_admin})
        assert (status, headers["Access-Control-Allow-Origin"], headers["Vary"]) == (200, "*", "Origin")
        assert "Access-Control-Allow-Credentials" not in headers
        preflight = {"Origin": other, "Access-Control-Request-Method": "POST"}
        assert call(f"{base}/v2/models/linear/infer", None, preflight, "OPTIONS")[0] == 204
        # A cross-site POST carrying its token passes the guard; one without is refused for the token.
        assert call(f"{base}/v2/repository/index", b"", {"Origin": other, **as_admin})[0] == 200
        assert error(f"{base}/v2/repository/index", b"", {"Origin": other})[0] == 401
    finally:
        daemon.stop()


def test_a_star_with_client_certificates_alone_lets_no_other_page_change_anything(
    tmp_path: Path, pki: Pki
) -> None:
    """A browser sends its client certificate by itself, as a cookie: under `*` without tokens a
    page a user opened could unload models or change the log settings with a form's POST."""
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "serving.oip_http_cors_origins": f"{APP}, *",
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tls_client_ca_file": str(pki.client_ca),
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        base = f"https://localhost:{daemon.daemon.oip_http_port}"
        form = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        for path in ("/v2/repository/models/linear/unload", "/v2/logging"):
            assert error(f"{base}{path}", b"{}", form, context=context)[0] == 403, path
        # Reads and the listed origin's changes are served.
        status, headers, _ = call(f"{base}/v2", None, form, context=context)
        assert (status, headers["Access-Control-Allow-Origin"]) == (200, "*")
        assert call(f"{base}/v2/repository/index", b"", {"Origin": APP}, context=context)[0] == 200
    finally:
        daemon.stop()


def test_without_cors_origins_no_cors_headers_are_sent(tmp_path: Path) -> None:
    settings = daemon_settings(tmp_path / "data", **{"serving.oip_http_listen": "127.0.0.1:0"})
    daemon = InProcessDaemon(settings).start()
    try:
        base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        status, headers, _ = call(f"{base}/v2", None, {"Origin": APP})
        assert status == 200 and not any(name.startswith("Access-Control") for name in headers)
        assert "Vary" not in headers
        preflight = {"Origin": APP, "Access-Control-Request-Method": "POST"}
        assert error(f"{base}/v2/models/linear/infer", None, preflight, "OPTIONS")[0] == 405
    finally:
        daemon.stop()


def test_tls_tokens_and_roles_are_the_grpc_listener_s(tmp_path: Path, pki: Pki, tokens: Tokens) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tokens_file": str(tokens.file),
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.oip_http_port
        context = ssl.create_default_context(cafile=str(pki.ca))
        base = f"https://localhost:{port}"
        as_reader = {"Authorization": f"Bearer {tokens.token[Role.READER]}"}
        as_admin = {"Authorization": f"Bearer {tokens.token[Role.ADMIN]}"}
        # Probes stay open (security.health_open), as ServerLive and ServerReady on gRPC.
        assert call(f"{base}/v2/health/ready", context=context)[0] == 200
        status, headers, _ = call(f"{base}/v2", context=context)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert error(f"{base}/v2", headers={"Authorization": "Bearer nope"}, context=context)[0] == 401
        assert call(f"{base}/v2", headers=as_reader, context=context)[0] == 200
        assert error(f"{base}/v2/models/linear", headers=as_reader, context=context)[0] == 404
        assert error(f"{base}/v2/repository/models/linear/load", b"", as_reader, context=context) == (
            403,
            "POST /v2/repository/models/linear/load needs the admin role; the token 'reader-holder' "
            "has the reader role",
        )
        assert error(f"{base}/v2/repository/models/linear/load", b"", as_admin, context=context)[0] == 404
        # Registering shared memory maps a client's memory into the daemon: load's role.
        register = f"{base}/v2/systemsharedmemory/region/r/register"
        body = json.dumps({"key": "/tessera-test-absent", "offset": 0, "byte_size": 8}).encode()
        assert error(register, body, as_reader, context=context)[0] == 403
        assert error(f"{base}/v2/systemsharedmemory/unregister", b"", as_reader, context=context)[0] == 403
        assert error(register, body, as_admin, context=context)[0] == 404
        assert call(f"{base}/v2/systemsharedmemory/status", headers=as_reader, context=context)[0] == 200
        with pytest.raises((http.client.HTTPException, OSError)):
            call(f"http://127.0.0.1:{port}/v2", headers=as_reader)
    finally:
        daemon.stop()


def test_fp16_and_bf16_travel_as_binary_data_only_as_in_triton(served: str) -> None:
    infer = f"{served}/v2/models/half/infer"
    x = np.array([[1.5, -2.0]], dtype=np.float16)
    for datatype in ("FP16", "BF16"):
        tensor = {"name": "x", "datatype": datatype, "shape": [1, 2], "data": x.ravel().tolist()}
        assert error(infer, {"inputs": [tensor]}) == (
            400,
            f"input 'x' is {datatype}, which JSON data cannot carry (as in Triton); send it as binary "
            "data: its bytes after the JSON, with the parameter binary_data_size (tritonclient: "
            "set_data_from_numpy(..., binary_data=True))",
        )
    binary_x = {"name": "x", "datatype": "FP16", "shape": [1, 2], "parameters": {"binary_data_size": 4}}

    def infer_binary(**request: Any) -> tuple[int, dict[str, str], bytes]:
        header = json.dumps({"inputs": [binary_x], **request}).encode()
        return call(infer, header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))})

    # An FP16 output asked for as JSON is refused; as binary data, answered.
    status, _, answer = infer_binary(outputs=[{"name": "y"}])
    assert (status, json.loads(answer)["error"]) == (
        400,
        "output 'y' is FP16, which JSON data cannot carry (as in Triton); ask for it as binary data: "
        "the output's parameter binary_data: true, or the request's binary_data_output: true "
        "(tritonclient: InferRequestedOutput(..., binary_data=True))",
    )
    status, headers, answer = infer_binary(parameters={"binary_data_output": True})
    assert status == 200, answer
    length = int(headers["Inference-Header-Content-Length"])
    assert json.loads(answer[:length])["outputs"][0]["datatype"] == "FP16"
    np.testing.assert_array_equal(np.frombuffer(answer[length:], dtype=np.float16), [3.0, -4.0])


def test_a_non_loopback_listener_needs_authentication(tmp_path: Path) -> None:
    # The loopback rule holds for this listener too: it serves the same models.
    settings = daemon_settings(tmp_path, **{"serving.oip_http_listen": "0.0.0.0:0"})
    with pytest.raises(StartupError, match=r"refusing to listen on 0\.0\.0\.0:0 without authentication"):
        InProcessDaemon(settings).start()


def _grpc_info(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    try:
        channel.unary_unary("/tessera.v1.System/GetServerInfo")(b"", timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _until(check: Any) -> Any:
    """Call `check` until it returns something true (30 s at most), and return that."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    pytest.fail("the daemon never reached the state waited for")


def test_requests_take_a_slot_of_max_concurrent_calls_with_grpc_s_calls(tmp_path: Path) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{"serving.oip_http_listen": "127.0.0.1:0", "limits.max_concurrent_calls": 1},
    )
    daemon = InProcessDaemon(settings).start()
    try:
        base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        channel = daemon.channel()
        # A gRPC stream holds the one slot: HTTP is refused as gRPC is, with the same message.
        stream = channel.unary_stream("/tessera.v1.System/WatchSystem")(
            system_pb2.WatchSystemRequest(interval_ms=100).SerializeToString(), timeout=60
        )
        next(stream)
        code, message = _grpc_info(channel)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limits.max_concurrent_calls = 1" in message
        assert error(f"{base}/v2") == (429, message)
        assert error(f"{base}/v2/models/linear/infer", {"inputs": []}) == (429, message)
        # In place of 100 Continue: the refused client never uploads its body.
        answer = _raw(
            daemon.daemon.oip_http_port,
            b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100000\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:80]
        assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
        # As Triton and most proxies say when to try again: in a second.
        assert b"\r\nretry-after: 1\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
        assert _status_and_error(answer) == (429, message)
        # Probes are never turned away, as on gRPC.
        assert call(f"{base}/v2/health/live")[0] == 200
        stream.cancel()
        _until(lambda: call(f"{base}/v2")[0] == 200)

        # An HTTP request in flight (its body not yet sent) holds the slot against gRPC.
        connection = http.client.HTTPConnection("127.0.0.1", daemon.daemon.oip_http_port, timeout=30)
        connection.putrequest("POST", "/v2/models/linear/infer")
        connection.putheader("Content-Length", "1000")
        connection.endheaders(b"{")
        _until(lambda: _grpc_info(channel) == (grpc.StatusCode.RESOURCE_EXHAUSTED, message))
        connection.close()
        _until(lambda: _grpc_info(channel)[0] == grpc.StatusCode.OK)
    finally:
        daemon.stop()


def test_a_reload_refuses_a_removed_token_s_requests_in_progress_and_on_a_kept_alive_connection(
    tmp_path: Path, tokens: Tokens
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "security.tokens_file": str(tokens.file),
            "security.tokens_reload_interval_s": 0,
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.oip_http_port
        reader = f"Bearer {tokens.token[Role.READER]}"
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        kept.request("GET", "/v2", headers={"Authorization": reader})
        first = kept.getresponse()
        assert first.status == 200 and first.read()
        # An inference request admitted, its body still on its way (it would then wait in the
        # batcher's queue the same way): the reload answers it.
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        waiting.putrequest("POST", "/v2/models/nope/infer")
        waiting.putheader("Authorization", reader)
        waiting.putheader("Content-Length", "100")
        waiting.endheaders(b"{")
        _until(lambda: daemon.daemon._oip_http is not None and daemon.daemon._oip_http._calls.in_flight == 1)

        assert cli.main(["tokens", "remove", "reader-holder", "--file", str(tokens.file)]) == 0
        daemon.run(daemon.daemon.reload())

        answer = waiting.getresponse()
        assert answer.status == 401 and answer.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert json.loads(answer.read())["error"] == (
            "the token this inference request was sent with was removed from the tesserad's tokens "
            "file (or replaced) before it was answered; send it again with a valid token"
        )
        waiting.close()
        # The kept-alive connection's next request is checked against the tokens now in use.
        kept.request("GET", "/v2", headers={"Authorization": reader})
        assert kept.getresponse().status == 401
        kept.close()
        admin = {"Authorization": f"Bearer {tokens.token[Role.ADMIN]}"}
        assert error(f"http://127.0.0.1:{port}/v2/models/nope/infer", {"inputs": []}, admin)[0] == 404
    finally:
        daemon.stop()


def _raw(port: int, data: bytes) -> bytes:
    """What the listener answers `data` with, until it closes the connection (b"" for nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
        return answer


def _status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_slow_clients_and_bodies_over_max_message_size_are_refused(tmp_path: Path) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "max_message_size": "1MiB",
            "limits.http_request_timeout_s": 1,
            "limits.max_concurrent_calls": 1,
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.oip_http_port
        channel = daemon.channel()
        infer = b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: localhost\r\n"
        # Headers sent a byte at a time and never finished: both listeners close the connection.
        for listener in (port, daemon.daemon.http_port):
            assert _raw(listener, b"GET /v2 HTTP/1.1\r\nHost: loc") == b""
        # A body that never all arrives: 408, closing the connection, and its slot of
        # max_concurrent_calls is free again.
        answer = _raw(port, infer + b"Content-Length: 100\r\n\r\n{")
        assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
        status, message = _status_and_error(answer)
        assert status == 408 and message == (
            "the request body did not all arrive within limits.http_request_timeout_s = 1 s; send it "
            "at once, and no fewer bytes than its Content-Length says"
        )
        assert _grpc_info(channel)[0] == grpc.StatusCode.OK
        # A Content-Length over max_message_size is refused before the body is read, as gRPC refuses,
        # closing the connection: the rest of the body is never read (nor read as another request).
        answer = _raw(port, infer + b"Content-Length: 10000000000\r\n\r\n{")
        assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
        status, message = _status_and_error(answer)
        assert status == 413 and message == (
            "the request body is 9.31 GiB, over max_message_size = 1 MiB, the largest request this "
            "tesserad accepts (gRPC's too); send fewer rows per request, or ask the operator to raise "
            "max_message_size (env TESSERA_MAX_MESSAGE_SIZE)"
        )
        # Chunked: its size shows as it arrives; the rest of it is not read either.
        chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
        answer = _raw(port, infer + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 17 + b"0\r\n\r\n")
        assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
        status, message = _status_and_error(answer)
        assert status == 413 and message.startswith("the request body is over max_message_size = 1 MiB,")
        # So is a compressed body that decompresses to more.
        bomb = gzip.compress(b" " * (2 * 1024 * 1024))
        status, message = _status_and_error(
            _raw(
                port, infer + f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n".encode() + bomb
            )
        )
        assert status == 413 and message.startswith(
            "the request body decompresses to over max_message_size = 1 MiB,"
        )
        # A body of many tiny members costs CPU out of proportion to its size: their number is capped.
        members = gzip.compress(b" " * 10) * 3000
        assert len(members) > 1 << 16
        status, message = _status_and_error(
            _raw(
                port,
                infer
                + f"Content-Encoding: gzip\r\nContent-Length: {len(members)}\r\n\r\n".encode()
                + members,
            )
        )
        assert (status, message) == (
            400,
            "the request body is over 1024 gzip members one after another; send it compressed as one",
        )
        index = b"POST /v2/repository/index HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer = _raw(port, index + b"2\r\n{}\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"[]")
        assert _grpc_info(channel)[0] == grpc.StatusCode.OK
    finally:
        daemon.stop()


def _head(connection: socket.socket) -> bytes:
    """One answer's status line and headers, as they arrive."""
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := connection.recv(1)):
        answer += chunk
    return answer


def test_expect_100_continue_is_answered_after_the_token_and_size_checks(
    tmp_path: Path, tokens: Tokens
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "security.tokens_file": str(tokens.file),
            "max_message_size": "1MiB",
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.oip_http_port
        reader = b"Authorization: Bearer " + tokens.token[Role.READER].encode() + b"\r\n"
        infer = b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        load = b"POST /v2/repository/models/nope/load HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        # Refused at once, no 100 Continue first: the client never sends its body, and the
        # connection closes (a body sent anyway is never read).
        for head, status in (
            (infer + b"Content-Length: 100\r\n\r\n", 401),
            (infer + reader + b"Content-Length: 10000000000\r\n\r\n", 413),
            (load + reader + b"Content-Length: 100\r\n\r\n", 403),
        ):
            answer = _raw(port, head)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
            assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
        assert _status_and_error(_raw(port, infer + b"Content-Length: 100\r\n\r\n"))[1].startswith(
            "this tesserad needs a token"
        )
        assert _status_and_error(_raw(port, infer + reader + b"Content-Length: 10000000000\r\n\r\n")) == (
            413,
            "the request body is 9.31 GiB, over max_message_size = 1 MiB, the largest request this "
            "tesserad accepts (gRPC's too); send fewer rows per request, or ask the operator to raise "
            "max_message_size (env TESSERA_MAX_MESSAGE_SIZE)",
        )
        # Admitted: 100 Continue, then the answer once the body has come, on a connection kept
        # for the next request.
        index = b"POST /v2/repository/index HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            for _ in range(2):
                connection.sendall(index + reader + b"Content-Length: 2\r\n\r\n")
                assert _head(connection) == b"HTTP/1.1 100 Continue\r\n\r\n"
                connection.sendall(b"{}")
                head = _head(connection)
                assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in head.lower()
                assert connection.recv(2) == b"[]"
            # Nothing at the path, or not for the method: 404 and 405 (with Allow), at once.
            for head, status, says in (
                (b"POST /v2/nothing HTTP/1.1\r\n", 404, "nothing at /v2/nothing"),
                (
                    b"POST /infer HTTP/1.1\r\n",
                    404,
                    "nothing at /infer; the protocol's paths start with /v2",
                ),
                (b"PUT /v2 HTTP/1.1\r\n", 405, "PUT is not served at /v2"),
            ):
                refused = _raw(
                    port, head + b"Host: localhost\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n"
                )
                answer_head = refused.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
                assert refused.startswith(f"HTTP/1.1 {status} ".encode()), refused[:80]
                assert b"\r\nconnection: close\r\n" in answer_head
                assert _status_and_error(refused) == (status, says)
            assert b"\r\nallow: get,head\r\n" in answer_head
            # An expectation other than 100-continue is not one this server can meet.
            connection.sendall(
                index.replace(b"100-continue", b"lunch") + reader + b"Content-Length: 2\r\n\r\n"
            )
            assert _head(connection).startswith(b"HTTP/1.1 417 ")
    finally:
        daemon.stop()


def test_a_datatype_or_shape_no_array_can_have_is_a_400_not_a_500(served: str) -> None:
    infer = f"{served}/v2/models/linear/infer"
    # A JSON list or object where the datatype's name goes (unhashable: it was a 500).
    for datatype in (["FP32"], {"name": "FP32"}):
        assert error(
            infer, {"inputs": [{"name": "x", "datatype": datatype, "shape": [1, 4], "data": [0] * 4}]}
        ) == (
            400,
            f"input 'x' has datatype {datatype!r}, which is no datatype tesserad serves; it serves BOOL, UINT8, "
            "INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64, FP16, BF16, FP32, FP64, BYTES",
        )
    # A long one is quoted cut short, not echoed whole.
    status, says = error(
        infer, {"inputs": [{"name": "x", "datatype": ["FP32"] * 100_000, "shape": [1, 4], "data": [0] * 4}]}
    )
    assert (status, says.split(", which")[0]) == (
        400,
        f"input 'x' has datatype {repr(['FP32'] * 100_000)[:40]}",
    )
    # No elements, but dimensions numpy refuses to make even an empty array of (a 500).
    too_big = (
        "input 'x' has shape {}: its dimensions other than 0 multiply to {} bytes of FP32, more than an "
        "array can span (9223372036854775807 bytes), though it holds no values; send the shape its data has"
    )
    for shape, size in (([2**40, 2**40, 0], 2**82), ([2**70, 0], 2**72)):
        json_data = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]}
        assert error(infer, json_data) == (400, too_big.format(shape, size))
        header = json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 0}}
                ]
            }
        ).encode()
        assert error(infer, header, {"Inference-Header-Content-Length": str(len(header))}) == (
            400,
            too_big.format(shape, size),
        )


def test_a_shape_of_more_dimensions_than_an_array_has_is_a_400_not_a_500(served: str) -> None:
    infer = f"{served}/v2/models/linear/infer"
    refused = (400, "input 'x' has 65 dimensions; an array has at most 64: send the shape its data has")
    shape = [1] * 65
    assert (
        error(infer, {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": [0.0]}]})
        == refused
    )
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 4}}]}
    ).encode()
    assert error(infer, header + bytes(4), {"Inference-Header-Content-Length": str(len(header))}) == refused


def _echo_body(**data: list[Any]) -> dict[str, Any]:
    """A request to echo with one row of zeros for each JSON input (FP16 travels as binary data
    only), `data` given in place of some: {"INT64": [...]}."""
    return {
        "inputs": [
            {
                "name": f"in_{t.lower()}",
                "datatype": t,
                "shape": [1, 3],
                "data": data.get(t, [False] * 3 if t == "BOOL" else [0] * 3),
            }
            for t in NUMPY
            if t != "FP16"
        ]
    }


def test_json_integers_outside_their_datatype_are_refused_naming_its_range(served: str) -> None:
    echo = f"{served}/v2/models/echo/infer"
    outside = "input 'in_{}' has {} in data, outside {}'s range {}; every value must fit the datatype the input is sent as"
    int64_range = f"{-(2**63)}..{2**63 - 1}"
    for datatype, values, value, bounds in (
        ("UINT8", [300, 0, 0], 300, "0..255"),
        ("UINT32", [0, -1, 0], -1, "0..4294967295"),
        # Past int64 (and past uint64) numpy makes no integer of them: they were said not to be integers.
        ("INT64", [2**70, 0, 0], 2**70, int64_range),
        ("INT64", [-(2**70), 0, 0], -(2**70), int64_range),
        ("UINT64", [2**64, 0, 0], 2**64, f"0..{2**64 - 1}"),
        ("UINT64", [-1, 2**63, 0], -1, f"0..{2**64 - 1}"),
        ("INT64", [-1, 2**63, 0], 2**63, int64_range),
    ):
        assert error(echo, _echo_body(**{datatype: values})) == (
            400,
            outside.format(datatype.lower(), value, datatype, bounds),
        ), (datatype, values)


def test_nan_and_infinity_are_taken_in_floating_point_data_only(served: str) -> None:
    """As Triton (since 22.02 it parses request bodies with rapidjson's kParseNanAndInfFlag):
    NaN, Infinity and -Infinity, which JSON itself lacks, are values of FP32 and FP64 data, and
    are answered the same way; anywhere else they are refused, named."""
    infer = f"{served}/v2/models/linear/infer"
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [NaN, Infinity, -Infinity, 0]}]}'
    status, _, answer = call(infer, body)
    assert status == 200, answer
    assert json.loads(answer)["outputs"][0]["data"] == [pytest.approx(math.nan, nan_ok=True)] * 3
    integer = json.dumps(_echo_body()).replace(
        '"in_int32", "datatype": "INT32", "shape": [1, 3], "data": [0, 0, 0]',
        '"in_int32", "datatype": "INT32", "shape": [1, 3], "data": [0, NaN, 0]',
    )
    assert error(f"{served}/v2/models/echo/infer", integer.encode()) == (
        400,
        "input 'in_int32' is INT32: its data must be integers, and NaN is none (JSON has no NaN; "
        "tesserad takes NaN, Infinity and -Infinity in FP32 and FP64 data only, as Triton does)",
    )
    parameter = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}], "parameters": {"scale": -Infinity}}'
    assert error(infer, parameter) == (
        400,
        "the request's parameter 'scale' is -Infinity, which is no JSON number; send a finite number "
        "(tesserad takes NaN, Infinity and -Infinity in FP32 and FP64 data only, as Triton does; "
        "binary data carries any value)",
    )
    # Python's parser reads it as infinite, but it is no Infinity the client sent.
    past = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 1e400]}]}'
    assert error(infer, past) == (
        400,
        "input 'x' has a number beyond a double's range in data, past FP32's range "
        "±3.4028234663852886e+38; every value must fit the datatype the input is sent as",
    )


def test_nan_infinity_and_numbers_past_a_double_in_other_bodies_are_refused_naming_the_field(
    served: str,
) -> None:
    """Bodies that are no inference request (settings, the repository's, shared memory's) have no
    field that takes them: Python's parser would read NaN as a number and 1e400 as infinite."""
    taken = "tesserad takes NaN, Infinity and -Infinity in FP32 and FP64 data only, as Triton does"
    cases = [
        ("/v2/trace/setting", b'{"trace_rate": NaN}', "'trace_rate' is NaN, which is no JSON number"),
        (
            "/v2/models/linear/trace/setting",
            b'{"trace_level": ["TIMESTAMPS", -Infinity]}',
            "'trace_level[1]' is -Infinity, which is no JSON number",
        ),
        (
            "/v2/trace/setting",
            b'{"log_frequency": 1e400}',
            "'log_frequency' is a number beyond a double's range",
        ),
        ("/v2/logging", b'{"log_verbose_level": Infinity}', "'log_verbose_level' is Infinity"),
        ("/v2/repository/index", b'{"ready": -1e400}', "'ready' is a number beyond a double's range"),
        ("/v2/repository/models/linear/load", b'{"parameters": {"x": NaN}}', "'parameters.x' is NaN"),
        (
            "/v2/repository/models/linear/unload",
            b'{"parameters": {"y": 1e999}}',
            "'parameters.y' is a number beyond",
        ),
        (
            "/v2/systemsharedmemory/region/r/register",
            b'{"key": "/nothing", "offset": NaN, "byte_size": 8}',
            "'offset' is NaN",
        ),
    ]
    for path, body, named in cases:
        status, message = error(f"{served}{path}", body)
        assert status == 400 and message.startswith(f"the request body's field {named}"), message
        if "NaN" in named or "Infinity" in named:
            assert message.endswith(f"; send a finite number ({taken})"), message
        else:
            assert message.endswith(f"; send a number within ±{sys.float_info.max!r}"), message
    assert ok_json(f"{served}/v2/trace/setting")["trace_rate"] == "1000"


def test_booleans_are_taken_in_bool_data_only(served: str) -> None:
    """As Triton: numpy would make 1 of true among numbers."""
    echo = f"{served}/v2/models/echo/infer"
    for datatype, expected in (("INT32", "integers"), ("FP64", "numbers")):
        assert error(echo, _echo_body(**{datatype: [0, True, 2]})) == (
            400,
            f"input 'in_{datatype.lower()}' is {datatype}: its data must be {expected}, and true is none "
            "(true and false are BOOL data)",
        )
    assert error(echo, _echo_body(BOOL=[True, 1, False])) == (
        400,
        "input 'in_bool' is BOOL: its data must be true or false",
    )


@pytest.mark.parametrize(
    "same_test",
    [
        test_json_infer_routes_to_a_version_and_counts_statistics,
        test_every_datatype_round_trips_as_json_and_as_binary,
        test_bad_requests_are_refused_with_the_status_and_message_of_grpc,
        test_fp16_and_bf16_travel_as_binary_data_only_as_in_triton,
        test_a_datatype_or_shape_no_array_can_have_is_a_400_not_a_500,
        test_a_shape_of_more_dimensions_than_an_array_has_is_a_400_not_a_500,
        test_json_integers_outside_their_datatype_are_refused_naming_its_range,
        test_nan_and_infinity_are_taken_in_floating_point_data_only,
        test_booleans_are_taken_in_bool_data_only,
        test_request_bodies_compressed_as_triton_takes_them,
        test_answers_are_compressed_as_accept_encoding_asks_as_triton_picks,
    ],
    ids=lambda test: test.__name__.removeprefix("test_"),
)
def test_json_parsed_in_a_process_is_answered_as_json_parsed_inline(
    served_in_processes: str, same_test: Callable[[str], None]
) -> None:
    same_test(served_in_processes)


def test_binary_data_past_max_batch_size_is_refused_before_it_arrives(served: str) -> None:
    infer = "/v2/models/linear/versions/1/infer"
    small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
    assert call(f"{served}{infer}", small)[0] == 200  # loaded
    rows = 65536
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [rows, 4],
                    "parameters": {"binary_data_size": rows * 16},
                }
            ]
        }
    ).encode()
    # The headers and the JSON alone: the 1 MiB of binary data the body announces never comes.
    request = (
        f"POST {infer} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(header) + rows * 16}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n\r\n"
    ).encode()
    answer = _raw(int(served.rsplit(":", 1)[1]), request + header)
    assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
    # JSON refused before the binary data arrives: the connection closes too.
    bad = b'{"inputs": ['
    refused = (
        f"POST {infer} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(bad) + rows * 16}\r\n"
        f"Inference-Header-Content-Length: {len(bad)}\r\n\r\n"
    ).encode()
    bad_answer = _raw(int(served.rsplit(":", 1)[1]), refused + bad)
    assert b"\r\nconnection: close\r\n" in bad_answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
    assert _status_and_error(bad_answer) == (
        400,
        "the request body is not JSON: Expecting value: line 1 column 13 (char 12)",
    )
    assert _status_and_error(answer) == (
        400,
        f"inference request batch-size must be <= 32 for 'linear': input 'x' has {rows} rows, and model "
        "'linear' version 1 is loaded with max_batch_size 32; split the request, or load the version with a "
        "larger max_batch_size (tessera.v1.Inference/LoadModel)",
    )


@pytest.mark.parametrize("daemon", ["served", "served_in_processes"])
def test_the_first_input_in_error_is_the_one_told_of_inline_or_in_a_process(
    daemon: str, request: pytest.FixtureRequest
) -> None:
    infer = f"{request.getfixturevalue(daemon)}/v2/models/echo/infer"
    wide = {"name": "in_int8", "datatype": "INT8", "shape": [1, 3], "data": [1, 2, 300]}
    unsized = {
        "name": "in_fp32",
        "datatype": "FP32",
        "shape": [1, 3],
        "parameters": {"binary_data_size": "x"},
    }
    half = {"name": "in_fp16", "datatype": "FP16", "shape": [1, 3], "data": [1, 2, 3]}
    assert error(infer, {"inputs": [unsized, wide]}) == (
        400,
        "input 'in_fp32''s parameter 'binary_data_size' must be an integer of at least 0",
    )
    assert error(infer, {"inputs": [half, wide]})[1].startswith("input 'in_fp16' is FP16, which JSON")
    # Inputs are read before outputs.
    assert error(infer, {"inputs": [wide], "outputs": [{"name": 7}]}) == (
        400,
        "input 'in_int8' has 300 in data, outside INT8's range -128..127; every value must fit the "
        "datatype the input is sent as",
    )


def _parsers(others: frozenset[int] = frozenset()) -> list[multiprocessing.process.BaseProcess]:
    """This process's parser processes running, but those whose pids are `others`."""
    return [
        p
        for p in multiprocessing.active_children()
        if p.name == "tesserad-json-parser" and p.pid not in others
    ]


def test_large_json_is_parsed_in_a_process_bounded_replaced_when_it_dies_and_ended_at_stop(
    tmp_path: Path,
) -> None:
    settings = daemon_settings(
        tmp_path,
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "serving.max_batch_size": 4096,
            "serving.oip_http_max_json_size": "1MiB",
            "serving.oip_http_json_process_min_size": "64KiB",
            "serving.oip_http_json_queue_size": 1,
        },
    )
    # Another module daemon's parsers may be running.
    others = frozenset(p.pid for p in _parsers() if p.pid is not None)
    daemon = InProcessDaemon(settings).start()
    stopped = False
    try:
        upload(daemon.channel(), "linear", linear_model(1.0))
        infer = f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/models/linear/infer"
        x = np.random.default_rng(0).standard_normal((2048, 4)).astype(np.float32)
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2048, 4], "data": x.ravel().tolist()}]}
        ).encode()
        assert 64 * 1024 < len(body) < 1024 * 1024
        assert not _parsers(others)  # started as the first large body arrives
        status, _, answer = call(infer, body)
        assert status == 200, answer
        (y,) = json.loads(answer)["outputs"]
        np.testing.assert_allclose(np.array(y["data"]).reshape(2048, 3), x @ W, rtol=1e-5)
        (parser,) = _parsers(others)
        # JSON over oip_http_max_json_size: 413 pointing to binary data, before the body is read
        # when its headers say its size, after decompression when they cannot.
        too_large = body + b" " * (1024 * 1024)
        refused = (
            413,
            f"the request's JSON is {format_size(len(too_large))}, over serving.oip_http_max_json_size = "
            "1 MiB: send large tensors as binary data (Triton's binary tensor data extension: raw bytes "
            "after the JSON, with the header Inference-Header-Content-Length; tritonclient.http: "
            "set_data_from_numpy(..., binary_data=True)), which is smaller and takes no parsing; or ask "
            "the operator to raise serving.oip_http_max_json_size (env "
            "TESSERA_SERVING_OIP_HTTP_MAX_JSON_SIZE)",
        )
        request = b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: localhost\r\n"
        answer = _raw(
            daemon.daemon.oip_http_port, request + f"Content-Length: {len(too_large)}\r\n\r\n{{".encode()
        )
        assert _status_and_error(answer) == refused
        assert error(infer, gzip.compress(too_large), {"Content-Encoding": "gzip"}) == refused
        # A stopped parser holds the body it was given: the next one is past
        # oip_http_json_queue_size (503, Retry-After), and when the parser dies, the body it held
        # is answered 503 too; the next body gets a new parser.
        os.kill(parser.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(2) as threads:
            sent = [threads.submit(call, infer, body) for _ in range(2)]
            done, (held,) = wait(sent, return_when=FIRST_COMPLETED)
            status, headers, answer = next(iter(done)).result()
            assert (status, json.loads(answer)["error"]) == (
                503,
                f"tesserad holds {format_size(len(body))} of request bodies whose JSON waits for or is in a "
                f"parser process already, and this one ({format_size(len(body))}) would take it over "
                "serving.oip_http_json_queue_size = 1 B; send it again in a moment, or send large tensors as "
                "binary data (the binary tensor data extension; tritonclient.http: set_data_from_numpy(..., "
                "binary_data=True)), which takes no parsing",
            )
            assert headers["Retry-After"] == "1"
            os.kill(parser.pid, signal.SIGKILL)
            status, headers, answer = held.result()
        assert (status, json.loads(answer)["error"]) == (
            503,
            "the process parsing this request's JSON body ended before it was done (another is started "
            "for the next request); send the request again, or send large tensors as binary data",
        )
        assert headers["Retry-After"] == "1"
        assert call(infer, body)[0] == 200
        (replaced,) = _parsers(others)
        assert replaced.pid != parser.pid
        # A stop while a parser hangs on a body: the stop does not wait on it, the body is
        # answered 503 and the parser ended.
        os.kill(replaced.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(2) as threads:
            sent = [threads.submit(call, infer, body) for _ in range(2)]
            done, (held,) = wait(sent, return_when=FIRST_COMPLETED)
            assert next(iter(done)).result()[0] == 503  # past the queue: the other one is parsed
            stopped = True
            daemon.stop()
            status, _, answer = held.result()
        assert (status, json.loads(answer)["error"]) == (
            503,
            "tesserad stopped while it parsed this request's JSON body; send the request to another instance",
        )
    finally:
        if not stopped:
            daemon.stop()
    assert not replaced.is_alive() and not _parsers(others)


def test_a_full_queue_is_503_with_retry_after_as_triton_answers_it(tmp_path: Path) -> None:
    # Triton answers "Exceeds maximum queue size" with 503; Retry-After says when to come back.
    config = {"max_batch_size": 64, "dynamic_batching": {"default_queue_policy": {"max_queue_size": 1}}}
    settings = daemon_settings(tmp_path, **{"serving.oip_http_listen": "127.0.0.1:0"})
    daemon = InProcessDaemon(settings).start()
    try:
        upload(daemon.channel(), "slow", slow_model())
        base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        load = f"{base}/v2/repository/models/slow/load"
        assert call(load, {"parameters": {"config": json.dumps(config)}})[0] == 200
        rows = np.ones((64, 384), np.float32)
        tensor = {"name": "x", "datatype": "FP32", "shape": list(rows.shape)}
        header = json.dumps(
            {"inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}]}
        ).encode()
        length = {"Inference-Header-Content-Length": str(len(header))}
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(
                    lambda _: call(f"{base}/v2/models/slow/infer", header + rows.tobytes(), length), range(16)
                )
            )
    finally:
        daemon.stop()
    refused = [(headers, json.loads(answer)) for status, headers, answer in answers if status != 200]
    assert {status for status, _, _ in answers} == {200, 503}, [a[0] for a in answers]
    for headers, answer in refused:
        assert headers["Retry-After"] == "1"
        assert "has 1 requests queued, its max_queue_size" in answer["error"]


def _binary_echo_request(arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """A binary-data infer body for the echo model (an input `in_<type>` per array, outputs asked
    as binary data) and the length of its JSON header."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": f"in_{t.lower()}",
                    "datatype": t,
                    "shape": list(a.shape),
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for t, a in arrays.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + b"".join(a.tobytes() for a in arrays.values()), len(header)
