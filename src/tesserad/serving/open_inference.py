"""The Open Inference Protocol (KServe v2) as its transports share it: gRPC
(inference.GRPCInferenceService) and HTTP/REST (/v2/...) call the same checks, routing, readiness,
repository actions and request recording here, and only encode and decode messages themselves.

Model names are tessera model names; a version is a version number as a string, or empty for
what a request without a selector gets (the deployment, else the version serving.default_alias
names, else "latest").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Coroutine, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tesserad.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotLoaded,
    Rewording,
    StillLoading,
    TesseraError,
    Unavailable,
    Unimplemented,
    reworded_fix,
)
from tesserad.log_settings import LogControl
from tesserad.names import NAME_PATTERN, validate_name
from tesserad.numbers import INT64_MAX, is_digits, whole_number
from tesserad.serving.batcher import Prediction
from tesserad.serving.oip_dtypes import OIP_DTYPES as OIP_DTYPES
from tesserad.serving.oip_dtypes import OIP_NAME_BY_DTYPE as OIP_NAME_BY_DTYPE
from tesserad.serving.pool import LoadedVersion, LoadState, RuntimeChoice, ServingConfig
from tesserad.serving.predict import predict
from tesserad.serving.service import LATEST, InferenceService, Target, VersionDescription
from tesserad.serving.shared_memory import SharedMemory, TensorPlace
from tesserad.serving.trace import Tracer

log = logging.getLogger(__name__)


def unserved_datatype(where: str, datatype: object) -> InvalidArgument:
    """The refusal of an input whose datatype is none of OIP_DTYPES; `where` names the input."""
    served = ", ".join(OIP_DTYPES)
    return InvalidArgument(
        f"{where} has datatype {repr(datatype)[:40]}, which is no datatype tesserad serves; it serves {served}"
    )


# Listed truthfully: perf_analyzer shows the server-side breakdown only with "statistics".
# binary_tensor_data is HTTP's; Triton lists it on both transports, as the server's.
# "parameters": request parameters are taken (timeout_of); "schedule_policy": priority and
# timeout, as Triton lists it.
EXTENSIONS = [
    "model_repository",
    # Triton's name for the repository extension's optional unload_dependents.
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "schedule_policy",
    "statistics",
    "system_shared_memory",
    "logging",
    "trace",
]
# A torch version is a safetensors state dict run by tessera's own model code: not TorchScript,
# which Triton's "pytorch_libtorch" names; "pytorch" is KServe's name for the format.
PLATFORMS: Mapping[RuntimeChoice, str] = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch",
    "ensemble": "ensemble",
}
BACKENDS: Mapping[RuntimeChoice, str] = {"onnx": "onnxruntime", "torch": "pytorch", "ensemble": ""}
# Triton's names for a version's state in the repository index (its ModelReadyState).
_INDEX_STATES = {
    LoadState.LOADING: "LOADING",
    LoadState.WARMING: "LOADING",
    LoadState.READY: "READY",
    LoadState.DRAINING: "UNLOADING",
    LoadState.FAILED: "UNAVAILABLE",
}

# The one reserved request parameter Triton takes: each streamed answer says whether it is the
# request's last (here every answer is: no model is decoupled).
FINAL_RESPONSE_FLAG = "triton_enable_empty_final_response"
# Honest about why: CUDA IPC handles need a daemon built against CUDA, with a GPU, to open them.
NO_CUDA_SHARED_MEMORY = (
    "tesserad does not support CUDA shared memory: opening a client's cudaIPC handle needs a daemon "
    "built with CUDA and a GPU it can use, and tesserad has no such support; put tensors in system "
    "shared memory (system_shared_memory) or send them in the request"
)
# A tensor's parameters that place it in a registered shared-memory region.
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


def target_of(name: str, version: str) -> Target:
    validate_name("model_name", name)
    if not version:
        return Target(name)
    try:
        return Target(name, version=whole_number("model_version", version, 1, INT64_MAX))
    except InvalidArgument as exc:
        if is_digits(version) or not NAME_PATTERN.fullmatch(version):
            raise
        # Read as an alias: the protocol has no field for one.
        raise InvalidArgument(
            f"{exc.message}; the Open Inference Protocol names versions by number: aliases (and "
            "latest) are served through tessera.v1.Inference's Predict (VersionRef.alias) or "
            "`tessera predict --alias`, and a model_version left empty is the version its requests "
            "are routed to (its deployment's, else the version the daemon's serving.default_alias "
            "names, else its latest)"
        ) from None


# InferenceService.autoload's fix for a version not loaded with autoload off, in tessera's words.
_NOT_LOADED_FIX = re.compile(r"load it with LoadModel \(or (turn on serving\.autoload)\)")


def specific_policy(loaded: Collection[int], version: int) -> str:
    """The version_policy that loads `version` and keeps the versions `loaded`: a specific policy
    unloads every version it does not name."""
    versions = ", ".join(str(v) for v in sorted({*loaded, version}))
    return f'{{"version_policy": {{"specific": {{"versions": [{versions}]}}}}}}'


def not_ready(target: Target, error: NotLoaded | StillLoading, loaded: Collection[int] = ()) -> TesseraError:
    """What an inference request for a version that is not ready (not loaded and not loaded for
    it, its load failed, or still loading) is answered, as Triton answers a model that is not
    ready (core's ModelLifeCycle::GetModel): a version named is UNAVAILABLE (HTTP 503), a request
    without one NOT_FOUND (HTTP 404: no version of it is available to it); with tessera's
    message, which says how to load it (in the protocol's words) or when to retry. `loaded`: the
    model's versions loaded now, which the policy suggested keeps."""
    if target.version is not None:
        # RepositoryModelLoad loads the versions the model serves unless its config names others.
        policy = specific_policy(loaded, target.version)
        fix = (
            f"load it with RepositoryModelLoad and a config naming it in its version_policy "
            f"({policy}), or \\1"
        )
        return Unavailable(reworded_fix(error.message, ((_NOT_LOADED_FIX, fix),)))
    fix = (
        "load it with RepositoryModelLoad (over HTTP, POST "
        f"/v2/repository/models/{target.model}/load), or \\1"
    )
    return NotFound(reworded_fix(error.message, ((_NOT_LOADED_FIX, fix),)))


# The registry's NotFound fixes name its RPCs (tesserad.registry.tables, a replica's
# followed.py); a Triton client's user acts on the command that does it, or on the RPC named
# with its service.
_PUSH = "`tessera models push MODEL FILE`"
_OIP_FIXES: tuple[Rewording, ...] = (
    ("create it with CreateModel", f"register it with {_PUSH} or tessera.v1.Registry's UploadVersion"),
    (
        "create it there with CreateModel",
        f"register it there with {_PUSH} or tessera.v1.Registry's UploadVersion",
    ),
    ("upload one with UploadVersion", f"upload one with {_PUSH} or tessera.v1.Registry's UploadVersion"),
    ("ListVersions lists them", "`tessera models versions MODEL` lists them"),
    # Statistics of a version not loaded (InferenceService.stats_entries), in tessera.v1.Inference's words.
    (
        "send it a request (Predict) to load it, or load it with LoadModel",
        "send it an inference request to load it, or load it with RepositoryModelLoad",
    ),
    (
        "load it with LoadModel (serving.autoload is off)",
        "load it with RepositoryModelLoad (serving.autoload is off)",
    ),
    # Of a version named: RepositoryModelLoad loads the versions the model serves unless its
    # config's version_policy names others.
    (
        re.compile(
            r"load it with LoadModel naming version (\d+), or by a Predict naming version (\d+) "
            r"(\(one naming no version loads the one requests are routed to\))"
        ),
        r"load it with RepositoryModelLoad and a config naming it in its version_policy, or by an "
        r"inference request naming version \2 \3",
    ),
)
# Of a version named with autoload off: the policy suggested is made per message (specific_policy).
_NAMED_NOT_LOADED = re.compile(r"load it with LoadModel naming version (\d+) (\(serving\.autoload is off\))")


def in_oip_words(error: NotFound, loaded: Collection[int] = ()) -> NotFound:
    """`error` with the registry's fix said in words a Triton client's user can act on
    (errors.reworded_fix: only the fix that ends the message); `loaded`: the model's versions
    loaded now, which a version_policy suggested keeps."""
    named = _NAMED_NOT_LOADED.search(error.message)
    fixes = _OIP_FIXES
    if named is not None:
        policy = specific_policy(loaded, int(named.group(1)))
        fix = f"load it with RepositoryModelLoad and a config naming it in its version_policy ({policy}) \\2"
        fixes = ((_NAMED_NOT_LOADED, fix), *_OIP_FIXES)
    return NotFound(reworded_fix(error.message, fixes))


class Kind(enum.Enum):
    """What a request parameter holds; each transport names the kinds in its own words."""

    BOOL = "bool"
    INT = "int"
    UINT = "uint"
    DOUBLE = "double"
    STRING = "string"
    BYTES = "bytes"


@dataclass(frozen=True)
class Parameter:
    value: object
    kind: Kind | None  # None: a gRPC parameter with no value set


def _parameter(
    parameters: Mapping[str, Parameter],
    key: str,
    kinds: tuple[Kind, ...],
    names: Mapping[Kind, str],
    unit: str = "",
) -> object:
    """The value of parameter `key` (None when absent); InvalidArgument for another kind."""
    parameter = parameters.get(key)
    if parameter is None:
        return None
    if parameter.kind not in kinds:
        wanted = list(dict.fromkeys(names[k] for k in kinds))
        article = "an" if wanted[0][0] in "aeiou" else "a"
        got = names[parameter.kind] if parameter.kind is not None else "no value"
        raise InvalidArgument(f"parameter {key!r} must be {article} {' or '.join(wanted)}{unit}, got {got}")
    return parameter.value


def timeout_of(parameters: Mapping[str, Parameter], names: Mapping[Kind, str]) -> float | None:
    """The seconds the `timeout` parameter allows the request (None: no timeout), once the
    parameters Triton itself reads are checked as Triton checks them; `names` says each kind
    in the transport's words.

    Keys starting with `triton_` are Triton's own: one it does not know is refused, as Triton
    refuses it (ignoring it would hide a typo or a feature this server lacks). A sequence
    (sequence_id, sequence_start, sequence_end) is refused: it is for a stateful model, whose
    answer depends on the sequence's earlier requests, and tesserad has none. `priority` is
    checked and otherwise ignored: no model here has priority levels, and Triton then serves every
    priority alike. Other parameters are the model's own in Triton; no tesserad model reads any.
    """
    for key in parameters:
        if key.startswith("triton_") and key != FINAL_RESPONSE_FLAG:
            raise InvalidArgument(
                f"parameter keys starting with 'triton_' are reserved for Triton usage; the only one "
                f"allowed is {FINAL_RESPONSE_FLAG}, got {key!r}: remove it from the request"
            )
    _parameter(parameters, FINAL_RESPONSE_FLAG, (Kind.BOOL,), names)
    sequence_id = _parameter(parameters, "sequence_id", (Kind.INT, Kind.STRING), names)
    starts = _parameter(parameters, "sequence_start", (Kind.BOOL,), names)
    ends = _parameter(parameters, "sequence_end", (Kind.BOOL,), names)
    if sequence_id or starts or ends:
        raise Unimplemented(
            f"the request belongs to a sequence (sequence_id {sequence_id or 'none'}); "
            "tesserad keeps no state between requests (no model has sequence batching), so it would "
            "answer it as if alone: send the request without sequence_id, sequence_start and sequence_end"
        )
    priority = _parameter(parameters, "priority", (Kind.INT, Kind.UINT), names)
    if isinstance(priority, int) and priority < 0:
        raise InvalidArgument(f"parameter 'priority' must be at least 0, got {priority}")
    timeout_us = _parameter(parameters, "timeout", (Kind.INT,), names, " (microseconds)")
    if not isinstance(timeout_us, int) or timeout_us == 0:
        return None
    if timeout_us < 0:
        raise InvalidArgument(
            f"parameter 'timeout' must be at least 0 microseconds (0: none), got {timeout_us}"
        )
    return timeout_us / 1e6


def tensor_place(
    parameters: Mapping[str, Parameter], where: str, names: Mapping[Kind, str]
) -> TensorPlace | None:
    """Where in shared memory a tensor is (its shared_memory_* parameters), or None when it
    travels in the request or its answer. As Triton: region and byte size come together, the
    offset defaults to 0."""
    region = _parameter(parameters, SHM_REGION, (Kind.STRING,), names)
    byte_size = _parameter(parameters, SHM_BYTE_SIZE, (Kind.INT, Kind.UINT), names)
    offset = _parameter(parameters, SHM_OFFSET, (Kind.INT, Kind.UINT), names)
    if region is None and byte_size is None:
        if offset is not None:
            raise InvalidArgument(
                f"{where} has {SHM_OFFSET} without {SHM_REGION} and {SHM_BYTE_SIZE}; give all of them "
                "to place it in shared memory, or none"
            )
        return None
    if region is None or byte_size is None:
        given, missing = (SHM_REGION, SHM_BYTE_SIZE) if byte_size is None else (SHM_BYTE_SIZE, SHM_REGION)
        raise InvalidArgument(f"{where} has {given} but no {missing}; give both to place it in shared memory")
    assert isinstance(region, str) and isinstance(byte_size, int)
    return TensorPlace(region, offset if isinstance(offset, int) else 0, byte_size)


def place_parameters(place: TensorPlace, written: int) -> dict[str, str | int]:
    """An answer's parameters for an output written into shared memory (`written` bytes), as
    tritonclient sets them on a request: the region, the bytes, and the offset when not 0."""
    echoed: dict[str, str | int] = {SHM_REGION: place.region, SHM_BYTE_SIZE: written}
    if place.offset:
        echoed[SHM_OFFSET] = place.offset
    return echoed


def refuse_classification(parameters: Collection[str], name: str) -> None:
    if "classification" in parameters:
        # Answering the raw values instead would hand the client something else than it asked.
        raise Unimplemented(
            f"output {name!r} asks for classification, an Open Inference Protocol extension "
            "tesserad does not offer; request the output without it and take the top classes "
            "from its values"
        )


def refuse_repository_name(name: str) -> None:
    if name:
        # As Triton: a repository named is refused, not answered for the one there is.
        raise Unimplemented(
            f"repository_name {name[:100]!r}: tesserad has one model repository (its registry) and does "
            "not take a repository's name; send the request without repository_name"
        )


# The most versions one version_policy may load: each holds its weights and instances.
MAX_POLICY_VERSIONS = 16


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version_policy: the versions of a model a repository load serves, chosen when
    it loads. Exactly one of: `latest` (the N highest versions), `specific` (those), `every`
    (all of them, at most MAX_POLICY_VERSIONS)."""

    latest: int = 0
    specific: tuple[int, ...] = ()
    every: bool = False


@dataclass(frozen=True)
class RepositoryConfig:
    """What a RepositoryModelLoad's `config` asks for (see OpenInference.load)."""

    config: ServingConfig
    policy: VersionPolicy | None  # None: none, or Triton's default
    # check(max_batch_sizes): called with the max_batch_size each version would load with, before
    # any loads; raises InvalidArgument for what the config cannot load with.
    check: Callable[[Sequence[int]], None]
    # loaded(max_batch_sizes): called once every version loaded; logs what the config asked for
    # that is taken without effect.
    loaded: Callable[[Sequence[int]], None]


# config_of(text, model, described): see OpenInference.load.
ConfigOf = Callable[
    [str, str, Callable[[VersionPolicy | None], Sequence[VersionDescription]]],
    RepositoryConfig,
]


@dataclass(frozen=True)
class _Chosen:
    """A repository load's version_policy, the versions it chose, and the identity of the model
    it was for (a model of its name created later does not inherit it)."""

    policy: VersionPolicy
    versions: frozenset[int]
    identity: Hashable


@dataclass(frozen=True)
class IndexRow:
    name: str
    version: str
    state: str
    reason: str


class OpenInference:
    """The protocol's operations over the inference service, for every transport."""

    def __init__(
        self,
        service: InferenceService,
        stopping: asyncio.Event,
        shared_memory: SharedMemory,
        logs: LogControl,
        tracer: Tracer,
        ready: asyncio.Event | None = None,
    ) -> None:
        """`stopping`: set when the daemon stops (it is not ready, and open streams end);
        `shared_memory`: the registered system shared-memory regions; `logs`: the daemon's log
        settings (the logging extension); `tracer`: its trace settings and traces (the trace
        extension); `ready`: set while gRPC health says SERVING (a primary has loaded
        serving.preload's versions; a replica has caught up with its primary and loaded what the
        deployments route to)."""
        self._service = service
        self.stopping = stopping
        self.shared_memory = shared_memory
        self.logs = logs
        self.tracer = tracer
        self._ready = ready
        # model -> what a repository load with a version_policy chose for it. Written under the
        # model's load lock and _policies_lock (a deletion or UnloadModel clears it from another
        # thread); read unlocked (one dict lookup).
        self._policies: dict[str, _Chosen] = {}
        self._policies_lock = threading.Lock()
        # model -> its lock: a model's repository loads and unloads run one at a time (each
        # unloads what the one before loaded), other models' at once. Awaited on the event
        # loop, so waiting holds no thread of the executor others need.
        self._model_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        service.add_deletion_listener(self._forget_policy, self._policy_identity)
        service.add_unload_listener(self._drop_policy)

    def _policy_identity(self, model: str) -> Hashable | None:
        chosen = self._policies.get(model)
        return None if chosen is None else chosen.identity

    def _forget_policy(self, model: str, identity: Hashable) -> None:
        """The model of `identity` was deleted: a model created under its name has no policy."""
        with self._policies_lock:
            chosen = self._policies.get(model)
            if chosen is not None and chosen.identity == identity:
                del self._policies[model]
                self._service.keep_versions(model, ())

    def _drop_policy(self, model: str) -> None:
        with self._policies_lock:
            self._policies.pop(model, None)
            self._service.keep_versions(model, ())

    def _model_lock(self, name: str) -> asyncio.Lock:
        lock = self._model_locks.get(name)
        if lock is None:
            lock = self._model_locks[name] = asyncio.Lock()
        return lock

    def target(self, name: str, version: str) -> Target:
        """What a request for `name` and `version` (empty: none) is for (target_of). A request
        naming no version of a model loaded with a version_policy goes where a Predict would when
        the model has a deployment or a serving.default_alias that names a version of it (the load
        refused a policy leaving those out); else, as in Triton, to the highest version ready of
        those the policy chose; with none ready, where any other request would."""
        target = target_of(name, version)
        chosen = self._policies.get(name)
        if version or chosen is None or self._service.routing_rule(name) is not None:
            return target
        # Checked as registered: a version deleted, its refresh not done yet, is left out.
        ready = [v for v in self._service.ready_versions(name) if v in chosen.versions]
        return Target(name, version=ready[-1]) if ready else target

    def version_policy(self, name: str) -> VersionPolicy | None:
        """The version_policy `name` was loaded with by a repository load (None: none, the
        versions its requests are routed to); a specific one lists the versions it chose that
        the model still has."""
        chosen = self._policies.get(name)
        if chosen is None:
            return None
        if not chosen.policy.specific:
            return chosen.policy
        kept = tuple(v for v in chosen.policy.specific if self._exists(name, v))
        return VersionPolicy(specific=kept) if kept else None

    def _exists(self, name: str, version: int) -> bool:
        try:
            self._service.check_version(name, version)
        except NotFound:
            return False
        return True

    def server_ready(self) -> bool:
        # Built only once the registry is open; shutting down is not ready, nor is a daemon that
        # gRPC health reports NOT_SERVING (probes ask either).
        if self._ready is not None and not self._ready.is_set():
            return False
        return not self.stopping.is_set()

    async def model_ready(self, name: str, version: str) -> bool:
        """Whether a request would be served now by a version loaded (see InferenceService.ready):
        in a thread, as the version may be checked against the registry."""
        return await asyncio.to_thread(self._service.ready, self.target(name, version))

    async def not_ready_reason(self, name: str, version: str) -> str:
        """Why a request for `name`/`version` is not served by a ready version (model_ready false),
        with the fix, as the repository index says it: a version it goes to whose load failed,
        with the failure, or one still loading; else none is loaded."""
        return await asyncio.to_thread(self._not_ready_reason, self.target(name, version))

    def _not_ready_reason(self, target: Target) -> str:
        load = f"load it with POST /v2/repository/models/{target.model}/load"
        named = target.version is not None
        versions = (
            [target.version] if target.version is not None else self._service.serving_versions(target.model)
        )
        listed = {e.version: e for e in self._service.pool.list(target.model)}
        for version in versions:
            entry = listed.get(version)
            which = "it" if named else f"version {version}, which its requests go to,"
            if entry is not None and entry.state is LoadState.FAILED:
                return f"{which} failed to load: {entry.error}; once the cause is fixed, {load}"
            if entry is not None and entry.state in (LoadState.LOADING, LoadState.WARMING):
                return f"{which} is still loading; retry once it is ready"
        return f"not loaded, or still loading; {load}"

    async def describe(self, name: str, version: str) -> tuple[VersionDescription, list[int]]:
        """The version `name`/`version` selects, and the versions its metadata lists: as Triton,
        the version asked for, else the ready versions (here, else the one described).

        Never loads the version (as Triton's never does): see InferenceService.describe."""
        try:
            described = await asyncio.to_thread(self._service.describe, self.target(name, version))
        except NotFound as exc:
            raise in_oip_words(exc) from None
        if version:
            return described, [described.version]
        ready = await asyncio.to_thread(self._service.ready_versions, described.model)
        return described, ready or [described.version]

    async def traffic_split(self, name: str, version: str) -> tuple[tuple[int, int], ...]:
        """How a request for `name` naming no version is split among versions (a canary
        deployment), as (version, percent); empty for a request naming `version`, or no split."""
        if version:
            return ()
        if name in self._policies and await asyncio.to_thread(self._service.routing_rule, name) is None:
            return ()  # to the policy's highest version ready
        return await asyncio.to_thread(self._service.traffic_split, name)

    def infer(
        self,
        target: Target,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        deadline: float | None,
        timeout: float | None,
        request_id: str,
        started: int,
    ) -> Coroutine[None, None, tuple[int, Prediction]]:
        """(version that served, prediction), to await. `timeout` (seconds) acts as a deadline
        too: a request still queued when it passes is dropped before it runs. `started`: the
        request's arrival (perf_counter_ns). Returns predict's coroutine itself: each level of
        await costs the event loop's thread a frame."""
        if timeout is not None:
            ends = time.monotonic() + timeout
            deadline = ends if deadline is None else min(deadline, ends)
        # ModelConfig advertises max_batch_size; as in Triton, a request may not exceed it.
        return predict(
            self._service,
            target,
            inputs,
            output_names,
            deadline,
            request_id,
            started=started,
            within_max_batch=True,
            dtype_names=OIP_NAME_BY_DTYPE,
            strings=True,
            not_ready=self._not_ready,
        )

    def _not_ready(self, target: Target, error: NotLoaded | StillLoading) -> TesseraError:
        return not_ready(target, error, [e.version for e in self._service.pool.list(target.model)])

    def over_max_batch(self, target: Target, shapes: Mapping[str, Sequence[int]]) -> InvalidArgument | None:
        """InferenceService.over_max_batch: a request's refusal from its inputs' shapes alone."""
        return self._service.over_max_batch(target, shapes)

    def refused(self, target: Target, started: int) -> None:
        """Count a request whose inputs or parameters a transport refused before `infer` as a
        failure of the loaded version it was for (InferenceService.refused)."""
        self._service.refused(target, started)

    def record_io(
        self, model: str, version: int, prediction: Prediction, input_ns: int, output_ns: int
    ) -> None:
        """InferenceService.record_io."""
        self._service.record_io(model, version, prediction, input_ns, output_ns)

    async def trace_settings(self, model: str) -> dict[str, list[str]]:
        """The trace settings `model` (empty: none, the global ones) is traced with."""
        return self.tracer.settings(model, await self._model_identity(model))

    async def update_trace_settings(
        self, model: str, changes: Mapping[str, object], who: str
    ) -> dict[str, list[str]]:
        """Change `model`'s trace settings (empty: the global ones); see Tracer.update."""
        return self.tracer.update(model, changes, who, await self._model_identity(model))

    async def _model_identity(self, model: str) -> Hashable:
        """The identity of the registry's model `model` (None for none, the global settings)."""
        if not model:
            return None
        validate_name("model_name", model)
        try:
            return await asyncio.to_thread(self._service.model_identity, model)
        except NotFound:
            raise NotFound(
                f"model {model!r} does not exist; a model's trace settings are for a model of the "
                "registry (the repository index lists them)"
            ) from None

    async def statistics(self, name: str, version: str) -> list[LoadedVersion]:
        """The loaded versions whose statistics a request for `name` (empty: all) gets;
        InvalidArgument for a `version` without a `name`. As Triton, a named ensemble's
        statistics are its own, without its members'."""
        if name:
            try:
                return await asyncio.to_thread(
                    self._service.stats_entries, target_of(name, version), members=False
                )
            except NotFound as exc:
                raise in_oip_words(exc, [e.version for e in self._service.pool.list(name)]) from None
        if version:
            # Answering every ready version's would answer versions not asked for.
            raise InvalidArgument(
                f"the request names version {version[:40]!r} but no model; send the model's name with it, "
                "or neither for the statistics of every ready version"
            )
        # As Triton: every ready version's (one loading or draining shows once named).
        return [e for e in self._service.pool.list() if e.state is LoadState.READY]

    async def index(self, ready_only: bool) -> list[IndexRow]:
        names = await asyncio.to_thread(self._service.model_names)
        pool = self._service.pool
        index: list[IndexRow] = []
        for name in names:
            rows = {
                entry.version: IndexRow(name, str(entry.version), _INDEX_STATES[entry.state], entry.error)
                for entry in pool.list(name)
            }
            # As Triton: a version unloaded stays in the index, UNAVAILABLE for reason "unloaded".
            for version in pool.unloaded_versions(name):
                rows.setdefault(version, IndexRow(name, str(version), "UNAVAILABLE", "unloaded"))
            if not rows and not ready_only:
                index.append(IndexRow(name, "", "UNAVAILABLE", "unloaded"))
            index.extend(row for _, row in sorted(rows.items()) if not ready_only or row.state == "READY")
        return index

    async def load(
        self,
        name: str,
        parameters: Mapping[str, Parameter],
        names: Mapping[Kind, str],
        config_of: ConfigOf,
    ) -> None:
        """Load `name` for serving. `parameters`: the request's; `names`: each kind in the
        transport's words; `config_of(text, name, described)`: the ServingConfig and
        VersionPolicy (None: none, or Triton's default) a `config` parameter (a Triton model
        configuration as JSON) asks for, InvalidArgument naming a field it cannot take;
        `described(policy)` describes the versions it would load.

        Without `config`, a version already loaded keeps the config it runs with; with one, every
        version loaded loads with it, as Triton loads a model with a config override (a field
        the override leaves out takes its default). The versions loaded are those the model
        serves (its requests are routed to), or those the config's version_policy chooses; as
        in Triton, a version the policy does not choose is unloaded, and so is one an earlier
        policy chose that the versions loaded now leave out. A load that fails for the model or
        the config asked for (FailedPrecondition in tessera's own LoadModel) is InvalidArgument,
        as Triton answers any failed load (INVALID_ARG, HTTP 400); a model or version that does
        not exist stays NotFound."""
        validate_name("model_name", name)
        files = sorted(k for k in parameters if k.startswith("file:"))
        if files:
            # Loading the registry's artifact instead would not be what the caller asked for.
            raise Unimplemented(
                f"tesserad does not take files in RepositoryModelLoad (got {', '.join(files)}); "
                "upload new weights as a version through tessera.v1.Registry and load without them"
            )
        text = _parameter(parameters, "config", (Kind.STRING,), names)
        await self._locked(name, functools.partial(self._load, name, text, config_of))

    async def _locked(self, name: str, work: Callable[[], None]) -> None:
        """Run `work` in a thread under `name`'s lock, held until the thread ends: a caller
        cancelled (its deadline, its going away) leaves the thread running, and the next load or
        unload of the model would otherwise overlap it."""
        async with self._model_lock(name):
            task = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                while not task.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()  # its caller has gone: nobody to answer
                raise

    def _load(self, name: str, text: object, config_of: ConfigOf) -> None:
        service = self._service
        chosen: dict[VersionPolicy, list[int]] = {}

        def versions(policy: VersionPolicy) -> list[int]:
            if policy not in chosen:
                chosen[policy] = self._chosen(name, policy)
            return chosen[policy]

        def described(policy: VersionPolicy | None) -> Sequence[VersionDescription]:
            if policy is None:
                return service.describe_serving(name)
            return [service.describe(Target(name, v)) for v in versions(policy)]

        try:
            identity = service.model_identity(name)
            asked = config_of(text, name, described) if isinstance(text, str) else None
            config = asked.config if asked is not None else None
            policy = asked.policy if asked is not None else None
            if policy is None:
                wanted = service.versions_for_serving(name)
            else:
                wanted = versions(policy)
                self._refuse_unrouted(name, wanted)
            # Every version checked before any loads, as Triton leaves a model whose reload fails
            # as it was: not some versions on the new config and some on the old.
            applied = [service.load_config(name, v, config or ServingConfig()).max_batch_size for v in wanted]
            if asked is not None:
                asked.check(applied)
            self._load_versions(name, wanted, config, policy is not None)
            if asked is not None:
                asked.loaded(applied)
            with self._policies_lock:
                before = self._policies.pop(name, None)
                if policy is not None:
                    self._policies[name] = _Chosen(policy, frozenset(wanted), identity)
                # The refresh of a registry change leaves the versions the policy chose loaded.
                service.keep_versions(name, wanted if policy is not None else ())
            named_before = before.versions if before is not None else frozenset()
            for entry in service.pool.list(name):
                if entry.version not in wanted and (policy is not None or entry.version in named_before):
                    self._unload_version(name, entry.version)
        except FailedPrecondition as exc:
            raise InvalidArgument(exc.message) from None
        except NotFound as exc:
            raise in_oip_words(exc) from None

    def _load_versions(
        self, name: str, versions: Sequence[int], config: ServingConfig | None, keep: bool
    ) -> None:
        """Load `versions` of `name` with `config` (None: a version loaded keeps its own); should
        one fail, those this call loaded anew are unloaded again, those loaded before it that are
        gone loaded again, and the failure raised. `keep` (a version_policy's load): every version
        loaded before it stays loaded while it runs, though a load moves the model's targets off it."""
        service = self._service
        loaded_before = {entry.version for entry in service.pool.list(name)}
        kept_before = service.kept_versions(name)
        if keep:
            # A version loaded moves the targets, and the refresh that follows would unload the one
            # they leave: the model would go without it until the load ends, and for good should
            # a later version fail.
            service.keep_versions(name, kept_before | loaded_before | set(versions))
        routed = set(service.versions_for_serving(name))
        # The new versions first: one failing then leaves the loaded ones on their old config; of
        # those, the ones the targets move to last, so that they move only once the others loaded.
        ordered = sorted(versions, key=lambda v: (v in loaded_before, v in routed, v))
        done: list[int] = []
        try:
            for version in ordered:
                service.load(Target(name, version), config or ServingConfig(), keep_loaded=config is None)
                done.append(version)
        except BaseException:
            service.keep_versions(name, kept_before)
            for version in done:
                if version not in loaded_before:
                    self._unload_version(name, version)
            still = {entry.version for entry in service.pool.list(name)}
            for version in sorted(loaded_before - still):
                try:
                    service.load(Target(name, version), ServingConfig(), keep_loaded=True)
                except TesseraError as exc:
                    log.warning(
                        "version %s of %r, unloaded during a failed load, did not load again: %s",
                        version,
                        name,
                        exc,
                    )
            raise

    def _refuse_unrouted(self, name: str, chosen: Sequence[int]) -> None:
        """FailedPrecondition for a version_policy choosing `chosen` that leaves out a version
        requests naming none are routed to by a deployment or serving.default_alias: requests
        follow those, and would load the version the policy unloaded."""
        rule = self._service.routing_rule(name)
        if rule is None:
            return
        # What the source routes them to now: a target held on a version until the one it names
        # is loaded moves once this load loads it.
        missing = sorted(set(self._service.versions_for_serving(name)) - set(chosen))
        if missing:
            listed = ", ".join(str(v) for v in missing)
            raise FailedPrecondition(
                f"config field 'version_policy' chooses versions {list(chosen)} of model {name!r}, but "
                f"requests naming no version are routed to version {listed} by {rule}: "
                f"include it in the policy ({specific_policy([*chosen, *missing[:-1]], missing[-1])}), "
                "or route those requests to a version the policy chooses"
            )

    def _chosen(self, name: str, policy: VersionPolicy) -> list[int]:
        """The versions of `name` `policy` chooses, lowest first; NotFound for a specific one
        the model does not have, InvalidArgument for `every` past MAX_POLICY_VERSIONS."""
        service = self._service
        if policy.specific:
            for version in policy.specific:
                service.check_version(name, version)
            return list(policy.specific)
        wanted = policy.latest or MAX_POLICY_VERSIONS + 1
        found: list[int] = []
        # Versions are numbered upward, so the newest is the highest; deleted ones leave gaps.
        for version in range(service.resolve_version(Target(name, alias=LATEST)), 0, -1):
            try:
                service.check_version(name, version)
            except NotFound:
                continue
            found.append(version)
            if len(found) == wanted:
                break
        if policy.every and len(found) > MAX_POLICY_VERSIONS:
            raise InvalidArgument(
                f"config field 'version_policy' is all, but model {name!r} has more than "
                f"{MAX_POLICY_VERSIONS} versions, the most one load serves: name the versions with "
                f'{{"specific": {{"versions": [...]}}}} or the newest with {{"latest": {{"num_versions": N}}}}'
            )
        return sorted(found)

    def _unload_version(self, name: str, version: int) -> None:
        # NotFound: unloaded meanwhile (a deletion, an UnloadModel).
        with contextlib.suppress(NotFound):
            self._service.unload(Target(name, version))

    async def unload(self, name: str, parameters: Mapping[str, Parameter], names: Mapping[Kind, str]) -> None:
        """Unload every loaded version of `name`. `parameters`: the request's. With
        unload_dependents true, as Triton's (the models composing an ensemble go with it), the
        members of the ensembles unloaded are unloaded too, but for those another loaded ensemble
        still uses and those loaded as themselves (LoadModel, RepositoryModelLoad, a request of
        their own that loaded them; requests served by a member the ensemble loaded do not mark
        it, to keep the request path free of writes), which Triton keeps too; without it, an
        ensemble's members stay loaded."""
        validate_name("model_name", name)
        dependents = _parameter(parameters, "unload_dependents", (Kind.BOOL,), names) is True
        await self._locked(name, functools.partial(self._unload, name, dependents))

    def _unload(self, name: str, dependents: bool) -> None:
        try:
            self._drop_policy(name)
            unloaded = self._service.unload(Target(name))
        except NotFound:
            return  # as in Triton, unloading a model that is not loaded succeeds
        if not dependents:
            return
        pool = self._service.pool
        for model, version in sorted({member for entry in unloaded for member in entry.members}):
            pool.unload_member(model, version)
