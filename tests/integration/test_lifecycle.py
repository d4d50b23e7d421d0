"""`tesserad serve` as a process: graceful stop on signals, fast and clear failures at start."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, system_pb2, system_pb2_grpc
from tesserad import __version__, cli
from tesserad.oip import grpc_service_pb2, grpc_service_pb2_grpc
from tesserad.store.schema import STORE_SCHEMA


def _watch(address: str, **fields: int):
    channel = grpc.insecure_channel(address)
    return channel, system_pb2_grpc.SystemStub(channel).WatchSystem(system_pb2.WatchSystemRequest(**fields))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_an_in_flight_stream_then_exits_0(spawn_daemon, tmp_path, sig):
    daemon = spawn_daemon("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path))
    address = daemon.wait_serving()
    channel, stream = _watch(address, interval_ms=200, max_samples=5)
    first = next(stream)
    daemon.terminate(sig)
    rest = list(stream)  # raises if the call does not end with OK
    assert len([first, *rest]) == 5
    assert daemon.process.wait(30) == 0
    output = daemon.output()
    assert "tesserad stopped" in output
    # The grace left, in ms at most: not 9.999995161999323.
    assert re.search(r'"tesserad stopping", "grace_period_s": \d+(\.\d{1,3})?\}', output), output
    channel.close()


def test_sigterm_during_the_start_stops_the_daemon_gracefully_once_started(spawn_daemon, tmp_path):
    """A SIGTERM that came while the daemon started (here: while it read its tokens file, a FIFO
    this test holds) killed it by SIGTERM's default action; the same could happen right after its
    "tesserad serving" line. It now stops gracefully once its start is done."""
    tokens = tmp_path / "tokens.toml"
    assert cli.main(["tokens", "add", "--file", str(tokens), "--name", "admin", "--role", "admin"]) == 0
    held = tmp_path / "held-tokens.toml"
    os.mkfifo(held)
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        str(tmp_path / "data"),
        env={"TESSERA_SECURITY_TOKENS_FILE": str(held)},
    )
    with held.open("wb") as fifo:  # opens once the daemon opened it to read: it is starting
        daemon.terminate()
        fifo.write(tokens.read_bytes())
    assert daemon.process.wait(60) == 0, daemon.output()
    output = daemon.output()
    assert "tesserad serving" in output and "tesserad stopped" in output


def test_open_ended_watch_is_told_to_reconnect_on_shutdown(spawn_daemon, tmp_path):
    daemon = spawn_daemon("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path))
    channel, stream = _watch(daemon.wait_serving(), interval_ms=100)
    next(stream)
    daemon.terminate()
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.value.details()
    assert daemon.process.wait(30) == 0
    channel.close()


def _prediction_stream(channel: grpc.Channel, kind: str, requests: Iterator[Any]) -> Any:
    if kind == "PredictStream":
        return inference_pb2_grpc.InferenceStub(channel).PredictStream(
            inference_pb2.PredictRequest(target=common_pb2.VersionRef(model="absent"), request_id=r)
            for r in requests
        )
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
        grpc_service_pb2.ModelInferRequest(model_name="absent", id=r) for r in requests
    )


@pytest.mark.parametrize("kind", ["PredictStream", "ModelStreamInfer"])
def test_an_open_prediction_stream_is_told_to_reconnect_on_shutdown(spawn_daemon, tmp_path, kind):
    """It ended at the end of the grace period, through gRPC's cancellation of every call."""
    daemon = spawn_daemon("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path))
    channel = grpc.insecure_channel(daemon.wait_serving())
    more: queue.Queue[str | None] = queue.Queue()
    more.put("first")
    stream = _prediction_stream(channel, kind, iter(more.get, None))
    try:
        next(stream)  # answered (the model is absent), so the stream is open on the daemon
        daemon.terminate()
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
    finally:
        more.put(None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "tesserad is shutting down" in err.value.details()
    # The requests it did not answer were not run: a client may send them again.
    assert ("tessera-unanswered-not-run", "true") in err.value.trailing_metadata()
    assert daemon.process.wait(30) == 0
    channel.close()


def test_calls_longer_than_the_grace_period_are_cancelled(spawn_daemon, tmp_path):
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        str(tmp_path),
        "--grace-period",
        "0.5",
    )
    channel, stream = _watch(daemon.wait_serving(), interval_ms=1000, max_samples=30)
    next(stream)
    stopped_at = time.monotonic()
    daemon.terminate()
    with pytest.raises(grpc.RpcError):
        list(stream)
    assert daemon.process.wait(30) == 0
    assert time.monotonic() - stopped_at < 10
    channel.close()


def test_second_daemon_on_the_same_data_dir_or_port_fails_fast(spawn_daemon, tmp_path):
    # One first daemon for both refusals: starting one costs more than either check.
    first = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "a")
    )
    address = first.wait_serving()
    same_dir = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "a")
    )
    same_port = spawn_daemon(
        "--listen", address, "--metrics-listen", "off", "--data-dir", str(tmp_path / "b")
    )
    assert same_dir.process.wait(30) == 1
    refused = same_dir.output()
    assert f"in use by another tesserad (pid {first.process.pid})" in refused
    # Said at once, not found a port at a time by starting it again.
    assert "other ports too: --listen, --http-listen and --metrics-listen (or off)" in refused
    # `tesserad restore` takes the same lock: the refusal covers it too.
    assert "where that is a `tesserad restore` into it, wait for the restore to end" in refused
    assert same_port.process.wait(30) == 1
    output = same_port.output()
    assert f"cannot listen on {address}" in output
    assert "already in use" in output
    assert first.process.poll() is None


