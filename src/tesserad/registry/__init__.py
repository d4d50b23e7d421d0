"""The model registry domain: models, versions, aliases, lineage, deployments (no gRPC here).

`Registry` is the entry point; see its module docstring (tesserad.registry.service) for what
it guarantees.
"""

from tesserad.registry.records import (
    AliasEvent,
    AliasRecord,
    Comparison,
    DatasetLineage,
    DeploymentRecord,
    Lineage,
    ModelRecord,
    Page,
    Route,
    Shadow,
    Signature,
    Target,
    TensorSpec,
    VersionKey,
    VersionRecord,
)
from tesserad.registry.service import LATEST, TABLES, Registry

__all__ = [
    "LATEST",
    "TABLES",
    "AliasEvent",
    "AliasRecord",
    "Comparison",
    "DatasetLineage",
    "DeploymentRecord",
    "Lineage",
    "ModelRecord",
    "Page",
    "Registry",
    "Route",
    "Shadow",
    "Signature",
    "Target",
    "TensorSpec",
    "VersionKey",
    "VersionRecord",
]
