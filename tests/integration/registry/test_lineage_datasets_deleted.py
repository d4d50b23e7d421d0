"""A dataset version force-deleted after a model version was registered from it shows as `deleted`
in that version's lineage on every read (GetVersion, ListVersions, GetLineage), as an ONNX export
of the version marks it; one that is still stored does not."""

from __future__ import annotations

import pytest

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc, registry_pb2
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import onnx_header, onnx_identity, upload

R = registry_pb2


def lineage_states(stub) -> list[list[tuple[str, int, bool]]]:
    """(dataset, version, deleted) of the lineage of clf v1 as each read answers it."""
    ref = common_pb2.VersionRef(model="clf", version=1)
    reads = [
        stub.GetVersion(R.GetVersionRequest(ref=ref)).lineage,
        stub.ListVersions(R.ListVersionsRequest(model="clf")).versions[0].lineage,
        stub.GetLineage(R.GetLineageRequest(ref=ref)).version.lineage,
    ]
    return [[(d.name, d.version, d.deleted) for d in lineage.datasets] for lineage in reads]


@pytest.mark.parametrize("whole_dataset", [True, False])
def test_a_force_deleted_dataset_version_reads_as_deleted(stub, channel, whole_dataset):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    upload_dataset(ds, "clips", npz_bytes(10))
    upload_dataset(ds, "clips", npz_bytes(12))
    upload_dataset(ds, "labels", npz_bytes(8))
    data = onnx_identity()
    lineage = R.Lineage(
        datasets=[R.DatasetLineage(name="clips", version=1), R.DatasetLineage(name="labels", version=1)]
    )
    upload(stub, onnx_header("clf", data, lineage=lineage), data)
    assert lineage_states(stub) == [[("clips", 1, False), ("labels", 1, False)]] * 3

    ds.DeleteDataset(
        datasets_pb2.DeleteDatasetRequest(name="clips", version=0 if whole_dataset else 1, force=True)
    )
    assert lineage_states(stub) == [[("clips", 1, True), ("labels", 1, False)]] * 3
