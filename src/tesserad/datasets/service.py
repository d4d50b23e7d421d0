"""Datasets: named arrays uploaded as npy/npz, parsed safely, versioned, split, described.

Guarantees:
- A version is recorded only after its file is complete in the blob directory, its sha256
  matches what the sender declared, and every array passed the checks in `arrays.py`
  (no pickle; no object, ragged, non-numeric or big-endian arrays; one sample dimension;
  no NaN/Inf unless allowed; nothing truncated) and its record fits one answer
  (`_check_answer_size`). Each mutation is one transaction.
- Identical content is stored once: versions with the same bytes share one blob, and
  re-uploading what the newest version already holds (same bytes, splits, flags, npy array
  name, description and tags) returns that version instead of adding one.
- Version numbers are never reused (tesserad.datasets.numbering), so a number that a lineage
  or a job names keeps naming that content once the version, or the dataset, is deleted.
- The dataset quota (limits.dataset_quota) counts each distinct file once; the size limit
  (limits.max_dataset_size) bounds the file and what its compressed arrays unpack to. What
  the quota counts, and each dataset's summary (newest version, count, size), are kept in the
  transactions that add and delete versions (tesserad.datasets.usage), so that neither an
  upload nor GetDataset or ListDatasets reads every version; deleting a dataset whole reads
  none (its keys, the index and the holder rows say what to delete and release).
- `open_arrays` memory-maps arrays from the verified blob (no copy) where they are stored
  uncompressed; `split_indices` returns sorted int64 sample indices, the same to a job's
  workers and to a client that asks for a split's rows (DownloadSplitIndices).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tesserad.config import format_size
from tesserad.datasets.arrays import (
    ArrayInfo,
    ArrayStats,
    check_array_name,
    inspect_file,
    open_arrays,
)
from tesserad.datasets.numbering import (
    NUMBERS,
    NUMBERS_DERIVED,
    References,
    next_number,
    put_next_number,
)
from tesserad.datasets.references import (
    DATASET_HOLDER_PREFIX,
    HOLDS_INDEXED,
    dataset_holders,
    delete_unheld_blobs,
    drop_claimed_blobs,
    first_dataset_version_holding,
    hold_blob,
    hold_dataset,
    index_dataset_holds,
    release_blob,
    release_dataset_version,
    release_whole_dataset,
)
from tesserad.datasets.splits import SplitSpec, compute_splits, validate_split_spec
from tesserad.datasets.usage import (
    USAGE_INDEXED,
    add_version,
    content_stored,
    index_usage,
    remove_dataset,
    remove_version,
    summary,
    used_bytes,
)
from tesserad.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tesserad.names import (
    MAX_NAME_LENGTH,
    ReferenceTally,
    missing_name,
    named_versions,
    not_one_of,
    validate_name,
    validate_name_prefix,
    validate_stored_name,
)
from tesserad.paging import MAX_PAGE_BYTES, Page, answer_bytes, read_page
from tesserad.store import (
    BlobRef,
    BlobStore,
    Key,
    ReadTxn,
    Store,
    WriteTxn,
    check_sha256,
    decode_record,
    encode_record,
)
from tesserad.text import check_entries, check_record_text

log = logging.getLogger(__name__)

DATASETS = "datasets"
VERSIONS = "dataset_versions"
SPLITS = "dataset_splits"
TABLES = [DATASETS, VERSIONS, SPLITS, NUMBERS]
# The start-up markers of datasets, each with the store schema from which every daemon keeps
# what it marks (tesserad.store.schema drops those an older daemon may have broken).
MARKERS: dict[Key, int] = {HOLDS_INDEXED: 1, NUMBERS_DERIVED: 1, USAGE_INDEXED: 2}
FORMATS = ("npz", "npy")
_DATASET_KIND = "dataset"
_VERSION_KIND = "dataset_version"
_SCHEMA = 1


@dataclass(frozen=True)
class UploadSpec:
    """An upload's header."""

    name: str
    format: str  # npz or npy
    sha256: str = ""
    size_bytes: int = 0
    splits: SplitSpec | None = None
    allow_nonfinite: bool = False
    array_name: str = ""  # npy only: an npz names its arrays itself
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def npy_array(self) -> str:
        """The name an npy file's array gets."""
        return self.array_name or "x"


