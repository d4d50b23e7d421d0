"""Conversion between tessera.v1 Training messages and the training domain's plain types."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from tessera.v1 import architecture_pb2, common_pb2, job_spec_pb2
from tessera.v1 import training_pb2 as pb
from tesserad.api.convert_common import seconds, struct_plain, timestamp
from tesserad.api.convert_registry import job_spec_to_dict
from tesserad.errors import InvalidArgument
from tesserad.text import MAX_TAG_KEY, is_entry_key
from tesserad.training.artifacts import RunArtifact
from tesserad.training.events import JobEvent
from tesserad.training.job_records import Checkpoint, JobRecord, listed_checkpoints, stopped_early
from tesserad.training.pbt import PbtSettings
from tesserad.training.run_search import SortKey, TextFilter, TimeFilter
from tesserad.training.search_space import SweepParameter
from tesserad.training.sweeps import AshaSettings, Sweep, SweepRequest
from tesserad.training.tracking import (
    Experiment,
    MetricFilter,
    MetricPoint,
    MetricSummary,
    Run,
    RunOrder,
)

JOB_STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
    "interrupted": pb.JOB_STATE_INTERRUPTED,
}
_JOB_STATE_NAMES = {v: k for k, v in JOB_STATES.items()}
RUN_STATUSES = {
    "running": pb.RUN_STATUS_RUNNING,
    "succeeded": pb.RUN_STATUS_SUCCEEDED,
    "failed": pb.RUN_STATUS_FAILED,
    "cancelled": pb.RUN_STATUS_CANCELLED,
    "interrupted": pb.RUN_STATUS_INTERRUPTED,
}
_RUN_STATUS_NAMES = {v: k for k, v in RUN_STATUSES.items()}
_COMPARISONS = {
    pb.COMPARISON_LT: "lt",
    pb.COMPARISON_LE: "le",
    pb.COMPARISON_GT: "gt",
    pb.COMPARISON_GE: "ge",
    pb.COMPARISON_EQ: "eq",
    pb.COMPARISON_NE: "ne",
}
_FIELDS = {
    pb.SUMMARY_FIELD_UNSPECIFIED: "last",
    pb.SUMMARY_FIELD_LAST: "last",
    pb.SUMMARY_FIELD_MIN: "min",
    pb.SUMMARY_FIELD_MAX: "max",
}
_USE_FIELDS = "use LAST, MIN or MAX"
_VIEWS = {
    pb.LIFECYCLE_VIEW_UNSPECIFIED: "active",
    pb.LIFECYCLE_VIEW_ACTIVE_ONLY: "active",
    pb.LIFECYCLE_VIEW_DELETED_ONLY: "deleted",
    pb.LIFECYCLE_VIEW_ALL: "all",
}
_DIRECTIONS = {
    pb.SORT_DIRECTION_UNSPECIFIED: None,
    pb.SORT_DIRECTION_ASCENDING: False,
    pb.SORT_DIRECTION_DESCENDING: True,
}
_MODES = {
    job_spec_pb2.OPTIMIZE_MODE_UNSPECIFIED: "",
    job_spec_pb2.OPTIMIZE_MODE_MIN: "min",
    job_spec_pb2.OPTIMIZE_MODE_MAX: "max",
}
_TASKS = {
    job_spec_pb2.TASK_UNSPECIFIED: "",
    job_spec_pb2.TASK_CLASSIFICATION: "classification",
    job_spec_pb2.TASK_REGRESSION: "regression",
}
_TASK_NUMBERS = {v: k for k, v in _TASKS.items()}
_MODE_NUMBERS = {v: k for k, v in _MODES.items()}
# The JobSpec's OptimizeMode fields, as (section, field).
_MODE_FIELDS = (("early_stopping", "mode"), ("checkpoints", "keep_best_mode"))


def _plain(message: Message) -> dict[str, Any]:
    """Set fields as Python values (ints stay ints); set oneof members appear even when empty."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.is_repeated:
            out[field.name] = [_plain(v) if isinstance(v, Message) else v for v in value]
        elif isinstance(value, Struct):
            out[field.name] = struct_plain(value, f"spec.architecture.python.{field.name}")
        elif isinstance(value, Message):
            out[field.name] = _plain(value)
        else:
            out[field.name] = value
    return out


