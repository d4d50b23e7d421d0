"""A model deleted and created again at the primary, in commits its change feed gives as one change
(here: made while the primary was down, as after a crash between commit and record; numbered as
before, as a tesserad from before version numbers went on across a delete made it), or in changes
compacted away before the replica read them: a replica serves the new model, and keeps none of the
old one's trace settings."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import grpc
from serving_models import delete_model_numbered_as_before, linear_model, upload
from test_replicas import assert_serving, eventually, scale_served
from test_serving_oip_trace import request_of, settings_of

from tessera.v1 import registry_pb2 as pb
from tessera.v1 import registry_pb2_grpc
from tesserad.config import Settings
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.registry import Registry
from tesserad.registry.tables import RETIRED_NUMBERS
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store
from tests.conftest import InProcessDaemon, daemon_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _made_again_offline(data_dir: Path, scale: float) -> None:
    """Model "linear" deleted and created again with one version, numbered as before (as a
    registry from before RETIRED_NUMBERS wrote it: its new version 1 is another artifact)."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        blobs = BlobStore(data_dir / "blobs")
        registry = Registry(store, blobs, max_artifact_size=1 << 30, deployment_history=100)
        registry.delete_model("linear")
        with store.write() as txn:
            txn.delete_range(RETIRED_NUMBERS, ())
        registry.register_version(
            "linear", format="onnx", blob=blobs.put_bytes(linear_model(scale)), create_model_if_missing=True
        )
        registry.close()
    finally:
        store.close()


def _primary_and_replica(
    tmp_path: Path, **primary_options: Any
) -> tuple[Settings, InProcessDaemon, InProcessDaemon]:
    """The primary's settings (a fixed port, to start it again at the address the replica
    follows), the primary started, and its replica, not started, writing traces."""
    primary_settings = daemon_settings(
        tmp_path / "primary", listen=f"127.0.0.1:{_free_port()}", **primary_options
    )
    primary = InProcessDaemon(primary_settings).start()
    replica = InProcessDaemon(
        daemon_settings(
            tmp_path / "replica",
            **{"replica.primary": primary.target, "serving.trace_file": str(tmp_path / "trace.json")},
        )
    )
    return primary_settings, primary, replica


def _replica_serving_traced_linear(
    primary: InProcessDaemon, replica: InProcessDaemon
) -> tuple[grpc.Channel, grpc_service_pb2_grpc.GRPCInferenceServiceStub, dict[str, list[str]]]:
    """Linear (scale 1.0) uploaded at the primary, the replica started and serving it, with trace
    settings of linear's own: the replica's channel, its OIP stub and the global trace settings."""
    upload(primary.channel(), "linear", linear_model(1.0))
    replica.start()
    channel = replica.channel()
    eventually(lambda: assert_serving(channel))
    assert scale_served(channel) == 1.0
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    global_settings = settings_of(oip.TraceSetting(oip_pb.TraceSettingRequest()))
    oip.TraceSetting(request_of("linear", trace_level="TIMESTAMPS", trace_rate="7"))
    return channel, oip, global_settings


def test_a_replica_serves_a_model_created_again_in_one_change(tmp_path: Path) -> None:
    primary_dir = tmp_path / "primary"
    primary_settings, primary, replica = _primary_and_replica(tmp_path)
    try:
        channel, oip, global_settings = _replica_serving_traced_linear(primary, replica)

        primary.stop()
        _made_again_offline(primary_dir, 3.0)
        primary = InProcessDaemon(primary_settings).start()

        def serves_the_new_model() -> None:
            assert scale_served(channel) == 3.0
            assert settings_of(oip.TraceSetting(request_of("linear"))) == global_settings

        # The replica reconnects and resumes after the change it applied.
        eventually(serves_the_new_model)
    finally:
        replica.stop()
        primary.stop()


def _stored_changes(channel: grpc.Channel, from_seq: int) -> tuple[list[tuple[int, str, list[int]]], int]:
    """The changes stored from `from_seq` (seq, model, kinds), and the newest change's seq. A watch
    begins once the feed has recorded every commit before it: a commit after it is another change."""
    stream = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        pb.WatchChangesRequest(from_seq=from_seq), timeout=60
    )
    stored = []
    for response in stream:
        if response.HasField("caught_up"):
            stream.cancel()
            return stored, response.caught_up.seq
        change = response.change
        stored.append((change.seq, change.model, list(change.kinds)))
    raise AssertionError("the watch ended before it caught up")


def test_a_replica_serves_a_model_created_again_in_changes_compacted_away(tmp_path: Path) -> None:
    """The replica has change 1 (linear created); while it cannot reach the primary, linear is
    deleted (2), created again (3), aliased (4), and two other models are created (5, 6). With a
    history of 2 the feed from seq 2 holds only linear's alias change, whose kinds say nothing of
    the deletion and creation: the replica must tell the new model by its state."""
    primary_dir = tmp_path / "primary"
    history = {"replica.change_history": 2}
    primary_settings, primary, replica = _primary_and_replica(tmp_path, **history)
    try:
        channel, oip, global_settings = _replica_serving_traced_linear(primary, replica)

        primary.stop()
        # The same registry at an address the replica does not follow: it reads none of these
        # changes until the primary is back.
        away = InProcessDaemon(daemon_settings(primary_dir, **history)).start()
        try:
            registry = registry_pb2_grpc.RegistryStub(away.channel())
            # Numbered as before: the new linear's v1 is another artifact than the one the
            # replica serves as v1.
            delete_model_numbered_as_before(away, "linear")
            assert _stored_changes(away.channel(), 0)[1] == 2
            assert upload(away.channel(), "linear", linear_model(3.0)) == 1
            assert _stored_changes(away.channel(), 0)[1] == 3
            registry.SetAlias(pb.SetAliasRequest(model="linear", alias="prod", version=1))
            assert _stored_changes(away.channel(), 0)[1] == 4
            upload(away.channel(), "first", linear_model(5.0))
            assert _stored_changes(away.channel(), 0)[1] == 5
            upload(away.channel(), "second", linear_model(6.0))
            created = [pb.CHANGE_KIND_MODEL_CREATED, pb.CHANGE_KIND_VERSION_REGISTERED]
            assert _stored_changes(away.channel(), 2) == (
                [(4, "linear", [pb.CHANGE_KIND_ALIAS_MOVED]), (5, "first", created), (6, "second", created)],
                6,
            )
        finally:
            away.stop()
        primary = InProcessDaemon(primary_settings).start()

        def serves_the_new_model() -> None:
            assert scale_served(channel) == 3.0
            assert scale_served(channel, alias="prod") == 3.0
            assert settings_of(oip.TraceSetting(request_of("linear"))) == global_settings

        # The replica reconnects and resumes after change 1.
        eventually(serves_the_new_model)
    finally:
        replica.stop()
        primary.stop()
