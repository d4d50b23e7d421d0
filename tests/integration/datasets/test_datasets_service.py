"""UploadDataset and friends over gRPC: safe parsing, splits, statistics, versions, quota, download."""

from __future__ import annotations

import hashlib
import io
import zipfile

import grpc
import numpy as np
import pytest

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import npy_bytes, npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error, stored_blobs

D = datasets_pb2


def test_npz_upload_records_arrays_stats_and_default_split(ds):
    version = upload_dataset(ds, "clips", npz_bytes(), description="d", tags={"k": "v"})
    assert (version.name, version.version, version.num_samples) == ("clips", 1, 100)
    arrays = {a.name: a for a in version.arrays}
    assert (
        list(arrays["x"].shape) == [100, 2, 3, 4, 4, 4] and arrays["x"].dtype == common_pb2.DATA_TYPE_FLOAT32
    )
    assert abs(arrays["x"].stats.mean) < 0.05 and 0.95 < arrays["x"].stats.std < 1.05
    assert dict(arrays["y"].stats.class_counts) == {0: 34, 1: 33, 2: 33}
    assert (arrays["y"].stats.min, arrays["y"].stats.max) == (0, 2)
    assert [(s.name, s.count) for s in version.splits] == [("train", 100)]
    assert not version.deduplicated


def test_fraction_and_index_splits(ds, daemon):
    version = upload_dataset(
        ds,
        "clips",
        npz_bytes(),
        splits=D.SplitSpec(
            fractions=D.FractionSplit(
                splits=[
                    D.SplitFraction(name="train", fraction=0.8),
                    D.SplitFraction(name="val", fraction=0.2),
                ],
                seed=7,
            )
        ),
    )
    assert [(s.name, s.count) for s in version.splits] == [("train", 80), ("val", 20)]
    datasets = daemon.daemon.datasets
    record = datasets.resolve("clips")
    train, val = datasets.split_indices(record, "train"), datasets.split_indices(record, "val")
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    arrays = datasets.open_arrays(record)
    assert isinstance(arrays["x"], np.memmap) and arrays["x"].shape == (100, 2, 3, 4, 4, 4)
    explicit = upload_dataset(
        ds,
        "clips",
        npz_bytes(),
        splits=D.SplitSpec(
            indices=D.IndexSplit(
                splits=[D.SplitIndices(name="a", indices=[0, 1, 2]), D.SplitIndices(name="b", indices=[5])]
            )
        ),
    )
    assert [(s.name, s.count) for s in explicit.splits] == [("a", 3), ("b", 1)]
    cases = [
        (
            D.SplitSpec(fractions=D.FractionSplit(splits=[D.SplitFraction(name="t", fraction=0.5)])),
            "must sum to 1, got 0.5",
        ),
        (
            D.SplitSpec(indices=D.IndexSplit(splits=[D.SplitIndices(name="t", indices=[100])])),
            "index 100 is outside [0, 100)",
        ),
        (
            D.SplitSpec(indices=D.IndexSplit(splits=[D.SplitIndices(name="t", indices=[1, 1])])),
            "indices repeat",
        ),
    ]
    for splits, message in cases:
        error = rpc_error(upload_dataset, ds, "clips", npz_bytes(n=100), splits=splits)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details(), message


def test_unsafe_or_broken_files_name_the_array(ds, data_dir):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = [1, 2], [3]
    good_x = np.zeros((4, 2), np.float32)
    nan_x = good_x.copy()
    nan_x[2, 1] = np.nan
    cases = [
        (npz_bytes(x=good_x, names=ragged), "array 'names' holds Python objects"),
        (npz_bytes(x=good_x, y=np.zeros(3)), "x has 4, y has 3"),
        (npz_bytes(x=nan_x), "array 'x' has NaN or Inf values (the first at index [2, 1])"),
        (npz_bytes(x=good_x, s=np.array(["a", "b", "c", "d"])), "array 's' has dtype <U1"),
        (npz_bytes(x=good_x)[:-40], "not a complete npz archive"),
        (npz_bytes(x=np.float32(1.0)), "array 'x' is a scalar"),
    ]
    for data, message in cases:
        error = rpc_error(upload_dataset, ds, "bad", data)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in error.details(), error.details()
    npy = npy_bytes(np.arange(50, dtype=np.float64))
    error = rpc_error(upload_dataset, ds, "bad", npy[:-16], format=D.DATASET_FORMAT_NPY, array_name="t")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.details()
        == "array 't' is truncated: its header says shape [50] float64 (400 bytes of data) but only 384 "
        "bytes follow; send the whole file again"
    )
    assert stored_blobs(data_dir) == []
    allowed = upload_dataset(ds, "nan", npz_bytes(x=nan_x), allow_nonfinite=True)
    assert allowed.arrays[0].stats.nonfinite_count == 1 and allowed.allow_nonfinite


