"""UploadDataset edge cases a user meets: seeds, label values, re-uploads, splits that come out empty."""

from __future__ import annotations

import hashlib
import struct
import zlib

import grpc
import numpy as np
import pytest

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import dataset_requests, npy_bytes, npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error, stored_blobs

D = datasets_pb2


def fractions(seed: int = 0, **named: float) -> D.SplitSpec:
    return D.SplitSpec(
        fractions=D.FractionSplit(
            splits=[D.SplitFraction(name=n, fraction=f) for n, f in named.items()], seed=seed
        )
    )


def test_a_negative_split_seed_is_an_invalid_argument(ds, data_dir):
    error = rpc_error(upload_dataset, ds, "seeded", npz_bytes(10), splits=fractions(-1, a=0.5, b=0.5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seed" in error.details() and "-1" in error.details()
    assert stored_blobs(data_dir) == []


def test_splits_set_without_fractions_or_indices_is_an_invalid_argument(ds, data_dir):
    # What a client sends when it sets a kind of split this daemon does not know: taken as the
    # default split, the dataset would be split otherwise than asked.
    error = rpc_error(upload_dataset, ds, "unsplit", npz_bytes(10), splits=D.SplitSpec())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "splits is set but gives neither fractions nor indices; set one, or leave splits unset for "
        "one split 'train' of every sample"
    )
    assert stored_blobs(data_dir) == []
    assert rpc_error(ds.GetDataset, D.GetDatasetRequest(name="unsplit")).code() == grpc.StatusCode.NOT_FOUND


def test_uint64_values_past_int64_give_no_class_counts(ds):
    labels = np.array([2**64 - 1, 1, 2], np.uint64)
    version = upload_dataset(ds, "wide", npz_bytes(x=np.zeros((3, 2), np.float32), y=labels))
    stats = {a.name: a.stats for a in version.arrays}["y"]
    assert dict(stats.class_counts) == {} and stats.max == float(2**64 - 1)
    got = ds.GetDatasetVersion(D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="wide")))
    assert got.version == 1 and got.num_samples == 3


def test_the_same_npy_under_another_array_name_is_a_new_version(ds, data_dir):
    data = npy_bytes(np.arange(5, dtype=np.float32))
    first = upload_dataset(ds, "series", data, format=D.DATASET_FORMAT_NPY, array_name="x")
    renamed = upload_dataset(ds, "series", data, format=D.DATASET_FORMAT_NPY, array_name="t")
    assert (first.version, renamed.version) == (1, 2)
    assert [a.name for a in renamed.arrays] == ["t"] and renamed.deduplicated
    assert len(stored_blobs(data_dir)) == 1
    again = upload_dataset(ds, "series", data, format=D.DATASET_FORMAT_NPY, array_name="t")
    assert again.version == 2 and again.deduplicated


