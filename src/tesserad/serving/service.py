"""Inference: routing (version, alias, deployment canary and shadow), autoload, hot swap.

Routing resolves through a cache of alias and deployment targets. When the registry reports a
change to a model, the cached targets are re-resolved in the background: a new version is
loaded and warmed with the old one's config first (off the refreshes' thread, WARM_LOADS at a
time, so that a slow load holds no other model's refresh; the refresh that follows the load moves
the target), then the
target switches (one dict store), then the old version drains and is freed. A request that
raced the switch and finds its batcher closed is routed again, so no request fails during a
swap. A new version that fails to load or warm takes no traffic: the target stays on the
version that served it (as Triton, KServe and Seldon keep the old one until the new one is
ready), the failure is logged and listed, and an explicit load of the new version that succeeds
moves the target then. With serving.autoload off, as in Triton's explicit mode, no version is
loaded so: a target moving to one not loaded stays where it is until an explicit load of it.

A request naming no version goes to its model's deployment; without one, to the version the
daemon's default alias (serving.default_alias) names, or to latest where the model lacks that
alias or the setting is latest (its default). Registry calls that move a target wait for
routed_by_now, so that their caller's next request is routed by what they committed.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, Protocol

import numpy as np

from tesserad.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotLoaded,
    RefusedBySignature,
    StillLoading,
    TesseraError,
    Unavailable,
)
from tesserad.serving.batcher import Answer, Answered, BatcherClosed, Prediction
from tesserad.serving.explain import Explainer, ExplainOptions, Method, QueuedExplanation
from tesserad.serving.pool import (
    LOAD_RETRY_MAX_S,
    EffectiveConfig,
    LoadedVersion,
    LoadState,
    ModelPool,
    Retry,
    ServableVersion,
    ServingConfig,
    config_fields,
    effective_config,
)
from tesserad.serving.response_cache import VersionCache
from tesserad.serving.signature import Signature, validate_request
from tesserad.serving.stats import FailureReason

log = logging.getLogger(__name__)

LATEST = "latest"
# The route cache's key (in place of an alias) for what a request naming no version gets from a
# model without a deployment: the daemon's default alias's version, else latest (never an alias
# name: names are not empty).
UNVERSIONED = ""
SHADOW_RESULTS_KEPT = 1000
# A request routed to a version that is swapped out in between is routed again; more than
# a few rounds means versions are being unloaded faster than requests can find one.
_MAX_ROUTING_ROUNDS = 5
# A call without a version (a request, a metadata call) whose route was stale, or whose version
# was deleted or unloaded before it was loaded or read, is routed again this many times in all
# before it fails UNAVAILABLE: more means its model's versions change faster than calls find one.
REROUTE_ROUNDS = 3
# After the source failed to say whether a loaded version is still registered (the registry, or
# a replica's primary, out of reach or slow), requests for its model are served without asking
# it again for this long (seconds): one read of it a model per interval, not one a request. A
# registry change of the model asks again at once. The refresh of a model's change that failed (the
# source unreadable) is queued again by the first request or metadata call for the model after this
# long, or by the daemon's periodic sweep (retry_failed_refreshes: a primary's own, a replica's retry
# of failed loads); each failure in a row doubles the wait, up to REFRESH_RETRY_MAX_S.
SOURCE_RETRY_S = 1.0
# The longest wait (seconds) before a refresh that keeps failing runs again: a source out of reach
# for long costs a read of it, and a warning, per model this often.
REFRESH_RETRY_MAX_S = 30.0
# Loads of versions a target moves to (and of shadow versions) at once: a bulk promotion would
# otherwise hold every old and new version in memory together, their runtimes' threads fighting
# for the cores.
WARM_LOADS = 2
# The longest an explicit load waits (seconds), once loaded, for the targets held until it loaded
# to move to it, serving.autoload off (see _route_after_load): as a registry call waits for its routes.
LOAD_ROUTING_WAIT_S = 30.0


@dataclass(frozen=True)
class DeploymentPlan:
    """A model's deployment with every target resolved to a version."""

    routes: tuple[tuple[int, int], ...]  # (version, weight percent)
    shadow: tuple[int, int] | None = None  # (version, percent of other versions' requests copied)


# Stores (model, version)'s saved serving config: its fields as config_fields gives them.
SaveConfig = Callable[[str, int, dict[str, Any]], None]


class VersionSource(Protocol):
    """Where versions and deployments come from (the registry)."""

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion: ...

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        """Version `version` of `model` as this source knows it without asking another machine
        (a replica's primary); None when only that could say; NotFound for one it knows gone."""
        ...

    def deployment(self, model: str) -> DeploymentPlan | None: ...

    def model_names(self) -> list[str]: ...

    def model_identity(self, model: str) -> Hashable:
        """What tells `model` from a model of its name created after it was deleted; NotFound,
        naming a model close to it, when there is no such model."""
        ...


@dataclass(frozen=True)
class ExplainLimits:
    """How much of the machine explanations may take (see tesserad.serving.explain)."""

    threads: int = 1
    queue_size: int = 4
    chunk_rows: int = 8


@dataclass(frozen=True)
class ExplainSubmitted:
    """A queued explanation: the version asked for and the torch version it explains."""

    version: int
    explained_version: int
    queued: QueuedExplanation


@dataclass(frozen=True)
class VersionDescription:
    """A version as metadata calls describe it: what it takes and returns, and how it runs."""

    model: str
    version: int
    signature: Signature
    config: EffectiveConfig


@dataclass(frozen=True)
class Target:
    model: str
    version: int | None = None
    alias: str | None = None


class Submitted(NamedTuple):
    """A queued (or already answered) request, or the version that must be loaded first (a
    NamedTuple: one is made per request, and it builds several times faster than a frozen
    dataclass)."""

    version: int
    entry: LoadedVersion | None
    future: Answer | None
    # True when the request waits in its batcher for `entry.batcher.release()`.
    held: bool = False
    rows: int = 0


@dataclass(frozen=True)
class ShadowResult:
    request_id: str
    model: str
    primary_version: int
    shadow_version: int
    outputs: dict[str, np.ndarray]
    max_abs_diff: float
    shadow_total_ns: int
    time: float
    error: TesseraError | None


