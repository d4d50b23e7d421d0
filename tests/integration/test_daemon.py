"""The daemon as a client sees it: health, reflection, System, metrics, errors."""

from __future__ import annotations

import itertools
import re
import resource
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tessera.v1 import datasets_pb2, inference_pb2, registry_pb2, system_pb2, system_pb2_grpc, training_pb2
from tesserad.api.health import LIVENESS_SERVICE
from tests.conftest import InProcessDaemon, daemon_settings

TESSERA_SERVICES = [
    "tessera.v1.System",
    "tessera.v1.Registry",
    "tessera.v1.Datasets",
    "tessera.v1.Training",
    "tessera.v1.Inference",
    "inference.GRPCInferenceService",
]


def test_health_is_serving_for_every_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", *TESSERA_SERVICES]:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_health_of_an_unknown_service_is_not_found(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_status(channel):
    # grpc_health's Watch sends with context.write instead of yielding: the interceptors must run it.
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", "tessera.v1.Inference"]:
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING, service
        stream.cancel()
    unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()


def test_health_watchers_hear_not_serving_at_a_stop_and_their_streams_end(data_dir: Path) -> None:
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    channel = grpc.insecure_channel(daemon.target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        # Deadlines far inside the grace period: a watch that held the stop would miss them.
        streams = {
            service: stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=60)
            for service in ["", "tessera.v1.Inference", "no.such.Service", LIVENESS_SERVICE]
        }
        assert [next(stream).status for stream in streams.values()] == [
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
            health_pb2.HealthCheckResponse.SERVING,
        ]
        with ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(daemon.stop, 3600)
            # What each watcher hears next, and then its stream ends with OK.
            assert {service: [r.status for r in stream] for service, stream in streams.items()} == {
                "": [health_pb2.HealthCheckResponse.NOT_SERVING],
                "tessera.v1.Inference": [health_pb2.HealthCheckResponse.NOT_SERVING],
                "no.such.Service": [],
                # Liveness is never NOT_SERVING: the drain is not a reason to restart the process.
                LIVENESS_SERVICE: [],
            }
            stopping.result(60)
    finally:
        channel.close()


def test_reflection_lists_every_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(responses).list_services_response.service}
    assert set(TESSERA_SERVICES) <= names
    assert "grpc.health.v1.Health" in names


def test_reflection_v1_lists_every_service_and_describes_them(channel):
    # grpc.reflection.v1's messages are v1alpha's under another package: the same bytes.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tessera.v1.Registry"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    listed, registry, reflection = info(iter(requests), timeout=10)
    names = {s.name for s in listed.list_services_response.service}
    assert set(TESSERA_SERVICES) <= names
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert registry.file_descriptor_response.file_descriptor_proto
    (file,) = reflection.file_descriptor_response.file_descriptor_proto
    described = descriptor_pb2.FileDescriptorProto.FromString(file)
    assert (described.package, described.service[0].method[0].input_type) == (
        "grpc.reflection.v1",
        ".grpc.reflection.v1.ServerReflectionRequest",
    )


def test_reflection_serves_the_file_descriptors(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="tessera.v1.Registry")
    response = next(stub.ServerReflectionInfo(iter([request])))
    assert response.file_descriptor_response.file_descriptor_proto


def test_server_info(channel, data_dir):
    info = system_pb2_grpc.SystemStub(channel).GetServerInfo(system_pb2.GetServerInfoRequest(), timeout=10)
    assert re.match(r"^\d+\.\d+", info.version)
    assert info.uptime_s >= 0
    cpu = info.devices[0]
    assert cpu.id == "cpu" and cpu.kind == system_pb2.DEVICE_KIND_CPU
    assert cpu.cores >= 1 and cpu.memory_total_bytes > 0
    assert all(d.kind == system_pb2.DEVICE_KIND_CUDA and d.memory_total_bytes > 0 for d in info.devices[1:])
    assert info.data_dir.path == str(data_dir.resolve())
    assert info.data_dir.store_bytes > 0
    assert info.data_dir.store_map_size_bytes == 2**30
    assert info.data_dir.fs_total_bytes >= info.data_dir.fs_free_bytes > 0
    assert set(TESSERA_SERVICES) <= set(info.services)
    assert info.runtime_versions["python"].startswith("3.")
    assert "torch" in info.runtime_versions and "onnxruntime" in info.runtime_versions


