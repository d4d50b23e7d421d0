"""A ListVersions page ends once its versions take about 3 MiB, whatever page_size asks for: a
version's params have no bound of their own, and a default page of five versions with 1 MiB of
params each was over gRPC's default receive limit (4 MiB), so no client with default settings
could list the model at all."""

from __future__ import annotations

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tesserad.registry.records import ALIAS_KIND, SCHEMA
from tesserad.registry.tables import ALIASES
from tesserad.server import STORE_TABLES
from tesserad.store import Store, encode_record
from tests.conftest import InProcessDaemon, daemon_settings
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


def _add_aliases(data_dir, model: str, names: list[str]) -> None:
    """Point `names` at the model's versions in turn, through the store: more than a model takes
    now (1,000), as a daemon from before that cap stored them."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            for i, name in enumerate(names):
                fields = {"version": 1 + i % 2, "updated_at": 0.0, "updated_by": "test"}
                txn.put(ALIASES, (model, name), encode_record(ALIAS_KIND, SCHEMA, fields))
    finally:
        store.close()


def test_pages_of_models_and_versions_count_their_aliases(tmp_path):
    """A page's records as stored leave out their aliases, which a model (and each version they
    point at) answers with: about 1.3 MB of them took a page of about 3 MB of records past the
    default receive limit, so ListModels and ListVersions were unreadable to default clients."""
    settings = daemon_settings(tmp_path / "data")
    graph = onnx_identity()
    tags = {f"t{i}": "v" * 1000 for i in range(14)}
    daemon = InProcessDaemon(settings).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        for count in (330, 170):
            params = {f"note{j}": "p" * 6000 for j in range(count)}
            header = onnx_header("m000", graph, create_model=True, params=params)
            stub.UploadVersionInline(R.UploadVersionInlineRequest(header=header, artifact=graph), timeout=60)
        stub.UpdateModel(R.UpdateModelRequest(name="m000", set_tags=tags))
        for i in range(1, 230):
            stub.CreateModel(R.CreateModelRequest(name=f"m{i:03d}", tags=tags))
    finally:
        daemon.stop()
    aliases = [f"a{i:05d}" + "x" * 122 for i in range(10_000)]
    _add_aliases(tmp_path / "data", "m000", aliases)
    daemon = InProcessDaemon(settings).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        models, token = [], ""
        while True:
            page = stub.ListModels(R.ListModelsRequest(page_size=1000, page_token=token), timeout=60)
            assert 0 < page.ByteSize() < RECEIVE_LIMIT
            models += [m.name for m in page.models]
            token = page.next_page_token
            if not token:
                break
        assert models == [f"m{i:03d}" for i in range(230)]
        got = stub.GetModel(R.GetModelRequest(name="m000"))
        assert len(got.aliases) == len(aliases) + 1
        versions, token = [], ""
        while True:
            page = stub.ListVersions(R.ListVersionsRequest(model="m000", page_token=token), timeout=60)
            assert 0 < page.ByteSize() < RECEIVE_LIMIT
            versions += [(v.version, len(v.aliases)) for v in page.versions]
            token = page.next_page_token
            if not token:
                break
        assert versions == [(2, len(aliases) // 2 + 1), (1, len(aliases) // 2)]
    finally:
        daemon.stop()
