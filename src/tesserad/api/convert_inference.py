"""Inference messages <-> serving domain types (targets, configs, loaded versions, statistics,
predictions, shadow results), and a call's deadline as the plain instant the serving layer takes."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import grpc

from tessera.v1 import common_pb2
from tessera.v1 import inference_pb2 as pb
from tesserad.api.convert_common import timestamp
from tesserad.api.convert_tensors import array_to_tensor, fill_tensor, signature_to_proto
from tesserad.api.errors import status_for
from tesserad.errors import InvalidArgument, TesseraError
from tesserad.names import validate_name
from tesserad.paging import PageFill
from tesserad.replica.refusals import Refusal
from tesserad.serving.batcher import Prediction
from tesserad.serving.explain import ExplainOptions, Explanation, Method
from tesserad.serving.histogram import LogHistogram, Percentiles
from tesserad.serving.pool import LoadedVersion, LoadState, RuntimeChoice, ServingConfig
from tesserad.serving.service import ExplainSubmitted, ShadowResult, Target

_RUNTIME_NAMES: dict[pb.Runtime.ValueType, RuntimeChoice] = {
    pb.RUNTIME_UNSPECIFIED: "",
    pb.RUNTIME_ONNX: "onnx",
    pb.RUNTIME_TORCH: "torch",
}
_RUNTIME_PROTO = {name: proto for proto, name in _RUNTIME_NAMES.items()}
_STATE_PROTO = {
    LoadState.LOADING: pb.LOAD_STATE_LOADING,
    LoadState.WARMING: pb.LOAD_STATE_WARMING,
    LoadState.READY: pb.LOAD_STATE_READY,
    LoadState.DRAINING: pb.LOAD_STATE_DRAINING,
    LoadState.FAILED: pb.LOAD_STATE_FAILED,
}


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The call's deadline as a time.monotonic() instant (None without one)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# Targets already checked, by (model, selector, the selector's value): requests name a few targets
# again and again, and checking and building one cost several microseconds of each request's
# time on the event loop (serve_bench's notes). Emptied when full: any name may be asked for.
_TARGETS: dict[tuple[str, str | None, int | str], Target] = {}
_TARGETS_KEPT = 4096


def target_from_proto(ref: common_pb2.VersionRef, *, model_required: bool = True) -> Target:
    model = ref.model
    selector = ref.WhichOneof("selector")
    key = (model, selector, ref.version if selector == "version" else ref.alias)
    target = _TARGETS.get(key)
    if target is not None:
        return target
    target = _checked_target(ref, selector, model_required)
    if model:  # a target without a model is valid only where one is not required
        if len(_TARGETS) >= _TARGETS_KEPT:
            _TARGETS.clear()
        _TARGETS[key] = target
    return target


def _checked_target(ref: common_pb2.VersionRef, selector: str | None, model_required: bool) -> Target:
    if model_required or ref.model:
        validate_name("target.model", ref.model)
    elif selector is not None:
        raise InvalidArgument(
            "target.model is required with target.version or target.alias; leave the whole target "
            "empty for every loaded version"
        )
    if selector == "version":
        if ref.version < 1:
            raise InvalidArgument(f"target.version must be >= 1 (versions count from 1), got {ref.version}")
        return Target(ref.model, version=ref.version)
    if selector == "alias":
        validate_name("target.alias", ref.alias)
        return Target(ref.model, alias=ref.alias)
    return Target(ref.model)


_METHODS = {
    pb.EXPLAIN_METHOD_INTEGRATED_GRADIENTS: Method.INTEGRATED_GRADIENTS,
    pb.EXPLAIN_METHOD_SALIENCY: Method.SALIENCY,
    pb.EXPLAIN_METHOD_OCCLUSION: Method.OCCLUSION,
    pb.EXPLAIN_METHOD_GRADIENT_SHAP: Method.GRADIENT_SHAP,
}


def method_from_proto(method: int) -> Method:
    if method not in _METHODS:
        names = ", ".join(pb.ExplainMethod.Name(m) for m in _METHODS)
        raise InvalidArgument(f"method must be one of {names}, got {method}")
    return _METHODS[pb.ExplainMethod.ValueType(method)]


def explain_options_from_proto(options: pb.ExplainOptions) -> ExplainOptions:
    return ExplainOptions(
        steps=options.steps,
        baseline=options.baseline,
        window=tuple(options.window),
        stride=tuple(options.stride),
        noise=options.noise,
        seed=options.seed,
    )


def explanation_to_proto(
    model: str, submitted: ExplainSubmitted, explanation: Explanation
) -> pb.ExplainResponse:
    response = pb.ExplainResponse(
        model=model,
        version=submitted.version,
        explained_version=submitted.explained_version,
        output_indices=explanation.output_indices,
        convergence_delta=explanation.convergence_delta,
        queue_time_us=explanation.queue_ns // 1000,
        compute_time_us=explanation.compute_ns // 1000,
    )
    for name, array in explanation.attributions.items():
        fill_tensor(response.attributions.add(), name, array)
    return response


def config_from_proto(config: pb.ServingConfig) -> ServingConfig:
    runtime = _RUNTIME_NAMES.get(config.runtime)
    if runtime is None:
        names = ", ".join(pb.Runtime.Name(r) for r in _RUNTIME_NAMES)
        raise InvalidArgument(f"config.runtime must be one of {names}, got {config.runtime}")
    return ServingConfig(
        runtime=runtime,
        device=config.device,
        instances=config.instances,
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=_present(config, "max_queue_delay_us"),
        max_queue_size=config.max_queue_size,
        warmup_runs=_present(config, "warmup_runs"),
        intra_op_threads=_present(config, "intra_op_threads"),
        response_cache=config.response_cache if config.HasField("response_cache") else None,
    )


def config_to_proto(config: ServingConfig) -> pb.ServingConfig:
    """A load's config as LoadModel takes it (config_from_proto's inverse): the optional fields
    set only where `config` sets them."""
    message = pb.ServingConfig(
        runtime=_RUNTIME_PROTO.get(config.runtime, pb.RUNTIME_UNSPECIFIED),
        device=config.device,
        instances=config.instances,
        max_batch_size=config.max_batch_size,
        max_queue_size=config.max_queue_size,
    )
    if config.response_cache is not None:
        message.response_cache = config.response_cache
    if config.max_queue_delay_us is not None:
        message.max_queue_delay_us = config.max_queue_delay_us
    if config.warmup_runs is not None:
        message.warmup_runs = config.warmup_runs
    if config.intra_op_threads is not None:
        message.intra_op_threads = config.intra_op_threads
    return message


def _present(
    config: pb.ServingConfig, field: Literal["max_queue_delay_us", "warmup_runs", "intra_op_threads"]
) -> int | None:
    """An optional field's value, None when unset (the daemon's default)."""
    return getattr(config, field) if config.HasField(field) else None


def loaded_to_proto(entry: LoadedVersion) -> pb.LoadedModel:
    config = entry.config
    return pb.LoadedModel(
        model=entry.model,
        version=entry.version,
        state=_STATE_PROTO[entry.state],
        config=pb.ServingConfig(
            # An ensemble has no runtime of its own: unspecified, "the version's format decides".
            runtime=_RUNTIME_PROTO.get(config.runtime, pb.RUNTIME_UNSPECIFIED),
            device=config.device,
            instances=config.instances,
            max_batch_size=config.max_batch_size,
            max_queue_delay_us=config.max_queue_delay_us,
            max_queue_size=config.max_queue_size,
            warmup_runs=config.warmup_runs,
            intra_op_threads=config.intra_op_threads,
            response_cache=config.response_cache,
        ),
        signature=signature_to_proto(entry.signature) if entry.signature else None,
        memory_bytes=entry.memory_bytes,
        loaded_at=timestamp(entry.loaded_at),
        error=entry.error,
        requested=config_to_proto(entry.requested),
    )


def prediction_to_proto(
    request_id: str, model: str, version: int, prediction: Prediction
) -> pb.PredictResponse:
    response = pb.PredictResponse(
        request_id=request_id,
        model=model,
        version=version,
        queue_time_us=prediction.queue_ns // 1000,
        compute_time_us=prediction.compute_ns // 1000,
        batch_rows=prediction.batch_rows,
    )
    outputs = response.outputs
    for name, array in prediction.outputs.items():
        fill_tensor(outputs.add(), name, array)  # in place: no Tensor built and then copied
    return response


def status_to_proto(error: TesseraError) -> common_pb2.Status:
    return common_pb2.Status(code=status_for(error).value[0], message=error.message)


def failed_prediction(request: pb.PredictRequest, error: TesseraError) -> pb.PredictResponse:
    """A stream's answer to a request that failed: its id, its model and the error."""
    return pb.PredictResponse(
        request_id=request.request_id, model=request.target.model, status=status_to_proto(error)
    )


