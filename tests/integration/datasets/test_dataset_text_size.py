"""A dataset version's description and tags follow the rules every record's free text does: tag
keys of 1 to 250 characters without NUL or newlines, values of at most 8000, and description and
tags together at most 16 KiB. The header is checked before any byte of the file is stored."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from tessera.v1 import datasets_pb2
from tests.integration.datasets.conftest import dataset_requests, npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error, stored_blobs

D = datasets_pb2
LIMIT = 16 * 2**10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": {"": "x"}}, "tags: key '' must be 1 to 250 characters without NUL or newlines"),
        ({"tags": {"note": "n" * 8001}}, "tags['note']: value is longer than 8000 characters"),
        (
            {"description": "d" * (LIMIT - 5), "tags": {"a": "bcdef"}},
            "a dataset version's description and tags take at most 16 KiB together, these take 16 KiB "
            "(16385 bytes); keep longer documentation elsewhere and link to it",
        ),
    ],
)
def test_the_header_text_is_checked_before_the_file_is_taken(ds, data_dir, fields, message):
    data = npz_bytes(20_000)
    header = D.UploadDatasetHeader(
        name="d",
        format=D.DATASET_FORMAT_NPZ,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        **fields,
    )
    # Only the header and the first chunk are sent: the refusal shows the header was checked
    # before the rest of the file was awaited.
    error = rpc_error(ds.UploadDataset, iter(list(dataset_requests(header, data))[:2]), timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    assert stored_blobs(data_dir) == []
    assert list(ds.ListDatasets(D.ListDatasetsRequest()).datasets) == []


def test_text_within_the_limits_is_kept(ds):
    tags = {"k" * 250: "v" * 8000, "team": "vision"}
    description = "d" * (LIMIT - 250 - 8000 - 10)
    version = upload_dataset(ds, "d", npz_bytes(10), description=description, tags=tags)
    assert (version.description, dict(version.tags)) == (description, tags)
