"""A check of the data directory for damage: every blob on disk re-hashed against its content
address, and the blob of every model version, dataset version, run artifact and job checkpoint
looked for (and the weights an unended job starts from, which its hold alone references). Each problem names the records that own the blob, which is what an operator decides
on: restore from an older backup, or delete them and accept the loss.

The check runs offline (`tesserad verify`) or beside a running daemon (`VerifyStore`). Beside
one, blobs come and go: a blob deleted after the listing of its shard is skipped, and a missing
blob is reported only when a second read of the records, after the first found it missing,
still finds a record that references it and the file still gone, so that a version deleted
meanwhile is not taken for damage.

`StoreCheck.step` does a bounded piece of work (the count of the blobs to check, at most
STEP_BYTES of hashing, or one read of the records), so that a caller on an event loop can run
it in a thread step by step and stop between steps; memory holds the problems found and one
chunk, whatever the store's size.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

from tesserad.datasets.references import job_weight_references
from tesserad.datasets.service import blob_references as dataset_blobs
from tesserad.errors import DataLoss, InvalidArgument, ResourceExhausted, Unavailable
from tesserad.registry.versions import blob_references as model_blobs
from tesserad.store import BlobStore, ReadOnlyStore, ReadTxn, Store, check_sha256
from tesserad.store.blobs import CHUNK_BYTES
from tesserad.training.artifacts import blob_references as artifact_blobs
from tesserad.training.jobs import blob_references as checkpoint_blobs

# Bytes hashed in one step at most: a cancel waits for no more than this.
STEP_BYTES = 64 * CHUNK_BYTES

DAMAGED = "damaged"
MISSING = "missing"

_REFERENCES: tuple[Callable[[ReadTxn], Iterator[tuple[str, str]]], ...] = (
    model_blobs,
    dataset_blobs,
    artifact_blobs,
    checkpoint_blobs,
    job_weight_references,
)

# What an operator may do about a blob that is lost, whoever owns it: one clause, with no "; ",
# as clients put the RPCs named in a message's last clause in their own words.
REMEDY = (
    "restore the data directory from a backup taken before the damage, or, to accept losing "
    "them, delete the owners (DeleteVersion for a model version, DeleteDataset for a dataset "
    "version) and replace a run artifact by uploading a good copy to its path (UploadRunArtifact), "
    "a job checkpoint coming back only with a restore"
)


def blob_references(txn: ReadTxn) -> Iterator[tuple[str, str]]:
    """Every record's reference to a blob: its sha256 and the record in words."""
    return itertools.chain.from_iterable(source(txn) for source in _REFERENCES)


def blob_owners(txn: ReadTxn, wanted: Iterable[str]) -> dict[str, list[str]]:
    """The records, in words, that reference each of `wanted` (those no record references are
    left out). Reads every record: for the rare blob found damaged or missing."""
    wanted = set(wanted)
    owners: dict[str, list[str]] = {}
    for sha256, owner in blob_references(txn):
        if sha256 in wanted:
            owners.setdefault(sha256, []).append(owner)
    return owners


def owned_by(owners: list[str]) -> str:
    return "; its owners: " + ", ".join(owners) if owners else "; no record references it"


@dataclass(frozen=True)
class BlobProblem:
    sha256: str
    kind: str  # DAMAGED or MISSING
    owners: tuple[str, ...]

    @property
    def message(self) -> str:
        if self.kind == DAMAGED:
            what = f"blob {self.sha256} is damaged on disk (its content hash no longer matches)"
        else:
            what = f"blob {self.sha256} is missing from the blob directory"
        if not self.owners:
            return f"{what}; no record references it, so nothing is lost: the daemon removes it at its next start"
        return f"{what}{owned_by(list(self.owners))}; {REMEDY}"


@dataclass(frozen=True)
class StoreCheckReport:
    blobs_checked: int
    bytes_checked: int
    references_checked: int
    problems: tuple[BlobProblem, ...]
    seconds: float