@dataclass(frozen=True)
class SplitInfo:
    name: str
    count: int


@dataclass(frozen=True)
class DatasetVersionRecord:
    name: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    num_samples: int
    arrays: tuple[ArrayInfo, ...]
    splits: tuple[SplitInfo, ...]
    created_at: float
    created_by: str
    description: str
    tags: dict[str, str]
    allow_nonfinite: bool
    array_name: str
    # What an upload found, in its answer only: its bytes were stored already, by this very
    # version (existing_version: the upload added none) or by `shared_with` (name, version).
    # Stored records hold deduplicated (always false), never the other two.
    deduplicated: bool = False
    existing_version: bool = False
    shared_with: tuple[str, int] | None = None


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    latest_version: int
    version_count: int
    size_bytes: int  # shared content counted once
    created_at: float
    updated_at: float


def _holder(name: str, version: int) -> str:
    return f"{DATASET_HOLDER_PREFIX}{name}:{version}"


def _encode_version(record: DatasetVersionRecord) -> bytes:
    data = asdict(record)
    # Kept out of the record, which a daemon from before them could not decode.
    del data["existing_version"], data["shared_with"]
    for array in data["arrays"]:
        array["stats"]["class_counts"] = [[k, v] for k, v in array["stats"]["class_counts"].items()]
    return encode_record(_VERSION_KIND, _SCHEMA, data)


def _decode_version(raw: bytes) -> DatasetVersionRecord:
    data = decode_record(raw, _VERSION_KIND, _SCHEMA)[1]
    arrays = []
    for a in data["arrays"]:
        stats = dict(a["stats"])
        stats["class_counts"] = {int(k): int(v) for k, v in stats["class_counts"]}
        arrays.append(ArrayInfo(a["name"], a["dtype"], tuple(a["shape"]), ArrayStats(**stats)))
    return DatasetVersionRecord(
        **{
            **data,
            "arrays": tuple(arrays),
            "splits": tuple(SplitInfo(**s) for s in data["splits"]),
            "deduplicated": False,
        }
    )


def blob_references(txn: ReadTxn) -> Iterator[tuple[str, str]]:
    """Each dataset version's file: its sha256 and the version in words, for a store check."""
    for _key, raw in txn.scan(VERSIONS):
        record = _decode_version(raw)
        yield record.sha256, f"dataset {record.name} version {record.version}"


def _version_content(raw: bytes) -> tuple[str, int]:
    """The sha256 and size of a stored version, read without building its whole record."""
    data = decode_record(raw, _VERSION_KIND, _SCHEMA)[1]
    return str(data["sha256"]), int(data["size_bytes"])


def _check_answer_size(record: DatasetVersionRecord) -> None:
    """A version is answered whole (its upload, GetDatasetVersion, a download's header, a page
    of ListDatasetVersions, which always holds one), so it must fit one answer: gRPC's default
    limit of 4 MiB in most clients, which a Ray worker's fetch of the file keeps too."""
    size = answer_bytes(record)
    if size <= MAX_PAGE_BYTES:
        return
    classes = sum(len(a.stats.class_counts) for a in record.arrays)
    among = f", {classes} class counts among them" if classes else ""
    raise InvalidArgument(
        f"the dataset's {len(record.arrays)} arrays take about {format_size(size)} to describe (their "
        f"names, shapes and statistics{among}), more than one answer holds "
        f"({format_size(MAX_PAGE_BYTES)}); upload fewer arrays in one version, e.g. stack arrays of "
        "one shape into one"
    )


