"""The Open Inference Protocol (inference.GRPCInferenceService), wire compatible with Triton.

Thin: the protocol's checks, routing and repository actions are tesserad.serving.open_inference's,
shared with the HTTP/REST transport (tesserad.api.oip_http). The message builders here
(metadata, config, statistics) serve both: the HTTP answers are these messages as JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import NoReturn

import grpc

from tesserad import __version__
from tesserad.api.auth import caller, caller_role
from tesserad.api.convert_inference import deadline_of
from tesserad.api.convert_tensors import (
    KIND_NAMES,
    oip_inputs_to_arrays,
    oip_output,
    oip_requested_outputs,
    oip_shared_output,
    parameters_of,
    reads_shared_memory,
)
from tesserad.api.oip_config import model_config_of, serving_config_of
from tesserad.api.streams import answer_stream
from tesserad.errors import NotFound, Overloaded, PermissionDenied, QueueFull, TesseraError, Unimplemented
from tesserad.log_settings import SettingValue
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.security.roles import LOG_SETTINGS_UPDATE, TRACE_SETTINGS_UPDATE
from tesserad.serving.open_inference import (
    EXTENSIONS,
    FINAL_RESPONSE_FLAG,
    NO_CUDA_SHARED_MEMORY,
    OIP_NAME_BY_DTYPE,
    PLATFORMS,
    IndexRow,
    OpenInference,
    in_oip_words,
    refuse_repository_name,
    timeout_of,
)
from tesserad.serving.pool import LoadedVersion
from tesserad.serving.service import VersionDescription
from tesserad.serving.shared_memory import RegionStatus
from tesserad.serving.signature import TensorSpec
from tesserad.tasks import off_the_loop


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def statistics_of(entry: LoadedVersion) -> pb.ModelStatistics:
    s = entry.stats.snapshot()
    succeeded = s.request_count - s.error_count
    # As Triton's: success and queue count cache hits, the model's figures do not.
    ran = succeeded - s.cache_hit_count
    # Decoding (and checking) the inputs and encoding the answer are timed per request, through
    # every API; a batch's share is its rows times their average per row (a request may hold
    # several rows), so that the batches' shares add up to the requests' whole time. As Triton's,
    # every request the model ran counts in each: a shadow's copy, or an ensemble's member,
    # decodes nothing of its own, and adds a count with no time.

    def share(ns: int, n: int, rows: int) -> int:
        # Multiplied before dividing: a per-row average rounded down first lost up to a
        # nanosecond per row; so, under one per batch size.
        return n * rows * ns // s.row_count if s.row_count else 0

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
            compute_input=_duration(ran, s.input_ns),
            compute_infer=_duration(ran, s.compute_ns),
            compute_output=_duration(ran, s.output_ns),
            cache_hit=_duration(s.cache_hit_count, s.cache_hit_ns),
            cache_miss=_duration(s.cache_miss_count, s.cache_miss_ns),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=rows,
                compute_input=_duration(n, share(s.input_ns, n, rows)),
                compute_infer=_duration(n, ns),
                compute_output=_duration(n, share(s.output_ns, n, rows)),
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


def statistics_response(entries: Iterable[LoadedVersion]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=[statistics_of(e) for e in entries])


def shared_memory_status(regions: Iterable[RegionStatus]) -> pb.SystemSharedMemoryStatusResponse:
    status = pb.SystemSharedMemoryStatusResponse()
    for r in regions:
        status.regions[r.name].CopyFrom(
            pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
            )
        )
    return status


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
        self._tracer = core.tracer

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
        target = self._core.target(request.model_name, request.model_version)
        with self._core.shared_memory.lease() as lease:
            try:
                timeout = (
                    timeout_of(parameters_of(request.parameters), KIND_NAMES) if request.parameters else None
                )
                inputs = (
                    # A read from shared memory copies as many bytes as the tensor has.
                    await off_the_loop(lambda: oip_inputs_to_arrays(request, lease))
                    if reads_shared_memory(request)
                    else oip_inputs_to_arrays(request, lease)
                )
                output_names, places = oip_requested_outputs(request, lease)
            except TesseraError:
                self._core.refused(target, started)
                raise
            decoded = time.perf_counter_ns()
            try:
                version, prediction = await self._core.infer(
                    target, inputs, output_names, deadline, timeout, request.id, started
                )
            except NotFound as exc:
                raise in_oip_words(exc) from None
            except QueueFull as exc:
                raise Overloaded(exc.message) from None
            answered = time.perf_counter_ns()

            def answer() -> pb.ModelInferResponse:
                response = pb.ModelInferResponse(
                    model_name=target.model, model_version=str(version), id=request.id
                )
                for name, array in prediction.outputs.items():
                    place = places.get(name)
                    if place is None:
                        tensor, raw = oip_output(name, array)
                    else:
                        # As Triton: an empty entry keeps raw_output_contents one per output.
                        tensor, raw = oip_shared_output(name, array, place, lease), b""
                    response.outputs.append(tensor)
                    response.raw_output_contents.append(raw)
                return response

            # A write into shared memory copies as many bytes as the tensor has; a plain answer is
            # protobuf work that holds the interpreter on any thread, so stays here.
            response = await off_the_loop(answer) if places else answer()
        encoded = time.perf_counter_ns()
        self._core.record_io(target.model, version, prediction, decoded - started, encoded - answered)
        if self._tracer.on:
            self._tracer.trace(target.model, version, request.id, started, prediction, inputs, encoded)
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

        async for response in answer_stream(request_iterator, answer, failed, self._core.stopping, context):
            yield response

    async def ModelConfig(
        self,
        request: pb.ModelConfigRequest,
        context: grpc.aio.ServicerContext[pb.ModelConfigRequest, pb.ModelConfigResponse],
    ) -> pb.ModelConfigResponse:
        described, _ = await self._core.describe(request.name, request.version)
        split = await self._core.traffic_split(request.name, request.version)
        return pb.ModelConfigResponse(
            config=model_config_of(described, split, self._core.version_policy(request.name))
        )

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
        refuse_repository_name(request.repository_name)
        return index_response(await self._core.index(request.ready))

    async def RepositoryModelLoad(
        self,
        request: pb.RepositoryModelLoadRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse],
    ) -> pb.RepositoryModelLoadResponse:
        refuse_repository_name(request.repository_name)
        await self._core.load(
            request.model_name, parameters_of(request.parameters), KIND_NAMES, serving_config_of
        )
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self,
        request: pb.RepositoryModelUnloadRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse],
    ) -> pb.RepositoryModelUnloadResponse:
        refuse_repository_name(request.repository_name)
        await self._core.unload(request.model_name, parameters_of(request.parameters), KIND_NAMES)
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(
        self,
        request: pb.SystemSharedMemoryStatusRequest,
        context: grpc.aio.ServicerContext[
            pb.SystemSharedMemoryStatusRequest, pb.SystemSharedMemoryStatusResponse
        ],
    ) -> pb.SystemSharedMemoryStatusResponse:
        return shared_memory_status(self._core.shared_memory.status(request.name))

    async def SystemSharedMemoryRegister(
        self,
        request: pb.SystemSharedMemoryRegisterRequest,
        context: grpc.aio.ServicerContext[
            pb.SystemSharedMemoryRegisterRequest, pb.SystemSharedMemoryRegisterResponse
        ],
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await asyncio.to_thread(
            self._core.shared_memory.register, request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self,
        request: pb.SystemSharedMemoryUnregisterRequest,
        context: grpc.aio.ServicerContext[
            pb.SystemSharedMemoryUnregisterRequest, pb.SystemSharedMemoryUnregisterResponse
        ],
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._core.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: object, context: object) -> NoReturn:
        raise Unimplemented(NO_CUDA_SHARED_MEMORY)

    CudaSharedMemoryRegister = CudaSharedMemoryStatus
    CudaSharedMemoryUnregister = CudaSharedMemoryStatus

    async def TraceSetting(
        self,
        request: pb.TraceSettingRequest,
        context: grpc.aio.ServicerContext[pb.TraceSettingRequest, pb.TraceSettingResponse],
    ) -> pb.TraceSettingResponse:
        model = request.model_name
        if not request.settings:
            return trace_settings_response(await self._core.trace_settings(model))
        role = caller_role(context)
        if role < TRACE_SETTINGS_UPDATE:
            raise PermissionDenied(
                f"changing the trace settings needs the {TRACE_SETTINGS_UPDATE.label} role; the caller "
                f"{caller(context)!r} has the {role.label} role; a request without settings reads them"
            )
        # A setting without values is tritonclient's None: clear it.
        changes = {name: list(value.value) or None for name, value in request.settings.items()}
        return trace_settings_response(
            await self._core.update_trace_settings(model, changes, caller(context))
        )

    async def LogSettings(
        self,
        request: pb.LogSettingsRequest,
        context: grpc.aio.ServicerContext[pb.LogSettingsRequest, pb.LogSettingsResponse],
    ) -> pb.LogSettingsResponse:
        logs = self._core.logs
        if not request.settings:
            return log_settings_response(logs.settings())
        role = caller_role(context)
        if role < LOG_SETTINGS_UPDATE:
            raise PermissionDenied(
                f"changing the log settings needs the {LOG_SETTINGS_UPDATE.label} role; the caller "
                f"{caller(context)!r} has the {role.label} role; a request without settings reads them"
            )
        changes = {name: _setting_value(value) for name, value in request.settings.items()}
        return log_settings_response(logs.update(changes, caller(context)))


def _setting_value(value: pb.LogSettingsRequest.SettingValue) -> SettingValue | None:
    """A setting's value as sent; None for one sent without a value."""
    choice = value.WhichOneof("parameter_choice")
    if choice == "bool_param":
        return value.bool_param
    if choice == "uint32_param":
        return value.uint32_param
    if choice == "string_param":
        return value.string_param
    return None


def trace_settings_response(settings: Mapping[str, list[str]]) -> pb.TraceSettingResponse:
    response = pb.TraceSettingResponse()
    for name, values in settings.items():
        response.settings[name].value.extend(values)
    return response


def log_settings_response(settings: Mapping[str, SettingValue]) -> pb.LogSettingsResponse:
    response = pb.LogSettingsResponse()
    for name, value in settings.items():
        entry = response.settings[name]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = value
    return response
