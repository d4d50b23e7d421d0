"""Inference service: Predict, PredictStream, load/unload/list, stats, shadow results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from tessera.v1 import inference_pb2 as pb
from tessera.v1 import inference_pb2_grpc
from tesserad.api.cluster_stats import ClusterStats, merge_stats
from tesserad.api.convert_inference import (
    config_from_proto,
    deadline_of,
    explain_options_from_proto,
    explanation_to_proto,
    failed_prediction,
    loaded_to_proto,
    method_from_proto,
    prediction_to_proto,
    refused_to_proto,
    shadow_page,
    stats_to_proto,
    target_from_proto,
)
from tesserad.api.convert_tensors import tensors_to_arrays
from tesserad.api.streams import answer_stream
from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound, TesseraError
from tesserad.names import validate_name
from tesserad.paging import foreign_token, page_size, resume_key
from tesserad.serving.predict import predict
from tesserad.serving.service import InferenceService
from tesserad.serving.trace import Tracer

DEFAULT_SHADOW_LIMIT = 100
_SCOPES = (pb.STATS_SCOPE_UNSPECIFIED, pb.STATS_SCOPE_CLUSTER)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        service: InferenceService,
        tracer: Tracer,
        stopping: asyncio.Event,
        cluster: ClusterStats | None = None,
    ) -> None:
        """`tracer`: the trace settings of Triton's trace extension, which sample Predict's
        requests as they sample the Open Inference Protocol's; `stopping`: set when the daemon
        stops, which ends open prediction streams; `cluster`: the replicas following this daemon
        (None on a replica)."""
        self._service = service
        self._stopping = stopping
        self._tracer = tracer
        self._cluster = cluster

    async def _predict(self, request: pb.PredictRequest, deadline: float | None) -> pb.PredictResponse:
        started = time.perf_counter_ns()
        target = target_from_proto(request.target)
        try:
            inputs = tensors_to_arrays(request.inputs)
        except TesseraError:
            self._service.refused(target, started)
            raise
        decoded = time.perf_counter_ns()
        version, prediction = await predict(
            self._service,
            target,
            inputs,
            request.output_names,
            deadline,
            request.request_id,
            started=started,
        )
        answered = time.perf_counter_ns()
        response = prediction_to_proto(request.request_id, target.model, version, prediction)
        encoded = time.perf_counter_ns()
        self._service.record_io(target.model, version, prediction, decoded - started, encoded - answered)
        if self._tracer.on:
            self._tracer.trace(
                target.model, version, request.request_id, started, prediction, inputs, encoded
            )
        return response

    async def Predict(
        self,
        request: pb.PredictRequest,
        context: grpc.aio.ServicerContext[pb.PredictRequest, pb.PredictResponse],
    ) -> pb.PredictResponse:
        # _predict's steps in line, not awaited through it: each level of coroutine costs the
        # event loop's thread a frame on every request.
        started = time.perf_counter_ns()
        target = target_from_proto(request.target)
        try:
            inputs = tensors_to_arrays(request.inputs)
        except TesseraError:
            self._service.refused(target, started)
            raise
        decoded = time.perf_counter_ns()
        version, prediction = await predict(
            self._service,
            target,
            inputs,
            request.output_names,
            deadline_of(context),
            request.request_id,
            started=started,
        )
        answered = time.perf_counter_ns()
        response = prediction_to_proto(request.request_id, target.model, version, prediction)
        encoded = time.perf_counter_ns()
        self._service.record_io(target.model, version, prediction, decoded - started, encoded - answered)
        if self._tracer.on:
            self._tracer.trace(
                target.model, version, request.request_id, started, prediction, inputs, encoded
            )
        return response

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[pb.PredictRequest],
        context: grpc.aio.ServicerContext[pb.PredictRequest, pb.PredictResponse],
    ) -> AsyncIterator[pb.PredictResponse]:
        deadline = deadline_of(context)
        answers = answer_stream(
            request_iterator, lambda r: self._predict(r, deadline), failed_prediction, self._stopping, context
        )
        async for response in answers:
            yield response

    async def Explain(
        self,
        request: pb.ExplainRequest,
        context: grpc.aio.ServicerContext[pb.ExplainRequest, pb.ExplainResponse],
    ) -> pb.ExplainResponse:
        target = target_from_proto(request.target)
        method = method_from_proto(request.method)
        options = explain_options_from_proto(request.options)
        output_index = request.output_index if request.HasField("output_index") else None
        inputs = tensors_to_arrays(request.inputs)
        submitted = await asyncio.to_thread(
            self._service.explain, target, inputs, method, output_index, options
        )
        try:
            explanation = await asyncio.wrap_future(submitted.queued.future)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            submitted.queued.cancel()
            raise
        return explanation_to_proto(target.model, submitted, explanation)

    async def LoadModel(
        self,
        request: pb.LoadModelRequest,
        context: grpc.aio.ServicerContext[pb.LoadModelRequest, pb.LoadedModel],
    ) -> pb.LoadedModel:
        target = target_from_proto(request.target)
        config = config_from_proto(request.config)
        loaded = await asyncio.to_thread(self._service.load, target, config, save=request.save_config)
        return loaded_to_proto(loaded)

    async def UnloadModel(
        self,
        request: pb.UnloadModelRequest,
        context: grpc.aio.ServicerContext[pb.UnloadModelRequest, pb.UnloadModelResponse],
    ) -> pb.UnloadModelResponse:
        target = target_from_proto(request.target)
        unloaded = await asyncio.to_thread(self._service.unload, target)
        return pb.UnloadModelResponse(unloaded=[loaded_to_proto(e) for e in unloaded])

    async def ListLoaded(
        self,
        request: pb.ListLoadedRequest,
        context: grpc.aio.ServicerContext[pb.ListLoadedRequest, pb.ListLoadedResponse],
    ) -> pb.ListLoadedResponse:
        if request.model:
            validate_name("model", request.model)
        loaded = await asyncio.to_thread(self._service.loaded, request.model)
        return pb.ListLoadedResponse(models=[loaded_to_proto(e) for e in loaded])

    async def GetStats(
        self,
        request: pb.GetStatsRequest,
        context: grpc.aio.ServicerContext[pb.GetStatsRequest, pb.GetStatsResponse],
    ) -> pb.GetStatsResponse:
        target = target_from_proto(request.target, model_required=False)
        if request.scope not in _SCOPES:
            names = ", ".join(pb.StatsScope.Name(s) for s in _SCOPES)
            raise InvalidArgument(f"scope must be one of {names}, got {request.scope}")
        if request.scope != pb.STATS_SCOPE_CLUSTER:
            entries = await asyncio.to_thread(self._service.stats_entries, target)
            return pb.GetStatsResponse(
                stats=[stats_to_proto(e, request.reset, request.histograms) for e in entries]
            )
        if self._cluster is None:
            raise FailedPrecondition(
                "this tesserad is a serving replica; ask its primary for scope=cluster statistics"
            )
        try:
            entries = await asyncio.to_thread(self._service.stats_entries, target)
            missing = None
        except NotFound as exc:  # the replicas may have it loaded
            entries, missing = [], exc
        local = [stats_to_proto(e, request.reset, histograms=True) for e in entries]
        remote, reached, unreachable = await self._cluster.gather(request)
        merged = merge_stats([local, *remote], request.histograms)
        if not merged and missing is not None:
            raise missing
        return pb.GetStatsResponse(
            stats=merged,
            replicas=reached,
            unreachable_replicas=[address for address, _ in unreachable],
            unreachable=[pb.UnreachableReplica(address=a, reason=why) for a, why in unreachable],
            refused=[refused_to_proto(r) for r in self._cluster.refused()],
        )

    async def ListShadowResults(
        self,
        request: pb.ListShadowResultsRequest,
        context: grpc.aio.ServicerContext[pb.ListShadowResultsRequest, pb.ListShadowResultsResponse],
    ) -> pb.ListShadowResultsResponse:
        validate_name("model", request.model)
        if request.limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0 for {DEFAULT_SHADOW_LIMIT}), got {request.limit}")
        size = page_size(request.limit, DEFAULT_SHADOW_LIMIT) or DEFAULT_SHADOW_LIMIT
        query = {"list": "shadow_results", "model": request.model}
        match resume_key(request.page_token, query):
            case None:
                older_than = None
            case (int() as number,):
                older_than = number
            case _:  # the query's fingerprint, but a key no page of it ends at: edited
                raise foreign_token()
        # One more than the page holds: the page's token is issued only when one is left over.
        numbered = await asyncio.to_thread(self._service.shadow_results, request.model, size + 1, older_than)
        return shadow_page(numbered, size, query)
