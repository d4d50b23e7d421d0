"""Run artifacts: files kept with a tracking run at a relative path (MLflow's log_artifact).

The bytes are a blob in the content-addressed store; the `run_artifacts` table maps
(run id, path) to its sha256, size and time. The blob is held by a holder row naming the run
and the path, written in the transaction that writes the record, so start-up collection never
deletes it. Storing other content at a path moves the hold in that same transaction, and the
old blob goes once nothing holds it. A soft-deleted run keeps its artifacts (it may be
restored) and takes no new ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tesserad.config import format_size
from tesserad.datasets.references import delete_unheld_blobs, drop_claimed_blobs, hold_blob, release_blob
from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tesserad.paging import Page, read_page
from tesserad.store import (
    BlobRef,
    BlobStore,
    Key,
    ReadTxn,
    Store,
    check_sha256,
    decode_record,
    encode_record,
)
from tesserad.text import hidden_character_problem
from tesserad.training.tracking import Tracking

TABLE = "run_artifacts"
TABLES = [TABLE]
# With the run id, a path of this many UTF-8 bytes keeps the record's key within LMDB's 511.
MAX_PATH_BYTES = 400
# A segment becomes a file or directory name when downloaded: NAME_MAX on Linux, macOS, ext4, APFS.
MAX_SEGMENT_BYTES = 255
_KIND = "run_artifact"
_SCHEMA = 1
_EXAMPLE = '"plots/loss.png"'


@dataclass(frozen=True)
class RunArtifact:
    run_id: str
    path: str
    sha256: str
    size_bytes: int
    created_at: float


def _path_problem(path: str) -> str | None:
    if not path:
        return "is empty"
    size = len(path.encode())
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes in UTF-8, over the {MAX_PATH_BYTES} allowed"
    if any(c in path for c in "\x00\n\r"):
        return "holds a NUL or a newline"
    if "\\" in path:
        return "holds a backslash; separate directories with /"
    if path.startswith("/"):
        return "is absolute; artifact paths are relative to the run"
    segments = path.split("/")
    if "" in segments:
        return "has an empty segment (a doubled or trailing /)"
    if ".." in segments:
        return "has a '..' segment; artifact paths stay inside the run"
    if "." in segments:
        return "has a '.' segment; leave it out"
    longest = max(segments, key=lambda segment: len(segment.encode()))
    if len(longest.encode()) > MAX_SEGMENT_BYTES:
        return (
            f"has a segment of {len(longest.encode())} bytes in UTF-8, over the {MAX_SEGMENT_BYTES} a "
            "file name may have, so it could not be downloaded"
        )
    return None


def check_artifact_path(path: str, field: str = "path") -> str:
    """`path` when it is a relative artifact path; else InvalidArgument saying what is wrong."""
    problem = _path_problem(path)
    if problem is not None:
        raise InvalidArgument(f"{field} {path[:80]!r} {problem}; give a relative path such as {_EXAMPLE}")
    return path


def check_new_artifact_path(path: str) -> None:
    """`check_artifact_path` for a path an upload stores: it also refuses characters a listing or a
    terminal would not show as they are. Reads leave them be, so paths stored before stay reachable."""
    check_artifact_path(path, "header.path")
    hidden = hidden_character_problem(path)
    if hidden:
        raise InvalidArgument(f"header.path {path[:80]!r} {hidden}; give a relative path such as {_EXAMPLE}")


def _refuse_file_and_directory(txn: ReadTxn, run_id: str, path: str) -> None:
    """FailedPrecondition when `path` would be a file under another artifact, or a file where
    others make it a directory: downloaded, the run's artifacts must make one directory tree."""
    segments = path.split("/")
    for end in range(1, len(segments)):
        parent = "/".join(segments[:end])
        if txn.exists(TABLE, (run_id, parent)):
            raise FailedPrecondition(
                f"run {run_id!r} has an artifact (a file) at {parent!r}, so {path!r} cannot be under "
                "it; pick another path"
            )
    inside = path + "/"
    for key, _ in txn.scan(TABLE, (run_id,), start=(run_id, inside), limit=1):
        if str(key[1]).startswith(inside):
            raise FailedPrecondition(
                f"run {run_id!r} has artifacts under {inside!r} (a directory), so {path!r} cannot be a "
                "file too; pick another path"
            )


def _holder(run_id: str, path: str) -> str:
    # A hash of the path: a holder row's key (sha256 + holder) must fit LMDB's 511 bytes too.
    return f"run:{run_id}:artifact:{hashlib.sha256(path.encode()).hexdigest()[:32]}"


def _encode(artifact: RunArtifact) -> bytes:
    data = {"sha256": artifact.sha256, "size_bytes": artifact.size_bytes, "created_at": artifact.created_at}
    return encode_record(_KIND, _SCHEMA, data)


def _decode(run_id: str, path: str, raw: bytes) -> RunArtifact:
    return RunArtifact(run_id, path, **decode_record(raw, _KIND, _SCHEMA)[1])


