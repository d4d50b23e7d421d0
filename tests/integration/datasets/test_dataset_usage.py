"""The quota's usage and each dataset's summary are kept in the transactions that add and delete
versions (tesserad.datasets.usage): after uploads, deletes, force-deletes and refused calls
they equal a recount of the stored versions, and a store whose index an older daemon may have
left stale gets it rebuilt at the next start. A dataset deleted whole goes by its index and its
holder rows, no version record read."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from tessera.v1 import datasets_pb2, datasets_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.datasets.references import BLOB_HOLDERS
from tesserad.datasets.service import SPLITS, VERSIONS
from tesserad.datasets.usage import SUMMARIES, USAGE, USAGE_INDEXED
from tesserad.server import STORE_TABLES
from tesserad.store import Store, decode_record, encode_record
from tesserad.store.schema import SCHEMA_KEY, recorded_schema
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, stored_blobs, upload
from tests.unit.datasets.test_usage import index_rows, recount

D = datasets_pb2


def _open(data_dir: Path) -> Store:
    return Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)


def _assert_index_is_a_recount(data_dir: Path) -> None:
    store = _open(data_dir)
    try:
        with store.read() as txn:
            versions = []
            for (name, version), raw in txn.scan(VERSIONS):
                data = decode_record(raw, "dataset_version", 1)[1]
                versions.append((str(name), int(version), data["sha256"], data["size_bytes"]))
            assert index_rows(txn) == recount(versions)
    finally:
        store.close()


def _summary(stub: datasets_pb2_grpc.DatasetsStub, name: str) -> tuple[int, int, int]:
    got = stub.GetDataset(D.GetDatasetRequest(name=name))
    return got.latest_version, got.version_count, got.size_bytes


def test_the_index_equals_a_recount_after_uploads_deletes_and_refusals(data_dir: Path) -> None:
    shared, other, third, fourth = npz_bytes(10), npz_bytes(11), npz_bytes(12), npz_bytes(13)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        channel = daemon.channel()
        ds, registry = datasets_pb2_grpc.DatasetsStub(channel), registry_pb2_grpc.RegistryStub(channel)
        upload_dataset(ds, "a", shared)
        upload_dataset(ds, "a", other)
        # The same bytes again with other words: a version of its own, its file counted once.
        upload_dataset(ds, "a", shared, description="again")
        upload_dataset(ds, "b", shared)
        upload_dataset(ds, "c", third)
        upload_dataset(ds, "c", fourth)
        assert _summary(ds, "a") == (3, 3, len(shared) + len(other))
        # Refused uploads and deletes count nothing.
        nan = npz_bytes(x=np.array([[np.nan]], dtype=np.float32), y=np.array([0]))
        assert rpc_error(upload_dataset, ds, "a", nan).code() == grpc.StatusCode.INVALID_ARGUMENT
        data = onnx_identity()
        lineage = registry_pb2.Lineage(datasets=[registry_pb2.DatasetLineage(name="c", version=2)])
        upload(registry, onnx_header("clf", data, lineage=lineage), data)
        error = rpc_error(ds.DeleteDataset, D.DeleteDatasetRequest(name="c"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _summary(ds, "c") == (2, 2, len(third) + len(fourth))
        # The newest version goes, then the oldest, whose file dataset b still holds.
        ds.DeleteDataset(D.DeleteDatasetRequest(name="a", version=3))
        assert _summary(ds, "a") == (2, 2, len(shared) + len(other))
        ds.DeleteDataset(D.DeleteDatasetRequest(name="a", version=1))
        assert _summary(ds, "a") == (2, 1, len(other))
        ds.DeleteDataset(D.DeleteDatasetRequest(name="c", force=True))
        listed = ds.ListDatasets(D.ListDatasetsRequest())
        assert [(d.name, d.latest_version, d.version_count, d.size_bytes) for d in listed.datasets] == [
            ("a", 2, 1, len(other)),
            ("b", 1, 1, len(shared)),
        ]
    finally:
        daemon.stop()
    _assert_index_is_a_recount(data_dir)
    store = _open(data_dir)
    try:
        with store.read() as txn:
            total = decode_record(txn.get(USAGE, ("total",)) or b"", "dataset_usage", 1)[1]
        assert total == {"size_bytes": len(shared) + len(other)}
    finally:
        store.close()


def test_the_quota_counts_a_file_again_once_its_last_version_is_deleted(tmp_path: Path) -> None:
    first, second = npz_bytes(150), npz_bytes(100)
    settings = daemon_settings(tmp_path / "data", **{"limits.dataset_quota": str(len(first) + 1000)})
    daemon = InProcessDaemon(settings).start()
    try:
        ds = datasets_pb2_grpc.DatasetsStub(daemon.channel())
        upload_dataset(ds, "one", first)
        upload_dataset(ds, "two", first)
        assert rpc_error(upload_dataset, ds, "three", second).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Dataset two still holds the file: the quota is as full as before.
        ds.DeleteDataset(D.DeleteDatasetRequest(name="one"))
        assert rpc_error(upload_dataset, ds, "three", second).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ds.DeleteDataset(D.DeleteDatasetRequest(name="two"))
        assert upload_dataset(ds, "three", second).version == 1
    finally:
        daemon.stop()
    _assert_index_is_a_recount(tmp_path / "data")


def test_a_dataset_is_deleted_whole_from_its_index_without_reading_its_versions(data_dir: Path) -> None:
    own, shared = npz_bytes(10), npz_bytes(11)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        ds = datasets_pb2_grpc.DatasetsStub(daemon.channel())
        upload_dataset(ds, "a", own)
        upload_dataset(
            ds,
            "a",
            shared,
            splits=D.SplitSpec(indices=D.IndexSplit(splits=[D.SplitIndices(name="train", indices=[0, 1])])),
        )
        kept = upload_dataset(ds, "b", shared)
        upload_dataset(ds, "a", own, description="again")
    finally:
        daemon.stop()
    # A version record no daemon can read: a delete that decoded the versions would fail.
    store = _open(data_dir)
    try:
        with store.write() as txn:
            txn.put(VERSIONS, ("a", 1), b"damaged")
    finally:
        store.close()
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        ds = datasets_pb2_grpc.DatasetsStub(daemon.channel())
        assert ds.DeleteDataset(D.DeleteDatasetRequest(name="a")).deleted_versions == 3
        assert _summary(ds, "b") == (1, 1, len(shared))
        assert rpc_error(ds.GetDataset, D.GetDatasetRequest(name="a")).code() == grpc.StatusCode.NOT_FOUND
    finally:
        daemon.stop()
    # The file only dataset a held is gone; the one b holds stays, held by b alone.
    assert stored_blobs(data_dir) == [f"sha256/{kept.sha256[:2]}/{kept.sha256[2:]}"]
    _assert_index_is_a_recount(data_dir)
    store = _open(data_dir)
    try:
        with store.read() as txn:
            assert [key for key, _ in txn.scan(BLOB_HOLDERS)] == [(kept.sha256, "dataset:b:1")]
            assert [key for key, _ in txn.scan(SPLITS, ("a",))] == []
    finally:
        store.close()


@pytest.mark.parametrize("older", ["the marker was removed", "an older tesserad wrote the store"])
def test_an_index_left_stale_is_rebuilt_at_the_next_start(data_dir: Path, older: str) -> None:
    kept, gone = npz_bytes(10), npz_bytes(11)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        ds = datasets_pb2_grpc.DatasetsStub(daemon.channel())
        upload_dataset(ds, "a", kept)
        upload_dataset(ds, "a", gone)
    finally:
        daemon.stop()
    # What a daemon that did not keep the index leaves: a version deleted without its rows
    # going, and rows of a dataset that is not stored.
    store = _open(data_dir)
    try:
        with store.write() as txn:
            assert txn.delete(VERSIONS, ("a", 2))
            ghost = {"latest_version": 4, "version_count": 4, "size_bytes": 1}
            txn.put(SUMMARIES, ("ghost",), encode_record("dataset_summary", 1, ghost))
            if older == "the marker was removed":
                assert txn.delete("meta", USAGE_INDEXED)
            else:
                record = recorded_schema(txn)
                assert record is not None
                data = {"schema": 1, "tesserad_version": "0.0.1", "token": record.token, "at": 0.0}
                txn.put("meta", SCHEMA_KEY, encode_record("store_schema", 1, data))
    finally:
        store.close()
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        ds = datasets_pb2_grpc.DatasetsStub(daemon.channel())
        assert _summary(ds, "a") == (1, 1, len(kept))
    finally:
        daemon.stop()
    _assert_index_is_a_recount(data_dir)
