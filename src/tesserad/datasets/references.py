"""Who holds what: blob holders and dataset-version holders, kept inside store transactions.

A blob (artifact, dataset file) may back several records (identical content is stored
once), so a record that stores a sha256 also writes a holder row in the same transaction,
and removes it in the transaction that removes the record. A blob with no holder left is
deleted from disk after that commit. Dataset versions are held the same way by what names
them (a model version's lineage, a training job or a sweep until it ends), which is what
DeleteDataset checks. Each dataset hold is two rows written and removed together: by version
in `dataset_holders` (who holds this version?) and by holder in `dataset_holds` (what does this
sweep hold?), so that neither question scans the whole table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from tesserad.store import BlobStore, ReadTxn, Store, WriteTxn, encode_record

log = logging.getLogger(__name__)

BLOB_HOLDERS = "blob_holders"
# (name, version, holder) and, the same holds by holder, (holder, name, version).
DATASET_HOLDERS = "dataset_holders"
DATASET_HOLDS = "dataset_holds"
TABLES = [BLOB_HOLDERS, DATASET_HOLDERS, DATASET_HOLDS]
# In the "meta" table once `dataset_holds` has a row for every `dataset_holders` row.
HOLDS_INDEXED = ("dataset_holds_indexed",)


# A dataset version holds its file as "dataset:<name>:<version>".
DATASET_HOLDER_PREFIX = "dataset:"


def hold_blob(txn: WriteTxn, sha256: str, holder: str) -> None:
    txn.put(BLOB_HOLDERS, (sha256, holder), b"")


def release_blob(txn: WriteTxn, sha256: str, holder: str) -> None:
    txn.delete(BLOB_HOLDERS, (sha256, holder))


def blob_holders(txn: ReadTxn, sha256: str) -> list[str]:
    """Who holds the blob, in byte order of their names."""
    return [str(key[1]) for key, _ in txn.scan(BLOB_HOLDERS, (sha256,))]


def blob_holders_named(txn: ReadTxn, sha256: str, prefix: str) -> Iterator[str]:
    """Who holds the blob among the names beginning with `prefix`, in byte order; reads those
    keys alone, not every holder's (a popular blob has many)."""
    for key, _ in txn.scan(BLOB_HOLDERS, (sha256,), start=(sha256, prefix)):
        name = str(key[1])
        if not name.startswith(prefix):
            return
        yield name


def blob_held(txn: ReadTxn, sha256: str) -> bool:
    return any(True for _ in txn.scan(BLOB_HOLDERS, (sha256,), limit=1))


def first_dataset_version_holding(txn: ReadTxn, sha256: str) -> tuple[str, int] | None:
    """The dataset version (name, number), first in that order, that holds the blob; None if none."""
    versions = [
        (name, int(number))
        for key, _ in txn.scan(BLOB_HOLDERS, (sha256,))
        if str(key[1]).startswith(DATASET_HOLDER_PREFIX)
        for name, number in [str(key[1]).removeprefix(DATASET_HOLDER_PREFIX).rsplit(":", 1)]
    ]
    return min(versions, default=None)


# A fine-tuning job holds the weights it starts from as "job:<job id>:init_from"; a job that
# starts from a checkpoint (a resume, a trial's copy) holds it as "job:<job id>:start".
_JOB_PREFIX, _INIT_FROM_SUFFIX, _START_SUFFIX = "job:", ":init_from", ":start"
_SWEEP_PREFIX = "sweep:"


def init_from_holder(job_id: str) -> str:
    """How a fine-tuning job is named among the holders of the weights it starts from."""
    return f"{_JOB_PREFIX}{job_id}{_INIT_FROM_SUFFIX}"


def start_weights_holder(job_id: str) -> str:
    """How a job is named among the holders of the weights it starts from (a checkpoint it
    resumes, a trial's copy of another's), until it ends."""
    return f"{_JOB_PREFIX}{job_id}{_START_SUFFIX}"