def test_watch_system_streams_samples_at_the_interval(channel):
    stub = system_pb2_grpc.SystemStub(channel)
    samples = list(
        stub.WatchSystem(system_pb2.WatchSystemRequest(interval_ms=100, max_samples=3), timeout=10)
    )
    assert len(samples) == 3
    for sample in samples:
        assert 0 <= sample.cpu_percent <= 100
        assert len(sample.per_cpu_percent) >= 1
        assert 0 < sample.memory_used_bytes <= sample.memory_total_bytes
        assert sample.process_rss_bytes > 0
    times = [s.time.ToNanoseconds() for s in samples]
    gaps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(times)]
    assert all(gap >= 90 for gap in gaps_ms), gaps_ms


def test_watch_system_open_ended_until_cancelled(channel):
    stream = system_pb2_grpc.SystemStub(channel).WatchSystem(system_pb2.WatchSystemRequest(interval_ms=100))
    first = next(stream)
    assert first.memory_total_bytes > 0
    stream.cancel()
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize(
    ("request_fields", "fragment"),
    [
        ({"interval_ms": 5}, "interval_ms must be in 100..60000"),
        ({"interval_ms": 600_000}, "interval_ms must be in 100..60000"),
        ({"max_samples": -1}, "max_samples must be >= 0"),
    ],
)
def test_watch_system_rejects_bad_requests(channel, request_fields, fragment):
    stream = system_pb2_grpc.SystemStub(channel).WatchSystem(system_pb2.WatchSystemRequest(**request_fields))
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()


def _unary_rpcs() -> list[tuple[str, str]]:
    """(service, method) of every unary RPC of the tessera.v1 contract."""
    modules = [system_pb2, registry_pb2, datasets_pb2, training_pb2, inference_pb2]
    return [
        (service.full_name, method.name)
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if not method.client_streaming and not method.server_streaming
    ]


@pytest.fixture(scope="module")
def shared_channel(tmp_path_factory):
    running = InProcessDaemon(daemon_settings(tmp_path_factory.mktemp("data"))).start()
    yield running.channel()
    running.stop()


@pytest.mark.parametrize(("service", "method"), _unary_rpcs())
def test_every_rpc_of_the_contract_is_implemented(shared_channel, service, method):
    """An empty request reaches real code: any deliberate answer but UNIMPLEMENTED."""
    call = shared_channel.unary_unary(
        f"/{service}/{method}", request_serializer=None, response_deserializer=None
    )
    code, details = grpc.StatusCode.OK, ""
    try:
        call(b"", timeout=30)
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
    deliberate = code not in (
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    )
    assert deliberate, (code, details)


def test_metrics_endpoint_counts_calls_by_status(daemon, channel):
    stub = system_pb2_grpc.SystemStub(channel)
    stub.GetServerInfo(system_pb2.GetServerInfoRequest(), timeout=10)
    with pytest.raises(grpc.RpcError):
        next(stub.WatchSystem(system_pb2.WatchSystemRequest(interval_ms=1)))
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'tessera_rpc_total{code="OK",method="GetServerInfo",service="tessera.v1.System"} 1.0' in text
    assert (
        'tessera_rpc_total{code="INVALID_ARGUMENT",method="WatchSystem",service="tessera.v1.System"} 1.0'
        in text
    )
    assert (
        'tessera_rpc_duration_seconds_bucket{le="0.25",method="GetServerInfo",service="tessera.v1.System"}'
        in text
    )


@pytest.mark.parametrize("path", ["/", "/favicon.ico", "/metrics/extra", "/stats?x=1"])
def test_metrics_port_answers_404_outside_metrics(daemon, path):
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}{path}"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 404
    assert b"tessera_rpc" not in info.value.read()


def _open_files_of(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def _open_files_at(soft: int, hard: int | None = None) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (soft, hard or resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )

    return limit


def test_the_daemon_raises_its_open_file_limit_to_the_hard_one(spawn_daemon, tmp_path):
    args = ("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit on open files here is {hard}: nothing to raise")
    daemon = spawn_daemon(*args, preexec_fn=_open_files_at(256))
    daemon.wait_serving()
    soft, raised_hard = _open_files_of(daemon.process.pid)
    assert soft == raised_hard and soft > 256


def test_a_limit_below_the_http_connections_is_warned_about(spawn_daemon, tmp_path):
    args = ("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path))
    daemon = spawn_daemon(*args, preexec_fn=_open_files_at(256, 256))
    daemon.wait_serving()
    daemon.terminate()
    log = daemon.output()
    assert "may open 256 files" in log and "limits.http_max_connections 1000" in log, log