def latency_to_proto(summary: Percentiles, histogram: LogHistogram | None = None) -> pb.LatencySummary:
    message = pb.LatencySummary(
        count=summary.count,
        mean_us=summary.mean,
        p50_us=summary.p50,
        p95_us=summary.p95,
        p99_us=summary.p99,
        p999_us=summary.p999,
        max_us=summary.max,
    )
    if histogram is not None:
        message.histogram.CopyFrom(
            pb.LatencyHistogram(
                relative_error=histogram.relative_error,
                counts=histogram.bucket_counts(),
                sum_us=histogram.sum,
            )
        )
    return message


def stats_to_proto(entry: LoadedVersion, reset: bool, histograms: bool = False) -> pb.ModelStats:
    s = entry.stats.snapshot(reset, histograms)
    queue, compute, total = s.histograms or (None, None, None)
    return pb.ModelStats(
        model=entry.model,
        version=entry.version,
        request_count=s.request_count,
        error_count=s.error_count,
        row_count=s.row_count,
        throughput_rps=s.throughput_rps,
        queue=latency_to_proto(s.queue, queue),
        compute=latency_to_proto(s.compute, compute),
        total=latency_to_proto(s.total, total),
        batch_sizes=[pb.BatchSizeCount(rows=rows, count=n) for rows, (n, _) in s.batches.items()],
        since=timestamp(s.since),
        shadow_count=s.shadow_count,
        cache_hit_count=s.cache_hit_count,
        cache_hit_time_us=s.cache_hit_ns // 1000,
        cache_miss_count=s.cache_miss_count,
        cache_miss_time_us=s.cache_miss_ns // 1000,
    )


