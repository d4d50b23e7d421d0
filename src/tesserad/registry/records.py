"""The registry's domain types and their stored form (versioned JSON records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tesserad.store import decode_record, encode_record

ArtifactFormat = Literal["safetensors", "onnx", "ensemble"]
ARTIFACT_FORMATS: tuple[str, ...] = ("safetensors", "onnx", "ensemble")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, numpy dtype name, shape with -1 for dynamic dims."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True)
class DatasetLineage:
    name: str
    version: int
    sha256: str = ""
    # The version was gone when this model version was registered: a training job's dataset
    # force-deleted while it ran (see Versions.register_version). Nothing holds it.
    deleted: bool = False


@dataclass(frozen=True)
class DeletedParent:
    """What a deleted parent version was: its artifact's sha256 and when it went (empty and 0
    where a store from before these were kept lost them)."""

    sha256: str = ""
    deleted_at: float = 0.0


@dataclass(frozen=True)
class Lineage:
    """Where a version came from; every field optional."""

    run_id: str = ""
    job_id: str = ""
    experiment: str = ""
    datasets: tuple[DatasetLineage, ...] = ()
    parent_version: int = 0
    parent_model: str = ""  # empty: the same model
    job_spec: dict[str, Any] | None = None
    # Filled in when read, from the version's mark in DELETED_PARENTS, never from its record.
    parent_deleted: DeletedParent | None = None


@dataclass(frozen=True)
class ModelRecord:
    name: str
    description: str
    tags: dict[str, str]
    created_at: float
    updated_at: float
    latest_version: int  # 0 without versions
    version_count: int
    aliases: dict[str, int]  # "latest" included when there is a version
    # Only grow: the number the next registered version gets, and how many alias moves and
    # deletions were logged. What a version registered and another deleted, or an alias moved and
    # back, leaves behind where the counts and aliases look as before.
    next_version: int
    alias_events: int
    # The number its first version got or gets: past 1 for a model created again under a deleted
    # model's name (its versions number on from the deleted one's).
    first_version: int
    # Numbers next_version passed over without a version (`tables.raise_next_version`): grown
    # past, not registered.
    numbers_skipped: int
    # Version number -> its saved serving config's fields (see registry.serving_configs).
    serving_configs: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SameBytes:
    """A model's versions whose artifacts are one blob: the newest few, and how many in all."""

    versions: tuple[int, ...]  # newest first
    count: int


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    format: str
    description: str
    signature: Signature
    architecture: dict[str, Any] | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    lineage: Lineage
    sha256: str
    size_bytes: int
    created_at: float
    created_by: str
    parameter_count: int
    aliases: tuple[str, ...] = ()  # filled in when read
    # Set on the record a registration with an alias returns: how that alias moved.
    alias_moved: AliasEvent | None = None
    # Set on the record a registration with `alias_if_room` returns when the model had no room
    # for its alias: why it was not set.
    alias_refused: str = ""
    # Set with `alias_moved` where the model's current deployment names the alias: its
    # `deployment_warnings` after the move.
    deployment_warnings: tuple[str, ...] = ()
    # Set on the record a registration returns: the model's other versions that hold its blob.
    same_bytes: SameBytes | None = None
    # Set on the record a registration with `once_per_job` returns when it is the version the
    # lineage job registered before (returned as it was, none added).
    registered_before: bool = False


@dataclass(frozen=True)
class AliasRecord:
    model: str
    alias: str
    version: int
    updated_at: float
    updated_by: str
    # Set by SetAlias where the current deployment names the alias: its `deployment_warnings`
    # after the move.
    deployment_warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasEvent:
    model: str
    alias: str
    from_version: int  # 0: created
    to_version: int  # 0: deleted
    time: float
    actor: str


@dataclass(frozen=True)
class Target:
    """A route or shadow target: a version number or an alias (resolved when read)."""

    version: int = 0
    alias: str = ""


@dataclass(frozen=True)
class Route:
    target: Target
    weight: int
    resolved_version: int = 0


@dataclass(frozen=True)
class Shadow:
    target: Target
    percent: int
    resolved_version: int = 0


@dataclass(frozen=True)
class DeploymentRecord:
    model: str
    revision: int
    routes: tuple[Route, ...]
    shadow: Shadow | None
    created_at: float
    created_by: str
    comment: str
    rolled_back_from: int = 0
    # The revision a Rollback of this one restores (0: none).
    previous_revision: int = 0
    # Set where it is read as the model's deployment now: what it routes to that Deploy would
    # refuse (`deployment_warnings`). Not stored: aliases move after it is written.
    warnings: tuple[str, ...] = ()

    @property
    def undeployed(self) -> bool:
        """A revision that returned the model to no deployment (a rollback past the first one)."""
        return not self.routes


@dataclass(frozen=True)
class ValueDiff:
    key: str
    a: str
    b: str
    present_a: bool
    present_b: bool


