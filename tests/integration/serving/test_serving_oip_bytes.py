"""String tensors (the Open Inference Protocol's BYTES, ONNX's tensor(string)): pushed, described
and served over gRPC (typed bytes_contents and Triton's length-prefixed raw encoding) and HTTP
(JSON strings and binary data), batched, cached; refused by tessera.v1's Predict, whose Tensor
carries numbers only."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from serving_models import CNN4D_ARCHITECTURE, _upload, label_model, spelled_model, upload, upper_model
from test_serving_tritonclient import require_tritonclient, run_client_script

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.oip import model_config_pb2 as mc
from tests.conftest import InProcessDaemon, daemon_settings

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def encoded(*elements: bytes) -> bytes:
    """Triton's BYTES encoding: each element's length (4 bytes, little-endian), then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    settings = daemon_settings(
        tmp_path_factory.mktemp("bytes"),
        **{"serving.oip_http_listen": "127.0.0.1:0", "serving.response_cache_size": 1 << 20},
    )
    running = InProcessDaemon(settings).start()
    channel = running.channel()
    upload(channel, "labels", label_model())
    upload(channel, "upper", upper_model())
    upload(channel, "spelled", spelled_model())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def oip(daemon: InProcessDaemon) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())


@pytest.fixture(scope="module")
def http(daemon: InProcessDaemon) -> str:
    return f"http://127.0.0.1:{daemon.daemon.oip_http_port}"


def text_request(model: str, shape: list[int], raw: bytes | None = None, typed: list[bytes] | None = None):
    request = pb.ModelInferRequest(model_name=model, id="s-1")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    if typed is not None:
        tensor.contents.bytes_contents.extend(typed)
    return request


def refused(call: Any, code: grpc.StatusCode = INVALID) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    return str(raised.value.details())


def test_string_models_push_and_describe_their_strings(daemon, oip) -> None:
    metadata = oip.ModelMetadata(pb.ModelMetadataRequest(name="labels"))
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("label", "INT64")]
    spelled = oip.ModelMetadata(pb.ModelMetadataRequest(name="spelled"))
    assert [(t.name, t.datatype) for t in (*spelled.inputs, *spelled.outputs)] == [
        ("x", "FP32"),
        ("y", "BYTES"),
    ]
    config = oip.ModelConfig(pb.ModelConfigRequest(name="upper")).config
    assert [i.data_type for i in config.input] == [mc.TYPE_STRING]
    assert [o.data_type for o in config.output] == [mc.TYPE_STRING]
    # tessera's own registry says string.
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    version = registry.GetVersion(
        registry_pb2.GetVersionRequest(ref=common_pb2.VersionRef(model="labels", version=1))
    )
    assert [t.dtype for t in version.signature.inputs] == [common_pb2.DATA_TYPE_STRING]
    assert [t.dtype for t in version.signature.outputs] == [common_pb2.DATA_TYPE_INT64]


def test_model_infer_takes_bytes_raw_and_typed_and_answers_them_raw(oip) -> None:
    words = [b"cat", b"bird", b"fish"]
    for request in (
        text_request("labels", [3], raw=encoded(*words)),
        text_request("labels", [3], typed=words),
    ):
        answer = oip.ModelInfer(request)
        assert (answer.outputs[0].datatype, list(answer.outputs[0].shape)) == ("INT64", [3])
        assert np.frombuffer(answer.raw_output_contents[0], np.int64).tolist() == [0, 2, -1]
    # Strings out, in Triton's raw encoding; UTF-8 both ways, empty strings kept.
    answer = oip.ModelInfer(text_request("upper", [3], raw=encoded("héllo".encode(), b"", b"x")))
    assert (answer.outputs[0].datatype, list(answer.outputs[0].shape)) == ("BYTES", [3])
    assert answer.raw_output_contents[0] == encoded("HÉLLO".encode(), b"", b"X")
    # A number in, its text out.
    request = pb.ModelInferRequest(model_name="spelled")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.array([[1.5, -2]], np.float32).tobytes())
    assert oip.ModelInfer(request).raw_output_contents[0] == encoded(b"1.5", b"-2")