def test_bad_settings_exit_2_naming_the_setting(spawn_daemon, tmp_path):
    daemon = spawn_daemon("--data-dir", str(tmp_path), env={"TESSERA_STORE_MAP_SIZE": "huge"})
    assert daemon.process.wait(30) == 2
    output = daemon.output()
    assert "store.map_size = 'huge' (from TESSERA_STORE_MAP_SIZE)" in output


def test_bad_flag_value_exit_2(spawn_daemon, tmp_path):
    daemon = spawn_daemon("--data-dir", str(tmp_path), "--listen", "nowhere")
    assert daemon.process.wait(30) == 2
    assert "listen = 'nowhere' (from --listen)" in daemon.output()


def test_systemd_is_told_ready_once_serving_and_stopping_on_sigterm(spawn_daemon, tmp_path):
    # Type=notify: systemd starts the units ordered after tesserad once it said READY=1.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        path = tmp_path / "notify"
        notify.bind(str(path))
        notify.settimeout(60)
        daemon = spawn_daemon(
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            str(tmp_path / "data"),
            env={"NOTIFY_SOCKET": str(path)},
        )
        serving = daemon.wait_for_log("tesserad serving")
        # The schema of the store it serves, beside its version: what a restore and a rollback check.
        assert serving["store_schema"] == STORE_SCHEMA
        assert notify.recv(4096) == b"READY=1"
        daemon.terminate()
        assert notify.recv(4096) == b"STOPPING=1"
        assert daemon.process.wait(30) == 0


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _status_lines(notify: socket.socket, until: str) -> list[str]:
    """The datagrams systemd would hear, up to the first that starts with `until`."""
    heard: list[str] = []
    while not heard or not heard[-1].startswith(until):
        heard.append(notify.recv(4096).decode())
    return heard


def test_a_replica_tells_systemd_ready_once_it_listens_and_its_link_as_status(spawn_daemon, tmp_path):
    # READY=1 says the replica started and answers, with its primary out of reach at boot too:
    # held back, systemd would kill it at TimeoutStartSec. Ready for traffic is health's SERVING
    # (a readiness probe's), not before it caught up with its primary.
    primary_port = _unused_port()
    primary_address = f"127.0.0.1:{primary_port}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        path = tmp_path / "notify"
        notify.bind(str(path))
        notify.settimeout(60)
        replica = spawn_daemon(
            "--follow",
            primary_address,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            str(tmp_path / "replica"),
            env={"NOTIFY_SOCKET": str(path)},
        )
        assert notify.recv(4096).decode() == f"READY=1\nSTATUS=waiting for primary {primary_address}"
        with grpc.insecure_channel(replica.wait_serving()) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            primary = spawn_daemon(
                "--listen",
                primary_address,
                "--metrics-listen",
                "off",
                "--data-dir",
                str(tmp_path / "primary"),
            )
            primary.wait_serving()
            replica.terminate(signal.SIGHUP)  # tries the primary at once, not at its next backoff
            heard = _status_lines(notify, "STATUS=following")
            assert heard[-1] == f"STATUS=following primary {primary_address} at change 0"
            assert "READY=1" not in heard
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        replica.terminate()
        assert _status_lines(notify, "STOPPING=1")[-1] == "STOPPING=1"
        assert replica.process.wait(30) == 0


def test_a_start_after_a_sigkill_says_the_last_run_did_not_stop_cleanly(spawn_daemon, tmp_path):
    args = ("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data"))
    first = spawn_daemon(*args)
    serving = first.wait_for_log("tesserad serving")
    assert serving["version"] == __version__
    first.terminate(signal.SIGKILL)
    first.process.wait(30)
    second = spawn_daemon(*args)
    warning = second.wait_for_log(
        "the last run did not stop cleanly (killed, crashed, or its machine went down); jobs it was "
        "running resume from their last checkpoints; `tessera admin verify` checks the store and "
        "blobs for damage"
    )
    assert warning["level"] == "warning"
    assert warning["last_pid"] == str(first.process.pid)
    second.wait_serving()