def test_a_fraction_that_rounds_to_no_samples_is_refused(ds, data_dir):
    error = rpc_error(upload_dataset, ds, "tiny", npz_bytes(3), splits=fractions(1, train=0.9, val=0.1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'val'" in error.details() and "3 samples" in error.details()
    assert stored_blobs(data_dir) == []
    missing = rpc_error(ds.GetDataset, D.GetDatasetRequest(name="tiny"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    version = upload_dataset(ds, "tiny", npz_bytes(10), splits=fractions(1, train=0.9, val=0.1))
    assert [(s.name, s.count) for s in version.splits] == [("train", 9), ("val", 1)]


@pytest.fixture
def small_limit_daemon(tmp_path):
    running = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"limits.max_dataset_size": "1MiB"})
    ).start()
    yield running
    running.stop()


def test_compressed_arrays_that_unpack_past_the_size_limit_are_refused(small_limit_daemon, tmp_path):
    stub = datasets_pb2_grpc.DatasetsStub(small_limit_daemon.channel())
    bomb = npz_bytes(compressed=True, x=np.zeros((1000, 2000), np.float32))  # 8 MB of zeros
    assert len(bomb) < 2**20
    error = rpc_error(upload_dataset, stub, "zeros", bomb)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'x'" in error.details() and "8000000 bytes" in error.details()
    assert "limits.max_dataset_size" in error.details()
    assert stored_blobs(tmp_path / "data") == []
    small = upload_dataset(stub, "zeros", npz_bytes(compressed=True, x=np.zeros((100, 200), np.float32)))
    assert small.num_samples == 100


def test_a_refused_header_of_an_array_that_unpacks_past_the_size_limit_is_not_unpacked_for_its_crc(
    small_limit_daemon, tmp_path
):
    """A member whose header is refused is read through for its CRC-32, in case damage made the
    header wrong; a compressed one that unpacks past the limit is not, and its header's refusal
    stands (the statistics would never have unpacked it either)."""
    stub = datasets_pb2_grpc.DatasetsStub(small_limit_daemon.channel())
    x = npy_bytes(np.zeros((1000, 2000), np.float32))  # 8 MB of zeros
    bomb = bytearray(npz_bytes(compressed=True, x=np.zeros((1000, 2000), ">f4")))
    # The directory entry's CRC-32 (byte 16), zipfile's check: that of the little-endian array.
    struct.pack_into("<L", bomb, bomb.find(b"PK\x01\x02") + 16, zlib.crc32(x))
    assert len(bomb) < 2**20
    error = rpc_error(upload_dataset, stub, "zeros", bytes(bomb))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == "array 'x' is big-endian (>f4); save it little-endian, e.g. a.astype('<f4')"
    assert stored_blobs(tmp_path / "data") == []


def test_an_npz_array_without_a_name_is_refused(ds, data_dir):
    error = rpc_error(upload_dataset, ds, "nameless", npz_bytes(**{"": np.zeros((2, 3)), "y": np.zeros(2)}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'.npy'" in error.details() and "no array name" in error.details()
    assert stored_blobs(data_dir) == []


def test_deleting_a_negative_version_says_what_0_deletes(ds):
    upload_dataset(ds, "kept", npz_bytes(10))
    error = rpc_error(ds.DeleteDataset, D.DeleteDatasetRequest(name="kept", version=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "version must be >= 1 (0: the dataset with every version), got -1"
    assert ds.GetDataset(D.GetDatasetRequest(name="kept")).version_count == 1


def test_the_same_file_with_another_description_or_tags_is_a_new_version(ds, data_dir):
    """Versions never change, so a re-upload that describes the data anew is a version of its
    own (sharing the blob); returning the old one dropped the new words without a sign."""
    data = npz_bytes(10)
    upload_dataset(ds, "clips", data, description="raw", tags={"source": "lab"})
    described = upload_dataset(ds, "clips", data, description="cleaned", tags={"source": "lab"})
    assert (described.version, described.description, described.deduplicated) == (2, "cleaned", True)
    tagged = upload_dataset(ds, "clips", data, description="cleaned", tags={"source": "field"})
    assert (tagged.version, dict(tagged.tags)) == (3, {"source": "field"})
    again = upload_dataset(ds, "clips", data, description="cleaned", tags={"source": "field"})
    assert again.version == 3 and again.deduplicated
    stored = ds.GetDatasetVersion(
        D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="clips", version=1))
    )
    assert (stored.description, dict(stored.tags)) == ("raw", {"source": "lab"})
    assert len(stored_blobs(data_dir)) == 1


def test_an_index_split_that_lists_no_sample_is_refused(ds, data_dir):
    """As a fraction that rounds to no sample is: an empty split is no split to train or
    validate on (a job takes a split named "val" as its validation split unasked)."""
    indices = D.IndexSplit(
        splits=[D.SplitIndices(name="train", indices=[0, 1, 2]), D.SplitIndices(name="val", indices=[])]
    )
    error = rpc_error(upload_dataset, ds, "listed", npz_bytes(5), splits=D.SplitSpec(indices=indices))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "split 'val' lists no sample" in error.details()
    assert stored_blobs(data_dir) == []
    missing = rpc_error(ds.GetDataset, D.GetDatasetRequest(name="listed"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([3, -2, -1], "split 'val': index -2 is negative; samples are numbered from 0"),
        ([4, 7, 4], "split 'val': indices repeat (e.g. 4); list each sample once"),
    ],
    ids=["negative", "repeated"],
)
def test_index_split_mistakes_the_header_shows_are_refused_before_the_file_is_taken(
    ds, data_dir, indices, message
):
    data = npz_bytes(20_000)
    splits = D.SplitSpec(
        indices=D.IndexSplit(
            splits=[D.SplitIndices(name="train", indices=[0, 1]), D.SplitIndices(name="val", indices=indices)]
        )
    )
    header = D.UploadDatasetHeader(
        name="indexed",
        format=D.DATASET_FORMAT_NPZ,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        splits=splits,
    )
    # Only the header and the first chunk are sent: the refusal shows the header was checked
    # before the rest of the file was awaited (a caller learnt of a -1 after sending it all).
    error = rpc_error(ds.UploadDataset, iter(list(dataset_requests(header, data))[:2]), timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    assert stored_blobs(data_dir) == []
