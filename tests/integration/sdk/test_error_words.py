"""The daemon's common refusals through the SDK: the fix each ends in is said in the SDK's words
(the call that does it, the argument that sets it), and `daemon_message` keeps the daemon's."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tessera
import tessera.aio


def test_a_missing_model_and_version_name_the_calls_that_make_and_list_them(client, onnx_file):
    with pytest.raises(tessera.NotFound) as caught:
        client.models.version("clips")
    assert (
        caught.value.message
        == "model 'clips' does not exist; create it with `client.models.push(name, path)`"
    )
    assert caught.value.daemon_message == "model 'clips' does not exist; create it with CreateModel"
    assert str(caught.value) == f"NOT_FOUND: {caught.value.message}"
    client.models.push("clips", onnx_file)
    with pytest.raises(tessera.NotFound) as caught:
        client.models.version("clips", 9)
    assert caught.value.message == (
        "model 'clips' has no version 9 (the newest is 1; `client.models.versions(name)` lists them)"
    )
    assert caught.value.daemon_message.endswith("(the newest is 1; ListVersions lists them)")


def test_a_name_the_user_gave_stays_as_given_where_it_reads_as_an_rpc(client):
    with pytest.raises(tessera.NotFound) as caught:
        client.training.run("ListRuns")
    assert caught.value.message == "run 'ListRuns' does not exist; `client.training.runs()` lists them"


def test_missing_datasets_and_runs_name_the_calls_that_make_and_list_them(client):
    with pytest.raises(tessera.NotFound) as caught:
        client.datasets.version("clips")
    assert (
        caught.value.message
        == "dataset 'clips' does not exist; upload it with `client.datasets.push(name, path)`"
    )
    with pytest.raises(
        tessera.NotFound,
        match=r"^NOT_FOUND: run 'nope' does not exist; `client\.training\.runs\(\)` lists them$",
    ):
        client.training.run("nope")


def test_stats_of_a_version_not_loaded_names_the_load_with_its_version(client, onnx_file):
    client.models.push("affine", onnx_file)
    with pytest.raises(tessera.NotFound) as caught:
        client.inference.stats("affine", 1)
    assert "; load it with `client.inference.load(model, 1)`, or by a " in caught.value.message
    assert "`client.inference.predict(model, inputs, version=1)`" in caught.value.message
    assert "LoadModel naming version 1" in caught.value.daemon_message


def test_a_dataset_in_use_names_the_calls_and_argument_that_free_it(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    pushed = client.datasets.push(
        "table", x=x, y=(x[:, 0] > 0).astype(np.int64), splits={"train": 0.75, "val": 0.25}
    )
    job = client.training.submit(
        {
            "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
            "task": "classification",
            "data": {"dataset": f"table:{pushed.version}", "train_split": "train", "val_split": "val"},
            "epochs": 100_000,
        }
    )
    try:
        with pytest.raises(tessera.FailedPrecondition) as caught:
            client.datasets.delete("table")
        assert caught.value.message.endswith(
            "; wait for the jobs to end or cancel them with `client.training.cancel(job_id)`, or pass "
            "`force=True` to delete it anyway"
        ), caught.value.message
        assert caught.value.daemon_message.endswith(
            "; wait for the jobs to end or cancel them with CancelJob, or pass force to delete it anyway"
        )
    finally:
        job.cancel()
        job.wait(check=False)


def test_the_asyncio_client_says_the_same_words(daemon):
    async def scenario() -> tessera.NotFound:
        async with tessera.aio.Client(daemon.target) as client:
            with pytest.raises(tessera.NotFound) as caught:
                await client.training.run("nope")
            return caught.value

    error = asyncio.run(scenario())
    assert error.message == "run 'nope' does not exist; `client.training.runs()` lists them"
    assert error.daemon_message == "run 'nope' does not exist; ListRuns lists them"


def test_output_names_a_model_author_chose_stay_as_given(client, tmp_path):
    # Outputs named as an argument (force) and an RPC (Deploy) the fix of other messages names.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["force"]), helper.make_node("Neg", ["input"], ["Deploy"])],
        "named",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("force", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("Deploy", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "named.onnx"))
    client.models.push("named", tmp_path / "named.onnx")
    with pytest.raises(tessera.InvalidArgument) as caught:
        client.inference.predict("named", np.zeros((1, 2), np.float32), outputs=["y"])
    assert caught.value.message == caught.value.daemon_message
    assert caught.value.message.endswith("; its outputs are force, Deploy")