def blob_references(txn: ReadTxn) -> Iterator[tuple[str, str]]:
    """Each run artifact's blob: its sha256 and the artifact in words, for a store check."""
    for (run_id, path), raw in txn.scan(TABLE):
        artifact = _decode(str(run_id), str(path), raw)
        yield artifact.sha256, f"run {artifact.run_id} artifact {artifact.path}"


class RunArtifacts:
    """The artifacts of tracking runs, on the daemon's store and blob directory."""

    def __init__(self, store: Store, blobs: BlobStore, tracking: Tracking, max_size: int) -> None:
        self._store = store
        self._blobs = blobs
        self._tracking = tracking
        self.max_size = max_size

    def upload_limit(self, run_id: str, path: str, size_bytes: int, sha256: str) -> int:
        """Check an upload's header before any byte is stored; the most bytes it may have."""
        check_new_artifact_path(path)
        if sha256:
            check_sha256(sha256, "header.sha256")
        if size_bytes < 0:
            raise InvalidArgument(f"header.size_bytes must be >= 0 (0: not declared), got {size_bytes}")
        if size_bytes > self.max_size:
            raise ResourceExhausted(
                f"the artifact is {format_size(size_bytes)} ({size_bytes} bytes), over "
                f"limits.max_run_artifact_size ({format_size(self.max_size)}); raise the limit "
                "(TESSERA_LIMITS_MAX_RUN_ARTIFACT_SIZE) or store a smaller file"
            )
        with self._store.read() as txn:
            self._tracking.writable_run(txn, run_id)
            _refuse_file_and_directory(txn, run_id, path)
        return self.max_size

    def register(self, run_id: str, path: str, blob: BlobRef) -> RunArtifact:
        """Record a stored blob as the run's artifact at `path`, replacing what was there.

        On any failure the blob is deleted unless something else holds it; either way the claim
        of the put that stored `blob` ends here (BlobStore's claims).
        """
        try:
            artifact, replaced = self._record(run_id, path, blob)
        except BaseException:
            drop_claimed_blobs(self._store, self._blobs, {blob.sha256})
            raise
        self._blobs.release(blob.sha256)
        if replaced is not None:
            delete_unheld_blobs(self._store, self._blobs, {replaced})
        return artifact

    def _record(self, run_id: str, path: str, blob: BlobRef) -> tuple[RunArtifact, str | None]:
        """Write the record and move the path's hold; the sha256 it no longer holds, if any."""
        check_new_artifact_path(path)
        artifact = RunArtifact(run_id, path, blob.sha256, blob.size, time.time())
        holder = _holder(run_id, path)
        replaced = None
        with self._store.write() as txn:
            self._tracking.writable_run(txn, run_id)
            _refuse_file_and_directory(txn, run_id, path)
            raw = txn.get(TABLE, (run_id, path))
            if raw is not None:
                old = _decode(run_id, path, raw)
                if old.sha256 != blob.sha256:
                    release_blob(txn, old.sha256, holder)
                    replaced = old.sha256
            txn.put(TABLE, (run_id, path), _encode(artifact))
            hold_blob(txn, blob.sha256, holder)
        return artifact, replaced

    def list(self, run_id: str, path: str = "", size: int = 0, token: str = "") -> Page[RunArtifact]:
        """One page of the run's artifacts in path order: all, or those under the directory `path`
        ("plots" or "plots/"), and the artifact at that path itself."""
        directory = path.removesuffix("/")
        # "/" leaves no directory, yet is absolute, not empty: it is checked as sent.
        problem = _path_problem(directory or path) if path else None
        if problem is not None:
            raise InvalidArgument(
                f'path {path[:80]!r} {problem}; give a directory such as "plots" or "plots/", or '
                "leave path empty to list every artifact of the run"
            )
        inside = directory + "/"

        def under(key: Key) -> bool:
            return str(key[1]) == directory or str(key[1]).startswith(inside)

        def past(key: Key) -> bool:
            # Paths under the directory sort together after it; those between ("plots-old",
            # "plots.txt": '-' and '.' sort before '/') are skipped by `under`.
            return str(key[1]) > inside and not str(key[1]).startswith(inside)

        with self._store.read() as txn:
            self._tracking.load_run(txn, run_id)
            return read_page(
                txn,
                TABLE,
                (run_id,),
                query={"list": TABLE, "run": run_id, "path": directory},
                page_token=token,
                requested_size=size,
                item=lambda key, raw: _decode(run_id, str(key[1]), raw),
                keep=(lambda key, _: under(key)) if directory else None,
                until=past if directory else None,
                start=(run_id, directory) if directory else None,
            )

    def get(self, run_id: str, path: str) -> RunArtifact:
        check_artifact_path(path)
        with self._store.read() as txn:
            self._tracking.load_run(txn, run_id)
            raw = txn.get(TABLE, (run_id, path))
        if raw is None:
            raise NotFound(f"run {run_id!r} has no artifact at {path!r}; list them with ListRunArtifacts")
        return _decode(run_id, path, raw)

    def read_chunks(self, artifact: RunArtifact, chunk_size: int, offset: int = 0) -> Iterator[bytes]:
        """The artifact's bytes from byte `offset`; DataLoss once the whole of them does not
        match its sha256."""
        return self._blobs.read_chunks(artifact.sha256, chunk_size, offset)
