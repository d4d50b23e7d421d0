"""A replica serves a version with the serving config its primary saved (LoadModel save_config),
loaded before the save or after, and saves none itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from serving_models import linear_model, upload
from test_replicas import Cluster, assert_serving, eventually, scale_served

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc

TUNED = inference_pb2.ServingConfig(max_batch_size=4, instances=1, max_queue_size=2)


@pytest.fixture
def cluster(spawn_daemon: Callable[..., Any], tmp_path: Path) -> Iterator[Cluster]:
    """A primary with versions 1 and 2 of "linear" and one replica."""
    running = Cluster(spawn_daemon, tmp_path)
    primary = running.start_primary()
    with grpc.insecure_channel(primary) as channel:
        upload(channel, "linear", linear_model(1.0))
        upload(channel, "linear", linear_model(2.0))
    replica = running.channel(running.start_replica(primary))
    eventually(lambda: assert_serving(replica))
    yield running
    running.close()


def _load(channel: grpc.Channel, version: int, save: bool) -> None:
    inference_pb2_grpc.InferenceStub(channel).LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model="linear", version=version), config=TUNED, save_config=save
        ),
        timeout=60,
    )


def _running(channel: grpc.Channel, version: int) -> tuple[int, int, int]:
    listed = inference_pb2_grpc.InferenceStub(channel).ListLoaded(
        inference_pb2.ListLoadedRequest(model="linear")
    )
    (entry,) = [
        m for m in listed.models if m.version == version and m.state == inference_pb2.LOAD_STATE_READY
    ]
    return entry.config.max_batch_size, entry.config.instances, entry.config.max_queue_size


def test_a_replica_loads_and_swaps_to_the_config_its_primary_saved(cluster: Cluster) -> None:
    primary = cluster.channel(f"127.0.0.1:{cluster.primary_port}")
    replica = cluster.channel(cluster.replica_addresses[0])
    assert scale_served(replica, version=2) == 2.0  # loaded with the defaults before the save
    assert _running(replica, 2) == (32, 2, 1024)

    with pytest.raises(grpc.RpcError) as refused:
        _load(replica, 2, save=True)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "at the primary" in (refused.value.details() or "")

    _load(primary, 2, save=True)
    _load(primary, 1, save=True)
    # Version 2, loaded there, swaps to it; version 1 (not latest: fetched) loads with it, or
    # swaps to it should the feed bring its save after the load.
    eventually(lambda: _assert_running(replica, 2))
    assert scale_served(replica, version=1) == 1.0
    eventually(lambda: _assert_running(replica, 1))


def _assert_running(channel: grpc.Channel, version: int) -> None:
    assert _running(channel, version) == (4, 1, 2)
