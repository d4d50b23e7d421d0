"""A dataset version is answered whole (by its upload, GetDatasetVersion, a download's header and a
page of ListDatasetVersions), so UploadDataset refuses one that would not fit gRPC's default 4 MiB
answer, before it is stored."""

from __future__ import annotations

import grpc
import numpy as np

from tessera.v1 import common_pb2, datasets_pb2
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error, stored_blobs
from tests.unit.datasets.zips import with_zip64_end

D = datasets_pb2
# 1,000 distinct label values, each a 10-byte varint in an answer's class counts.
LABELS = -(10**15) * np.arange(1, 1001, dtype=np.int64)


def test_a_version_too_large_for_one_answer_is_invalid_argument_and_stores_nothing(ds, data_dir):
    # Their class counts alone take over 4 MiB: the version was stored while the upload's own
    # answer failed at the caller.
    data = npz_bytes(**{f"y{i}": LABELS for i in range(300)})
    error = rpc_error(upload_dataset, ds, "wide", data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()
    assert details.startswith("the dataset's 300 arrays take about ")
    assert details.endswith(
        " to describe (their names, shapes and statistics, 300000 class counts among them), more "
        "than one answer holds (3 MiB); upload fewer arrays in one version, e.g. stack arrays of "
        "one shape into one"
    )
    assert stored_blobs(data_dir) == []
    missing = rpc_error(ds.GetDataset, D.GetDatasetRequest(name="wide"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_many_arrays_that_fit_one_answer_are_stored_and_answered(ds):
    version = upload_dataset(ds, "labels", npz_bytes(**{f"y{i}": LABELS for i in range(30)}))
    assert len(version.arrays) == 30
    assert all(len(a.stats.class_counts) == 1000 for a in version.arrays)
    got = ds.GetDatasetVersion(D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="labels")))
    assert got == version
    listed = ds.ListDatasetVersions(D.ListDatasetVersionsRequest(name="labels")).versions
    assert list(listed) == [version]


def test_an_npz_of_more_arrays_than_a_dataset_may_have_is_refused_before_any_is_read(ds, data_dir):
    one = np.zeros(1, np.uint8)
    error = rpc_error(upload_dataset, ds, "scattered", npz_bytes(**{f"a{i}": one for i in range(10_001)}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "the npz archive holds 10001 members, over the 10000 arrays a dataset may have (so that any "
        "answer holding its version fits gRPC's 4 MiB); stack arrays of one shape into one, or split "
        "the data into several datasets"
    )
    assert stored_blobs(data_dir) == []
    version = upload_dataset(ds, "scattered", npz_bytes(**{f"a{i}": one for i in range(10_000)}))
    assert len(version.arrays) == 10_000


def test_an_npz_whose_end_record_claims_more_arrays_than_a_dataset_may_have_is_refused(ds, data_dir):
    # Its directory lists one array: zipfile would parse only that and never read the count, so a
    # file near the size limit listing tens of millions of tiny entries would be parsed whole.
    data = with_zip64_end(npz_bytes(x=np.zeros(3)), entries=50_000_000)
    error = rpc_error(upload_dataset, ds, "claims", data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "the npz archive holds 50000000 members, over the 10000 arrays a dataset may have (so that "
        "any answer holding its version fits gRPC's 4 MiB); stack arrays of one shape into one, or "
        "split the data into several datasets"
    )
    assert stored_blobs(data_dir) == []
    assert rpc_error(ds.GetDataset, D.GetDatasetRequest(name="claims")).code() == grpc.StatusCode.NOT_FOUND
    version = upload_dataset(ds, "claims", with_zip64_end(npz_bytes(x=np.zeros(3))))
    assert [(a.name, list(a.shape)) for a in version.arrays] == [("x", [3])]
