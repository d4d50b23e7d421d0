"""Triton's logging extension (LogSettings over gRPC, /v2/logging over HTTP) through a real daemon:
what a client reads and changes, who may change it, what is refused, and what the log then shows."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from serving_models import linear_model, upload

from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.security import Role
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens, bearer
from tests.integration.security.conftest import tokens as tokens  # one token per role
from tests.integration.serving.test_serving_oip_http import call, error

DEFAULTS: dict[str, Any] = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "ISO8601",
}
CHANGED = "log settings changed at runtime, until tesserad stops (its settings are unchanged)"


def settings_of(response: pb.LogSettingsResponse) -> dict[str, Any]:
    return {
        name: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
        for name, value in response.settings.items()
    }


def request_of(**settings: bool | int | str | None) -> pb.LogSettingsRequest:
    """As tritonclient builds it: strings for log_file and log_format, uint32 for the verbose
    level, booleans for the rest, and an entry without a value for None."""
    request = pb.LogSettingsRequest()
    for name, value in settings.items():
        entry = request.settings[name]
        if value is None:
            continue
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = value
    return request


def changes_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == CHANGED]


def test_grpc_reads_changes_and_refuses_by_name(
    oip, daemon: InProcessDaemon, expect_rpc_error: Callable[..., grpc.RpcError], caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.log_settings")
    assert "logging" in oip.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert settings_of(oip.LogSettings(pb.LogSettingsRequest())) == DEFAULTS
    # What it reads it takes back unchanged.
    assert settings_of(oip.LogSettings(request_of(**DEFAULTS))) == DEFAULTS
    assert changes_logged(caplog) == []

    changed = settings_of(oip.LogSettings(request_of(log_info=False, log_verbose_level=3)))
    assert changed == {**DEFAULTS, "log_info": False, "log_verbose_level": 3}
    assert settings_of(oip.LogSettings(pb.LogSettingsRequest())) == changed
    (record,) = changes_logged(caplog)
    assert record.levelno == logging.WARNING and record.by == "anonymous"  # type: ignore[attr-defined]
    assert record.changes == {  # type: ignore[attr-defined]
        "log_info": {"from": True, "to": False},
        "log_verbose_level": {"from": 0, "to": 3},
    }

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for request, text in (
        (request_of(log_warnings=True), "unknown log setting 'log_warnings'"),
        (
            request_of(log_info="false"),
            "log setting 'log_info' must be a boolean (true or false), got a string",
        ),
        (
            request_of(log_error=None),
            "log setting 'log_error' must be a boolean (true or false), got no value",
        ),
        (request_of(log_verbose_level=True), "log setting 'log_verbose_level' must be a whole number"),
        (request_of(log_format="default"), "log setting 'log_format' cannot be 'default' on tesserad"),
        (request_of(log_file="triton.log"), "log setting 'log_file' cannot name a file on tesserad"),
        (request_of(log_info=True, log_file="triton.log"), "stderr"),
    ):
        expect_rpc_error(lambda request=request: oip.LogSettings(request), invalid, text)
    # Nothing of a refused request was applied.
    assert settings_of(oip.LogSettings(pb.LogSettingsRequest())) == changed


def test_the_daemon_puts_its_logging_back_when_it_stops(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = root.level
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
    own, library = logging.getLogger("tesserad.serving"), logging.getLogger("aiohttp.server")
    # Verbose level 1: tesserad's own debug lines; 2: every library's too.
    assert settings_of(stub.LogSettings(request_of(log_verbose_level=1)))["log_verbose_level"] == 1
    assert own.isEnabledFor(logging.DEBUG) and not library.isEnabledFor(logging.DEBUG)
    assert settings_of(stub.LogSettings(request_of(log_verbose_level=2)))["log_verbose_level"] == 2
    assert root.level == logging.DEBUG and library.isEnabledFor(logging.DEBUG)
    daemon.stop()
    assert root.level == before and logging.getLogger("tesserad").level == logging.NOTSET
    assert not [f for h in root.handlers for f in h.filters]


def test_grpc_reading_needs_reader_and_changing_admin(start_daemon, tokens: Tokens, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.log_settings")
    daemon = start_daemon(**{"security.tokens_file": str(tokens.file)})
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
    reader, admin = bearer(tokens.token[Role.READER]), bearer(tokens.token[Role.ADMIN])
    assert settings_of(stub.LogSettings(pb.LogSettingsRequest(), metadata=reader)) == DEFAULTS
    for role in (Role.READER, Role.TRAINER):
        with pytest.raises(grpc.RpcError) as refused:
            stub.LogSettings(request_of(log_info=False), metadata=bearer(tokens.token[role]))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == (
            f"changing the log settings needs the admin role; the caller '{role.label}-holder' has the "
            f"{role.label} role; a request without settings reads them"
        )
    assert settings_of(stub.LogSettings(pb.LogSettingsRequest(), metadata=reader)) == DEFAULTS
    stub.LogSettings(request_of(log_info=False), metadata=admin)
    (record,) = changes_logged(caplog)
    assert record.by == "admin-holder"  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as refused:
        stub.LogSettings(pb.LogSettingsRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_http_reads_changes_and_refuses(start_daemon, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.log_settings")
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0"})
    url = f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/logging"
    status, _, body = call(url)
    assert status == 200 and json.loads(body) == DEFAULTS
    status, _, body = call(url, {"log_warning": False, "log_verbose_level": 1})
    assert status == 200
    changed = {**DEFAULTS, "log_warning": False, "log_verbose_level": 1}
    assert json.loads(body) == changed
    # The change is logged although it mutes warnings.
    (record,) = changes_logged(caplog)
    assert record.by == "anonymous"  # type: ignore[attr-defined]
    for body_sent, text in (
        ({"log_info": 1}, "log setting 'log_info' must be a boolean (true or false), got a number"),
        ({"log_verbose_level": -1}, "log setting 'log_verbose_level' must be a whole number from 0 to"),
        ({"log_verbose_level": 1.5}, "got 1.5"),
        ({"log_info": None}, "got no value"),
        ({"log_errors": False}, "unknown log setting 'log_errors'"),
        ({"log_file": "/var/log/t.log"}, "log setting 'log_file' cannot name a file on tesserad"),
        ({"log_format": "default"}, "log setting 'log_format' cannot be 'default' on tesserad"),
        (b"[]", "the request body must be a JSON object"),
    ):
        status, message = error(url, body_sent)
        assert status == 400 and text in message, message
    status, _, body = call(url)
    assert json.loads(body) == changed
    # An empty POST changes nothing and answers the settings.
    status, _, body = call(url, b"")
    assert status == 200 and json.loads(body) == changed


def test_http_reading_needs_reader_and_changing_admin(start_daemon, tokens: Tokens, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.log_settings")
    daemon = start_daemon(
        **{"serving.oip_http_listen": "127.0.0.1:0", "security.tokens_file": str(tokens.file)}
    )
    url = f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/logging"
    as_reader = {"Authorization": f"Bearer {tokens.token[Role.READER]}"}
    as_admin = {"Authorization": f"Bearer {tokens.token[Role.ADMIN]}"}
    assert call(url)[0] == 401
    status, _, body = call(url, headers=as_reader)
    assert status == 200 and json.loads(body) == DEFAULTS
    assert error(url, {"log_info": False}, as_reader) == (
        403,
        "POST /v2/logging needs the admin role; the token 'reader-holder' has the reader role",
    )
    status, _, body = call(url, {"log_info": False}, as_admin)
    assert status == 200 and json.loads(body)["log_info"] is False
    (record,) = changes_logged(caplog)
    assert record.by == "admin-holder"  # type: ignore[attr-defined]


def test_the_log_of_a_running_daemon_follows_the_change(spawn_daemon, tmp_path: Path) -> None:
    """`tesserad serve` writes JSON lines to stderr: with log_info off, loading a model writes no
    info line; the line that turns it back on is there all the same."""
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data")
    )
    channel = grpc.insecure_channel(daemon.wait_serving())
    try:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        upload(channel, "linear", linear_model(1.0))
        stub.LogSettings(request_of(log_info=False))
        muted = daemon.wait_for_log(CHANGED)
        assert muted["level"] == "warning" and muted["by"] == "anonymous"
        assert muted["changes"] == {"log_info": {"from": True, "to": False}}
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"))
        stub.LogSettings(request_of(log_info=True))
        daemon.wait_for_log(CHANGED)
        seen = len(daemon.log)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="linear"))
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"))
        daemon.wait_for_log("serving model 'linear' version 1")
    finally:
        channel.close()
    between = [json.loads(line) for line in daemon.log[: seen - 1] if line.startswith("{")]
    after_mute = between[between.index(muted) + 1 :]
    assert not [e for e in after_mute if e["level"] == "info"], after_mute
