"""`version=` reads the same in every SDK method that takes it, on both clients: an int is a
version number, a str an alias; a call whose RPC takes a number alone says so (ValueError)
before anything is sent, instead of a bare TypeError from comparing an int with a str."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import tessera
import tessera.aio

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture
def served(client, make_onnx):
    client.models.push("affine", make_onnx("v1", scale=2.0, bias=1.0))
    client.models.push("affine", make_onnx("v2", scale=3.0, bias=0.0), set_alias="production")
    client.inference.load("affine", 1)
    client.inference.load("affine", "production")
    return "affine"


def test_a_version_given_as_an_alias_selects_it_in_every_method_that_selects_a_version(
    client, served, tmp_path
):
    assert client.inference.predict("affine", X, version="production").version == 2
    np.testing.assert_allclose(client.inference.predict("affine", X, version="production")["output"], X * 3)
    assert [p.version for p in client.inference.predict_stream("affine", [X, X], version="production")] == [
        2,
        2,
    ]
    with pytest.raises(
        tessera.TesseraError
    ):  # the daemon's answer: an ONNX version has no torch one to explain
        client.inference.explain("affine", X, version="production")
    assert client.models.version("affine", "production").version == 2
    assert client.models.lineage("affine", "production").version.version == 2
    assert client.models.download("affine", tmp_path / "m.onnx", "production").version == 2
    assert [s.version for s in client.inference.stats("affine", "production")] == [2]
    assert [s.version for s in client.inference.cluster_stats("affine", "production").stats] == [2]
    assert client.models.compare("affine", 1, "production").b.version == 2
    with pytest.raises(tessera.TesseraError):  # the daemon's answer: an ONNX version is exported already
        client.models.export_onnx("affine", version="production")
    deployment = client.models.deploy("affine", {"production": 100}, shadow=1)
    assert [(r.alias, r.weight) for r in deployment.routes] == [("production", 100)]
    assert [m.version for m in client.inference.unload("affine", "production")] == [2]
    assert client.inference.load("affine", version="production").version == 2


def test_version_and_alias_together_are_refused_before_a_call(client, served):
    with pytest.raises(ValueError, match="version or alias, not both"):
        client.inference.predict("affine", X, version="production", alias="production")


def test_a_call_that_takes_a_number_alone_refuses_an_alias_saying_how_to_read_its_number(client, served):
    with pytest.raises(ValueError, match=r"client\.models\.alias\('affine', 'production'\)\.version"):
        client.models.delete_version("affine", "production")
    with pytest.raises(ValueError, match=r"client\.models\.alias\('affine', 'production'\)\.version"):
        client.models.set_alias("affine", "staging", "production")
    with pytest.raises(ValueError, match="expected_version"):
        client.models.set_alias("affine", "staging", 1, expected_version="production")
    assert len(list(client.models.versions("affine"))) == 2


def test_the_asyncio_client_reads_version_the_same_way(daemon, served):
    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as client:
            assert (await client.inference.predict("affine", X, version="production")).version == 2
            got = [
                p.version async for p in client.inference.predict_stream("affine", [X], version="production")
            ]
            assert got == [2]
            with pytest.raises(ValueError, match=r"client\.models\.alias"):
                await client.models.delete_version("affine", "production")

    asyncio.run(scenario())
