"""A replica serves any version the primary has, not only those its change feed carries
(latest, aliased, deployed): it fetches the others' records from the primary on demand, and
serves ensembles, whose members resolve the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from serving_models import W, linear_model, predict_request, to_array, upload
from test_replicas import Cluster, assert_serving, eventually, scale_served

import tessera
from tessera.v1 import inference_pb2_grpc, registry_pb2, registry_pb2_grpc

X = np.ones((2, 4), dtype=np.float32)


@pytest.fixture
def cluster(spawn_daemon: Callable[..., Any], tmp_path: Path) -> Iterator[Cluster]:
    """A primary with versions 1 and 2 of "linear" (no alias, no deployment) and one replica."""
    running = Cluster(spawn_daemon, tmp_path)
    primary = running.start_primary()
    with grpc.insecure_channel(primary) as channel:
        upload(channel, "linear", linear_model(1.0))
        upload(channel, "linear", linear_model(2.0))
    replica = running.channel(running.start_replica(primary))
    eventually(lambda: assert_serving(replica))
    yield running
    running.close()


def test_a_replica_serves_a_version_its_feed_does_not_carry(cluster: Cluster) -> None:
    replica = cluster.channel(cluster.replica_addresses[0])
    assert scale_served(replica) == 2.0  # latest
    assert scale_served(replica, version=1) == 1.0  # neither latest nor aliased: fetched
    assert scale_served(replica, version=1) == 1.0

    # A version neither has, and a model whose versions are all deleted, are told in the primary's
    # words (the replica said only "has no version 3" and "has no versions yet").
    # So is a model created with no version (the replica said it did not exist at the primary:
    # its creation sent no change).
    primary = cluster.channel(f"127.0.0.1:{cluster.primary_port}")
    registry_pb2_grpc.RegistryStub(primary).CreateModel(registry_pb2.CreateModelRequest(name="bare"))
    upload(primary, "empty", linear_model(1.0))
    registry_pb2_grpc.RegistryStub(primary).DeleteVersion(
        registry_pb2.DeleteVersionRequest(model="empty", version=1)
    )

    def refusal(channel: grpc.Channel, model: str, **target: object) -> tuple[grpc.StatusCode, str]:
        try:
            inference_pb2_grpc.InferenceStub(channel).Predict(predict_request(model, X, **target), timeout=30)
        except grpc.RpcError as refused:
            return refused.code(), refused.details()
        raise AssertionError(f"{model} {target} answered")

    no_version = (
        grpc.StatusCode.NOT_FOUND,
        "model 'linear' has no version 3 (the newest is 2; ListVersions lists them)",
    )
    assert refusal(primary, "linear", version=3) == no_version
    assert refusal(replica, "linear", version=3) == no_version
    no_versions = (
        grpc.StatusCode.NOT_FOUND,
        "model 'empty' has no versions yet; upload one with UploadVersion",
    )
    assert refusal(primary, "empty") == no_versions

    def told_at_the_replica() -> None:  # once the feed brought the delete
        assert refusal(replica, "empty") == no_versions

    eventually(told_at_the_replica)
    # The feed brings changes in commit order: the delete above came after "bare" was created.
    bare = (grpc.StatusCode.NOT_FOUND, "model 'bare' has no versions yet; upload one with UploadVersion")
    assert refusal(primary, "bare") == bare
    assert refusal(replica, "bare") == bare
    assert refusal(primary, "linaer") == (
        grpc.StatusCode.NOT_FOUND,
        "model 'linaer' does not exist; did you mean 'linear'? Or create it with CreateModel",
    )
    assert refusal(replica, "linaer") == (
        grpc.StatusCode.NOT_FOUND,
        f"model 'linaer' does not exist at the primary 127.0.0.1:{cluster.primary_port}; did you mean "
        "'linear'? Or create it there with CreateModel",
    )


def test_an_alias_not_set_is_told_at_a_replica_in_the_primary_s_words(cluster: Cluster) -> None:
    # The replica said only "has no alias": the primary names the aliases set and a near miss.
    primary = cluster.channel(f"127.0.0.1:{cluster.primary_port}")
    registry = registry_pb2_grpc.RegistryStub(primary)
    for alias, version in (("production", 1), ("staging", 2)):
        registry.SetAlias(registry_pb2.SetAliasRequest(model="linear", alias=alias, version=version))
    replica = cluster.channel(cluster.replica_addresses[0])
    assert eventually(lambda: scale_served(replica, alias="staging")) == 2.0  # the feed brought them
    refusals = []
    for channel in (primary, replica):
        with pytest.raises(grpc.RpcError) as refused:
            scale_served(channel, alias="prodution")
        refusals.append((refused.value.code(), refused.value.details()))
    told = (
        grpc.StatusCode.NOT_FOUND,
        "model 'linear' has no alias 'prodution'; it has 'production', 'staging'; did you mean "
        "'production'? Or set it with SetAlias",
    )
    assert refusals == [told, told]


def test_an_ensemble_answers_at_a_replica_as_at_the_primary(cluster: Cluster) -> None:
    primary_address = f"127.0.0.1:{cluster.primary_port}"
    with tessera.Client(primary_address, timeout=60) as client:
        client.models.register_ensemble("ens", ["linear:1", "linear:2"], "mean")
    replica = cluster.channel(cluster.replica_addresses[0])

    def ensemble_answer(channel: grpc.Channel) -> np.ndarray:
        response = inference_pb2_grpc.InferenceStub(channel).Predict(predict_request("ens", X), timeout=60)
        return to_array(response.outputs[0])

    expected = ensemble_answer(cluster.channel(primary_address))
    answered = eventually(lambda: ensemble_answer(replica))  # once the feed brought "ens"
    np.testing.assert_allclose(answered, expected, rtol=1e-6)
    np.testing.assert_allclose(answered, 1.5 * (X @ W), rtol=1e-5)  # the mean of scales 1 and 2


def test_a_version_fetched_while_the_primary_is_away_is_unavailable_naming_it(cluster: Cluster) -> None:
    replica = cluster.channel(cluster.replica_addresses[0])
    primary_address = f"127.0.0.1:{cluster.primary_port}"
    assert scale_served(replica) == 2.0  # loaded (its artifact cached) while the primary is up
    cluster.primary.kill()
    assert scale_served(replica) == 2.0
    with pytest.raises(grpc.RpcError) as refused:
        scale_served(replica, version=1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"from the primary {primary_address}" in refused.value.details()

    cluster.start_primary()  # same data directory and port
    assert eventually(lambda: scale_served(replica, version=1)) == 1.0
