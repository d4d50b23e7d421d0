"""client.inference against a real daemon, on small ONNX models."""

from __future__ import annotations

import asyncio
import traceback

import grpc
import numpy as np
import pytest

import tessera
import tessera.aio
from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc


@pytest.fixture
def served(client, make_onnx):
    client.models.push("affine", make_onnx("v1", scale=2.0, bias=1.0))
    client.models.push("affine", make_onnx("v2", scale=3.0, bias=0.0), set_alias="production")
    client.inference.load("affine", 1, runtime="onnx", device="cpu", max_batch_size=4)
    client.inference.load("affine", "production")
    return "affine"


def test_load_reports_the_effective_config_and_signature(client, make_onnx):
    client.models.push("affine", make_onnx("m"))
    loaded = client.inference.load("affine", max_batch_size=4, warmup_runs=1)
    assert (loaded.model, loaded.version, loaded.config.max_batch_size) == ("affine", 1, 4)
    assert [t.name for t in loaded.signature.inputs] == ["input"]
    assert [(m.model, m.version) for m in client.inference.loaded("affine")] == [("affine", 1)]


def test_predict_takes_and_returns_numpy_by_version_alias_or_latest(client, served):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = client.inference.predict("affine", {"input": x}, version=1)
    assert first.version == 1 and first.outputs["output"].dtype == np.float32
    np.testing.assert_allclose(first["output"], x * 2 + 1)
    np.testing.assert_allclose(client.inference.predict("affine", x, alias="production")["output"], x * 3)
    assert client.inference.predict("affine", x).version == 2
    assert first.batch_rows >= 2 and first.compute_time_us >= 0


def test_mlflows_model_uris_name_the_version_and_the_daemon_says_the_form_to_others(client, served, daemon):
    """An MLflow user writes models:/NAME@ALIAS and models:/NAME/VERSION: the SDK reads them; a
    client that sends one as the model's name (here a raw stub) is told to split it."""
    x = np.ones((1, 4), np.float32)
    assert client.inference.predict("models:/affine/1", x).version == 1
    assert client.inference.predict("models:/affine@production", x).version == 2
    assert client.inference.predict("models:/affine", x).version == 2
    with pytest.raises(ValueError, match="names its version: pass version or alias, or neither"):
        client.inference.predict("models:/affine/1", x, alias="production")
    with pytest.raises(
        ValueError, match="stage 'Production' is an alias here; write models:/affine@production"
    ):
        client.inference.predict("models:/affine/Production", x)
    with pytest.raises(ValueError, match="write models:/NAME@ALIAS or models:/NAME/VERSION"):
        client.inference.predict("models:/affine/0", x)  # versions count from 1
    request = inference_pb2.PredictRequest(target=common_pb2.VersionRef(model="models:/affine@production"))
    with grpc.insecure_channel(daemon.target) as channel, pytest.raises(grpc.RpcError) as refused:
        inference_pb2_grpc.InferenceStub(channel).Predict(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'models:/affine@production' is MLflow's model URI: give the model's name alone" in (
        refused.value.details() or ""
    )


def test_predict_errors_carry_the_daemon_message(client, served):
    with pytest.raises(tessera.InvalidArgument, match=r"input 'input'.*expects 4"):
        client.inference.predict("affine", {"input": np.zeros((1, 3), np.float32)}, version=1)
    with pytest.raises(tessera.InvalidArgument, match=r"float32|FLOAT32"):
        client.inference.predict("affine", {"input": np.zeros((1, 4), np.float64)}, version=1)
    with pytest.raises(tessera.NotFound):
        client.inference.predict("nope", {"input": np.zeros((1, 4), np.float32)})
    with pytest.raises(ValueError, match="dtype"):
        client.inference.predict("affine", {"input": np.array(["a"])})