def test_model_infer_bytes_bad_paths(oip) -> None:
    assert refused(lambda: oip.ModelInfer(text_request("labels", [3], raw=encoded(b"a", b"b")))) == (
        "input 'text' has 2 BYTES elements, but shape [3] needs 3"
    )
    assert refused(lambda: oip.ModelInfer(text_request("labels", [3], typed=[b"a", b"b"]))) == (
        "input 'text' has 2 values in contents.bytes_contents, but shape [3] needs 3"
    )
    assert refused(lambda: oip.ModelInfer(text_request("labels", [2], raw=encoded(b"ab") + b"\x02\x00"))) == (
        "input 'text' has BYTES data that ends in the middle of element 1's length: 2 bytes at offset 6, "
        "where a 4-byte little-endian length goes; each element is its length in 4 bytes, little-endian, "
        "then its bytes"
    )
    assert refused(lambda: oip.ModelInfer(text_request("labels", [1], raw=encoded(b"abcdef")[:-2]))) == (
        "input 'text' has BYTES data whose element 0 says it has 6 bytes at offset 4, but only 4 follow; "
        "each element is its length in 4 bytes, little-endian, then its bytes"
    )
    message = refused(lambda: oip.ModelInfer(text_request("labels", [2], raw=encoded(b"ok", b"\xff\xfe"))))
    assert message.startswith(
        "input 'text' has bytes that are not UTF-8 text in element 1 (invalid start byte"
    )
    assert message.endswith("send each element's text encoded as UTF-8")
    # Numbers to a string input, strings to a number input.
    numbers = pb.ModelInferRequest(model_name="labels")
    numbers.inputs.add(name="text", datatype="FP32", shape=[1])
    numbers.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
    assert refused(lambda: oip.ModelInfer(numbers)).startswith(
        "input 'text' has datatype FP32; model 'labels' version 1 expects BYTES"
    )
    strings = pb.ModelInferRequest(model_name="spelled")
    strings.inputs.add(name="x", datatype="BYTES", shape=[1, 2])
    strings.raw_input_contents.append(encoded(b"1", b"2"))
    assert refused(lambda: oip.ModelInfer(strings)).startswith(
        "input 'x' has datatype BYTES; model 'spelled' version 1 expects FP32"
    )


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_http_takes_strings_as_json_and_binary_data(http) -> None:
    infer = f"{http}/v2/models/upper/infer"
    document = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["héllo", "b"]}]}
    status, _, body = post(infer, json.dumps(document).encode())
    assert status == 200, body
    (output,) = json.loads(body)["outputs"]
    assert (output["datatype"], output["shape"], output["data"]) == ("BYTES", [2], ["HÉLLO", "B"])
    metadata = json.loads(urllib.request.urlopen(f"{http}/v2/models/upper", timeout=30).read())
    assert [t["datatype"] for t in (*metadata["inputs"], *metadata["outputs"])] == ["BYTES", "BYTES"]
    # Binary data both ways: length-prefixed, as tritonclient.http sends and reads it.
    data = encoded("ü".encode(), b"ok")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, body = post(infer, header + data, {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, body
    length = int(headers["Inference-Header-Content-Length"])
    (output,) = json.loads(body[:length])["outputs"]
    assert output["parameters"] == {"binary_data_size": len(encoded("Ü".encode(), b"OK"))}
    assert body[length:] == encoded("Ü".encode(), b"OK")


def test_http_bytes_bad_paths(http) -> None:
    infer = f"{http}/v2/models/upper/infer"

    def error(body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        status, _, answer = post(infer, body, headers)
        return status, json.loads(answer)["error"]

    def tensor(**fields: Any) -> bytes:
        return json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], **fields}]}
        ).encode()

    assert error(tensor(data=["a"])) == (400, "input 'text' has 1 BYTES elements, but shape [2] needs 2")
    assert error(tensor(data=["a", 7])) == (
        400,
        "input 'text' is BYTES: its data must be strings, and 7 is none; send each element as a JSON "
        "string, or as binary data (each element's length in 4 bytes, little-endian, then its bytes)",
    )
    data = encoded(b"a") + b"\x09\x00\x00\x00b"
    header = tensor(parameters={"binary_data_size": len(data)})
    assert error(header + data, {"Inference-Header-Content-Length": str(len(header))}) == (
        400,
        "input 'text' has BYTES data whose element 1 says it has 9 bytes at offset 9, but only 1 follow; "
        "each element is its length in 4 bytes, little-endian, then its bytes",
    )
    status, message = error(
        json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}).encode()
    )
    assert status == 400 and message.startswith(
        "input 'text' has datatype FP32; model 'upper' version 1 expects BYTES"
    )


