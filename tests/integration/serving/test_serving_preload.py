"""serving.preload: the versions a daemon loads before it reports ready, as Triton's --load-model."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_models import linear_model, slow_model, upload

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.config import SettingsError, load_settings
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings

X = np.ones((1, 4), dtype=np.float32)


def _infer(model: str, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    request.raw_input_contents.append(X.tobytes())
    return request


def _registered(data_dir: Path) -> None:
    """ "linear" versions 1 and 2 and "slow" version 1 in `data_dir`'s registry, nothing loaded."""
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        channel = daemon.channel()
        upload(channel, "linear", linear_model(1.0))
        upload(channel, "linear", linear_model(2.0))
        upload(channel, "slow", slow_model())
    finally:
        daemon.stop()


def _registered_slow(data_dir: Path, versions: int) -> None:
    """`versions` versions of "slow" in `data_dir`'s registry, nothing loaded."""
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        for _ in range(versions):
            upload(daemon.channel(), "slow", slow_model())
    finally:
        daemon.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_preloaded_versions_serve_after_a_restart_without_autoload(tmp_path: Path) -> None:
    # Without autoload, a restart would otherwise come up ready with nothing loaded: every
    # request NOT_FOUND while a probe reads the pod as ready.
    data_dir = tmp_path / "data"
    _registered(data_dir)
    daemon = InProcessDaemon(
        daemon_settings(data_dir, **{"serving.autoload": "false", "serving.preload": "linear, linear:1"})
    ).start()
    try:
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
        assert oip.ModelReady(pb.ModelReadyRequest(name="linear")).ready  # latest: 2
        assert oip.ModelReady(pb.ModelReadyRequest(name="linear", version="1")).ready
        assert not oip.ModelReady(pb.ModelReadyRequest(name="slow")).ready
        index = oip.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
        assert [(m.name, m.version) for m in index] == [("linear", "1"), ("linear", "2")]
        assert len(oip.ModelInfer(_infer("linear")).raw_output_contents) == 1
    finally:
        daemon.stop()


def test_not_ready_until_the_preloads_are_loaded(tmp_path: Path) -> None:
    # Readiness on both transports, asked while the start runs: whenever it says ready, the
    # preloaded model is ready too.
    data_dir = tmp_path / "data"
    _registered(data_dir)
    port, http_port = _free_port(), _free_port()
    daemon = InProcessDaemon(
        daemon_settings(
            data_dir,
            listen=f"127.0.0.1:{port}",
            **{
                "serving.autoload": "false",
                "serving.preload": "slow",
                "serving.warmup_runs": "200",
                "serving.oip_http_listen": f"127.0.0.1:{http_port}",
            },
        )
    )
    starting = threading.Thread(target=daemon.start)
    starting.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while True:
                status = health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60).status
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=10):
                        http_ready = True
                except (urllib.error.HTTPError, urllib.error.URLError):
                    http_ready = False
                model_ready = oip.ModelReady(pb.ModelReadyRequest(name="slow")).ready
                if status == health_pb2.HealthCheckResponse.SERVING or http_ready:
                    assert model_ready
                if status == health_pb2.HealthCheckResponse.SERVING and http_ready:
                    break
    finally:
        starting.join(60)
        daemon.stop()


