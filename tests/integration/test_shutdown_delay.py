"""shutdown_delay_s: on SIGTERM the daemon reports not ready at once (gRPC health NOT_SERVING,
OIP /v2/health/ready 400) while it still answers calls, so a load balancer routes elsewhere
before the stop; a second SIGTERM skips what is left of the delay."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tesserad.oip import grpc_service_pb2, grpc_service_pb2_grpc
from tesserad.server import Daemon, serve
from tests.conftest import daemon_settings


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_reports_not_ready_but_serves_until_a_second_sigterm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        metrics_listen="off",
        http_listen="off",
        shutdown_delay_s=600,  # only the second SIGTERM ends it
        **{"serving.oip_http_listen": "127.0.0.1:0"},
    )
    started: asyncio.Queue[Daemon] = asyncio.Queue()
    start = Daemon.start

    async def recorded_start(daemon: Daemon) -> None:
        await start(daemon)
        started.put_nowait(daemon)

    monkeypatch.setattr(Daemon, "start", recorded_start)

    async def main() -> None:
        served = asyncio.create_task(serve(settings, insecure=True))
        daemon = await started.get()
        ready = f"http://127.0.0.1:{daemon.oip_http_port}/v2/health/ready"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            assert await asyncio.to_thread(_http_status, ready) == 200

            os.kill(os.getpid(), signal.SIGTERM)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await asyncio.to_thread(_http_status, ready) == 400
            assert not (await oip.ServerReady(grpc_service_pb2.ServerReadyRequest())).ready
            # Still serving: calls are answered, over gRPC and HTTP.
            assert (await oip.ServerLive(grpc_service_pb2.ServerLiveRequest())).live
            metadata = await oip.ServerMetadata(grpc_service_pb2.ServerMetadataRequest())
            assert metadata.name == "tesserad"
            live = f"http://127.0.0.1:{daemon.oip_http_port}/v2/health/live"
            assert await asyncio.to_thread(_http_status, live) == 200
            assert not served.done()

            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(served, 60)

    asyncio.run(main())


def test_a_sigterm_while_starting_stops_without_the_delay(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Never reported ready, so no load balancer routes here: there is nothing to drain.
    settings = daemon_settings(
        tmp_path / "data", metrics_listen="off", http_listen="off", shutdown_delay_s=600
    )
    start = Daemon.start

    async def start_after_a_sigterm(daemon: Daemon) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0)  # the loop runs the handler: the stop is asked during the start
        await start(daemon)

    monkeypatch.setattr(Daemon, "start", start_after_a_sigterm)
    asyncio.run(asyncio.wait_for(serve(settings, insecure=True), 60))
