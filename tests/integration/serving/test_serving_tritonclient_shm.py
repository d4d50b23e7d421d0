"""Triton's system shared-memory extension as tritonclient uses it: regions made with
tritonclient.utils.shared_memory in the client's process, registered over gRPC and over HTTP,
inputs read from and outputs written into them by tesserad. tritonclient runs in a subprocess
under its own interpreter (see test_serving_tritonclient)."""

from __future__ import annotations

import uuid

import numpy as np
from serving_models import W, two_output_model, upload
from test_serving_tritonclient import require_tritonclient, run_client_script

# Runs under tritonclient's interpreter; prints one JSON object of what it saw. Model "two":
# x (N, 4) -> a = x @ W (N, 3), b = x + x (N, 4).
SHM_CLIENT_SCRIPT = r"""
import json, os, sys
import numpy as np
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

grpc_client = tc.InferenceServerClient(sys.argv[1])
http_client = th.InferenceServerClient(sys.argv[2])
model, prefix = sys.argv[3], sys.argv[4]
in_key, out_key = f"/{prefix}-in", f"/{prefix}-out"
x = np.arange(8, dtype=np.float32).reshape(2, 4)
inputs = shm.create_shared_memory_region("in", in_key, 32)
outputs = shm.create_shared_memory_region("out", out_key, 64)
shm.set_shared_memory_region(inputs, [x])
seen = {"extensions": list(grpc_client.get_server_metadata().extensions)}


def failure(call):
    try:
        call()
    except InferenceServerException as exc:
        return [exc.status(), exc.message()]
    return None


def grpc_infer(input_size=32, input_region="in"):
    tensor = tc.InferInput("x", [2, 4], "FP32")
    tensor.set_shared_memory(input_region, input_size)
    a = tc.InferRequestedOutput("a")
    a.set_shared_memory("out", 24, offset=8)
    return grpc_client.infer(model, [tensor], outputs=[a, tc.InferRequestedOutput("b")])


grpc_client.load_model(model)
grpc_client.register_system_shared_memory("in", in_key, 32)
grpc_client.register_system_shared_memory("out", out_key, 64)
status = grpc_client.get_system_shared_memory_status(as_json=True)
seen["grpc_status"] = sorted(
    [r["name"], r["key"], int(r.get("offset", 0)), int(r["byte_size"])] for r in status["regions"].values()
)
result = grpc_infer()
seen["grpc_a"] = shm.get_contents_as_numpy(outputs, np.float32, [2, 3], offset=8).tolist()
seen["grpc_b"] = result.as_numpy("b").tolist()
a = result.get_output("a")
seen["grpc_a_parameters"] = {k: str(v).strip() for k, v in a.parameters.items()}
seen["mismatch"] = failure(lambda: grpc_infer(input_size=28))
seen["duplicate"] = failure(lambda: grpc_client.register_system_shared_memory("in", in_key, 32))
seen["unknown_key"] = failure(lambda: grpc_client.register_system_shared_memory("z", f"/{prefix}-absent", 8))
seen["out_of_bounds"] = failure(lambda: grpc_client.register_system_shared_memory("z", in_key, 32, offset=8))
seen["unknown_status"] = failure(lambda: grpc_client.get_system_shared_memory_status("z"))
grpc_client.unregister_system_shared_memory("in")
seen["unregistered"] = failure(lambda: grpc_infer())
grpc_client.unregister_system_shared_memory()
seen["grpc_after_unregister"] = len(grpc_client.get_system_shared_memory_status().regions)

shm.set_shared_memory_region(outputs, [np.zeros(16, dtype=np.float32)])
http_client.register_system_shared_memory("hin", in_key, 32)
http_client.register_system_shared_memory("hout", out_key, 64)
seen["http_status"] = http_client.get_system_shared_memory_status("hout")
tensor = th.InferInput("x", [2, 4], "FP32")
tensor.set_shared_memory("hin", 32)
a = th.InferRequestedOutput("a")
a.set_shared_memory("hout", 24)
result = http_client.infer(model, [tensor], outputs=[a, th.InferRequestedOutput("b", binary_data=True)])
seen["http_a"] = shm.get_contents_as_numpy(outputs, np.float32, [2, 3]).tolist()
seen["http_b"] = result.as_numpy("b").tolist()
seen["http_a_parameters"] = result.get_output("a")["parameters"]
seen["http_duplicate"] = failure(lambda: http_client.register_system_shared_memory("hin", in_key, 32))
seen["http_unknown_key"] = failure(
    lambda: http_client.register_system_shared_memory("z", f"/{prefix}-absent", 8)
)
seen["http_unknown_status"] = failure(lambda: http_client.get_system_shared_memory_status("z"))
http_client.unregister_system_shared_memory("hin")
http_client.unregister_system_shared_memory()
seen["http_after_unregister"] = http_client.get_system_shared_memory_status()
seen["cuda"] = failure(lambda: http_client.get_cuda_shared_memory_status())

# The segments are the client's: after every unregister they are still there, as written.
seen["segments_kept"] = [os.path.exists(f"/dev/shm/{k[1:]}") for k in (in_key, out_key)]
seen["input_kept"] = shm.get_contents_as_numpy(inputs, np.float32, [2, 4]).tolist()
shm.destroy_shared_memory_region(inputs)
shm.destroy_shared_memory_region(outputs)
print(json.dumps(seen))
"""


