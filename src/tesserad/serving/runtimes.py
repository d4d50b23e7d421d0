"""Runtimes: one loaded model instance that runs a batch of numpy inputs.

`OnnxRuntime` wraps an onnxruntime session (CUDA provider for a "cuda:N" device, else CPU);
`TorchRuntime` builds the architecture from its spec with tesserad.nn and loads safetensors
weights (nothing is unpickled).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tesserad.dtypes import STRING_DTYPE
from tesserad.errors import FailedPrecondition, InvalidArgument
from tesserad.nn.user_modules import contain_user_code
from tesserad.numbers import is_digits
from tesserad.serving.signature import Signature, TensorSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# ONNX element type names (as onnxruntime reports them) -> numpy dtypes.
_ONNX_DTYPES: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": STRING_DTYPE,
}


# onnxruntime's messages carry its internals: a prefix with its status code, and where it failed,
# the C++ source file (a path on the machine that built it), line and function signature, then the
# check that failed; a CUDA error adds the host, file, line and expression. The rest says what
# went wrong (the node, the shapes) in words a client can act on, and is all a client gets.
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_SOURCE = re.compile(
    r"\S+\.(?:h|hpp|cc|cpp|cu|cuh|c):\d+ "  # file:line
    r"[^\n]*?\)(?: const)?(?: \[with [^\]]*\])? "  # the function's signature
    r"(?:[^\n]*? was false\. )?"  # the check that failed
)
_CUDA_PLACE = re.compile(r" ?; (?:hostname|file|line|expr)=[^;]*")


def onnxruntime_message(exc: Exception) -> str:
    """onnxruntime's message for `exc` without its source locations, checks and host, nor the
    line break it may end with (the messages built around it go on after it)."""
    text = _CUDA_PLACE.sub("", str(exc))
    return _ORT_SOURCE.sub("", _ORT_PREFIX.sub("", text)).strip(" ;\n")


class Runtime(Protocol):
    signature: Signature
    memory_bytes: int
    device: str

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch; raises the runtime's own error, its message fit for a
        client (it becomes the request's error)."""
        ...

    def helper_cpu_ns(self) -> int:
        """CPU time so far, in ns, of the threads of its own that help the calling thread run a
        batch (0 when it has none, or none it can tell apart): the batcher adds it to the caller's
        thread time to cost a batch on a CPU."""
        ...

    def close(self) -> None: ...


def cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@functools.cache
def _load_cuda_libraries() -> None:
    """onnxruntime-gpu looks for CUDA and cuDNN in the nvidia-* wheels (or torch's copies) only
    when asked to; otherwise its CUDA provider fails to load and sessions quietly run on the CPU."""
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)  # onnxruntime-gpu 1.21 and later
    if preload is not None:
        preload()


def default_device() -> str:
    return "cuda:0" if cuda_available() else "cpu"


def cuda_index(device: str) -> int | None:
    """None for "cpu", N for "cuda:N", 0 for "cuda"; InvalidArgument for anything else, "cuda:"
    included: an index left out after the colon is more likely a slip than a wish for GPU 0."""
    if device == "cpu":
        return None
    if device == "cuda":
        return 0
    prefix, colon, index = device.partition(":")
    if prefix == "cuda" and colon and is_digits(index):
        return int(index)
    raise InvalidArgument(f"device must be cpu, cuda or cuda:N (N a GPU index, e.g. cuda:0), got {device!r}")


def missing_device(device: str, runtime: str) -> str:
    """Why `runtime` ("onnx", "torch" or "ensemble") cannot run on `device` on this machine; ""
    when it can, or when only the runtime's load can tell (onnxruntime counts no GPUs, so an
    index past them is found only by a torch that sees them)."""
    try:
        cuda = cuda_index(device)
    except InvalidArgument:
        return f"this tesserad knows no device {device!r}"
    # An ensemble runs on its members' devices, not its own.
    if cuda is None or runtime == "ensemble":
        return ""
    if runtime == "onnx" and not cuda_available():
        return "this onnxruntime has no CUDA provider"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no GPU here" if runtime == "torch" else ""
    return past_the_gpus(cuda, torch.cuda.device_count())


def _gpus(count: int) -> str:
    """`count` GPUs and the devices they are, in words."""
    if count == 0:
        return "no GPU"
    names = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
    return f"{count} GPU{'s' if count != 1 else ''} ({names})"


def past_the_gpus(index: int, count: int) -> str:
    """Why cuda:`index` cannot run on a machine of `count` GPUs; "" when it can."""
    return "" if index < count else f"this machine has {_gpus(count)}"


def refuse_past_the_gpus(device: str, index: int, count: int) -> None:
    """FailedPrecondition when `device` (cuda:`index`) is past the machine's `count` GPUs, naming
    them and what to load with instead: found here, before a runtime's own error for it
    (onnxruntime's "invalid device ordinal" read as a model it cannot load, torch's as weights
    that do not fit) misleads."""
    why = past_the_gpus(index, count)
    if why:
        instead = "cuda:0" if count == 1 else f"one of cuda:0..cuda:{count - 1}"
        raise FailedPrecondition(f"device {device}: {why}; load with device {instead}, or cpu")


