"""Explanations: captum attributions of a torch version's output to each position of its input.

Explanations share the machine with Predict, so they are kept on a short leash:

- They run on the pool's own explain threads (`threads`, default 1), never on a batcher's
  worker or the event loop; at most `threads` run at once, and at most `queue_size` more wait.
  Beyond that, ResourceExhausted: the caller retries later instead of queueing unbounded work.
- Each explanation calls the model in chunks of at most `chunk_rows` rows (one input row at a
  time; captum's internal batch, perturbations per evaluation or samples per call), and before
  each chunk it yields while Predict requests are queued (up to YIELD_LIMIT_S per chunk, so a
  steady Predict load slows explanations down but never starves them). Once Predict requests
  queue, no new chunk starts: what a Predict waits for beyond its own queue is at most the chunk
  in flight on each explain thread (a forward and backward pass of `chunk_rows` rows).
- The torch module an explanation uses is its own copy (a few are cached), never a serving
  instance: gradients need autograd, serving runs in inference mode.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from tesserad.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    RefusedBySignature,
    ResourceExhausted,
)
from tesserad.nn.user_modules import contain_user_code
from tesserad.serving.pool import ServableVersion
from tesserad.serving.runtimes import TorchRuntime
from tesserad.serving.signature import validate_request

if TYPE_CHECKING:
    import torch

DEFAULT_IG_STEPS = 32
DEFAULT_SHAP_SAMPLES = 16
MAX_STEPS = 1024
# Before each chunk an explanation waits this long at most for queued Predict requests to clear.
YIELD_LIMIT_S = 0.05
_YIELD_POLL_S = 0.0005
# Torch modules kept for explanations (a model's weights each).
_CACHED_MODULES = 2


class Method(Enum):
    INTEGRATED_GRADIENTS = "integrated_gradients"
    SALIENCY = "saliency"
    OCCLUSION = "occlusion"
    GRADIENT_SHAP = "gradient_shap"


@dataclass(frozen=True)
class ExplainOptions:
    """Zero or empty fields take the defaults (see ExplainOptions in inference.proto)."""

    steps: int = 0
    baseline: float = 0.0
    window: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    noise: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Explanation:
    attributions: dict[str, np.ndarray]
    output_indices: tuple[int, ...]
    # Integrated gradients only: each row's completeness error.
    convergence_delta: tuple[float, ...]
    queue_ns: int
    compute_ns: int


class QueuedExplanation:
    """An explanation on its way: `future` gives the answer; `cancel()` takes it off the queue,
    or stops it at its next chunk when it is running (the caller went away)."""

    def __init__(self, future: Future[Explanation], abort: threading.Event) -> None:
        self.future = future
        self._abort = abort

    def cancel(self) -> None:
        self._abort.set()
        self.future.cancel()


@dataclass(frozen=True)
class _Job:
    servable: ServableVersion
    row_shape: tuple[int, ...]
    method: Method
    output_index: int | None
    options: ExplainOptions
    window: tuple[int, ...]
    stride: tuple[int, ...]
    abort: threading.Event


def default_window(row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """1 in every dimension but the last three, which take a quarter of their size (at least 1)."""
    spatial = max(len(row_shape) - 3, 0)
    return tuple(1 if axis < spatial else max(size // 4, 1) for axis, size in enumerate(row_shape))


class Explainer:
    def __init__(
        self,
        *,
        threads: int,
        queue_size: int,
        chunk_rows: int,
        predict_waiting: Callable[[], bool],
    ) -> None:
        self.threads = threads
        self.queue_size = queue_size
        self.chunk_rows = chunk_rows
        self._predict_waiting = predict_waiting
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="serving-explain")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        # The most explanations that ever ran at once (never above `threads`).
        self.peak_running = 0
        self._modules: OrderedDict[tuple[str, int], TorchRuntime] = OrderedDict()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def submit(
        self,
        servable: ServableVersion,
        inputs: Mapping[str, np.ndarray],
        method: Method,
        output_index: int | None,
        options: ExplainOptions,
    ) -> QueuedExplanation:
        """Check the request and queue it; InvalidArgument for a bad one, ResourceExhausted when
        `queue_size` explanations already wait."""
        job = self._check(servable, inputs, method, output_index, options)
        with self._lock:
            if self._waiting >= self.queue_size:
                raise ResourceExhausted(
                    f"{self._waiting} explanations are waiting for the {self.threads} explain "
                    f"thread(s), the most serving.explain_queue_size allows; retry in a few seconds, "
                    "send fewer rows per explanation, or raise serving.explain_queue_size"
                )
            self._waiting += 1
        enqueued = time.perf_counter_ns()
        future = self._executor.submit(self._run, job, dict(inputs), enqueued)
        future.add_done_callback(self._forget_if_cancelled)
        return QueuedExplanation(future, job.abort)

    def _forget_if_cancelled(self, future: Future[Explanation]) -> None:
        # A future is only cancelled before it starts, so `_run` never counted it out.
        if future.cancelled():
            with self._lock:
                self._waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._modules.clear()

    # -- checks ----------------------------------------------------------------------------

    def _check(
        self,
        servable: ServableVersion,
        inputs: Mapping[str, np.ndarray],
        method: Method,
        output_index: int | None,
        options: ExplainOptions,
    ) -> _Job:
        label = f"model {servable.model!r} version {servable.version}"
        signature = servable.signature
        if signature is None or servable.architecture is None or servable.format != "safetensors":
            raise FailedPrecondition(f"{label} is not a torch version; explanations need one")
        try:
            validate_request(signature, inputs, (), label)
        except InvalidArgument as refused:
            # As Predict refuses it: the version named apart, for a client to send again to it alone.
            raise RefusedBySignature(refused.message, servable.version) from None
        if len(signature.inputs) != 1 or len(signature.outputs) != 1 or len(signature.outputs[0].shape) != 2:
            raise FailedPrecondition(
                f"{label} does not take one input and give one (rows, outputs) output; explanations need that"
            )
        (spec,) = signature.inputs
        if spec.dtype.kind != "f":
            raise FailedPrecondition(
                f"input {spec.name!r} of {label} is {spec.dtype.name}; explanations need a floating-point input"
            )
        (output,) = signature.outputs
        outputs = output.shape[-1]
        if output_index is not None and (output_index < 0 or (outputs != -1 and output_index >= outputs)):
            allowed = f"in 0..{outputs - 1}" if outputs != -1 else ">= 0"
            raise InvalidArgument(
                f"output_index must be {allowed} (an index into output {output.name!r} of {label}), "
                f"got {output_index}"
            )
        steps = options.steps
        if not 0 <= steps <= MAX_STEPS:
            raise InvalidArgument(f"options.steps must be in 1..{MAX_STEPS} (0 for the default), got {steps}")
        if not (np.isfinite(options.baseline) and np.isfinite(options.noise) and options.noise >= 0):
            raise InvalidArgument(
                "options.baseline must be finite and options.noise finite and >= 0, "
                f"got {options.baseline} and {options.noise}"
            )
        row_shape = tuple(inputs[spec.name].shape[1:])
        window = options.window or default_window(row_shape)
        stride = options.stride or window
        for name, sizes in (("window", window), ("stride", stride)):
            if len(sizes) != len(row_shape) or not all(
                1 <= size <= dim for size, dim in zip(sizes, row_shape, strict=False)
            ):
                raise InvalidArgument(
                    f"options.{name} must give a size in 1..dim for each dimension of one row "
                    f"{list(row_shape)}, got {list(sizes)}"
                )
        return _Job(servable, row_shape, method, output_index, options, window, stride, threading.Event())

    # -- running ---------------------------------------------------------------------------

    def _run(self, job: _Job, inputs: dict[str, np.ndarray], enqueued: int) -> Explanation:
        started = time.perf_counter_ns()
        with self._lock:
            self._waiting -= 1
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
        try:
            # The module's forward, hooks and loading are user code for a python family, run in
            # a thread a coroutine awaits: its SystemExit would end the daemon.
            with contain_user_code("explaining the model ran its code, which"):
                attributions, indices, deltas = self._explain(job, inputs)
        finally:
            with self._lock:
                self._running -= 1
        return Explanation(
            attributions, indices, deltas, started - enqueued, time.perf_counter_ns() - started
        )

    def _module(self, servable: ServableVersion) -> torch.nn.Module:
        key = (servable.model, servable.version)
        with self._lock:
            runtime = self._modules.get(key)
            if runtime is not None:
                self._modules.move_to_end(key)
                return runtime.module
        assert servable.architecture is not None and servable.signature is not None
        import torch

        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        with servable.open_artifact() as path:
            runtime = TorchRuntime(path, servable.architecture, servable.signature, device)
        module = runtime.module
        for parameter in module.parameters():
            parameter.requires_grad_(False)  # gradients are wanted for the input only
        with self._lock:
            self._modules[key] = runtime
            while len(self._modules) > _CACHED_MODULES:
                self._modules.popitem(last=False)
        return module

    def _yield_to_predict(self) -> None:
        waited_until = time.monotonic() + YIELD_LIMIT_S
        while self._predict_waiting() and time.monotonic() < waited_until:
            time.sleep(_YIELD_POLL_S)

    def _explain(
        self, job: _Job, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], tuple[int, ...], tuple[float, ...]]:
        import torch

        module = self._module(job.servable)
        # A module may hold no parameters (a python family's): its inputs stay on the CPU.
        device = next((p.device for p in module.parameters()), torch.device("cpu"))

        def forward(x: torch.Tensor) -> torch.Tensor:
            if job.abort.is_set():
                raise Cancelled("the explanation was cancelled: its caller went away")
            self._yield_to_predict()
            result: torch.Tensor = module(x)
            return result

        ((name, array),) = inputs.items()
        rows = []
        indices = []
        deltas = []
        for row in np.asarray(array, dtype=np.float32):
            x = torch.tensor(row[None], device=device)
            index = job.output_index
            if index is None:
                with torch.no_grad():
                    index = int(module(x)[0].argmax())
            attribution, delta = self._attribute(job, forward, x, index)
            rows.append(attribution.detach().cpu().numpy()[0].astype(np.float32))
            indices.append(index)
            if delta is not None:
                deltas.append(delta)
        return {name: np.stack(rows)}, tuple(indices), tuple(deltas)

    def _attribute(
        self, job: _Job, forward: Callable[[Any], Any], x: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, float | None]:
        import torch
        from captum.attr import GradientShap, IntegratedGradients, Occlusion, Saliency

        options = job.options
        baseline = torch.full_like(x, options.baseline)
        chunk = self.chunk_rows
        if job.method is Method.INTEGRATED_GRADIENTS:
            steps = options.steps or DEFAULT_IG_STEPS
            attribution, delta = IntegratedGradients(forward).attribute(
                x,
                baselines=baseline,
                target=index,
                n_steps=max(steps, 2),  # captum's path needs two points at least
                internal_batch_size=chunk,
                return_convergence_delta=True,
            )
            return attribution, float(delta[0])
        if job.method is Method.SALIENCY:
            # Saliency wants the input's gradient asked for up front (else captum warns).
            return Saliency(forward).attribute(x.requires_grad_(), target=index, abs=True), None
        if job.method is Method.OCCLUSION:
            attribution = Occlusion(forward).attribute(
                x,
                sliding_window_shapes=job.window,
                strides=job.stride,
                baselines=options.baseline,
                target=index,
                perturbations_per_eval=chunk,
            )
            return attribution, None
        samples = options.steps or DEFAULT_SHAP_SAMPLES
        total = torch.zeros_like(x)
        shap = GradientShap(forward)
        # Seeded for repeatable answers; fork_rng puts the global generator back afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            done = 0
            while done < samples:
                n = min(chunk, samples - done)
                part = shap.attribute(x, baselines=baseline, target=index, n_samples=n, stdevs=options.noise)
                total += part * n
                done += n
        return total / samples, None
