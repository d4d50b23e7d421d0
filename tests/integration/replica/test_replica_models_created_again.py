"""A model deleted and created again at the primary, numbered as before, in commits its change
feed gives as one change (here: made while the primary was down, as after a crash between commit
and record): a replica serves the new model, and keeps none of the old one's trace settings."""

from __future__ import annotations

import socket
from pathlib import Path

from serving_models import linear_model, upload
from test_replicas import assert_serving, eventually, scale_served
from test_serving_oip_trace import request_of, settings_of

from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.registry import Registry
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store
from tests.conftest import InProcessDaemon, daemon_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _made_again_offline(data_dir: Path, scale: float) -> None:
    """Model "linear" deleted and created again with one version, as a registry writes it."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        blobs = BlobStore(data_dir / "blobs")
        registry = Registry(store, blobs, max_artifact_size=1 << 30, deployment_history=100)
        registry.delete_model("linear")
        registry.register_version(
            "linear", format="onnx", blob=blobs.put_bytes(linear_model(scale)), create_model_if_missing=True
        )
        registry.close()
    finally:
        store.close()


def test_a_replica_serves_a_model_created_again_in_one_change(tmp_path: Path) -> None:
    primary_dir = tmp_path / "primary"
    primary_settings = daemon_settings(primary_dir, listen=f"127.0.0.1:{_free_port()}")
    primary = InProcessDaemon(primary_settings).start()
    replica = InProcessDaemon(
        daemon_settings(
            tmp_path / "replica",
            **{"replica.primary": primary.target, "serving.trace_file": str(tmp_path / "trace.json")},
        )
    )
    try:
        upload(primary.channel(), "linear", linear_model(1.0))
        replica.start()
        channel = replica.channel()
        eventually(lambda: assert_serving(channel))
        assert scale_served(channel) == 1.0
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        global_settings = settings_of(oip.TraceSetting(oip_pb.TraceSettingRequest()))
        oip.TraceSetting(request_of("linear", trace_level="TIMESTAMPS", trace_rate="7"))

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