def shadow_to_proto(result: ShadowResult) -> pb.ShadowResult:
    return pb.ShadowResult(
        request_id=result.request_id,
        model=result.model,
        primary_version=result.primary_version,
        shadow_version=result.shadow_version,
        outputs=[array_to_tensor(name, array) for name, array in result.outputs.items()],
        max_abs_diff=result.max_abs_diff,
        shadow_total_time_us=result.shadow_total_ns // 1000,
        time=timestamp(result.time),
        status=status_to_proto(result.error) if result.error is not None else None,
    )


def shadow_page(
    numbered: list[tuple[int, ShadowResult]], size: int, query: Mapping[str, Any]
) -> pb.ListShadowResultsResponse:
    """A page of `numbered` (newest first, each with its number): `size` of them, or fewer where
    they would take more than MAX_PAGE_BYTES, since each carries the shadow's outputs; its token
    resumes after the last one's number."""
    fill: PageFill[pb.ShadowResult] = PageFill(size, query)
    for number, result in numbered:
        message = shadow_to_proto(result)
        if not fill.room(message.ByteSize()):
            break
        fill.add((number,), message)
    return pb.ListShadowResultsResponse(results=fill.page.items, next_page_token=fill.page.next_page_token)


def refused_to_proto(refusal: Refusal) -> pb.RefusedReplica:
    return pb.RefusedReplica(
        address=refusal.address,
        peer=refusal.peer,
        rpc=refusal.rpc,
        code=refusal.code,
        reason=refusal.reason,
        time=timestamp(refusal.time),
    )