class StoreCheck:
    """One check: `step()` until it returns False, then `report()`. Steps exclude one another
    and `close()`, so a close while a step runs in another thread waits for it."""

    def __init__(
        self,
        store: Store | ReadOnlyStore,
        blobs: BlobStore,
        chunk_size: int = CHUNK_BYTES,
        *,
        progress: bool = False,
    ) -> None:
        """`progress`: count the blob directory's blobs and bytes first (`blobs_total`,
        `bytes_total`), for a check that tells how far it has got: one more walk of it."""
        self._store = store
        self._progress = progress
        self._blobs = blobs
        self._chunk_size = chunk_size
        self._lock = threading.Lock()
        self._closed = False
        self._started = time.monotonic()
        self._steps: Generator[None] = self._run()
        self._report: StoreCheckReport | None = None
        self.blobs_checked = 0
        self.bytes_checked = 0
        # What the blob directory held as the check began, counted by its first step (0 unless
        # `progress`).
        self.blobs_total = 0
        self.bytes_total = 0

    def step(self) -> bool:
        """Do the next piece of the check; False once it is done. Unavailable once closed
        (the daemon is stopping)."""
        with self._lock:
            if self._closed:
                raise Unavailable("tesserad is stopping, so the store check was cut short; run it again")
            if self._report is not None:
                return False
            return next(self._steps, False) is None

    def run(self) -> StoreCheckReport:
        """The whole check, in this thread."""
        while self.step():
            pass
        return self.report()

    def report(self) -> StoreCheckReport:
        if self._report is None:
            raise RuntimeError("the store check has not ended")
        return self._report

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._steps.close()

    def _run(self) -> Generator[None]:
        if self._progress:
            census = self._blobs.census()
            self.blobs_total, self.bytes_total = census.count, census.bytes
            yield
        damaged: list[str] = []
        for sha256 in self._blobs.all():
            try:
                check_sha256(sha256)
            except InvalidArgument:
                # Not a blob's name (a file put there by hand): nothing references it.
                continue
            hashed = yield from self._hash(sha256)
            if hashed is False:
                damaged.append(sha256)
        references, owners, missing = self._read_references(set(damaged))
        yield
        if missing:
            # Beside a running daemon: what a delete since the first read took is no damage.
            _, _, missing_now = self._read_references(set())
            missing = {sha256: missing_now[sha256] for sha256 in missing if sha256 in missing_now}
        problems = [
            BlobProblem(sha256, DAMAGED, tuple(owners.get(sha256, ())))
            for sha256 in damaged
            if sha256 in owners or self._blobs.exists(sha256)
        ]
        problems += [BlobProblem(sha256, MISSING, tuple(names)) for sha256, names in missing.items()]
        self._report = StoreCheckReport(
            self.blobs_checked,
            self.bytes_checked,
            references,
            tuple(problems),
            time.monotonic() - self._started,
        )

    def _hash(self, sha256: str) -> Generator[None, None, bool | None]:
        """Re-hash one blob, a step every STEP_BYTES: True when whole, False when damaged, None
        when it was deleted since its shard was listed."""
        try:
            chunks = self._blobs.open_chunks(sha256, self._chunk_size)
        except DataLoss:
            return None
        pending = 0
        try:
            # The blob store's own verified read: its last chunk comes only once the hash matches.
            for chunk in chunks:
                self.bytes_checked += len(chunk)
                pending += len(chunk)
                if pending >= STEP_BYTES:
                    pending = 0
                    yield
        except DataLoss:
            return False
        finally:
            self.blobs_checked += 1
        yield
        return True

    def _read_references(self, damaged: set[str]) -> tuple[int, dict[str, list[str]], dict[str, list[str]]]:
        """From one read of the records: how many blob references there are, the owners of the
        `damaged` blobs, and the blobs referenced but missing with their owners."""
        count = 0
        owners: dict[str, list[str]] = {}
        missing: dict[str, list[str]] = {}
        with self._store.read() as txn:
            for sha256, owner in blob_references(txn):
                count += 1
                if sha256 in damaged:
                    owners.setdefault(sha256, []).append(owner)
                elif sha256 in missing or not self._blobs.exists(sha256):
                    missing.setdefault(sha256, []).append(owner)
        return count, owners, missing


class StoreChecks:
    """The checks made beside a running daemon, one at a time, each ended (`end`) when its call
    does, and the one still open ended by `close` before the store closes."""

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs
        self._lock = threading.Lock()
        self._open: set[StoreCheck] = set()
        self._closed = False

    def start(self, progress: bool) -> StoreCheck:
        """A new check (`progress`: see StoreCheck); ResourceExhausted while another runs, as two would only share the disk's
        bandwidth and find the same problems."""
        with self._lock:
            if self._closed:
                raise Unavailable("tesserad is stopping, so the store check was not begun; run it again")
            if self._open:
                raise ResourceExhausted(
                    "a store check is already running on this daemon (it runs one at a time); "
                    "retry once it has ended"
                )
            check = StoreCheck(self._store, self._blobs, progress=progress)
            self._open.add(check)
        return check

    def end(self, check: StoreCheck) -> None:
        """Close `check` once its step in flight is done (blocks: run it in a thread)."""
        check.close()
        with self._lock:
            self._open.discard(check)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            checks, self._open = self._open, set()
        for check in checks:
            check.close()
