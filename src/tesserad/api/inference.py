"""Inference service: Predict, PredictStream, load/unload/list, stats, shadow results.

`predict` is the one request path shared with the Open Inference Protocol servicer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
import numpy as np

from tessera.v1 import common_pb2, inference_pb2_grpc
from tessera.v1 import inference_pb2 as pb
from tesserad.api.convert_common import timestamp
from tesserad.api.convert_tensors import (
    array_to_tensor,
    fill_tensor,
    signature_to_proto,
    tensors_to_arrays,
)
from tesserad.api.errors import status_for
from tesserad.errors import InvalidArgument, TesseraError, Unavailable
from tesserad.names import validate_name
from tesserad.serving.batcher import DynamicBatcher, Prediction
from tesserad.serving.histogram import Percentiles
from tesserad.serving.pool import LoadedVersion, LoadState, ServingConfig
from tesserad.serving.service import InferenceService, ShadowResult, Target

log = logging.getLogger(__name__)

# An autoload that races an unload is retried this many times before the error stands.
_AUTOLOAD_ROUNDS = 3
DEFAULT_SHADOW_LIMIT = 100
# Held requests wait at most this many event-loop iterations for the rest of their burst; each
# iteration runs other calls' handlers (tens to hundreds of microseconds).
_MAX_HOLD_TICKS = 16

_RUNTIME_NAMES = {pb.RUNTIME_UNSPECIFIED: "", pb.RUNTIME_ONNX: "onnx", pb.RUNTIME_TORCH: "torch"}
_RUNTIME_PROTO = {name: proto for proto, name in _RUNTIME_NAMES.items()}
_STATE_PROTO = {
    LoadState.LOADING: pb.LOAD_STATE_LOADING,
    LoadState.WARMING: pb.LOAD_STATE_WARMING,
    LoadState.READY: pb.LOAD_STATE_READY,
    LoadState.DRAINING: pb.LOAD_STATE_DRAINING,
    LoadState.FAILED: pb.LOAD_STATE_FAILED,
}


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def predict(
    service: InferenceService,
    target: Target,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    deadline: float | None,
    request_id: str,
) -> tuple[int, Prediction]:
    """(version that served, prediction); loads the version first if needed and allowed."""
    loop = asyncio.get_running_loop()
    for _ in range(_AUTOLOAD_ROUNDS):
        submitted = service.submit(
            target, inputs, output_names, deadline, request_id, hold=_others_ready(loop)
        )
        future = submitted.future
        if future is None:
            await asyncio.to_thread(service.autoload, target.model, submitted.version)
            continue
        batcher = submitted.entry.batcher if submitted.entry is not None else None
        if submitted.held and batcher is not None and batcher.held_rows == submitted.rows:
            # The first held request of a burst schedules the release for all of them.
            loop.call_soon(_release_when_settled, loop, batcher, _MAX_HOLD_TICKS)
        if future.done():  # ran inline
            return submitted.version, future.result()
        waiter = loop.create_future()
        future.add_done_callback(functools.partial(_settle, loop, threading.get_ident(), waiter))
        try:
            return submitted.version, await waiter
        except asyncio.CancelledError:
            future.cancel()  # the client went away: take it off the queue
            raise
    raise Unavailable(f"model {target.model!r} was unloaded while it loaded for this request; retry it")


def _settle(
    loop: asyncio.AbstractEventLoop,
    loop_thread: int,
    waiter: asyncio.Future[Prediction],
    done: Future[Prediction],
) -> None:
    """Pass a batcher future's outcome to the handler awaiting it.

    A batch released on the event loop's own thread completes there: setting the waiter
    directly skips `call_soon_threadsafe`'s self-pipe write and the extra loop wake-up it causes
    (asyncio.wrap_future pays both for every request).
    """
    if threading.get_ident() == loop_thread:
        _copy_outcome(done, waiter)
    else:
        loop.call_soon_threadsafe(_copy_outcome, done, waiter)


def _copy_outcome(done: Future[Prediction], waiter: asyncio.Future[Prediction]) -> None:
    if waiter.done() or done.cancelled():  # the handler was cancelled first
        return
    error = done.exception()
    if error is None:
        waiter.set_result(done.result())
    else:
        waiter.set_exception(error)


def _release_when_settled(loop: asyncio.AbstractEventLoop, batcher: DynamicBatcher, ticks: int) -> None:
    """Release `batcher`'s held requests once the loop has run what was ready (the other
    requests of the burst reach their submit over the next few iterations), or the batch is full."""
    if ticks > 0 and not batcher.full and _others_ready(loop):
        loop.call_soon(_release_when_settled, loop, batcher, ticks - 1)
    else:
        batcher.release()


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether other callbacks (other calls' handlers, under load) are ready to run on `loop`.

    This is the one reliable sign of load for a fast model: it runs inline on this thread, so
    each request finds it idle and arrivals look spaced out even at high concurrency. asyncio
    has no public query for it; its loops keep ready callbacks in `_ready`. On a loop without
    it (uvloop), requests are never held: served as before, only without batches of a burst.
    """
    return bool(getattr(loop, "_ready", None))