def test_a_request_over_the_clients_message_limit_says_what_to_do(client, served):
    # gRPC's own words were "CLIENT: Sent message larger than max (71303201 vs. 67108864)".
    rows = np.ones((17 * 2**20 // 4 + 1, 4), np.float32)  # 68 MiB
    with pytest.raises(tessera.ResourceExhausted) as caught:
        client.inference.predict("affine", {"input": rows}, version=1)
    message = caught.value.message
    assert message.startswith("the request is 71,30") and "bytes, over the 67,108,864 bytes" in message
    assert "send fewer rows per call" in message and "CLIENT" not in message


def test_a_mistyped_model_name_is_answered_with_the_nearest_one_first(client, make_onnx):
    client.models.push("clips-cnn4d", make_onnx("m"))
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(tessera.NotFound) as caught:
        client.inference.predict("clips-cnn4", {"input": x})
    assert caught.value.message == (
        "model 'clips-cnn4' does not exist; did you mean 'clips-cnn4d'? Or create it with "
        "`client.models.push(name, path)`"
    )
    with pytest.raises(
        tessera.NotFound, match=r"model 'clps-cnn4d' does not exist; did you mean 'clips-cnn4d'\?"
    ):
        client.models.get("clps-cnn4d")
    with pytest.raises(tessera.NotFound) as caught:
        client.inference.predict("zzz", {"input": x})
    assert (
        caught.value.message == "model 'zzz' does not exist; create it with `client.models.push(name, path)`"
    )
    assert caught.value.daemon_message == "model 'zzz' does not exist; create it with CreateModel"


def test_predict_stream_answers_each_item_and_goes_on_after_a_bad_one(client, served):
    good = np.ones((1, 4), np.float32)
    items = [("a", {"input": good}), ("bad", {"input": np.ones((1, 5), np.float32)}), ("c", good)]
    results = {p.request_id: p for p in client.inference.predict_stream("affine", items, version=1)}
    assert set(results) == {"a", "bad", "c"}
    np.testing.assert_allclose(results["a"]["output"], good * 2 + 1)
    assert results["a"].error is None and results["c"].error is None
    assert isinstance(results["bad"].error, tessera.InvalidArgument)
    assert results["bad"].outputs == {}


def test_stats_count_requests_and_reset(client, served):
    for _ in range(3):
        client.inference.predict("affine", np.ones((1, 4), np.float32), version=1)
    (stats,) = client.inference.stats("affine", 1, reset=True)
    assert stats.request_count == 3 and stats.total.count == 3
    assert 0 < stats.total.p50_us <= stats.total.p99_us <= stats.total.max_us * 1.01
    (after,) = client.inference.stats("affine", 1)
    assert after.request_count == 0
    assert {(s.model, s.version) for s in client.inference.stats()} == {("affine", 1), ("affine", 2)}
    # A version without a model was left out of the request: every loaded version's figures came
    # back as if they were that version's.
    for version in (1, "production"):
        refused = rf"version={version!r} picks a version of a model: give model too"
        with pytest.raises(ValueError, match=refused):
            client.inference.stats(version=version)
        with pytest.raises(ValueError, match=refused):
            client.inference.cluster_stats(version=version)


def test_unload_frees_versions(client, served):
    unloaded = client.inference.unload("affine", 1)
    assert [m.version for m in unloaded] == [1]
    assert [m.version for m in client.inference.loaded("affine")] == [2]
    assert [m.version for m in client.inference.unload("affine")] == [2]
    assert list(client.inference.loaded()) == []


def test_shadow_results_follow_a_deployment(client, served):
    client.models.deploy("affine", {1: 100}, shadow=2)
    client.inference.predict("affine", np.ones((1, 4), np.float32))
    results = client.inference.shadow_results("affine")
    assert all(r.primary_version == 1 and r.shadow_version == 2 for r in results)


def test_aio_predict_stream_and_stats(daemon, make_onnx):
    x = np.ones((2, 4), np.float32)

    async def scenario():
        async with tessera.aio.Client(daemon.target) as client:
            await client.models.push("affine", make_onnx("m"))
            await client.inference.load("affine")
            one = await client.inference.predict("affine", {"input": x})
            many = [p async for p in client.inference.predict_stream("affine", [x, x, x])]
            stats = await client.inference.stats("affine")
            loaded = await client.inference.loaded()
            unloaded = await client.inference.unload("affine")
            return one, many, stats, loaded, unloaded

    one, many, stats, loaded, unloaded = asyncio.run(scenario())
    np.testing.assert_allclose(one["output"], x * 2 + 1)
    assert sorted(p.request_id for p in many) == ["0", "1", "2"]
    assert stats[0].request_count == 4
    assert len(loaded) == len(unloaded) == 1


def test_a_failed_stream_item_raises_its_own_error_when_indexed_and_says_it_has_no_output(client, served):
    good = np.ones((1, 4), np.float32)
    items = [("a", {"input": good}), ("bad", {"input": np.ones((1, 5), np.float32)})]
    results = {p.request_id: p for p in client.inference.predict_stream("affine", items, version=1)}
    assert "output" in results["a"] and list(results["a"].keys()) == ["output"] == list(results["a"])
    assert "output" not in results["bad"] and list(results["bad"]) == []
    with pytest.raises(tessera.InvalidArgument, match=r"input 'input'.*expects 4") as caught:
        results["bad"]["output"]
    assert caught.value is results["bad"].error
    with pytest.raises(KeyError, match=r"'nope'.*outputs are \['output'\]"):
        results["a"]["nope"]


def test_indexing_a_failed_stream_item_again_and_again_raises_it_as_new(client, served):
    items = [("bad", {"input": np.ones((1, 5), np.float32)})]
    (failed,) = client.inference.predict_stream("affine", items, version=1)
    tracebacks = []
    for _ in range(100):
        try:
            raise RuntimeError("being handled")
        except RuntimeError:
            with pytest.raises(tessera.InvalidArgument) as caught:
                failed["output"]
        tracebacks.append(len(traceback.extract_tb(caught.value.__traceback__)))
        # Whatever the caller was handling is no cause of it.
        assert caught.value.__suppress_context__ and caught.value.__cause__ is None
    assert tracebacks == tracebacks[:1] * 100


def test_save_config_keeps_a_versions_config_for_later_loads_sync_and_aio(daemon, client, make_onnx):
    client.models.push("affine", make_onnx("m"))
    client.inference.load("affine", max_batch_size=4, instances=1, save_config=True)
    client.inference.unload("affine")
    client.inference.predict("affine", {"input": np.ones((2, 4), np.float32)})
    (loaded,) = client.inference.loaded("affine")
    assert (loaded.config.max_batch_size, loaded.config.instances) == (4, 1)

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            await aio_client.inference.load("affine", max_batch_size=8, save_config=True)
            await aio_client.inference.unload("affine")
            await aio_client.inference.predict("affine", {"input": np.ones((2, 4), np.float32)})
            return await aio_client.inference.loaded("affine")

    (loaded,) = asyncio.run(scenario())
    # The second save replaced the first: instances is the default again.
    assert (loaded.config.max_batch_size, loaded.config.instances) == (8, 2)
