"""predict's inputs as a notebook writes them: a plain list is sent as numpy makes it (float64),
and where the version named by number refuses that dtype, sent again once as the dtype its
signature gives the input; an array of another dtype is refused with the cast to make."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from onnx import TensorProto

import tessera
import tessera.aio

ROWS = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


@pytest.fixture
def served(client, make_onnx):
    client.models.push("affine", make_onnx("v1", scale=2.0, bias=1.0))
    client.models.push("affine", make_onnx("v2", scale=3.0, bias=0.0), set_alias="production")
    client.inference.load("affine", 1)
    client.inference.load("affine", "production")
    return "affine"


def test_a_list_is_sent_again_as_the_dtype_of_the_numbered_version_s_input(client, served):
    expected = np.array(ROWS, np.float32)
    np.testing.assert_allclose(
        client.inference.predict("affine", ROWS, version=1)["output"], expected * 2 + 1
    )
    again = client.inference.predict("affine", {"input": ROWS}, version=1)
    np.testing.assert_allclose(again["output"], expected * 2 + 1)


def test_a_list_refused_by_an_alias_s_version_is_refused_in_the_daemon_s_words(client, served):
    # Which version an alias or the deployment routed to, only the daemon's message says.
    for selector in ({"alias": "production"}, {}):
        with pytest.raises(
            tessera.InvalidArgument, match=r"has dtype float64; model 'affine' version 2 expects float32$"
        ):
            client.inference.predict("affine", ROWS, **selector)


def test_a_list_is_sent_as_numpy_makes_it_to_the_version_the_deployment_routes_to(client, make_onnx):
    client.models.push("mixed", make_onnx("f64", scale=2.0, bias=1.0, elem_type=TensorProto.DOUBLE))
    client.models.push("mixed", make_onnx("f32", scale=3.0, bias=0.0))
    client.inference.load("mixed", 1)
    client.models.deploy("mixed", {1: 100})
    prediction = client.inference.predict("mixed", ROWS)
    assert prediction.version == 1
    np.testing.assert_allclose(prediction["output"], np.array(ROWS) * 2 + 1)


def test_nan_and_inf_in_a_list_are_sent_as_the_float_dtype_of_the_input(client, served):
    rows = [[np.nan, np.inf, -np.inf, 1.0]]
    output = client.inference.predict("affine", rows, version=1)["output"]
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, np.array([[np.nan, np.inf, -np.inf, 3.0]], np.float32))
    with pytest.raises(
        tessera.InvalidArgument, match=r"version 1 expects float32; input 'input'.*cannot hold"
    ):
        client.inference.predict("affine", [[1e300, 0.0, 0.0, 0.0]], version=1)


def test_a_list_the_input_s_dtype_cannot_hold_is_refused_before_a_call(client, served):
    with pytest.raises(ValueError, match=r"input 'input'.*float32"):
        client.inference.predict("affine", [["a", "b", "c", "d"]], version=1)


def test_an_array_of_another_dtype_is_refused_with_the_cast_to_make(client, served):
    with pytest.raises(tessera.InvalidArgument, match=r"float64.*\.astype\(np\.float32\)"):
        client.inference.predict("affine", np.array(ROWS), version=1)


def test_the_asyncio_client_sends_a_list_as_the_input_s_dtype(daemon, served):
    async def scenario() -> np.ndarray:
        async with tessera.aio.Client(daemon.target) as client:
            with pytest.raises(tessera.InvalidArgument, match=r"\.astype\(np\.float32\)"):
                await client.inference.predict("affine", np.array(ROWS), version=1)
            return (await client.inference.predict("affine", ROWS, version=2))["output"]

    np.testing.assert_allclose(asyncio.run(scenario()), np.array(ROWS, np.float32) * 3)