def test_a_preload_that_cannot_load_stops_the_start(tmp_path: Path) -> None:
    # As Triton with --exit-on-error (its default): a model it was told to load that does not
    # load fails the start, naming it; a pod that started would otherwise never serve it.
    data_dir = tmp_path / "data"
    _registered(data_dir)
    for preload, said in (
        (
            "linear, missing",
            "serving.preload names model 'missing', which cannot be loaded: model 'missing' ",
        ),
        ("linear:7", "serving.preload names version 7 of model 'linear', which cannot be loaded: "),
    ):
        with pytest.raises(StartupError) as refused:
            InProcessDaemon(daemon_settings(data_dir, **{"serving.preload": preload})).start()
        assert str(refused.value).startswith(said), refused.value
        assert str(refused.value).endswith(
            "; remove it from serving.preload (--preload) to start without it"
        ), refused.value


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("linear:0", "'linear:0': a version is a whole number from 1"),
        ("linear:latest", "'linear:latest': a version is a whole number from 1"),
        ("Linear", "'Linear' is not a valid model name"),
    ],
)
def test_a_malformed_preload_is_a_settings_error(raw: str, said: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(env={"TESSERA_SERVING_PRELOAD": raw})
    assert said in str(refused.value)
    assert "serving.preload" in str(refused.value)


def test_preload_reads_a_toml_list(tmp_path: Path) -> None:
    config = tmp_path / "tesserad.toml"
    config.write_text('[serving]\npreload = ["linear", "linear:3"]\n')
    settings = load_settings(config, env={})
    assert [str(p) for p in settings.serving.preload] == ["linear", "linear:3"]


def test_a_version_not_loaded_is_told_how_to_load_it_in_oip_words(tmp_path: Path) -> None:
    # A Triton client's user loads through the Open Inference Protocol, not tessera's LoadModel.
    data_dir = tmp_path / "data"
    _registered(data_dir)
    settings = daemon_settings(
        data_dir, **{"serving.autoload": "false", "serving.oip_http_listen": "127.0.0.1:0"}
    )
    daemon = InProcessDaemon(settings).start()
    try:
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
        served = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        unnamed = (
            "model 'linear' version 2 is not loaded; load it with RepositoryModelLoad (over HTTP, "
            "POST /v2/repository/models/linear/load), or turn on serving.autoload"
        )
        named = (
            "model 'linear' version 1 is not loaded; load it with RepositoryModelLoad and a config "
            'naming it in its version_policy ({"version_policy": {"specific": {"versions": [1]}}}), '
            "or turn on serving.autoload"
        )
        for version, code, message in (
            ("", grpc.StatusCode.NOT_FOUND, unnamed),
            ("1", grpc.StatusCode.UNAVAILABLE, named),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                oip.ModelInfer(_infer("linear", version))
            assert (refused.value.code(), refused.value.details()) == (code, message)
            path = "linear" if not version else f"linear/versions/{version}"
            body = json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
            ).encode()
            with pytest.raises(urllib.error.HTTPError) as answered:
                urllib.request.urlopen(f"{served}/v2/models/{path}/infer", data=body, timeout=30)
            assert json.loads(answered.value.read())["error"] == message
    finally:
        daemon.stop()


def test_sigterm_during_the_preload_skips_the_versions_left_and_stops(tmp_path: Path, spawn_daemon) -> None:
    # A pod deleted while it preloads is stopped then, not when the preload is done (or by the
    # SIGKILL that follows the grace period): the load under way finishes, the others never start.
    data_dir = tmp_path / "data"
    _registered_slow(data_dir, 4)
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        str(data_dir),
        env={
            "TESSERA_SERVING_AUTOLOAD": "false",
            "TESSERA_SERVING_PRELOAD": "slow:1, slow:2, slow:3, slow:4",
            # Each version's warm-up: a batch of 8192 rows, then 1000 of one row.
            "TESSERA_SERVING_WARMUP_RUNS": "1000",
            "TESSERA_SERVING_MAX_BATCH_SIZE": "8192",
        },
    )
    daemon.wait_for_log("serving model 'slow' version 1", timeout=120)
    daemon.terminate()
    assert daemon.process.wait(120) == 0, daemon.output()
    output = daemon.output()
    assert "serving model 'slow' version 4" not in output, output
    assert '"msg": "preloaded"' not in output and "tesserad serving" not in output, output
    assert "preload cut short: tesserad is stopping" in output, output
    assert "tesserad stopped" in output, output


def test_a_load_asked_for_during_the_preload_keeps_its_config(tmp_path: Path) -> None:
    # An operator's LoadModel with a config of its own, while the preload still loads another
    # model, is not swapped back to the defaults once the preload reaches its version.
    data_dir = tmp_path / "data"
    _registered(data_dir)
    port = _free_port()
    daemon = InProcessDaemon(
        daemon_settings(
            data_dir,
            listen=f"127.0.0.1:{port}",
            **{
                "serving.autoload": "false",
                "serving.preload": "slow:1, linear:1",
                # The slow version's warm-up (a batch of 8192 rows, then 1000 of one row) leaves
                # the time to load linear:1 before the preload reaches it.
                "serving.warmup_runs": "1000",
                "serving.max_batch_size": "8192",
            },
        )
    )
    starting = threading.Thread(target=daemon.start)
    starting.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            inference = inference_pb2_grpc.InferenceStub(channel)
            loaded = inference.LoadModel(
                inference_pb2.LoadModelRequest(
                    target=common_pb2.VersionRef(model="linear", version=1),
                    config=inference_pb2.ServingConfig(max_batch_size=4),
                ),
                wait_for_ready=True,
                timeout=60,
            )
            assert loaded.config.max_batch_size == 4
            starting.join(60)
            assert not starting.is_alive()
            listed = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="linear"), timeout=10).models
            assert [(m.version, m.config.max_batch_size) for m in listed] == [(1, 4)]
    finally:
        starting.join(60)
        daemon.stop()