def _in_use(name: str, holders: list[str]) -> str:
    """Why a dataset cannot be deleted, and what to do: the holders as `dataset_holders` words."""
    listed = ", ".join(holders[:10]) + (f" and {len(holders) - 10} more" if len(holders) > 10 else "")
    steps = []
    if any(h.startswith("training job ") for h in holders):
        steps.append("wait for the jobs to end or cancel them with CancelJob")
    sweeps = sorted({h.split()[1] for h in holders if h.startswith("sweep ")})
    if len(sweeps) == 1:
        steps.append(
            f"wait for sweep {sweeps[0]} to end or cancel it with `tessera sweeps cancel {sweeps[0]}`"
        )
    elif sweeps:
        steps.append("wait for the sweeps to end or cancel each with `tessera sweeps cancel SWEEP_ID`")
    if any("'s lineage" in h for h in holders):
        steps.append("delete those model versions first")
    steps.append("pass force to delete it anyway")
    return f"dataset {name!r} is in use by {listed}; {', or '.join(steps)}"


def _missing(txn: ReadTxn, name: str) -> NotFound:
    """NotFound for a dataset that does not exist, naming a stored one close to it first."""
    return missing_name(txn, DATASETS, "dataset", name, "upload it with UploadDataset")


def _derive_numbers(store: Store, referenced: References) -> int:
    """Once per store: give each dataset name a record still mentions its next number, past the
    number its record gave, each stored version and each version named elsewhere (`referenced`,
    those that can name one); how many got one. Numbers are only ever raised."""
    with store.read() as txn:
        if txn.exists("meta", NUMBERS_DERIVED):
            return 0
    highest: dict[str, int] = {}
    tally = ReferenceTally()

    def seen(name: str, number: int) -> None:
        highest[name] = max(highest.get(name, 0), number)

    with store.write() as txn:
        for key, raw in txn.scan(DATASETS):
            # A record written before `dataset_numbers` kept its dataset's next number.
            seen(str(key[0]), int(decode_record(raw, _DATASET_KIND, _SCHEMA)[1].get("next_version", 1)) - 1)
        for key, _ in txn.scan(VERSIONS):
            seen(str(key[0]), int(key[1]))
        for name, number in named_versions(referenced(txn), tally):
            seen(name, number)
        for name, number in highest.items():
            put_next_number(txn, name, max(number + 1, next_number(txn, name)))
        txn.put("meta", NUMBERS_DERIVED, encode_record(NUMBERS_DERIVED[0], 1, {"at": time.time()}))
    tally.warn_passed_over(
        log, "records name dataset versions that no dataset can have; their numbers are passed over"
    )
    if highest:
        log.info("derived the next version numbers of datasets", extra={"datasets": len(highest)})
    return len(highest)


