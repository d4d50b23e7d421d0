"""The model registry: models, immutable numbered versions, aliases with an audit log, lineage,
comparisons and deployments with rollback.

Guarantees:
- Every mutation is one LMDB write transaction: it fully happens or leaves the store as it
  was. A version is recorded only after its artifact blob is complete and verified in the
  blob directory; a blob nothing records any more is deleted after the commit.
- Version numbers count from 1 per model and are never reused, even after a delete: a model
  created again under a deleted model's name numbers on from it (`tables.RETIRED_NUMBERS`).
- An ensemble version pins its member versions: neither they nor their models can be deleted
  while it exists (an ensemble's own model may go with it). Members are named by number, so
  aliases pin nothing.
- Lineage is history: a version whose parent version is deleted, alone or with its model,
  keeps naming it, marked deleted with its sha256 and when; a model created again under that
  name is never taken for it.
- "latest" is reserved: it always resolves to the newest version and cannot be set.
- Listeners (`add_listener`) are called with the model name after every commit that can
  change where an alias, "latest" or the deployment points (serving reacts by hot swap), and
  after a model is created or deleted (the change feed tells replicas).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tesserad.registry.aliases import Aliases
from tesserad.registry.backfill import (
    References,
    backfill_deleted_parents,
    backfill_ensemble_members,
    backfill_job_versions,
    backfill_retired_numbers,
    backfill_version_counts,
    drop_early_stopping_off_params,
)
from tesserad.registry.deployments import Deployments, prune_histories
from tesserad.registry.models import Models
from tesserad.registry.serving_configs import ServingConfigs
from tesserad.registry.versions import DatasetCheck, RunCheck, Versions
from tesserad.store import BlobStore, Store

log = logging.getLogger(__name__)


class Registry:
    """The registry's one entry point: the four concerns over one store, blob store and set of
    listeners. Each operation below is a concern's method; read it in that concern's module
    (tesserad.registry.models, .versions, .aliases, .deployments)."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        max_artifact_size: int,
        deployment_history: int,
        dataset_check: DatasetCheck | None = None,
        run_check: RunCheck | None = None,
        referenced: References = lambda _txn: (),
    ) -> None:
        """`referenced`: the model versions the store's records outside the registry name (job
        records, sweeps, the change feed), read once to keep the numbers of models deleted before
        `tables.RETIRED_NUMBERS` (`backfill.backfill_retired_numbers`)."""
        self.max_artifact_size = max_artifact_size
        backfill_version_counts(store)
        backfill_ensemble_members(store, blobs)
        backfill_deleted_parents(store)
        backfill_job_versions(store)
        drop_early_stopping_off_params(store)
        backfill_retired_numbers(store, referenced)
        prune_histories(store, deployment_history)
        self._listeners: list[Callable[[str], None]] = []
        models = Models(store, blobs, self._notify)
        versions = Versions(
            store,
            blobs,
            self._notify,
            max_artifact_size=max_artifact_size,
            dataset_check=dataset_check,
            run_check=run_check,
        )
        aliases = Aliases(store, self._notify)
        deployments = Deployments(store, self._notify, deployment_history)

        self.create_model = models.create_model
        self.get_model = models.get_model
        self.list_models = models.list_models
        self.model_names = models.model_names
        self.missing_model = models.missing_model
        self.update_model = models.update_model
        self.delete_model = models.delete_model

        self.check_upload = versions.check_upload
        self.register_version = versions.register_version
        self.with_tracked_run = versions.with_tracked_run
        self.submit_upload = versions.submit_upload
        self.start_uploads = versions.start_uploads
        self.resolve = versions.resolve
        self.get_version = versions.get_version
        self.job_version = versions.job_version
        self.list_versions = versions.list_versions
        self.delete_version = versions.delete_version
        self.open_artifact = versions.open_artifact
        self.artifact_path = versions.artifact_path
        self.get_lineage = versions.get_lineage
        self.compare = versions.compare
        self.close = versions.close

        self.set_alias = aliases.set_alias
        self.check_alias_room = aliases.check_room
        self.get_alias = aliases.get_alias
        self.list_aliases = aliases.list_aliases
        self.delete_alias = aliases.delete_alias
        self.list_alias_history = aliases.list_alias_history

        serving_configs = ServingConfigs(store, self._notify)
        self.save_serving_config = serving_configs.save_serving_config
        self.serving_config = serving_configs.serving_config

        self.deploy = deployments.deploy
        self.get_deployment = deployments.get_deployment
        self.list_deployments = deployments.list_deployments
        self.rollback = deployments.rollback

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model_name)` after each commit that may move an alias, latest or the deployment.

        Runs in the committing thread; keep it short (hand work to your own loop or queue).
        """
        self._listeners.append(callback)

    def _notify(self, model: str) -> None:
        for callback in self._listeners:
            try:
                callback(model)
            except Exception:
                log.exception("registry listener failed", extra={"model": model})