def target_from_proto(ref: common_pb2.VersionRef, *, model_required: bool = True) -> Target:
    if model_required or ref.model:
        validate_name("target.model", ref.model)
    selector = ref.WhichOneof("selector")
    if selector == "version":
        if ref.version < 1:
            raise InvalidArgument(f"target.version must be >= 1 (versions count from 1), got {ref.version}")
        return Target(ref.model, version=ref.version)
    if selector == "alias":
        validate_name("target.alias", ref.alias)
        return Target(ref.model, alias=ref.alias)
    return Target(ref.model)


def config_from_proto(config: pb.ServingConfig) -> ServingConfig:
    return ServingConfig(
        runtime=_RUNTIME_NAMES.get(config.runtime, ""),
        device=config.device,
        instances=config.instances,
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.max_queue_delay_us,
        max_queue_size=config.max_queue_size,
        warmup_runs=config.warmup_runs,
        intra_op_threads=config.intra_op_threads,
    )


def loaded_to_proto(entry: LoadedVersion) -> pb.LoadedModel:
    config = entry.config
    return pb.LoadedModel(
        model=entry.model,
        version=entry.version,
        state=_STATE_PROTO[entry.state],
        config=pb.ServingConfig(
            runtime=_RUNTIME_PROTO[config.runtime],
            device=config.device,
            instances=config.instances,
            max_batch_size=config.max_batch_size,
            max_queue_delay_us=config.max_queue_delay_us,
            max_queue_size=config.max_queue_size,
            warmup_runs=config.warmup_runs,
            intra_op_threads=config.intra_op_threads,
        ),
        signature=signature_to_proto(entry.signature) if entry.signature else None,
        memory_bytes=entry.memory_bytes,
        loaded_at=timestamp(entry.loaded_at),
        error=entry.error,
    )


def _latency(summary: Percentiles) -> pb.LatencySummary:
    return pb.LatencySummary(
        count=summary.count,
        mean_us=summary.mean,
        p50_us=summary.p50,
        p95_us=summary.p95,
        p99_us=summary.p99,
        p999_us=summary.p999,
        max_us=summary.max,
    )


def stats_to_proto(entry: LoadedVersion, reset: bool) -> pb.ModelStats:
    s = entry.stats.snapshot(reset)
    return pb.ModelStats(
        model=entry.model,
        version=entry.version,
        request_count=s.request_count,
        error_count=s.error_count,
        row_count=s.row_count,
        throughput_rps=s.throughput_rps,
        queue=_latency(s.queue),
        compute=_latency(s.compute),
        total=_latency(s.total),
        batch_sizes=[pb.BatchSizeCount(rows=rows, count=n) for rows, (n, _) in s.batches.items()],
        since=timestamp(s.since),
        shadow_count=s.shadow_count,
    )


def shadow_to_proto(result: ShadowResult) -> pb.ShadowResult:
    status = None
    if result.error is not None:
        status = common_pb2.Status(code=status_for(result.error).value[0], message=result.error.message)
    return pb.ShadowResult(
        request_id=result.request_id,
        model=result.model,
        primary_version=result.primary_version,
        shadow_version=result.shadow_version,
        outputs=[array_to_tensor(name, array) for name, array in result.outputs.items()],
        max_abs_diff=result.max_abs_diff,
        shadow_total_time_us=result.shadow_total_ns // 1000,
        time=timestamp(result.time),
        status=status,
    )


