"""A version's saved serving config (LoadModel save_config): kept in the registry, used by every
load that does not set a field itself (requests', serving.preload, after a restart), overridden
field by field by an explicit LoadModel, and gone with its version."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from serving_models import linear_model, upload

from tessera.cli import main as tessera_main
from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.cli import main as tesserad_main
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.serving.runtimes import cuda_available
from tests.conftest import InProcessDaemon, daemon_settings

TUNED = inference_pb2.ServingConfig(max_batch_size=4, instances=1, max_queue_size=2)


def _load(
    channel: grpc.Channel, config: inference_pb2.ServingConfig, save: bool = False, version: int = 2
) -> inference_pb2.LoadedModel:
    return inference_pb2_grpc.InferenceStub(channel).LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model="linear", version=version), config=config, save_config=save
        ),
        timeout=60,
    )


def _running(channel: grpc.Channel, version: int = 2) -> tuple[int, int, int]:
    """(max_batch_size, instances, max_queue_size) version `version` is loaded with."""
    listed = inference_pb2_grpc.InferenceStub(channel).ListLoaded(
        inference_pb2.ListLoadedRequest(model="linear")
    )
    (entry,) = [m for m in listed.models if m.version == version]
    return entry.config.max_batch_size, entry.config.instances, entry.config.max_queue_size


def _unload(channel: grpc.Channel) -> None:
    inference_pb2_grpc.InferenceStub(channel).UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="linear"))
    )


def _predict_rows(channel: grpc.Channel, rows: int) -> grpc.StatusCode:
    """An OIP ModelInfer of `rows` rows of version 2 (loading it if needed); its status code."""
    request = oip_pb.ModelInferRequest(model_name="linear", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.ones((rows, 4), dtype=np.float32).tobytes())
    try:
        grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    except grpc.RpcError as refused:
        return refused.code()
    return grpc.StatusCode.OK


def _saved_configs(channel: grpc.Channel) -> dict[int, inference_pb2.ServingConfig]:
    """The saved configs of "linear" as the change feed's newest change of it carries them."""
    state = None
    for response in registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        registry_pb2.WatchChangesRequest(from_seq=0), timeout=30
    ):
        if response.HasField("caught_up"):
            break
        if response.change.model == "linear":
            state = response.change.state
    assert state is not None
    return dict(state.serving_configs)


def _registered(data_dir: Path) -> InProcessDaemon:
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    upload(daemon.channel(), "linear", linear_model(1.0))
    upload(daemon.channel(), "linear", linear_model(2.0))
    return daemon


def test_a_saved_config_serves_later_loads_and_survives_a_restart(tmp_path: Path) -> None:
    daemon = _registered(tmp_path)
    try:
        channel = daemon.channel()
        # A one-off load saves nothing: a request's load after it takes the defaults.
        _load(channel, TUNED)
        assert _running(channel) == (4, 1, 2)
        _unload(channel)
        assert _predict_rows(channel, 1) == grpc.StatusCode.OK
        assert _running(channel) == (32, 2, 1024)

        _load(channel, TUNED, save=True)
        assert _running(channel) == (4, 1, 2)
        _unload(channel)
        assert _predict_rows(channel, 6) == grpc.StatusCode.INVALID_ARGUMENT  # over max_batch_size 4
        assert _running(channel) == (4, 1, 2)
        assert _saved_configs(channel)[2].max_batch_size == 4
        assert 1 not in _saved_configs(channel)

        # An explicit field overrides the saved one for this load only.
        _load(channel, inference_pb2.ServingConfig(max_batch_size=8))
        assert _running(channel) == (8, 1, 2)
        assert _saved_configs(channel)[2].max_batch_size == 4
    finally:
        daemon.stop()

    daemon = InProcessDaemon(daemon_settings(tmp_path)).start()
    try:
        assert _predict_rows(daemon.channel(), 1) == grpc.StatusCode.OK
        assert _running(daemon.channel()) == (4, 1, 2)
    finally:
        daemon.stop()

    daemon = InProcessDaemon(daemon_settings(tmp_path, **{"serving.preload": "linear:2"})).start()
    try:
        assert _running(daemon.channel()) == (4, 1, 2)
        # The OIP model config reports what a load of the version runs with.
        _unload(daemon.channel())
        config = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel()).ModelConfig(
            oip_pb.ModelConfigRequest(name="linear", version="2")
        )
        assert config.config.max_batch_size == 4
    finally:
        daemon.stop()


def test_an_empty_saved_config_removes_it_and_a_refused_save_stores_nothing(tmp_path: Path) -> None:
    daemon = _registered(tmp_path)
    try:
        channel = daemon.channel()
        _load(channel, TUNED, save=True)
        with pytest.raises(grpc.RpcError) as refused:
            _load(channel, inference_pb2.ServingConfig(max_batch_size=2, instances=65), save=True)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "config.instances must be in 1..64" in (refused.value.details() or "")
        assert _saved_configs(channel)[2] == TUNED
        assert _running(channel) == (4, 1, 2)

        _load(channel, inference_pb2.ServingConfig(), save=True)
        assert _running(channel) == (32, 2, 1024)
        assert _saved_configs(channel) == {}
    finally:
        daemon.stop()


