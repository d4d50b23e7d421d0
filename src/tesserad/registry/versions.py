"""Versions: uploads checked and recorded as immutable numbered versions, reading them back,
deleting them; their lineage and how two versions differ.

A version is recorded only after its artifact blob is complete and checked; version numbers
count from 1 per model and are never reused, even after a delete: a model created again under a
deleted model's name numbers on from it (`tables.RETIRED_NUMBERS`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tesserad.config import format_size
from tesserad.datasets.references import (
    blob_holders_named,
    dataset_held_by,
    delete_unheld_blobs,
    drop_claimed_blobs,
    fine_tuning_jobs,
    hold_blob,
    hold_dataset,
    release_blob,
    release_dataset,
)
from tesserad.dtypes import STRING
from tesserad.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TesseraError,
)
from tesserad.names import validate_name
from tesserad.paging import Page, read_page
from tesserad.registry.aliases import check_alias_room, check_settable_alias, move_alias, with_aliases
from tesserad.registry.architectures import (
    architecture_signature,
    check_graph_fits,
    check_weights_fit,
    with_module_sha256,
)
from tesserad.registry.artifacts import (
    check_onnx,
    safetensors_shapes,
    signature_differences,
    signature_mismatches,
    total_parameters,
)
from tesserad.registry.deployments import (
    current_deployment,
    deployment_versions,
    redeploy,
    resolved,
    warnings_after_move,
)
from tesserad.registry.ensembles import (
    MAX_SPEC_BYTES,
    Member,
    check_no_ensemble_uses_version,
    ensemble_signature,
    index_members,
    member_records,
    parse_ensemble_spec,
    unindex_members,
)
from tesserad.registry.lineage import drop_mark, orphan_derived, with_parent_state
from tesserad.registry.records import (
    ARTIFACT_FORMATS,
    MODEL_KIND,
    SCHEMA,
    Comparison,
    DeploymentRecord,
    Lineage,
    MetricDiff,
    SameBytes,
    Signature,
    ValueDiff,
    VersionKey,
    VersionRecord,
    decode_version,
    encode_version,
    same_version,
)
from tesserad.registry.serving_configs import drop_serving_config
from tesserad.registry.tables import (
    ANONYMOUS,
    DERIVED,
    JOB_VERSIONS,
    LATEST,
    MODELS,
    VERSIONS,
    Notify,
    model_data,
    model_missing,
    new_model_data,
    newest_stored_version,
    no_version,
    put_model_data,
    resolve_number,
)
from tesserad.registry.validation import (
    METRICS_LEFT_OUT_KEY,
    TAGS_LEFT_OUT_KEY,
    fit_metrics,
    fit_params,
    fit_tags,
    validate_metrics,
    validate_params,
    validate_signature,
    validate_tags,
    validate_version_text,
)
from tesserad.store import BlobRef, BlobStore, ReadTxn, Store, WriteTxn, checked_digest, decode_record

# Checks a dataset version named in lineage inside the registering transaction:
# (txn, name, version, sha256) -> the version's sha256, raising NotFound / InvalidArgument.
DatasetCheck = Callable[[ReadTxn, str, int, str], str]
# Checks the tracked run an upload names (UploadVersionHeader.run_id): (txn, run_id) -> the run's
# experiment, raising NotFound / FailedPrecondition.
RunCheck = Callable[[ReadTxn, str], str]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Versions in one `start_uploads` batch: enough that a call's own cost vanishes beside its
# versions', few enough that one transaction holds them all without a noticeable pause.
MAX_BATCH_VERSIONS = 1000
# Artifacts at hand up to this size are checked from memory rather than from their file
# (safetensors' in-memory parser copies the tensors' data).
IN_MEMORY_CHECK_BYTES = 1 << 20


@dataclass(frozen=True)
class VersionUpload:
    """One version whose artifact's bytes are at hand: an item of a batch
    (`Versions.start_uploads`), or one upload (`Versions.submit_upload`)."""

    model: str
    artifact: bytes
    sha256: str
    size_bytes: int
    format: str
    signature: Signature
    architecture: dict[str, Any] | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    lineage: Lineage
    description: str
    create_model_if_missing: bool
    alias: str
    actor: str


@contextlib.contextmanager
def batch_item(index: int) -> Iterator[None]:
    """A domain error raised inside names the batch item it is about, keeping its kind."""
    try:
        yield
    except TesseraError as exc:
        raise type(exc)(f"items[{index}]: {exc.message}") from exc


def _running_future() -> Future[Any]:
    """A future that a waiter who gives up cannot cancel, so that it always settles."""
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    return future


def holder(model: str, version: int) -> str:
    """How a version is named among the holders of its blob and datasets."""
    return f"model:{model}:{version}"


def blob_references(txn: ReadTxn) -> Iterator[tuple[str, str]]:
    """Each model version's artifact: its sha256 and the version in words, for a store check."""
    for _key, raw in txn.scan(VERSIONS):
        record = decode_version(raw)
        yield record.sha256, f"model {record.model} version {record.version} ({record.format} file)"


