"""The model registry domain: models, versions, aliases, lineage, deployments (no gRPC here).

`Registry` (tesserad.registry.service) is the entry point and says what the registry
guarantees; each concern lives in its own module: models, versions (uploads, lineage,
comparison), aliases, deployments; tables holds the reads they share.
"""

from tesserad.registry.backfill import MARKERS
from tesserad.registry.records import (
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
    VersionKey,
    VersionRecord,
)
from tesserad.registry.service import Registry
from tesserad.registry.tables import LATEST, TABLES

__all__ = [
    "LATEST",
    "MARKERS",
    "TABLES",
    "AliasEvent",
    "AliasRecord",
    "Comparison",
    "DatasetLineage",
    "DeploymentRecord",
    "Lineage",
    "ModelRecord",
    "Registry",
    "Route",
    "Shadow",
    "Signature",
    "Target",
    "TensorSpec",
    "VersionKey",
    "VersionRecord",
]