def test_predict_refuses_a_string_model_naming_the_protocol_that_serves_it(daemon) -> None:
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    for model, tensor in (
        ("labels", common_pb2.Tensor(name="text", dtype=common_pb2.DATA_TYPE_UINT8, shape=[1], data=b"a")),
        # Numbers in, but strings out: refused before it runs.
        (
            "spelled",
            common_pb2.Tensor(name="x", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[1, 2], data=bytes(8)),
        ),
    ):
        request = inference_pb2.PredictRequest(target=common_pb2.VersionRef(model=model), inputs=[tensor])
        message = refused(lambda request=request: inference.Predict(request))
        assert message.startswith(f"model {model!r} version 1 takes or returns strings")
        assert "ModelInfer with datatype BYTES" in message
    strings = common_pb2.Tensor(name="text", dtype=common_pb2.DATA_TYPE_STRING, shape=[1], data=encoded(b"a"))
    request = inference_pb2.PredictRequest(target=common_pb2.VersionRef(model="labels"), inputs=[strings])
    assert refused(lambda: inference.Predict(request)).startswith(
        "input 'text' has dtype DATA_TYPE_STRING; a tessera.v1.Tensor holds numbers only"
    )


def load_labels(oip, config: dict[str, Any]) -> None:
    load = pb.RepositoryModelLoadRequest(model_name="labels")
    load.parameters["config"].string_param = json.dumps(config)
    oip.RepositoryModelLoad(load)


def batches(oip) -> dict[int, int]:
    """The batches labels ran, by rows."""
    (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name="labels")).model_stats
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_string_rows_batch_and_are_cached_by_their_text(oip) -> None:
    try:
        load_labels(oip, {"response_cache": {"enable": True}})
        # Cached by the strings' text: the same words hit, other words of the same shape do not.
        for word, label in ((b"dog", 1), (b"cat", 0), (b"dog", 1), (b"cat", 0)):
            answer = oip.ModelInfer(text_request("labels", [1], raw=encoded(word)))
            assert np.frombuffer(answer.raw_output_contents[0], np.int64).tolist() == [label]
        (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name="labels")).model_stats
        assert (stats.inference_stats.cache_hit.count, stats.inference_stats.cache_miss.count) == (2, 2)
        # A full batch of 2 rows runs at once on the one instance; alone, a request would wait out
        # the 5 s delay.
        load_labels(
            oip,
            {
                "max_batch_size": 2,
                "dynamic_batching": {"max_queue_delay_microseconds": 5_000_000},
                "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
            },
        )
        before = batches(oip)
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda word: oip.ModelInfer(text_request("labels", [1], raw=encoded(word))),
                    [b"dog", b"bird"],
                )
            )
        assert [np.frombuffer(a.raw_output_contents[0], np.int64).tolist() for a in answers] == [[1], [2]]
        after = batches(oip)
        assert {rows: n - before.get(rows, 0) for rows, n in after.items() if n != before.get(rows, 0)} == {
            2: 1
        }
    finally:
        oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="labels"))


