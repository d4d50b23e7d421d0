"""Tokens and roles against a real daemon: every role against representative RPCs of each service."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tessera.v1 import system_pb2, system_pb2_grpc
from tesserad.security import Role
from tests.integration.security.conftest import bearer

# (method path, the role it needs): a reading, a writing and an administrative RPC of each
# service where it has one, unary and streaming.
REPRESENTATIVE_RPCS = [
    ("/tessera.v1.System/GetServerInfo", Role.READER),
    ("/tessera.v1.Registry/GetModel", Role.READER),
    ("/tessera.v1.Registry/CreateModel", Role.TRAINER),
    ("/tessera.v1.Registry/DeleteModel", Role.ADMIN),
    ("/tessera.v1.Registry/Deploy", Role.ADMIN),
    ("/tessera.v1.Datasets/ListDatasets", Role.READER),
    ("/tessera.v1.Datasets/DeleteDataset", Role.ADMIN),
    ("/tessera.v1.Training/ListJobs", Role.READER),
    ("/tessera.v1.Training/SubmitJob", Role.TRAINER),
    ("/tessera.v1.Training/LogMetrics", Role.TRAINER),
    ("/tessera.v1.Inference/GetStats", Role.READER),
    ("/tessera.v1.Inference/LoadModel", Role.ADMIN),
    ("/inference.GRPCInferenceService/ServerMetadata", Role.READER),
    ("/inference.GRPCInferenceService/RepositoryModelUnload", Role.ADMIN),
]
STREAMING_RPCS = [
    # (path, kind, role): server streaming, client streaming
    ("/tessera.v1.Training/WatchJob", "unary_stream", Role.READER),
    ("/tessera.v1.Registry/UploadVersion", "stream_unary", Role.TRAINER),
    ("/tessera.v1.Datasets/UploadDataset", "stream_unary", Role.TRAINER),
]
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def call(channel: grpc.Channel, path: str, metadata=None, payload: bytes = b"") -> grpc.StatusCode:
    """Send an empty (valid, all-defaults) request; the status code the daemon answers."""
    try:
        channel.unary_unary(path)(payload, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def failure(channel: grpc.Channel, path: str, metadata=None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(path)(b"", metadata=metadata, timeout=10)
    return err.value


@pytest.mark.parametrize(("path", "required"), REPRESENTATIVE_RPCS)
def test_each_role_against_a_representative_rpc(token_daemon, tokens, path, required):
    channel = token_daemon.channel()
    for role in Role:
        if role < required:
            error = failure(channel, path, bearer(tokens.token[role]))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, role
            assert f"needs the {required.label} role" in error.details()
            assert f"{role.label}-holder" in error.details()
            assert path.lstrip("/") in error.details()
        else:
            # Past auth: the real answer, or UNIMPLEMENTED from a service not built yet.
            assert call(channel, path, bearer(tokens.token[role])) not in AUTH_CODES, role


@pytest.mark.parametrize(("path", "kind", "required"), STREAMING_RPCS)
def test_roles_on_streaming_rpcs(token_daemon, tokens, path, kind, required):
    channel = token_daemon.channel()
    for role in Role:
        method = getattr(channel, kind)(path)
        try:
            if kind == "unary_stream":
                list(method(b"", metadata=bearer(tokens.token[role]), timeout=10))
            else:
                method(iter([b""]), metadata=bearer(tokens.token[role]), timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        if role < required:
            assert code == grpc.StatusCode.PERMISSION_DENIED, role
        else:
            assert code not in AUTH_CODES, role


def test_server_streaming_rpc_with_a_reader_token_streams(token_daemon, tokens):
    stub = system_pb2_grpc.SystemStub(token_daemon.channel())
    samples = list(
        stub.WatchSystem(
            system_pb2.WatchSystemRequest(interval_ms=100, max_samples=2),
            metadata=bearer(tokens.token[Role.READER]),
            timeout=10,
        )
    )
    assert len(samples) == 2


@pytest.mark.parametrize("path", [p for p, _ in REPRESENTATIVE_RPCS[:4]])
def test_missing_token_is_unauthenticated(token_daemon, path):
    error = failure(token_daemon.channel(), path)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in error.details()


def test_unknown_token_is_unauthenticated(token_daemon, tokens):
    forged = tokens.token[Role.ADMIN][:-4] + "AAAA"
    error = failure(token_daemon.channel(), "/tessera.v1.System/GetServerInfo", bearer(forged))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not valid for this tesserad" in error.details()
    assert forged not in error.details()


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token-without-scheme"])
def test_malformed_authorization_is_unauthenticated(token_daemon, header):
    error = failure(token_daemon.channel(), "/tessera.v1.System/GetServerInfo", [("authorization", header)])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "must be 'Bearer <token>'" in error.details()


def test_the_scheme_is_case_insensitive(token_daemon, tokens):
    metadata = [("authorization", f"bearer {tokens.token[Role.READER]}")]
    assert call(token_daemon.channel(), "/tessera.v1.System/GetServerInfo", metadata) == grpc.StatusCode.OK


def test_a_refused_call_is_refused_before_its_request_is_parsed(token_daemon, tokens):
    """Garbage from a caller without a token is never parsed: UNAUTHENTICATED, not INVALID_ARGUMENT."""
    channel = token_daemon.channel()
    assert call(channel, "/tessera.v1.System/GetServerInfo", payload=b"\xff\xff\xff") == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    with_token = bearer(tokens.token[Role.READER])
    assert call(channel, "/tessera.v1.System/GetServerInfo", with_token, b"\xff\xff\xff") == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_health_is_open_by_default(token_daemon):
    stub = health_pb2_grpc.HealthStub(token_daemon.channel())
    response = stub.Check(health_pb2.HealthCheckRequest(service="tessera.v1.System"), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert call(token_daemon.channel(), "/inference.GRPCInferenceService/ServerLive") not in AUTH_CODES


def test_health_watch_is_open_by_default(token_daemon):
    stub = health_pb2_grpc.HealthStub(token_daemon.channel())
    stream = stub.Watch(health_pb2.HealthCheckRequest(service="tessera.v1.System"), timeout=10)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


def test_health_needs_a_token_when_not_open(start_daemon, tokens):
    daemon = start_daemon(**{"security.tokens_file": str(tokens.file), "security.health_open": "false"})
    stub = health_pb2_grpc.HealthStub(daemon.channel())
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = stub.Check(
        health_pb2.HealthCheckRequest(), metadata=bearer(tokens.token[Role.READER]), timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_a_token(token_daemon, tokens):
    stub = reflection_pb2_grpc.ServerReflectionStub(token_daemon.channel())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as err:
        next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = next(
        stub.ServerReflectionInfo(iter([request]), metadata=bearer(tokens.token[Role.READER]), timeout=10)
    )
    assert "tessera.v1.System" in {s.name for s in response.list_services_response.service}


def test_without_a_tokens_file_every_call_is_admitted(daemon):
    channel = daemon.channel()
    assert call(channel, "/tessera.v1.System/GetServerInfo") == grpc.StatusCode.OK
    assert call(channel, "/tessera.v1.Registry/DeleteModel") not in AUTH_CODES


def test_the_daemon_logs_how_many_tokens_it_loaded(spawn_daemon, tokens, tmp_path):
    process = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "d"),
        env={"TESSERA_SECURITY_TOKENS_FILE": str(tokens.file)},
    )  # fmt: skip
    entry = process.wait_for_log("tesserad serving")
    assert entry["tokens"] == 3
    assert entry["tls"] is False


def test_tesserad_serve_takes_the_tokens_file_as_a_flag(spawn_daemon, tokens, tmp_path):
    """It took it only from TESSERA_SECURITY_TOKENS_FILE or the TOML file."""
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--tokens-file", str(tokens.file), cwd=tmp_path
    )  # fmt: skip
    with grpc.insecure_channel(daemon.wait_serving()) as channel:
        stub = system_pb2_grpc.SystemStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetServerInfo(system_pb2.GetServerInfoRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reader = bearer(tokens.token[Role.READER])
        assert stub.GetServerInfo(system_pb2.GetServerInfoRequest(), metadata=reader, timeout=30).version
