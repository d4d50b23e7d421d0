"""Roles and the role every RPC of every served service needs.

`reader` gets, lists, watches, predicts and reads stats; `trainer` also uploads, submits,
cancels and logs, and points an alias (new or moved from another version) at a version its own
call creates (UploadVersion, a job's register_as, RegisterJobWeights, ExportOnnx with an alias);
`admin` also deletes, deploys, rolls back, loads and unloads, and points an alias at a version
that exists already (SetAlias, or RegisterJobWeights and ExportOnnx where they find their version
made before) or deletes one. Each role includes the ones below it.

The table names every RPC by hand, because a role is a decision someone must make, not a
default. `required_roles` checks it against the service descriptors the daemon serves, so a
new RPC added to a .proto without a role here stops the daemon at start (and fails the unit
test) instead of being served open or silently closed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from google.protobuf.descriptor import ServiceDescriptor


class Role(enum.IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    READER = 1
    TRAINER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {text!r}; expected one of {', '.join(r.label for r in cls)}"
            ) from None


class MissingRoleError(Exception):
    """The role table and the served services disagree; the message lists every RPC to fix."""


_R, _T, _A = Role.READER, Role.TRAINER, Role.ADMIN

# service full name -> method -> the least role that may call it.
ROLE_TABLE: dict[str, dict[str, Role]] = {
    "tessera.v1.System": {
        "GetServerInfo": _R,
        "WatchSystem": _R,
        # Every record and blob of every user, in one file.
        "Backup": _A,
        # Reads every blob: as heavy as a backup, and its report names every owner's records.
        "VerifyStore": _A,
        "VerifyStoreStream": _A,
    },
    "tessera.v1.Registry": {
        "CreateModel": _T,
        "GetModel": _R,
        "ListModels": _R,
        "UpdateModel": _T,
        "DeleteModel": _A,
        "UploadVersion": _T,
        "UploadVersionInline": _T,
        "UploadVersionBatch": _T,
        "DownloadVersion": _R,
        "GetVersion": _R,
        "ListVersions": _R,
        "DeleteVersion": _A,
        "SetAlias": _A,
        "GetAlias": _R,
        "ListAliases": _R,
        "DeleteAlias": _A,
        "ListAliasHistory": _R,
        "GetLineage": _R,
        "CompareVersions": _R,
        # Writes a new artifact next to the version, like an upload.
        "ExportOnnx": _T,
        "Deploy": _A,
        "GetDeployment": _R,
        "WatchChanges": _R,
        "ListDeployments": _R,
        "Rollback": _A,
    },
    "tessera.v1.Datasets": {
        "UploadDataset": _T,
        "GetDataset": _R,
        "ListDatasets": _R,
        "GetDatasetVersion": _R,
        "ListDatasetVersions": _R,
        "DeleteDataset": _A,
        "DownloadDataset": _R,
        "DownloadSplitIndices": _R,
    },
    "tessera.v1.Training": {
        "SubmitJob": _T,
        "GetJob": _R,
        "ListJobs": _R,
        "CancelJob": _T,
        # Adds a version and may move an alias, as a job's register_as or an upload does.
        "RegisterJobWeights": _T,
        "WatchJob": _R,
        "CreateExperiment": _T,
        "GetExperiment": _R,
        "ListExperiments": _R,
        "UpdateExperiment": _T,
        # Soft deletes, as the other deletes; a restore undoes an admin's decision.
        "DeleteExperiment": _A,
        "RestoreExperiment": _A,
        "CreateRun": _T,
        "UpdateRun": _T,
        "GetRun": _R,
        "DeleteRun": _A,
        "RestoreRun": _A,
        "ListRuns": _R,
        "CompareRuns": _R,
        "Leaderboard": _R,
        "LogParams": _T,
        "LogMetrics": _T,
        "LogMetricsStream": _T,
        "GetMetricHistory": _R,
        "ListRunMetrics": _R,
        "UploadRunArtifact": _T,
        "ListRunArtifacts": _R,
        "DownloadRunArtifact": _R,
        "SubmitSweep": _T,
        "GetSweep": _R,
        "ListSweeps": _R,
        "CancelSweep": _T,
    },
    "tessera.v1.Inference": {
        "Predict": _R,
        "PredictStream": _R,
        "LoadModel": _A,
        "UnloadModel": _A,
        "ListLoaded": _R,
        "GetStats": _R,
        "ListShadowResults": _R,
        "Explain": _R,
    },
    "inference.GRPCInferenceService": {
        "ServerLive": _R,
        "ServerReady": _R,
        "ModelReady": _R,
        "ServerMetadata": _R,
        "ModelMetadata": _R,
        "ModelInfer": _R,
        "ModelStreamInfer": _R,
        "ModelConfig": _R,
        "ModelStatistics": _R,
        "RepositoryIndex": _R,
        "RepositoryModelLoad": _A,
        "RepositoryModelUnload": _A,
        "SystemSharedMemoryStatus": _R,
        # Registering shared memory makes the daemon map a region a client names.
        "SystemSharedMemoryRegister": _A,
        "SystemSharedMemoryUnregister": _A,
        "CudaSharedMemoryStatus": _R,
        "CudaSharedMemoryRegister": _A,
        "CudaSharedMemoryUnregister": _A,
        # Reading; a request that changes a setting needs TRACE_SETTINGS_UPDATE, which the servicer
        # checks once it has read the request (one without settings only reads).
        "TraceSetting": _R,
        # Reading; a request that changes a setting needs LOG_SETTINGS_UPDATE, which the servicer
        # checks once it has read the request (an empty one only reads).
        "LogSettings": _R,
    },
    "grpc.health.v1.Health": {"Check": _R, "List": _R, "Watch": _R},
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo": _R},
    "grpc.reflection.v1.ServerReflection": {"ServerReflectionInfo": _R},
}

# Changing the daemon's log settings (the Open Inference Protocol's logging extension): they decide
# what every operator's log shows.
LOG_SETTINGS_UPDATE = Role.ADMIN
# Changing the trace settings (the trace extension): tracing writes files on the daemon's host and
# costs every traced request its time.
TRACE_SETTINGS_UPDATE = Role.ADMIN

# Liveness and readiness carry no data; `security.health_open` lets probes call them without a token.
HEALTH_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/List",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)


def required_roles(services: Iterable[ServiceDescriptor]) -> dict[str, Role]:
    """The role each method path ("/pkg.Service/Method") of `services` needs.

    Raises MissingRoleError listing every served RPC without a role and every role entry of
    a served service that names no RPC (a renamed RPC would otherwise lose its rule).
    """
    roles: dict[str, Role] = {}
    problems: list[str] = []
    for service in services:
        table = ROLE_TABLE.get(service.full_name, {})
        methods = {method.name for method in service.methods}
        for name in sorted(methods):
            if name in table:
                roles[f"/{service.full_name}/{name}"] = table[name]
            else:
                problems.append(f"{service.full_name}/{name} has no role")
        problems.extend(
            f"{service.full_name}/{name} has a role but the service has no such RPC"
            for name in sorted(set(table) - methods)
        )
    if problems:
        raise MissingRoleError(
            "the RPC role table (tesserad/security/roles.py ROLE_TABLE) does not match the served "
            "services; give each RPC reader, trainer or admin:\n  " + "\n  ".join(problems)
        )
    return roles