def job_spec_from_proto(
    spec: job_spec_pb2.JobSpec, root: str = "spec"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the domain's raw spec, the spec as stored and returned: protobuf JSON field names).

    The raw spec is the domain's plain form (training.spec): its values are checked there.
    `root`: what the request calls the spec, which its errors name.
    """
    raw = _plain(spec)
    raw.pop("architecture", None)
    if spec.HasField("architecture"):
        raw["architecture"] = _architecture_plain(spec.architecture)
    raw["task"] = _TASKS.get(spec.task, "")
    if spec.task not in _TASKS:
        raise InvalidArgument(f"{root}.task: unknown value {spec.task}; use CLASSIFICATION or REGRESSION")
    for section, field in _MODE_FIELDS:
        if section in raw:
            value = raw[section].get(field, 0)
            if value not in _MODES:
                raise InvalidArgument(f"{root}.{section}.{field}: unknown value {value}; use MIN or MAX")
            raw[section][field] = _MODES[value]
    return raw, job_spec_to_dict(spec)


def job_spec_document(raw: dict[str, Any]) -> dict[str, Any]:
    """The stored and returned form of a raw spec (a sweep's trial): job_spec_from_proto turned back."""
    fields = {k: v for k, v in raw.items() if k not in ("architecture", "task")}
    for section, field in _MODE_FIELDS:
        if section in fields:
            fields[section] = {**fields[section], field: _MODE_NUMBERS[fields[section].get(field, "")]}
    try:
        spec = json_format.ParseDict(fields, job_spec_pb2.JobSpec())
        if "architecture" in raw:
            spec.architecture.CopyFrom(_architecture_message(raw["architecture"]))
    except json_format.ParseError as exc:  # a value out of its field's range, e.g. priority 1e12
        raise InvalidArgument(f"spec.parameters: a value does not fit its field: {exc}") from None
    spec.task = _TASK_NUMBERS[raw.get("task", "")]
    return job_spec_to_dict(spec)


def _architecture_plain(message: architecture_pb2.Architecture) -> dict[str, Any]:
    """The nn package's dict form of an Architecture, as given (the domain checks it)."""
    plain: dict[str, Any] = {"input_shape": list(message.input_shape), "output_size": message.output_size}
    family = message.WhichOneof("family")
    if family is not None:
        plain["family"] = family
        plain.update(_plain(getattr(message, family)))
    return plain


def _architecture_message(plain: dict[str, Any]) -> architecture_pb2.Architecture:
    fields = dict(plain)
    family = fields.pop("family", None)
    message = architecture_pb2.Architecture(
        input_shape=fields.pop("input_shape", []), output_size=fields.pop("output_size", 0)
    )
    if family is not None:
        body = getattr(message, family)
        body.SetInParent()
        json_format.ParseDict(fields, body)
    return message


def job_to_proto(job: JobRecord) -> pb.Job:
    message = pb.Job(
        job_id=job.job_id,
        state=JOB_STATES[job.state],
        experiment=job.experiment,
        run_id=job.run_id,
        attempt=job.attempt,
        devices=job.devices,
        created_at=timestamp(job.created_at),
        progress=job.progress,
        epoch=job.epoch,
        step=job.step,
        total_steps=job.total_steps,
        metrics=job.metrics,
        error=job.error.message if job.error else "",
        last_seq=job.last_seq,
        created_by=job.created_by,
        sweep_id=job.sweep_id,
        checkpoints=[_checkpoint_to_proto(c) for c in listed_checkpoints(job.checkpoints)],
        checkpoints_kept=len(job.checkpoints),
        checkpoints_released=job.checkpoints_released,
    )
    json_format.ParseDict(job.spec, message.spec, ignore_unknown_fields=True)
    if job.started_at:
        message.started_at.CopyFrom(timestamp(job.started_at))
    if job.ended_at:
        message.ended_at.CopyFrom(timestamp(job.ended_at))
    if job.registered:
        message.registered.CopyFrom(
            common_pb2.VersionRef(model=job.registered.model, version=job.registered.version)
        )
        message.registered_alias = job.registered.alias
    if (stop := stopped_early(job)) is not None:
        message.stopped_early.CopyFrom(_early_stop_to_proto(stop))
    return message


def _early_stop_to_proto(stop: dict[str, Any]) -> pb.EarlyStop:
    return pb.EarlyStop(**{**stop, "mode": _MODE_NUMBERS[stop["mode"]]})


def _checkpoint_to_proto(checkpoint: Checkpoint) -> pb.JobCheckpoint:
    message = pb.JobCheckpoint(
        epoch=checkpoint.epoch,
        step=checkpoint.step,
        reason=checkpoint.reason,
        best=checkpoint.best,
        metrics=checkpoint.metrics,
        size_bytes=checkpoint.size_bytes,
        sha256=checkpoint.sha256,
    )
    if checkpoint.created_at is not None:
        message.created_at.CopyFrom(timestamp(checkpoint.created_at))
    return message


def job_states_from_proto(states: Any) -> list[str]:
    out = []
    for index, value in enumerate(states):
        if value not in _JOB_STATE_NAMES:
            raise InvalidArgument(
                f"states[{index}]: unknown job state {value}; use QUEUED, RUNNING, SUCCEEDED, FAILED, "
                "CANCELLED or INTERRUPTED"
            )
        out.append(_JOB_STATE_NAMES[value])
    return out


def event_to_proto(event: JobEvent) -> pb.JobEvent:
    message = pb.JobEvent(seq=event.seq, time=timestamp(event.time), attempt=event.attempt)
    data = event.data
    if event.kind == "state":
        message.state.CopyFrom(
            pb.StateChanged(state=JOB_STATES[data["state"]], reason=data["reason"], devices=data["devices"])
        )
        if data.get("stopped_early"):
            message.state.stopped_early.CopyFrom(_early_stop_to_proto(data["stopped_early"]))
    elif event.kind == "step":
        message.step.CopyFrom(pb.StepMetrics(**data))
    elif event.kind == "epoch":
        message.epoch.CopyFrom(pb.EpochMetrics(**data))
    elif event.kind == "progress":
        message.progress.CopyFrom(pb.Progress(**data))
    elif event.kind == "resources":
        message.resources.CopyFrom(pb.ResourceUsage(**data))
    elif event.kind == "checkpoint":
        message.checkpoint.CopyFrom(pb.CheckpointSaved(**data))
    elif event.kind == "log":
        # Not its early_stopping facts: those are the Job's, and its end's (stopped_early).
        message.log.CopyFrom(pb.LogLine(level=data["level"], message=data["message"]))
    elif event.kind == "error":
        message.error.CopyFrom(pb.JobError(**data))
    elif event.kind == "registered":
        message.registered.CopyFrom(pb.VersionRegistered(**data))
    return message


def experiment_to_proto(experiment: Experiment) -> pb.Experiment:
    message = pb.Experiment(
        name=experiment.name,
        description=experiment.description,
        tags=experiment.tags,
        created_at=timestamp(experiment.created_at),
        run_count=experiment.run_count,
    )
    if experiment.deleted_at is not None:
        message.deleted = True
        message.deleted_at.CopyFrom(timestamp(experiment.deleted_at))
    return message


def summary_to_proto(summary: MetricSummary) -> pb.MetricSummary:
    return pb.MetricSummary(
        key=summary.key,
        last=summary.last,
        min=summary.min,
        max=summary.max,
        count=summary.count,
        last_step=summary.last_step,
    )


def artifact_to_proto(artifact: RunArtifact) -> pb.RunArtifact:
    return pb.RunArtifact(
        run_id=artifact.run_id,
        path=artifact.path,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        created_at=timestamp(artifact.created_at),
    )


def run_to_proto(run: Run) -> pb.Run:
    message = pb.Run(
        run_id=run.run_id,
        experiment=run.experiment,
        name=run.name,
        status=RUN_STATUSES[run.status],
        params=run.params,
        tags=run.tags,
        start_time=timestamp(run.start_time),
        attempts=run.attempts,
        job_id=run.job_id,
        metrics=[summary_to_proto(s) for s in run.metrics],
        metrics_left_out=run.metrics_left_out,
        parent_run_id=run.parent_run_id,
    )
    if run.end_time:
        message.end_time.CopyFrom(timestamp(run.end_time))
    if run.deleted_at is not None:
        message.deleted = True
        message.deleted_at.CopyFrom(timestamp(run.deleted_at))
    return message


def view_from_proto(value: pb.LifecycleView.ValueType) -> str:
    if value not in _VIEWS:
        raise InvalidArgument(f"view: unknown value {value}; use ACTIVE_ONLY, DELETED_ONLY or ALL")
    return _VIEWS[value]


def run_order_from_proto(request: pb.ListRunsRequest) -> RunOrder | None:
    """None when order_by is unset (newest first)."""
    if not request.HasField("order_by"):
        return None
    order = request.order_by
    if not order.metric:
        raise InvalidArgument("order_by.metric is required: the metric whose summary orders the runs")
    if order.field not in _FIELDS:
        raise InvalidArgument(f"order_by.field: unknown summary field {order.field}; {_USE_FIELDS}")
    if order.direction not in _DIRECTIONS:
        raise InvalidArgument(
            f"order_by.direction: unknown value {order.direction}; use ASCENDING or DESCENDING"
        )
    return RunOrder(order.metric, _FIELDS[order.field], _DIRECTIONS[order.direction])


_TEXT_MATCHES = {
    pb.TEXT_MATCH_EQ: "eq",
    pb.TEXT_MATCH_NE: "ne",
    pb.TEXT_MATCH_LIKE: "like",
    pb.TEXT_MATCH_ILIKE: "ilike",
    pb.TEXT_MATCH_IN: "in",
    pb.TEXT_MATCH_NOT_IN: "not_in",
}
_TEXT_ENTITIES = {
    pb.TEXT_ENTITY_PARAM: "params",
    pb.TEXT_ENTITY_TAG: "tags",
    pb.TEXT_ENTITY_ATTRIBUTE: "attributes",
}


def text_filters_from_proto(filters: Any) -> list[TextFilter]:
    out = []
    for i, f in enumerate(filters):
        if f.entity not in _TEXT_ENTITIES:
            raise InvalidArgument(f"texts[{i}].entity: set PARAM, TAG or ATTRIBUTE")
        if f.match not in _TEXT_MATCHES:
            raise InvalidArgument(f"texts[{i}].match: set EQ, NE, LIKE, ILIKE, IN or NOT_IN")
        out.append(TextFilter(_TEXT_ENTITIES[f.entity], f.key, _TEXT_MATCHES[f.match], tuple(f.values)))
    return out


def time_filters_from_proto(filters: Any) -> list[TimeFilter]:
    out = []
    for i, f in enumerate(filters):
        if f.op not in _COMPARISONS:
            raise InvalidArgument(f"times[{i}].op: set a comparison (LT, LE, GT, GE, EQ or NE)")
        out.append(TimeFilter(f.attribute, _COMPARISONS[f.op], f.value_ms))
    return out


def sort_keys_from_proto(orders: Any) -> list[SortKey]:
    """ListRunsRequest.order_keys: each names one metric, param or attribute; ascending unless
    DESCENDING, as MLflow's order strings."""
    out = []
    for i, o in enumerate(orders):
        named = [
            (entity, key)
            for entity, key in (("metrics", o.metric), ("params", o.param), ("attributes", o.attribute))
            if key
        ]
        if len(named) != 1:
            raise InvalidArgument(f"order_keys[{i}]: set exactly one of metric, param or attribute")
        if o.field not in _FIELDS:
            raise InvalidArgument(f"order_keys[{i}].field: unknown summary field {o.field}; {_USE_FIELDS}")
        if o.direction not in _DIRECTIONS:
            raise InvalidArgument(
                f"order_keys[{i}].direction: unknown value {o.direction}; use ASCENDING or DESCENDING"
            )
        if o.field != pb.SUMMARY_FIELD_UNSPECIFIED and not o.metric:
            raise InvalidArgument(f"order_keys[{i}].field applies to a metric's summary: leave it unset")
        entity, key = named[0]
        out.append(SortKey(entity, key, _FIELDS[o.field] if o.metric else "", bool(_DIRECTIONS[o.direction])))
    return out


def key_value_filters(filters: Any, field: str, max_value: int) -> dict[str, str]:
    """ParamFilter or TagFilter messages as a dict; each key given once, each value no longer than
    a stored one (`max_value`) can be."""
    out: dict[str, str] = {}
    for i, f in enumerate(filters):
        if len(f.value) > max_value:
            # It would match nothing, and a param's is compared as a number too.
            raise InvalidArgument(
                f"{field}[{i}].value is {len(f.value)} characters long; a run's {field[:-1]} value is at "
                f"most {max_value}, so it would match no run"
            )
        if not f.key:
            raise InvalidArgument(f"{field}[{i}].key is required: the name of the {field[:-1]} to match")
        if not is_entry_key(f.key):
            # It would match nothing, which reads as no run having the key.
            raise InvalidArgument(
                f"{field}[{i}].key {f.key[:80]!r} is no {field[:-1]} key: keys are 1 to {MAX_TAG_KEY} "
                "characters without NUL or newlines"
            )
        if f.key in out and out[f.key] != f.value:
            raise InvalidArgument(f"{field}[{i}]: {f.key} is filtered twice with different values")
        out[f.key] = f.value
    return out


def run_statuses_from_proto(values: Any, field: str = "statuses") -> list[str]:
    out = []
    for value in values:
        if value not in _RUN_STATUS_NAMES:
            raise InvalidArgument(
                f"{field}: unknown run status {value}; use RUNNING, SUCCEEDED, FAILED, CANCELLED or INTERRUPTED"
            )
        out.append(_RUN_STATUS_NAMES[value])
    return out


def run_status_from_proto(value: pb.RunStatus.ValueType) -> str | None:
    """UpdateRun's status; None when unset (the update leaves the status alone). An unknown number
    is refused naming the statuses UpdateRun takes, as its other refusals do."""
    if value == pb.RUN_STATUS_UNSPECIFIED:
        return None
    if value not in _RUN_STATUS_NAMES:
        raise InvalidArgument(
            f"status: unknown run status {value}; a run can be ended as SUCCEEDED, FAILED or CANCELLED, "
            "or reopened as RUNNING"
        )
    return _RUN_STATUS_NAMES[value]


def metric_filters_from_proto(filters: Any) -> list[MetricFilter]:
    out = []
    for i, f in enumerate(filters):
        if f.op not in _COMPARISONS:
            raise InvalidArgument(f"metrics[{i}].op: set a comparison (LT, LE, GT, GE, EQ or NE)")
        if f.field not in _FIELDS:
            raise InvalidArgument(f"metrics[{i}].field: unknown summary field {f.field}; {_USE_FIELDS}")
        out.append(MetricFilter(f.key, _FIELDS[f.field], _COMPARISONS[f.op], f.value))
    return out


def mode_from_proto(value: job_spec_pb2.OptimizeMode.ValueType, field: str = "mode") -> str | None:
    if value not in _MODES:
        raise InvalidArgument(f"{field}: unknown value {value}; use MIN or MAX")
    return _MODES[value] or None


def summary_field_from_proto(value: pb.SummaryField.ValueType) -> str | None:
    if value not in _FIELDS:
        raise InvalidArgument(f"field: unknown summary field {value}; {_USE_FIELDS}")
    return None if value == pb.SUMMARY_FIELD_UNSPECIFIED else _FIELDS[value]


def points_from_proto(points: Any) -> list[MetricPoint]:
    return [
        MetricPoint(
            p.key,
            p.value,
            p.step,
            seconds(p.time, f"points[{i}].time") if p.HasField("time") else None,
            p.next_step,
        )
        for i, p in enumerate(points)
    ]


def point_to_proto(point: MetricPoint) -> pb.MetricPoint:
    message = pb.MetricPoint(key=point.key, value=point.value, step=point.step)
    if point.time is not None:
        message.time.CopyFrom(timestamp(point.time))
    return message


_SWEEP_STATES = {
    "running": pb.SWEEP_STATE_RUNNING,
    "succeeded": pb.SWEEP_STATE_SUCCEEDED,
    "failed": pb.SWEEP_STATE_FAILED,
    "cancelled": pb.SWEEP_STATE_CANCELLED,
}
_STRATEGIES = {
    pb.SWEEP_STRATEGY_GRID: "grid",
    pb.SWEEP_STRATEGY_RANDOM: "random",
    pb.SWEEP_STRATEGY_ASHA: "asha",
    pb.SWEEP_STRATEGY_TPE: "tpe",
    pb.SWEEP_STRATEGY_CMA_ES: "cmaes",
    pb.SWEEP_STRATEGY_HYPERBAND: "hyperband",
    pb.SWEEP_STRATEGY_PBT: "pbt",
}
_PRUNERS = {
    pb.SWEEP_PRUNER_UNSPECIFIED: "",
    pb.SWEEP_PRUNER_ASHA: "asha",
    pb.SWEEP_PRUNER_HYPERBAND: "hyperband",
}
_TRIAL_STATES = {**JOB_STATES, "pending": pb.JOB_STATE_UNSPECIFIED}


def sweep_request_from_proto(spec: pb.SweepSpec) -> SweepRequest:
    return SweepRequest(
        strategy=sweep_strategy_from_proto(spec.strategy),
        parameters=_sweep_parameters_from_proto(spec.parameters),
        max_trials=spec.max_trials,
        max_concurrent=spec.max_concurrent,
        metric=spec.metric,
        mode=mode_from_proto(spec.mode, "spec.mode") or "",
        seed=spec.seed if spec.HasField("seed") else None,
        asha=AshaSettings(spec.asha.min_epochs, spec.asha.reduction_factor),
        document=json_format.MessageToDict(spec, preserving_proto_field_name=True),
        pruner=_pruner_from_proto(spec.pruner),
        pbt=PbtSettings(
            spec.pbt.population, spec.pbt.quantile, spec.pbt.perturb, spec.pbt.resample_probability
        ),
    )


def _pruner_from_proto(value: pb.SweepPruner.ValueType) -> str:
    if value not in _PRUNERS:
        raise InvalidArgument("spec.pruner: set ASHA, HYPERBAND or leave it unset")
    return _PRUNERS[value]


def _sweep_parameters_from_proto(parameters: Any) -> list[SweepParameter]:
    out = []
    for i, p in enumerate(parameters):
        domain = p.WhichOneof("domain")
        if domain is None:
            raise InvalidArgument(f"spec.parameters[{i}]: give values or a range for {p.path!r}")
        when = {"when_path": p.when.path, "when_values": tuple(p.when.values)}
        if domain == "values":
            out.append(SweepParameter(p.path, values=list(p.values.values), **when))
        else:
            r = p.range
            out.append(
                SweepParameter(
                    p.path, low=r.min, high=r.max, log_scale=r.log_scale, integer=r.integer, **when
                )
            )
    return out


def sweep_to_proto(sweep: Sweep) -> pb.Sweep:
    message = pb.Sweep(
        sweep_id=sweep.sweep_id,
        state=_SWEEP_STATES[sweep.state],
        best_job_id=sweep.best_job_id,
        created_at=timestamp(sweep.created_at),
        trials=[
            pb.SweepTrial(
                job_id=t.job_id,
                params=t.params,
                state=_TRIAL_STATES[t.state],
                metric=t.metric,
                has_metric=t.has_metric,
                pruned=t.pruned,
                number=t.number,
                pruned_at_epoch=t.pruned_at,
                bracket=t.bracket,
                generation=t.generation,
                parent_job_id=t.parent_job_id,
                exploited=t.exploited,
                error=t.error,
            )
            for t in sweep.trials
        ],
        error=sweep.error,
    )
    json_format.ParseDict(sweep.document, message.spec, ignore_unknown_fields=True)
    # The seed the searcher draws from, also where the daemon drew it (or, before it did, 0);
    # none for a grid given none, which draws nothing.
    if sweep.seed is not None:
        message.spec.seed = sweep.seed
    return message


def sweep_strategy_from_proto(value: pb.SweepStrategy.ValueType) -> str:
    if value not in _STRATEGIES:
        raise InvalidArgument("spec.strategy: set GRID, RANDOM, ASHA, TPE, CMA_ES, HYPERBAND or PBT")
    return _STRATEGIES[value]
