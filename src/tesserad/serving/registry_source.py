"""The registry as the serving layer's source of versions and deployments."""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry

from tesserad.config import ServingSettings
from tesserad.dtypes import numpy_dtype
from tesserad.errors import NotFound
from tesserad.registry import Registry, VersionRecord
from tesserad.registry import Signature as RegistrySignature
from tesserad.registry.ensembles import Member, parse_ensemble_spec
from tesserad.serving.ensemble import EnsemblePlan, plan_ensemble
from tesserad.serving.pool import ModelPool, ServableVersion, ServingDefaults, config_of_fields
from tesserad.serving.service import (
    CallCounter,
    DeploymentPlan,
    ExplainLimits,
    InferenceService,
    SaveConfig,
    VersionSource,
)
from tesserad.serving.signature import Signature, TensorSpec
from tesserad.serving.stats import ServingMetrics


def serving_signature(signature: RegistrySignature) -> Signature | None:
    if not signature.inputs:
        return None
    return Signature(
        tuple(TensorSpec(s.name, numpy_dtype(s.dtype), tuple(s.shape)) for s in signature.inputs),
        tuple(TensorSpec(s.name, numpy_dtype(s.dtype), tuple(s.shape)) for s in signature.outputs),
    )


class RegistrySource:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        record: VersionRecord = self._registry.resolve(model, version, alias)
        return ServableVersion(
            model=record.model,
            version=record.version,
            format=record.format,
            open_artifact=lambda: self._registry.artifact_path(record),
            signature=serving_signature(record.signature),
            architecture=record.architecture,
            ensemble=(lambda: self._ensemble_plan(record)) if record.format == "ensemble" else None,
            parent=(lineage.parent_model or record.model, lineage.parent_version)
            if (lineage := record.lineage).parent_version
            else None,
            parent_deleted=lineage.parent_deleted is not None,
            artifact_sha256=record.sha256,
            saved_config=config_of_fields(self._registry.serving_config(record.model, record.version)),
        )

    def _ensemble_plan(self, record: VersionRecord) -> EnsemblePlan:
        with self._registry.artifact_path(record) as path:
            spec = parse_ensemble_spec(path.read_bytes())
        # A member unloaded later is loaded again: NotFound then if it was deleted meanwhile.
        return plan_ensemble(
            record.model,
            record.version,
            spec,
            lambda member: replace(
                self.servable(member.model, member.version, None),
                open_artifact=partial(self._artifact_of, member),
            ),
        )

    def _artifact_of(self, member: Member) -> AbstractContextManager[Path]:
        opened: AbstractContextManager[Path] = self._registry.artifact_path(
            self._registry.resolve(member.model, member.version)
        )
        return opened

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return self.servable(model, version, None)  # the registry is on this machine

    def deployment(self, model: str) -> DeploymentPlan | None:
        try:
            deployment = self._registry.get_deployment(model)
        except NotFound:
            return None
        shadow = deployment.shadow
        return DeploymentPlan(
            routes=tuple((r.resolved_version, r.weight) for r in deployment.routes),
            shadow=(shadow.resolved_version, shadow.percent or 100) if shadow else None,
        )

    def model_names(self) -> list[str]:
        return self._registry.model_names()

    def model_identity(self, model: str) -> Hashable:
        # A model deleted and created again under its name is created at another time.
        return self._registry.get_model(model).created_at


def build_inference(
    registry: Registry, settings: ServingSettings, prometheus: CollectorRegistry, calls: CallCounter
) -> InferenceService:
    """The inference service over the registry, with the daemon's serving settings."""
    return inference_over(
        RegistrySource(registry), settings, prometheus, calls, save_config=registry.save_serving_config
    )


def inference_over(
    source: VersionSource,
    settings: ServingSettings,
    prometheus: CollectorRegistry,
    calls: CallCounter,
    save_config: SaveConfig | None = None,
) -> InferenceService:
    """The inference service over any source of versions (a replica's followed registry, which
    saves no serving config: `save_config` None)."""
    defaults = ServingDefaults(
        instances=settings.instances,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_us=settings.max_queue_delay_us,
        max_queue_size=settings.max_queue_size,
        warmup_runs=settings.warmup_runs,
        intra_op_threads=settings.intra_op_threads,
        inline_max_compute_us=settings.inline_max_compute_us,
        drain_timeout_s=settings.drain_timeout_s,
        response_cache_size=settings.response_cache_size,
    )
    pool = ModelPool(defaults, ServingMetrics(prometheus))
    return InferenceService(
        source,
        pool,
        autoload=settings.autoload,
        default_alias=settings.default_alias,
        calls=calls,
        save_config=save_config,
        explain_limits=ExplainLimits(
            settings.explain_threads, settings.explain_queue_size, settings.explain_chunk_rows
        ),
    )