def test_deleting_a_version_deletes_its_saved_config(tmp_path: Path) -> None:
    daemon = _registered(tmp_path)
    try:
        channel = daemon.channel()
        _load(channel, TUNED, save=True, version=1)
        _load(channel, TUNED, save=True, version=2)
        assert sorted(_saved_configs(channel)) == [1, 2]
        _unload(channel)
        registry_pb2_grpc.RegistryStub(channel).DeleteVersion(
            registry_pb2.DeleteVersionRequest(model="linear", version=1)
        )
        assert sorted(_saved_configs(channel)) == [2]
    finally:
        daemon.stop()


def test_a_backup_restores_the_saved_configs(tmp_path: Path) -> None:
    daemon = _registered(tmp_path / "source")
    try:
        _load(daemon.channel(), TUNED, save=True)
        archive = tmp_path / "backup.tar"
        assert tessera_main(["--target", daemon.target, "admin", "backup", "-o", str(archive)]) == 0
    finally:
        daemon.stop()
    assert tesserad_main(["restore", str(archive), "--data-dir", str(tmp_path / "restored")]) == 0
    restored = InProcessDaemon(daemon_settings(tmp_path / "restored")).start()
    try:
        _load(restored.channel(), inference_pb2.ServingConfig())
        assert _running(restored.channel()) == (4, 1, 2)
    finally:
        restored.stop()


def _cached(channel: grpc.Channel) -> bool:
    """Whether version 2 is loaded with response_cache."""
    listed = inference_pb2_grpc.InferenceStub(channel).ListLoaded(
        inference_pb2.ListLoadedRequest(model="linear")
    )
    (entry,) = [m for m in listed.models if m.version == 2]
    return entry.config.response_cache


def test_an_explicit_response_cache_false_overrides_a_saved_true(tmp_path: Path) -> None:
    daemon = InProcessDaemon(daemon_settings(tmp_path, **{"serving.response_cache_size": 1 << 20})).start()
    try:
        channel = daemon.channel()
        upload(channel, "linear", linear_model(1.0))
        upload(channel, "linear", linear_model(2.0))
        _load(channel, inference_pb2.ServingConfig(response_cache=True), save=True)
        assert _cached(channel)
        _load(channel, inference_pb2.ServingConfig(response_cache=False))
        assert not _cached(channel)
        assert _saved_configs(channel)[2].response_cache
        # Left unset, a load takes the saved True again.
        _load(channel, inference_pb2.ServingConfig())
        assert _cached(channel)
    finally:
        daemon.stop()


def test_a_saved_response_cache_a_daemon_has_none_for_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = InProcessDaemon(daemon_settings(tmp_path, **{"serving.response_cache_size": 1 << 20})).start()
    try:
        upload(daemon.channel(), "linear", linear_model(1.0))
        upload(daemon.channel(), "linear", linear_model(2.0))
        _load(daemon.channel(), inference_pb2.ServingConfig(response_cache=True, max_batch_size=4), save=True)
    finally:
        daemon.stop()
    daemon = InProcessDaemon(daemon_settings(tmp_path)).start()
    try:
        channel = daemon.channel()
        with caplog.at_level("WARNING", logger="tesserad.serving.pool"):
            assert _predict_rows(channel, 1) == grpc.StatusCode.OK
            assert not _cached(channel)
            assert _running(channel)[0] == 4  # the fields it can run are kept
            _unload(channel)
            config = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
                oip_pb.ModelConfigRequest(name="linear", version="2")
            )
            assert not config.config.response_cache.enable
            _load(channel, inference_pb2.ServingConfig())
        warnings = [r for r in caplog.records if "response_cache" in r.getMessage()]
        assert len(warnings) == 1
        # Asked for explicitly, it is refused as before.
        with pytest.raises(grpc.RpcError) as refused:
            _load(channel, inference_pb2.ServingConfig(response_cache=True))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        daemon.stop()


@pytest.mark.skipif(cuda_available(), reason="this daemon has the GPU the saved device names")
def test_a_saved_device_a_daemon_lacks_runs_on_its_default_device_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = _registered(tmp_path)
    try:
        channel = daemon.channel()
        # What a GPU primary's `tessera load linear --version 2 --device cuda:0 --save` stores.
        daemon.daemon.registry.save_serving_config("linear", 2, {"device": "cuda:0", "max_batch_size": 4})
        with caplog.at_level("WARNING", logger="tesserad.serving.pool"):
            assert _predict_rows(channel, 1) == grpc.StatusCode.OK
            assert _running(channel)[0] == 4  # the fields it can run are kept
            _load(channel, inference_pb2.ServingConfig(instances=1))
        listed = inference_pb2_grpc.InferenceStub(channel).ListLoaded(
            inference_pb2.ListLoadedRequest(model="linear")
        )
        assert [(m.version, m.config.device) for m in listed.models] == [(2, "cpu")]
        # What `tessera load --keep-config --save` saves back keeps it for the machines that have it.
        assert [(m.requested.device, m.requested.instances) for m in listed.models] == [("cuda:0", 1)]
        (warning,) = [r.getMessage() for r in caplog.records if "device" in r.getMessage()]
        assert "'linear' version 2" in warning
        assert "device cuda:0 is left out, as this onnxruntime has no CUDA provider" in warning
        assert warning.endswith("loads of it here run on cpu, the default device")
        # Asked for in the load itself, it is refused as before.
        with pytest.raises(grpc.RpcError) as refused:
            _load(channel, inference_pb2.ServingConfig(device="cuda:0"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "device cuda:0 asks for CUDA, but this onnxruntime has no CUDA provider" in (
            refused.value.details() or ""
        )
    finally:
        daemon.stop()
