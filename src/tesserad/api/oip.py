"""The Open Inference Protocol (inference.GRPCInferenceService), wire compatible with Triton.

Model names are tessera model names; `model_version` is a version number as a string, or
empty for what a request without a selector gets (the deployment, else "latest").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import NoReturn

import grpc

from tesserad import __version__
from tesserad.api.convert_inference import deadline_of
from tesserad.api.convert_tensors import (
    OIP_NAME_BY_DTYPE,
    oip_inputs_to_arrays,
    oip_output,
    oip_requested_outputs,
)
from tesserad.api.streams import answer_stream
from tesserad.errors import InvalidArgument, NotFound, TesseraError, Unimplemented
from tesserad.names import validate_name
from tesserad.numbers import INT64_MAX, whole_number
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc, model_config_pb2
from tesserad.serving.pool import LoadedVersion, LoadState, warmup_batches
from tesserad.serving.predict import predict
from tesserad.serving.service import InferenceService, Target
from tesserad.serving.signature import TensorSpec, sample_is_random

# Listed truthfully: perf_analyzer shows the server-side breakdown only with "statistics".
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]
_PLATFORMS = {"onnx": "onnxruntime_onnx", "torch": "pytorch_libtorch", "ensemble": "ensemble"}
_BACKENDS = {"onnx": "onnxruntime", "torch": "pytorch", "ensemble": ""}
# Triton's names for a version's state in the repository index (its ModelReadyState).
_INDEX_STATES = {
    LoadState.LOADING: "LOADING",
    LoadState.WARMING: "LOADING",
    LoadState.READY: "READY",
    LoadState.DRAINING: "UNLOADING",
    LoadState.FAILED: "UNAVAILABLE",
}
_CONFIG_DTYPES = {
    "BOOL": model_config_pb2.TYPE_BOOL,
    "UINT8": model_config_pb2.TYPE_UINT8,
    "UINT16": model_config_pb2.TYPE_UINT16,
    "UINT32": model_config_pb2.TYPE_UINT32,
    "UINT64": model_config_pb2.TYPE_UINT64,
    "INT8": model_config_pb2.TYPE_INT8,
    "INT16": model_config_pb2.TYPE_INT16,
    "INT32": model_config_pb2.TYPE_INT32,
    "INT64": model_config_pb2.TYPE_INT64,
    "FP16": model_config_pb2.TYPE_FP16,
    "FP32": model_config_pb2.TYPE_FP32,
    "FP64": model_config_pb2.TYPE_FP64,
    "BF16": model_config_pb2.TYPE_BF16,
}


def target_of(name: str, version: str) -> Target:
    validate_name("model_name", name)
    if not version:
        return Target(name)
    return Target(name, version=whole_number("model_version", version, 1, INT64_MAX))


# The one reserved request parameter Triton takes: each streamed answer says whether it is the
# request's last (here every answer is: no model is decoupled).
FINAL_RESPONSE_FLAG = "triton_enable_empty_final_response"


def _parameter(request: pb.ModelInferRequest, key: str, kinds: tuple[str, ...], expected: str) -> object:
    """The value of request parameter `key` (None when absent); InvalidArgument for another kind."""
    if key not in request.parameters:
        return None
    parameter = request.parameters[key]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in kinds:
        raise InvalidArgument(f"parameter {key!r} must be {expected}, got {kind or 'no value'}")
    return getattr(parameter, kind)


def timeout_of(request: pb.ModelInferRequest) -> float | None:
    """The seconds the `timeout` parameter allows the request (None: no timeout), once the
    parameters Triton itself reads are checked as Triton checks them.

    Keys starting with `triton_` are Triton's own: one it does not know is refused, as Triton
    refuses it (ignoring it would hide a typo or a feature this server lacks). A sequence
    (sequence_id, sequence_start, sequence_end) is refused: it is for a stateful model, whose
    answer depends on the sequence's earlier requests, and tesserad has none. `priority` is
    checked and otherwise ignored: no model here has priority levels, and Triton then serves every
    priority alike. Other parameters are the model's own in Triton; no tesserad model reads any.
    """
    for key in request.parameters:
        if key.startswith("triton_") and key != FINAL_RESPONSE_FLAG:
            raise InvalidArgument(
                f"parameter keys starting with 'triton_' are reserved for Triton usage; the only one "
                f"allowed is {FINAL_RESPONSE_FLAG}, got {key!r}: remove it from the request"
            )
    _parameter(request, FINAL_RESPONSE_FLAG, ("bool_param",), "a bool_param")
    sequence_id = _parameter(
        request, "sequence_id", ("int64_param", "string_param"), "an int64_param or string_param"
    )
    starts = _parameter(request, "sequence_start", ("bool_param",), "a bool_param")
    ends = _parameter(request, "sequence_end", ("bool_param",), "a bool_param")
    if sequence_id or starts or ends:
        raise Unimplemented(
            f"the request belongs to a sequence (sequence_id {sequence_id or 'none'}); "
            "tesserad keeps no state between requests (no model has sequence batching), so it would "
            "answer it as if alone: send the request without sequence_id, sequence_start and sequence_end"
        )
    priority = _parameter(
        request, "priority", ("int64_param", "uint64_param"), "an int64_param or uint64_param"
    )
    if isinstance(priority, int) and priority < 0:
        raise InvalidArgument(f"parameter 'priority' must be at least 0, got {priority}")
    timeout_us = _parameter(request, "timeout", ("int64_param",), "an int64_param (microseconds)")
    if not isinstance(timeout_us, int) or timeout_us == 0:
        return None
    if timeout_us < 0:
        raise InvalidArgument(
            f"parameter 'timeout' must be at least 0 microseconds (0: none), got {timeout_us}"
        )
    return timeout_us / 1e6


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def statistics_of(entry: LoadedVersion) -> pb.ModelStatistics:
    s = entry.stats.snapshot()
    succeeded = s.request_count - s.error_count
    # Decoding (and checking) the inputs and encoding the answer are timed per request; a batch's
    # share is its rows times their average per row (a request may hold several rows).
    input_ns_per_row = s.input_ns // s.io_rows if s.io_rows else 0
    output_ns_per_row = s.output_ns // s.io_rows if s.io_rows else 0
    return pb.ModelStatistics(
        name=entry.model,
        version=str(entry.version),
        last_inference=s.last_inference_ms,
        inference_count=s.row_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(succeeded, s.success_ns),
            fail=_duration(s.error_count, s.fail_ns),
            queue=_duration(succeeded, s.queue_ns),
            compute_input=_duration(s.io_count, s.input_ns),
            compute_infer=_duration(succeeded, s.compute_ns),
            compute_output=_duration(s.io_count, s.output_ns),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=rows,
                compute_input=_duration(n, n * rows * input_ns_per_row),
                compute_infer=_duration(n, ns),
                compute_output=_duration(n, n * rows * output_ns_per_row),
            )
            for rows, (n, ns) in s.batches.items()
        ],
    )


class OipServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, stopping: asyncio.Event) -> None:
        self._service = service
        self._stopping = stopping

    async def ServerLive(
        self,
        request: pb.ServerLiveRequest,
        context: grpc.aio.ServicerContext[pb.ServerLiveRequest, pb.ServerLiveResponse],
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self,
        request: pb.ServerReadyRequest,
        context: grpc.aio.ServicerContext[pb.ServerReadyRequest, pb.ServerReadyResponse],
    ) -> pb.ServerReadyResponse:
        # The servicer exists only once the registry is open; shutting down is not ready.
        return pb.ServerReadyResponse(ready=not self._stopping.is_set())

    async def ModelReady(
        self,
        request: pb.ModelReadyRequest,
        context: grpc.aio.ServicerContext[pb.ModelReadyRequest, pb.ModelReadyResponse],
    ) -> pb.ModelReadyResponse:
        target = target_of(request.name, request.version)
        try:
            versions = (
                [target.version]
                if target.version is not None
                else await asyncio.to_thread(self._service.serving_versions, target.model)
            )
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        ready = all(
            (entry := self._service.pool.get(target.model, v)) is not None and entry.state is LoadState.READY
            for v in versions
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self,
        request: pb.ServerMetadataRequest,
        context: grpc.aio.ServicerContext[pb.ServerMetadataRequest, pb.ServerMetadataResponse],
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="tesserad", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(
        self,
        request: pb.ModelMetadataRequest,
        context: grpc.aio.ServicerContext[pb.ModelMetadataRequest, pb.ModelMetadataResponse],
    ) -> pb.ModelMetadataResponse:
        # Never loads the version (as Triton's never does): see InferenceService.describe.
        described = await asyncio.to_thread(self._service.describe, target_of(request.name, request.version))

        def tensors(specs: Iterable[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=OIP_NAME_BY_DTYPE[s.dtype], shape=s.shape
                )
                for s in specs
            ]

        # As Triton: the version asked for, else the ready versions (here, else the one described).
        if request.version:
            versions = [described.version]
        else:
            versions = self._service.pool.ready_versions(described.model) or [described.version]
        return pb.ModelMetadataResponse(
            name=described.model,
            versions=[str(v) for v in versions],
            platform=_PLATFORMS[described.config.runtime],
            inputs=tensors(described.signature.inputs),
            outputs=tensors(described.signature.outputs),
        )

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        started = time.perf_counter_ns()
        target = target_of(request.model_name, request.model_version)
        timeout = timeout_of(request) if request.parameters else None
        if timeout is not None:
            # As a deadline: a request still queued when it passes is dropped before it runs.
            ends = time.monotonic() + timeout
            deadline = ends if deadline is None else min(deadline, ends)
        inputs = oip_inputs_to_arrays(request)
        output_names = oip_requested_outputs(request)
        decoded = time.perf_counter_ns()
        # ModelConfig advertises max_batch_size; as in Triton, a request may not exceed it.
        version, prediction = await predict(
            self._service,
            target,
            inputs,
            output_names,
            deadline,
            request.id,
            within_max_batch=True,
            dtype_names=OIP_NAME_BY_DTYPE,
        )
        answered = time.perf_counter_ns()
        response = pb.ModelInferResponse(model_name=target.model, model_version=str(version), id=request.id)
        for name, array in prediction.outputs.items():
            tensor, raw = oip_output(name, array)
            response.outputs.append(tensor)
            response.raw_output_contents.append(raw)
        entry = self._service.pool.get(target.model, version)
        if entry is not None:
            # Rows as the batcher counts them: the batch dimension, or 1 for a model without one.
            batchable = entry.signature is not None and entry.signature.batchable and inputs
            rows = next(iter(inputs.values())).shape[0] if batchable else 1
            entry.stats.record_io(decoded - started, time.perf_counter_ns() - answered, rows)
        return response

    async def ModelInfer(
        self,
        request: pb.ModelInferRequest,
        context: grpc.aio.ServicerContext[pb.ModelInferRequest, pb.ModelInferResponse],
    ) -> pb.ModelInferResponse:
        return await self._infer(request, deadline_of(context))

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext[pb.ModelInferRequest, pb.ModelStreamInferResponse],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        deadline = deadline_of(context)

        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            response = await self._infer(request, deadline)
            if (
                FINAL_RESPONSE_FLAG in request.parameters
                and request.parameters[FINAL_RESPONSE_FLAG].bool_param
            ):
                response.parameters["triton_final_response"].bool_param = True
            return pb.ModelStreamInferResponse(infer_response=response)

        def failed(request: pb.ModelInferRequest, error: TesseraError) -> pb.ModelStreamInferResponse:
            return pb.ModelStreamInferResponse(
                error_message=error.message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                ),
            )

        async for response in answer_stream(request_iterator, answer, failed):
            yield response

    async def ModelConfig(
        self,
        request: pb.ModelConfigRequest,
        context: grpc.aio.ServicerContext[pb.ModelConfigRequest, pb.ModelConfigResponse],
    ) -> pb.ModelConfigResponse:
        # Never loads the version (as Triton's never does): see InferenceService.describe.
        described = await asyncio.to_thread(self._service.describe, target_of(request.name, request.version))
        config = described.config
        batchable = described.signature.batchable
        kind = (
            model_config_pb2.ModelInstanceGroup.KIND_CPU
            if config.device == "cpu"
            else model_config_pb2.ModelInstanceGroup.KIND_GPU
        )
        gpus = [] if config.device == "cpu" else [int(config.device.partition(":")[2] or 0)]

        def dims(shape: tuple[int, ...]) -> list[int]:
            # With max_batch_size > 0, Triton's dims leave out the batch dimension.
            return list(shape[1:] if batchable else shape)

        def warmup_input(spec: TensorSpec) -> model_config_pb2.ModelWarmup.Input:
            # As sample_inputs makes it: other dynamic dimensions 1, floats random, others zeros.
            sample = model_config_pb2.ModelWarmup.Input(
                data_type=_CONFIG_DTYPES[OIP_NAME_BY_DTYPE[spec.dtype]],
                dims=[max(d, 1) for d in dims(spec.shape)],
            )
            # One of a oneof: setting either field to False would still pick it.
            if sample_is_random(spec.dtype):
                sample.random_data = True
            else:
                sample.zero_data = True
            return sample

        return pb.ModelConfigResponse(
            config=model_config_pb2.ModelConfig(
                name=described.model,
                platform=_PLATFORMS[config.runtime],
                backend=_BACKENDS[config.runtime],
                max_batch_size=config.max_batch_size if batchable else 0,
                input=[
                    model_config_pb2.ModelInput(
                        name=s.name, data_type=_CONFIG_DTYPES[OIP_NAME_BY_DTYPE[s.dtype]], dims=dims(s.shape)
                    )
                    for s in described.signature.inputs
                ],
                output=[
                    model_config_pb2.ModelOutput(
                        name=s.name, data_type=_CONFIG_DTYPES[OIP_NAME_BY_DTYPE[s.dtype]], dims=dims(s.shape)
                    )
                    for s in described.signature.outputs
                ],
                dynamic_batching=model_config_pb2.ModelDynamicBatching(
                    # No preferred_batch_size: as Triton without one, batches grow to max_batch_size.
                    max_queue_delay_microseconds=config.max_queue_delay_us,
                    # The queue's bound (refused beyond it), and the `timeout` parameter, which
                    # drops a request still queued when it passes; no timeout without it.
                    default_queue_policy=model_config_pb2.ModelQueuePolicy(
                        timeout_action=model_config_pb2.ModelQueuePolicy.REJECT,
                        allow_timeout_override=True,
                        max_queue_size=config.max_queue_size,
                    ),
                )
                if batchable and config.max_batch_size > 1
                else None,
                instance_group=[
                    model_config_pb2.ModelInstanceGroup(count=config.instances, kind=kind, gpus=gpus)
                ],
                model_warmup=[
                    model_config_pb2.ModelWarmup(
                        name=f"{rows} row{'s' if rows > 1 else ''}",
                        batch_size=rows,
                        count=runs,
                        inputs={s.name: warmup_input(s) for s in described.signature.inputs},
                    )
                    for rows, runs in warmup_batches(described.signature, config)
                ],
            )
        )

    async def ModelStatistics(
        self,
        request: pb.ModelStatisticsRequest,
        context: grpc.aio.ServicerContext[pb.ModelStatisticsRequest, pb.ModelStatisticsResponse],
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            target = target_of(request.name, request.version)
            entries = await asyncio.to_thread(self._service.stats_entries, target)
        else:
            # As Triton: every ready version's (one loading or draining shows once named).
            entries = [e for e in self._service.pool.list() if e.state is LoadState.READY]
        return pb.ModelStatisticsResponse(model_stats=[statistics_of(e) for e in entries])

    async def RepositoryIndex(
        self,
        request: pb.RepositoryIndexRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryIndexRequest, pb.RepositoryIndexResponse],
    ) -> pb.RepositoryIndexResponse:
        names = await asyncio.to_thread(self._service.model_names)
        pool = self._service.pool
        index: list[pb.RepositoryIndexResponse.ModelIndex] = []
        for name in names:
            rows = {
                entry.version: pb.RepositoryIndexResponse.ModelIndex(
                    name=name,
                    version=str(entry.version),
                    state=_INDEX_STATES[entry.state],
                    reason=entry.error,
                )
                for entry in pool.list(name)
            }
            # As Triton: a version unloaded stays in the index, UNAVAILABLE for reason "unloaded".
            for version in pool.unloaded_versions(name):
                rows.setdefault(
                    version,
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=name, version=str(version), state="UNAVAILABLE", reason="unloaded"
                    ),
                )
            if not rows and not request.ready:
                index.append(
                    pb.RepositoryIndexResponse.ModelIndex(name=name, state="UNAVAILABLE", reason="unloaded")
                )
            index.extend(row for _, row in sorted(rows.items()) if not request.ready or row.state == "READY")
        return pb.RepositoryIndexResponse(models=index)

    async def RepositoryModelLoad(
        self,
        request: pb.RepositoryModelLoadRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse],
    ) -> pb.RepositoryModelLoadResponse:
        validate_name("model_name", request.model_name)
        overrides = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
        if overrides:
            # Loading with the defaults instead would not be what the caller asked for.
            raise Unimplemented(
                f"tesserad does not take a model config or files in RepositoryModelLoad (got "
                f"{', '.join(overrides)}); load without them, set serving options such as "
                "max_batch_size with tessera.v1.Inference/LoadModel, and upload new weights as a "
                "version through tessera.v1.Registry"
            )
        await asyncio.to_thread(self._service.load_serving, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self,
        request: pb.RepositoryModelUnloadRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse],
    ) -> pb.RepositoryModelUnloadResponse:
        validate_name("model_name", request.model_name)
        # As in Triton, unloading a model that is not loaded succeeds.
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self._service.unload, Target(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(self, request: object, context: object) -> NoReturn:
        raise Unimplemented(_NO_SHARED_MEMORY)

    SystemSharedMemoryRegister = SystemSharedMemoryStatus
    SystemSharedMemoryUnregister = SystemSharedMemoryStatus
    CudaSharedMemoryStatus = SystemSharedMemoryStatus
    CudaSharedMemoryRegister = SystemSharedMemoryStatus
    CudaSharedMemoryUnregister = SystemSharedMemoryStatus

    async def TraceSetting(self, request: object, context: object) -> NoReturn:
        raise Unimplemented("tesserad does not support Triton trace settings; use its /metrics and GetStats")

    async def LogSettings(self, request: object, context: object) -> NoReturn:
        raise Unimplemented("tesserad does not support Triton log settings; set log_level in its settings")


_NO_SHARED_MEMORY = (
    "tesserad does not support shared-memory tensors; send inputs in raw_input_contents or typed contents"
)
