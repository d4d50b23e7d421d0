"""OnnxRuntime with a real onnxruntime session: its count of its intra-op pool's CPU time, and
its refusal of a CUDA session that onnxruntime quietly built on the CPU; the device names read."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from serving_fakes import save

from tesserad.errors import FailedPrecondition, InvalidArgument
from tesserad.serving import runtimes
from tesserad.serving.runtimes import OnnxRuntime, cuda_index

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")

WIDTH = 384


def matmul_stack(path: Path, layers: int = 8) -> Path:
    """x (N, 384) through `layers` MatMuls: a batch of many rows is split over the intra-op pool."""
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((WIDTH, WIDTH)) / WIDTH).astype(np.float32) for _ in range(layers)]
    names = ["x"] + [f"h{i}" for i in range(layers - 1)] + ["y"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(layers)],
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    return save(graph, path / "stack.onnx")


def test_a_session_with_an_intra_op_pool_counts_the_pools_cpu_time(tmp_path: Path) -> None:
    runtime = OnnxRuntime(matmul_stack(tmp_path), "cpu", 2)
    try:
        before = runtime.helper_cpu_ns()
        x = np.ones((1024, WIDTH), dtype=np.float32)
        for _ in range(10):
            runtime.run({"x": x}, ["y"])
        # onnxruntime starts one pool thread for 2 intra-op threads; it took part of the batches.
        assert runtime.helper_cpu_ns() > before
    finally:
        runtime.close()


def test_a_session_without_a_pool_has_no_helper_time(tmp_path: Path) -> None:
    runtime = OnnxRuntime(matmul_stack(tmp_path), "cpu", 1)
    try:
        runtime.run({"x": np.ones((1024, WIDTH), dtype=np.float32)}, ["y"])
        assert runtime.helper_cpu_ns() == 0
    finally:
        runtime.close()


def test_threads_another_part_started_meanwhile_are_not_taken_for_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The threads a creation saw start count as its pool only when there are as many as the pool
    # has; one more (any other thread of the process) and none is counted.
    assert runtimes._intra_op_pool({"11"}, 2) == ("11",)
    assert runtimes._intra_op_pool({"11", "12"}, 2) == ()
    assert runtimes._intra_op_pool(set(), 2) == ()
    assert runtimes._intra_op_pool({"11"}, 1) == ()
    import onnxruntime

    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(10,))
    session = onnxruntime.InferenceSession

    def session_while_another_thread_starts(*args: object, **kwargs: object) -> object:
        other.start()
        return session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session_while_another_thread_starts)
    runtime = OnnxRuntime(matmul_stack(tmp_path), "cpu", 2)
    try:
        assert runtime._helpers == ()
        assert runtime.helper_cpu_ns() == 0
    finally:
        release.set()
        other.join()
        runtime.close()


@pytest.mark.skipif(runtimes.cuda_available(), reason="this onnxruntime's CUDA provider may start")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_cuda_session_onnxruntime_built_on_the_cpu_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An onnxruntime-gpu whose CUDA libraries are missing lists the CUDA provider, cannot start
    # it, and builds the session on the CPU with only a log line. This onnxruntime, made to list
    # the provider, does the same: the session is real, only the listing is made up.
    monkeypatch.setattr(runtimes, "cuda_available", lambda: True)
    with pytest.raises(FailedPrecondition, match=r"CUDA provider did not start.*load with device cpu"):
        OnnxRuntime(matmul_stack(tmp_path), "cuda:0", 1)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul node. "
            "Name:'mm' Status Message: /onnxruntime_src/onnxruntime/core/framework/op_kernel.cc:83 virtual "
            "OrtValue* onnxruntime::OpKernelContext::OutputMLValue(int, const onnxruntime::TensorShape&) "
            "status.IsOK() was false. Shape mismatch attempting to re-use buffer. {1,3} != {2,3}.",
            "Non-zero status code returned while running MatMul node. Name:'mm' Status Message: Shape "
            "mismatch attempting to re-use buffer. {1,3} != {2,3}.",
        ),
        (
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv "
            "node. Name:'conv' Status Message: /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:123 "
            "std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const "
            "char*, const char*, ERRTYPE, const char*, const char*, int) [with ERRTYPE = cudaError; bool THRW = "
            "true; std::conditional_t<THRW, void, onnxruntime::common::Status> = void] CUDA failure 2: out of "
            "memory ; GPU=0 ; hostname=gpu-box-7 ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/"
            "cuda_allocator.cc ; line=47 ; expr=cudaMalloc((void**)&p, size);",
            "Non-zero status code returned while running Conv node. Name:'conv' Status Message: CUDA failure "
            "2: out of memory ; GPU=0",
        ),
        ("Got invalid dimensions for input: x", "Got invalid dimensions for input: x"),
    ],
)
def test_onnxruntime_messages_lose_their_source_locations_checks_and_host(raw: str, clean: str) -> None:
    assert runtimes.onnxruntime_message(RuntimeError(raw)) == clean


@pytest.mark.parametrize(("device", "index"), [("cpu", None), ("cuda", 0), ("cuda:0", 0), ("cuda:12", 12)])
def test_device_names_read_as_a_cuda_index(device: str, index: int | None) -> None:
    assert cuda_index(device) == index


# "cuda:" was read as cuda:0; "²" and "٣" pass str.isdigit().
@pytest.mark.parametrize(
    "device", ["cuda:", "cuda:-1", "cuda:x", "cuda:0:1", "gpu:0", "CPU", "", "cuda:\u00b2", "cuda:\u0663"]
)
def test_other_device_names_are_refused_naming_the_forms_accepted(device: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        cuda_index(device)
    assert refused.value.message == (
        f"device must be cpu, cuda or cuda:N (N a GPU index, e.g. cuda:0), got {device!r}"
    )


@pytest.mark.skipif(runtimes.cuda_available(), reason="this machine may have the GPU asked for")
def test_missing_device_says_why_a_device_cannot_run_here() -> None:
    assert runtimes.missing_device("cpu", "onnx") == ""
    # A newer tesserad's device, say: no runtime could run it.
    assert runtimes.missing_device("mps", "torch") == "this tesserad knows no device 'mps'"
    assert runtimes.missing_device("cuda:0", "onnx") == "this onnxruntime has no CUDA provider"
    # An ensemble runs on its members' devices.
    assert runtimes.missing_device("cuda:0", "ensemble") == ""


def test_a_gpu_past_the_machine_s_is_refused_naming_the_gpus_and_what_to_load_with() -> None:
    # Found before onnxruntime's "invalid device ordinal" (read as a model it cannot load) or
    # torch's (read as weights that do not fit the architecture) can mislead.
    runtimes.refuse_past_the_gpus("cuda:0", 0, 1)
    runtimes.refuse_past_the_gpus("cuda:1", 1, 2)
    for device, index, count, said in (
        ("cuda:7", 7, 1, "device cuda:7: this machine has 1 GPU (cuda:0); load with device cuda:0, or cpu"),
        (
            "cuda:2",
            2,
            2,
            "device cuda:2: this machine has 2 GPUs (cuda:0..cuda:1); load with device one of "
            "cuda:0..cuda:1, or cpu",
        ),
    ):
        with pytest.raises(FailedPrecondition) as refused:
            runtimes.refuse_past_the_gpus(device, index, count)
        assert refused.value.message == said
