"""Conformance with Triton's own Python client (PyPI `tritonclient[grpc,http]`), over gRPC and
over HTTP/REST (serving.oip_http_listen).

tritonclient pins protobuf<7 and ships its own `inference` package, so it cannot share this
process: it runs in a subprocess under the interpreter of its own virtual environment, named by
TESSERA_TRITONCLIENT_PYTHON (or found at .venv-triton/bin/python in the repository root). Make
one with `make .venv-triton/.installed` (`make test` does).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_models import W, linear_model, upload

REPO = Path(__file__).resolve().parents[3]

# Runs under tritonclient's interpreter; prints one JSON object of what it saw.
CLIENT_SCRIPT = r"""
import json, queue, sys
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

client = tc.InferenceServerClient(sys.argv[1])
model = sys.argv[2]
CONFIG = {
    "max_batch_size": 4,
    "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4]},
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    "response_cache": {"enable": True},
    # As Triton answers them for a model of its own: its defaults, taken.
    "version_policy": {"latest": {"num_versions": 1}},
    "optimization": {"input_pinned_memory": {"enable": True}, "output_pinned_memory": {"enable": True}},
    "default_model_filename": "model.onnx",
    "model_transaction_policy": {"decoupled": False},
}
seen = {"live": client.is_server_live(), "ready": client.is_server_ready()}
seen["ready_before_load"] = client.is_model_ready(model)
client.load_model(model)
seen["ready_after_load"] = client.is_model_ready(model)
seen["extensions"] = list(client.get_server_metadata().extensions)
metadata = client.get_model_metadata(model, as_json=True)
seen["inputs"] = [[t["name"], t["datatype"], [int(d) for d in t["shape"]]] for t in metadata["inputs"]]
config = client.get_model_config(model, as_json=True)["config"]
seen["max_batch_size"] = config["max_batch_size"]
seen["queue_policy"] = config["dynamic_batching"].get("default_queue_policy")

x = np.arange(8, dtype=np.float32).reshape(2, 4)
tensor = tc.InferInput("x", [2, 4], "FP32")
tensor.set_data_from_numpy(x)
result = client.infer(model, [tensor], outputs=[tc.InferRequestedOutput("y")], request_id="tc-1")
seen["y"] = result.as_numpy("y").tolist()
seen["id"] = result.get_response().id

bad = tc.InferInput("x", [2, 5], "FP32")
bad.set_data_from_numpy(np.zeros((2, 5), dtype=np.float32))
try:
    client.infer(model, [bad])
    seen["bad"] = None
except InferenceServerException as exc:
    seen["bad"] = [exc.status(), exc.message()]

try:
    client.infer(model, [tensor], outputs=[tc.InferRequestedOutput("y", class_count=2)])
    seen["classification"] = None
except InferenceServerException as exc:
    seen["classification"] = [exc.status(), exc.message()]

# More rows than ModelConfig's max_batch_size, a sequence, then priority and timeout as
# tritonclient encodes them (uint64_param, int64_param microseconds).
big = tc.InferInput("x", [33, 4], "FP32")
big.set_data_from_numpy(np.zeros((33, 4), dtype=np.float32))
for key, call in (
    ("over_max_batch", lambda: client.infer(model, [big])),
    ("sequence", lambda: client.infer(model, [tensor], sequence_id=5, sequence_start=True)),
):
    try:
        call()
        seen[key] = None
    except InferenceServerException as exc:
        seen[key] = [exc.status(), exc.message()]
seen["priority_timeout"] = client.infer(model, [tensor], priority=2, timeout=60_000_000).as_numpy("y").shape

# A stream answers each request on its own: a bad one is an error in the stream, not its end.
answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put((result, error)))
client.async_stream_infer(model, [bad], request_id="s-bad")
client.async_stream_infer(model, [tensor], request_id="s-good")
streamed = [answers.get(timeout=60) for _ in range(2)]
client.stop_stream()
seen["stream_ids"] = sorted(r.get_response().id for r, e in streamed if e is None)
seen["stream_errors"] = [e.message() for r, e in streamed if e is not None]

stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
seen["success_count"] = int(stats["inference_stats"]["success"]["count"])
seen["models"] = [[m["name"], m.get("state", "")] for m in client.get_model_repository_index(as_json=True)["models"]]
client.unload_model(model)
seen["ready_after_unload"] = client.is_model_ready(model)
seen["index_after_unload"] = [
    [m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", "")]
    for m in client.get_model_repository_index(as_json=True)["models"]
]

# load_model with a config override (Triton's model configuration as JSON), good and bad.
client.load_model(model, config=json.dumps(CONFIG))
config = client.get_model_config(model, as_json=True)["config"]
seen["config_loaded"] = [
    config["max_batch_size"],
    int(config["dynamic_batching"]["max_queue_delay_microseconds"]),
    config["instance_group"][0]["count"],
    config["response_cache"].get("enable", False),
]
try:
    client.load_model(model, config=json.dumps({**CONFIG, "cc_model_filenames": {"7.5": "model.plan"}}))
    seen["bad_config"] = None
except InferenceServerException as exc:
    seen["bad_config"] = [exc.status(), exc.message()]
seen["max_batch_size_after_bad_config"] = client.get_model_config(model, as_json=True)["config"]["max_batch_size"]

# Triton's workflow: get the config, change a field, load with it; a signature change is refused.
config = client.get_model_config(model, as_json=True)["config"]
config["max_batch_size"] = 8
config["dynamic_batching"]["max_queue_delay_microseconds"] = "250"
client.load_model(model, config=json.dumps(config))
after = client.get_model_config(model, as_json=True)["config"]
seen["round_trip"] = [
    after["max_batch_size"],
    int(after["dynamic_batching"]["max_queue_delay_microseconds"]),
    [w["batch_size"] for w in after["model_warmup"]],
    after["input"] == config["input"] and after["output"] == config["output"],
]
config["input"][0]["dims"] = ["5"]
try:
    client.load_model(model, config=json.dumps(config))
    seen["signature_change"] = None
except InferenceServerException as exc:
    seen["signature_change"] = [exc.status(), exc.message()]
# A load that fails (an ONNX version cannot load on the torch runtime), and a model not there.
for key, name, override in (("failed_load", model, '{"backend": "pytorch"}'), ("missing_load", "missing", None)):
    try:
        client.load_model(name, config=override)
        seen[key] = None
    except InferenceServerException as exc:
        seen[key] = [exc.status(), exc.message()]
print(json.dumps(seen))
"""


# tritonclient.http: binary tensor data by default (and JSON when asked), errors as HTTP statuses.
HTTP_CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

client = th.InferenceServerClient(sys.argv[1])
model = sys.argv[2]
CONFIG = {
    "max_batch_size": 4,
    "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4]},
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    "response_cache": {"enable": True},
    # As Triton answers them for a model of its own: its defaults, taken.
    "version_policy": {"latest": {"num_versions": 1}},
    "optimization": {"input_pinned_memory": {"enable": True}, "output_pinned_memory": {"enable": True}},
    "default_model_filename": "model.onnx",
    "model_transaction_policy": {"decoupled": False},
}
seen = {"live": client.is_server_live(), "ready": client.is_server_ready()}
seen["ready_before_load"] = client.is_model_ready(model)
client.load_model(model)
seen["ready_after_load"] = client.is_model_ready(model)
seen["extensions"] = client.get_server_metadata()["extensions"]
seen["inputs"] = [[t["name"], t["datatype"], t["shape"]] for t in client.get_model_metadata(model)["inputs"]]
seen["max_batch_size"] = client.get_model_config(model)["max_batch_size"]

x = np.arange(8, dtype=np.float32).reshape(2, 4)
tensor = th.InferInput("x", [2, 4], "FP32")
tensor.set_data_from_numpy(x)
result = client.infer(model, [tensor], outputs=[th.InferRequestedOutput("y")], request_id="th-1")
seen["y"] = result.as_numpy("y").tolist()
seen["id"] = result.get_response()["id"]
as_json = th.InferInput("x", [2, 4], "FP32")
as_json.set_data_from_numpy(x, binary_data=False)
seen["y_json"] = client.infer(
    model, [as_json], outputs=[th.InferRequestedOutput("y", binary_data=False)]
).as_numpy("y").tolist()
seen["y_all_outputs"] = client.infer(model, [tensor], priority=2, timeout=60_000_000).as_numpy("y").tolist()
seen["y_compressed"] = [
    client.infer(
        model, [tensor], request_compression_algorithm=coding, response_compression_algorithm=coding
    ).as_numpy("y").tolist()
    for coding in ("gzip", "deflate")
]
# An answer over 1 KiB, which the daemon compresses as asked and tritonclient decompresses.
rows = th.InferInput("x", [32, 4], "FP32")
rows.set_data_from_numpy(np.arange(128, dtype=np.float32).reshape(32, 4))
seen["y_32_rows"] = [
    client.infer(
        model, [rows], outputs=[th.InferRequestedOutput("y", binary_data=False)],
        response_compression_algorithm=coding,
    ).as_numpy("y").tolist()
    for coding in (None, "gzip", "deflate")
]

bad = th.InferInput("x", [2, 5], "FP32")
bad.set_data_from_numpy(np.zeros((2, 5), dtype=np.float32))
for key, call in (
    ("bad", lambda: client.infer(model, [bad])),
    ("missing", lambda: client.infer("missing", [tensor])),
    ("sequence", lambda: client.infer(model, [tensor], sequence_id=5, sequence_start=True)),
):
    try:
        call()
        seen[key] = None
    except InferenceServerException as exc:
        seen[key] = [exc.status(), exc.message()]
stats = client.get_inference_statistics(model)["model_stats"][0]
seen["success_count"] = stats["inference_stats"]["success"]["count"]
seen["models"] = [[m["name"], m.get("state", "")] for m in client.get_model_repository_index()]
client.unload_model(model)
seen["ready_after_unload"] = client.is_model_ready(model)

client.load_model(model, config=json.dumps(CONFIG))
config = client.get_model_config(model)
seen["config_loaded"] = [
    config["max_batch_size"],
    int(config["dynamic_batching"]["max_queue_delay_microseconds"]),
    config["instance_group"][0]["count"],
    config["response_cache"].get("enable", False),
]
try:
    client.load_model(model, config=json.dumps({**CONFIG, "cc_model_filenames": {"7.5": "model.plan"}}))
    seen["bad_config"] = None
except InferenceServerException as exc:
    seen["bad_config"] = [exc.status(), exc.message()]
seen["max_batch_size_after_bad_config"] = client.get_model_config(model)["max_batch_size"]

# Triton's workflow over HTTP, whose config has every field, 0s included.
config = client.get_model_config(model)
config["max_batch_size"] = 8
config["dynamic_batching"]["max_queue_delay_microseconds"] = 0
client.load_model(model, config=json.dumps(config))
after = client.get_model_config(model)
seen["round_trip"] = [
    after["max_batch_size"],
    after["dynamic_batching"]["max_queue_delay_microseconds"],
    [w["batch_size"] for w in after["model_warmup"]],
    after["input"] == config["input"] and after["output"] == config["output"],
]
config["output"][0]["data_type"] = "TYPE_FP64"
try:
    client.load_model(model, config=json.dumps(config))
    seen["signature_change"] = None
except InferenceServerException as exc:
    seen["signature_change"] = [exc.status(), exc.message()]
for key, name, override in (("failed_load", model, '{"backend": "pytorch"}'), ("missing_load", "missing", None)):
    try:
        client.load_model(name, config=override)
        seen[key] = None
    except InferenceServerException as exc:
        seen[key] = [exc.status(), exc.message()]
print(json.dumps(seen))
"""


def tritonclient_python() -> Path | None:
    named = os.environ.get("TESSERA_TRITONCLIENT_PYTHON")
    if named:
        return Path(named)
    default = REPO / ".venv-triton" / "bin" / "python"
    return default if default.exists() else None


def require_tritonclient() -> Path:
    """The python with tritonclient, or a skip saying how to get one (before any daemon starts)."""
    python = tritonclient_python()
    if python is None:
        pytest.skip(
            "tritonclient is not installed: set TESSERA_TRITONCLIENT_PYTHON to a python with "
            "'tritonclient[grpc,http]' (or create .venv-triton in the repository root)"
        )
    return python


def run_client_script(python: Path, script: str, *args: str) -> Any:
    """Run a client script under tritonclient's python; what it printed, read as JSON."""
    run = subprocess.run(
        [str(python), "-c", script, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_tritonclient_talks_to_tesserad(start_daemon) -> None:
    python = require_tritonclient()
    # A response cache budget, for load_model's config to turn the cache on.
    daemon = start_daemon(**{"serving.response_cache_size": 1 << 20})
    channel = daemon.channel()
    linear = "linear"
    upload(channel, linear, linear_model(1.0))
    upload(channel, linear, linear_model(2.0))
    seen = run_client_script(python, CLIENT_SCRIPT, daemon.target, linear)
    assert (seen["live"], seen["ready"]) == (True, True)
    assert (seen["ready_before_load"], seen["ready_after_load"], seen["ready_after_unload"]) == (
        False,
        True,
        False,
    )
    assert "model_repository" in seen["extensions"] and "statistics" in seen["extensions"]
    assert seen["inputs"] == [["x", "FP32", [-1, 4]]]
    assert seen["max_batch_size"] == 32
    assert seen["queue_policy"] == {"allow_timeout_override": True, "max_queue_size": 1024}
    np.testing.assert_allclose(
        np.array(seen["y"]), np.arange(8, dtype=np.float32).reshape(2, 4) @ (W * 2), rtol=1e-6
    )
    assert seen["id"] == "tc-1"
    status, message = seen["bad"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "'x'" in message and "dimension 1" in message
    assert seen["config_loaded"] == [4, 100, 1, True]
    status, message = seen["bad_config"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("config field 'cc_model_filenames' is not supported by tesserad")
    assert seen["max_batch_size_after_bad_config"] == 4
    assert seen["round_trip"] == [8, 250, [8, 1], True]
    status, message = seen["signature_change"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("config field 'input' is x FP32 [5], but linear version 2 has x FP32 [4]")
    # As Triton answers a load that fails; a model that is not there stays NOT_FOUND.
    status, message = seen["failed_load"]
    assert (
        status == "StatusCode.INVALID_ARGUMENT" and "the torch runtime needs a safetensors version" in message
    )
    status, message = seen["missing_load"]
    assert status == "StatusCode.NOT_FOUND" and "model 'missing' does not exist" in message
    status, message = seen["classification"]
    assert status == "StatusCode.UNIMPLEMENTED" and "classification" in message
    status, message = seen["over_max_batch"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("inference request batch-size must be <= 32 for 'linear'")
    status, message = seen["sequence"]
    assert status == "StatusCode.UNIMPLEMENTED" and "keeps no state between requests" in message
    assert seen["priority_timeout"] == [2, 3]
    assert seen["stream_ids"] == ["s-good"]
    (stream_error,) = seen["stream_errors"]
    assert "'x'" in stream_error and "dimension 1" in stream_error
    assert seen["success_count"] == 3
    assert [linear, "READY"] in seen["models"]
    assert seen["index_after_unload"] == [[linear, "2", "UNAVAILABLE", "unloaded"]]


def test_tritonclient_http_talks_to_tesserad(start_daemon) -> None:
    python = require_tritonclient()
    daemon = start_daemon(
        **{"serving.oip_http_listen": "127.0.0.1:0", "serving.response_cache_size": 1 << 20}
    )
    channel = daemon.channel()
    upload(channel, "linear", linear_model(1.0))
    seen = run_client_script(python, HTTP_CLIENT_SCRIPT, f"127.0.0.1:{daemon.daemon.oip_http_port}", "linear")
    assert (seen["live"], seen["ready"]) == (True, True)
    assert (seen["ready_before_load"], seen["ready_after_load"], seen["ready_after_unload"]) == (
        False,
        True,
        False,
    )
    assert "statistics" in seen["extensions"]
    assert seen["inputs"] == [["x", "FP32", [-1, 4]]]
    assert seen["max_batch_size"] == 32
    expected = (np.arange(8, dtype=np.float32).reshape(2, 4) @ W).tolist()
    assert seen["y"] == seen["y_json"] == seen["y_all_outputs"]
    # Request bodies compressed as tritonclient.http compresses them (the daemon decompresses them).
    assert seen["y_compressed"] == [seen["y"], seen["y"]]
    plain, *compressed = seen["y_32_rows"]
    assert compressed == [plain, plain]
    np.testing.assert_allclose(
        np.array(plain), np.arange(128, dtype=np.float32).reshape(32, 4) @ W, rtol=1e-6
    )
    np.testing.assert_allclose(np.array(seen["y"]), expected, rtol=1e-6)
    assert seen["id"] == "th-1"
    status, message = seen["bad"]
    assert status == "400" and "'x'" in message and "dimension 1" in message
    status, message = seen["missing"]
    assert status == "404" and "missing" in message
    status, message = seen["sequence"]
    assert status == "501" and "keeps no state between requests" in message
    assert seen["config_loaded"] == [4, 100, 1, True]
    status, message = seen["bad_config"]
    assert status == "400" and message.startswith(
        "config field 'cc_model_filenames' is not supported by tesserad"
    )
    assert seen["max_batch_size_after_bad_config"] == 4
    assert seen["round_trip"] == [8, 0, [8, 1], True]
    status, message = seen["signature_change"]
    assert status == "400"
    assert message.startswith("config field 'output' is y FP64 [3], but linear version 1 has y FP32 [3]")
    status, message = seen["failed_load"]
    assert status == "400" and "the torch runtime needs a safetensors version" in message
    status, message = seen["missing_load"]
    assert status == "404" and "model 'missing' does not exist" in message
    assert seen["success_count"] == 8
    assert ["linear", "READY"] in seen["models"]


# Triton's logging extension, as tritonclient reads and changes it over gRPC and HTTP.
LOGGING_CLIENT_SCRIPT = r"""
import json, sys
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

seen = {}
for kind, client in (("grpc", tc.InferenceServerClient(sys.argv[1])), ("http", th.InferenceServerClient(sys.argv[2]))):
    if kind == "grpc":
        read = lambda: {k: next(iter(v.values())) for k, v in client.get_log_settings(as_json=True)["settings"].items()}
        update = lambda s: {k: next(iter(v.values())) for k, v in client.update_log_settings(s, as_json=True)["settings"].items()}
        extensions = list(client.get_server_metadata().extensions)
    else:
        read, update = client.get_log_settings, client.update_log_settings
        extensions = client.get_server_metadata()["extensions"]
    entry = {"logging": "logging" in extensions, "read": read()}
    entry["round_trip"] = update(entry["read"])
    entry["changed"] = update({"log_info": False, "log_verbose_level": 1})
    entry["verbose"] = update({"log_verbose_level": 2})
    for key, settings in (
        ("file", {"log_file": "triton.log"}),
        ("format", {"log_format": "default"}),
        ("unknown", {"log_warnings": False}),
    ):
        try:
            update(settings)
            entry[key] = None
        except InferenceServerException as exc:
            entry[key] = [exc.status(), exc.message()]
    entry["restored"] = update({"log_info": True, "log_verbose_level": 0})
    seen[kind] = entry
print(json.dumps(seen))
"""


def test_tritonclient_reads_and_changes_the_log_settings(start_daemon) -> None:
    python = require_tritonclient()
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0"})
    seen = run_client_script(
        python, LOGGING_CLIENT_SCRIPT, daemon.target, f"127.0.0.1:{daemon.daemon.oip_http_port}"
    )
    defaults = {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "ISO8601",
    }
    for kind, invalid in (("grpc", "StatusCode.INVALID_ARGUMENT"), ("http", "400")):
        entry = seen[kind]
        assert entry["logging"], kind
        assert entry["read"] == entry["round_trip"] == entry["restored"] == defaults, kind
        assert entry["changed"] == {**defaults, "log_info": False, "log_verbose_level": 1}, kind
        assert entry["verbose"] == {**defaults, "log_info": False, "log_verbose_level": 2}, kind
        status, message = entry["file"]
        assert status == invalid and message.startswith("log setting 'log_file' cannot name a file"), kind
        status, message = entry["format"]
        assert status == invalid and message.startswith("log setting 'log_format' cannot be 'default'"), kind
        status, message = entry["unknown"]
        assert status == invalid and message.startswith("unknown log setting 'log_warnings'"), kind
