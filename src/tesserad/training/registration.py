"""Registering a finished job's weights as a new model version, with the job's full lineage."""

from __future__ import annotations

from collections.abc import Callable

from tesserad.errors import FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
from tesserad.registry import DatasetLineage, Lineage, Registry, VersionRecord
from tesserad.registry.aliases import check_settable_alias
from tesserad.registry.architectures import architecture_signature
from tesserad.registry.export import move_alias_onto
from tesserad.run_params import flatten_params
from tesserad.store import BlobRef
from tesserad.training.job_records import JobRecord, Registered


class JobRegistration:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def check_alias_room(self, model: str, alias: str) -> None:
        """ResourceExhausted when `alias` would be new to `model` and the model holds as many
        aliases as it may: a job told so at submit does not train to find out."""
        try:
            self._registry.check_alias_room(model, alias)
        except ResourceExhausted as exc:
            raise ResourceExhausted(f"spec.register_as.alias: {exc.message}") from exc

    def register(self, job: JobRecord, weights: BlobRef) -> Registered:
        """A new version of register_as.model (created if missing); the alias moves with it. A job
        that has registered its version already (it was resumed after that) gets it back, with the
        alias only where it points at that version. A
        dataset version deleted since the job began is named in the lineage, marked deleted. An
        alias the model has no room for when the version is committed (it reached its alias cap
        while the job ran) is not set, and the Registered says why: the trained model is
        registered all the same."""
        target = job.config["register_as"]
        record = self._register(
            job,
            weights,
            target["model"],
            alias=target["alias"],
            description=target["description"],
            actor=job.created_by,
            alias_if_room=True,
        )
        deleted = any(ds.deleted for ds in record.lineage.datasets)
        refused = record.alias_refused
        if target["alias"] and target["alias"] not in record.aliases and not refused:
            # Registered before the job was resumed: refused the alias then (the cap), or it was
            # moved since; either way it is not this version's, and is said again.
            refused = (
                "the version was registered before the job was resumed, and the alias does not point at it"
            )
        return Registered(
            record.model,
            record.version,
            "" if refused else target["alias"],
            dataset_deleted=deleted,
            alias_refused=refused,
            deployment_warnings=record.deployment_warnings,
        )

    def register_ended(
        self,
        job: JobRecord,
        weights: Callable[[], BlobRef],
        model: str,
        alias: str,
        description: str,
        actor: str,
        alias_move_denied: str = "",
    ) -> tuple[VersionRecord, bool]:
        """A version of `model` for an ended job's weights, made by `actor` as register_as makes it,
        but with `alias` refused (ResourceExhausted) where the model has no room for it; and
        whether it is the version the job registered to `model` before (then `weights`, the call
        that stores them, is not made, the version is returned as it is, and `alias` moved onto
        it, unless `alias_move_denied` says why the caller may not: PermissionDenied). A job
        fine-tuned from a version deleted since is FailedPrecondition for a new version."""
        if alias:
            check_settable_alias(alias)
        earlier = self._registry.job_version(job.job_id, model)
        if earlier is None:
            parent = self._kept_parent(job)
            try:
                record = self._register(
                    job,
                    weights(),
                    model,
                    alias=alias,
                    description=description,
                    actor=actor,
                    expected_parent=parent,
                )
            except NotFound:
                if parent is not None:
                    # Deleted between the check and the commit: said as the check says it.
                    self._kept_parent(job)
                raise
            if not record.registered_before:
                return record, False
            # Another call registered the job to `model` while this one read the weights.
            earlier = record
        if alias and alias not in earlier.aliases:
            if alias_move_denied:
                raise PermissionDenied(
                    f"job {job.job_id} registered {earlier.model} v{earlier.version} before: moving "
                    f"alias {alias!r} onto that existing version is SetAlias's, and {alias_move_denied}; "
                    "register it without set_alias, or have an admin set the alias"
                )
            earlier = move_alias_onto(self._registry, earlier, alias, actor)
        return earlier, True

    def _kept_parent(self, job: JobRecord) -> VersionRecord | None:
        """The version a fine-tuned job started from (None for a job trained from scratch);
        FailedPrecondition when it was deleted since the job ended (it is held only while the job
        runs), its number perhaps another version's now: a new version's lineage must name it."""
        parent = job.config.get("fine_tune")
        if not parent:
            return None
        try:
            record = self._registry.get_version(parent["model"], parent["version"])
        except NotFound:
            record = None
        if record is None or record.sha256 != parent["sha256"]:
            raise FailedPrecondition(
                f"job {job.job_id} was fine-tuned from {parent['model']} v{parent['version']}, deleted "
                "since: a version's lineage names the version it was fine-tuned from, so the job's weights "
                "can no longer be added as a new version (a model that has the job's version already "
                "still names it)"
            )
        return record

    def _register(
        self,
        job: JobRecord,
        weights: BlobRef,
        model: str,
        *,
        alias: str,
        description: str,
        actor: str,
        alias_if_room: bool = False,
        expected_parent: VersionRecord | None = None,
    ) -> VersionRecord:
        """The job's weights as a version of `model` with the job's lineage, params, metrics and
        tags: once per job and model (`Registry.register_version`'s once_per_job)."""
        config = job.config
        data = config["data"]
        parent = config.get("fine_tune") or {}
        lineage = Lineage(
            run_id=job.run_id,
            job_id=job.job_id,
            experiment=job.experiment,
            datasets=(DatasetLineage(data["dataset"], data["version"], config["dataset_sha256"]),),
            job_spec=job.spec,
            parent_version=parent.get("version", 0),
            parent_model="" if parent.get("model", model) == model else parent["model"],
        )
        return self._registry.register_version(
            model,
            format="safetensors",
            blob=weights,
            signature=architecture_signature(config["architecture"]),
            architecture=config["architecture"],
            params=flatten_params(config),
            metrics={k: float(v) for k, v in job.metrics.items()},
            tags=dict(config["tags"]),
            lineage=lineage,
            description=description,
            create_model_if_missing=True,
            alias=alias,
            alias_if_room=alias_if_room,
            actor=actor,
            once_per_job=True,
            expected_parent=expected_parent,
            # The trained model is not lost to a dataset force-deleted while the job ran, or since.
            datasets_may_be_deleted=True,
        )
