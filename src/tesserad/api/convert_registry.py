"""Registry messages <-> registry domain types (and the Architecture / Signature messages)."""

from __future__ import annotations

import functools
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from tessera.v1 import architecture_pb2, common_pb2, job_spec_pb2
from tessera.v1 import registry_pb2 as pb
from tesserad.api.convert_common import struct_plain, timestamp
from tesserad.errors import InvalidArgument
from tesserad.names import validate_name
from tesserad.registry import (
    AliasEvent,
    AliasRecord,
    Comparison,
    DatasetLineage,
    DeploymentRecord,
    Lineage,
    ModelRecord,
    Route,
    Shadow,
    Signature,
    Target,
    TensorSpec,
    VersionRecord,
)
from tesserad.registry.export import ExportResult

FORMAT_NAMES = {
    pb.ARTIFACT_FORMAT_SAFETENSORS: "safetensors",
    pb.ARTIFACT_FORMAT_ONNX: "onnx",
    pb.ARTIFACT_FORMAT_ENSEMBLE: "ensemble",
}
FORMAT_VALUES = {name: value for value, name in FORMAT_NAMES.items()}
_DTYPE_PREFIX = "DATA_TYPE_"
# Both ways at once: the enum wrapper's Name/Value look the descriptor up on every call, a
# measurable share of a small registration's cost.
_DTYPE_NAMES = {
    value.number: value.name.removeprefix(_DTYPE_PREFIX).lower()
    for value in common_pb2.DataType.DESCRIPTOR.values
    if value.number != common_pb2.DATA_TYPE_UNSPECIFIED
}
_DTYPE_VALUES = {name: number for number, name in _DTYPE_NAMES.items()}


def dtype_name(value: common_pb2.DataType.ValueType) -> str:
    """DataType enum -> numpy name ("" for unspecified or unknown)."""
    return _DTYPE_NAMES.get(value, "")


def dtype_value(name: str) -> common_pb2.DataType.ValueType:
    return common_pb2.DataType.ValueType(_DTYPE_VALUES.get(name.lower(), common_pb2.DATA_TYPE_UNSPECIFIED))


def signature_from_proto(message: common_pb2.Signature) -> Signature:
    def specs(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, dtype_name(t.dtype), tuple(t.shape)) for t in items)

    return Signature(specs(message.inputs), specs(message.outputs))


def signature_to_proto(signature: Signature) -> common_pb2.Signature:
    def specs(items: tuple[TensorSpec, ...]) -> list[common_pb2.TensorSpec]:
        return [common_pb2.TensorSpec(name=t.name, dtype=dtype_value(t.dtype), shape=t.shape) for t in items]

    return common_pb2.Signature(inputs=specs(signature.inputs), outputs=specs(signature.outputs))


def architecture_to_dict(message: architecture_pb2.Architecture) -> dict[str, Any]:
    """The tesserad.nn.spec_to_dict form: zero values take their defaults; validated."""
    # A registry sees the same few architectures over and over; building and checking the
    # spec cost ~0.1 ms per upload, a cached result (copied, being mutable) a few us.
    spec: dict[str, Any] = json.loads(_architecture_json(message.SerializeToString(deterministic=True)))
    return spec


@functools.lru_cache(maxsize=256)
def _architecture_json(serialized: bytes) -> str:
    """architecture_to_dict of a serialized Architecture, as JSON; errors are not cached."""
    return json.dumps(_architecture_dict(architecture_pb2.Architecture.FromString(serialized)))


def _architecture_dict(message: architecture_pb2.Architecture) -> dict[str, Any]:
    from tesserad.nn import spec_from_dict, spec_to_dict

    family = message.WhichOneof("family")
    if family is None:
        raise InvalidArgument("architecture needs one family: mlp, cnn2d, cnn4d, lstm, transformer or python")
    data: dict[str, Any] = {
        "family": family,
        "input_shape": list(message.input_shape),
        "output_size": message.output_size,
    }
    for field, value in getattr(message, family).ListFields():
        if isinstance(value, Struct):
            data[field.name] = struct_plain(value, f"architecture.{family}.{field.name}")
        else:
            data[field.name] = list(value) if field.is_repeated else value
    return spec_to_dict(spec_from_dict(data))


