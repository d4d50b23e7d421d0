"""Upgrades of stores written by an older tesserad, run at start before the registry answers.

- Model records written before they kept `version_count` and `latest_version`: each model
  without the fields gets them from one walk over its versions, in its own write transaction,
  with progress in the log. A store whose records all have them costs one scan of the models
  table.
- The index of ensemble members (`ensembles.index_members`): emptied, then every ensemble
  version's spec is read once and its members indexed, in write transactions of a batch of
  versions each; the last one writes a marker in the "meta" table, after which a start costs
  one read. A marker an older daemon may have outlived is dropped first (tesserad.store.schema),
  and the index is built again.
- Marks of deleted lineage parents (`lineage`): a version whose parent is missing, or was
  registered after it (its model deleted and created again), is marked once, with what was
  lost (sha256, time) left empty; batched and finished by a marker in "meta" likewise.
- The index of the versions training jobs registered (`JOB_VERSIONS`): emptied, then batched
  and finished by a marker in "meta" likewise.
- The early_stopping.* params of versions jobs registered with early stopping off (patience 0),
  which jobs recorded before they recorded them only for a spec that turns it on: dropped,
  batched and finished by a marker in "meta" likewise.
- The next numbers of models deleted before `RETIRED_NUMBERS`: every model version the store
  still names (lineage, its marks, ensemble members, and what the daemon's other parts name:
  `References`) is read once, and each such name without a model gets a row past the highest
  number named, and a live model of such a name (an older daemon created it again from 1) its
  next number past it and past its name's row (which it takes over, its next alias event too),
  in one write transaction with the marker (an interrupted pass left nothing and runs again);
  numbers are only ever raised.
  A reference that can name no version (no model name, a number past int64) is passed over with
  a warning: start-up never fails on what a record holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from tesserad.errors import TesseraError
from tesserad.names import ReferenceTally, named_versions
from tesserad.registry.ensembles import Member, index_members, parse_ensemble_spec
from tesserad.registry.lineage import DELETED_PARENT_KIND, DELETED_PARENT_SCHEMA, mark_parent_deleted
from tesserad.registry.records import MODEL_KIND, SCHEMA, VersionRecord, decode_version, encode_version
from tesserad.registry.tables import (
    DELETED_PARENTS,
    DERIVED,
    ENSEMBLE_MEMBERS,
    JOB_VERSIONS,
    MEMBER_OF,
    MODELS,
    RETIRED_NUMBERS,
    VERSIONS,
    newest_stored_version,
    put_model_data,
    raise_next_version,
    raise_retired_number,
)
from tesserad.run_params import without_early_stopping_off
from tesserad.store import (
    BlobStore,
    Key,
    ReadTxn,
    Store,
    WriteTxn,
    decode_record,
    each_row_once,
    encode_record,
)

log = logging.getLogger(__name__)

# The training jobs' table (tesserad.training.jobs), named here because training depends on the
# registry and not the other way round.
JOBS = "jobs"

# In the "meta" table once every ensemble version's members are indexed.
MEMBERS_INDEXED = ("ensemble_members_indexed",)
# In the "meta" table once every version whose lineage parent is gone is marked.
PARENTS_MARKED = ("deleted_parents_marked",)
# In the "meta" table once every version a training job registered is indexed by its job.
JOB_VERSIONS_INDEXED = ("job_versions_indexed",)
# In the "meta" table once every deleted model the store still names has its next number kept,
# and every live model numbers on past what its name is named with. A new key: stores marked
# under the first one ("model_numbers_retired_derived") were passed without reading sweeps, and
# leaving live models alone, so they are passed again (numbers are only raised).
NUMBERS_RETIRED = ("model_numbers_past_references",)
# In the "meta" table once no version a job registered holds the early_stopping.* params of a spec
# without early stopping (as the job's run: training.tracking.EARLY_STOPPING_OFF_DROPPED).
EARLY_STOPPING_OFF_DROPPED = ("version_early_stopping_off_dropped",)
# The markers above, each with the store schema from which every daemon keeps what it marks
# (tesserad.store.schema drops those an older daemon may have broken).
MARKERS: dict[Key, int] = {
    MEMBERS_INDEXED: 1,
    PARENTS_MARKED: 1,
    JOB_VERSIONS_INDEXED: 1,
    NUMBERS_RETIRED: 4,
    # A tesserad of schema 4 from before the change may register such params again: they differ
    # by absence only, short of a schema that older ones could not open.
    EARLY_STOPPING_OFF_DROPPED: 4,
}
# The (model, version) pairs the store's records outside the registry name, as those records hold
# them: the pass keeps only those that can name a version (`named_versions`).
References = Callable[[ReadTxn], Iterable[tuple[object, object]]]
# Versions read per write transaction of the member index's and the marks' backfills.
_INDEX_BATCH = 512


def backfill_version_counts(store: Store) -> int:
    """Give every model record its version count and latest version; returns how many needed it."""
    with store.read() as txn:
        names = [
            str(key[0])
            for key, raw in txn.scan(MODELS)
            if "version_count" not in decode_record(raw, MODEL_KIND, SCHEMA)[1]
        ]
    if not names:
        return 0
    log.info("backfilling version counts of models", extra={"models": len(names)})
    for done, name in enumerate(names, 1):
        with store.write() as txn:
            raw = txn.get(MODELS, (name,))
            if raw is None:
                continue
            fields = decode_record(raw, MODEL_KIND, SCHEMA)[1]
            fields["version_count"] = txn.count(VERSIONS, (name,))
            fields["latest_version"] = newest_stored_version(txn, name)
            put_model_data(txn, fields)
        log.info(
            "backfilled version counts",
            extra={"model": name, "versions": fields["version_count"], "done": done, "of": len(names)},
        )
    return len(names)


def _each_version_once(
    store: Store,
    marker: tuple[str],
    visit: Callable[[WriteTxn, VersionRecord], bool],
    rebuilt: tuple[str, ...] = (),
) -> int:
    """`each_row_once` over the stored versions, each decoded for `visit`."""
    return each_row_once(
        store,
        VERSIONS,
        marker,
        lambda txn, _key, raw: visit(txn, decode_version(raw)),
        batch=_INDEX_BATCH,
        rebuilt=rebuilt,
    )


def backfill_ensemble_members(store: Store, blobs: BlobStore) -> int:
    """Index the members of every ensemble version, once; returns how many were indexed."""

    def index(txn: WriteTxn, record: VersionRecord) -> bool:
        if record.format != "ensemble":
            return False
        ensemble = Member(record.model, record.version)
        try:
            spec = parse_ensemble_spec(blobs.read_bytes(record.sha256))
        except TesseraError as exc:
            # Such a version cannot load either; its members stay deletable.
            log.warning(
                "an ensemble version's spec cannot be read; its members are not pinned",
                extra={"ensemble": ensemble.label, "error": exc.message},
            )
            return False
        index_members(txn, ensemble, spec)
        gone = [m.label for m in spec.members if not txn.exists(VERSIONS, (m.model, m.version))]
        if gone:
            log.warning(
                "an ensemble version names members deleted before they were pinned; it "
                "cannot load: delete it",
                extra={"ensemble": ensemble.label, "members": gone},
            )
        return True

    indexed = _each_version_once(store, MEMBERS_INDEXED, index, (ENSEMBLE_MEMBERS, MEMBER_OF))
    if indexed:
        log.info("indexed the members of ensemble versions", extra={"ensembles": indexed})
    return indexed


def backfill_deleted_parents(store: Store) -> int:
    """Mark the versions whose lineage parent is gone, once; returns how many were marked."""

    def mark(txn: WriteTxn, record: VersionRecord) -> bool:
        if not _parent_gone(txn, record):
            return False
        child = (record.model, record.version)
        parent = (record.lineage.parent_model or record.model, record.lineage.parent_version)
        mark_parent_deleted(txn, child, parent, None)
        txn.delete(DERIVED, (*parent, *child))
        return True

    marked = _each_version_once(store, PARENTS_MARKED, mark)
    if marked:
        log.info("marked the deleted parents of versions' lineage", extra={"versions": marked})
    return marked


def drop_early_stopping_off_params(store: Store) -> int:
    """Drop, once, the early_stopping.* params of each version a job registered whose spec left
    early stopping off (patience 0), as its run's are dropped; returns how many versions changed."""

    def drop(txn: WriteTxn, record: VersionRecord) -> bool:
        kept = without_early_stopping_off(record.params) if _registered_by_job(txn, record) else None
        if kept is None:
            return False
        txn.put(
            VERSIONS, (record.model, record.version), encode_version(dataclasses.replace(record, params=kept))
        )
        return True

    dropped = _each_version_once(store, EARLY_STOPPING_OFF_DROPPED, drop)
    if dropped:
        log.info(
            "dropped the early_stopping params of versions trained without early stopping",
            extra={"versions": dropped},
        )
    return dropped