async def answer_stream(
    requests: AsyncIterator[Any],
    answer: Callable[[Any], Awaitable[Any]],
    failed: Callable[[Any, TesseraError], Any],
) -> AsyncIterator[Any]:
    """Answer each request of a bidirectional stream as soon as it is ready, in any order.

    A failing request becomes `failed(request, error)` and the stream goes on.
    """
    answers: asyncio.Queue[Any] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()
    done = object()

    async def one(request: Any) -> None:
        try:
            response = await answer(request)
        except TesseraError as exc:
            response = failed(request, exc)
        except Exception as exc:  # stays in this request; the log has the details under the id
            error_id = uuid.uuid4().hex[:12]
            log.error("unexpected error in a stream request", exc_info=exc, extra={"error_id": error_id})
            response = failed(request, _Internal(error_id))
        await answers.put(response)

    async def read() -> None:
        async for request in requests:
            task = asyncio.create_task(one(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
        await answers.put(done)

    reader = asyncio.create_task(read())
    try:
        while True:
            response = await answers.get()
            if response is done:
                break
            yield response
        await reader
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()


class _Internal(TesseraError):
    def __init__(self, error_id: str) -> None:
        super().__init__(f"internal error (id {error_id}); the daemon's log has the details under that id")


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def _predict(self, request: pb.PredictRequest, deadline: float | None) -> pb.PredictResponse:
        target = target_from_proto(request.target)
        inputs = tensors_to_arrays(request.inputs)
        version, prediction = await predict(
            self._service, target, inputs, request.output_names, deadline, request.request_id
        )
        response = pb.PredictResponse(
            request_id=request.request_id,
            model=target.model,
            version=version,
            queue_time_us=prediction.queue_ns // 1000,
            compute_time_us=prediction.compute_ns // 1000,
            batch_rows=prediction.batch_rows,
        )
        outputs = response.outputs
        for name, array in prediction.outputs.items():
            fill_tensor(outputs.add(), name, array)  # in place: no Tensor built and then copied
        return response

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return await self._predict(request, deadline_of(context))

    async def PredictStream(
        self, request_iterator: AsyncIterator[pb.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictResponse]:
        deadline = deadline_of(context)

        def failed(request: pb.PredictRequest, error: TesseraError) -> pb.PredictResponse:
            return pb.PredictResponse(
                request_id=request.request_id,
                model=request.target.model,
                status=common_pb2.Status(code=status_for(error).value[0], message=error.message),
            )

        async for response in answer_stream(request_iterator, lambda r: self._predict(r, deadline), failed):
            yield response

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadedModel:
        target = target_from_proto(request.target)
        config = config_from_proto(request.config)
        return loaded_to_proto(await asyncio.to_thread(self._service.load, target, config))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        target = target_from_proto(request.target)
        unloaded = await asyncio.to_thread(self._service.unload, target)
        return pb.UnloadModelResponse(unloaded=[loaded_to_proto(e) for e in unloaded])

    async def ListLoaded(
        self, request: pb.ListLoadedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoadedResponse:
        if request.model:
            validate_name("model", request.model)
        return pb.ListLoadedResponse(
            models=[loaded_to_proto(e) for e in self._service.pool.list(request.model)]
        )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        target = target_from_proto(request.target, model_required=False)
        entries = await asyncio.to_thread(self._service.stats_entries, target)
        return pb.GetStatsResponse(stats=[stats_to_proto(e, request.reset) for e in entries])

    async def ListShadowResults(
        self, request: pb.ListShadowResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListShadowResultsResponse:
        validate_name("model", request.model)
        if request.limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0 for {DEFAULT_SHADOW_LIMIT}), got {request.limit}")
        results = self._service.shadow_results(request.model, request.limit or DEFAULT_SHADOW_LIMIT)
        return pb.ListShadowResultsResponse(results=[shadow_to_proto(r) for r in results])
