"""ExportOnnx: a safetensors version rebuilt from its architecture and written as ONNX.

The weights load strictly (every tensor present with its shape, nothing extra); the ONNX
file passes onnx.checker and an onnxruntime-vs-torch parity check before it is registered
as a new version whose lineage names the source as parent. The export is deterministic, so
exporting a version again with the same settings writes the same bytes: the version that
already holds them is returned (`reused`) instead of a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tesserad.errors import (
    Cancelled,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TesseraError,
    Unavailable,
)
from tesserad.registry.aliases import check_settable_alias
from tesserad.registry.architectures import architecture_signature
from tesserad.registry.records import AliasEvent, VersionRecord, same_version
from tesserad.registry.service import Registry
from tesserad.registry.tables import ANONYMOUS
from tesserad.registry.validation import check_description_room
from tesserad.store import BlobStore
from tesserad.store.space import space_checked

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    version: VersionRecord
    opset: int
    max_abs_error: float
    conv4d: str
    reused: bool = False  # the model already held this export: no version was added


def _load_weights(model: nn.Module, path: Path, source: VersionRecord) -> None:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except SafetensorError as exc:
        raise InvalidArgument(
            f"version {source.version}'s weights are not readable safetensors: {exc}"
        ) from None
    except OSError as exc:  # str(exc) names the server's path; strerror does not
        raise InvalidArgument(
            f"version {source.version}'s weights cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"missing tensor {name!r}" for name in missing[:5]]
        parts += [f"unexpected tensor {name!r}" for name in unexpected[:5]]
        raise InvalidArgument(
            f"the weights of {source.model} v{source.version} do not fit its architecture: "
            + ", ".join(parts)
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise InvalidArgument(
                f"the weights of {source.model} v{source.version} do not fit its architecture: tensor {name!r} "
                f"has shape {list(state[name].shape)}, the architecture needs {list(tensor.shape)}"
            )
    for name in expected:
        if not bool(torch.isfinite(state[name]).all()):
            raise FailedPrecondition(
                f"the weights of {source.model} v{source.version} hold NaN or Inf (tensor {name!r}), as a "
                "training that diverged leaves them; export a version with finite weights"
            )
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


class _Caller:
    """An export's caller going away (`withdraw`) and its registration (`register`), decided
    under one lock, so that exactly one holds: the caller went away and nothing is registered,
    or the registration began and a withdrawal is too late. Held briefly, so the event loop
    that withdraws never waits on a registration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.withdrawn = False
        self._registering = False

    def withdraw(self) -> None:
        with self._lock:
            self.withdrawn = not self._registering

    def register(self, source: VersionRecord) -> None:
        """Cancelled where the caller went away first; past this, `withdraw` is too late."""
        with self._lock:
            if self.withdrawn:
                raise Cancelled(
                    f"the caller of the ONNX export of {source.model} v{source.version} went away "
                    "before it was registered; nothing was registered"
                )
            self._registering = True


@dataclass(frozen=True)
class ExportRequest:
    """An export that `Exports.check` found nothing against, for `Exports.submit`."""

    source: VersionRecord
    architecture: dict[str, Any]
    opset: int
    conv4d: str
    alias: str
    description: str
    actor: str
    caller: _Caller
    # Why the caller may not move `alias` onto an earlier export found to hold the same bytes
    # ("": it may).
    alias_move_denied: str = ""