def _registered_by_job(txn: ReadTxn, record: VersionRecord) -> bool:
    """Whether a tessera training job registered `record`: its lineage keeps the job's spec, or
    its job is in the jobs table. A lineage.job_id alone may name another tracker's job (an
    upload's lineage is the client's), whose params are the client's to keep."""
    lineage = record.lineage
    return lineage.job_spec is not None or (bool(lineage.job_id) and txn.exists(JOBS, (lineage.job_id,)))


def backfill_job_versions(store: Store) -> int:
    """Index the versions training jobs registered by job, once; returns how many were indexed."""

    def index(txn: WriteTxn, record: VersionRecord) -> bool:
        if not record.lineage.job_id:
            return False
        txn.put(JOB_VERSIONS, (record.lineage.job_id, record.model, record.version), b"")
        return True

    indexed = _each_version_once(store, JOB_VERSIONS_INDEXED, index, (JOB_VERSIONS,))
    if indexed:
        log.info("indexed the versions training jobs registered", extra={"versions": indexed})
    return indexed


def _parent_gone(txn: ReadTxn, record: VersionRecord) -> bool:
    """Whether `record`'s lineage names a parent that no longer exists, unmarked: the version of
    that number is missing, or was registered after its child (so it is another one)."""
    lineage = record.lineage
    if not lineage.parent_version or txn.exists(DELETED_PARENTS, (record.model, record.version)):
        return False
    raw = txn.get(VERSIONS, (lineage.parent_model or record.model, lineage.parent_version))
    return raw is None or decode_version(raw).created_at > record.created_at


