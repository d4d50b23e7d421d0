"""At start the daemon deletes blobs that no record holds (crash debris), and keeps the rest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tessera.v1 import datasets_pb2_grpc
from tesserad.store import BlobStore
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import npz_bytes, upload_dataset


def test_unheld_blobs_are_collected_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    running = InProcessDaemon(daemon_settings(data_dir)).start()
    payload = npz_bytes(20)
    try:
        upload_dataset(datasets_pb2_grpc.DatasetsStub(running.channel()), "kept", payload)
    finally:
        running.stop()
    # A blob renamed into place whose recording commit never happened (the daemon died between).
    debris = BlobStore(data_dir / "blobs").put_bytes(b"debris of a crash")
    running = InProcessDaemon(daemon_settings(data_dir)).start()
    running.stop()
    blobs = BlobStore(data_dir / "blobs")
    assert not blobs.exists(debris.sha256)
    assert blobs.exists(hashlib.sha256(payload).hexdigest())