# The versions holding an upload's bytes that its answer names: the newest few, for a note.
SAME_BYTES_LISTED = 10


def same_bytes(txn: ReadTxn, model: str, version: int, sha256: str) -> SameBytes:
    """`model`'s versions other than `version` that hold the blob `sha256`, read from the blob's
    holders named after `model`'s versions alone: this runs in the upload's write transaction,
    and a popular blob has many holders (one row per version, job or dataset holding it)."""
    prefix = holder(model, 0).removesuffix("0")  # names hold no ':', so no other model's match
    numbers = sorted(
        (int(name.removeprefix(prefix)) for name in blob_holders_named(txn, sha256, prefix)),
        reverse=True,
    )
    others = [number for number in numbers if number != version]
    return SameBytes(tuple(others[:SAME_BYTES_LISTED]), len(others))


def version_record(txn: ReadTxn, model: str, version: int) -> VersionRecord:
    """The stored version with its aliases; NotFound naming the model or the version."""
    raw = txn.get(VERSIONS, (model, version))
    if raw is None:
        raise no_version(txn, model, version)
    return with_lineage_state(txn, with_aliases(txn, decode_version(raw)))


def with_lineage_state(txn: ReadTxn, record: VersionRecord) -> VersionRecord:
    """The record with what its lineage names and is gone since marked deleted: its parent
    (`with_parent_state`), and each dataset version force-deleted since it was registered (the
    delete released the version's hold on it, which its registration took)."""
    record = with_parent_state(txn, record)
    name = holder(record.model, record.version)
    datasets = tuple(
        ds if ds.deleted or dataset_held_by(txn, ds.name, ds.version, name) else replace(ds, deleted=True)
        for ds in record.lineage.datasets
    )
    if datasets == record.lineage.datasets:
        return record
    return replace(record, lineage=replace(record.lineage, datasets=datasets))


def check_not_fine_tuned_from(txn: ReadTxn, record: VersionRecord) -> None:
    """Refuse to delete a version an unfinished fine-tuning job starts from: the job's
    registration would fail its lineage check at the end, after all its training."""
    jobs = fine_tuning_jobs(txn, record.sha256)
    if jobs:
        them = "them" if len(jobs) > 1 else "it"
        raise FailedPrecondition(
            f"version {record.version} of model {record.model!r} is the init_from of unfinished "
            f"training job{'s' if len(jobs) > 1 else ''} {', '.join(jobs)}; wait for {them} to end "
            f"or cancel {them} first"
        )


def delete_version_rows(txn: WriteTxn, record: VersionRecord) -> str:
    """Remove the version and release what it held, marking in the versions derived from it that
    their parent is deleted; the sha256 of the blob that may now be unheld."""
    name = holder(record.model, record.version)
    txn.delete(VERSIONS, (record.model, record.version))
    if record.lineage.job_id:
        txn.delete(JOB_VERSIONS, (record.lineage.job_id, record.model, record.version))
    orphan_derived(txn, record)
    drop_mark(txn, record)
    release_blob(txn, record.sha256, name)
    for ds in record.lineage.datasets:
        release_dataset(txn, ds.name, ds.version, name)
    if record.lineage.parent_version:
        parent = record.lineage.parent_model or record.model
        txn.delete(DERIVED, (parent, record.lineage.parent_version, record.model, record.version))
    if record.format == "ensemble":
        unindex_members(txn, Member(record.model, record.version))
    return record.sha256


def _followed_aliases(txn: ReadTxn, deployment: DeploymentRecord, version: int) -> str:
    """How `deployment` reaches `version` through aliases, in words (" (routes[0] follows
    'latest')"); "" when it names the version by number alone."""
    now = resolved(txn, deployment)
    targets = [(f"routes[{i}]", r.target, r.resolved_version) for i, r in enumerate(now.routes)]
    if now.shadow is not None:
        targets.append(("shadow", now.shadow.target, now.shadow.resolved_version))
    aliases = [(where, t.alias) for where, t, resolved_to in targets if t.alias and resolved_to == version]
    if not aliases:
        return ""
    followed = ", ".join(f"{where} follows {alias!r}" for where, alias in aliases)
    # `latest` moves to this version's predecessor only once it is gone: the deployment must
    # name other versions first.
    if any(alias == LATEST for _, alias in aliases):
        followed += f", which names version {version} until it is deleted"
    return f" ({followed})"


def job_version(txn: ReadTxn, job_id: str, model: str) -> VersionRecord | None:
    """The version of `model` that training job `job_id` registered, if it did."""
    for key, _ in txn.scan(JOB_VERSIONS, (job_id, model)):
        return version_record(txn, model, int(key[2]))
    return None


