"""predict's inputs as a notebook writes them: a plain list (float64 to numpy) is sent as the
dtype the model's signature gives the input, and an array of another dtype is refused with the
cast to make."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

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


def test_a_list_is_sent_as_the_dtype_of_the_model_s_input(client, served):
    expected = np.array(ROWS, np.float32)
    np.testing.assert_allclose(
        client.inference.predict("affine", ROWS, version=1)["output"], expected * 2 + 1
    )
    again = client.inference.predict("affine", {"input": ROWS}, version=1)
    np.testing.assert_allclose(again["output"], expected * 2 + 1)
    np.testing.assert_allclose(
        client.inference.predict("affine", ROWS, alias="production")["output"], expected * 3
    )
    assert client.inference.predict("affine", ROWS).version == 2


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
            return (await client.inference.predict("affine", ROWS, version="production"))["output"]

    np.testing.assert_allclose(asyncio.run(scenario()), np.array(ROWS, np.float32) * 3)