class Exports:
    """ExportOnnx's work: each export on one of `max_concurrent` threads of its own, more waiting
    their turn in order.

    An export takes seconds to minutes of CPU; on the executor that other calls share, a few at
    once held every thread that registry reads and uploads need. Identical exports at once
    add one version (the others return it, `reused`). An export whose caller went away registers
    nothing (see `withdraw`). The threads are daemon threads: an export still running when the
    daemon stops is abandoned (see `close`) instead of holding the exit.
    """

    def __init__(self, registry: Registry, blobs: BlobStore, *, max_concurrent: int, max_queued: int) -> None:
        self._registry = registry
        self._blobs = blobs
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._queue: queue.SimpleQueue[tuple[Future[ExportResult], ExportRequest] | None] = (
            queue.SimpleQueue()
        )
        self._registering = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._waiting = 0
        self._running: dict[int, ExportRequest] = {}  # by the id of the export's future
        self._unsettled: dict[int, ExportRequest] = {}  # from submit until its future is done, likewise
        self._closed = False
        self._abandoned = False
        self._threads = [
            threading.Thread(target=self._work, name=f"registry-export_{n}", daemon=True)
            for n in range(max_concurrent)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def withdrawn(self) -> int:
        """How many running exports (not waiting ones: those leave the queue) have a caller that
        went away before their registration: they run to their end and register nothing."""
        with self._lock:
            return sum(1 for request in self._running.values() if request.caller.withdrawn)

    def check(
        self,
        source: VersionRecord,
        *,
        opset: int = 0,
        conv4d: str = "auto",
        alias: str = "",
        description: str = "",
        actor: str = ANONYMOUS,
        alias_move_denied: str = "",
    ) -> ExportRequest:
        """The export of `source` (a safetensors version) to ONNX as the model's next version, for
        `submit`, or the error it would end in. It blocks (it imports onnx the first time and
        reads the store): call it off the event loop."""
        description = description or f"ONNX export of v{source.version}"
        architecture = _check(source, opset, conv4d, alias, description)
        if alias:
            # Before the export runs for minutes; its registration checks again.
            self._registry.check_alias_room(source.model, alias)
        return ExportRequest(
            source, architecture, opset, conv4d, alias, description, actor, _Caller(), alias_move_denied
        )

    def submit(self, request: ExportRequest) -> Future[ExportResult]:
        """Queue `request` (from `check`) without blocking. A caller that goes away calls
        `withdraw`. ResourceExhausted when `max_queued` exports already wait."""
        with self._lock:
            if self._closed:
                raise Unavailable("tesserad is stopping; export again once it is back")
            if self._waiting >= self._max_queued:
                raise ResourceExhausted(
                    f"{self._waiting} ONNX exports are waiting for the {self._max_concurrent} export "
                    "thread(s), the most registry.max_queued_exports allows; retry once some have "
                    "finished, or raise registry.max_queued_exports or registry.max_concurrent_exports"
                )
            self._waiting += 1
            future: Future[ExportResult] = Future()
            self._unsettled[id(future)] = request
        future.add_done_callback(self._forget)
        self._queue.put((future, request))
        return future

    def withdraw(self, future: Future[ExportResult]) -> None:
        """The caller of `future`'s export went away (a client that cancelled, or whose deadline
        passed): a waiting export leaves the queue, and a running one registers nothing, so that
        what the caller was told failed leaves no version and moves no alias. One whose
        registration (or alias move to an earlier identical export) began before this came is
        registered, as an upload cancelled as its last byte arrives may be."""
        if future.cancel():
            return
        with self._lock:
            request = self._unsettled.get(id(future))
        if request is not None:
            request.caller.withdraw()

    def _forget(self, future: Future[ExportResult]) -> None:
        with self._lock:
            del self._unsettled[id(future)]
            # A future is only cancelled before it starts, so `_work` never counted it out.
            if future.cancelled():
                self._waiting -= 1

    def close(self, timeout: float) -> None:
        """Drop the exports that wait; wait up to `timeout` seconds for those running, then
        abandon the rest: none of them registers a version after this returns (the store is
        about to close), and each is logged."""
        with self._lock:
            self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        with self._idle:
            self._idle.wait_for(lambda: not self._running, max(0.0, deadline - time.monotonic()))
        # Taken after any registration in progress: an export past this point finds `_abandoned`.
        with self._registering, self._lock:
            self._abandoned = True
            abandoned = list(self._running.values())
        for request in abandoned:
            log.warning(
                "tesserad stopped before the ONNX export of %s v%d finished (grace period over); "
                "it registers nothing: export it again",
                request.source.model,
                request.source.version,
            )

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, request = item
            if self._closed:  # taken off the queue as `close` began
                future.cancel()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited; its callback counted it out
            with self._lock:
                self._waiting -= 1
                self._running[id(future)] = request
            try:
                future.set_result(self._export(request))
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:
                # A python family's module is user code: its SystemExit fails this export alone.
                future.set_exception(
                    FailedPrecondition(f"the ONNX export's model raised {type(exc).__name__}: {exc}")
                )
            finally:
                with self._lock:
                    del self._running[id(future)]
                    self._idle.notify_all()

    def _export(self, request: ExportRequest) -> ExportResult:
        from tesserad.nn import build_model, export_onnx, spec_from_dict

        registry = self._registry
        source, alias, actor = request.source, request.alias, request.actor
        spec = spec_from_dict(request.architecture)
        model = build_model(spec)
        # The source's weights go with it, deleted while the export waited its turn.
        with _unless_source_deleted(registry, source, DataLoss), registry.artifact_path(source) as weights:
            _load_weights(model, weights, source)
        model.eval()
        fd, name = tempfile.mkstemp(dir=self._blobs.tmp_dir, prefix="export-", suffix=".onnx")
        os.close(fd)
        path = Path(name)
        try:
            with space_checked(self._blobs.root_dir, "the ONNX export"):
                report = export_onnx(
                    model,
                    spec,
                    path,
                    conv4d=request.conv4d or "auto",
                    opset=request.opset or None,
                    check_parity=True,
                )
            # Finding an earlier export and registering a new one under one lock: identical
            # exports at once found none and each added a version.
            with self._registering:
                if self._abandoned:
                    raise Unavailable(
                        f"tesserad stopped before the ONNX export of {source.model} v{source.version} "
                        "finished; nothing was registered: export it again once tesserad is back"
                    )
                if request.caller.withdrawn:  # refused before the file is hashed, not after
                    request.caller.register(source)
                # Stored first, so the file is hashed once: bytes an earlier export holds are
                # already in the store, and their put adds nothing.
                blob = self._blobs.put_moved(path)
                earlier = _earlier_export(registry, source, blob.sha256)
                if earlier is not None:
                    # The earlier export holds these bytes: the put's claim on them ends here,
                    # else they would outlive that version's delete until the next start.
                    try:
                        moves = bool(alias) and alias not in earlier.aliases
                        if moves and request.alias_move_denied:
                            raise PermissionDenied(
                                f"{earlier.model} v{earlier.version} is this export of v{source.version} "
                                f"already: moving alias {alias!r} onto that existing version is "
                                f"SetAlias's, and {request.alias_move_denied}; export it without the "
                                "alias, or have an admin set it"
                            )
                        request.caller.register(source)
                        if alias:
                            earlier = _alias_onto_earlier(registry, earlier, alias, actor, moves)
                    finally:
                        self._blobs.release(blob.sha256)
                    return ExportResult(
                        earlier, report.opset, report.max_abs_diff or 0.0, report.conv4d_mode, reused=True
                    )
                # Its lineage names the source as parent, so the registration refuses a source
                # deleted meanwhile, or whose model was deleted and pushed again (and removes the
                # blob); so does a caller that went away, in the same transaction.
                with _unless_source_deleted(registry, source, NotFound):
                    version = registry.register_version(
                        source.model,
                        format="onnx",
                        blob=blob,
                        signature=architecture_signature(request.architecture),
                        params=source.params,
                        metrics=source.metrics,
                        tags=source.tags,
                        lineage=replace(source.lineage, parent_version=source.version, parent_model=""),
                        description=request.description,
                        alias=alias,
                        actor=actor,
                        # The source's dataset versions were checked at its registration; one
                        # force-deleted since is what the source was trained on all the same.
                        datasets_may_be_deleted=True,
                        expected_parent=source,
                        before_commit=lambda: request.caller.register(source),
                    )
        finally:
            path.unlink(missing_ok=True)
        return ExportResult(version, report.opset, report.max_abs_diff or 0.0, report.conv4d_mode)


def _check(source: VersionRecord, opset: int, conv4d: str, alias: str, description: str) -> dict[str, Any]:
    """Refuse an export that cannot succeed before it waits for a thread and runs for minutes;
    the architecture to rebuild the model from."""
    if source.format == "ensemble":
        raise FailedPrecondition(
            f"{source.model} v{source.version} is an ensemble; export each of its members instead"
        )
    if source.format != "safetensors":
        parent = source.lineage.parent_version
        if parent and not source.lineage.parent_model:  # an export, reached as "latest" after it
            if source.lineage.parent_deleted is not None:
                raise FailedPrecondition(
                    f"{source.model} v{source.version} is already {source.format}, derived from "
                    f"v{parent}, which is deleted; export a safetensors version"
                )
            raise FailedPrecondition(
                f"{source.model} v{source.version} is already {source.format}, derived from v{parent}; "
                f"name a safetensors version, e.g. version {parent}"
            )
        raise FailedPrecondition(
            f"{source.model} v{source.version} is already {source.format}; export a safetensors version"
        )
    if not source.architecture:
        raise FailedPrecondition(
            f"{source.model} v{source.version} has no architecture to rebuild the model from"
        )
    if opset < 0:
        raise InvalidArgument(f"opset must be >= 0 (0: the exporter's default), got {opset}")
    if alias:
        check_settable_alias(alias)
    # The new version carries the source's tags that today's rules take (register_version).
    check_description_room(description, source.tags)
    from tesserad.nn.onnx_opsets import check_conv4d, check_opset

    check_conv4d(conv4d or "auto")
    check_opset(opset)
    return source.architecture


@contextlib.contextmanager
def _unless_source_deleted(
    registry: Registry, source: VersionRecord, error: type[TesseraError]
) -> Iterator[None]:
    """An `error` raised inside, where `source` is gone, becomes NotFound saying that it was
    deleted during its export: what the error named (a blob, the lineage parent) the caller
    never did."""
    try:
        yield
    except error:
        if _source_gone(registry, source):
            raise NotFound(
                f"{source.model} v{source.version} was deleted during its ONNX export, so nothing was "
                "registered; export a version that exists"
            ) from None
        raise


def _source_gone(registry: Registry, source: VersionRecord) -> bool:
    """Whether `source` is deleted, its number another version's where its model was deleted
    and pushed again."""
    try:
        return not same_version(registry.get_version(source.model, source.version), source)
    except NotFound:
        return True


def _earlier_export(registry: Registry, source: VersionRecord, sha256: str) -> VersionRecord | None:
    """The ONNX version of the model derived from `source` whose artifact has `sha256`; None also
    when `source` is gone (deleted during the export, its model maybe pushed again: its
    registration refuses it)."""
    try:
        record, derived = registry.get_lineage(source.model, source.version)
    except NotFound:
        return None
    if not same_version(record, source):
        return None
    for key in derived:
        try:
            record = registry.get_version(key.model, key.version)
        except NotFound:  # deleted meanwhile
            continue
        if record.model == source.model and record.format == "onnx" and record.sha256 == sha256:
            return record
    return None


def _alias_onto_earlier(
    registry: Registry, earlier: VersionRecord, alias: str, actor: str, moves: bool
) -> VersionRecord:
    """`alias` onto the export found made already: moved there where it was elsewhere when
    `earlier` was read (`moves`, for a caller that may), else said as kept there (vN -> vN)
    while it still points there. One an admin moved off or deleted since is left as they left it
    (no `alias_moved`): putting it back would be SetAlias's work, done for a trainer."""
    if moves:
        return move_alias_onto(registry, earlier, alias, actor)
    try:
        return move_alias_onto(registry, earlier, alias, actor, expected_version=earlier.version)
    except FailedPrecondition:
        return registry.get_version(earlier.model, earlier.version)


def move_alias_onto(
    registry: Registry, record: VersionRecord, alias: str, actor: str, expected_version: int | None = None
) -> VersionRecord:
    """Point `alias` at `record` as an export registered with an alias would; the record with
    its aliases and `alias_moved`. FailedPrecondition where `expected_version` is given and
    the alias does not point there (0: where it exists)."""
    if expected_version is not None:
        before = expected_version
    else:
        try:
            before = registry.get_alias(record.model, alias).version
        except NotFound:
            before = 0
    # Compare-and-set, so the reported move is the one that happened.
    moved = registry.set_alias(record.model, alias, record.version, actor, expected_version=before)
    event = AliasEvent(record.model, alias, before, record.version, moved.updated_at, actor)
    return replace(
        registry.get_version(record.model, record.version),
        alias_moved=event,
        deployment_warnings=moved.deployment_warnings,
    )