class _Router:
    """A deployment's routes: smooth weighted round robin, so splits match the weights exactly."""

    def __init__(self, plan: DeploymentPlan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self._current = [0] * len(plan.routes)
        self._shadow_credit = 0

    def versions(self) -> set[int]:
        versions = {version for version, _ in self.plan.routes}
        if self.plan.shadow is not None:
            versions.add(self.plan.shadow[0])
        return versions

    def pick(self) -> tuple[int, int | None]:
        """(primary version, shadow version or None) for the next request."""
        routes = self.plan.routes
        with self._lock:
            best = 0
            for i, (_, weight) in enumerate(routes):
                self._current[i] += weight
                if self._current[i] > self._current[best]:
                    best = i
            self._current[best] -= sum(weight for _, weight in routes)
            shadow = None
            # A request the shadow's version answers is not copied to it, nor counted in its percent.
            if self.plan.shadow is not None and self.plan.shadow[0] != routes[best][0]:
                self._shadow_credit += self.plan.shadow[1]
                if self._shadow_credit >= 100:
                    self._shadow_credit -= 100
                    shadow = self.plan.shadow[0]
        return routes[best][0], shadow


class _Uncached(Enum):
    """A model without a deployment cached (None caches "no deployment"); `.get` reads the cache
    once, as a request thread may drop the model's entry between a look and a read."""

    UNCACHED = 0


class _Warm(Enum):
    """What _warm_like answers while the load of the version a target moves to is under way
    (UNDER_WAY), or where serving.autoload is off and it is not loaded (NOT_LOADED)."""

    UNDER_WAY = 0
    NOT_LOADED = 1


# Which call (by CallCounter.count) the running task serves; none (never "before" another) outside a call.
_THIS_CALL: contextvars.ContextVar[int] = contextvars.ContextVar("tesserad_call", default=sys.maxsize)


class CallCounter:
    """How many calls the daemon's server has begun; a sign of load that asyncio does not hide.

    A call begins (the API layer calls `begin` in the call's own task) before its request is
    read off the wire; a request that finds calls begun after its own is one of a burst whose
    others are on their way, and worth holding for them. A fast model runs inline on the event
    loop's thread, so otherwise each request finds it idle and arrivals look spaced out even at
    high concurrency. Touched only on the event loop's thread.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def begin(self) -> None:
        self.count += 1
        _THIS_CALL.set(self.count)

    def begun_after_this_one(self) -> bool:
        return self.count > _THIS_CALL.get()


class InferenceService:
    def __init__(
        self,
        source: VersionSource,
        pool: ModelPool,
        *,
        autoload: bool,
        default_alias: str = LATEST,
        explain_limits: ExplainLimits | None = None,
        calls: CallCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
        save_config: SaveConfig | None = None,
    ) -> None:
        """`save_config`: stores a version's saved serving config (LoadModel save_config); None
        where the source is read-only (a replica's)."""
        self.pool = pool
        self._source = source
        self._save_config = save_config
        self._clock = clock
        # Requests inside serving.predict on the daemon's event loop (touched only there), and the
        # calls the daemon's server began (counted by its API layer): predict's signs of load.
        self.in_flight = 0
        self.calls = calls or CallCounter()
        # model -> whether its last request's version would hold a request for its burst.
        self._holds: dict[str, bool] = {}
        self._autoload = autoload
        # serving.default_alias: what a request naming no version gets without a deployment.
        self._default_alias = default_alias
        self._lock = threading.Lock()
        # (model, alias) -> version, for requests that name an alias (UNVERSIONED: nothing, without
        # a deployment).
        self._aliases: dict[tuple[str, str], int] = {}
        # model -> router, or None when the model has no deployment.
        self._routers: dict[str, _Router | None] = {}
        # Changes the registry reported (to any model): a request caches what it read only if
        # none came meanwhile, as the refresh of a change passes over what is not cached yet.
        self._changes = 0
        # model -> the count of changes (_changes) at its latest change, while serving has not
        # refreshed it since: a loaded version of it not checked against the source after that
        # change (LoadedVersion.checked_at_change) may be a deleted one's, and is checked before
        # it answers (see autoload).
        self._unsettled: dict[str, int] = {}
        # model -> when (self._clock) requests may ask the source again whether its loaded
        # versions are still registered, after it failed to say (see SOURCE_RETRY_S).
        self._source_retry_at: dict[str, float] = {}
        # model -> when (self._clock) a request or metadata call for it queues again its refresh,
        # which failed: its routes, what it unloads and the deletion listeners it tells follow the
        # source once readable, without another change.
        self._refresh_retry_at: dict[str, float] = {}
        # model -> how many times in a row its refresh failed (it waits the longer for each).
        self._refresh_failures: dict[str, int] = {}
        self._cache_lock = threading.Lock()
        # Each model's newest shadow results first, numbered in the order they were recorded
        # (a page token resumes after a number).
        self._shadows: dict[str, deque[tuple[int, ShadowResult]]] = {}
        self._shadows_recorded = 0
        # Swaps run one at a time, off the registry's commit path.
        self._swaps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serving-swap")
        # Models with a refresh queued and not yet started: one refresh covers every change
        # committed before it starts (registrations commit hundreds a second).
        self._refresh_queued: set[str] = set()
        self._refresh_lock = threading.Lock()
        # Models with a target kept on its old version because the new one failed to warm.
        self._held_back: set[str] = set()
        # model -> the versions its targets wait to move to until a warm load (_warm_like) loads
        # them, each under way or done; a version no longer awaited is not loaded, or unloaded.
        self._awaited: dict[str, set[int]] = {}
        # Warm loads queued or under way (on _warm_loads), and why each that failed did (its
        # version awaited then), until the refresh it queues reads it, or one finds it no longer
        # awaited.
        self._warm_loads = ThreadPoolExecutor(max_workers=WARM_LOADS, thread_name_prefix="serving-warm")
        self._warming: dict[tuple[str, int], Future[None]] = {}
        # (model, version, artifact sha256) -> why: keyed by the artifact, as a model deleted and
        # registered again within one refresh numbers a new artifact as the failed one.
        self._warm_failures: dict[tuple[str, int, str], str] = {}
        # Shadow loads queued or under way (on _warm_loads): one per version, however many
        # requests are copied to it while it loads.
        self._shadow_loads: dict[tuple[str, int], Future[None]] = {}
        self._warm_lock = threading.Lock()
        # (model, version) -> its failed listing that retry_failed_loads saw, and when (self._clock)
        # it is retried: its wait runs from the first pass that saw it, and ends with its run of
        # failures as an unload ends that (_unload_version).
        self._load_retry_at: dict[tuple[str, int], tuple[LoadedVersion, float]] = {}
        # Held through a retry_failed_loads pass: a replica's reconnect and its retry loop may
        # each run one, and the later would work from what the earlier changed under it.
        self._retry_loads_lock = threading.Lock()
        # model -> (the change count it must be refreshed through, future) of each routed_by_now
        # caller waiting for it.
        self._route_waiters: dict[str, list[tuple[int, Future[None]]]] = {}
        # (callback, kept): see add_deletion_listener.
        self._deletion_listeners: list[
            tuple[Callable[[str, Hashable], None], Callable[[str], Hashable | None]]
        ] = []
        # See add_unload_listener.
        self._unload_listeners: list[Callable[[str], None]] = []
        # model -> the versions kept loaded for it (keep_versions): a refresh unloads none of them.
        self._kept: dict[str, frozenset[int]] = {}
        limits = explain_limits or ExplainLimits()
        self.explainer = Explainer(
            threads=limits.threads,
            queue_size=limits.queue_size,
            chunk_rows=limits.chunk_rows,
            predict_waiting=self._predict_waiting,
        )
        self._closed = False

    # -- routing ---------------------------------------------------------------------------

    def route(self, target: Target) -> tuple[int, int | None]:
        """(version, shadow version or None) that serve a request for `target`."""
        if target.version is not None:
            return target.version, None
        if target.alias is not None:
            return self._alias_version(target.model, target.alias), None
        router = self._router(target.model)
        if router is None:
            return self._alias_version(target.model, UNVERSIONED), None
        return router.pick()

    def resolve_version(self, target: Target) -> int:
        """The version a target names now (no canary choice): for LoadModel, GetStats, unload."""
        if target.version is not None:
            return target.version
        return self._resolved(target.model, target.alias or UNVERSIONED)

    def serving_versions(self, model: str) -> list[int]:
        """Every version a request without a selector may go to (deployment routes, else the
        default alias's version, else latest)."""
        router = self._router(model)
        if router is None:
            return [self._alias_version(model, UNVERSIONED)]
        return sorted({version for version, _ in router.plan.routes})

    def routing_rule(self, model: str) -> str | None:
        """What routes requests naming no version of `model`, in words a refusal can name: its
        deployment, or the alias serving.default_alias names; None where they go to its latest
        version for want of either."""
        if self._router(model) is not None:
            return f"its deployment (tessera models deploy {model} VERSION=PERCENT... changes it)"
        if self._default_alias == LATEST:
            return None
        alias = self._unversioned(model)[1]
        if alias == LATEST:
            return None
        return (
            f"alias {alias!r} (serving.default_alias; tessera models alias {model} {alias} VERSION moves it)"
        )

    def check_version(self, model: str, version: int) -> None:
        """NotFound for a version the source does not have; reads the registry alone (never loads)."""
        self._source.servable(model, version, None)

    def load_config(self, model: str, version: int, config: ServingConfig) -> EffectiveConfig:
        """The config a load of `version` with `config` would run it with (over its saved config,
        defaults filled in), loading nothing: what such a load would raise for the config
        (FailedPrecondition, InvalidArgument) it raises, NotFound for a version the source lacks."""
        servable = self._source.servable(model, version, None)
        return effective_config(self.pool.over_saved(config, servable), self.pool.defaults, servable.format)

    def keep_versions(self, model: str, versions: Collection[int]) -> None:
        """Keep `versions` of `model` loaded (empty: none) when its targets move away from them:
        the versions a repository load's version_policy chose, which it, not the routing, unloads.
        An UnloadModel of the whole model, or its deletion, ends the keeping."""
        if versions:
            self._kept[model] = frozenset(versions)
        else:
            self._kept.pop(model, None)

    def kept_versions(self, model: str) -> frozenset[int]:
        """The versions of `model` keep_versions keeps loaded."""
        return self._kept.get(model, frozenset())

    def add_unload_listener(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model)` once an unload of every version of `model` (UnloadModel naming no
        version) is done: what was kept for serving it goes with it."""
        self._unload_listeners.append(callback)

    def model_names(self) -> list[str]:
        return self._source.model_names()

    def model_identity(self, model: str) -> Hashable:
        """See VersionSource.model_identity."""
        return self._source.model_identity(model)

    def loaded(self, model: str) -> list[LoadedVersion]:
        """The versions listed in the pool (of `model` when given: NotFound for a model the source
        does not have and that has none listed)."""
        entries = self.pool.list(model)
        if model and not entries:
            self._source.model_identity(model)
        return entries

    def load_serving(self, model: str, config: ServingConfig | None = None) -> list[LoadedVersion]:
        """Load every version a request without a selector may go to, shadow included. Without
        `config`, with the defaults, and a version already loaded keeps the config it runs with
        (it was asked to be served, not reset); with one, each loads (or swaps) to it. Their
        targets move to them (see _route_after_load)."""
        loaded = [
            self.pool.load(
                self._source.servable(model, version, None),
                config if config is not None else ServingConfig(),
                keep_loaded=config is None,
            )
            for version in self._loaded_for_serving(model)
        ]
        self._route_after_load(Target(model))
        return loaded

    def preload(self, model: str, version: int | None) -> None:
        """Load, with the defaults, `version` of `model`, or (None) every version a request
        without a selector may go to: serving.preload, before the daemon reports ready."""
        if version is None:
            self.load_serving(model)
        else:
            # A LoadModel with a config of its own, asked for during the preload, keeps it.
            self.load(Target(model, version=version), ServingConfig(), keep_loaded=True)

    def describe_serving(self, model: str) -> list[VersionDescription]:
        """The versions load_serving loads, described (see describe)."""
        return [self.describe(Target(model, version)) for version in self._loaded_for_serving(model)]

    def versions_for_serving(self, model: str) -> list[int]:
        """The versions load_serving loads, lowest first."""
        return self._loaded_for_serving(model)

    def _loaded_for_serving(self, model: str) -> list[int]:
        """The versions a request without a selector may go to as the source has them now (the
        deployment's routes and shadow, else the default alias's version or latest), not as
        cached: a target held on a version until these load moves to them once they do. The
        routes are cached too where they were not, as a request caches them: the refresh of a
        later change then loads the version a target moves to like these, before it moves (a
        replica's catch-up loads its deployments so). With serving.autoload on, the routes
        cached count too: a target held back by a new version that failed to warm keeps the one it
        serves loaded (nothing to fix in it), which the load then succeeds with."""
        versions = set(self.serving_versions(model))
        if self._autoload:
            router = self._router(model)
            if router is not None:
                versions |= router.versions()
            return sorted(versions)
        plan = self._source.deployment(model)
        if plan is not None and plan.routes:
            return sorted(_Router(plan).versions())
        return [self._resolved(model, UNVERSIONED)]

    def _route_after_load(self, target: Target) -> None:
        """After an explicit load for `target`: the targets held on a version until the one they
        name now is loaded move to it. With serving.autoload off (nothing else loads it), before
        the load's caller is answered, so that its next request goes there (as Triton's
        load_model returns with the model serving); with it on, a target held back by a version
        that failed to warm moves in the background, as before."""
        model = target.model
        if self._autoload:
            if model in self._held_back:
                self.on_registry_change(model)
            return
        if target.version is None:
            # Cached now, a route is one that a later change's refresh holds on this version while
            # the version it then names is not loaded (see _swap_targets); uncached, the request
            # after that change would read the new one from the source, and be refused.
            if target.alias is not None:
                self._alias_version(model, target.alias)
            else:
                self.serving_versions(model)
        # Whether or not a target is held: a load that ended while a refresh was deciding to hold
        # one (having found the version not loaded) would otherwise go unseen until the next change.
        self.on_registry_change(model)
        routed = self.routed_by_now(model)
        try:
            routed.result(timeout=LOAD_ROUTING_WAIT_S)
        except TimeoutError:
            # The load stands; the targets move once the refresh under way ends. A waiter no one
            # waits for is dropped.
            routed.cancel()
            with self._cache_lock:
                waiting = [
                    (at, done) for at, done in self._route_waiters.get(model, []) if done is not routed
                ]
                if waiting:
                    self._route_waiters[model] = waiting
                else:
                    self._route_waiters.pop(model, None)
            log.warning(
                "routing of %r lags its load: after %g s, requests naming no version still go to "
                "version %s; they move once the refresh under way ends",
                model, LOAD_ROUTING_WAIT_S, ", ".join(str(v) for v in self.serving_versions(model)),
            )  # fmt: skip

    def _alias_version(self, model: str, alias: str) -> int:
        version = self._aliases.get((model, alias))
        if version is None:
            changes = self._changes
            version = self._resolved(model, alias)
            with self._cache_lock:
                if self._changes == changes:
                    self._aliases[(model, alias)] = version
        return version

    def _resolved(self, model: str, alias: str) -> int:
        """The version `alias` of `model` names in the source now (UNVERSIONED: see _unversioned)."""
        if alias == UNVERSIONED:
            return self._unversioned(model)[0]
        return self._source.servable(model, None, alias).version

    def _unversioned(self, model: str) -> tuple[int, str]:
        """(version, the alias that names it) a request naming no version gets from `model`
        without a deployment: the default alias's version, or latest where the model lacks that
        alias (a model not promoted yet serves, as it did before the setting; refusing it would
        take every such model down at once)."""
        if self._default_alias != LATEST:
            try:
                return self._source.servable(model, None, self._default_alias).version, self._default_alias
            except NotFound:
                pass
        return self._source.servable(model, None, LATEST).version, LATEST

    def _served_undeployed(self, model: str) -> str:
        """The version requests naming no version of `model` go to without a deployment (while
        the one made waits), in words for a log: the cached one, else the one they would read."""
        version = self._aliases.get((model, UNVERSIONED))
        if version is not None:
            return f"version {version}"
        try:
            version, follows = self._unversioned(model)
        except NotFound:
            return "no version"
        return f"version {version} (the one {follows!r} names)"

    def _unversioned_rule(self, model: str, follows: str, old: int) -> str:
        """Why requests naming no version go where they go now, and how to keep them on `old`."""
        deploy = f"deploy it (tessera models deploy {model} {old}=100)"
        if follows != LATEST:
            return f"the version alias {follows!r} names"
        if self._default_alias == LATEST:
            return (
                f"its latest version; to keep them on a version, {deploy}, or set serving.default_alias "
                "to an alias that names it"
            )
        return (
            f"its latest version, as it has no alias {self._default_alias!r} (serving.default_alias); "
            f"to keep them on a version, point that alias at it (tessera models alias {model} "
            f"{self._default_alias} {old}) or {deploy}"
        )

    def traffic_split(self, model: str) -> tuple[tuple[int, int], ...]:
        """(version, weight percent) of each version a deployment of `model` splits requests
        among (a canary); empty where requests go to one version."""
        router = self._router(model)
        return router.plan.routes if router is not None and len(router.plan.routes) > 1 else ()

    def _router(self, model: str) -> _Router | None:
        cached = self._routers.get(model, _Uncached.UNCACHED)
        if cached is not _Uncached.UNCACHED:
            return cached
        changes = self._changes
        plan = self._source.deployment(model)
        router = _Router(plan) if plan is not None and plan.routes else None
        with self._cache_lock:
            if self._changes == changes:
                self._routers[model] = router
        return router

    # -- requests --------------------------------------------------------------------------

    def submit(
        self,
        target: Target,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        deadline: float | None,
        request_id: str,
        *,
        started: int,
        hold: bool = False,
        within_max_batch: bool = False,
        dtype_names: Mapping[np.dtype, str] | None = None,
        strings: bool = False,
        checked: LoadedVersion | None = None,
    ) -> Submitted:
        """Route, validate and queue a request; `future` None means `version` must load first.

        `started`: the request's arrival (perf_counter_ns); a request the version refuses counts
        as its failure (OTHER) from then.
        `hold`: more requests are about to be submitted; a batching version queues this one
        without starting it, and the caller must call `entry.batcher.release()` (Submitted.held).
        `within_max_batch`: refuse a request of more rows than the version's max_batch_size (the
        batcher would run it alone), as Triton does for a protocol that advertises that limit.
        `dtype_names`: the names the caller's protocol gives dtypes, for its error messages.
        `strings`: the caller's protocol carries string tensors (validate_request).
        `checked`: what autoload_routed returned for this request: found registered after the
        request arrived, it answers although its model changed again since (a model changed
        faster than one check takes would otherwise send the request back to autoload forever).
        """
        if self._refresh_retry_at:
            self._retry_failed_refresh(target.model)
        for _ in range(_MAX_ROUTING_ROUNDS):
            version, shadow_version = self.route(target)
            entry = self.pool.get(target.model, version)
            # Read once: a swap on another thread may drain the entry, and set its batcher to None,
            # at any point below; the batcher read here then answers BatcherClosed instead.
            batcher = entry.batcher if entry is not None else None
            if (
                entry is None
                or batcher is None
                or entry.signature is None
                # A call only while a change waits for its refresh (rarely): one per request costs.
                or (self._unsettled and entry is not checked and self._unchecked(entry))
            ):
                return Submitted(version, None, None)
            try:
                try:
                    rows = validate_request(
                        entry.signature, inputs, output_names, entry.label, dtype_names, strings
                    )
                except InvalidArgument as refused:
                    raise RefusedBySignature(refused.message, version) from None
                if within_max_batch and rows > entry.config.max_batch_size and entry.signature.batchable:
                    raise _over_max_batch(target.model, entry, rows)
            except TesseraError:
                # Counted, a client's bad input too, as Triton counts failures before its backend
                # (reason OTHER); the SDK casts lists up front once a version refused them.
                entry.stats.record_failure(time.perf_counter_ns() - started, False, FailureReason.OTHER)
                raise
            cache = entry.cache
            if cache is not None:
                key, lookup_ns, cached = cache.lookup(inputs, output_names)
                if cached is not None:
                    # The batcher and the model skipped; batch_rows 0 says so.
                    hit = Answered()
                    hit.set_result(Prediction(cached, 0, 0, 0))
                    if shadow_version is not None:
                        self._shadow(target.model, request_id, version, shadow_version, inputs, hit)
                    return Submitted(version, entry, hit, False, rows)
            holds = batcher.holds(rows)
            self._holds[target.model] = holds
            held = hold and holds
            try:
                future = batcher.submit(inputs, output_names, rows, deadline, hold=held)
            except BatcherClosed:
                continue
            if cache is not None:
                # Before the caller's own callback: the answer is in the cache when it is read.
                future.add_done_callback(functools.partial(_cache_answer, cache, key, lookup_ns))
            if shadow_version is not None:
                self._shadow(target.model, request_id, version, shadow_version, inputs, future)
            return Submitted(version, entry, future, held, rows)
        raise Unavailable(
            f"model {target.model!r} is being unloaded or swapped repeatedly; retry the request"
        )

    def record_io(
        self, model: str, version: int, prediction: Prediction, input_ns: int, output_ns: int
    ) -> None:
        """Count the time an API spent decoding a request that `version` answered and encoding its
        answer (ModelStatistics' compute_input and compute_output); an answer from the response
        cache (batch_rows 0) is left out, as Triton leaves it."""
        entry = self.pool.get(model, version)
        if entry is not None and prediction.batch_rows:
            entry.stats.record_io(input_ns, output_ns)

    def over_max_batch(self, target: Target, shapes: Mapping[str, Sequence[int]]) -> InvalidArgument | None:
        """The refusal `submit` gives a request for `target` whose inputs have `shapes`, when every
        version it may be routed to is loaded, batches, and has a smaller max_batch_size than its
        rows; else None. Reads, never picks: a deployment's split is not advanced. For a
        transport that knows the shapes before the data has arrived."""
        try:
            if target.version is not None:
                versions = [target.version]
            elif target.alias is not None:
                versions = [self._alias_version(target.model, target.alias)]
            else:
                versions = self.serving_versions(target.model)
        except TesseraError:
            return None
        refusal: InvalidArgument | None = None
        for version in versions:
            entry = self.pool.get(target.model, version)
            if entry is None or entry.signature is None or not entry.signature.batchable:
                return None
            shape = shapes.get(entry.signature.inputs[0].name)
            if not shape or shape[0] <= entry.config.max_batch_size:
                return None
            refusal = refusal or _over_max_batch(target.model, entry, shape[0])
        return refusal

    def refused(self, target: Target, started: int) -> None:
        """Count a request for `target` refused before it reached `submit` (its inputs or parameters
        did not decode) as a failure (OTHER) of the loaded version it was for, from `started`
        (perf_counter_ns). Without a version or alias that is the heaviest route of the model's
        deployment (its split is not advanced), else `latest`. A model or version that does not
        exist or is not loaded counts nothing, as in Triton."""
        try:
            if target.version is not None:
                version = target.version
            elif target.alias is not None:
                version = self._alias_version(target.model, target.alias)
            elif (router := self._router(target.model)) is not None:
                version = max(router.plan.routes, key=lambda route: route[1])[0]
            else:
                version = self._alias_version(target.model, UNVERSIONED)
        except TesseraError:
            return
        entry = self.pool.get(target.model, version)
        if entry is not None:
            entry.stats.record_failure(time.perf_counter_ns() - started, False, FailureReason.OTHER)

    def may_hold(self, model: str) -> bool:
        """Whether a request for `model` may be held for its burst (as its last request's version
        would have been; True before any): where it may not, looking for the burst is wasted."""
        return self._holds.get(model, True)

    def _unchecked(self, entry: LoadedVersion) -> bool:
        """Whether `entry`'s model changed since serving last refreshed it, and `entry` was not
        found still registered after that change (see autoload)."""
        return entry.checked_at_change < self._unsettled.get(entry.model, 0)

    def autoload_routed(self, target: Target, version: int) -> LoadedVersion | None:
        """autoload for a request for `target` that was routed to `version` (Submitted.version):
        the version loaded and checked for it (submit's `checked`), or None to route it again.

        Without a version named, NotFound for `version` means the route the request took is stale:
        cached before a change not refreshed yet (its model deleted and created again, say), or
        rewritten by a refresh that ran between the routing and this load (the version deleted).
        The model's cached routes to it are dropped and the caller routes the request again,
        rather than answer NOT_FOUND for a version the request did not name. So too for a version
        not loaded (NotLoaded, StillLoading) that the target no longer routes to in the source (a
        stale route with autoload off): the request is answered for the version it routes to now.
        Nor is a version loaded that a refresh moved the target's routes off since the routing
        (see _refuse_unless_routed): it would stay loaded, routed to by nothing, after the refresh
        that unloads it.
        """
        try:
            return self.autoload(target.model, version, routed=None if target.version is not None else target)
        except NotFound:
            if target.version is not None:
                raise
        except (NotLoaded, StillLoading):
            if target.version is not None or self._still_routed(target, version):
                raise
        self._forget_routes(target.model, version)
        return None

    def _still_routed(self, target: Target, version: int) -> bool:
        """Whether a request for `target` (no version named) routes to `version` as the source
        has it now, the route cache passed over (True where the source cannot tell now); NotFound
        for a model or alias it no longer has."""
        try:
            if target.alias is None:
                plan = self._source.deployment(target.model)
                if plan is not None and plan.routes:
                    return version in {routed for routed, _ in plan.routes}
            return version == self._resolved(target.model, target.alias or UNVERSIONED)
        except NotFound:
            raise
        except TesseraError:
            return True

    def _refuse_unless_routed(self, target: Target, version: int) -> None:
        """NotFound unless a request for `target` (no version named) routes to `version` now (as
        cached, else as the source has it). Called holding the version's load lock just before a
        request loads it: a refresh moves the cached routes first, then unloads each version they
        left under its load lock (ModelPool.unload_ready), so a request routed just before the
        move either loads the version before that unload, or finds the routes moved here."""
        model = target.model
        if target.alias is not None:
            routed = self._alias_version(model, target.alias) == version
        elif (router := self._router(model)) is not None:
            routed = version in {route for route, _ in router.plan.routes}
        else:
            routed = self._alias_version(model, UNVERSIONED) == version
        if not routed:
            raise NotFound(f"model {model!r} is no longer routed to version {version} for this request")

    def _shadowed(self, model: str, version: int) -> bool:
        """Whether `model`'s deployment (as cached, else as the source has it) shadows `version`
        now: a refresh that moved the shadow off it may have run after the request that queued
        its load."""
        router = self._router(model)
        shadow = router.plan.shadow if router is not None else None
        return shadow is not None and shadow[0] == version

    def _forget_routes(self, model: str, version: int) -> None:
        """Drop `model`'s cached alias targets and deployment that route to `version`, and its
        cached "no deployment" (the next request reads them from the source); a refresh may have
        rewritten them already."""
        with self._cache_lock:
            aliases = [key for key, cached in self._aliases.items() if key[0] == model and cached == version]
            for key in aliases:
                self._aliases.pop(key, None)
            router = self._routers.get(model, _Uncached.UNCACHED)
            # "No deployment" sent the request to `latest`: a deployment created since routes it.
            if router is None or (router is not _Uncached.UNCACHED and version in router.versions()):
                del self._routers[model]

    def autoload(
        self, model: str, version: int, *, routed: Target | None = None, shadowed: bool = False
    ) -> LoadedVersion:
        """Load a version a request needs, with the defaults; NotLoaded when that load fails.
        When autoload is off: StillLoading while a load of it is under way (it will be served),
        else NotLoaded. `routed`: the target (no version named) of a request routed to `version`;
        NotFound when it no longer routes there by the time the load would begin. `shadowed`:
        loaded as the model's shadow version, for a target awaiting it too when a warm load joined
        this one (see _load_shadow); NotFound likewise once neither its deployment shadows it nor a
        target awaits it.

        A loaded version whose model changed since serving refreshed it is checked first: until
        the refresh, the version under its number may be the artifact of a model since deleted
        (and registered again), or a version since deleted, which must not answer. It is then
        unloaded, and the request gets NotFound, or the new artifact as for any version not loaded.

        A version whose last load failed is not loaded again for a request (NotLoaded
        with the reason), as Triton keeps a model that failed UNAVAILABLE until it is loaded
        explicitly: a broken artifact would fail every request as slowly as a load, and a cause
        outside it (memory) is the operator's to fix. LoadModel or RepositoryModelLoad loads it
        again; so does a request once it is unloaded.
        """
        loaded = self.pool.get(model, version)
        if loaded is not None and self._still_registered(loaded):
            return loaded
        listed = self._listed(model, version)
        if self._autoload and listed is not None and listed.state is LoadState.FAILED:
            if listed.retry is Retry.SOON:
                # A cause that passes (the registry or the primary unreachable): the daemon's
                # periodic retry, or a replica's follower, loads it again by itself.
                raise NotLoaded(
                    f"{listed.label} failed to load for a cause that may pass, and is tried again by "
                    f"itself shortly: {listed.error}; retry then, or load it now with LoadModel or "
                    "RepositoryModelLoad"
                )
            raise NotLoaded(
                f"{listed.label} failed to load, and requests do not load it again: {listed.error}; "
                "once the cause is fixed, load it with LoadModel or RepositoryModelLoad"
            )
        if not self._autoload:
            if listed is not None and listed.state in (LoadState.LOADING, LoadState.WARMING):
                raise StillLoading(
                    f"{listed.label} is still loading; retry once it is ready (ModelReady, or "
                    "state READY in ListLoaded)"
                )
            failed = f" (its last load failed: {listed.error})" if listed is not None and listed.error else ""
            raise NotLoaded(
                f"model {model!r} version {version} is not loaded{failed}; load it with LoadModel "
                "(or turn on serving.autoload)"
            )
        servable = self._source.servable(model, version, None)
        check = None if routed is None else functools.partial(self._refuse_unless_routed, routed, version)
        if shadowed:
            check = functools.partial(self._refuse_unless_wanted, (model, version))
        try:
            # A load under way (LoadModel's, with the operator's config) is waited for and kept.
            return self.pool.load(servable, ServingConfig(), keep_loaded=True, before_load=check)
        except FailedPrecondition as exc:
            # Its version's failure, as later requests are told it: a version whose load failed
            # is not ready (Triton's UNAVAILABLE), not a request in a wrong state.
            raise NotLoaded(
                f"model {model!r} version {version} failed to load: {exc.message}; once the cause "
                "is fixed, load it with LoadModel or RepositoryModelLoad"
            ) from None

    def _still_registered(self, entry: LoadedVersion) -> bool:
        """Whether `entry` is the artifact its source has under its number (see _registered); one
        that is not is unloaded, and NotFound raised for a version gone."""
        try:
            if self._registered(entry):
                return True
        except NotFound:
            self.pool.unload_replaced(entry)
            raise
        self.pool.unload_replaced(entry)
        return False

    def _registered(self, entry: LoadedVersion, *, remote: bool = True) -> bool:
        """Whether `entry` is the artifact its source has under its number, NotFound for a version
        gone; checked only while `_unchecked`, and changing nothing loaded (a metadata call's).
        Without `remote`, only what the source knows without asking another machine is read
        (VersionSource.known_servable): where that cannot say, as when the source fails to."""
        if not self._unchecked(entry):
            return True
        model = entry.model
        with self._cache_lock:
            # Its latest change before the read: a failure after a change that came meanwhile
            # leaves the source to be asked again at once, as the change says (on_registry_change).
            changed_at = self._unsettled.get(model)
            # Only a remote read takes the interval's turn: a probe, which asks no one, must not
            # leave the requests after it without one.
            retry_at = self._source_retry_at.get(model) if remote else None
            if retry_at is not None:
                now = self._clock()
                if now < retry_at:
                    return True  # the source failed to say lately: served as when it fails
                # This request asks it; the others meanwhile are served as above.
                self._source_retry_at[model] = now + SOURCE_RETRY_S
        changes = self._changes  # before the read: a change after it is checked again
        try:
            if remote:
                servable: ServableVersion | None = self._source.servable(model, entry.version, None)
            else:
                servable = self._source.known_servable(model, entry.version)
        except NotFound:
            self._source_answered(model)
            raise
        except TesseraError:
            # The source cannot tell now (a replica's primary out of reach): keep serving it, as
            # a refresh does.
            if remote:
                with self._cache_lock:
                    if self._unsettled.get(model) == changed_at:
                        self._source_retry_at[model] = self._clock() + SOURCE_RETRY_S
            return True
        if servable is None:
            return True  # only another machine could say: kept, as when the source fails to
        self._source_answered(model)
        if servable.artifact_sha256 != entry.artifact_sha256:
            return False
        entry.checked_at_change = max(entry.checked_at_change, changes)
        return True

    def _source_answered(self, model: str) -> None:
        with self._cache_lock:
            self._source_retry_at.pop(model, None)

    def _listed(self, model: str, version: int) -> LoadedVersion | None:
        """The version as the pool lists it (loading, ready, draining or failed), or None."""
        return next((e for e in self.pool.list(model) if e.version == version), None)

    def load(
        self, target: Target, config: ServingConfig, keep_loaded: bool = False, save: bool = False
    ) -> LoadedVersion:
        """`keep_loaded`: as ModelPool.load's (a version loaded already keeps its config).
        `save`: load with `config` alone (not over the version's saved config), and once loaded
        store it as the version's saved config. A save that fails (the version deleted meanwhile)
        raises, with the load done: the version runs with `config` until unloaded."""
        if save and self._save_config is None:
            raise FailedPrecondition(
                "a read replica serves the serving configs its primary saved: load with save_config "
                "at the primary, and the replica follows"
            )
        if target.version is None and target.alias is None:
            servable = self._source.servable(target.model, self._resolved(target.model, UNVERSIONED), None)
        else:
            servable = self._source.servable(target.model, target.version, target.alias)
        if save:
            servable = dataclasses.replace(servable, saved_config=ServingConfig())
        save_config = self._save_config
        version = servable.model, servable.version

        def store() -> None:
            assert save_config is not None
            save_config(*version, config_fields(config))

        # Saved holding the version's load lock: a load of it with another config saved at once
        # cannot come in between, leaving one config running and the other saved.
        loaded = self.pool.load(servable, config, keep_loaded=keep_loaded, after_load=store if save else None)
        self._route_after_load(target)
        return loaded

    def unload(self, target: Target) -> list[LoadedVersion]:
        """The versions unloaded. Those only with a run of failed loads (a retry took the failed
        listing away) have the run ended and are not among them: the call succeeds, as it ended
        what it was asked to end (the next failure is retried at once), and NotFound would say
        that nothing changed."""
        if target.version is None and target.alias is None:
            versions = {e.version for e in self.pool.list(target.model)} | self.pool.failure_runs(
                target.model
            )
            if not versions:
                self._source.servable(target.model, None, LATEST)  # NotFound for a model that does not exist
            unloaded = []
            ended = False
            for version in sorted(versions):
                try:
                    entry = self._unload_version(target.model, version)
                except NotFound:
                    continue  # unloaded since it was listed (another UnloadModel, a deletion)
                if entry is None:
                    ended = True
                else:
                    unloaded.append(entry)
            self._kept.pop(target.model, None)
            for listener in self._unload_listeners:
                listener(target.model)
            if not unloaded and not ended:
                raise NotFound(
                    f"model {target.model!r} has no loaded version, so there is nothing to unload "
                    "(ListLoaded lists what is loaded)"
                )
            return unloaded
        entry = self._unload_version(target.model, self.resolve_version(target))
        return [] if entry is None else [entry]

    def _unload_version(self, model: str, version: int) -> LoadedVersion | None:
        """ModelPool.unload, which ends the version's run of failures: its retry wait (see
        retry_failed_loads) ends with it. Taken under the pass's lock: a pass under way may have
        seen the failed listing before the unload took it away, and would record it again."""
        entry = self.pool.unload(model, version)
        with self._retry_loads_lock, self._cache_lock:
            self._load_retry_at.pop((model, version), None)
        return entry

    def describe(self, target: Target) -> VersionDescription:
        """The version a request for `target` (a model, and a version or none) finds first (without
        a version, the lowest a request may go to), as metadata calls describe it.

        Read from the pool when the version is loaded (and, while a change to its model waits
        for its refresh, still the registry's artifact: a request checks it so too), else from
        the registry. As Triton's metadata calls, it changes nothing loaded: a version replaced
        or deleted is left to the refresh of its change to unload, and none is loaded for it; its
        config is then the one a load under way gives it, or the one any load without a config (a
        request's, or RepositoryModelLoad's) would. Only a version the registry has no signature
        for is loaded (where autoload allows), its signature being known only from its runtime.
        Without a version, a stale route is routed again as a request's is (REROUTE_ROUNDS). A
        refresh of the model that failed is queued again as by a request (SOURCE_RETRY_S).
        """
        model = target.model
        self._retry_failed_refresh(model)
        if target.version is not None:
            return self._describe(model, target.version)
        for _ in range(REROUTE_ROUNDS):
            version = self.serving_versions(model)[0]
            try:
                return self._describe(model, version)
            except NotFound:
                # A stale route, cached or rewritten meanwhile, as for a request (autoload_routed).
                self._forget_routes(model, version)
        raise Unavailable(
            f"the versions of model {model!r} changed while this metadata call was routed (the version "
            "it was routed to last was deleted before it was read); retry it"
        )

    def ready_versions(self, model: str) -> list[int]:
        """The versions of `model` ready to serve as what the source has under their numbers: one
        it replaced or deleted since, not unloaded yet by the refresh of that change, is left out
        (checked as describe checks, changing nothing loaded, though without asking another
        machine: see _ready_as_registered)."""
        ready = []
        for version in self.pool.ready_versions(model):
            try:
                if self._ready_as_registered(model, version):
                    ready.append(version)
            except NotFound:
                continue
        return ready

    def ready(self, target: Target) -> bool:
        """Whether a request for `target` (a model, and a version or none) would be served now by
        a version ready, without loading one: without a version, every version it may go to.

        As ready_versions, a version its source replaced or deleted since is not ready, though
        the refresh of that change has not unloaded it yet (a request would not be served by it);
        nothing loaded changes, and no other machine is asked (see _ready_as_registered). Without a version, a stale route is routed again as a request's
        is (REROUTE_ROUNDS), and a refresh that failed queued again (SOURCE_RETRY_S). False for a
        model or version the source does not have."""
        model = target.model
        self._retry_failed_refresh(model)
        for _ in range(REROUTE_ROUNDS):
            try:
                versions = [target.version] if target.version is not None else self.serving_versions(model)
            except NotFound:
                return False
            for version in versions:
                try:
                    if not self._ready_as_registered(model, version):
                        return False
                except NotFound:
                    if target.version is not None:
                        return False
                    # A stale route, cached or rewritten meanwhile, as for a request (autoload_routed).
                    self._forget_routes(model, version)
                    break
            else:
                return True
        return False  # its versions changed faster than they were routed: not ready to say so

    def _ready_as_registered(self, model: str, version: int) -> bool:
        """Whether `version` is loaded, ready, and the artifact its source has under its number
        (see _registered; NotFound for a version it no longer has). Only what the source knows
        without asking another machine is read: a readiness probe must answer within its timeout
        (Kubernetes' 1 s), not wait on a replica's primary out of reach; a version a replica
        cannot check so is ready until its refresh unloads it, as requests are served by it."""
        entry = self.pool.get(model, version)
        return entry is not None and entry.state is LoadState.READY and self._registered(entry, remote=False)

    def _describe(self, model: str, version: int) -> VersionDescription:
        ready = self.pool.get(model, version)
        # Checked as a request checks it (autoload): a version replaced since its model's change,
        # not refreshed yet, does not describe what a request would be served by.
        if ready is not None and ready.signature is not None and self._registered(ready):
            return VersionDescription(model, version, ready.signature, ready.config)
        servable = self._source.servable(model, version, None)  # NotFound for a version that does not exist
        if servable.signature is None:
            loaded = self.autoload(model, version)
            assert loaded.signature is not None
            return VersionDescription(model, version, loaded.signature, loaded.config)
        listed = self._listed(model, version)
        if (
            listed is not None
            and listed.state is not LoadState.FAILED
            # Not a replaced artifact's, still listed: a request loads the new one with the defaults.
            and listed.artifact_sha256 == servable.artifact_sha256
        ):
            config = listed.config
        else:
            config = effective_config(
                self.pool.over_saved(ServingConfig(), servable), self.pool.defaults, servable.format
            )
        return VersionDescription(model, version, servable.signature, config)

    def stats_entries(self, target: Target, members: bool = True) -> list[LoadedVersion]:
        """The loaded versions whose figures a stats call reports: every loaded version without a
        model; an ensemble's loaded members after it unless `members` is False; NotFound for a
        model, version or alias that does not exist or is not loaded. A version whose load failed
        never served: it has none."""
        if not target.model:
            return [e for e in self.pool.list() if e.state is not LoadState.FAILED]
        listed = self.pool.list(target.model)
        entries = [e for e in listed if e.state is not LoadState.FAILED]
        if target.version is None and target.alias is None:
            if not entries:
                self._source.servable(target.model, None, LATEST)  # NotFound for a model that does not exist
                # Registered (servable found it): said so, since an unknown model is a 404 too.
                raise self._no_stats(
                    f"model {target.model!r} is registered but has no loaded version", listed
                )
            return self._with_members(entries) if members else entries
        version = self.resolve_version(target)
        entries = [e for e in entries if e.version == version]
        if not entries:
            self._source.servable(target.model, version, None)  # NotFound for a version that does not exist
            failed = [e for e in listed if e.version == version]
            raise self._no_stats(f"model {target.model!r} version {version} is not loaded", failed, version)
        return self._with_members(entries) if members else entries

    def _with_members(self, entries: list[LoadedVersion]) -> list[LoadedVersion]:
        keys = {(e.model, e.version) for e in entries}
        members = {key for e in entries for key in e.members if key not in keys}
        return entries + [e for e in self.pool.list() if (e.model, e.version) in members]

    def _no_stats(self, what: str, failed: list[LoadedVersion], version: int | None = None) -> NotFound:
        """`failed`: the versions listed (those whose load failed) that the call asked for;
        `version`: the one it named, which a request must name too to load it (one naming no
        version loads the routed version)."""
        if failed:
            entry = failed[0]
            return NotFound(f"{entry.label} failed to load, so it has no statistics: {entry.error}")
        if version is None:
            if self._autoload:
                how = "send it a request (Predict) to load it, or load it with LoadModel"
            else:
                how = "load it with LoadModel (serving.autoload is off)"
        elif self._autoload:
            how = (
                f"load it with LoadModel naming version {version}, or by a Predict naming version "
                f"{version} (one naming no version loads the one requests are routed to)"
            )
        else:
            how = f"load it with LoadModel naming version {version} (serving.autoload is off)"
        return NotFound(f"{what}, so it has no statistics yet; {how}")

    # -- explanations ----------------------------------------------------------------------

    def explain(
        self,
        target: Target,
        inputs: Mapping[str, np.ndarray],
        method: Method,
        output_index: int | None,
        options: ExplainOptions,
    ) -> ExplainSubmitted:
        """Queue an explanation of the version `target` names (without a version or alias, the
        version a Predict finds first); an ONNX version is explained through its lineage parent."""
        if target.version is None and target.alias is None:
            version = self.serving_versions(target.model)[0]
        else:
            version = self.resolve_version(target)
        servable = self._source.servable(target.model, version, None)
        if servable.format != "onnx":
            queued = self.explainer.submit(servable, inputs, method, output_index, options)
            return ExplainSubmitted(version, servable.version, queued)
        servable = self._torch_parent(servable)
        try:
            queued = self.explainer.submit(servable, inputs, method, output_index, options)
        except RefusedBySignature as refused:
            # The refusal names the torch parent (perhaps another model's version); the client
            # fixes its request for, and may send it again to, the version it was routed to.
            raise RefusedBySignature(
                f"{refused.message} (model {target.model!r} version {version} is ONNX, explained "
                "through that torch version)",
                version,
            ) from None
        return ExplainSubmitted(version, servable.version, queued)

    def _torch_parent(self, onnx: ServableVersion) -> ServableVersion:
        label = f"model {onnx.model!r} version {onnx.version}"
        if onnx.parent is None:
            raise FailedPrecondition(
                f"{label} is ONNX and its lineage names no torch version it was exported from; "
                "explanations need torch weights: explain a safetensors version instead"
            )
        parent_model, parent_version = onnx.parent
        parent_label = f"model {parent_model!r} version {parent_version}"
        gone = FailedPrecondition(
            f"{label} is ONNX, exported from {parent_label}, which no longer exists; "
            "explanations need torch weights: explain a safetensors version instead"
        )
        if onnx.parent_deleted:  # the number may name a recreated model's unrelated version now
            raise gone
        try:
            parent = self._source.servable(parent_model, parent_version, None)
        except NotFound:
            raise gone from None
        if parent.format != "safetensors" or parent.architecture is None:
            raise FailedPrecondition(
                f"{label} is ONNX and its lineage parent {parent_label} is not a torch version "
                "either; explanations need torch weights: explain a safetensors version instead"
            )
        return parent

    def _predict_waiting(self) -> bool:
        """Whether any loaded version has Predict requests queued (explanations yield to them)."""
        return any((batcher := entry.batcher) is not None and batcher.queued for entry in self.pool.list())

    # -- shadow ----------------------------------------------------------------------------

    def _shadow(
        self,
        model: str,
        request_id: str,
        primary_version: int,
        shadow_version: int,
        inputs: Mapping[str, np.ndarray],
        primary: Answer,
    ) -> None:
        entry = self.pool.get(model, shadow_version)
        batcher = entry.batcher if entry is not None else None  # read once, as in submit
        if entry is None or batcher is None or entry.signature is None or self._unchecked(entry):
            listed = self._listed(model, shadow_version)
            # As for a request (see autoload): a version whose load failed is not tried again.
            failed = listed is not None and listed.state is LoadState.FAILED
            if self._autoload and not failed:
                self._load_shadow(model, shadow_version)
            return
        started = time.perf_counter_ns()
        try:
            try:
                rows = validate_request(entry.signature, inputs, (), entry.label)
            except TesseraError:
                entry.stats.record_failure(time.perf_counter_ns() - started, True, FailureReason.OTHER)
                raise
            # Never inline: the caller's answer must not wait for the shadow.
            shadow = batcher.submit(inputs, (), rows, None, shadow=True, allow_inline=False)
        except (TesseraError, BatcherClosed) as exc:
            error = exc if isinstance(exc, TesseraError) else Unavailable(f"{entry.label} was unloading")
            self._record_shadow(
                ShadowResult(
                    request_id, model, primary_version, shadow_version, {}, 0.0, 0, time.time(), error
                )
            )
            return

        def record() -> None:
            total_ns = time.perf_counter_ns() - started
            error = shadow.exception()
            if error is not None:
                result = ShadowResult(
                    request_id, model, primary_version, shadow_version, {}, 0.0, total_ns, time.time(),
                    error if isinstance(error, TesseraError) else Unavailable(str(error)),
                )  # fmt: skip
            else:
                outputs = shadow.result().outputs
                diff = 0.0
                if not primary.cancelled() and primary.exception() is None:
                    for name, mine in primary.result().outputs.items():
                        theirs = outputs.get(name)
                        if theirs is not None and theirs.shape == mine.shape and mine.size:
                            delta = np.abs(theirs.astype(np.float64) - mine.astype(np.float64))
                            diff = max(diff, float(delta.max()))
                result = ShadowResult(
                    request_id,
                    model,
                    primary_version,
                    shadow_version,
                    outputs,
                    diff,
                    total_ns,
                    time.time(),
                    None,
                )
            self._record_shadow(result)

        # Whichever of the two finishes last records the result.
        once = _Once(record)
        primary.add_done_callback(once)
        shadow.add_done_callback(once)

    def _record_shadow(self, result: ShadowResult) -> None:
        with self._lock:
            self._shadows_recorded += 1
            kept = self._shadows.setdefault(result.model, deque(maxlen=SHADOW_RESULTS_KEPT))
            kept.appendleft((self._shadows_recorded, result))

    def shadow_results(
        self, model: str, limit: int, older_than: int | None = None
    ) -> list[tuple[int, ShadowResult]]:
        """`model`'s newest `limit` shadow results first (those recorded before the one numbered
        `older_than`, when given), each with its number; NotFound for a model the source does not
        have and that has none kept."""
        with self._lock:
            kept = list(self._shadows.get(model, ()))
        results = [(n, r) for n, r in kept if older_than is None or n < older_than][:limit]
        if not results:
            self._source.model_identity(model)
        return results

    def _load_shadow(self, model: str, version: int) -> None:
        """Queue the load of `model`'s shadow version `version` with the warm loads: on the
        refreshes' thread, a slow one would hold every model's refresh. Not queued again while
        one is queued or under way, nor while a warm load of the version is (it is joined): each
        would take a warm load's thread, waiting on the version's load lock, and every target's
        move would wait behind them."""
        key = (model, version)
        with self._refresh_lock:
            # Under the lock: close, which shuts the warm loads down, may come right after the check.
            if self._closed:
                return
            with self._warm_lock:
                if key in self._shadow_loads:
                    return
                load = self._warming.get(key)
                if load is None:
                    load = self._warm_loads.submit(
                        self._load_in_background,
                        key,
                        "",  # its artifact is read as it loads
                        functools.partial(self.autoload, model, version, shadowed=True),
                    )
                self._shadow_loads[key] = load
        # Outside the lock, which the callback takes: it runs at once if the load is done.
        load.add_done_callback(functools.partial(self._shadow_load_ended, key))

    def _shadow_load_ended(self, key: tuple[str, int], load: Future[None]) -> None:
        """The end of the load _load_shadow started or joined: the next request copied to the
        version queues a load again if it is not loaded (nor listed FAILED)."""
        with self._warm_lock:
            if self._shadow_loads.get(key) is load:
                del self._shadow_loads[key]
        error = None if load.cancelled() else load.exception()
        if isinstance(error, TesseraError) and not self._logged_load_failure(key, error):
            log.warning("cannot load shadow version %s of %r: %s", key[1], key[0], error.message)

    def _logged_load_failure(self, key: tuple[str, int], error: TesseraError) -> bool:
        """Whether the failure `error` of a load of the version `key` was logged where it arose:
        an unexpected one (Internal) with its traceback or counted as a repeat, and the failure
        the version is listed FAILED for, which the pool logs as it lists it (or
        _load_in_background, as unexpected): `error` holds its words (a warm-up's are rewrapped
        in a request's). A different failure (the registry's, before the pool's load, racing a
        LoadModel that failed otherwise) was logged by no one. Each is logged once."""
        if isinstance(error, Internal):
            return True
        listed = self._listed(*key)
        return (
            listed is not None
            and listed.state is LoadState.FAILED
            and bool(listed.error)
            and listed.error in error.message
        )

    def _load_in_background(
        self, key: tuple[str, int], artifact_sha256: str, load: Callable[[], object]
    ) -> None:
        """Run a warm or shadow load (of the version `key`, its artifact `artifact_sha256`, "" when
        not read yet) on the warm loads' threads; what it raises is for the ends of each that
        joined it (_warm_ended, _shadow_load_ended), always a TesseraError. An unexpected error
        (its source unreadable) is logged here, once, and the version listed FAILED with the
        error, which names the log's record, as the pool lists a load that raised one: nothing
        else would show it. Listed to be retried soon (ModelPool.list_failure)."""
        model, version = key
        try:
            load()
        except TesseraError:
            raise
        except Exception as exc:
            error = self.pool.unexpected_load_error(model, version, artifact_sha256, exc)
            self.pool.list_failure(model, version, error, artifact_sha256)
            raise error from exc

    # -- hot swap --------------------------------------------------------------------------

    def on_registry_change(self, model: str) -> None:
        """The registry committed a change to `model`; re-resolve its targets in the background."""
        if self._closed:
            return
        with self._cache_lock:
            self._changes += 1
            self._unsettled[model] = self._changes
            # News from the source: a request asks it again at once whether its version is current.
            self._source_retry_at.pop(model, None)
        self._queue_refresh(model)

    def apply_saved_config(self, model: str, version: int) -> None:
        """Swap `version` of `model`, where it is loaded for itself, to its saved serving config,
        in the background (a replica's, once its primary saved another); one whose config it
        matches stays as it is."""
        with self._refresh_lock:
            if not self._closed:
                self._swaps.submit(self._apply_saved_config, model, version)

    def _apply_saved_config(self, model: str, version: int) -> None:
        # A load under way read the config saved before: the swap waits for it, then follows.
        listed = self._listed(model, version)
        if listed is None or listed.state is LoadState.FAILED or listed.member_only:
            return
        try:
            self.pool.load(self._source.servable(model, version, None), ServingConfig())
        except Exception:
            log.exception("swapping %r version %s to its saved serving config failed", model, version)

    def _queue_refresh(self, model: str) -> None:
        with self._refresh_lock:
            # A warm load may end as the service closes: its refresh is not queued then.
            if self._closed or model in self._refresh_queued:
                return
            self._refresh_queued.add(model)
            # Under the lock: close, which shuts _swaps down, may come right after the check.
            self._swaps.submit(self._refresh, model)

    def _retry_failed_refresh(self, model: str) -> None:
        """Queue again the refresh of `model` that failed, once its wait passed (SOURCE_RETRY_S,
        doubled for each failure in a row up to REFRESH_RETRY_MAX_S)."""
        if model not in self._refresh_retry_at or self._closed:
            return
        with self._cache_lock:
            retry_at = self._refresh_retry_at.get(model)
            if retry_at is None or self._clock() < retry_at:
                return
            # Queued once: should it fail again, it sets the next retry.
            del self._refresh_retry_at[model]
        self._queue_refresh(model)

    def add_deletion_listener(
        self, callback: Callable[[str, Hashable], None], kept: Callable[[str], Hashable | None]
    ) -> None:
        """Call `callback(model, identity)` once a change found the model `model` the listener
        keeps something for deleted (on the swaps' thread, as the registry's change is
        refreshed), also when a new model of its name was created since, before the refresh:
        what is kept for a model goes with it, and must not apply to a new model of its name.
        `kept(model)`: the identity (VersionSource.model_identity) of the model the listener
        keeps something for under that name, None for none (cheap; the registry is read only
        for a model some listener keeps)."""
        self._deletion_listeners.append((callback, kept))

    def retry_failed_loads(self, lasting: bool = False) -> int:
        """Try again every load that failed for a cause that passes (the primary could not be
        reached) once its wait passed, and with `lasting` also those its source refused for a
        cause fixed there (a damaged artifact at the primary), every one at once: its failure is
        forgotten, so requests load it again, and its model's targets are re-resolved, so a
        target held back by it moves. A load that failed for its artifact or its runtime stays
        failed. Returns how many were retried.

        A failure's wait runs from the first call that saw it listed: none for a version's first
        failure in a row (LoadedVersion.failures_in_a_row), then doubling from 2 * SOURCE_RETRY_S up
        to LOAD_RETRY_MAX_S, however long its loads take to fail, until one of it succeeds (or a
        failure comes FAILURE_RUN_GAP_S after the last, which starts a new run; see ModelPool). The
        daemon calls this every SOURCE_RETRY_S, a replica's follower as often while connected.

        Every refresh that failed and whose wait passed is queued again too (not counted; see
        retry_failed_refreshes). One pass runs at a time."""
        with self._retry_loads_lock:
            return self._retry_failed_loads(lasting)

    def _retry_failed_loads(self, lasting: bool) -> int:
        """retry_failed_loads, holding _retry_loads_lock."""
        self.retry_failed_refreshes()
        wanted = {Retry.SOON, Retry.LATER} if lasting else {Retry.SOON}
        failed = [e for e in self.pool.list() if e.state is LoadState.FAILED and e.retry in wanted]
        now = self._clock()
        with self._cache_lock:
            seen = self._load_retry_at
            # Rebuilt from the listings: a failure retried, or taken away otherwise, leaves it.
            self._load_retry_at = {}
            for entry in failed:
                key = (entry.model, entry.version)
                last = seen.get(key)
                retry_at = (
                    last[1]
                    if last is not None and last[0] is entry
                    else now + _load_retry_wait(entry.failures_in_a_row)
                )
                self._load_retry_at[key] = (entry, retry_at)
            due = [e for e in failed if lasting or now >= self._load_retry_at[(e.model, e.version)][1]]
        retried = 0
        models: set[str] = set()
        for entry in due:
            if self.pool.forget_listed_failure(entry, wanted):
                log.info(
                    "retrying the load of version %s of %r, which failed (%s times in a row): %s",
                    entry.version, entry.model, entry.failures_in_a_row, entry.error,
                    extra={"model": entry.model, "version": entry.version, "reason": entry.error},
                )  # fmt: skip
                retried += 1
                models.add(entry.model)
        for model in sorted(models):
            self.on_registry_change(model)
        return retried

    def retry_failed_refreshes(self) -> None:
        """Queue again every refresh that failed and whose wait passed (see _retry_failed_refresh),
        as the daemon does periodically: a model without requests or metadata calls (deleted, say)
        has none to queue it, and the versions it was to unload would stay loaded (and listed, and
        in the metrics) until its next change."""
        for model in list(self._refresh_retry_at):
            self._retry_failed_refresh(model)

    def _refresh(self, model: str) -> None:
        with self._refresh_lock:
            # From here on a new change queues a new refresh: this one may read too early for it.
            self._refresh_queued.discard(model)
        with self._cache_lock:
            changes = self._changes
        failure: Exception | None = None
        try:
            settled = self._swap_targets(model)
        except Exception as exc:
            failure, settled = exc, False
        failures = 0
        with self._cache_lock:
            if settled:
                # Every version of it the source no longer has is unloaded now, unless a change
                # came since the refresh began (its own refresh settles it).
                if self._unsettled.get(model, 0) <= changes:
                    self._unsettled.pop(model, None)
                self._refresh_retry_at.pop(model, None)
            else:
                # Its cached routes may be stale, and a version deleted still loaded, until a
                # refresh settles them: the model's next change may be long in coming.
                failures = self._refresh_failed(model)
        if failure is not None:
            self._log_refresh_failure(model, "refreshing the serving targets of", failure, failures)
        concerned = [
            (callback, identity)
            for callback, kept in self._deletion_listeners
            if (identity := kept(model)) is not None
        ]
        if concerned:
            try:
                self._tell_deleted(model, concerned)
            except Exception as exc:
                # What a listener keeps for a model deleted stays until a refresh tells it, as above.
                if not failures:
                    with self._cache_lock:
                        failures = self._refresh_failed(model)
                if failure is None:
                    self._log_refresh_failure(model, "reading whether the registry still has", exc, failures)
        if not failures:
            with self._cache_lock:
                self._refresh_failures.pop(model, None)
        self._wake_route_waiters(model, changes)

    def routed_by_now(self, model: str) -> Future[None]:
        """Done once serving routes `model` by every change committed to it before this call (a
        caller that moved an alias or a deployment reads its own write): the refresh of those
        changes has run, and the loads of the versions its targets move to have ended, and the
        refresh after them moved the targets (or, a load failed, held them back). A refresh that
        failed (the source unreadable) ends the wait too: the targets stay as they were until
        its retry. A load that takes long is waited for: the caller bounds the wait."""
        done: Future[None] = Future()
        with self._cache_lock:
            if self._closed:
                done.set_result(None)
                return done
            # Waiting from here on: a refresh that settles the change after this wakes it.
            changed_at = self._unsettled.get(model, 0)
            self._route_waiters.setdefault(model, []).append((changed_at, done))
        if not changed_at:
            # Settled: the refresh that settled it put the versions its targets move to in
            # _awaited before it took the model off _unsettled, so the loads they wait for are read
            # after it, here (read first, a refresh run in between went unseen); a load that ends
            # after this read queues the refresh that wakes this caller.
            self._wake_route_waiters(model, 0)
        return done

    def _wake_route_waiters(self, model: str, changes: int) -> None:
        """Answer the routed_by_now callers of `model` that a refresh through the change count
        `changes` caught up with, unless its targets still await a version's load (whose end
        queues the refresh that wakes them)."""
        with self._warm_lock:
            loading = bool(self._awaited.get(model))
        with self._cache_lock:
            waiters = self._route_waiters.pop(model, [])
            woken = [done for changed_at, done in waiters if changed_at <= changes and not loading]
            waiting = [(at, done) for at, done in waiters if done not in woken and not done.cancelled()]
            if waiting:
                self._route_waiters[model] = waiting
        for done in woken:
            if done.set_running_or_notify_cancel():
                done.set_result(None)

    def _refresh_failed(self, model: str) -> int:
        """Count a failure of `model`'s refresh and set when it runs again; how many failed in a
        row. Called with _cache_lock held."""
        failures = self._refresh_failures.get(model, 0) + 1
        self._refresh_failures[model] = failures
        self._refresh_retry_at[model] = self._clock() + _refresh_wait(failures)
        return failures

    def _log_refresh_failure(self, model: str, doing: str, failure: Exception, failures: int) -> None:
        """The first failure in a row with its traceback, the others in a line each: a source out of
        reach for long would otherwise log a traceback per model at each retry."""
        wait = _refresh_wait(failures)
        if failures <= 1:
            # "Once readable": a replica retries only while connected to its primary.
            log.error(
                "%s %r failed; once the registry is readable, it is tried again from %s s on, each "
                "failure in a row doubling the wait up to %s s",
                doing, model, wait, REFRESH_RETRY_MAX_S, exc_info=failure,
            )  # fmt: skip
            return
        reason = failure.message if isinstance(failure, TesseraError) else repr(failure)
        log.warning(
            "%s %r failed again (%s times in a row): %s; once the registry is readable, tried "
            "again from %s s on",
            doing, model, failures, reason, wait,
        )  # fmt: skip

    def _tell_deleted(
        self, model: str, listeners: list[tuple[Callable[[str, Hashable], None], Hashable]]
    ) -> None:
        """Call each of `listeners` (callback, the identity of the model it keeps something for)
        whose model no longer exists: `model` is gone, or is another model of its name now. Raises
        what the source raised when it could not say (the refresh is to be retried)."""
        try:
            current: Hashable | None = self._source.model_identity(model)
        except NotFound:
            current = None
        for callback, identity in listeners:
            if identity == current:
                continue
            try:
                callback(model, identity)
            except Exception:
                log.exception("a listener for the deletion of %r failed", model)

    def _swap_targets(self, model: str) -> bool:
        """Move `model`'s cached targets to what the source has now, and unload what they no longer
        route to and what it no longer has; False when the source could not say whether a version
        serving holds still exists (that version is kept, and the refresh is to be retried)."""
        # Every read of the source before anything changes: a read that fails leaves the targets
        # as they were, so the refresh run again finds the versions they served to unload.
        # A target is held on its old version only while that version exists: one deleted since
        # must stop serving, even if the version the target names now cannot.
        replaced, settled = self._deleted_versions(model)
        gone = set(replaced)
        aliases = {alias: old for (m, alias), old in list(self._aliases.items()) if m == model}
        named: dict[str, int | None] = {}
        # The alias a request naming no version follows now (the default alias, or latest).
        unversioned_follows = LATEST
        for alias in aliases:
            try:
                if alias == UNVERSIONED:
                    named[alias], unversioned_follows = self._unversioned(model)
                else:
                    named[alias] = self._source.servable(model, None, alias).version
            except NotFound:
                named[alias] = None
        old_router = self._routers.get(model, _Uncached.UNCACHED)
        plan = self._source.deployment(model) if old_router is not _Uncached.UNCACHED else None
        previously_served = set(aliases.values())
        held_back = False
        awaited: set[int] = set()
        for alias, old in aliases.items():
            new = named[alias]
            if new is None:
                self._aliases.pop((model, alias), None)
                continue
            if new == old:
                continue
            failure = self._warm_like(model, new, old)
            if failure is _Warm.NOT_LOADED:
                if old not in gone:
                    held_back = True
                    log.info(
                        "model %r version %s is not loaded (serving.autoload is off): %s stays on "
                        "version %s until it is; load it with %s",
                        model, new, _routed_by(model, alias), old, _load_fix(model, alias, new),
                    )  # fmt: skip
                    continue
                # Version `old` must stop serving now, and nothing loads `new` but a load.
                failure = None
            if failure is _Warm.UNDER_WAY:
                awaited.add(new)
                if old not in gone:
                    continue
                # Version `old` must stop serving now: a request waits for the load under way.
                failure = None
            if failure is not None and old in gone:
                log.warning(
                    "%s moves to version %s, which failed to load (%s): version %s it served was "
                    "deleted; fix the version and load it with LoadModel, or %s",
                    _routed_by(model, alias), new, failure, old, _move_back(alias, "move"),
                )  # fmt: skip
            elif failure is not None:
                held_back = True
                log.warning(
                    "%s stays on version %s: version %s it now names failed to load (%s); fix the "
                    "version and load it with LoadModel, or %s",
                    _routed_by(model, alias), old, new, failure, _move_back(alias, "move back"),
                )  # fmt: skip
                continue
            self._aliases[(model, alias)] = new
            if alias == UNVERSIONED:
                # A training job, a sweep's trial or an export registers versions: the operator is
                # to know that one took the model's traffic, and how to keep it where it was.
                log.info(
                    "requests for %r naming no version now go to version %s (was %s), %s",
                    model, new, old, self._unversioned_rule(model, unversioned_follows, old),
                )  # fmt: skip
            else:
                log.info("alias %r of %r now serves version %s (was %s)", alias, model, new, old)
        if old_router is not _Uncached.UNCACHED:
            new_router: _Router | None
            if old_router is not None and old_router.plan == plan:
                # The same deployment goes on in turn: started again at each refresh (a replica
                # refreshes a model each time it retries a load), its split was not the one asked.
                new_router = old_router
            else:
                new_router = _Router(plan) if plan is not None and plan.routes else None
            old_versions = old_router.versions() if old_router else set()
            previously_served |= old_versions
            # Deploying a model served by alias until now: warm like its latest version.
            candidates = sorted(old_versions or previously_served)
            like = next((v for v in candidates if self.pool.get(model, v)), None)
            failures: list[str] = []
            warming: set[int] = set()
            not_loaded: list[int] = []
            new_versions = new_router.versions() - old_versions if new_router is not None else set()
            if like is not None:
                for version in sorted(new_versions):
                    failure = self._warm_like(model, version, like)
                    if failure is _Warm.UNDER_WAY:
                        warming.add(version)
                    elif failure is _Warm.NOT_LOADED:
                        not_loaded.append(version)
                    elif failure is not None:
                        failures.append(f"version {version}: {failure}")
            deleted = old_versions & gone
            if warming and (not failures or deleted):
                # The plan moves once their loads are done, to them and to its versions loaded
                # already, which stay loaded meanwhile; or now, a version it served deleted (a
                # request waits for the load under way).
                awaited |= new_versions
            if failures and deleted:
                log.warning(
                    "the deployment of %r moves to its new routes although %s failed to load: "
                    "version %s it served was deleted; fix the version and load it with LoadModel, "
                    "or deploy again",
                    model, "; ".join(failures), ", ".join(str(v) for v in sorted(deleted)),
                )  # fmt: skip
                self._routers[model] = new_router
            elif failures:
                # The whole new plan waits: a split with one route gone would not be the one asked for.
                held_back = True
                serving = sorted(old_versions) or self._served_undeployed(model)
                log.warning(
                    "the deployment of %r keeps serving %s: %s failed to load; fix the version and "
                    "load it with LoadModel, or deploy again",
                    model, serving, "; ".join(failures),
                )  # fmt: skip
            elif not_loaded and not deleted:
                # As an alias above: the whole new plan waits for its versions' loads.
                held_back = True
                log.info(
                    "the deployment of %r keeps serving %s until version %s %s loaded (serving.autoload "
                    "is off); load %s with %s",
                    model, sorted(old_versions) or self._served_undeployed(model),
                    ", ".join(str(v) for v in not_loaded), "is" if len(not_loaded) == 1 else "are",
                    "it" if len(not_loaded) == 1 else "them", _load_fix(model, UNVERSIONED, not_loaded[0]),
                )  # fmt: skip
            elif deleted or not warming:
                # Else the whole new plan waits for its versions' loads, as for a failure above.
                self._routers[model] = new_router
        if held_back:
            self._held_back.add(model)
        else:
            self._held_back.discard(model)
        still_served = {v for (m, _), v in self._aliases.items() if m == model}
        router = self._routers.get(model)
        if router is not None:
            still_served |= router.versions()
        # A member of an ensemble loaded or loading stays (the pool looks, under its lock). One a
        # load is under way for is unloaded once that load is done, without waiting here for it,
        # which would hold every model's refresh: a request routed to it before the targets moved
        # may be loading it (see _refuse_unless_routed). Unloaded only if ready by then (not
        # unloaded by another call, nor failed).
        with self._warm_lock:
            # Before the unloads: a warm load not begun yet finds its version no longer awaited.
            not_awaited = self._awaited.pop(model, set()) - awaited
            if awaited:
                self._awaited[model] = awaited
            # A failure is for the move to its version that this refresh just made or dropped:
            # kept, it would hold back a later move to that version, or to another artifact
            # registered under its number.
            for key in [key for key in self._warm_failures if key[0] == model and key[1] not in awaited]:
                del self._warm_failures[key]
        kept = self._kept.get(model, frozenset())
        for version in sorted(previously_served - still_served - awaited - gone - kept):
            if self.pool.unload_ready(model, version):
                log.info("unloaded version %s of %r after its targets moved", version, model)
        # Loaded (or loading) for a move that no longer comes: the targets moved elsewhere since, or
        # another of the new versions failed.
        for version in sorted(not_awaited - still_served - previously_served - gone - kept):
            if self.pool.unload_ready(model, version):
                log.info("unloaded version %s of %r: its targets no longer move to it", version, model)
        for version, artifact in sorted(replaced.items()):
            # Only the artifact listed when the source said the version was gone (loading then, or
            # ready), now or once a load of it under way is done, as above: a request may have
            # loaded the one registered under its number since.
            if artifact is not None and self.pool.unload_ready(model, version, artifact):
                log.info("unloaded version %s of %r: it was deleted", version, model)
            # A failed load of a deleted version would be listed, and refuse its number, forever
            # (one under way now, which fails later, the pool drops as it ends).
            self.pool.forget_failure(model, version, deleted=True)
        if settled:
            # A failure listed before its artifact was read (ModelPool.list_failure) is of none a
            # refresh could find replaced: its model may have been deleted and registered again.
            for entry in self.pool.list(model):
                if entry.state is LoadState.FAILED and not entry.artifact_sha256:
                    self.pool.forget_failure(model, entry.version, "")
        return settled

    def _deleted_versions(self, model: str) -> tuple[dict[int, str | None], bool]:
        """The versions of `model` that serving holds (listed in the pool, or a target's) and its
        source no longer has, each with the artifact listed under its number as the source was read
        (None: none listed, nothing to unload): deleted, or deleted with their model and registered
        again under their number (the source replaced the artifact); and whether the source could
        say for each."""
        # A version's run of failures is held too: kept after a retry took its listing away, it
        # would be kept for good once the version is deleted.
        held = {entry.version for entry in self.pool.list(model)} | self.pool.failure_runs(model)
        held |= {version for (m, _), version in self._aliases.items() if m == model}
        router = self._routers.get(model)
        if router is not None:
            held |= router.versions()
        gone: dict[int, str | None] = {}
        settled = True
        for version in held:
            # Listed before the read: what a request loads after it is not what the read found gone.
            listed = self._listed(model, version)
            artifact = listed.artifact_sha256 if listed is not None else None
            try:
                servable = self._source.servable(model, version, None)
            except NotFound:
                gone[version] = artifact
                continue
            except TesseraError:
                # The source cannot tell now (a replica's primary out of reach): keep serving it.
                settled = False
                continue
            # A failure listed before its artifact was read ("", see ModelPool.list_failure) is
            # of no artifact the source replaced (_swap_targets drops it).
            if artifact and artifact != servable.artifact_sha256:
                gone[version] = artifact
        return gone, settled

    def _warm_like(self, model: str, version: int, like: int) -> str | _Warm | None:
        """Load `version` with the config `like` was loaded with, if `like` is loaded (else a
        request loads it), on the warm loads' threads: a load takes seconds, which would hold every
        other model's refresh on the swaps' thread. Why it failed to load; None once it is loaded
        (a target may then move to it); UNDER_WAY while its load is, which queues a refresh of
        the model when done."""
        key = (model, version)
        if self.pool.get(model, version) is not None:
            # Loaded since its warm load failed (LoadModel's): the target moves to it.
            with self._warm_lock:
                for failed in [k for k in self._warm_failures if k[:2] == key]:
                    del self._warm_failures[failed]
            return None
        # Before the registry is read: a move without a warm load needs no read, nor is held back
        # by one that fails.
        current = self.pool.get(model, like)
        if current is None:
            return None
        if not self._autoload:
            # As Triton's explicit mode: nothing loads but by a load asked for (whose end queues a
            # refresh that moves the target: _route_after_load).
            return _Warm.NOT_LOADED
        try:
            servable = self._source.servable(model, version, None)
        except TesseraError as exc:
            return exc.message
        with self._warm_lock:
            # Every failure of its number goes, only its artifact's counts: a model deleted and
            # registered again numbers its versions anew.
            failures = {k[2]: self._warm_failures.pop(k) for k in list(self._warm_failures) if k[:2] == key}
        failure = failures.get(servable.artifact_sha256)
        if failure is not None:
            return failure
        listed = self._listed(model, version)
        if (
            listed is not None
            and listed.state is LoadState.FAILED
            and listed.artifact_sha256 == servable.artifact_sha256
        ):
            # As for a request (see autoload): loaded again only explicitly, or once unloaded.
            return listed.error
        # The runtime follows the new version's format (a canary of an ONNX export beside its
        # safetensors original runs on torch); everything else is copied.
        config = dataclasses.replace(current.config.as_request(), runtime="")
        with self._warm_lock:
            self._awaited.setdefault(model, set()).add(version)
            if key in self._warming:
                return _Warm.UNDER_WAY
            # A shadow load of the version under way is joined: a second load would wait on the
            # version's load lock, on a warm load's thread, and then keep the first's version.
            load = self._shadow_loads.get(key)
            if load is None:
                # A load under way (LoadModel's, with the operator's config) is waited for and
                # kept, its failure shared: loading the version again with the old one's config
                # would undo it.
                load = self._warm_loads.submit(
                    self._load_in_background,
                    key,
                    servable.artifact_sha256,
                    functools.partial(
                        self.pool.load,
                        servable,
                        config,
                        keep_loaded=True,
                        before_load=functools.partial(self._refuse_unless_wanted, key),
                    ),
                )
            self._warming[key] = load
        # Outside the lock, which the callback takes: it runs at once if the load is done.
        load.add_done_callback(functools.partial(self._warm_ended, key, servable.artifact_sha256))
        return _Warm.UNDER_WAY

    def _warm_ended(self, key: tuple[str, int], artifact_sha256: str, load: Future[None]) -> None:
        """The end of the load _warm_like started or joined; a refresh of its model follows, if a
        target awaits it."""
        if load.cancelled():  # the service closed
            with self._warm_lock:
                if self._warming.get(key) is load:
                    del self._warming[key]
            return
        model, version = key
        error = load.exception()
        with self._warm_lock:
            current = self._warming.get(key) is load
            if current:
                del self._warming[key]
            awaited = version in self._awaited.get(model, ())
            # Any failure holds the target back, as one on the swaps' thread did: a load that
            # raised unawaited would be started again by each refresh it queues. Not one refused
            # before a later warm load began (see _refuse_unless_wanted): that one says.
            if error is not None and current and awaited:
                reason = error.message if isinstance(error, TesseraError) else repr(error)
                self._warm_failures[(model, version, artifact_sha256)] = reason
        if awaited:
            self._queue_refresh(model)

    def _refuse_unless_wanted(self, key: tuple[str, int]) -> None:
        """NotFound unless a target of the model still awaits the version, or its deployment
        shadows it: a warm or a shadow load (each may have joined the other) loads it for both.
        Called holding its load lock just before that load loads it: a refresh that no longer
        awaits or shadows it says so before it unloads it (ModelPool.unload_ready), so the load
        either begins before that unload, or not at all. Refused, the load is no longer one that a
        later warm or shadow load joins."""
        model, version = key
        with self._warm_lock:
            if version in self._awaited.get(model, ()):
                return
        shadowed = self._shadowed(model, version)
        with self._warm_lock:
            if shadowed or version in self._awaited.get(model, ()):
                return
            self._warming.pop(key, None)
            self._shadow_loads.pop(key, None)
        raise NotFound(
            f"model {model!r} version {version} is no longer awaited by its targets, nor shadowed "
            "by its deployment"
        )

    def close(self) -> None:
        with self._refresh_lock:
            self._closed = True
        # In this order: refreshes (on _swaps) submit to _warm_loads, so _swaps is shut down first,
        # and _load_shadow checks _closed under _refresh_lock. Nothing may submit to _warm_loads
        # holding _warm_lock once closing: its shutdown below cancels the loads not begun under
        # the executor's lock, which submit takes too, and their ends take _warm_lock
        # (_warm_ended, _shadow_load_ended): a deadlock.
        self._swaps.shutdown(wait=True, cancel_futures=True)
        # Loads begun go on, and the pool's close waits for them; those not begun never will.
        # Those cancelled leave _warming and _shadow_loads as they end (_warm_ended, _shadow_load_ended).
        self._warm_loads.shutdown(wait=False, cancel_futures=True)
        with self._cache_lock:
            waiters = [done for pending in self._route_waiters.values() for _, done in pending]
            self._route_waiters.clear()
        for done in waiters:
            if done.set_running_or_notify_cancel():
                done.set_result(None)
        self.explainer.close()
        self.pool.close()


def _routed_by(model: str, alias: str) -> str:
    """What a route cache key routes, as the log names it."""
    if alias == UNVERSIONED:
        return f"the route of {model!r}'s requests naming no version"
    return f"alias {alias!r} of {model!r}"


def _move_back(alias: str, verb: str) -> str:
    """How an operator moves a route off a version that failed to load."""
    return "deploy a version that loads" if alias == UNVERSIONED else f"{verb} the alias"


def _load_fix(model: str, alias: str, version: int) -> str:
    """How an operator loads the version a route cache key names, serving.autoload off."""
    if alias == UNVERSIONED:
        return (
            f"RepositoryModelLoad (POST /v2/repository/models/{model}/load), which loads what its requests "
            "are routed to, or LoadModel"
        )
    return f"LoadModel naming alias {alias!r} or version {version}"


def _refresh_wait(failures: int) -> float:
    """Seconds before a refresh that failed `failures` times in a row runs again."""
    return min(SOURCE_RETRY_S * 2.0 ** (failures - 1), REFRESH_RETRY_MAX_S)


def _load_retry_wait(failures: int) -> float:
    """Seconds before a load that failed `failures` times in a row is tried again (see
    retry_failed_loads): none after the first (a hiccup), then doubling from 2 * SOURCE_RETRY_S."""
    return 0.0 if failures <= 1 else min(SOURCE_RETRY_S * 2.0 ** (failures - 1), LOAD_RETRY_MAX_S)


def _over_max_batch(model: str, entry: LoadedVersion, rows: int) -> InvalidArgument:
    assert entry.signature is not None
    limit = entry.config.max_batch_size
    # Triton's own words first: clients and scripts written against Triton look for them.
    return InvalidArgument(
        f"inference request batch-size must be <= {limit} for {model!r}: input "
        f"{entry.signature.inputs[0].name!r} has {rows} rows, and {entry.label} is loaded with "
        f"max_batch_size {limit}; split the request, or load the version with a larger "
        "max_batch_size (tessera.v1.Inference/LoadModel)"
    )


def _cache_answer(cache: VersionCache, key: bytes, lookup_ns: int, done: Answer) -> None:
    failed = done.cancelled() or done.exception() is not None
    cache.insert(key, lookup_ns, None if failed else done.result().outputs)


class _Once:
    """Calls `fn` with the last of two futures to finish (the first call finds one not done)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._calls = 0

    def __call__(self, future: Answer) -> None:
        with self._lock:
            self._calls += 1
            last = self._calls == 2
        if last:
            self._fn()