def backfill_retired_numbers(store: Store, referenced: References) -> int:
    """Once per store: give each name a model deleted before `RETIRED_NUMBERS` left named (by the
    registry's records or `referenced`) the number after the highest it is named with, so that a
    model created again under it never gives a number something still names; a live model (one
    such a tesserad created again, from 1) numbers on past it, and past the number its name
    keeps. How many names got a number or were raised."""
    with store.read() as txn:
        if txn.exists("meta", NUMBERS_RETIRED):
            return 0
        started = time.monotonic()
        highest: dict[str, int] = {}
        tally = ReferenceTally()
        for name, number in named_versions(
            itertools.chain(_registry_references(txn), referenced(txn)), tally
        ):
            highest[name] = max(highest.get(name, 0), number)
        # Every record that can name a version is read, once: on a large store, start-up's wait.
        log.info(
            "read the model versions the store's records name",
            extra={
                "references": tally.read,
                "models": len(highest),
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        for key, _ in txn.scan(RETIRED_NUMBERS):
            highest.setdefault(str(key[0]), 0)
    kept = raised = 0
    with store.write() as txn:
        for name, number in highest.items():
            if txn.exists(MODELS, (name,)):
                raised += raise_next_version(txn, name, number + 1)
            else:
                kept += raise_retired_number(txn, name, number + 1)
        txn.put("meta", NUMBERS_RETIRED, encode_record(NUMBERS_RETIRED[0], 1, {}))
    tally.warn_passed_over(
        log, "records name model versions that no model can have; their numbers are passed over"
    )
    if kept:
        log.info("kept the version numbers of models deleted before", extra={"models": kept})
    if raised:
        log.info(
            "numbered models created again by an older tesserad on past the numbers their names gave",
            extra={"models": raised},
        )
    return kept + raised


def _registry_references(txn: ReadTxn) -> Iterator[tuple[object, object]]:
    """The (model, version) of every version the registry's records name: lineage parents (their
    marks too) and ensemble members."""
    for _key, raw in txn.scan(VERSIONS):
        record = decode_version(raw)
        if record.lineage.parent_version:
            yield record.lineage.parent_model or record.model, record.lineage.parent_version
    for _key, raw in txn.scan(DELETED_PARENTS):
        mark = decode_record(raw, DELETED_PARENT_KIND, DELETED_PARENT_SCHEMA)[1]
        yield mark["model"], mark["version"]
    for key, _ in txn.scan(ENSEMBLE_MEMBERS):
        yield str(key[2]), int(key[3])
