"""Transport of a Ray training worker: it fetches the job's dataset from the daemon over gRPC.

The one module of the Ray worker that speaks gRPC (the daemon's public Datasets.DownloadDataset,
through the generated stubs of the tessera client). The file is kept per node under its content
hash, so the jobs that follow on the same node read it from disk; nothing here needs the
daemon's data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import grpc

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc

# The worker's node keeps fetched datasets here, named by their sha256.
CACHE_DIR = Path(tempfile.gettempdir()) / "tessera-ray-datasets"
_CHUNK_SIZE = 4 * 2**20


class DatasetFetchError(Exception):
    """The dataset could not be fetched from the daemon, or its bytes were not the ones expected."""


def cached_dataset(target: str, token: str, name: str, version: int, sha256: str, suffix: str) -> Path:
    """The path of the dataset's file on this node, fetched from the daemon at `target` first
    unless a job before this one already did."""
    path = CACHE_DIR / f"{sha256}.{suffix}"
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # Written aside and renamed when complete: jobs on the same node may fetch at once.
    fd, partial = tempfile.mkstemp(dir=CACHE_DIR, prefix=f".{sha256}.")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            grpc.insecure_channel(
                target, options=[("grpc.max_receive_message_length", 2 * _CHUNK_SIZE)]
            ) as ch,
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
    return path