def job_weight_references(txn: ReadTxn) -> Iterator[tuple[str, str]]:
    """The weights unended jobs start from, which only their holds reference: each blob's
    sha256 and the hold in words, for a store check."""
    for key, _ in txn.scan(BLOB_HOLDERS):
        sha256, holder = str(key[0]), str(key[1])
        if not holder.startswith(_JOB_PREFIX):
            continue
        if holder.endswith(_INIT_FROM_SUFFIX):
            job_id = holder.removeprefix(_JOB_PREFIX).removesuffix(_INIT_FROM_SUFFIX)
            yield sha256, f"job {job_id} (the weights it fine-tunes from)"
        elif holder.endswith(_START_SUFFIX):
            job_id = holder.removeprefix(_JOB_PREFIX).removesuffix(_START_SUFFIX)
            yield sha256, f"job {job_id} (the weights it starts from)"


def fine_tuning_jobs(txn: ReadTxn, sha256: str) -> list[str]:
    """The ids of the jobs that start from the weights in this blob and have not ended (a job
    releases its hold in the transaction that ends it)."""
    holders = (str(key[1]) for key, _ in txn.scan(BLOB_HOLDERS, (sha256,)))
    return [
        holder.removeprefix(_JOB_PREFIX).removesuffix(_INIT_FROM_SUFFIX)
        for holder in holders
        if holder.startswith(_JOB_PREFIX) and holder.endswith(_INIT_FROM_SUFFIX)
    ]


def delete_unheld_blobs(store: Store, blobs: BlobStore, candidates: set[str]) -> None:
    """Delete those of `candidates` that nothing holds any more.

    The check runs inside a write transaction, so no other writer can record a new holder
    between the check and the unlink.
    """
    if not candidates:
        return
    with store.write() as txn:
        for sha256 in sorted(candidates):
            if not blob_held(txn, sha256):
                blobs.delete(sha256)


def drop_claimed_blobs(store: Store, blobs: BlobStore, claimed: set[str]) -> None:
    """After a failed upload: end the put's claims on `claimed` and delete those nothing holds."""
    blobs.release(*claimed)
    delete_unheld_blobs(store, blobs, claimed)


def collect_unheld_blobs(store: Store, blobs: BlobStore) -> list[str]:
    """At start, delete blobs no record holds: debris of a crash between a blob's rename and
    the commit that would have recorded it. Only safe while no upload is in flight."""
    with store.read() as txn:
        live = {str(key[0]) for key, _ in txn.scan(BLOB_HOLDERS)}
    return blobs.collect(live, min_age_s=0)


def dataset_held_by(txn: ReadTxn, name: str, version: int, holder: str) -> bool:
    return txn.exists(DATASET_HOLDERS, (name, version, holder))


def hold_dataset(txn: WriteTxn, name: str, version: int, holder: str) -> None:
    txn.put(DATASET_HOLDERS, (name, version, holder), b"")
    txn.put(DATASET_HOLDS, (holder, name, version), b"")


def release_dataset(txn: WriteTxn, name: str, version: int, holder: str) -> None:
    txn.delete(DATASET_HOLDERS, (name, version, holder))
    txn.delete(DATASET_HOLDS, (holder, name, version))


def release_dataset_version(txn: WriteTxn, name: str, version: int) -> None:
    """Drop every hold on a version being deleted."""
    for key, _ in list(txn.scan(DATASET_HOLDERS, (name, version))):
        release_dataset(txn, name, version, str(key[2]))


def release_whole_dataset(txn: WriteTxn, name: str, contents: list[str]) -> None:
    """For a dataset deleted whole: drop every hold on its versions, and their holds on their
    files (`contents`: the sha256s they hold), from the holder rows alone."""
    for key, _ in list(txn.scan(DATASET_HOLDERS, (name,))):
        release_dataset(txn, name, int(key[1]), str(key[2]))
    # Names never hold ':', so exactly this dataset's versions are named by holders with this
    # prefix, which sort together among a file's holders.
    prefix = f"{DATASET_HOLDER_PREFIX}{name}:"
    for sha256 in contents:
        for key, _ in list(txn.scan(BLOB_HOLDERS, (sha256,), start=(sha256, prefix))):
            if not str(key[1]).startswith(prefix):
                break
            release_blob(txn, sha256, str(key[1]))