class Datasets:
    """Dataset versions over a Store and a BlobStore."""

    def __init__(
        self, store: Store, blobs: BlobStore, *, max_dataset_size: int, quota: int, referenced: References
    ) -> None:
        """`referenced`: the dataset versions the store's other records name, read once to number
        the datasets of a store from before `dataset_numbers` (tesserad.datasets.numbering)."""
        index_dataset_holds(store)
        _derive_numbers(store, referenced)
        index_usage(store, VERSIONS, _version_content)
        self._store = store
        self._blobs = blobs
        self.max_dataset_size = max_dataset_size
        self.quota = quota

    # -- quota -------------------------------------------------------------------------------

    def _quota_error(self, used: int, size: int) -> ResourceExhausted:
        """`size` 0: an upload of undeclared size, refused as the quota (lowered since) is below
        what is used already."""
        needs = (
            f" and this upload needs {format_size(size)} ({size} bytes)"
            if size
            else ", more than it allows, so no upload of new content fits"
        )
        return ResourceExhausted(
            f"the dataset quota is exhausted: datasets use {format_size(used)} ({used} bytes) of "
            f"limits.dataset_quota {format_size(self.quota)} ({self.quota} bytes){needs}; delete "
            "datasets or raise TESSERA_LIMITS_DATASET_QUOTA"
        )

    def upload_limit(self, spec: UploadSpec) -> int:
        """Check an upload's header; the most bytes its file may have (size limit and quota)."""
        validate_name("name", spec.name)
        if spec.format not in FORMATS:
            raise InvalidArgument(f"format must be npz or npy, got {spec.format or 'unspecified'}")
        if spec.format == "npy":
            check_array_name("array_name", spec.npy_array)
        elif spec.array_name:
            # Ignored, it would leave the arrays under names the caller did not expect.
            raise InvalidArgument(
                f"array_name names the array of an npy file; an npz names its arrays itself, so leave "
                f"array_name empty (got {spec.array_name!r})"
            )
        check_entries("tags", spec.tags)
        check_record_text("a dataset version", spec.description, spec.tags)
        if spec.sha256:
            check_sha256(spec.sha256)
        if spec.size_bytes < 0:
            raise InvalidArgument(f"size_bytes must be >= 0 (0: not declared), got {spec.size_bytes}")
        validate_split_spec(spec.splits)
        if spec.size_bytes > self.max_dataset_size:
            raise ResourceExhausted(
                f"the dataset file is {format_size(spec.size_bytes)} ({spec.size_bytes} bytes), over "
                f"limits.max_dataset_size ({format_size(self.max_dataset_size)}); raise the limit "
                "(TESSERA_LIMITS_MAX_DATASET_SIZE) or split the data"
            )
        with self._store.read() as txn:
            used = used_bytes(txn)
            stored = bool(spec.sha256) and content_stored(txn, spec.sha256)
        if stored:
            # Content stored already takes no more of the quota (`register` checks it is).
            return self.max_dataset_size
        if used + spec.size_bytes > self.quota:
            raise self._quota_error(used, spec.size_bytes)
        return min(self.max_dataset_size, self.quota - used)

    # -- versions ----------------------------------------------------------------------------

    def register(self, spec: UploadSpec, blob: BlobRef, actor: str = "anonymous") -> DatasetVersionRecord:
        """Parse the stored file and record it as the dataset's next version (all or nothing).

        On any failure the blob is deleted unless another version holds it; either way the
        claim of the put that stored `blob` ends here (BlobStore's claims).
        """
        try:
            record = self._register(spec, blob, actor)
        except BaseException:
            drop_claimed_blobs(self._store, self._blobs, {blob.sha256})
            raise
        self._blobs.release(blob.sha256)
        return record

    def _register(self, spec: UploadSpec, blob: BlobRef, actor: str) -> DatasetVersionRecord:
        self.upload_limit(replace(spec, size_bytes=0))
        if not blob.size:
            # Else refused as a truncated file, which says nothing of the stream sent empty.
            raise InvalidArgument(
                "the upload holds no bytes: no chunk came after the header, or only empty ones; send "
                "the file's bytes in chunk messages after the header"
            )
        # The blob was hashed as it was written (BlobWriter.commit); no second pass over it here.
        path = self._blobs.path(blob.sha256)
        if not path.is_file():
            raise DataLoss(f"blob {blob.sha256} is missing from the blob directory; upload it again")
        arrays, num_samples = inspect_file(
            path, spec.format, spec.npy_array, spec.allow_nonfinite, check_unpacked=self._check_unpacked
        )
        splits = compute_splits(spec.splits, num_samples)
        with self._store.write() as txn:
            raw = txn.get(DATASETS, (spec.name,))
            now = time.time()
            data: dict[str, Any] = (
                decode_record(raw, _DATASET_KIND, _SCHEMA)[1]
                if raw
                else {"name": spec.name, "created_at": now, "updated_at": now}
            )
            newest = self._newest(txn, spec.name)
            if newest is not None and self._same_content(txn, newest, blob.sha256, spec, splits):
                return replace(newest, deduplicated=True, existing_version=True)
            used = used_bytes(txn)
            shared = first_dataset_version_holding(txn, blob.sha256)
            if shared is None and used + blob.size > self.quota:
                raise self._quota_error(used, blob.size)
            number = next_number(txn, spec.name)
            record = DatasetVersionRecord(
                name=spec.name,
                version=number,
                format=spec.format,
                sha256=blob.sha256,
                size_bytes=blob.size,
                num_samples=num_samples,
                arrays=tuple(arrays),
                splits=tuple(SplitInfo(name, int(idx.size)) for name, idx in splits.items()),
                created_at=now,
                created_by=actor,
                description=spec.description,
                tags=dict(spec.tags),
                allow_nonfinite=spec.allow_nonfinite,
                array_name=spec.npy_array if spec.format == "npy" else "",
            )
            _check_answer_size(record)
            put_next_number(txn, spec.name, number + 1)
            data["updated_at"] = now
            txn.put(DATASETS, (spec.name,), encode_record(_DATASET_KIND, _SCHEMA, data))
            txn.put(VERSIONS, (spec.name, number), _encode_version(record))
            for split_name, indices in splits.items():
                txn.put(SPLITS, (spec.name, number, split_name), indices.astype("<i8").tobytes())
            hold_blob(txn, blob.sha256, _holder(spec.name, number))
            add_version(txn, spec.name, number, blob.sha256, blob.size)
        return replace(record, deduplicated=shared is not None, shared_with=shared)

    def _check_unpacked(self, unpacked: dict[str, int]) -> None:
        """Compressed arrays (`unpacked`: the bytes of each) are read into memory whole by training
        (statistics take them a piece at a time), so what they unpack to is held to the size limit
        too: a small npz of zeros can unpack to more memory than the machine has."""
        total = sum(unpacked.values())
        if total > self.max_dataset_size:
            listed = ", ".join(f"{name!r} {n} bytes" for name, n in unpacked.items())
            raise ResourceExhausted(
                f"the npz's compressed arrays unpack to {format_size(total)} ({listed}), over "
                f"limits.max_dataset_size ({format_size(self.max_dataset_size)}); save them uncompressed "
                "(np.savez, memory-mapped when read), raise TESSERA_LIMITS_MAX_DATASET_SIZE or split the data"
            )

    def _same_content(
        self,
        txn: ReadTxn,
        newest: DatasetVersionRecord,
        sha256: str,
        spec: UploadSpec,
        splits: dict[str, np.ndarray],
    ) -> bool:
        if newest.sha256 != sha256 or newest.allow_nonfinite != spec.allow_nonfinite:
            return False
        # Versions never change: new words for the same bytes are a version of their own.
        if newest.description != spec.description or newest.tags != spec.tags:
            return False
        # An npy's array name is not in its bytes: the same file under another name is new content.
        if spec.format == "npy" and newest.array_name != spec.npy_array:
            return False
        if [s.name for s in newest.splits] != list(splits):
            return False
        return all(
            txn.get(SPLITS, (newest.name, newest.version, name)) == idx.astype("<i8").tobytes()
            for name, idx in splits.items()
        )

    def _newest(self, txn: ReadTxn, name: str) -> DatasetVersionRecord | None:
        for _, raw in txn.scan(VERSIONS, (name,), reverse=True, limit=1):
            return _decode_version(raw)
        return None

    def resolve(self, name: str, version: int | None = None) -> DatasetVersionRecord:
        """A version by number; the newest when version is None or 0."""
        validate_name("name", name)
        with self._store.read() as txn:
            return self._resolve(txn, name, version)

    def _resolve(self, txn: ReadTxn, name: str, version: int | None) -> DatasetVersionRecord:
        if version:
            if version < 0:
                raise InvalidArgument(f"version must be >= 1 (0: the newest), got {version}")
            raw = txn.get(VERSIONS, (name, version))
            if raw is None:
                raise self._no_version(txn, name, version)
            return _decode_version(raw)
        newest = self._newest(txn, name)
        if newest is None:
            raise _missing(txn, name)
        return newest

    def _no_version(self, txn: ReadTxn, name: str, version: int) -> NotFound:
        """NotFound naming the newest version and how to list them, as deletes leave gaps."""
        newest = self._newest(txn, name)
        if newest is None:
            return _missing(txn, name)
        return NotFound(
            f"dataset {name!r} has no version {version} "
            f"(the newest is {newest.version}; ListDatasetVersions lists them)"
        )

    def hold(self, txn: WriteTxn, name: str, version: int, holder: str) -> DatasetVersionRecord:
        """Hold a version in the transaction that stores its holder, which so cannot end up holding
        a version deleted since it was looked up; NotFound if it was."""
        record = self._resolve(txn, name, version)
        hold_dataset(txn, name, record.version, holder)
        return record

    def check_lineage(self, txn: ReadTxn, name: str, version: int, sha256: str) -> str:
        """For a model version's lineage: the dataset version exists (and has that sha256 if
        given); its sha256."""
        record = self._resolve(txn, name, version)
        if sha256 and sha256 != record.sha256:
            raise InvalidArgument(f"dataset {name!r} v{version} has sha256 {record.sha256}, not {sha256}")
        return record.sha256

    def list_versions(
        self, name: str, page_size_: int = 0, page_token: str = ""
    ) -> Page[DatasetVersionRecord]:
        """Newest first."""
        validate_name("name", name)
        with self._store.read() as txn:
            if not txn.exists(DATASETS, (name,)):
                raise _missing(txn, name)
            return read_page(
                txn,
                VERSIONS,
                (name,),
                query={"list": "dataset_versions", "name": name},
                page_token=page_token,
                requested_size=page_size_,
                item=lambda _key, raw: _decode_version(raw),
                reverse=True,
            )

    def _dataset(self, txn: ReadTxn, name: str) -> DatasetRecord:
        raw = txn.get(DATASETS, (name,))
        if raw is None:
            raise _missing(txn, name)
        data = decode_record(raw, _DATASET_KIND, _SCHEMA)[1]
        counted = summary(txn, name)
        return DatasetRecord(
            name,
            counted.latest_version,
            counted.version_count,
            counted.size_bytes,
            data["created_at"],
            data["updated_at"],
        )

    def get_dataset(self, name: str) -> DatasetRecord:
        validate_name("name", name)
        with self._store.read() as txn:
            return self._dataset(txn, name)

    def list_datasets(
        self, name_prefix: str = "", page_size_: int = 0, page_token: str = ""
    ) -> Page[DatasetRecord]:
        """Datasets in name order whose name starts with `name_prefix`."""
        validate_name_prefix("name_prefix", name_prefix)
        with self._store.read() as txn:
            return read_page(
                txn,
                DATASETS,
                query={"list": "datasets", "prefix": name_prefix},
                page_token=page_token,
                requested_size=page_size_,
                item=lambda key, _raw: self._dataset(txn, str(key[0])),
                until=lambda key: not str(key[0]).startswith(name_prefix),
                start=(name_prefix,) if name_prefix else None,
            )

    def delete(self, name: str, version: int = 0, force: bool = False) -> int:
        """Delete one version (or every version when 0); refused while something holds it, unless force."""
        validate_stored_name("name", name)
        if version < 0:
            raise InvalidArgument(f"version must be >= 1 (0: the dataset with every version), got {version}")
        with self._store.write() as txn:
            if not version:
                deleted, freed = self._delete_dataset(txn, name, force)
            else:
                record = self._resolve(txn, name, version)
                holders = dataset_holders(txn, name, version)
                if holders and not force:
                    raise FailedPrecondition(_in_use(name, holders))
                self._delete_rows(txn, record)
                deleted, freed = 1, [record.sha256]
                if not any(True for _ in txn.scan(VERSIONS, (name,), limit=1)):
                    txn.delete(DATASETS, (name,))
        delete_unheld_blobs(self._store, self._blobs, set(freed))
        return deleted

    def _delete_dataset(self, txn: WriteTxn, name: str, force: bool) -> tuple[int, list[str]]:
        """Delete every version of `name` from the keys and the indexes (tesserad.datasets.usage,
        the holder rows), reading no version record; (versions deleted, the files they held)."""
        if not txn.exists(DATASETS, (name,)):
            raise _missing(txn, name)
        holders = dataset_holders(txn, name)
        if holders and not force:
            raise FailedPrecondition(_in_use(name, holders))
        contents = remove_dataset(txn, name)
        release_whole_dataset(txn, name, contents)
        deleted = txn.delete_range(VERSIONS, (name,))
        txn.delete_range(SPLITS, (name,))
        txn.delete(DATASETS, (name,))
        return deleted, contents

    def _delete_rows(self, txn: WriteTxn, record: DatasetVersionRecord) -> None:
        txn.delete(VERSIONS, (record.name, record.version))
        txn.delete_range(SPLITS, (record.name, record.version))
        release_dataset_version(txn, record.name, record.version)
        release_blob(txn, record.sha256, _holder(record.name, record.version))
        newest = next(
            (int(key[1]) for key, _ in txn.scan(VERSIONS, (record.name,), reverse=True, limit=1)), 0
        )
        remove_version(txn, record.name, record.sha256, record.size_bytes, newest)

    # -- reading -----------------------------------------------------------------------------

    def path(self, record: DatasetVersionRecord) -> Path:
        """The file behind a version after verifying its sha256 (DataLoss if damaged)."""
        with self._blobs.open_verified(record.sha256) as path:
            return path

    def open_arrays(self, record: DatasetVersionRecord) -> dict[str, np.ndarray]:
        """Every array, read-only, memory-mapped where stored uncompressed; from the verified blob."""
        return open_arrays(self.path(record), record.format, record.array_name or "x")

    def split_indices(self, record: DatasetVersionRecord, split: str) -> np.ndarray:
        """Sorted int64 sample indices of a split: the rows a job naming it trains or validates
        on, and those `split_of` gives a client. InvalidArgument for a split the version lacks;
        NotFound where the version was deleted since `record` was read."""
        # Copied: a worker's torch.as_tensor wants a writable array.
        return np.frombuffer(self._split_bytes(record, split), dtype="<i8").copy()

    def _split_bytes(self, record: DatasetVersionRecord, split: str) -> bytes:
        """The stored indices of a split, little-endian int64 as uploads write them."""
        names = [s.name for s in record.splits]
        if split not in names:
            if len(split) > MAX_NAME_LENGTH:
                # No split is named so: refused showing its start, not echoed whole.
                validate_name("split", split)
            raise InvalidArgument(
                f"split {not_one_of(split, names)} (the splits dataset {record.name!r} "
                f"v{record.version} was uploaded with)"
            )
        with self._store.read() as txn:
            raw = txn.get(SPLITS, (record.name, record.version, split))
        if raw is None:
            # A split's row goes with its version: deleted since `record` was read.
            self.resolve(record.name, record.version)
            raise NotFound(f"dataset {record.name!r} v{record.version} was deleted; upload it again")
        return raw

    def split_of(self, name: str, version: int, split: str) -> tuple[DatasetVersionRecord, bytes]:
        """A split of the version named (0: the newest) with its indices as stored (little-endian
        int64, 8 bytes a sample: sent as they are, never converted), the indices `split_indices`
        gives a job's workers; FailedPrecondition for an empty one, which no job can name."""
        record = self.resolve(name, version)
        data = self._split_bytes(record, split)
        if not data:
            raise FailedPrecondition(
                f"split {split!r} of dataset {name!r} v{record.version} holds no sample (a tesserad "
                "from before uploads refused empty splits stored it), so no job trains or validates "
                "on it; name another split, or upload the data again with splits that each hold one"
            )
        return record, data

    def read_chunks(self, record: DatasetVersionRecord, chunk_size: int, offset: int = 0) -> Iterator[bytes]:
        """The stored file from byte `offset` in chunks, the whole file verified against its
        sha256 (DataLoss if damaged). Its file is opened now: a delete of the version after this
        leaves the stream whole, and one since `record` was read is NotFound, as for any version
        that is gone. `offset` is within the file (see api.transfers.download_offset)."""
        try:
            return self._blobs.open_chunks(record.sha256, chunk_size, offset)
        except DataLoss:
            self.resolve(record.name, record.version)
            raise
