"""A replica's view of the primary's registry: each model's serving state as the change feed
last gave it, served to the inference layer as its VersionSource (artifacts from the cache).
A version the feed does not carry (not latest, aliased or deployed) is fetched from the
primary when a request names it, and kept until its model changes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tesserad.errors import NotFound, TesseraError
from tesserad.names import closest
from tesserad.registry.ensembles import parse_ensemble_spec
from tesserad.registry.tables import alias_not_set, no_versions_yet, version_missing
from tesserad.replica.blob_cache import BlobCache
from tesserad.serving.ensemble import EnsemblePlan, plan_ensemble
from tesserad.serving.pool import ServableVersion, ServingConfig
from tesserad.serving.service import DeploymentPlan
from tesserad.serving.signature import Signature

# Streams version `version` of `model`'s artifact from the primary.
Download = Callable[[str, int, str], Iterable[bytes]]


@dataclass(frozen=True)
class FollowedVersion:
    version: int
    format: str
    sha256: str
    size_bytes: int
    signature: Signature | None
    architecture: Mapping[str, Any] | None


@dataclass(frozen=True)
class FollowedModel:
    latest_version: int
    aliases: dict[str, int]
    deployment: DeploymentPlan | None
    versions: dict[int, FollowedVersion]
    # When the primary created the model; 0.0 when the change did not say (recorded before changes
    # carried it, or by an older primary).
    created_at: float = 0.0
    # What the primary's GetDeployment warned of as the change was recorded (see Deployment.warnings).
    deployment_warnings: tuple[str, ...] = ()
    # Version number -> its saved serving config at the primary (LoadModel save_config).
    serving_configs: Mapping[int, ServingConfig] = field(default_factory=dict)


# Version `version` of `model`'s record at the primary, None when the primary has no such version
# (Unavailable when the primary cannot be reached).
FetchVersion = Callable[[str, int], FollowedVersion | None]


def _created_again(held: FollowedModel, state: FollowedModel, created: bool) -> bool:
    """Whether `state` is of another model of the name than `held`: deleted and created again."""
    if held.created_at and state.created_at:
        # Whatever the kinds say: the primary may have compacted the deletion and creation away
        # before this replica read them, leaving a change that only moves an alias, say.
        return held.created_at != state.created_at
    # A change that does not say when its model was created: only its kinds can tell.
    return created


class FollowedRegistry:
    """The followed models (`apply` from the change feed) as the serving layer's VersionSource."""

    def __init__(
        self, primary: str, cache: BlobCache, download: Download, fetch_version: FetchVersion
    ) -> None:
        self._primary = primary
        self._cache = cache
        self._download = download
        self._fetch_version = fetch_version
        self._lock = threading.Lock()
        self._models: dict[str, FollowedModel] = {}
        # A number for each model, new whenever the feed gives a model it did not have, or one
        # it has deleted and created again (see _created_again).
        self._incarnations: dict[str, int] = {}
        self._last_incarnation = 0
        # Versions fetched on demand; a change to their model drops them (it may delete them).
        self._fetched: dict[tuple[str, int], FollowedVersion] = {}
        self.seq = 0  # the last change applied
        # The incarnation of the primary's store the changes held came from (see same_store); ""
        # until a primary that says it answered.
        self.store_incarnation = ""
        # Models held when the replica began following the primary from the start again that its
        # feed has not given since: served until the replay catches up, then dropped (see restart).
        self._unconfirmed: set[str] = set()
        # Why the primary refuses this replica's watch, while it does (a cause fixed there):
        # what a caller asking for a model this replica does not hold is told.
        self.refused: TesseraError | None = None

    def apply(
        self, seq: int, model: str, state: FollowedModel | None, created: bool = False
    ) -> tuple[str, ...]:
        """`created`: the change's kinds say the model was created since its previous change.
        Returns the deployment's warnings the model's state held before."""
        with self._lock:
            held_state = self._models.get(model)
            before = () if held_state is None else held_state.deployment_warnings
            if state is None:
                self._models.pop(model, None)
                self._incarnations.pop(model, None)
            else:
                held = self._models.get(model)
                if held is None or _created_again(held, state, created):
                    self._last_incarnation += 1
                    self._incarnations[model] = self._last_incarnation
                self._models[model] = state
            self._fetched = {key: v for key, v in self._fetched.items() if key[0] != model}
            self._unconfirmed.discard(model)
            self.seq = seq
            return before

    def same_store(self, incarnation: str) -> bool:
        """Whether an answer from the primary's store of `incarnation` continues the changes held;
        that store is followed from then on when it does. A store of another incarnation (a
        backup restored, another data directory) is another history whatever its change numbers:
        follow it from the start (restart). "" (an older primary does not say) cannot tell: the
        change numbers alone do then, as the primary refuses a watch past its newest change."""
        with self._lock:
            if incarnation and self.store_incarnation and incarnation != self.store_incarnation:
                return False
            # Kept when the primary does not say: one downgraded for a while changes nothing.
            self.store_incarnation = incarnation or self.store_incarnation
            return True

    def restart(self) -> None:
        """Follow the primary from the start (it is another registry now): the feed is replayed
        from 0. What is held stays served meanwhile, as while the primary is away, instead of
        every model failing until the replay gives it again; drop_unconfirmed, once the replay
        caught up, drops what the replay did not give. The replay's store is followed from then
        on, whatever its incarnation."""
        with self._lock:
            self._unconfirmed.update(self._models)
            self._fetched.clear()
            self.seq = 0
            self.store_incarnation = ""

    def drop_unconfirmed(self) -> list[str]:
        """Drop the models held before restart that the feed has not given since, as a deletion
        in the feed would: called once it caught up, when every model of the primary was given.
        Their names, for the serving layer to unload them."""
        with self._lock:
            if not self._unconfirmed:  # the usual case: no restart since the last catch-up
                return []
            dropped = sorted(self._unconfirmed)
            for model in dropped:
                self._models.pop(model, None)
                self._incarnations.pop(model, None)
            self._fetched = {key: v for key, v in self._fetched.items() if key[0] not in self._unconfirmed}
            self._unconfirmed.clear()
            return dropped

    def deployed_models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, m in self._models.items() if m.deployment is not None)

    def _model(self, model: str) -> FollowedModel:
        with self._lock:
            state = self._models.get(model)
        if state is None:
            refused = self.refused
            if refused is not None:
                raise type(refused)(refused.message)
            near = closest(self.model_names(), model)
            fix = "create it there with CreateModel"
            # As the primary says it (names.missing_name), naming the primary.
            raise NotFound(
                f"model {model!r} does not exist at the primary {self._primary}; "
                + (f"{near}Or {fix}" if near else fix)
            )
        return state

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        state = self._model(model)
        if version:
            number = version
        elif not alias or alias == "latest":
            number = state.latest_version
            if not number:
                raise no_versions_yet(model)
        elif alias in state.aliases:
            number = state.aliases[alias]
        else:
            raise alias_not_set(model, alias, sorted(state.aliases))
        followed = state.versions.get(number) or self._fetched_version(model, number, state.latest_version)
        return self._servable(model, number, followed)

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        """The version as the feed gave it, or as fetched since its model's last change; None for
        one only the primary could say about (see VersionSource.known_servable)."""
        state = self._model(model)
        with self._lock:
            followed = state.versions.get(version) or self._fetched.get((model, version))
        return None if followed is None else self._servable(model, version, followed)

    def _servable(self, model: str, number: int, followed: FollowedVersion) -> ServableVersion:
        def open_artifact() -> Any:
            return self._cache.open(
                followed.sha256,
                followed.size_bytes,
                lambda: self._download(model, followed.version, followed.sha256),
            )

        return ServableVersion(
            model=model,
            version=number,
            format=followed.format,
            open_artifact=open_artifact,
            signature=followed.signature,
            architecture=followed.architecture,
            ensemble=(lambda: self._ensemble_plan(model, number, open_artifact))
            if followed.format == "ensemble"
            else None,
            artifact_sha256=followed.sha256,
            saved_config=self.saved_config(model, number),
        )

    def saved_config(self, model: str, version: int) -> ServingConfig:
        """The version's saved serving config as the feed last gave it (none for a model it does
        not hold)."""
        return self.saved_configs(model).get(version, ServingConfig())

    def saved_configs(self, model: str) -> Mapping[int, ServingConfig]:
        """The saved serving configs of `model`'s versions as the feed last gave them."""
        with self._lock:
            state = self._models.get(model)
        return {} if state is None else state.serving_configs

    def _fetched_version(self, model: str, version: int, latest: int) -> FollowedVersion:
        """The version's record from the primary (on a request thread), kept until its model
        changes; NotFound when the primary has no such version (the model's newest: `latest`)."""
        with self._lock:
            known = self._fetched.get((model, version))
            seq = self.seq
        if known is not None:
            return known
        fetched = self._fetch_version(model, version)
        if fetched is None:
            raise version_missing(model, version, latest)
        with self._lock:
            if self.seq == seq:  # else a change came meanwhile: the record may be gone, keep nothing
                self._fetched[(model, version)] = fetched
        return fetched

    def _ensemble_plan(self, model: str, version: int, open_artifact: Callable[[], Any]) -> EnsemblePlan:
        with open_artifact() as path:
            spec = parse_ensemble_spec(path.read_bytes())
        return plan_ensemble(
            model, version, spec, lambda member: self.servable(member.model, member.version, None)
        )

    def deployment(self, model: str) -> DeploymentPlan | None:
        with self._lock:
            state = self._models.get(model)
        return None if state is None else state.deployment

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def model_identity(self, model: str) -> Hashable:
        with self._lock:
            incarnation = self._incarnations.get(model)
        if incarnation is None:
            self._model(model)  # raises: NotFound, or why the primary refuses this replica
            return self.model_identity(model)  # the feed gave it meanwhile
        return incarnation
