"""A ListVersions page ends once its versions take about 3 MiB, whatever page_size asks for: a
version's params have no bound of their own, and a default page of five versions with 1 MiB of
params each was over gRPC's default receive limit (4 MiB), so no client with default settings
could list the model at all."""

from __future__ import annotations

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import onnx_header, onnx_identity

R = registry_pb2
RECEIVE_LIMIT = 4 * 2**20


def test_a_page_of_versions_stays_under_the_default_receive_limit(stub):
    graph = onnx_identity()
    for i in range(5):
        # About 1 MiB of params a version, in values of the longest length a param may have.
        params = {f"note{j}": str(i) * 6000 for j in range(175)}
        header = onnx_header("m", graph, create_model=True, params=params)
        stub.UploadVersionInline(R.UploadVersionInlineRequest(header=header, artifact=graph), timeout=60)
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListVersions(R.ListVersionsRequest(model="m", page_token=token), timeout=60)
        assert 0 < page.ByteSize() < RECEIVE_LIMIT
        seen += [v.version for v in page.versions]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1] and pages > 1
    one = stub.ListVersions(R.ListVersionsRequest(model="m", page_size=1))
    assert [v.version for v in one.versions] == [5] and one.next_page_token