def index_dataset_holds(store: Store) -> int:
    """Write the by-holder rows of the holds anew, for holds stored by a daemon older than
    `dataset_holds`, once (a marker in "meta" then makes a start cost one read); returns how many
    were written."""
    with store.read() as txn:
        if txn.exists("meta", HOLDS_INDEXED):
            return 0
    with store.write() as txn:
        keys = [key for key, _ in txn.scan(DATASET_HOLDERS)]
        # Whole: an older daemon may have left rows of holds it released.
        txn.clear(DATASET_HOLDS)
        for name, version, holder in keys:
            txn.put(DATASET_HOLDS, (holder, name, version), b"")
        txn.put("meta", HOLDS_INDEXED, encode_record(HOLDS_INDEXED[0], 1, {"at": time.time()}))
    if keys:
        log.info("indexed dataset holds by holder", extra={"holds": len(keys)})
    return len(keys)


def job_holder(job_id: str) -> str:
    """How a training job is named among the holders of its dataset version (until it ends)."""
    return f"{_JOB_PREFIX}{job_id}"


def sweep_holder(sweep_id: str) -> str:
    """How a sweep is named among the holders of its trials' dataset versions (until it ends):
    between one trial's end and the next one's submit, no job holds them."""
    return f"{_SWEEP_PREFIX}{sweep_id}"


def release_dataset_holds(txn: WriteTxn, holder: str) -> None:
    """Release every version `holder` holds (a sweep's: those its trials used)."""
    for key, _ in list(txn.scan(DATASET_HOLDS, (holder,))):
        release_dataset(txn, str(key[1]), int(key[2]), holder)


def release_ended_holds(store: Store, unended_jobs: set[str], running_sweeps: set[str]) -> int:
    """Release the dataset holds of every job not in `unended_jobs` and every sweep not in
    `running_sweeps`, in one pass; how many went. A job or sweep releases its holds in the
    transaction that ends it, but one stored by an older daemon, or a sweep that ended while the
    daemon stopped before its release was written, still holds them. Called at start, before
    any job or sweep can be submitted."""
    with store.read() as txn:
        stale = [
            (str(name), int(version), str(holder))
            for (name, version, holder), _ in txn.scan(DATASET_HOLDERS)
            if _ended(str(holder), unended_jobs, running_sweeps)
        ]
    if stale:
        with store.write() as txn:
            for name, version, holder in stale:
                release_dataset(txn, name, version, holder)
    return len(stale)


def _ended(holder: str, unended_jobs: set[str], running_sweeps: set[str]) -> bool:
    if holder.startswith(_JOB_PREFIX):
        return holder.removeprefix(_JOB_PREFIX) not in unended_jobs
    if holder.startswith(_SWEEP_PREFIX):
        return holder.removeprefix(_SWEEP_PREFIX) not in running_sweeps
    return False


def dataset_holders(txn: ReadTxn, name: str, version: int | None = None) -> list[str]:
    """Holders of one version, or of every version of `name` when version is None, in words:
    "training job job-01... (v2)", "sweep sweep-01... (v2)", "model clf v3's lineage (v2)"."""
    prefix = (name,) if version is None else (name, version)
    holders = []
    for key, _ in txn.scan(DATASET_HOLDERS, prefix):
        holder, version = str(key[2]), int(key[1])
        holders.append(f"{_holder_words(holder)} (v{version})")
    return holders


def _holder_words(holder: str) -> str:
    kind, _, rest = holder.partition(":")
    if kind == "job":
        return f"training job {rest}"
    if kind == "sweep":
        return f"sweep {rest}"
    model, _, version = rest.rpartition(":")
    if kind == "model" and model and version.isdigit():
        return f"model {model} v{version}'s lineage"
    return holder
