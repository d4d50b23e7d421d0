"""A replica's view of the primary's registry: each model's serving state as the change feed
last gave it, served to the inference layer as its VersionSource (artifacts from the cache)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tesserad.errors import FailedPrecondition, NotFound
from tesserad.replica.blob_cache import BlobCache
from tesserad.serving.pool import ServableVersion
from tesserad.serving.service import DeploymentPlan
from tesserad.serving.signature import Signature

# Streams version `version` of `model`'s artifact from the primary.
Download = Callable[[str, int], Iterable[bytes]]


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


class FollowedRegistry:
    """The followed models (`apply` from the change feed) as the serving layer's VersionSource."""

    def __init__(self, primary: str, cache: BlobCache, download: Download) -> None:
        self._primary = primary
        self._cache = cache
        self._download = download
        self._lock = threading.Lock()
        self._models: dict[str, FollowedModel] = {}
        self.seq = 0  # the last change applied

    def apply(self, seq: int, model: str, state: FollowedModel | None) -> None:
        with self._lock:
            if state is None:
                self._models.pop(model, None)
            else:
                self._models[model] = state
            self.seq = seq

    def clear(self) -> None:
        """Forget everything (the primary is another registry now): the feed is replayed from 0."""
        with self._lock:
            self._models.clear()
            self.seq = 0

    def deployed_models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, m in self._models.items() if m.deployment is not None)

    def _model(self, model: str) -> FollowedModel:
        with self._lock:
            state = self._models.get(model)
        if state is None:
            raise NotFound(f"model {model!r} does not exist at the primary {self._primary}")
        return state

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        state = self._model(model)
        if version:
            number = version
        elif not alias or alias == "latest":
            number = state.latest_version
            if not number:
                raise NotFound(f"model {model!r} has no versions yet")
        elif alias in state.aliases:
            number = state.aliases[alias]
        else:
            raise NotFound(f"model {model!r} has no alias {alias!r}")
        followed = state.versions.get(number)
        if followed is None:
            raise NotFound(
                f"version {number} of {model!r} is not served by this replica: replicas serve the "
                f"versions that latest, an alias or the deployment points at; ask the primary "
                f"{self._primary} for others"
            )

        if followed.format == "ensemble":
            raise FailedPrecondition(
                f"version {number} of {model!r} is an ensemble, which serving replicas do not serve; "
                f"call the primary {self._primary} for it"
            )

        def open_artifact() -> Any:
            return self._cache.open(
                followed.sha256, followed.size_bytes, lambda: self._download(model, followed.version)
            )

        return ServableVersion(
            model=model,
            version=number,
            format=followed.format,
            open_artifact=open_artifact,
            signature=followed.signature,
            architecture=followed.architecture,
        )

    def deployment(self, model: str) -> DeploymentPlan | None:
        with self._lock:
            state = self._models.get(model)
        return None if state is None else state.deployment

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)