def test_npy_and_compressed_npz(ds, daemon):
    version = upload_dataset(
        ds,
        "series",
        npy_bytes(np.arange(12, dtype=np.int32).reshape(6, 2)),
        format=D.DATASET_FORMAT_NPY,
        array_name="t",
    )
    assert [a.name for a in version.arrays] == ["t"] and version.num_samples == 6
    upload_dataset(ds, "packed", npz_bytes(compressed=True))
    arrays = daemon.daemon.datasets.open_arrays(daemon.daemon.datasets.resolve("packed"))
    assert arrays["y"].tolist()[:4] == [0, 1, 2, 0]


def test_identical_content_is_stored_once(ds, data_dir):
    data = npz_bytes()
    first = upload_dataset(ds, "a", data)
    assert (first.existing_version, first.HasField("shared_with")) == (False, False)
    again = upload_dataset(ds, "a", data)
    assert again.version == first.version and again.deduplicated and again.existing_version
    assert not again.HasField("shared_with")
    other = upload_dataset(ds, "b", data)
    assert other.version == 1 and other.deduplicated and not other.existing_version
    assert other.shared_with == common_pb2.DatasetRef(name="a", version=1)
    # Neither is kept with the version: they say what the upload did.
    assert not ds.GetDatasetVersion(D.GetDatasetVersionRequest(ref=other.shared_with)).existing_version
    assert not ds.GetDatasetVersion(D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="b"))).HasField(
        "shared_with"
    )
    assert len(stored_blobs(data_dir)) == 1
    assert ds.GetDataset(D.GetDatasetRequest(name="a")).size_bytes == len(data)
    ds.DeleteDataset(D.DeleteDatasetRequest(name="a"))
    assert len(stored_blobs(data_dir)) == 1  # still held by b
    ds.DeleteDataset(D.DeleteDatasetRequest(name="b"))
    assert stored_blobs(data_dir) == []


def test_versions_list_get_delete_download(ds):
    for n in (10, 20, 30):
        upload_dataset(ds, "grow", npz_bytes(n=n))
    page = ds.ListDatasetVersions(D.ListDatasetVersionsRequest(name="grow", page_size=2))
    assert [v.version for v in page.versions] == [3, 2]
    rest = ds.ListDatasetVersions(
        D.ListDatasetVersionsRequest(name="grow", page_size=2, page_token=page.next_page_token)
    )
    assert [v.version for v in rest.versions] == [1] and not rest.next_page_token
    assert (
        ds.GetDatasetVersion(D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="grow"))).num_samples
        == 30
    )
    responses = list(
        ds.DownloadDataset(
            D.DownloadDatasetRequest(ref=common_pb2.DatasetRef(name="grow", version=2), chunk_size=4096)
        )
    )
    data = b"".join(r.chunk for r in responses[1:])
    assert hashlib.sha256(data).hexdigest() == responses[0].header.sha256 and data == npz_bytes(n=20)
    assert ds.DeleteDataset(D.DeleteDatasetRequest(name="grow", version=2)).deleted_versions == 1
    gone = rpc_error(
        ds.GetDatasetVersion, D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="grow", version=2))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND and "has no version 2" in gone.details()
    upload_dataset(ds, "other", npz_bytes(n=5))
    listed = ds.ListDatasets(D.ListDatasetsRequest(name_prefix="gr"))
    assert [(d.name, d.version_count, d.latest_version) for d in listed.datasets] == [("grow", 2, 3)]
    assert ds.DeleteDataset(D.DeleteDatasetRequest(name="grow")).deleted_versions == 2
    missing = rpc_error(ds.GetDataset, D.GetDatasetRequest(name="grow"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_checksum_and_header_errors(ds, data_dir):
    data = npz_bytes()
    mismatch = rpc_error(upload_dataset, ds, "c", data, sha256="1" * 64)
    assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT
    line_end = rpc_error(upload_dataset, ds, "c", data, sha256=hashlib.sha256(data).hexdigest() + "\n")
    assert line_end.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256 must be 64 lowercase hex digits" in line_end.details()
    bad_format = rpc_error(upload_dataset, ds, "c", data, format=0)
    assert (
        bad_format.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "format must be npz or npy" in bad_format.details()
    )
    unknown = rpc_error(upload_dataset, ds, "c", data, format=7)
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format must be npz or npy, got 7" in unknown.details()
    assert stored_blobs(data_dir) == []


@pytest.fixture
def quota_daemon(tmp_path):
    running = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"limits.dataset_quota": "300KiB"})
    ).start()
    yield running
    running.stop()


