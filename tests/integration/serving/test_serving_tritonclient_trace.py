"""Triton's trace extension as tritonclient uses it: get_trace_settings and update_trace_settings
over gRPC and HTTP, globally and for a model, and the traces tesserad writes for the inferences
they sample. tritonclient runs in a subprocess under its own interpreter (see
test_serving_tritonclient)."""

from __future__ import annotations

from pathlib import Path

from serving_models import linear_model, upload
from test_serving_oip_trace import ORDER, traces_in
from test_serving_tritonclient import require_tritonclient, run_client_script

# Runs under tritonclient's interpreter; prints one JSON object of what it saw.
TRACE_CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

seen = {}
x = np.arange(4, dtype=np.float32).reshape(1, 4)
for kind, module, client in (
    ("grpc", tc, tc.InferenceServerClient(sys.argv[1])),
    ("http", th, th.InferenceServerClient(sys.argv[2])),
):
    if kind == "grpc":
        as_dict = lambda answer: {k: v.get("value", []) for k, v in answer["settings"].items()}
        read = lambda model=None: as_dict(client.get_trace_settings(model_name=model, as_json=True))
        update = lambda s, model=None: as_dict(
            client.update_trace_settings(model_name=model, settings=s, as_json=True)
        )
        extensions = list(client.get_server_metadata().extensions)
    else:
        read = lambda model=None: client.get_trace_settings(model_name=model)
        update = lambda s, model=None: client.update_trace_settings(model_name=model, settings=s)
        extensions = client.get_server_metadata()["extensions"]

    def infer(request_id):
        tensor = module.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("linear", [tensor], request_id=request_id)

    entry = {"trace": "trace" in extensions, "read": read()}
    entry["round_trip"] = update(entry["read"])
    entry["model_own"] = update(
        {"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "log_frequency": "1"}, "linear"
    )
    entry["global_after_model"] = read()
    for n in range(4):
        infer(f"{kind}-{n}")
    entry["model_cleared"] = update(
        {"trace_level": None, "trace_rate": None, "log_frequency": None}, "linear"
    )
    for key, settings in (
        ("negative_rate", {"trace_rate": "-1"}),
        ("unknown_level", {"trace_level": ["VERBOSE"]}),
        ("words", {"trace_count": "ten"}),
        ("file", {"trace_file": "/tmp/elsewhere.json"}),
    ):
        try:
            update(settings)
            entry[key] = None
        except InferenceServerException as exc:
            entry[key] = [exc.status(), exc.message()]
    seen[kind] = entry
print(json.dumps(seen))
"""


def test_tritonclient_reads_and_changes_the_trace_settings(start_daemon, tmp_path: Path) -> None:
    python = require_tritonclient()
    file = tmp_path / "trace.json"
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0", "serving.trace_file": str(file)})
    upload(daemon.channel(), "linear", linear_model(1.0))
    seen = run_client_script(
        python, TRACE_CLIENT_SCRIPT, daemon.target, f"127.0.0.1:{daemon.daemon.oip_http_port}"
    )
    grpc_defaults = {
        "trace_file": [str(file)],
        "trace_level": ["OFF"],
        "trace_rate": ["1000"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],
        "trace_mode": ["triton"],
    }
    http_defaults = {
        name: values if name == "trace_level" else values[0] for name, values in grpc_defaults.items()
    }
    for kind, defaults, invalid in (
        ("grpc", grpc_defaults, "StatusCode.INVALID_ARGUMENT"),
        ("http", http_defaults, "400"),
    ):
        entry = seen[kind]
        assert entry["trace"], kind
        assert entry["read"] == entry["round_trip"] == entry["global_after_model"] == defaults, kind
        two = ["2"] if kind == "grpc" else "2"
        one = ["1"] if kind == "grpc" else "1"
        assert entry["model_own"] == {
            **defaults,
            "trace_level": ["TIMESTAMPS"],
            "trace_rate": two,
            "log_frequency": one,
        }, kind
        assert entry["model_cleared"] == defaults, kind
        status, message = entry["negative_rate"]
        assert status == invalid and message.startswith(
            "trace setting 'trace_rate' must be one whole number from 1 to 4294967295"
        ), kind
        status, message = entry["unknown_level"]
        assert status == invalid and message.startswith("trace setting 'trace_level' cannot be 'VERBOSE'")
        status, message = entry["words"]
        assert status == invalid and "trace setting 'trace_count'" in message and "got 'ten'" in message
        status, message = entry["file"]
        assert status == invalid and "serving.trace_file" in message, kind
    # One in two of each client's four inferences, each written at once (log_frequency 1).
    traced = [traces_in(file.with_name(f"trace.json.{i}")) for i in range(4)]
    assert not file.with_name("trace.json.4").exists()
    assert [t["request_id"] for one in traced for t in one.values()] == [
        "grpc-1",
        "grpc-3",
        "http-1",
        "http-3",
    ]
    for one in traced:
        (trace,) = one.values()
        times = [trace["timestamps"][name] for name in ORDER]
        assert list(trace["timestamps"]) == ORDER and times == sorted(times)