def architecture_from_dict(data: dict[str, Any]) -> architecture_pb2.Architecture:
    # json_format.ParseDict cost ~0.15 ms per reply carrying a version; the same few
    # architectures recur, so their serialized messages are cached.
    return architecture_pb2.Architecture.FromString(
        _architecture_message(json.dumps(data, sort_keys=True, separators=(",", ":")))
    )


@functools.lru_cache(maxsize=256)
def _architecture_message(data_json: str) -> bytes:
    return _parse_architecture(json.loads(data_json)).SerializeToString()


def _parse_architecture(data: dict[str, Any]) -> architecture_pb2.Architecture:
    family = data["family"]
    body = {k: v for k, v in data.items() if k not in ("family", "input_shape", "output_size")}
    return json_format.ParseDict(
        {"input_shape": data["input_shape"], "output_size": data["output_size"], family: body},
        architecture_pb2.Architecture(),
        ignore_unknown_fields=True,
    )


def job_spec_to_dict(message: job_spec_pb2.JobSpec) -> dict[str, Any]:
    """The form a lineage stores a job spec in: protobuf JSON with the .proto field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def lineage_from_proto(message: pb.Lineage) -> Lineage:
    return Lineage(
        run_id=message.run_id,
        job_id=message.job_id,
        experiment=message.experiment,
        datasets=tuple(DatasetLineage(d.name, d.version, d.sha256) for d in message.datasets),
        parent_version=message.parent_version,
        parent_model=message.parent_model,
        job_spec=job_spec_to_dict(message.job_spec) if message.HasField("job_spec") else None,
    )


def lineage_to_proto(lineage: Lineage) -> pb.Lineage:
    message = pb.Lineage(
        run_id=lineage.run_id,
        job_id=lineage.job_id,
        experiment=lineage.experiment,
        datasets=[
            pb.DatasetLineage(name=d.name, version=d.version, sha256=d.sha256, deleted=d.deleted)
            for d in lineage.datasets
        ],
        parent_version=lineage.parent_version,
        parent_model=lineage.parent_model,
    )
    if lineage.job_spec is not None:
        json_format.ParseDict(lineage.job_spec, message.job_spec, ignore_unknown_fields=True)
    gone = lineage.parent_deleted
    if gone is not None:
        message.parent_deleted.SetInParent()  # set even where nothing of the parent is known
        message.parent_deleted.sha256 = gone.sha256
        if gone.deleted_at:
            message.parent_deleted.deleted_at.CopyFrom(timestamp(gone.deleted_at))
    return message


def model_to_proto(record: ModelRecord) -> pb.Model:
    return pb.Model(
        name=record.name,
        description=record.description,
        tags=record.tags,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        latest_version=record.latest_version,
        version_count=record.version_count,
        aliases=record.aliases,
    )


def version_to_proto(record: VersionRecord) -> pb.ModelVersion:
    message = pb.ModelVersion(
        model=record.model,
        version=record.version,
        format=FORMAT_VALUES[record.format],
        description=record.description,
        signature=signature_to_proto(record.signature),
        params=record.params,
        metrics=record.metrics,
        tags=record.tags,
        lineage=lineage_to_proto(record.lineage),
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        created_at=timestamp(record.created_at),
        created_by=record.created_by,
        aliases=record.aliases,
        parameter_count=record.parameter_count,
    )
    if record.architecture:
        message.architecture.CopyFrom(architecture_from_dict(record.architecture))
    if record.alias_moved is not None:
        message.alias_moved.CopyFrom(alias_event_to_proto(record.alias_moved, record.deployment_warnings))
    if record.same_bytes is not None:
        message.same_bytes.CopyFrom(
            pb.SameBytes(versions=record.same_bytes.versions, count=record.same_bytes.count)
        )
    return message


def format_from_proto(value: pb.ArtifactFormat.ValueType) -> str:
    # A value this daemon does not know reaches the domain's check as its number, which names it.
    return FORMAT_NAMES.get(value, str(value) if value else "")


def ref_args(ref: common_pb2.VersionRef, field: str = "ref") -> tuple[str, int | None, str | None]:
    """(model, version, alias) of a VersionRef, checked with each refusal naming the request's
    `field` that holds it ("b.version"); an unset selector means "latest"."""
    validate_name(f"{field}.model", ref.model)
    selector = ref.WhichOneof("selector")
    if selector == "version" and ref.version <= 0:
        raise InvalidArgument(f"{field}.version must be >= 1, got {ref.version}")
    if selector == "alias" and ref.alias:
        validate_name(f"{field}.alias", ref.alias)
    return (
        ref.model,
        ref.version if selector == "version" else None,
        ref.alias if selector == "alias" else None,
    )


def alias_to_proto(record: AliasRecord) -> pb.Alias:
    return pb.Alias(
        model=record.model,
        alias=record.alias,
        version=record.version,
        updated_at=timestamp(record.updated_at),
        updated_by=record.updated_by,
        deployment_warnings=record.deployment_warnings,
    )


def alias_event_to_proto(event: AliasEvent, deployment_warnings: tuple[str, ...] = ()) -> pb.AliasEvent:
    return pb.AliasEvent(
        deployment_warnings=deployment_warnings,
        model=event.model,
        alias=event.alias,
        from_version=event.from_version,
        to_version=event.to_version,
        time=timestamp(event.time),
        actor=event.actor,
    )


def export_to_proto(result: ExportResult) -> pb.ExportOnnxResponse:
    message = pb.ExportOnnxResponse(
        version=version_to_proto(result.version),
        opset=result.opset,
        max_abs_error=result.max_abs_error,
        conv4d=result.conv4d,
        reused=result.reused,
    )
    if result.version.alias_moved is not None:
        message.alias_moved.CopyFrom(
            alias_event_to_proto(result.version.alias_moved, result.version.deployment_warnings)
        )
    return message


def comparison_to_proto(c: Comparison) -> pb.CompareVersionsResponse:
    return pb.CompareVersionsResponse(
        a=version_to_proto(c.a),
        b=version_to_proto(c.b),
        params=[
            pb.ValueDiff(key=d.key, a=d.a, b=d.b, present_a=d.present_a, present_b=d.present_b)
            for d in c.params
        ],
        metrics=[
            pb.MetricDiff(
                key=d.key, a=d.a, b=d.b, present_a=d.present_a, present_b=d.present_b, delta=d.delta
            )
            for d in c.metrics
        ],
        same_signature=c.same_signature,
        signature_differences=c.signature_differences,
        size_delta=c.size_delta,
        lineage=[
            pb.ValueDiff(key=d.key, a=d.a, b=d.b, present_a=d.present_a, present_b=d.present_b)
            for d in c.lineage
        ],
    )


def _target(message: pb.Route | pb.Shadow, where: str) -> Target:
    kind = message.WhichOneof("target")
    if kind == "version" and message.version == 0:
        # Set, unlike an absent target; the domain's Target cannot tell the two apart.
        raise InvalidArgument(f"{where}.version must be >= 1, got 0")
    return Target(
        version=message.version if kind == "version" else 0, alias=message.alias if kind == "alias" else ""
    )


def routes_from_proto(routes: Any) -> list[Route]:
    return [Route(_target(r, f"routes[{i}]"), r.weight) for i, r in enumerate(routes)]


def shadow_from_proto(request: pb.DeployRequest) -> Shadow | None:
    if not request.HasField("shadow"):
        return None
    return Shadow(_target(request.shadow, "shadow"), request.shadow.percent or 100)


def deployment_to_proto(record: DeploymentRecord) -> pb.Deployment:

    def route(r: Route) -> pb.Route:
        message = pb.Route(weight=r.weight, resolved_version=r.resolved_version)
        if r.target.alias:
            message.alias = r.target.alias
        else:
            message.version = r.target.version
        return message

    message = pb.Deployment(
        model=record.model,
        revision=record.revision,
        routes=[route(r) for r in record.routes],
        created_at=timestamp(record.created_at),
        created_by=record.created_by,
        comment=record.comment,
        rolled_back_from=record.rolled_back_from,
        undeployed=record.undeployed,
        warnings=record.warnings,
    )
    if record.shadow is not None:
        shadow = message.shadow
        shadow.percent = record.shadow.percent
        shadow.resolved_version = record.shadow.resolved_version
        if record.shadow.target.alias:
            shadow.alias = record.shadow.target.alias
        else:
            shadow.version = record.shadow.target.version
    return message