def test_tritonclient_puts_tensors_in_system_shared_memory(start_daemon) -> None:
    python = require_tritonclient()
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0"})
    upload(daemon.channel(), "two", two_output_model())
    prefix = f"tessera-test-{uuid.uuid4().hex[:12]}"
    seen = run_client_script(
        python, SHM_CLIENT_SCRIPT, daemon.target, f"127.0.0.1:{daemon.daemon.oip_http_port}", "two", prefix
    )
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert "system_shared_memory" in seen["extensions"]
    assert seen["grpc_status"] == [["in", f"/{prefix}-in", 0, 32], ["out", f"/{prefix}-out", 0, 64]]
    for transport in ("grpc", "http"):
        np.testing.assert_allclose(np.array(seen[f"{transport}_a"]), x @ W, rtol=1e-6)
        assert seen[f"{transport}_b"] == (x + x).tolist()
    assert seen["grpc_a_parameters"] == {
        "shared_memory_region": 'string_param: "out"',
        "shared_memory_byte_size": "int64_param: 24",
        "shared_memory_offset": "int64_param: 8",
    }
    assert seen["http_a_parameters"] == {"shared_memory_region": "hout", "shared_memory_byte_size": 24}
    status, message = seen["mismatch"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x' has shared_memory_byte_size 28, but its shape and datatype need 32 bytes" in message
    status, message = seen["duplicate"]
    assert status == "StatusCode.ALREADY_EXISTS" and "'in' is already registered" in message
    status, message = seen["unknown_key"]
    assert (
        status == "StatusCode.NOT_FOUND" and f"there is no shared-memory object '/{prefix}-absent'" in message
    )
    status, message = seen["out_of_bounds"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert f"'/{prefix}-in' has 32 bytes, but the region asks for 40" in message
    status, message = seen["unknown_status"]
    assert status == "StatusCode.NOT_FOUND" and "no system shared-memory region 'z'" in message
    status, message = seen["unregistered"]
    assert status == "StatusCode.NOT_FOUND"
    assert "input 'x' names shared-memory region 'in', which is not registered" in message
    assert seen["grpc_after_unregister"] == 0
    assert seen["http_status"] == [{"name": "hout", "key": f"/{prefix}-out", "offset": 0, "byte_size": 64}]
    assert seen["http_duplicate"][0] == "409"
    assert seen["http_unknown_key"][0] == "404"
    assert seen["http_unknown_status"][0] == "404"
    assert seen["http_after_unregister"] == []
    status, message = seen["cuda"]
    assert status == "501" and "tesserad does not support CUDA shared memory" in message
    assert seen["segments_kept"] == [True, True]
    assert seen["input_kept"] == x.tolist()
