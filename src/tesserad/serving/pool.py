"""The pool of loaded model versions: load and warm up, swap a config in place, drain and free."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tesserad.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Lasting,
    NotFound,
    TesseraError,
    Unavailable,
    logged_internal,
)
from tesserad.serving.batcher import DynamicBatcher
from tesserad.serving.ensemble import EnsemblePlan, EnsembleRuntime
from tesserad.serving.response_cache import ResponseCache, VersionCache, version_identity
from tesserad.serving.runtimes import (
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    cuda_index,
    default_device,
    missing_device,
)
from tesserad.serving.signature import Signature, sample_inputs
from tesserad.serving.stats import ServingMetrics, ServingStats

log = logging.getLogger(__name__)

# The longest wait (seconds) before a load that keeps failing for a cause that passes is tried
# again (see InferenceService.retry_failed_loads): each try logs a failed load.
LOAD_RETRY_MAX_S = 30.0
# A version's failure this long (seconds) after its last one starts a new run of failures in a
# row: the cause of the last has passed meanwhile, and a new one is retried at once again.
FAILURE_RUN_GAP_S = 2 * LOAD_RETRY_MAX_S


class Retry(Enum):
    """Whether a failed load may pass when tried again, and how soon it is worth trying."""

    NEVER = "never"  # the artifact or the runtime is at fault
    SOON = "soon"  # the artifact's source could not be reached (briefly gone, a cut connection)
    LATER = "later"  # its source refused for a cause fixed there (errors.Lasting)


def retry_for(error: TesseraError) -> Retry:
    if isinstance(error, Lasting):
        return Retry.LATER
    return Retry.SOON if isinstance(error, Unavailable | DeadlineExceeded) else Retry.NEVER


class LoadState(Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


_LOADING = (LoadState.LOADING, LoadState.WARMING)


RuntimeName = Literal["onnx", "torch", "ensemble"]
# A load's runtime: "" runs the version on the one its format takes.
RuntimeChoice = RuntimeName | Literal[""]


@dataclass(frozen=True)
class ServingConfig:
    """How a load asks a version to run; zero or empty fields take the pool's defaults, and so do
    None ones, which are None only where 0 is a value of its own. Only effective_config reads it:
    past it, a version runs with an EffectiveConfig."""

    runtime: RuntimeChoice = ""
    device: str = ""
    instances: int = 0
    max_batch_size: int = 0
    max_queue_delay_us: int | None = None
    max_queue_size: int = 0
    warmup_runs: int | None = None
    # 0: on a CPU the cores shared among the instances, on a GPU the runtime's own default.
    intra_op_threads: int | None = None
    # Answer requests identical to an earlier one from the daemon's response cache: for a version
    # whose outputs depend on its inputs alone (see tesserad.serving.response_cache). None: off
    # unless the version's saved config turns it on; False turns a saved True off.
    response_cache: bool | None = None


@dataclass(frozen=True)
class EffectiveConfig:
    """How a loaded version runs: a ServingConfig with the pool's defaults filled in
    (effective_config makes it). Two loads with equal ones run alike."""

    # "" only in the listing of a load that failed before its version was read (list_failure).
    runtime: RuntimeChoice
    device: str  # as asked ("cpu", "cuda" or "cuda:N"), else the default device
    instances: int
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int
    warmup_runs: int
    # 0 only on a GPU: the runtime's own default.
    intra_op_threads: int
    response_cache: bool

    def as_request(self) -> ServingConfig:
        """The ServingConfig that loads a version with this config again, whatever the defaults."""
        return ServingConfig(
            runtime=self.runtime,
            device=self.device,
            instances=self.instances,
            max_batch_size=self.max_batch_size,
            max_queue_delay_us=self.max_queue_delay_us,
            max_queue_size=self.max_queue_size,
            warmup_runs=self.warmup_runs,
            intra_op_threads=self.intra_op_threads,
            response_cache=self.response_cache,
        )


# Instances per version when neither the load nor the daemon sets them: two on a CPU, as Triton
# gives a CPU model (cnn4d on 2 cores, concurrency 8 and 32: 1.11-1.24x the requests/s of one
# instance; at concurrency 1, 0.95x, within the machine's noise), and one per GPU.
CPU_INSTANCES = 2


@dataclass(frozen=True)
class ServingDefaults:
    # 0: CPU_INSTANCES on a CPU, 1 on a GPU.
    instances: int = 0
    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024
    warmup_runs: int = 2
    # 0: on a CPU, the cores shared among the instances (one each with two instances on two
    # cores: cnn4d in-process, 0.85-0.9x the CPU per row of two threads, which wake and wait on
    # each other many times a run); on a GPU, the runtime's own default.
    intra_op_threads: int = 0
    # A lone request runs in the caller's thread only if a batch takes at most this long.
    inline_max_compute_us: float = 500.0
    # How long an unloaded or swapped-out version may take to finish its queue.
    drain_timeout_s: float = 30.0
    # Bytes of the response cache shared by the versions loaded with response_cache; 0: none.
    response_cache_size: int = 0


# field -> (low, high): the accepted range of an explicit value (not 0 where 0 is the default).
CONFIG_LIMITS = {
    "instances": (1, 64),
    "max_batch_size": (1, 65536),
    "max_queue_delay_us": (0, 10_000_000),
    "max_queue_size": (1, 1_000_000),
    "warmup_runs": (0, 1000),
    "intra_op_threads": (0, 1024),
}


@dataclass(frozen=True)
class ServableVersion:
    """What the pool needs to load a version, as the registry describes it."""

    model: str
    version: int
    format: str  # "onnx", "safetensors" or "ensemble"
    # Opens the artifact's file (hash-checked by the registry) for the duration of a load.
    open_artifact: Callable[[], AbstractContextManager[Path]]
    signature: Signature | None = None
    architecture: Mapping[str, Any] | None = None
    # An ensemble's members, read when it loads (FailedPrecondition naming a member that is gone).
    ensemble: Callable[[], EnsemblePlan] | None = None
    # (model, version) its lineage names as parent (an ONNX export's torch source), if any.
    parent: tuple[str, int] | None = None
    # The parent was deleted: the number may since name a recreated model's unrelated version.
    parent_deleted: bool = False
    # The artifact's content hash: part of a cached answer's key, so that a version deleted and
    # registered again under its number never finds the old artifact's answers.
    artifact_sha256: str = ""
    # The version's saved serving config (LoadModel save_config): the fields a load that does not
    # set them takes (see over_saved).
    saved_config: ServingConfig = ServingConfig()


def over_saved(config: ServingConfig, saved: ServingConfig) -> ServingConfig:
    """`config` with each field it leaves unset taken from `saved`: explicit fields win."""
    return dataclasses.replace(saved, **config_fields(config))


def config_fields(config: ServingConfig) -> dict[str, Any]:
    """The fields `config` sets (those not as ServingConfig() leaves them): what a save stores."""
    unset = ServingConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(unset, f.name)
    }


def config_of_fields(fields: Mapping[str, Any]) -> ServingConfig:
    """The ServingConfig a saved config's fields make; a field this tesserad does not know (a newer
    one saved it) is left out, and takes the default."""
    known = {f.name for f in dataclasses.fields(ServingConfig)}
    return ServingConfig(**{name: value for name, value in fields.items() if name in known})


def servable_file(model: str, version: int, format: str, path: Path, **more: Any) -> ServableVersion:
    """A version whose artifact is a plain file (tests, benchmarks)."""
    return ServableVersion(model, version, format, lambda: nullcontext(path), **more)


def effective_config(config: ServingConfig, defaults: ServingDefaults, format: str) -> EffectiveConfig:
    """The config a load asks for, with every default filled in: the one place a request meets
    the defaults. InvalidArgument for a value out of range."""
    for name, (low, high) in CONFIG_LIMITS.items():
        value = getattr(config, name)
        if value and not low <= value <= high:
            default = " (0 for the default)" if low else ""
            raise InvalidArgument(f"config.{name} must be in {low}..{high}{default}, got {value}")
    if format == "ensemble":
        if config.runtime not in ("", "ensemble"):
            raise FailedPrecondition(
                f"an ensemble runs on its members' runtimes; load it without runtime {config.runtime}"
            )
        runtime: RuntimeName = "ensemble"
    else:
        runtime = config.runtime or ("onnx" if format == "onnx" else "torch")
    if config.response_cache and runtime == "ensemble":
        # Its members may be swapped under it (loaded again, or another runtime): cache them.
        raise FailedPrecondition(
            "an ensemble's answers are not cached: load its members with response_cache instead"
        )
    if config.response_cache and not defaults.response_cache_size:
        raise FailedPrecondition(
            "response_cache needs the daemon's response cache: set serving.response_cache_size "
            "(bytes, e.g. 256MiB) and restart tesserad"
        )
    if runtime == "onnx" and format != "onnx":
        raise FailedPrecondition(
            "the onnx runtime needs an ONNX version; this version is safetensors: export it with "
            "Registry.ExportOnnx, or load it with runtime torch"
        )
    if runtime == "torch" and format != "safetensors":
        raise FailedPrecondition(
            "the torch runtime needs a safetensors version with an architecture; load this ONNX "
            "version with runtime onnx"
        )
    device = config.device or default_device()
    # Here, not as its runtime loads: a device misspelt must leave no failed load listed.
    cuda_index(device)
    instances = config.instances or defaults.instances or (CPU_INSTANCES if device == "cpu" else 1)
    threads = _given(config.intra_op_threads, defaults.intra_op_threads)
    return EffectiveConfig(
        runtime=runtime,
        device=device,
        instances=instances,
        max_batch_size=config.max_batch_size or defaults.max_batch_size,
        max_queue_delay_us=_given(config.max_queue_delay_us, defaults.max_queue_delay_us),
        max_queue_size=config.max_queue_size or defaults.max_queue_size,
        warmup_runs=_given(config.warmup_runs, defaults.warmup_runs),
        intra_op_threads=threads or (max(1, (os.cpu_count() or 1) // instances) if device == "cpu" else 0),
        response_cache=bool(config.response_cache),
    )


# The runtime a load that names none runs a version of each format on (see effective_config).
_FORMAT_RUNTIMES: dict[str, RuntimeName] = {"onnx": "onnx", "safetensors": "torch", "ensemble": "ensemble"}


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class UnexpectedError:
    """The unexpected error a version's loads last raised in its run of failures (see
    ModelPool.unexpected_load_error)."""

    # The artifact the load was for ("" when none was read yet), the error's type and message.
    error: tuple[str, str, str]
    # What its failure was listed as (it names the log's record of its traceback).
    listed: str
    # How many times in a row it came.
    times: int


@dataclass(frozen=True, slots=True)
class FailureRun:
    """A version's run of failed loads in a row: a retry waits the longer for each (see
    InferenceService.retry_failed_loads). ModelPool ends it once a load of the version succeeds,
    or the version is deleted or unloaded, or FAILURE_RUN_GAP_S after its last failure."""

    # The artifact its last counted failure was of, and how many of that artifact's loads failed
    # in a row (0: none counted yet, only an unexpected error noted).
    artifact_sha256: str
    failures: int
    # When (ModelPool._clock) its last failure came, counted or an unexpected error.
    last_at: float
    # The unexpected error its loads last raised, if any.
    unexpected: UnexpectedError | None = None

    def stale(self, now: float) -> bool:
        """Whether a failure at `now` starts a new run: the cause of the last has passed since."""
        return now - self.last_at >= FAILURE_RUN_GAP_S

    def counted(self, artifact_sha256: str, now: float) -> FailureRun:
        """The run with a failed load of `artifact_sha256` at `now`; one of another artifact than
        the last counted starts the count again."""
        failures = self.failures + 1 if artifact_sha256 == self.artifact_sha256 else 1
        return dataclasses.replace(self, artifact_sha256=artifact_sha256, failures=failures, last_at=now)

    def unexpected_again(self, error: tuple[str, str, str], now: float) -> FailureRun | None:
        """The run with `error` come again at `now`, counted; None when it is not the unexpected
        error the run last noted."""
        if self.unexpected is None or self.unexpected.error != error:
            return None
        again = dataclasses.replace(self.unexpected, times=self.unexpected.times + 1)
        return dataclasses.replace(self, unexpected=again, last_at=now)

    def unexpected_noted(self, error: tuple[str, str, str], listed: str, now: float) -> FailureRun:
        """The run with `error` come first of its kind at `now`, listed as `listed`."""
        return dataclasses.replace(self, unexpected=UnexpectedError(error, listed, 1), last_at=now)


class LoadedVersion:
    """A version in the pool; `batcher` is set once it is READY."""

    def __init__(
        self, model: str, version: int, artifact_sha256: str, config: EffectiveConfig, stats: ServingStats
    ) -> None:
        self.model = model
        self.version = version
        # Which artifact runs: a model deleted and registered again numbers its versions from 1
        # again, so the number alone does not tell the new version 1 from the old one.
        self.artifact_sha256 = artifact_sha256
        self.config = config
        # The fields of `config` its load set, itself or from the version's saved config (the
        # rest are the pool's defaults): what `tessera load --keep-config --save` saves.
        self.requested = ServingConfig()
        self.stats = stats
        self.state = LoadState.LOADING
        self.signature: Signature | None = None
        self.memory_bytes = 0
        self.loaded_at = time.time()
        self.error = ""
        # Of a failed load: whether trying again may help (see Retry).
        self.retry = Retry.NEVER
        # Of a failed load listed: how many loads of its artifact under its number failed in a
        # row, this one included (see ModelPool._count_failure).
        self.failures_in_a_row = 0
        self.batcher: DynamicBatcher | None = None
        # Built once: every request's validation takes it (formatting it cost ~3 us a request).
        self.label = f"model {model!r} version {version}"
        # For an ensemble: its members' (model, version), loaded in the pool as themselves.
        self.members: tuple[tuple[str, int], ...] = ()
        # Loaded only because an ensemble needed it, and never asked for as itself since: an
        # unload of its ensembles with their dependents takes it too (see unload_member).
        self.member_only = False
        # Set for a version loaded with response_cache; the request path looks only at this.
        self.cache: VersionCache | None = None
        # The serving layer's count of registry changes when this version's artifact was last
        # found still registered under its number (see InferenceService.submit); 0: never since
        # it loaded.
        self.checked_at_change = 0


class ModelPool:
    def __init__(
        self,
        defaults: ServingDefaults,
        metrics: ServingMetrics | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.defaults = defaults
        self._metrics = metrics
        # When failures came (see FAILURE_RUN_GAP_S).
        self._clock = clock
        self._lock = threading.Lock()
        # READY versions, which take traffic.
        self._ready: dict[tuple[str, int], LoadedVersion] = {}
        # Every version to list: ready, loading, warming, draining or failed.
        self._listed: dict[tuple[str, int], LoadedVersion] = {}
        # Loads of one version are serialised; different versions load in parallel. A version's
        # lock is kept while someone holds or waits for it (counted in _load_lock_users), not
        # once per version ever loaded.
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._load_lock_users: dict[tuple[str, int], int] = {}
        # Versions to unload once the load or unload of them under way is done (see unload_ready),
        # each with the artifacts to unload (None: whichever is ready).
        self._unload_once_done: dict[tuple[str, int], set[str | None]] = {}
        # Versions unloaded since the daemon started: the repository index lists them as Triton
        # does (UNAVAILABLE, "unloaded") rather than forgetting they were ever served.
        self._unloaded: set[tuple[str, int]] = set()
        # (model, version) -> its run of failed loads, which outlives the listing a retry forgets
        # (see FailureRun), and holds the unexpected error its loads last raised (see
        # unexpected_load_error).
        self._failure_runs: dict[tuple[str, int], FailureRun] = {}
        # (model, version, field) whose saved value this daemon cannot run was warned of (see
        # over_saved): once each, not at every request's load.
        self._unrunnable_warned: set[tuple[str, int, str]] = set()
        self.response_cache = (
            ResponseCache(defaults.response_cache_size) if defaults.response_cache_size else None
        )
        self._closed = False

    def get(self, model: str, version: int) -> LoadedVersion | None:
        """The READY version, or None."""
        return self._ready.get((model, version))

    def list(self, model: str = "") -> list[LoadedVersion]:
        with self._lock:
            entries = list(self._listed.values())
        return sorted(
            (e for e in entries if not model or e.model == model), key=lambda e: (e.model, e.version)
        )

    def ready_versions(self, model: str) -> builtins.list[int]:
        return sorted(v for (m, v) in list(self._ready) if m == model)

    def unloaded_versions(self, model: str) -> builtins.list[int]:
        """Versions of `model` unloaded since the daemon started and not listed (loading) again."""
        with self._lock:
            return sorted(v for (m, v) in self._unloaded if m == model and (m, v) not in self._listed)

    def over_saved(self, config: ServingConfig, servable: ServableVersion) -> ServingConfig:
        """`config` over the version's saved config (module over_saved), less the saved fields this
        daemon cannot run, which take the default: the primary's or another machine's save (a GPU
        primary's device at a CPU replica) must not fail every load of the version here, where no
        load could save around it (a Triton server's config.pbtxt is its own; a saved config serves
        every machine). A field `config` sets fails as asked."""
        saved = servable.saved_config
        explicit = config_fields(config)
        # field -> (the saved value as the warning names it, why it cannot run, what runs instead)
        unrunnable: dict[str, tuple[str, str, str]] = {}
        if (
            saved.response_cache
            and "response_cache" not in explicit
            and not self.defaults.response_cache_size
        ):
            unrunnable["response_cache"] = (
                "response_cache",
                "this daemon has no response cache (serving.response_cache_size 0)",
                "without the response cache",
            )
        if saved.device and "device" not in explicit:
            runtime = over_saved(config, saved).runtime or _FORMAT_RUNTIMES.get(servable.format, "torch")
            why = missing_device(saved.device, runtime)
            if why:
                unrunnable["device"] = (
                    f"device {saved.device}",
                    why,
                    f"on {default_device()}, the default device",
                )
        for field, (value, why, instead) in unrunnable.items():
            warned = (servable.model, servable.version, field)
            with self._lock:
                first = warned not in self._unrunnable_warned
                self._unrunnable_warned.add(warned)
            if first:
                log.warning(
                    "model %r version %s: its saved serving config's %s is left out, as %s; "
                    "loads of it here run %s",
                    servable.model,
                    servable.version,
                    value,
                    why,
                    instead,
                )
        runnable = dataclasses.replace(
            saved, **{field: getattr(ServingConfig(), field) for field in unrunnable}
        )
        return over_saved(config, runnable)

    def load(
        self,
        servable: ServableVersion,
        config: ServingConfig,
        *,
        keep_loaded: bool = False,
        as_member: bool = False,
        before_load: Callable[[], None] | None = None,
        after_load: Callable[[], None] | None = None,
    ) -> LoadedVersion:
        """Load and warm a version; a loaded version with another config is swapped without a gap.

        `keep_loaded`: a version loaded by then (another load of it may be under way, with its
        own config) is returned as it is: for loads that need the version served, not configured.
        Such a load that waited for another's first load of the version shares its failure: the
        same load again, once per waiting request, would fail as slowly in turn.
        `as_member`: loaded for an ensemble that needs it (LoadedVersion.member_only); any other
        load makes it a version loaded for itself.
        `before_load`: called holding the version's load lock (see unload_ready) just before this
        call loads it (not when it returns a version loaded already); what it raises stops the load.
        `after_load`: called holding the version's load lock once the version is loaded, by this call
        or before it, so that no other load of it comes in between; what it raises is raised, the
        version staying loaded.
        A version that unload_ready marked while this load was under way is returned unloaded (its
        batcher None), as one unloaded just after: the caller routes its request again.
        """
        # What a `--keep-config --save` saves back: the saved fields this daemon cannot run kept,
        # so that a primary that lost its GPU does not erase the device its replicas run on.
        requested = over_saved(config, servable.saved_config)
        effective = effective_config(self.over_saved(config, servable), self.defaults, servable.format)
        key = (servable.model, servable.version)
        with self._lock:
            self._refuse_when_closed(servable)
            listed = self._listed.get(key)
        under_way = listed if listed is not None and listed.state in _LOADING else None
        with self._holding_load_lock(key):
            # Again: a close before this load held the lock found it free, or not yet taken.
            with self._lock:
                self._refuse_when_closed(servable)
            current = self._ready.get(key)
            if current is not None and current.artifact_sha256 != servable.artifact_sha256:
                # Another artifact under the number (its model was deleted and registered again):
                # the old one stops answering now, and its figures and cached answers go with it.
                self._unload(key)
                current = None
            if current is not None and (keep_loaded or current.config == effective):
                current.member_only = current.member_only and as_member
                if not keep_loaded:
                    # Asked for as it runs: the fields set are this load's now.
                    current.requested = requested
                if after_load is not None:
                    after_load()
                return current
            if keep_loaded and under_way is not None and under_way.state is LoadState.FAILED:
                raise FailedPrecondition(under_way.error)
            if before_load is not None:
                before_load()
            stats = current.stats if current is not None else ServingStats(*key, self._metrics)
            entry = LoadedVersion(
                servable.model, servable.version, servable.artifact_sha256, effective, stats
            )
            entry.requested = requested
            entry.member_only = as_member and (current is None or current.member_only)
            if effective.response_cache and self.response_cache is not None:
                identity = version_identity(
                    servable.model,
                    servable.version,
                    servable.artifact_sha256,
                    effective.runtime,
                    effective.device,
                )
                entry.cache = VersionCache(self.response_cache, identity, stats)
            if current is None:
                with self._lock:
                    self._listed[key] = entry
            try:
                self._start(entry, servable)
            except Exception as exc:
                # An unexpected error (a disk's) fails the load too: listed as loading, the version
                # would refuse requests as still loading forever.
                error = (
                    exc
                    if isinstance(exc, TesseraError)
                    else self.unexpected_load_error(*key, servable.artifact_sha256, exc)
                )
                # Failed and counted at once: a retry pass (InferenceService.retry_failed_loads)
                # in between would take it for the first failure of its run, and retry it at once.
                with self._lock:
                    entry.state = LoadState.FAILED
                    entry.error = error.message
                    entry.retry = retry_for(error)
                    if self._listed.get(key) is entry:
                        self._count_failure(entry)
                if error is exc:
                    # An unexpected error is logged already: with its traceback, or counted.
                    log.warning("loading %s failed: %s", entry.label, error.message)
                if current is None and self._metrics is not None:
                    self._metrics.forget(stats)
                # Failed, it is no one's ensemble: the members loaded only for it would stay
                # loaded, for an ensemble that requests do not load again. A member whose own load
                # failed stays listed with its reason.
                for member in entry.members:
                    if self.get(*member) is not None:
                        self.unload_member(*member)
                if error is exc:
                    raise
                # The error the listing shows, which names the log's record of the cause.
                raise error from exc
            with self._lock:
                self._ready[key] = entry
                self._listed[key] = entry
                self._end_failure_run(key)
            log.info("serving %s", entry.label, extra={"config": dataclasses.asdict(effective)})
            if current is not None:
                self._drain(current)
            if after_load is not None:
                after_load()
            return entry

    def unload(self, model: str, version: int) -> LoadedVersion | None:
        """Stop routing to the version, let its queue finish, free it. A load or unload of it under
        way is waited for first: the load's version is then unloaded, and after the unload it is
        NotFound (not loaded), as a load that finished later would leave it serving, and two
        unloads at once would drain it twice. Asked for (UnloadModel), it ends the version's run
        of failures too, listed or not: a later load's failure is a first again, retried at once.
        None when the version was not listed but had a run, which is all it ended (a retry pass
        takes a failed listing away and keeps its run); NotFound when it had neither."""
        key = (model, version)
        with self._holding_load_lock(key):
            with self._lock:
                if key not in self._listed and self._failure_run(key, self._clock()) is not None:
                    self._end_failure_run(key)
                    return None
            return self._unload(key, end_failure_run=True)

    def unload_member(self, model: str, version: int) -> bool:
        """Unload the version if an ensemble's load loaded it, no load asked for it as itself,
        and no loaded ensemble has it as a member (any more); whether it was unloaded."""
        key = (model, version)
        with self._holding_load_lock(key):
            entry = self._listed.get(key)
            if entry is None or not entry.member_only or key in self.ensemble_members():
                return False
            self._unload(key)
            return True

    def unload_ready(self, model: str, version: int, artifact_sha256: str | None = None) -> bool:
        """Unload the version if it is ready and no ensemble loaded or loading has it as a member
        (the ensemble would load it again on its next request); with `artifact_sha256` (found
        deleted), only that artifact, member or not. Whether it was unloaded now: while a load or
        unload of it is under way it is only marked, and the last of those to finish unloads it
        so. A load that began before its caller stopped routing to the version (see
        `before_load`), or found it deleted, must not leave it loaded after; and the caller, a
        refresh on the one thread that runs them all, must not wait for a load that may take
        seconds."""
        key = (model, version)
        with ExitStack() as holding:
            with self._lock:
                self._unload_once_done.setdefault(key, set()).add(artifact_sha256)
                if key in self._load_lock_users:
                    return False
                # Taken before _lock is let go, so that a load cannot take it first and unload the
                # version marked here. No one else holds or waits for it (a new lock, which no one
                # can join without _lock): taking it under _lock waits for no one.
                holding.enter_context(self._holding_joined(key, self._join_load_lock(key)))
            return self._unload_marked(key)

    def unload_replaced(self, entry: LoadedVersion) -> bool:
        """Unload `entry` if it is still the version listed under its number: another call may
        have unloaded it meanwhile, or a load of the artifact that replaced it (its model deleted
        and registered again) done so, and that one must stay. Whether it was unloaded."""
        key = (entry.model, entry.version)
        with self._holding_load_lock(key):
            if self._listed.get(key) is not entry:
                return False
            self._unload(key)
            return True

    def _holding_load_lock(self, key: tuple[str, int]) -> AbstractContextManager[None]:
        """Hold the version's load lock (see load and unload); it is dropped once no one holds
        or waits for it: a later taker makes a new one, as no one can hold the old."""
        with self._lock:
            load_lock = self._join_load_lock(key)
        return self._holding_joined(key, load_lock)

    def _join_load_lock(self, key: tuple[str, int]) -> threading.Lock:
        """The version's load lock, counted as waited for; called with _lock held."""
        load_lock = self._load_locks.setdefault(key, threading.Lock())
        self._load_lock_users[key] = self._load_lock_users.get(key, 0) + 1
        return load_lock

    @contextmanager
    def _holding_joined(self, key: tuple[str, int], load_lock: threading.Lock) -> Iterator[None]:
        """Hold `load_lock`, joined by _join_load_lock; before it is let go, the version is
        unloaded if unload_ready marked it meanwhile."""
        try:
            with load_lock:
                try:
                    yield
                finally:
                    self._unload_marked_later(key)
        finally:
            # Marked after the look above, with no one else left to look: look again.
            while not self._leave_load_lock(key):
                with load_lock:
                    self._unload_marked_later(key)

    def _leave_load_lock(self, key: tuple[str, int]) -> bool:
        """Stop counting a user of the version's load lock, unless the version is marked to unload
        and that user is the last (False: it is to unload it)."""
        with self._lock:
            users = self._load_lock_users[key] - 1
            if users == 0 and key in self._unload_once_done:
                return False
            if users:
                self._load_lock_users[key] = users
            else:
                del self._load_lock_users[key]
                del self._load_locks[key]
            return True

    def _unload_marked(self, key: tuple[str, int]) -> bool:
        """Unload the version if unload_ready marked it and it is (still) one unload_ready would
        unload; whether it did. A failed load of an artifact marked deleted is no longer listed:
        it would refuse requests for its number (see forget_failure). A deleted artifact stays
        marked for the loads waiting behind this one. Called holding its load lock."""
        with self._lock:
            artifacts = self._unload_once_done.pop(key, None)
            if artifacts is None:
                return False
            deleted_artifacts = artifacts - {None}
            if deleted_artifacts and self._load_lock_users[key] > 1:
                # An artifact stays deleted: a load waiting for the lock may load it, or fail to,
                # after this one, and must leave it unlisted too.
                self._unload_once_done[key] = deleted_artifacts
            entry = self._ready.get(key)
            if entry is None:
                failed = self._listed.get(key)
                if (
                    failed is not None
                    and failed.state is LoadState.FAILED
                    and failed.artifact_sha256 in artifacts
                ):
                    del self._listed[key]
                    self._end_failure_run(key)
                return False
            deleted = entry.artifact_sha256 in artifacts
            if not deleted and (None not in artifacts or key in self._members()):
                return False
        self._unload(key)
        return True

    def _unload_marked_later(self, key: tuple[str, int]) -> None:
        """_unload_marked for the load or unload that unload_ready found under way."""
        if self._unload_marked(key):
            log.info(
                "unloaded model %r version %s once the load or unload of it under way was done: "
                "serving's routes left it, or it was deleted",
                *key,
            )

    def _unload(self, key: tuple[str, int], end_failure_run: bool = False) -> LoadedVersion:
        """unload of a listed version, for a caller that holds its load lock; with
        `end_failure_run`, its run of failures ends as its listing goes."""
        model, version = key
        with self._lock:
            entry = self._listed.get(key)
            if entry is None:
                loaded = ", ".join(str(v) for m, v in sorted(self._listed) if m == model) or "none"
                raise NotFound(f"model {model!r} version {version} is not loaded (loaded versions: {loaded})")
            self._ready.pop(key, None)
        self._drain(entry)
        if entry.cache is not None and self.response_cache is not None:
            self.response_cache.forget(entry.cache.identity)
        with self._lock:
            if self._listed.get(key) is entry:
                del self._listed[key]
                self._unloaded.add(key)
            # In the section that takes the listing away: a failure listed after it (a background
            # load's, list_failure) starts a new run rather than counting on from this one.
            if end_failure_run:
                self._end_failure_run(key)
        if self._metrics is not None and key not in self._ready:
            self._metrics.forget(entry.stats)
        return entry

    def list_failure(self, model: str, version: int, error: TesseraError, artifact_sha256: str) -> bool:
        """List the version FAILED for `error`, which ended a load of it before this pool began
        one (its source failed unexpectedly): ListLoaded and the repository index show why, and
        requests do not load it again (see InferenceService.autoload) until it is retried.
        `artifact_sha256`: the artifact the load was for, "" when none was read yet. Not when it
        is listed already: a load that listed it says more. Whether it was listed."""
        config = dataclasses.replace(effective_config(ServingConfig(), self.defaults, "onnx"), runtime="")
        # LoadModel, UnloadModel or the version's deletion takes the listing away, as any failed
        # load's; a refresh of its model also takes one of no artifact away (see
        # InferenceService._swap_targets).
        entry = LoadedVersion(model, version, artifact_sha256, config, ServingStats(model, version, None))
        entry.state = LoadState.FAILED
        entry.error = error.message
        # Retried soon (InferenceService.retry_failed_loads): such a cause may pass (a disk hiccup),
        # and a listing for good would refuse every request for the version until LoadModel.
        entry.retry = Retry.SOON
        with self._lock:
            if (model, version) in self._listed:
                return False
            self._listed[(model, version)] = entry
            self._count_failure(entry)
            return True

    def _count_failure(self, entry: LoadedVersion) -> None:
        """Count `entry`, a failed load just listed, in its version's run of failures (one of
        another artifact, or long after the last, starts a new run); called with _lock held."""
        key = (entry.model, entry.version)
        now = self._clock()
        run = (self._failure_run(key, now) or FailureRun("", 0, now)).counted(entry.artifact_sha256, now)
        self._failure_runs[key] = run
        entry.failures_in_a_row = run.failures

    def _failure_run(self, key: tuple[str, int], now: float) -> FailureRun | None:
        """The version's run of failures that a failure at `now` goes on; None when it has none,
        or one so old that it is ended here (see FailureRun.stale). Called with _lock held."""
        run = self._failure_runs.get(key)
        if run is not None and run.stale(now):
            del self._failure_runs[key]
            return None
        return run

    def _end_failure_run(self, key: tuple[str, int]) -> None:
        """Forget the version's run of failures and its unexpected error: a load of it succeeded,
        or it was deleted or unloaded; called with _lock held."""
        self._failure_runs.pop(key, None)

    def unexpected_load_error(
        self, model: str, version: int, artifact_sha256: str, exc: Exception
    ) -> Internal:
        """The error to list for `exc`, which a load of the version (of `artifact_sha256`, "" when
        none was read yet) raised unexpectedly, in the pool or in the background load that began
        it. The first of a run of the same error (type and message) is logged with its traceback
        under a new error id, each repeat in a line that says how many times in a row it came and
        is listed with that id: a disk or registry unreadable for long would log a traceback at
        each retry of the load."""
        key = (model, version)
        error = (artifact_sha256, type(exc).__qualname__, str(exc))
        with self._lock:
            now = self._clock()
            run = self._failure_run(key, now)
            again = run.unexpected_again(error, now) if run is not None else None
            if again is not None:
                self._failure_runs[key] = again
        repeated = again.unexpected if again is not None else None
        if repeated is None:
            listed = logged_internal(
                log, f"loading model {model!r} version {version}", exc, model=model, version=version
            ).message
            with self._lock:
                now = self._clock()
                run = self._failure_run(key, now) or FailureRun("", 0, now)
                self._failure_runs[key] = run.unexpected_noted(error, listed, now)
            return Internal(listed)
        log.warning(
            "loading model %r version %s failed again with the same unexpected error (%s times in a "
            "row): %s: %s; %s",
            model, version, repeated.times, error[1], error[2], repeated.listed,
            extra={"model": model, "version": version, "reason": repeated.listed},
        )  # fmt: skip
        return Internal(repeated.listed)

    def failure_runs(self, model: str) -> set[int]:
        """The versions of `model` with a run of failures (or an unexpected error) kept, listed or
        not: a refresh that finds one deleted ends it (see forget_failure)."""
        with self._lock:
            return {v for (m, v) in self._failure_runs if m == model}

    def forget_listed_failure(self, entry: LoadedVersion, retry: Collection[Retry]) -> bool:
        """Drop `entry`'s failed listing if it is still the one listed under its number and its
        retry class is in `retry`: a retry pass must not take away the failure of a load begun
        since it looked (another pass's retry). Whether it was dropped."""
        key = (entry.model, entry.version)
        with self._lock:
            if (
                self._listed.get(key) is not entry
                or entry.state is not LoadState.FAILED
                or entry.retry not in retry
            ):
                return False
            del self._listed[key]
            return True

    def forget_failure(
        self,
        model: str,
        version: int,
        artifact_sha256: str | None = None,
        retry: Collection[Retry] | None = None,
        *,
        deleted: bool = False,
    ) -> bool:
        """Drop the version's failed listing, so that loads of it are no longer refused for the
        failure; only one of `artifact_sha256`, and only one whose retry class is in `retry`,
        when given (checked under the lock: a failure listed since the caller looked stays).
        Its run of failures in a row goes on (a retry's next failure waits the longer), unless
        the version was `deleted` (or its artifact replaced): that ends it, listed or not.
        False when it is not listed as failed (any more)."""
        key = (model, version)
        with self._lock:
            if deleted:
                self._end_failure_run(key)
            entry = self._listed.get(key)
            if entry is None or entry.state is not LoadState.FAILED:
                return False
            if artifact_sha256 is not None and entry.artifact_sha256 != artifact_sha256:
                return False
            if retry is not None and entry.retry not in retry:
                return False
            del self._listed[key]
            return True

    def ensemble_members(self) -> set[tuple[str, int]]:
        """(model, version) of every member of an ensemble loaded or loading; not of one whose
        load failed, which requests do not load again."""
        with self._lock:
            return self._members()

    def _members(self) -> set[tuple[str, int]]:
        """ensemble_members, for a caller that holds _lock."""
        return {
            key
            for entry in self._listed.values()
            if entry.state is not LoadState.FAILED
            for key in entry.members
        }

    def _refuse_when_closed(self, servable: ServableVersion) -> None:
        if self._closed:
            raise Unavailable(
                f"cannot load model {servable.model!r} version {servable.version}: tesserad is "
                "stopping; retry once it runs again"
            )

    def close(self) -> None:
        """Unload everything; a load begun before waits to finish and is unloaded, a later one is
        refused (a request's autoload runs in a thread that a stop cannot interrupt)."""
        with self._lock:
            self._closed = True
            under_way = list(self._load_locks.values())
        for load_lock in under_way:
            with load_lock:  # held by a load from its start until its version is listed
                pass
        # Ensembles first: one still draining would load a member unloaded before it again.
        for entry in sorted(self.list(), key=lambda e: not e.members):
            self.unload(entry.model, entry.version)

    def _drain(self, entry: LoadedVersion) -> None:
        if entry.batcher is None:
            return
        entry.state = LoadState.DRAINING
        entry.batcher.close(self.defaults.drain_timeout_s)
        entry.batcher = None
        entry.memory_bytes = 0

    def _start(self, entry: LoadedVersion, servable: ServableVersion) -> None:
        config = entry.config
        plan = self._load_members(entry, servable) if servable.ensemble is not None else None
        runtimes: list[Runtime] = []
        try:
            for _ in range(config.instances):
                runtimes.append(self._make_runtime(servable, config, entry.label, plan))
            signature = runtimes[0].signature
            entry.signature = signature
            entry.memory_bytes = sum(r.memory_bytes for r in runtimes)
            entry.state = LoadState.WARMING
            compute_us = max(_warm_up(entry.label, runtime, signature, config) for runtime in runtimes)
        except BaseException:
            for runtime in runtimes:
                runtime.close()
            raise
        entry.batcher = DynamicBatcher(
            entry.label,
            runtimes,
            entry.stats,
            max_batch_size=config.max_batch_size,
            max_queue_delay_us=config.max_queue_delay_us,
            max_queue_size=config.max_queue_size,
            batchable=signature.batchable,
            # An ensemble waits on its members' worker threads: never on the event loop's thread.
            inline_max_compute_us=0 if plan is not None else self.defaults.inline_max_compute_us,
            initial_compute_us=compute_us,
            output_names=signature.output_names,
        )
        entry.state = LoadState.READY

    def _load_members(self, entry: LoadedVersion, servable: ServableVersion) -> EnsemblePlan:
        """Load an ensemble's members (those not loaded yet, with the defaults)."""
        assert servable.ensemble is not None
        plan = servable.ensemble()
        # Before they load: a member that unload_ready marks meanwhile stays (see ensemble_members).
        entry.members = tuple((m.model, m.version) for m in plan.members)
        for member in plan.members:
            self._member_entry(member, entry.label)
        return plan

    def _member_entry(self, member: ServableVersion, ensemble: str) -> LoadedVersion:
        """A member's READY entry, loaded with the defaults if it is not loaded."""
        current = self.get(member.model, member.version)
        if current is not None:
            return current
        try:
            return self.load(member, ServingConfig(), keep_loaded=True, as_member=True)
        except TesseraError as exc:
            raise FailedPrecondition(
                f"{ensemble} is an ensemble whose member {member.model}:{member.version} cannot "
                f"load: {exc.message}"
            ) from None

    def _make_runtime(
        self, servable: ServableVersion, config: EffectiveConfig, label: str, plan: EnsemblePlan | None
    ) -> Runtime:
        if plan is not None:
            assert servable.signature is not None
            return EnsembleRuntime(
                label,
                plan,
                servable.signature,
                lambda member: self._member_entry(member, label),
                config.device,
            )
        if config.runtime == "torch" and (servable.architecture is None or servable.signature is None):
            raise FailedPrecondition(
                f"model {servable.model!r} version {servable.version} has no architecture or "
                "signature; the torch runtime needs both"
            )
        with servable.open_artifact() as path:
            if config.runtime == "onnx":
                return OnnxRuntime(path, config.device, config.intra_op_threads)
            assert servable.architecture is not None and servable.signature is not None
            return TorchRuntime(path, servable.architecture, servable.signature, config.device)


def warmup_batches(signature: Signature, config: EffectiveConfig) -> list[tuple[int, int]]:
    """(rows, runs) of the warm-up a version gets before traffic, on inputs of its signature
    (sample_inputs): a batch of max_batch_size rows, so that the largest batch's memory is in
    place, then `warmup_runs` of one row (the last is timed)."""
    batches = []
    if signature.batchable and config.max_batch_size > 1 and config.warmup_runs:
        batches.append((config.max_batch_size, 1))
    if config.warmup_runs:
        batches.append((1, config.warmup_runs))
    return batches


def _warm_up(label: str, runtime: Runtime, signature: Signature, config: EffectiveConfig) -> float:
    """Run sample inputs through the runtime; the last one-row run's compute time in us. Not
    through the version's batcher, so that no figures count the warm-up; an ensemble's runtime
    runs it through its members' batchers, which count none of it either."""
    rng = np.random.default_rng(0)
    compute_us = 0.0
    run = runtime.warm_up if isinstance(runtime, EnsembleRuntime) else runtime.run
    try:
        for rows, runs in warmup_batches(signature, config):
            inputs = sample_inputs(signature, rows, rng)
            for _ in range(runs):
                started = time.perf_counter_ns()
                run(inputs, signature.output_names)
                compute_us = (time.perf_counter_ns() - started) / 1000
    except Exception as exc:  # the runtime's own error types
        raise FailedPrecondition(
            f"warm-up of {label} failed on random inputs of its signature: {exc}"
        ) from None
    return compute_us