class Versions:
    """Upload checks, registration, reads, deletes, lineage and comparison of model versions."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        notify: Notify,
        *,
        max_artifact_size: int,
        dataset_check: DatasetCheck | None,
        run_check: RunCheck | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._notify = notify
        self._run_check = run_check
        self._max_artifact_size = max_artifact_size
        self._dataset_check = dataset_check
        # Uploads waiting for `submit_upload`'s worker, and whether it is draining them.
        self._gather_lock = threading.Lock()
        self._gathered: list[tuple[VersionUpload, Future[VersionRecord]]] = []
        self._gathering = False
        self._gatherer = ThreadPoolExecutor(1, thread_name_prefix="registry-uploads")

    def close(self) -> None:
        """Wait for the uploads submitted so far to be stored, and end the worker thread."""
        self._gatherer.shutdown(wait=True)

    # -- uploads ---------------------------------------------------------------------------

    def check_upload(
        self,
        model: str,
        *,
        format: str,
        signature: Signature,
        architecture: dict[str, Any] | None,
        size_bytes: int,
        create_model_if_missing: bool,
        tags: dict[str, str],
        metrics: dict[str, float],
        alias: str,
        description: str,
        params: dict[str, str] | None = None,
        alias_if_room: bool = False,
    ) -> None:
        """What can be checked from an upload's header, before any byte is stored. `params`:
        a caller's, checked as a run's; a trained version's come from its job, whose
        registration must not fail on them after the training. With `alias_if_room`, a model
        with no room for `alias` is no refusal (see `register_version`)."""
        validate_name("model", model)
        validate_tags("tags", tags)
        if params is not None:
            validate_params(params)
        validate_version_text(description, tags)
        validate_metrics(metrics)
        if alias:
            check_settable_alias(alias)
        if format not in ARTIFACT_FORMATS:
            raise InvalidArgument(
                f"format must be safetensors, onnx or ensemble, got {format or 'unspecified'}"
            )
        # A safetensors version sent with no signature takes its architecture's (in _register).
        unsigned = not signature.inputs and not signature.outputs
        validate_signature(signature, required=format == "safetensors" and not (architecture and unsigned))
        if format == "safetensors" and not architecture:
            raise InvalidArgument(
                "architecture is required for a safetensors upload (it says how to build the model)"
            )
        strings = [t.name for t in (*signature.inputs, *signature.outputs) if t.dtype == STRING]
        if strings and format != "onnx":
            raise InvalidArgument(
                f"signature tensor {strings[0]!r} is a string, which only an ONNX version takes or returns "
                f"(a {format} version runs on numbers): declare its dtype as the model's"
            )
        if format == "ensemble" and architecture:
            raise InvalidArgument("an ensemble version has no architecture; its members have theirs")
        if size_bytes <= 0:
            raise InvalidArgument(f"size_bytes must be the artifact's size in bytes (> 0), got {size_bytes}")
        if format == "ensemble" and size_bytes > MAX_SPEC_BYTES:
            raise InvalidArgument(
                f"an ensemble spec is at most {format_size(MAX_SPEC_BYTES)}; this one is {format_size(size_bytes)}"
            )
        if size_bytes > self._max_artifact_size:
            raise ResourceExhausted(
                f"the artifact is {format_size(size_bytes)} ({size_bytes} bytes), over "
                f"limits.max_artifact_size ({format_size(self._max_artifact_size)}); raise the limit "
                "(TESSERA_LIMITS_MAX_ARTIFACT_SIZE) or upload a smaller artifact"
            )
        with self._store.read() as txn:
            if not create_model_if_missing:
                model_data(txn, model)
            if alias and not alias_if_room:
                # Before any byte is stored; the registration's transaction checks again.
                check_alias_room(txn, model, alias)

    def with_tracked_run(self, lineage: Lineage, run_id: str) -> Lineage:
        """`lineage` naming the run `run_id` of this daemon's tracking, checked to exist and not be
        deleted, with its experiment. Runs are never removed, only marked deleted, so a run
        checked here stays there for the registration that follows."""
        if lineage.run_id not in ("", run_id):
            raise InvalidArgument(
                f"lineage.run_id is {lineage.run_id[:80]!r} and run_id {run_id[:80]!r}: set run_id alone "
                "for a run of this daemon (lineage.run_id names another tracker's, unchecked)"
            )
        if self._run_check is None:
            raise FailedPrecondition("this daemon keeps no runs to check run_id against")
        with self._store.read() as txn:
            experiment = self._run_check(txn, run_id)
        if lineage.experiment not in ("", experiment):
            raise InvalidArgument(
                f"lineage.experiment is {lineage.experiment[:80]!r}, but run {run_id} is in experiment "
                f"{experiment!r}: leave lineage.experiment empty"
            )
        return replace(lineage, run_id=run_id, experiment=experiment)

    def register_version(
        self,
        model: str,
        *,
        format: str,
        blob: BlobRef,
        signature: Signature | None = None,
        architecture: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        lineage: Lineage | None = None,
        description: str = "",
        create_model_if_missing: bool = False,
        alias: str = "",
        actor: str = ANONYMOUS,
        once_per_job: bool = False,
        datasets_may_be_deleted: bool = False,
        alias_if_room: bool = False,
        expected_parent: VersionRecord | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> VersionRecord:
        """Record a stored blob as the model's next version (all or nothing).

        The artifact is checked first (safetensors: header, and tensors that fit the
        architecture; a version without a signature takes the architecture's. onnx:
        onnx.checker and, when a signature is given, that it matches the graph; a version
        without one takes the graph's).
        `params`, `metrics` and `tags` are not refused here (an upload's were checked with its
        header): a job's must not fail its registration after the training, nor an export on
        what its source kept from before a rule, so `fit_params`, `fit_metrics` and `fit_tags`
        cut any over the bounds, and the params name what was left out.
        On any failure the blob is deleted unless something else holds it; either way the claim
        of the put that stored `blob` ends here (BlobStore's claims). With `alias`, the returned
        record's `alias_moved` says where the alias pointed before; a model with no room for it
        (MAX_MODEL_ALIASES) when the version is committed refuses the registration
        (ResourceExhausted), unless `alias_if_room`: then the version is registered without it,
        and the record's `alias_refused` says why. With `once_per_job`, a
        lineage job that has a version of the model already gets that version back, unchanged
        (its alias stays where it is; the record's aliases say whether `alias` points at it): a
        training job resumed after its registration was committed registers once. With
        `datasets_may_be_deleted`, a lineage dataset version named with its sha256 that is gone
        (deleted, or deleted and its number uploaded again as other data) is recorded as deleted
        instead of refused: a training job's, force-deleted
        while it ran, must not lose the trained model. With `expected_parent` (the lineage
        parent as the caller read it), a parent whose number is another version's now (its model
        deleted and created again) is refused as gone (NotFound). `before_commit` is called last
        in the recording transaction: what it raises refuses the registration.
        """
        try:
            fitted_metrics, metrics_left_out = fit_metrics(metrics or {})
            fitted_tags, tags_left_out = fit_tags(tags or {}, description)
            notes = {
                key: note
                for key, note in (
                    (METRICS_LEFT_OUT_KEY, metrics_left_out),
                    (TAGS_LEFT_OUT_KEY, tags_left_out),
                )
                if note
            }
            self.check_upload(
                model,
                format=format,
                signature=signature or Signature(),
                architecture=architecture,
                size_bytes=blob.size,
                create_model_if_missing=create_model_if_missing,
                tags=fitted_tags,
                metrics=fitted_metrics,
                alias=alias,
                description=description,
                alias_if_room=alias_if_room,
            )
            record = self._prepare(
                model,
                format=format,
                blob=blob,
                signature=signature or Signature(),
                architecture=architecture,
                params=fit_params(params or {}, notes),
                metrics=fitted_metrics,
                tags=fitted_tags,
                lineage=lineage or Lineage(),
                description=description,
                create_model_if_missing=create_model_if_missing,
                alias=alias,
                actor=actor,
                once_per_job=once_per_job,
                datasets_may_be_deleted=datasets_may_be_deleted,
                alias_if_room=alias_if_room,
                expected_parent=expected_parent,
                before_commit=before_commit,
            )
            committed = self._commit(record, {model}, {blob.sha256})
        except BaseException:
            drop_claimed_blobs(self._store, self._blobs, {blob.sha256})
            raise
        registered = committed.result()
        if registered.sha256 != blob.sha256:
            # The job's earlier version, of other bytes: nothing holds this blob.
            delete_unheld_blobs(self._store, self._blobs, {blob.sha256})
        return registered

    def submit_upload(self, upload: VersionUpload) -> Future[VersionRecord]:
        """Register a version whose artifact is at hand, with the checks, errors and promises of
        `check_upload`, `checked_digest` (NotAsDeclared when `sha256` or `size_bytes` differ from
        the artifact), the blob's write and `register_version`, in that order.

        Returns at once: the upload is gathered with those submitted while the previous group
        was being stored, and one worker thread checks and stores the whole group (its blobs
        by `BlobStore.put_each`: fsyncs in parallel, each shard directory fsynced once) and
        queues its versions for one group commit. Each upload still succeeds or fails alone.
        Per call, a hand-off to a worker thread and a blob stored alone cost the daemon more
        than storing a small version does. The future resolves when the version is durable,
        or fails once what the upload stored is removed again.
        """
        settled = _running_future()
        with self._gather_lock:
            self._gathered.append((upload, settled))
            if self._gathering:
                return settled  # the running drain takes it with the next group
            self._gathering = True
        self._gatherer.submit(self._drain_gathered)
        return settled

    def _drain_gathered(self) -> None:
        """Store every gathered upload, group by group, until none is left."""
        while True:
            with self._gather_lock:
                group, self._gathered = self._gathered, []
                if not group:
                    self._gathering = False
                    return
            try:
                self._store_group(group)
            except BaseException as exc:
                for _, settled in group:
                    if not settled.done():
                        settled.set_exception(exc)

    def _store_group(self, group: list[tuple[VersionUpload, Future[VersionRecord]]]) -> None:
        """Check and store each upload of `group`, and submit the versions of those that pass
        in one go; one that fails settles its future with its error alone."""
        checked: list[tuple[VersionUpload, str, Future[VersionRecord]]] = []
        for upload, settled in group:
            try:
                self._check_header(upload)
                digest = checked_digest(
                    upload.artifact,
                    upload.sha256,
                    upload.size_bytes,
                    self._max_artifact_size,
                    "limits.max_artifact_size",
                )
            except Exception as exc:
                settled.set_exception(exc)
            else:
                checked.append((upload, digest, settled))
        stored = self._blobs.put_each([(digest, upload.artifact) for upload, digest, _ in checked])
        prepared: list[tuple[Callable[[WriteTxn], VersionRecord], str, str, Future[VersionRecord]]] = []
        for (upload, digest, settled), failure in zip(checked, stored, strict=True):
            try:
                if failure is not None:
                    raise failure
                record = self._prepare_upload(upload, digest)
            except Exception as exc:
                self._drop_failed({upload.model}, {digest}, exc, settled)
            else:
                prepared.append((record, upload.model, digest, settled))
        committed = self._store.submit_all([record for record, *_ in prepared])
        for (_, model, digest, settled), commit in zip(prepared, committed, strict=True):
            commit.add_done_callback(self._settler({model}, {digest}, settled))

    def start_uploads(self, items: Sequence[VersionUpload]) -> Future[list[VersionRecord]]:
        """Many small versions at once, all or nothing.

        Each item gets `submit_upload`'s checks (header, then declared hash and size, then the
        artifact); an item that fails raises its error with the message prefixed "items[i]: ",
        after removing what the batch stored. The blobs are written (each fsynced, as any
        blob is, in parallel: `BlobStore.put_many`) and every version is recorded in ONE
        transaction of the group commit, versions of one model numbered in the order of
        `items`; a failure there (a lineage parent deleted meanwhile) records none of them.
        The future resolves to the versions, in order, once they are durable.
        """
        if not items:
            raise InvalidArgument("items is empty; send at least one version")
        if len(items) > MAX_BATCH_VERSIONS:
            raise InvalidArgument(
                f"a batch holds at most {MAX_BATCH_VERSIONS} versions, got {len(items)}; split it"
            )
        for index, item in enumerate(items):
            with batch_item(index):
                self._check_header(item)
        digests = []
        for index, item in enumerate(items):
            with batch_item(index):
                digests.append(
                    checked_digest(
                        item.artifact,
                        item.sha256,
                        item.size_bytes,
                        self._max_artifact_size,
                        "limits.max_artifact_size",
                    )
                )
        stored = set(digests)
        try:
            self._blobs.put_many(dict(zip(digests, (item.artifact for item in items), strict=True)))
            records: list[Callable[[WriteTxn], VersionRecord]] = []
            for index, (item, digest) in enumerate(zip(items, digests, strict=True)):
                with batch_item(index):
                    records.append(self._prepare_upload(item, digest))

            def record_all(txn: WriteTxn) -> list[VersionRecord]:
                recorded = []
                for index, record in enumerate(records):
                    with batch_item(index):
                        recorded.append(record(txn))
                return recorded

            return self._commit(record_all, {item.model for item in items}, stored)
        except BaseException:
            drop_claimed_blobs(self._store, self._blobs, stored)
            raise

    def _check_header(self, upload: VersionUpload) -> None:
        """`check_upload` for an upload whose bytes are at hand."""
        self.check_upload(
            upload.model,
            format=upload.format,
            signature=upload.signature,
            architecture=upload.architecture,
            size_bytes=upload.size_bytes,
            create_model_if_missing=upload.create_model_if_missing,
            tags=upload.tags,
            metrics=upload.metrics,
            alias=upload.alias,
            description=upload.description,
            params=upload.params,
        )

    def _prepare_upload(self, upload: VersionUpload, digest: str) -> Callable[[WriteTxn], VersionRecord]:
        """`_prepare` for an upload whose blob `digest` was just stored from its bytes at hand."""
        return self._prepare(
            upload.model,
            format=upload.format,
            blob=BlobRef(digest, len(upload.artifact)),
            artifact=upload.artifact,
            signature=upload.signature,
            architecture=upload.architecture,
            params=upload.params,
            metrics=upload.metrics,
            tags=upload.tags,
            lineage=upload.lineage,
            description=upload.description,
            create_model_if_missing=upload.create_model_if_missing,
            alias=upload.alias,
            actor=upload.actor,
        )

    def _prepare(
        self,
        model: str,
        *,
        format: str,
        blob: BlobRef,
        signature: Signature,
        architecture: dict[str, Any] | None,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        lineage: Lineage,
        description: str,
        create_model_if_missing: bool,
        alias: str,
        actor: str,
        artifact: bytes | None = None,
        once_per_job: bool = False,
        datasets_may_be_deleted: bool = False,
        alias_if_room: bool = False,
        expected_parent: VersionRecord | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Callable[[WriteTxn], VersionRecord]:
        """Check the artifact of a blob whose header checks (`check_upload`) have passed; the
        function that records its version in a write transaction. `artifact`: the blob's bytes,
        when the caller still holds them and has just stored them."""
        # The blob was hashed as it was written (BlobWriter.commit); hashing it again here would
        # halve upload throughput (measured with bench/transfer_bench.py).
        if architecture and not once_per_job:
            # A job's records the file it trained with, found at its submit.
            architecture = with_module_sha256(architecture)
        path = self._blobs.path(blob.sha256)
        if artifact is None and not path.is_file():
            raise DataLoss(f"blob {blob.sha256} is missing from the blob directory; upload it again")
        # A small artifact at hand is checked in memory: reading its file back cost a small
        # registration more system calls than writing it.
        in_hand = artifact if artifact is not None and len(artifact) <= IN_MEMORY_CHECK_BYTES else None
        if format == "onnx":
            graph_signature, parameter_count = check_onnx(path)
            if architecture:
                check_graph_fits(architecture, graph_signature)
            if signature.inputs or signature.outputs:
                problems = signature_mismatches(signature, graph_signature)
                if problems:
                    raise InvalidArgument(
                        "the declared signature does not match the ONNX graph: " + "; ".join(problems)
                    )
            else:
                signature = graph_signature
                validate_signature(signature, required=True)
        elif format == "safetensors":
            shapes = safetensors_shapes(path if in_hand is None else in_hand)
            parameter_count = total_parameters(shapes)
            assert architecture  # check_upload requires it
            check_weights_fit(shapes, architecture)
            if not signature.inputs and not signature.outputs:
                signature = architecture_signature(architecture)
        else:
            ensemble = parse_ensemble_spec(path.read_bytes() if in_hand is None else in_hand)
            parameter_count = ensemble.parameter_count

        # Recorded through the store's group commit: registrations in flight together share one
        # commit and its fsync, and the result comes back only once that commit is durable.
        def record_version(txn: WriteTxn) -> VersionRecord:
            if once_per_job and lineage.job_id:
                registered = job_version(txn, lineage.job_id, model)
                if registered is not None:
                    # With its aliases: whether the alias was set the first time is read there.
                    return replace(with_aliases(txn, registered), registered_before=True)
            raw = txn.get(MODELS, (model,))
            if raw is None:
                if not create_model_if_missing:
                    raise model_missing(txn, model)
                fields = new_model_data(txn, model, "", {})
            else:
                fields = decode_record(raw, MODEL_KIND, SCHEMA)[1]
            number = int(fields["next_version"])
            checked_lineage = self._check_lineage(
                txn, model, lineage, datasets_may_be_deleted, expected_parent
            )
            version_signature, version_parameters = signature, parameter_count
            if format == "ensemble":
                # Checked in the recording transaction, so a member deleted meanwhile is seen.
                members = member_records(ensemble, lambda m, v: version_record(txn, m, v))
                version_signature = ensemble_signature(ensemble, members, signature)
                version_parameters += sum(r.parameter_count for r in members)
            record = VersionRecord(
                model=model,
                version=number,
                format=format,
                description=description,
                signature=version_signature,
                architecture=architecture,
                params=dict(params),
                metrics=dict(metrics),
                tags=dict(tags),
                lineage=checked_lineage,
                sha256=blob.sha256,
                size_bytes=blob.size,
                created_at=time.time(),
                created_by=actor,
                parameter_count=version_parameters,
            )
            fields["next_version"] = number + 1
            fields["version_count"] = int(fields["version_count"]) + 1
            fields["latest_version"] = number
            fields["updated_at"] = record.created_at
            txn.put(VERSIONS, (model, number), encode_version(record))
            if lineage.job_id:
                txn.put(JOB_VERSIONS, (lineage.job_id, model, number), b"")
            hold_blob(txn, blob.sha256, holder(model, number))
            for ds in checked_lineage.datasets:
                if not ds.deleted:
                    hold_dataset(txn, ds.name, ds.version, holder(model, number))
            if lineage.parent_version:
                txn.put(DERIVED, (lineage.parent_model or model, lineage.parent_version, model, number), b"")
            if format == "ensemble":
                index_members(txn, Member(model, number), ensemble)
            moved, refused = None, ""
            if alias:
                try:
                    moved = move_alias(txn, fields, alias, number, actor, expected=None)
                except ResourceExhausted as exc:
                    # The cap, reached since the checks before the work: move_alias wrote nothing.
                    if not alias_if_room:
                        raise
                    refused = exc.message
            put_model_data(txn, fields)
            # After the model's data: `latest` resolves to the new version from there.
            warnings = warnings_after_move(txn, model, alias) if moved is not None else ()
            if before_commit is not None:
                before_commit()
            return replace(
                with_aliases(txn, record),
                alias_moved=moved,
                alias_refused=refused,
                deployment_warnings=warnings,
                same_bytes=same_bytes(txn, model, number, blob.sha256),
            )

        return record_version

    def _commit(self, record: Callable[[WriteTxn], T], models: set[str], blobs: set[str]) -> Future[T]:
        """Queue `record` for the store's group commit (registrations in flight together share
        one commit and its fsync). The future resolves once the commit is durable and the
        listeners of `models` were told, or fails once `blobs`, unless something else holds
        them, are removed again. Either way the puts' claims on `blobs` end here."""
        settled: Future[T] = _running_future()
        self._store.submit(record).add_done_callback(self._settler(models, blobs, settled))
        return settled

    def _settler(self, models: set[str], blobs: set[str], settled: Future[T]) -> Callable[[Future[T]], None]:
        """What settles `settled` from the outcome of its commit (see `_commit`)."""

        def settle(committed: Future[T]) -> None:
            # In the committing thread, before any waiter sees the outcome.
            error = committed.exception()
            if error is None:
                self._blobs.release(*blobs)  # the versions hold them now
                for model in sorted(models):
                    self._notify(model)
                settled.set_result(committed.result())
            else:
                self._drop_failed(models, blobs, error, settled)

        return settle

    def _drop_failed(
        self, models: set[str], blobs: set[str], error: BaseException, settled: Future[T]
    ) -> None:
        """Fail `settled` with `error` once `blobs`, unless something else holds them, are removed."""
        try:
            drop_claimed_blobs(self._store, self._blobs, blobs)
        except Exception:
            log.exception(
                "removing the blobs of a failed registration failed", extra={"models": sorted(models)}
            )
        settled.set_exception(error)

    def _check_lineage(
        self,
        txn: ReadTxn,
        model: str,
        lineage: Lineage,
        datasets_may_be_deleted: bool = False,
        expected_parent: VersionRecord | None = None,
    ) -> Lineage:
        """`lineage` once checked, each dataset version with its sha256: named by number alone,
        a dataset deleted and uploaded again would give that number to other data. With
        `datasets_may_be_deleted`, one named with its sha256 that is gone is marked deleted.
        With `expected_parent`, the parent must still be that version (`register_version`)."""
        if lineage.parent_model:
            validate_name("lineage.parent_model", lineage.parent_model)
        if lineage.parent_version < 0:
            raise InvalidArgument(f"lineage.parent_version must be >= 1, got {lineage.parent_version}")
        if lineage.parent_version:
            parent_model = lineage.parent_model or model
            raw = txn.get(VERSIONS, (parent_model, lineage.parent_version))
            if raw is None:
                raise NotFound(
                    f"lineage.parent_version: model {parent_model!r} has no version {lineage.parent_version}"
                )
            if expected_parent is not None and not same_version(decode_version(raw), expected_parent):
                raise NotFound(
                    f"lineage.parent_version: {parent_model} v{lineage.parent_version} was deleted and its "
                    "number given to another version"
                )
        elif lineage.parent_model:
            raise InvalidArgument("lineage.parent_model is set without lineage.parent_version")
        datasets = []
        for i, ds in enumerate(lineage.datasets):
            validate_name(f"lineage.datasets[{i}].name", ds.name)
            if ds.version < 1:
                raise InvalidArgument(f"lineage.datasets[{i}].version must be >= 1, got {ds.version}")
            if self._dataset_check is not None:
                try:
                    ds = replace(ds, sha256=self._dataset_check(txn, ds.name, ds.version, ds.sha256))
                except (NotFound, InvalidArgument) as error:
                    # InvalidArgument: the number names other data now (the sha256 differs).
                    if not (datasets_may_be_deleted and ds.sha256):
                        raise type(error)(f"lineage.datasets[{i}]: {error.message}") from error
                    ds = replace(ds, deleted=True)
            datasets.append(ds)
        return replace(lineage, datasets=tuple(datasets))

    # -- reads -----------------------------------------------------------------------------

    def resolve(self, model: str, version: int | None = None, alias: str | None = None) -> VersionRecord:
        """The version named by number, or by alias ("latest", the default, is the newest)."""
        validate_name("model", model)
        with self._store.read() as txn:
            return version_record(txn, model, resolve_number(txn, model, version, alias))

    def get_version(self, model: str, version: int) -> VersionRecord:
        return self.resolve(model, version=version)

    def job_version(self, job_id: str, model: str) -> VersionRecord | None:
        """The version of `model` that training job `job_id` registered, if it did (and it is kept)."""
        with self._store.read() as txn:
            return job_version(txn, job_id, model)

    def list_versions(self, model: str, page_size_: int = 0, page_token: str = "") -> Page[VersionRecord]:
        """Newest first."""
        validate_name("model", model)
        with self._store.read() as txn:
            model_data(txn, model)
            return read_page(
                txn,
                VERSIONS,
                (model,),
                query={"list": "versions", "model": model},
                page_token=page_token,
                requested_size=page_size_,
                item=lambda _key, raw: with_lineage_state(txn, with_aliases(txn, decode_version(raw))),
                reverse=True,
            )

    def open_artifact(self, record: VersionRecord, chunk_size: int, offset: int = 0) -> Iterator[bytes]:
        """The artifact's bytes from byte `offset` in chunks, verified whole against its sha256
        (DataLoss if damaged).
        Its file is opened now: a delete of the version after this leaves the stream whole, and
        one since `record` was read is NotFound, as for any version that is gone."""
        try:
            return self._blobs.open_chunks(record.sha256, chunk_size, offset)
        except DataLoss:
            self.resolve(record.model, record.version)
            raise

    def artifact_path(self, record: VersionRecord) -> Any:
        """The artifact's file after checking its hash: a context manager yielding a Path."""
        return self._blobs.open_verified(record.sha256)

    # -- deletes ---------------------------------------------------------------------------

    def delete_version(self, model: str, version: int) -> None:
        """Refused while an alias, the current deployment, an ensemble version (as a member)
        or an unfinished fine-tuning job (its init_from) uses the version."""
        validate_name("model", model)
        with self._store.write() as txn:
            record = version_record(txn, model, version)
            aliases = [a for a in record.aliases if a != LATEST]
            users = [f"alias {a!r}" for a in aliases]
            remedies = ["move the aliases to another version (SetAlias) or drop them (DeleteAlias)"]
            deployment = current_deployment(txn, model)
            if deployment is not None and version in deployment_versions(txn, deployment):
                users.append(
                    f"deployment revision {deployment.revision}{_followed_aliases(txn, deployment, version)}"
                )
                remedies.append(redeploy("serve"))
            if users:
                raise FailedPrecondition(
                    f"version {version} of model {model!r} is in use by {', '.join(users)}; first "
                    + " and ".join(remedies[0 if aliases else 1 :])
                )
            check_not_fine_tuned_from(txn, record)
            check_no_ensemble_uses_version(txn, Member(model, version))
            sha256 = delete_version_rows(txn, record)
            fields = model_data(txn, model)
            fields["version_count"] = int(fields["version_count"]) - 1
            fields["updated_at"] = time.time()
            drop_serving_config(fields, version)
            if fields["latest_version"] == version:
                fields["latest_version"] = newest_stored_version(txn, model)
            put_model_data(txn, fields)
        delete_unheld_blobs(self._store, self._blobs, {sha256})
        self._notify(model)

    # -- lineage and comparison ------------------------------------------------------------

    def get_lineage(
        self, model: str, version: int | None = None, alias: str | None = None
    ) -> tuple[VersionRecord, list[VersionKey]]:
        """The version (its lineage included) and the versions whose parent it is."""
        validate_name("model", model)
        with self._store.read() as txn:
            record = version_record(txn, model, resolve_number(txn, model, version, alias))
            derived = [
                VersionKey(str(k[2]), int(k[3])) for k, _ in txn.scan(DERIVED, (model, record.version))
            ]
        return record, derived

    def compare(
        self, a: tuple[str, int | None, str | None], b: tuple[str, int | None, str | None]
    ) -> Comparison:
        """Differences between two versions (any models): params, metrics, signature, size, lineage."""
        ra = self.resolve(*a)
        rb = self.resolve(*b)
        params = [
            ValueDiff(k, ra.params.get(k, ""), rb.params.get(k, ""), k in ra.params, k in rb.params)
            for k in sorted(set(ra.params) | set(rb.params))
            if ra.params.get(k) != rb.params.get(k)
        ]
        metrics = []
        for k in sorted(set(ra.metrics) | set(rb.metrics)):
            va, vb = ra.metrics.get(k), rb.metrics.get(k)
            if va != vb:
                delta = vb - va if va is not None and vb is not None else 0.0
                metrics.append(MetricDiff(k, va or 0.0, vb or 0.0, va is not None, vb is not None, delta))
        la, lb = _flat_lineage(ra), _flat_lineage(rb)
        lineage = [
            ValueDiff(k, la.get(k, ""), lb.get(k, ""), k in la, k in lb)
            for k in sorted(set(la) | set(lb))
            if la.get(k) != lb.get(k)
        ]
        differences = signature_differences(ra.signature, rb.signature)
        return Comparison(
            ra, rb, params, metrics, not differences, differences, rb.size_bytes - ra.size_bytes, lineage
        )


def _flat_lineage(record: VersionRecord) -> dict[str, str]:
    lineage = record.lineage
    parent = ""
    if lineage.parent_version:
        parent = f"{lineage.parent_model or record.model}:{lineage.parent_version}"
    if lineage.parent_deleted is not None:
        # A model created again after a tesserad from before RETIRED_NUMBERS deleted it numbers
        # from 1: the same name and number may be another parent.
        gone = lineage.parent_deleted.sha256
        parent += f" deleted sha256:{gone}" if gone else " deleted"
    flat = {
        "run_id": lineage.run_id,
        "job_id": lineage.job_id,
        "experiment": lineage.experiment,
        "parent": parent,
        "job_spec": json.dumps(lineage.job_spec, sort_keys=True, separators=(",", ":"))
        if lineage.job_spec
        else "",
    }
    for ds in lineage.datasets:
        flat[f"dataset.{ds.name}"] = f"v{ds.version} sha256:{ds.sha256}" if ds.sha256 else f"v{ds.version}"
    return {k: v for k, v in flat.items() if v}