# Runs under tritonclient's interpreter; prints one JSON object of what it saw.
TRITONCLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

seen = {}
words = np.array(["héllo".encode(), b"", b"x"], dtype=np.object_)
for kind, module, client in (
    ("grpc", tc, tc.InferenceServerClient(sys.argv[1])),
    ("http", th, th.InferenceServerClient(sys.argv[2])),
):
    entry = {}
    modes = (True, False) if kind == "http" else (True,)
    for binary in modes:
        text = module.InferInput("text", [3], "BYTES")
        if kind == "http":
            text.set_data_from_numpy(words, binary_data=binary)
            wanted = [module.InferRequestedOutput("upper", binary_data=binary)]
        else:
            text.set_data_from_numpy(words)
            wanted = [module.InferRequestedOutput("upper")]
        upper = client.infer("upper", [text], outputs=wanted).as_numpy("upper")
        entry["upper_binary" if binary else "upper_json"] = [
            e.decode() if isinstance(e, bytes) else e for e in upper.tolist()
        ]
        labels = client.infer("labels", [text]).as_numpy("label")
        entry["labels"] = labels.tolist()
    x = module.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[0.5, 3]], np.float32))
    entry["spelled"] = [e.decode() for e in client.infer("spelled", [x]).as_numpy("y").ravel().tolist()]
    metadata = client.get_model_metadata("labels")
    if kind == "grpc":
        entry["datatype"] = metadata.inputs[0].datatype
    else:
        entry["datatype"] = metadata["inputs"][0]["datatype"]
    short = module.InferInput("text", [2], "BYTES")
    short.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
    short.set_shape([3])
    numbers = module.InferInput("text", [3], "FP32")
    numbers.set_data_from_numpy(np.zeros(3, np.float32))
    for key, inputs in (("short", [short]), ("numbers", [numbers])):
        try:
            client.infer("labels", inputs)
            entry[key] = None
        except InferenceServerException as exc:
            entry[key] = [exc.status(), exc.message()]
    seen[kind] = entry
print(json.dumps(seen))
"""


def test_tritonclient_sends_and_reads_bytes(daemon, http) -> None:
    python = require_tritonclient()
    seen = run_client_script(python, TRITONCLIENT_SCRIPT, daemon.target, http.removeprefix("http://"))
    for kind, invalid in (("grpc", "StatusCode.INVALID_ARGUMENT"), ("http", "400")):
        entry = seen[kind]
        assert entry["upper_binary"] == ["HÉLLO", "", "X"], kind
        assert entry["labels"] == [-1, -1, -1], kind
        assert entry["spelled"] == ["0.5", "3"], kind
        assert entry["datatype"] == "BYTES", kind
        status, message = entry["short"]
        assert status == invalid and message == "input 'text' has 2 BYTES elements, but shape [3] needs 3", (
            kind
        )
        status, message = entry["numbers"]
        assert status == invalid and message.startswith(
            "input 'text' has datatype FP32; model 'labels' version 1"
        ), kind
    assert seen["http"]["upper_json"] == ["HÉLLO", "", "X"]


def test_a_safetensors_version_declaring_strings_is_refused(daemon) -> None:
    signature = common_pb2.Signature(
        inputs=[common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_STRING, shape=[-1])],
        outputs=[common_pb2.TensorSpec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2])],
    )
    header = registry_pb2.UploadVersionHeader(
        format=registry_pb2.ARTIFACT_FORMAT_SAFETENSORS, architecture=CNN4D_ARCHITECTURE, signature=signature
    )
    assert refused(lambda: _upload(daemon.channel(), "texts", b"weights", header)) == (
        "signature tensor 'input' is a string, which only an ONNX version takes or returns (a "
        "safetensors version runs on numbers): declare its dtype as the model's"
    )
