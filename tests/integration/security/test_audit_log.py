"""The audit lines a real daemon logs: one per write call (never per read), naming the RPC, the
caller's token, the peer, the objects and the status; refused credentials at WARNING, at most one
line per peer and reason in 10 s, the next counting those left out."""

from __future__ import annotations

import logging
import queue
import urllib.error
import urllib.request

import grpc
import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tesserad.security import Role, hash_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon
from tests.integration.dashboard.conftest import wait_until
from tests.integration.registry.conftest import onnx_header, onnx_identity, upload_requests
from tests.integration.security.conftest import Tokens, bearer
from tests.integration.security.test_auth import call

AUDIT = "tesserad.audit"


def audit_lines(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == AUDIT and r.getMessage() == message]


def test_write_calls_are_audited_with_caller_peer_objects_and_code_and_reads_are_not(
    start_daemon, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    daemon: InProcessDaemon = start_daemon(**{"security.tokens_file": str(tokens.file)})
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    trainer = bearer(tokens.token[Role.TRAINER])
    registry.CreateModel(registry_pb2.CreateModelRequest(name="audited"), metadata=trainer, timeout=10)
    with pytest.raises(grpc.RpcError):
        registry.CreateModel(registry_pb2.CreateModelRequest(name="audited"), metadata=trainer, timeout=10)
    data = onnx_identity(4)
    registry.UploadVersion(upload_requests(onnx_header("audited", data), data), metadata=trainer, timeout=60)
    registry.GetModel(registry_pb2.GetModelRequest(name="audited"), metadata=trainer, timeout=10)
    registry.ListModels(registry_pb2.ListModelsRequest(), metadata=trainer, timeout=10)

    lines = audit_lines(caplog, "write call")
    assert [(r.__dict__["rpc"], r.__dict__["code"]) for r in lines] == [
        ("tessera.v1.Registry/CreateModel", "OK"),
        ("tessera.v1.Registry/CreateModel", "ALREADY_EXISTS"),
        ("tessera.v1.Registry/UploadVersion", "OK"),
    ]
    for record in lines:
        assert record.levelno == logging.INFO
        assert record.__dict__["caller"] == "trainer-holder"
        assert record.__dict__["peer"].startswith("ipv4:127.0.0.1:")
    # Named by the request's own fields: a stream's first message's, and a new version's number
    # from the answer.
    assert [r.__dict__["objects"] for r in lines] == [
        {"name": "audited"},
        {"name": "audited"},
        {"model": "audited", "version": 1},
    ]


def test_refused_credentials_are_warned_once_per_peer_and_reason_within_the_window(
    start_daemon, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    daemon: InProcessDaemon = start_daemon(
        **{"security.tokens_file": str(tokens.file), "serving.oip_http_listen": "127.0.0.1:0"}
    )
    channel = daemon.channel()
    info = "/tessera.v1.System/GetServerInfo"
    for _ in range(3):
        assert call(channel, info, bearer("not-a-token")) == grpc.StatusCode.UNAUTHENTICATED
    create = "/tessera.v1.Registry/CreateModel"
    assert call(channel, create, bearer(tokens.token[Role.READER])) == grpc.StatusCode.PERMISSION_DENIED
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2", headers={"X-Request-ID": "audit-401"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    # The dashboard asking a browser that presented nothing to log in refuses no credentials.
    dashboard = f"http://127.0.0.1:{daemon.daemon.http_port}/api/v1/jobs"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(dashboard, headers=headers), timeout=10)
        assert refused.value.code == 401

    lines = audit_lines(caplog, "call refused")
    assert all(r.levelno == logging.WARNING for r in lines)
    seen = [(r.__dict__["reason"], r.__dict__["code"], r.__dict__.get("caller")) for r in lines]
    # Three refusals of an unknown token from one host: one line.
    assert seen == [
        ("unknown token", "UNAUTHENTICATED", None),
        ("role", "PERMISSION_DENIED", "reader-holder"),
        ("no token", "401", None),
        ("token refused", "401", None),
    ]
    assert lines[0].__dict__["suppressed"] == 0
    assert lines[2].__dict__["request_id"] == "audit-401"
    assert lines[2].__dict__["rpc"] == "GET /v2"
    assert [r.__dict__.get("listener") for r in lines[2:]] == ["oip_http", "dashboard"]

    # A write over HTTP logs its line as a gRPC one does, with its status and X-Request-ID.
    unload = urllib.request.Request(
        f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/repository/models/absent/unload",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {tokens.token[Role.ADMIN]}", "X-Request-ID": "audit-unload"},
    )
    # As Triton's, an unload of a model not loaded succeeds.
    assert urllib.request.urlopen(unload, timeout=10).status == 200
    [write] = audit_lines(caplog, "write call")
    assert (write.__dict__["rpc"], write.__dict__["code"]) == (
        "inference.GRPCInferenceService/RepositoryModelUnload",
        "200",
    )
    assert write.__dict__["caller"] == "admin-holder"
    assert write.__dict__["objects"] == {"model": "absent"}
    assert write.__dict__["request_id"] == "audit-unload"
    # A body the listener refuses (here: a gzip body that is not gzip) logs the status sent, not 500.
    caplog.clear()
    bad_body = urllib.request.Request(
        f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/repository/models/absent/unload",
        data=b"not gzip",
        method="POST",
        headers={"Authorization": f"Bearer {tokens.token[Role.ADMIN]}", "Content-Encoding": "gzip"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad_body, timeout=10)
    [write] = audit_lines(caplog, "write call")
    assert write.__dict__["code"] == str(refused.value.code) != "500"


def test_log_audit_false_turns_the_write_lines_off(start_daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    daemon: InProcessDaemon = start_daemon(log_audit="false")
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    registry.CreateModel(registry_pb2.CreateModelRequest(name="quiet"), timeout=10)
    assert audit_lines(caplog, "write call") == []


def test_a_write_stream_ended_by_a_revoked_token_is_audited_with_the_status_its_client_gets(
    start_daemon, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    # The reload cancels the call's task: its line said CANCELLED, its client got UNAUTHENTICATED.
    caplog.set_level(logging.INFO)
    daemon: InProcessDaemon = start_daemon(**{"security.tokens_file": str(tokens.file)})
    channel = daemon.channel()
    requests: queue.Queue[registry_pb2.UploadVersionRequest | None] = queue.Queue()
    upload = registry_pb2_grpc.RegistryStub(channel).UploadVersion.future(
        iter(requests.get, None), metadata=bearer(tokens.token[Role.TRAINER]), timeout=60
    )
    data = onnx_identity(4)
    auth = daemon.daemon._auth
    assert auth is not None
    try:
        requests.put(registry_pb2.UploadVersionRequest(header=onnx_header("revoked", data)))
        # The upload is tracked for revocation once its interceptor has registered it: only then
        # can the reload end it.
        wait_until(lambda: len(auth._open_streams) == 1, timeout=60, what="the upload's stream to open")
        tokens.file.write_text(format_entry("admin-holder", Role.ADMIN, hash_token(tokens.token[Role.ADMIN])))
        daemon.run(daemon.daemon.reload())
        [reloaded] = [r for r in caplog.records if r.getMessage() == "tokens reloaded"]
        assert reloaded.__dict__["streams_ended"] == 1
        with pytest.raises(grpc.RpcError) as ended:
            upload.result(timeout=60)
    finally:
        # Ends the request iterator's thread, which otherwise waits on the queue for good.
        requests.put(None)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [line] = audit_lines(caplog, "write call")
    assert (line.__dict__["rpc"], line.__dict__["caller"]) == (
        "tessera.v1.Registry/UploadVersion",
        "trainer-holder",
    )
    assert line.__dict__["code"] == "UNAUTHENTICATED"
