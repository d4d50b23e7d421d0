"""Ensembles: versions whose artifact names member versions and how their outputs combine,
registered, aliased, deployed and served (Predict and the Open Inference Protocol) like any."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from serving_models import _upload, half_model, linear_model, one_row_linear_model, upload

import tessera
from tessera.ensembles import ensemble_spec, fit_stacking
from tessera.v1 import inference_pb2, registry_pb2
from tesserad.oip import grpc_service_pb2 as oip_pb

X = np.arange(8, dtype=np.float32).reshape(2, 4) - 3


@pytest.fixture
def client(daemon) -> Iterator[tessera.Client]:
    with tessera.Client(daemon.target, timeout=60) as sdk:
        yield sdk


@pytest.fixture
def members(channel: grpc.Channel) -> list[str]:
    """Three one-version models y = x @ (W * scale), scales 1, 2 and -1 (which votes otherwise)."""
    for name, scale in (("a", 1.0), ("b", 2.0), ("c", -1.0)):
        upload(channel, name, linear_model(scale))
    return ["a:1", "b:1", "c:1"]


def answers(client: tessera.Client, names: list[str], x: np.ndarray = X) -> list[np.ndarray]:
    return [client.inference.predict(name.split(":")[0], {"x": x}, version=1)["y"] for name in names]


def test_mean_of_three_members(client, members) -> None:
    version = client.models.register_ensemble("ens", members, "mean", description="three linears")
    assert version.format == registry_pb2.ARTIFACT_FORMAT_ENSEMBLE
    assert version.signature == client.models.version("a", 1).signature
    prediction = client.inference.predict("ens", {"x": X})
    assert prediction.version == 1
    np.testing.assert_allclose(prediction["y"], np.mean(answers(client, members), axis=0), rtol=1e-6)


def test_weighted_mean_and_vote(client, members) -> None:
    client.models.register_ensemble("weighted", members, "weighted_mean", weights=[3, 1, 0])
    client.models.register_ensemble("vote", members, "vote")
    ya, yb, yc = answers(client, members)
    weighted = client.inference.predict("weighted", {"x": X})["y"]
    np.testing.assert_allclose(weighted, (3 * ya + yb) / 4, rtol=1e-6)
    votes = client.inference.predict("vote", {"x": X})["y"]
    expected = (
        2 * np.eye(3)[ya.argmax(axis=1)] + np.eye(3)[yc.argmax(axis=1)]
    ) / 3  # a and b agree, c (negated) votes otherwise
    np.testing.assert_allclose(votes, expected, rtol=1e-6)
    assert (ya.argmax(axis=1) != yc.argmax(axis=1)).all()


def test_stacking_combiner_fitted_from_member_outputs(client, members) -> None:
    rng = np.random.default_rng(0)
    held_out = rng.standard_normal((64, 4)).astype(np.float32)
    ya, yb = answers(client, members[:2], held_out)
    target = 3 * ya - yb + 1  # a linear combination: the combiner can fit it exactly
    combiner = fit_stacking([ya, yb], target, ridge=1e-9)
    client.models.register_ensemble("stacked", members[:2], "stacking", stacking=combiner)
    ya, yb = answers(client, members[:2])
    np.testing.assert_allclose(
        client.inference.predict("stacked", {"x": X})["y"], 3 * ya - yb + 1, rtol=1e-4, atol=1e-4
    )


def test_signature_mismatch_refused_naming_it(client, channel, members) -> None:
    upload(channel, "half", half_model())
    with pytest.raises(tessera.InvalidArgument) as raised:
        client.models.register_ensemble("ens", [members[0], "half:1"], "mean")
    message = str(raised.value)
    assert "half:1 differs from a:1" in message
    assert "input 'x': dtype float32 vs float16" in message
    with pytest.raises(tessera.NotFound):
        client.models.get("ens")  # nothing was recorded


def test_bad_specs_refused(client, members) -> None:
    client.models.register_ensemble("inner", members[:2])
    cases = [
        (["a:1", "nope:1"], "mean", {}, tessera.NotFound, "ensemble member nope:1 does not exist"),
        (["a:1", "b:9"], "mean", {}, tessera.NotFound, "ensemble member b:9 does not exist"),
        (["a:1", "inner:1"], "mean", {}, tessera.InvalidArgument, "inner:1 is itself an ensemble"),
        (["a:1", "a:1"], "mean", {}, tessera.InvalidArgument, "a:1 is listed twice"),
        # Over int64 it reached the store's key encoding as INTERNAL.
        (
            ["a:1", ("b", 2**63)],
            "mean",
            {},
            tessera.InvalidArgument,
            f"members[1].version must be a version number in 1..{2**63 - 1}, got {2**63}",
        ),
        (["a:1"], "mean", {}, tessera.InvalidArgument, "list of 2 to 32"),
        (members, "weighted_mean", {"weights": [1, 2]}, tessera.InvalidArgument, "2 value(s) for 3 members"),
        (
            members[:2],
            "stacking",
            {"stacking": {"weights": [[1.0] * 2] * 4, "bias": [0.0] * 2}},
            tessera.InvalidArgument,
            "has 3 on its last axis",
        ),
    ]
    for spec_members, combine, extra, error, text in cases:
        with pytest.raises(error) as raised:
            client.models.register_ensemble("ens", spec_members, combine, **extra)
        assert text in str(raised.value), (spec_members, combine, str(raised.value))
    with pytest.raises(tessera.NotFound):
        client.models.get("ens")


def test_unknown_combine_refused_by_the_daemon(channel, members) -> None:
    spec = ensemble_spec(members, "mean").replace(b'"mean"', b'"median"')
    header = registry_pb2.UploadVersionHeader(format=registry_pb2.ARTIFACT_FORMAT_ENSEMBLE)
    with pytest.raises(grpc.RpcError) as raised:
        _upload(channel, "ens", spec, header)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "combine must be one of mean, vote, weighted_mean, stacking, got 'median'" in raised.value.details()
    )


def test_a_member_of_a_loaded_ensemble_is_not_deleted(client, members) -> None:
    client.models.register_ensemble("ens", members)
    client.inference.load("ens", 1)
    with pytest.raises(tessera.FailedPrecondition) as raised:
        client.models.delete_version("b", 1)
    assert "version 1 of model 'b' is a member of ensemble version ens:1" in str(raised.value)
    client.inference.unload("b", 1)
    expected = np.mean(answers(client, members), axis=0)
    np.testing.assert_allclose(client.inference.predict("ens", {"x": X})["y"], expected, rtol=1e-6)
    client.inference.unload("ens", 1)
    client.models.delete_version("ens", 1)
    client.models.delete_version("b", 1)


def test_member_unloaded_is_loaded_again(client, members) -> None:
    client.models.register_ensemble("ens", members)
    client.inference.load("ens", 1)
    client.inference.unload("b", 1)
    expected = np.mean(answers(client, members), axis=0)  # loads b again on its own
    client.inference.unload("c", 1)
    np.testing.assert_allclose(client.inference.predict("ens", {"x": X})["y"], expected, rtol=1e-6)
    assert {(m.model, m.version) for m in client.inference.loaded()} >= {("ens", 1), ("c", 1)}


def test_stats_report_the_ensemble_and_its_members(client, members) -> None:
    client.models.register_ensemble("ens", members)
    for _ in range(3):
        client.inference.predict("ens", {"x": X})
    stats = {(s.model, s.version): s for s in client.inference.stats("ens")}
    assert set(stats) == {("ens", 1), ("a", 1), ("b", 1), ("c", 1)}
    assert stats[("ens", 1)].request_count == 3
    assert all(stats[(name, 1)].request_count == 3 for name in "abc")
    assert [s.model for s in client.inference.stats("ens", 1)] == ["ens", "a", "b", "c"]


def test_the_ensembles_warm_up_counts_in_no_members_figures(daemon, client, oip, members) -> None:
    # The ensemble's warm-up runs through its members' batchers, as its requests do (a 32-row
    # batch and two of 1 row per instance): as a version's own warm-up, in none of their figures.
    client.inference.load("a", 1)
    client.inference.predict("a", {"x": X})  # a serves before the ensemble loads and warms up
    client.models.register_ensemble("ens", members)
    client.inference.predict("ens", {"x": X})  # loads the ensemble, and b and c for it
    stats = {(s.model, s.version): s for s in client.inference.stats("ens")}
    page = urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics").read().decode()
    samples = [sample for family in text_string_to_metric_families(page) for sample in family.samples]

    def metric(name: str, **labels: str) -> float:
        (value,) = [s.value for s in samples if s.name == name and s.labels == {"version": "1", **labels}]
        return value

    for name, requests in (("a", 2), ("b", 1), ("c", 1)):
        member = stats[(name, 1)]
        assert (member.request_count, member.row_count, member.error_count) == (requests, 2 * requests, 0)
        assert [(b.rows, b.count) for b in member.batch_sizes] == [(2, requests)]
        assert (member.queue.count, member.compute.count, member.total.count) == (requests,) * 3
        triton = oip.ModelStatistics(oip_pb.ModelStatisticsRequest(name=name, version="1")).model_stats[0]
        assert (triton.inference_count, triton.execution_count) == (2 * requests, requests)
        assert triton.inference_stats.success.count == triton.inference_stats.compute_infer.count == requests
        assert [(b.batch_size, b.compute_infer.count) for b in triton.batch_stats] == [(2, requests)]
        assert metric("tessera_inference_requests_total", model=name, outcome="ok") == requests
        assert metric("tessera_inference_batch_rows_count", model=name) == requests
        assert metric("tessera_inference_latency_seconds_count", model=name, stage="compute") == requests
        assert metric("nv_inference_exec_count_total", model=name) == requests
        assert metric("nv_inference_request_success_total", model=name) == requests
    assert stats[("ens", 1)].request_count == 1


def test_the_ensembles_warm_up_feeds_no_members_cost_estimates(daemon, client, members) -> None:
    # Whether a member gathers requests into batches follows its cost per row in batches of one
    # row and of more, measured on its own batches: the ensemble's warm-up (a 32-row batch and
    # 1-row ones through each member) is not what its requests cost.
    client.models.register_ensemble("ens", members)
    client.inference.load("ens", 1)  # loads a, b and c for it, and warms up through them
    pool = daemon.daemon.inference.pool
    for name in "abc":
        batcher = pool.get(name, 1).batcher
        assert (batcher.costs.single_ns_per_row, batcher.costs.batched_ns_per_row) == (None, None)
    client.inference.predict("a", {"x": X}, version=1)
    assert pool.get("a", 1).batcher.costs.known(len(X))


def test_members_loaded_only_for_an_ensemble_whose_load_fails_are_unloaded(client, channel) -> None:
    # Its warm-up sends 32 rows at once through each member, which 'one' fails; 'a' was loaded
    # only for the ensemble, which requests do not load again, and would stay loaded for nothing.
    upload(channel, "a", linear_model(1.0))
    upload(channel, "one", one_row_linear_model())
    # No warm-up of its own, which would fail as the ensemble's does; with max_batch_size 1 the
    # ensemble's rows would reach it one at a time, and answer.
    client.inference.load("one", 1, max_batch_size=32, warmup_runs=0)
    client.models.register_ensemble("ens", ["a:1", "one:1"])
    with pytest.raises(tessera.FailedPrecondition, match="warm-up"):
        client.inference.load("ens", 1)
    assert {(m.model, m.state) for m in client.inference.loaded()} == {
        ("ens", inference_pb2.LOAD_STATE_FAILED),
        ("one", inference_pb2.LOAD_STATE_READY),
    }
    assert client.inference.predict("a", {"x": X}, version=1).version == 1  # a request loads it again


def test_served_through_the_open_inference_protocol(client, oip, members) -> None:
    client.models.register_ensemble("ens", members)
    request = oip_pb.ModelInferRequest(model_name="ens", id="r1")
    request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    request.raw_input_contents.append(X.tobytes())
    response = oip.ModelInfer(request)
    y = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(response.outputs[0].shape)
    np.testing.assert_allclose(y, np.mean(answers(client, members), axis=0), rtol=1e-6)
    assert oip.ModelMetadata(oip_pb.ModelMetadataRequest(name="ens")).platform == "ensemble"
    assert oip.ModelConfig(oip_pb.ModelConfigRequest(name="ens")).config.platform == "ensemble"
    # As Triton: the model named alone (tessera's own GetStats lists the members after it);
    # the members are answered when named, or with every loaded version when none is.
    stats = oip.ModelStatistics(oip_pb.ModelStatisticsRequest(name="ens")).model_stats
    assert [(s.name, s.version) for s in stats] == [("ens", "1")]
    stats = oip.ModelStatistics(oip_pb.ModelStatisticsRequest(name="ens", version="1")).model_stats
    assert [(s.name, s.version) for s in stats] == [("ens", "1")]
    stats = oip.ModelStatistics(oip_pb.ModelStatisticsRequest()).model_stats
    assert {s.name for s in stats} == {"ens", "a", "b", "c"}

    # Its config loads back with a field changed (tritonclient's get_model_config, load_model).
    config = oip.ModelConfig(oip_pb.ModelConfigRequest(name="ens")).config
    config.max_batch_size = 8
    load = oip_pb.RepositoryModelLoadRequest(model_name="ens")
    load.parameters["config"].string_param = json_format.MessageToJson(config)
    oip.RepositoryModelLoad(load)
    after = oip.ModelConfig(oip_pb.ModelConfigRequest(name="ens")).config
    assert (after.platform, after.max_batch_size, after.input, after.output) == (
        "ensemble",
        8,
        config.input,
        config.output,
    )
    # A plain version is no ensemble.
    load = oip_pb.RepositoryModelLoadRequest(model_name="a")
    load.parameters["config"].string_param = '{"platform": "ensemble"}'
    with pytest.raises(grpc.RpcError) as refused:
        oip.RepositoryModelLoad(load)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "config field 'platform' is 'ensemble', but a version 1 is not an ensemble" in refused.value.details()
    )

    # Triton's unload_dependents: the ensemble's members go with it, but for those another
    # loaded ensemble still uses; without it, only the model named.
    client.models.register_ensemble("pair", ["a:1", "b:1"])
    client.inference.load("pair", 1)
    unload = oip_pb.RepositoryModelUnloadRequest(model_name="ens")
    unload.parameters["unload_dependents"].bool_param = True
    oip.RepositoryModelUnload(unload)
    loaded = {(m.model, m.version) for m in client.inference.loaded()}
    assert loaded == {("pair", 1), ("a", 1), ("b", 1)}
    oip.RepositoryModelUnload(oip_pb.RepositoryModelUnloadRequest(model_name="pair"))
    assert {(m.model, m.version) for m in client.inference.loaded()} == {("a", 1), ("b", 1)}
    extensions = oip.ServerMetadata(oip_pb.ServerMetadataRequest()).extensions
    assert "model_repository(unload_dependents)" in extensions


def test_aliased_and_deployed_like_any_version(client, channel, members) -> None:
    upload(channel, "ens", linear_model(10.0))  # version 1: a plain model
    client.models.register_ensemble("ens", members, set_alias="production")  # version 2
    mean = np.mean(answers(client, members), axis=0)
    np.testing.assert_allclose(
        client.inference.predict("ens", {"x": X}, alias="production")["y"], mean, rtol=1e-6
    )
    client.models.set_alias("ens", "staging", 1)
    client.models.deploy("ens", {"staging": 50, 2: 50})
    served = {}
    for _ in range(4):
        prediction = client.inference.predict("ens", {"x": X})
        served[prediction.version] = prediction["y"]
    assert set(served) == {1, 2}
    np.testing.assert_allclose(served[2], mean, rtol=1e-6)
    with pytest.raises(tessera.FailedPrecondition) as raised:
        client.models.export_onnx("ens", 2)
    assert "is an ensemble; export each of its members instead" in str(raised.value)


def test_a_member_stays_loaded_when_its_alias_moves_on(client, channel, members) -> None:
    client.models.register_ensemble("ens", members)
    client.inference.load("ens", 1)
    upload(channel, "fence", linear_model(1.0))
    client.inference.predict("a", {"x": X})  # a:1 now also serves a's "latest"
    client.inference.predict("fence", {"x": X})
    upload(channel, "a", linear_model(3.0))  # "latest" of a moves to 2: a:1 would be unloaded
    upload(channel, "fence", linear_model(3.0))  # swapped after a (one swap at a time, in order)
    deadline = time.monotonic() + 120
    while ("fence", 2) not in (loaded := {(m.model, m.version) for m in client.inference.loaded()}):
        assert time.monotonic() < deadline, f"fence v2 was never swapped in: {loaded}"
        time.sleep(0.05)
    assert {("a", 1), ("a", 2), ("ens", 1)} <= loaded


def test_unload_dependents_keeps_the_members_loaded_as_themselves(client, oip, members) -> None:
    # As Triton's repository manager: a composing model goes with its ensemble only if it was
    # loaded for it alone; one loaded explicitly stays loaded, before or after the ensemble.
    client.inference.load("a", 1)
    client.models.register_ensemble("ens", members)
    client.inference.load("ens", 1)
    client.inference.load("b", 1)
    unload = oip_pb.RepositoryModelUnloadRequest(model_name="ens")
    unload.parameters["unload_dependents"].bool_param = True
    oip.RepositoryModelUnload(unload)
    assert {(m.model, m.version) for m in client.inference.loaded()} == {("a", 1), ("b", 1)}
