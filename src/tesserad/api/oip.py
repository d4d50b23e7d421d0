"""The Open Inference Protocol (inference.GRPCInferenceService), wire compatible with Triton.

Thin: the protocol's checks, routing and repository actions are tesserad.serving.open_inference's,
shared with the HTTP/REST transport (tesserad.api.oip_http). The message builders here
(metadata, config, statistics) serve both: the HTTP answers are these messages as JSON.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import NoReturn

import grpc

from tesserad import __version__
from tesserad.api.convert_inference import deadline_of
from tesserad.api.convert_tensors import oip_inputs_to_arrays, oip_output, oip_requested_outputs
from tesserad.api.oip_config import serving_config_of
from tesserad.api.streams import answer_stream
from tesserad.errors import TesseraError, Unimplemented
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc, model_config_pb2
from tesserad.serving.open_inference import (
    BACKENDS,
    EXTENSIONS,
    FINAL_RESPONSE_FLAG,
    OIP_NAME_BY_DTYPE,
    PLATFORMS,
    IndexRow,
    Kind,
    OpenInference,
    Parameter,
    target_of,
    timeout_of,
)
from tesserad.serving.pool import LoadedVersion, warmup_batches
from tesserad.serving.service import VersionDescription
from tesserad.serving.signature import TensorSpec, sample_is_random

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
# InferParameter's oneof fields, as the protocol's kinds and as messages name them.
_KINDS = {
    "bool_param": Kind.BOOL,
    "int64_param": Kind.INT,
    "uint64_param": Kind.UINT,
    "double_param": Kind.DOUBLE,
    "string_param": Kind.STRING,
    "bytes_param": Kind.BYTES,
}
KIND_NAMES = {kind: field for field, kind in _KINDS.items()}


def parameters_of(request: pb.ModelInferRequest | pb.RepositoryModelLoadRequest) -> dict[str, Parameter]:
    parameters: dict[str, Parameter] = {}
    for key, parameter in request.parameters.items():
        field = parameter.WhichOneof("parameter_choice")
        parameters[key] = (
            Parameter(None, None) if field is None else Parameter(getattr(parameter, field), _KINDS[field])
        )
    return parameters


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def statistics_of(entry: LoadedVersion) -> pb.ModelStatistics:
    s = entry.stats.snapshot()
    succeeded = s.request_count - s.error_count
    # As Triton's: success and queue count cache hits, the model's figures do not.
    ran = succeeded - s.cache_hit_count
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
            compute_infer=_duration(ran, s.compute_ns),
            compute_output=_duration(s.io_count, s.output_ns),
            cache_hit=_duration(s.cache_hit_count, s.cache_hit_ns),
            cache_miss=_duration(s.cache_miss_count, s.cache_miss_ns),
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


def metadata_of(described: VersionDescription, versions: list[int]) -> pb.ModelMetadataResponse:
    def tensors(specs: Iterable[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=OIP_NAME_BY_DTYPE[s.dtype], shape=s.shape
            )
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=described.model,
        versions=[str(v) for v in versions],
        platform=PLATFORMS[described.config.runtime],
        inputs=tensors(described.signature.inputs),
        outputs=tensors(described.signature.outputs),
    )


def model_config_of(described: VersionDescription) -> model_config_pb2.ModelConfig:
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

    return model_config_pb2.ModelConfig(
        name=described.model,
        platform=PLATFORMS[config.runtime],
        backend=BACKENDS[config.runtime],
        max_batch_size=config.max_batch_size if batchable else 0,
        response_cache=model_config_pb2.ModelResponseCache(enable=config.response_cache),
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
            max_queue_delay_microseconds=config.max_queue_delay_us or 0,
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
        instance_group=[model_config_pb2.ModelInstanceGroup(count=config.instances, kind=kind, gpus=gpus)],
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


def statistics_response(entries: Iterable[LoadedVersion]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=[statistics_of(e) for e in entries])


def index_response(rows: Iterable[IndexRow]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=r.name, version=r.version, state=r.state, reason=r.reason
            )
            for r in rows
        ]
    )


class OipServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: OpenInference) -> None:
        self._core = core

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
        return pb.ServerReadyResponse(ready=self._core.server_ready())

    async def ModelReady(
        self,
        request: pb.ModelReadyRequest,
        context: grpc.aio.ServicerContext[pb.ModelReadyRequest, pb.ModelReadyResponse],
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await self._core.model_ready(request.name, request.version))

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
        return metadata_of(*await self._core.describe(request.name, request.version))

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        started = time.perf_counter_ns()
        target = target_of(request.model_name, request.model_version)
        try:
            timeout = timeout_of(parameters_of(request), KIND_NAMES) if request.parameters else None
            inputs = oip_inputs_to_arrays(request)
            output_names = oip_requested_outputs(request)
        except TesseraError:
            self._core.refused(target, started)
            raise
        decoded = time.perf_counter_ns()
        version, prediction = await self._core.infer(
            target, inputs, output_names, deadline, timeout, request.id, started
        )
        answered = time.perf_counter_ns()
        response = pb.ModelInferResponse(model_name=target.model, model_version=str(version), id=request.id)
        for name, array in prediction.outputs.items():
            tensor, raw = oip_output(name, array)
            response.outputs.append(tensor)
            response.raw_output_contents.append(raw)
        self._core.record_io(
            target.model, version, inputs, prediction, decoded - started, time.perf_counter_ns() - answered
        )
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
        described, _ = await self._core.describe(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config_of(described))

    async def ModelStatistics(
        self,
        request: pb.ModelStatisticsRequest,
        context: grpc.aio.ServicerContext[pb.ModelStatisticsRequest, pb.ModelStatisticsResponse],
    ) -> pb.ModelStatisticsResponse:
        return statistics_response(await self._core.statistics(request.name, request.version))

    async def RepositoryIndex(
        self,
        request: pb.RepositoryIndexRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryIndexRequest, pb.RepositoryIndexResponse],
    ) -> pb.RepositoryIndexResponse:
        return index_response(await self._core.index(request.ready))

    async def RepositoryModelLoad(
        self,
        request: pb.RepositoryModelLoadRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse],
    ) -> pb.RepositoryModelLoadResponse:
        await self._core.load(request.model_name, parameters_of(request), KIND_NAMES, serving_config_of)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self,
        request: pb.RepositoryModelUnloadRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse],
    ) -> pb.RepositoryModelUnloadResponse:
        await self._core.unload(request.model_name)
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
