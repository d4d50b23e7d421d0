"""Transport of a Ray training worker: it fetches the job's dataset from the daemon over gRPC,
with TLS (and the client certificate of training.ray_tls_cert_file under mutual TLS) when the
daemon serves it.

The one module of the Ray worker that speaks gRPC (the daemon's public Datasets.DownloadDataset,
through the generated stubs of the tessera client). The file is kept per node under its content
hash, so the jobs that follow on the same node read it from disk; nothing here needs the
daemon's data directory. The cache directory is this user's alone (0700; one owned by another
user is refused, since whoever owns it could place files there), and a cached file is hashed
again at each use, so a file changed on disk is fetched again rather than trained on. The cache
is bounded (training.ray_dataset_cache_size): after a fetch, the least recently used files go
until the rest fit, except the one just fetched and any a job began with in the last minute (a
job opens its file right after it gets the path, and a file already open stays readable once
unlinked).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc

if TYPE_CHECKING:
    from tesserad.training.ray_worker import WorkerTls

# The worker's node keeps fetched datasets here, named by their sha256; per user, so that no other
# user of the node can take the name first.
CACHE_DIR = Path(tempfile.gettempdir()) / f"tessera-ray-datasets-{os.getuid()}"
_CHUNK_SIZE = 4 * 2**20


class DatasetFetchError(Exception):
    """The dataset could not be fetched from the daemon, or its bytes were not the ones expected."""


# A cached file a job began with this recently is never evicted.
RECENT_USE_S = 60.0


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int
    last_used: float  # mtime, set at each use


def files_to_evict(files: list[CachedFile], limit: int, keep: str, now: float) -> list[str]:
    """The least recently used files to delete so that the rest fit in `limit` bytes, never
    `keep` nor one used within RECENT_USE_S of `now` (the cache may then stay over its limit)."""
    total = sum(f.size for f in files)
    evict = []
    for file in sorted(files, key=lambda f: f.last_used):
        if total <= limit:
            break
        if file.name == keep or now - file.last_used < RECENT_USE_S:
            continue
        evict.append(file.name)
        total -= file.size
    return evict


def cached_dataset(
    target: str,
    token: str,
    name: str,
    version: int,
    sha256: str,
    suffix: str,
    cache_size: int,
    tls: WorkerTls | None = None,
) -> Path:
    """The path of the dataset's file on this node, fetched from the daemon at `target` first
    (over TLS when `tls` is given) unless a job before this one already did."""
    _own_cache_dir()
    path = CACHE_DIR / f"{sha256}.{suffix}"
    try:
        os.utime(path)  # its last use, for eviction: marked first, so no other job evicts it now
        cached_sha256 = _sha256_of(path)
    except FileNotFoundError:
        cached_sha256 = ""
    if cached_sha256 == sha256:
        # Marked again: hashing a large file can take longer than RECENT_USE_S, and another job's
        # trim must not evict the file this job is about to read. One that already did leaves
        # nothing to mark: the file is fetched again.
        try:
            os.utime(path)
        except FileNotFoundError:
            pass
        else:
            return path
    digest = hashlib.sha256()
    # Written aside and renamed when complete: jobs on the same node may fetch at once.
    fd, partial = tempfile.mkstemp(dir=CACHE_DIR, prefix=f".{sha256}.")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            daemon_channel(target, tls) as ch,
        ):
            stub = datasets_pb2_grpc.DatasetsStub(ch)
            request = datasets_pb2.DownloadDatasetRequest(
                ref=common_pb2.DatasetRef(name=name, version=version), chunk_size=_CHUNK_SIZE
            )
            try:
                metadata = (("authorization", f"Bearer {token}"),) if token else None
                for part in stub.DownloadDataset(request, timeout=600, metadata=metadata):
                    if part.WhichOneof("part") == "chunk":
                        digest.update(part.chunk)
                        out.write(part.chunk)
            except grpc.RpcError as exc:
                raise DatasetFetchError(
                    f"fetching dataset {name!r} v{version} from the daemon at {target} failed: "
                    f"{exc.code().name}: {exc.details()}"
                ) from None
        if digest.hexdigest() != sha256:
            raise DatasetFetchError(
                f"dataset {name!r} v{version} from the daemon at {target} has sha256 {digest.hexdigest()}, "
                f"not the {sha256} the job was submitted with"
            )
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    _trim(cache_size, keep=path.name)
    return path


def daemon_channel(target: str, tls: WorkerTls | None) -> grpc.Channel:
    """A channel to the daemon at `target`: TLS (mutual when `tls` holds a client certificate)
    as the daemon serves it, or plaintext when it serves none."""
    options = [("grpc.max_receive_message_length", 2 * _CHUNK_SIZE)]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key or None,
        certificate_chain=tls.certificate_chain or None,
    )
    return grpc.secure_channel(target, credentials, options=options)


def _own_cache_dir() -> None:
    """Make CACHE_DIR, or take it as it is when this user owns it, readable and writable by this
    user alone; DatasetFetchError when it is not a directory this user owns."""
    with contextlib.suppress(FileExistsError):
        CACHE_DIR.mkdir(mode=0o700, parents=True)
    info = os.lstat(CACHE_DIR)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise DatasetFetchError(
            f"the dataset cache {CACHE_DIR} on this Ray node is not a directory of the user the "
            f"worker runs as (uid {os.getuid()}); whoever owns it could replace the datasets jobs "
            "train on, so the worker does not use it: remove it, and the next job makes it anew"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        # Made before the cache was kept private (or with another umask): each file in it is
        # hashed again at its use, so closing it from now on is enough.
        os.chmod(CACHE_DIR, 0o700)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _trim(limit: int, keep: str) -> None:
    files = []
    for entry in os.scandir(CACHE_DIR):
        if entry.name.startswith("."):
            continue  # another job's fetch in progress
        with contextlib.suppress(FileNotFoundError):
            stat = entry.stat()
            files.append(CachedFile(entry.name, stat.st_size, stat.st_mtime))
    for name in files_to_evict(files, limit, keep, time.time()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(CACHE_DIR / name)