def _refuse_past_torch_gpus(device: str, index: int) -> None:
    """`refuse_past_the_gpus` by the GPUs torch counts; onnxruntime counts none itself, so with a
    torch that sees none, onnxruntime's own error says it."""
    import torch

    if torch.cuda.is_available():
        refuse_past_the_gpus(device, index, torch.cuda.device_count())


class OnnxRuntime:
    def __init__(self, path: Path, device: str, intra_op_threads: int) -> None:
        import onnxruntime

        cuda = cuda_index(device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Spinning worker threads would take the cores the gRPC threads need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if cuda is None:
            providers: list[Any] = ["CPUExecutionProvider"]
        elif not cuda_available():
            raise FailedPrecondition(
                f"device {device} asks for CUDA, but this onnxruntime has no CUDA provider; "
                "load with device cpu or install onnxruntime-gpu"
            )
        else:
            _refuse_past_torch_gpus(device, cuda)
            _load_cuda_libraries()
            # cuDNN's exhaustive algorithm search (onnxruntime's default) runs again for every new
            # input shape, and a dynamic batcher makes a new shape of each batch size it forms
            # (bench/ort_cuda_probe.py measures both settings).
            cuda_options = {"device_id": cuda, "cudnn_conv_algo_search": "HEURISTIC"}
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        model = path.read_bytes()
        # Only a CPU session of more than one intra-op thread has a pool to count.
        counts_pool = cuda is None and intra_op_threads > 1
        with _SESSION_CREATION if counts_pool else contextlib.nullcontext():
            before = _thread_ids() if counts_pool else set()
            try:
                # From the bytes, not the path: onnxruntime's load errors would name the server's path.
                self._session = onnxruntime.InferenceSession(model, options, providers=providers)
            except Exception as exc:  # onnxruntime raises its own exception types for a bad model
                raise FailedPrecondition(
                    f"onnxruntime cannot load this model: {onnxruntime_message(exc)}"
                ) from None
            self._helpers = _intra_op_pool(_thread_ids() - before, intra_op_threads) if counts_pool else ()
        if cuda is not None and "CUDAExecutionProvider" not in self._session.get_providers():
            # onnxruntime falls back to the CPU with only a log line; serving on it would be a lie.
            del self._session
            raise FailedPrecondition(
                f"device {device}: onnxruntime's CUDA provider did not start (a CUDA or cuDNN library "
                "it needs is missing or of another major version; `python -c 'import onnxruntime; "
                "onnxruntime.print_debug_info()'` shows what it found); load with device cpu or fix "
                "the CUDA install"
            )
        self.device = device
        self.memory_bytes = path.stat().st_size
        self.signature = Signature(
            tuple(_onnx_spec(arg) for arg in self._session.get_inputs()),
            tuple(_onnx_spec(arg) for arg in self._session.get_outputs()),
        )

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        names = list(output_names)
        try:
            outputs = self._session.run(names, dict(inputs))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeError(onnxruntime_message(exc)) from exc
        return dict(zip(names, outputs, strict=True))

    def helper_cpu_ns(self) -> int:
        """Its intra-op pool's CPU time so far: onnxruntime runs parts of a batch on the pool's
        threads, which the calling thread's own CPU time leaves out (a batch spread over 8
        threads would look 8x cheaper per row than it is)."""
        total = 0
        for tid in self._helpers:
            try:
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as stat:
                    total += int(stat.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that is gone has no more CPU time to add
        return total

    def close(self) -> None:
        del self._session


# Sessions whose pool is counted are created one at a time, so the threads that appear during one
# are its own pool's (others, created meanwhile, can still start threads: _intra_op_pool checks).
_SESSION_CREATION = threading.Lock()


def _thread_ids() -> set[str]:
    """This process's thread ids (Linux; elsewhere none, and no pool is counted)."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _intra_op_pool(started: set[str], intra_op_threads: int) -> tuple[str, ...]:
    """The threads a CPU session's creation started, when they are what its intra-op pool should
    be (onnxruntime starts intra_op_threads - 1; the caller is the last). Any other count means
    some other thread started meanwhile (gRPC's, an executor's): none is counted rather than
    another's work counted as the model's."""
    if intra_op_threads > 1 and len(started) == intra_op_threads - 1:
        return tuple(sorted(started))
    if started:
        log.debug(
            "onnxruntime session: %d threads started, %d expected; its pool's CPU is not counted",
            len(started),
            max(0, intra_op_threads - 1),
        )
    return ()


def _onnx_spec(arg: Any) -> TensorSpec:
    if arg.type not in _ONNX_DTYPES:
        raise FailedPrecondition(f"tensor {arg.name!r} has type {arg.type}, which tesserad cannot serve")
    # Symbolic ("batch") or missing dims are dynamic.
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, _ONNX_DTYPES[arg.type], shape)


_ONE_TENSOR = "a served module returns one tensor shaped (N, output_size)"


class TorchRuntime:
    """A tesserad.nn architecture with safetensors weights, in eval mode."""

    def __init__(
        self, weights: Path, architecture: Mapping[str, Any], signature: Signature, device: str
    ) -> None:
        import torch
        from safetensors.torch import load_file

        from tesserad.nn.architectures import build_model
        from tesserad.nn.specs import spec_from_dict

        cuda = cuda_index(device)
        if cuda is not None and not torch.cuda.is_available():
            raise FailedPrecondition(
                f"device {device} asks for CUDA, but torch sees {_gpus(0)} on this machine; load with "
                "device cpu"
            )
        if cuda is not None:
            refuse_past_the_gpus(device, cuda, torch.cuda.device_count())
        self._torch = torch
        self._device = torch.device("cpu" if cuda is None else f"cuda:{cuda}")
        # A python family's module may override load_state_dict, to, eval or state_dict, or hook
        # them: user code, run in a thread a coroutine awaits, whose SystemExit would end the daemon.
        with contain_user_code("loading the model ran its code, which"):
            model = build_model(spec_from_dict(dict(architecture)))
            try:
                model.load_state_dict(load_file(str(weights), device=str(self._device)))
            except RuntimeError as exc:
                raise FailedPrecondition(f"the weights do not fit the architecture: {exc}") from None
            except OSError as exc:  # str(exc) names the server's path; strerror does not
                raise FailedPrecondition(
                    f"the weights cannot be read: {exc.strerror or type(exc).__name__}"
                ) from None
            self._model = model.to(self._device).eval()
            self.memory_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        self.device = device
        self.signature = signature
        self._output_size = signature.outputs[0].shape[-1]

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        # tesserad.nn architectures take one input and return one output.
        (array,) = inputs.values()
        # A python family's forward is user code: its SystemExit must not end the daemon.
        with contain_user_code("the model's forward"), torch.inference_mode():
            output = self._model(self._tensor(array))
        result = self._served(output).cpu().numpy()
        return {name: result for name in output_names}

    def _served(self, output: Any) -> torch.Tensor:
        """`output` of a forward as the signature's float32 tensor (N, output_size), another float
        dtype cast to it; FailedPrecondition saying what the forward returned otherwise. A python
        family's forward is the user's code, which may return anything. N is not checked: the
        batcher serves a model whose rows differ from its input's alone. About 0.5 us a call."""
        served: torch.Tensor  # the forward's output is untyped; this says what it is once checked
        if (
            isinstance(output, self._torch.Tensor)
            and output.dim() == 2
            and output.shape[1] == self._output_size
        ):
            if output.dtype is self._torch.float32:
                served = output
                return served
            if output.is_floating_point():
                served = output.float()
                return served
        raise self._not_served(output)

    def _not_served(self, output: object) -> FailedPrecondition:
        """What is wrong with a forward's `output` that _served refuses, and what to return."""
        if isinstance(output, tuple | list | dict):
            return FailedPrecondition(
                f"forward returned a {type(output).__name__} of {len(output)}; {_ONE_TENSOR}: return one, "
                "or export to ONNX for several outputs (torch.onnx.export, then push the .onnx file)"
            )
        if not isinstance(output, self._torch.Tensor):
            what = "None" if output is None else f"an object of type {type(output).__name__}"
            return FailedPrecondition(f"forward returned {what}; {_ONE_TENSOR}: return one")
        if output.dim() != 2 or output.shape[1] != self._output_size:
            return FailedPrecondition(
                f"forward returned a tensor shaped {tuple(output.shape)}; {_ONE_TENSOR}, here "
                f"(N, {self._output_size}): return that shape, or push with the output_size it returns"
            )
        return FailedPrecondition(
            f"forward returned a tensor of dtype {str(output.dtype).removeprefix('torch.')}; {_ONE_TENSOR} "
            "of floating-point values, served as float32: return scores (logits), not labels or indices"
        )

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """`array` as a tensor on the device, sharing its memory where it may.

        A lone request's array is a view of its message's bytes, which are read-only; torch
        tensors are writable, so torch warns on sharing it (and a model writing its input would
        write into the message). It is copied once: on a CPU into a new array (np.array then
        from_numpy: 0.6 us for 64 bytes, 3.4 us for 128 KiB; torch.tensor: 2.5 and 5.3 us), onto
        a GPU by torch.tensor straight from it, the one copy the device needs anyway.
        """
        # torch.from_numpy is unannotated; the annotation says what it returns.
        tensor: torch.Tensor
        if array.flags.writeable:
            tensor = self._torch.from_numpy(np.ascontiguousarray(array)).to(self._device)
        elif self._device.type == "cpu":
            tensor = self._torch.from_numpy(np.array(array, order="C"))
        else:
            tensor = self._torch.tensor(array, device=self._device)
        return tensor

    def helper_cpu_ns(self) -> int:
        """0: torch's intra-op threads are one pool shared by every torch model in the process, so
        their time cannot be told apart per runtime."""
        return 0

    @property
    def module(self) -> torch.nn.Module:
        """The torch module itself (explanations run their own copy with autograd)."""
        module: torch.nn.Module = self._model
        return module

    def close(self) -> None:
        del self._model