@dataclass(frozen=True)
class MetricDiff:
    key: str
    a: float
    b: float
    present_a: bool
    present_b: bool
    delta: float


@dataclass(frozen=True)
class Comparison:
    a: VersionRecord
    b: VersionRecord
    params: list[ValueDiff]
    metrics: list[MetricDiff]
    same_signature: bool
    signature_differences: list[str]
    size_delta: int
    lineage: list[ValueDiff]


@dataclass(frozen=True)
class VersionKey:
    model: str
    version: int


# -- stored form ----------------------------------------------------------------------------

MODEL_KIND = "model"
VERSION_KIND = "model_version"
ALIAS_KIND = "alias"
ALIAS_EVENT_KIND = "alias_event"
DEPLOYMENT_KIND = "deployment"
SCHEMA = 1


def _spec_from(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(data["name"], data["dtype"], tuple(data["shape"]))


def signature_from_dict(data: dict[str, Any]) -> Signature:
    return Signature(
        tuple(_spec_from(s) for s in data.get("inputs", [])),
        tuple(_spec_from(s) for s in data.get("outputs", [])),
    )


def lineage_from_dict(data: dict[str, Any]) -> Lineage:
    return Lineage(
        run_id=data.get("run_id", ""),
        job_id=data.get("job_id", ""),
        experiment=data.get("experiment", ""),
        datasets=tuple(DatasetLineage(**d) for d in data.get("datasets", [])),
        parent_version=data.get("parent_version", 0),
        parent_model=data.get("parent_model", ""),
        job_spec=data.get("job_spec"),
    )


def encode_version(record: VersionRecord) -> bytes:
    # Spelled out rather than dataclasses.asdict, which deep-copies every field and took ~0.1 ms
    # of the group-commit thread per registration; the JSON is the same.
    lineage = record.lineage
    data = {
        "model": record.model,
        "version": record.version,
        "format": record.format,
        "description": record.description,
        "signature": {
            "inputs": [_spec_data(spec) for spec in record.signature.inputs],
            "outputs": [_spec_data(spec) for spec in record.signature.outputs],
        },
        "architecture": record.architecture,
        "params": record.params,
        "metrics": record.metrics,
        "tags": record.tags,
        "lineage": {
            "run_id": lineage.run_id,
            "job_id": lineage.job_id,
            "experiment": lineage.experiment,
            "datasets": [
                {"name": ds.name, "version": ds.version, "sha256": ds.sha256, "deleted": ds.deleted}
                for ds in lineage.datasets
            ],
            "parent_version": lineage.parent_version,
            "parent_model": lineage.parent_model,
            "job_spec": lineage.job_spec,
        },
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "created_at": record.created_at,
        "created_by": record.created_by,
        "parameter_count": record.parameter_count,
    }
    return encode_record(VERSION_KIND, SCHEMA, data)


def _spec_data(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}


def decode_version(raw: bytes) -> VersionRecord:
    _, data = decode_record(raw, VERSION_KIND, SCHEMA)
    return VersionRecord(
        model=data["model"],
        version=data["version"],
        format=data["format"],
        description=data["description"],
        signature=signature_from_dict(data["signature"]),
        architecture=data["architecture"],
        params=data["params"],
        metrics=data["metrics"],
        tags=data["tags"],
        lineage=lineage_from_dict(data["lineage"]),
        sha256=data["sha256"],
        size_bytes=data["size_bytes"],
        created_at=data["created_at"],
        created_by=data["created_by"],
        parameter_count=data["parameter_count"],
    )


def same_version(a: VersionRecord, b: VersionRecord) -> bool:
    """Whether two records are of one registered version: a model deleted by a tesserad from
    before `tables.RETIRED_NUMBERS` and created again numbers from 1, so its name and number may
    be another version's."""
    return (a.model, a.version, a.sha256, a.created_at) == (b.model, b.version, b.sha256, b.created_at)


def _target_from(data: dict[str, Any]) -> Target:
    return Target(version=data.get("version", 0), alias=data.get("alias", ""))


def encode_deployment(record: DeploymentRecord) -> bytes:
    data = asdict(record)
    del data["warnings"]
    return encode_record(DEPLOYMENT_KIND, SCHEMA, data)


def decode_deployment(raw: bytes) -> DeploymentRecord:
    _, data = decode_record(raw, DEPLOYMENT_KIND, SCHEMA)
    shadow = data["shadow"]
    return DeploymentRecord(
        model=data["model"],
        revision=data["revision"],
        routes=tuple(Route(_target_from(r["target"]), r["weight"]) for r in data["routes"]),
        shadow=Shadow(_target_from(shadow["target"]), shadow["percent"]) if shadow else None,
        created_at=data["created_at"],
        created_by=data["created_by"],
        comment=data["comment"],
        rolled_back_from=data["rolled_back_from"],
        previous_revision=data["previous_revision"],
    )
