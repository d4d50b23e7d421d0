"""A model holds at most 1,000 aliases: GetModel answers all of them (GetVersion those on the
version), and about 30,000 of 128 characters took an answer past gRPC's 4 MiB, after which no
client could read the model. ListAliases pages. A store from before the cap stays readable."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.registry.records import ALIAS_KIND, SCHEMA
from tesserad.registry.tables import ALIASES
from tesserad.server import STORE_TABLES
from tesserad.store import Store, encode_record
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)

R = registry_pb2

CAP = 1000
ANSWER_LIMIT = 4 * 2**20
# The longest params a version takes (2 MiB, counting 11 bytes a param), the most metrics (512
# KiB, counting 19 bytes a metric), and the longest text (16 KiB), half of it in as many tags as
# fit, which take the most bytes on the wire.
PARAMS = {f"p{j:03}": "x" * 6000 for j in range(348)}
METRICS = {
    "".join(key): 0.5
    for key in itertools.islice(itertools.product(map(chr, range(33, 127)), repeat=3), 2**19 // 22)
}
DESCRIPTION = "d" * (8 * 2**10)
TAGS = {
    "".join(key): "" for key in itertools.islice(itertools.product(map(chr, range(33, 127)), repeat=2), 4096)
}


def long_alias(i: int) -> str:
    """An alias of the longest name there is, 128 characters."""
    return f"a{i:04}-".ljust(128, "x")


def cap_message(held: int, alias: str) -> str:
    return (
        f"model 'm' has {held:,} aliases; a model holds at most 1,000, so that one answer can carry them "
        f"all. Delete aliases it no longer uses (DeleteAlias), or move one of them instead of adding {alias!r}"
    )


def list_all(stub: registry_pb2_grpc.RegistryStub, page_size: int = 0) -> list[R.Alias]:
    aliases: list[R.Alias] = []
    token = ""
    while True:
        page = stub.ListAliases(R.ListAliasesRequest(model="m", page_size=page_size, page_token=token))
        aliases += page.aliases
        token = page.next_page_token
        if not token:
            return aliases


@pytest.fixture
def two_versions(stub) -> None:
    at_every_cap = {"params": PARAMS, "metrics": METRICS, "description": DESCRIPTION, "tags": TAGS}
    for width, fields in ((4, at_every_cap), (5, {})):
        artifact = onnx_identity(width)
        upload(stub, onnx_header("m", artifact, **fields), artifact)


def test_a_model_at_the_cap_refuses_new_aliases_and_fits_every_answer(stub, two_versions, weights, data_dir):
    for i in range(CAP):
        stub.SetAlias(R.SetAliasRequest(model="m", alias=long_alias(i), version=1))

    # The answers that carry every alias, each read over the test's channel (4 MiB at most).
    model = stub.GetModel(R.GetModelRequest(name="m"))
    version = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=1)))
    page = stub.ListAliases(R.ListAliasesRequest(model="m", page_size=1000))
    # page_size 0, as a client from before ListAliases paged sends: every alias, "latest" too.
    whole = stub.ListAliases(R.ListAliasesRequest(model="m"))
    assert len(model.aliases) == CAP + 1 and len(version.aliases) == CAP and len(page.aliases) == CAP
    assert len(whole.aliases) == CAP + 1 and whole.aliases[-1].alias == "latest" and not whole.next_page_token
    assert len(version.params) == len(PARAMS) and len(version.metrics) == len(METRICS)
    assert len(version.tags) == len(TAGS)
    sizes = {
        "GetModel": model.ByteSize(),
        "GetVersion": version.ByteSize(),
        "ListAliases": page.ByteSize(),
        "ListAliases page_size 0": whole.ByteSize(),
    }
    print(f"answer bytes at {CAP} aliases of 128 characters, version 1 at every cap: {sizes}")
    assert all(size < ANSWER_LIMIT for size in sizes.values())
    # "latest" ends the listing, on the page after a full one.
    rest = stub.ListAliases(R.ListAliasesRequest(model="m", page_size=1000, page_token=page.next_page_token))
    assert [a.alias for a in rest.aliases] == ["latest"] and rest.next_page_token == ""

    trained = upload(stub, safetensors_header("m", weights), weights)
    before = stub.GetModel(R.GetModelRequest(name="m"))
    history = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m", page_size=1)).events
    blobs = stored_blobs(data_dir)
    error = rpc_error(stub.SetAlias, R.SetAliasRequest(model="m", alias="one-more", version=2))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == cap_message(CAP, "one-more")
    artifact = onnx_identity(6)
    error = rpc_error(upload, stub, onnx_header("m", artifact, alias="one-more"), artifact)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == cap_message(CAP, "one-more")
    # Refused before the export runs.
    export = R.ExportOnnxRequest(
        source=common_pb2.VersionRef(model="m", version=trained.version), alias="one-more"
    )
    error = rpc_error(stub.ExportOnnx, export)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == cap_message(CAP, "one-more")
    assert stored_blobs(data_dir) == blobs
    assert stub.GetModel(R.GetModelRequest(name="m")) == before
    assert stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m", page_size=1)).events == history

    # At the cap, an alias the model has still moves, and one deleted makes room.
    moved = stub.SetAlias(R.SetAliasRequest(model="m", alias=long_alias(0), version=2))
    assert moved.version == 2
    assert upload(stub, onnx_header("m", artifact, alias=long_alias(1)), artifact).aliases[0] == long_alias(1)
    stub.DeleteAlias(R.DeleteAliasRequest(model="m", alias=long_alias(2)))
    assert stub.SetAlias(R.SetAliasRequest(model="m", alias="one-more", version=2)).version == 2


def test_list_aliases_pages_through_every_alias(stub, two_versions):
    names = sorted(f"alias-{i:03}" for i in range(250))
    for name in names:
        stub.SetAlias(R.SetAliasRequest(model="m", alias=name, version=1))
    # page_size 0 (what a client from before ListAliases paged sends): all of them on one page.
    every = stub.ListAliases(R.ListAliasesRequest(model="m"))
    assert [a.alias for a in every.aliases] == [*names, "latest"] and every.next_page_token == ""
    first = stub.ListAliases(R.ListAliasesRequest(model="m", page_size=100))
    assert len(first.aliases) == 100 and first.next_page_token
    assert [a.alias for a in list_all(stub, page_size=7)] == [*names, "latest"]
    assert [a.alias for a in list_all(stub, page_size=250)] == [*names, "latest"]

    for request, words in (
        (R.ListAliasesRequest(model="m", page_size=-1), "page_size must be >= 0"),
        (
            R.ListAliasesRequest(model="m", page_token="not-a-token"),
            "page_token is not one this server issued",
        ),
    ):
        error = rpc_error(stub.ListAliases, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
    stub.CreateModel(R.CreateModelRequest(name="other"))
    foreign = R.ListAliasesRequest(model="other", page_token=first.next_page_token)
    error = rpc_error(stub.ListAliases, foreign)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "different query" in error.details()


def put_aliases(store_dir: Path, count: int) -> None:
    """Aliases of version 1 as a daemon from before the cap stored them, past the cap."""
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            for i in range(count):
                fields = {"version": 1, "updated_at": 0.0, "updated_by": "anonymous"}
                txn.put(ALIASES, ("m", long_alias(i)), encode_record(ALIAS_KIND, SCHEMA, fields))
    finally:
        store.close()


def test_a_store_over_the_cap_stays_readable_and_refuses_only_new_aliases(data_dir):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        artifact = onnx_identity()
        upload(registry_pb2_grpc.RegistryStub(first.channel()), onnx_header("m", artifact), artifact)
    finally:
        first.stop()
    put_aliases(data_dir / "store", CAP + 200)

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        assert len(stub.GetModel(R.GetModelRequest(name="m")).aliases) == CAP + 201
        assert len(list_all(stub, page_size=1000)) == CAP + 201
        error = rpc_error(stub.SetAlias, R.SetAliasRequest(model="m", alias="new", version=1))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == cap_message(CAP + 200, "new")
        assert stub.SetAlias(R.SetAliasRequest(model="m", alias=long_alias(5), version=1)).version == 1
        stub.DeleteAlias(R.DeleteAliasRequest(model="m", alias=long_alias(5)))
        assert len(list_all(stub)) == CAP + 200
    finally:
        second.stop()