def test_quota_is_resource_exhausted_with_the_numbers(quota_daemon):
    stub = datasets_pb2_grpc.DatasetsStub(quota_daemon.channel())
    first = npz_bytes(n=150)
    upload_dataset(stub, "one", first)
    second = npz_bytes(n=100)
    error = rpc_error(upload_dataset, stub, "two", second)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({len(first)} bytes) of limits.dataset_quota" in error.details()
    assert f"needs {len(second) / 1024:.3g} KiB ({len(second)} bytes)" in error.details()
    # Undeclared size: caught while streaming.
    error = rpc_error(upload_dataset, stub, "two", second, size_bytes=0)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_quota_lowered_below_what_is_used_refuses_an_undeclared_size_saying_so(data_dir):
    stored = npz_bytes(n=150)
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        upload_dataset(datasets_pb2_grpc.DatasetsStub(first.channel()), "one", stored)
    finally:
        first.stop()
    lowered = InProcessDaemon(daemon_settings(data_dir, **{"limits.dataset_quota": "100KiB"})).start()
    try:
        stub = datasets_pb2_grpc.DatasetsStub(lowered.channel())
        error = rpc_error(upload_dataset, stub, "two", npz_bytes(n=10), sha256="", size_bytes=0)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            f"the dataset quota is exhausted: datasets use {len(stored) / 1024:.3g} KiB ({len(stored)} "
            "bytes) of limits.dataset_quota 100 KiB (102400 bytes), more than it allows, so no upload "
            "of new content fits; delete datasets or raise TESSERA_LIMITS_DATASET_QUOTA"
        )
    finally:
        lowered.stop()


def test_content_already_stored_is_taken_with_the_quota_nearly_used(quota_daemon, data_dir):
    """Identical content is stored once and counted once, so pushing it again (under another
    name, or with other splits) needs no room in the quota; its declared sha256 says so."""
    stub = datasets_pb2_grpc.DatasetsStub(quota_daemon.channel())
    data = npz_bytes(n=150)
    first = upload_dataset(stub, "one", data)
    again = upload_dataset(stub, "two", data)
    assert (again.version, again.sha256, again.deduplicated) == (1, first.sha256, True)
    split = D.SplitSpec(indices=D.IndexSplit(splits=[D.SplitIndices(name="val", indices=[0, 1])]))
    resplit = upload_dataset(stub, "one", data, splits=split)
    assert (resplit.version, resplit.deduplicated) == (2, True)
    assert len([b for b in stored_blobs(data_dir) if b.startswith("sha256/")]) == 1
    # Bytes that are not what the header declared are refused as ever, leaving nothing.
    other = npz_bytes(n=140)
    error = rpc_error(upload_dataset, stub, "three", other, sha256=first.sha256, size_bytes=len(other))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_blobs(data_dir) == [f"sha256/{first.sha256[:2]}/{first.sha256[2:]}"]


def test_datasets_survive_a_restart(data_dir):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        upload_dataset(datasets_pb2_grpc.DatasetsStub(first.channel()), "keep", npz_bytes())
    finally:
        first.stop()
    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = datasets_pb2_grpc.DatasetsStub(second.channel())
        version = stub.GetDatasetVersion(
            D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="keep", version=1))
        )
        assert version.num_samples == 100
        record = second.daemon.datasets.resolve("keep")
        assert second.daemon.datasets.split_indices(record, "train").size == 100
    finally:
        second.stop()


def test_zip_members_that_are_not_arrays_are_refused(ds):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((3, 2), np.float32)))
        archive.writestr("evil.pkl", b"\x80\x04")
    error = rpc_error(upload_dataset, ds, "z", buffer.getvalue())
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "'evil.pkl' is not a .npy array" in error.details()
    )


def test_a_download_chunk_under_4_kib_is_refused_and_0_is_the_default(ds):
    """Each chunk is a message of its own: 1-byte chunks would have the daemon send a million
    messages per MiB."""
    upload_dataset(ds, "small", npz_bytes(n=10))
    ref = common_pb2.DatasetRef(name="small", version=1)
    for size in (1, 4095):
        refused = rpc_error(
            lambda size=size: list(ds.DownloadDataset(D.DownloadDatasetRequest(ref=ref, chunk_size=size)))
        )
        assert (refused.code(), refused.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"chunk_size must be 0 (default 1048576) or 4096 to 4194304 bytes, got {size}",
        )
    for size in (0, 4096):
        responses = list(ds.DownloadDataset(D.DownloadDatasetRequest(ref=ref, chunk_size=size)))
        assert b"".join(r.chunk for r in responses[1:]) == npz_bytes(n=10)
