"""Every RPC and every HTTP route a tesserad with tokens serves, walked with every role: a role
below the one it needs is refused without the request being read, the role it needs gets past
authorization, and a caller without a token is UNAUTHENTICATED (401) unless it is a health probe.

test_auth.py checks representative RPCs and their messages; this walk is what keeps a new RPC
or route from being served with the wrong role, or open."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import hdrs
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tesserad.dashboard.access import CHANGE_HEADER
from tesserad.security import Role, hash_token, new_token
from tesserad.security.roles import HEALTH_METHODS, ROLE_TABLE
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens, bearer

AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# Long enough for a refusal or an answer; a stream the role admits that has nothing to send (a
# watch) ends with DEADLINE_EXCEEDED, which is past authorization all the same.
CALL_TIMEOUT_S = 3
# What a route's path parameters are filled with: names nothing in an empty daemon holds.
PLACEHOLDER = "walk-1"


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessDaemon, Tokens]]:
    directory = tmp_path_factory.mktemp("walk")
    clear = {role: new_token() for role in Role}
    path = directory / "tokens.toml"
    path.write_text("".join(format_entry(f"{r.label}-holder", r, hash_token(t)) for r, t in clear.items()))
    daemon = InProcessDaemon(
        daemon_settings(
            directory / "data",
            **{"security.tokens_file": str(path), "serving.oip_http_listen": "127.0.0.1:0"},
        )
    ).start()
    yield daemon, Tokens(path, clear)
    daemon.stop()


def _served_methods(daemon: InProcessDaemon, tokens: Tokens) -> list[tuple[str, str]]:
    """(method path, call kind) of every RPC of every service the daemon's reflection lists."""
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(
        stub.ServerReflectionInfo(iter([request]), metadata=bearer(tokens.token[Role.READER]), timeout=10)
    )
    pool = descriptor_pool.Default()
    methods = []
    for listed in answer.list_services_response.service:
        service = pool.FindServiceByName(listed.name)
        for method in service.methods:
            kind = (
                ("stream" if method.client_streaming else "unary")
                + "_"
                + ("stream" if method.server_streaming else "unary")
            )
            methods.append((f"/{service.full_name}/{method.name}", kind))
    return methods


def _code(channel: grpc.Channel, path: str, kind: str, metadata: Any) -> tuple[grpc.StatusCode, str]:
    """Call `path` with an empty request (or an empty request stream); its status and message."""
    method = getattr(channel, kind)(path)
    request: Any = iter(()) if kind.startswith("stream") else b""
    try:
        answer = method(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        if kind.endswith("stream"):
            next(answer, None)
            answer.cancel()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_reflection_lists_exactly_the_services_of_the_role_table(walked):
    daemon, tokens = walked
    served = {path.split("/")[1] for path, _ in _served_methods(daemon, tokens)}
    assert served == set(ROLE_TABLE)


def test_every_rpc_refuses_each_role_below_its_own_and_admits_its_own(walked):
    daemon, tokens = walked
    channel = daemon.channel()
    wrong: list[str] = []
    methods = _served_methods(daemon, tokens)
    assert len(methods) >= 80
    for path, kind in methods:
        service, name = path.lstrip("/").split("/")
        required = ROLE_TABLE[service][name]
        code, message = _code(channel, path, kind, None)
        if path in HEALTH_METHODS:
            if code in AUTH_CODES:
                wrong.append(f"{path} without a token: {code.name} (health probes are open)")
        elif code != grpc.StatusCode.UNAUTHENTICATED:
            wrong.append(f"{path} without a token: {code.name}")
        for role in Role:
            code, message = _code(channel, path, kind, bearer(tokens.token[role]))
            if role < required:
                if (
                    code != grpc.StatusCode.PERMISSION_DENIED
                    or f"needs the {required.label} role" not in message
                ):
                    wrong.append(f"{path} as {role.label}: {code.name} {message!r}")
            elif code in AUTH_CODES:
                wrong.append(f"{path} as {role.label}: {code.name} {message!r}")
    assert not wrong, "\n".join(wrong)


UNROUTED = "/{unrouted}"


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route of an aiohttp application; the route of any method
    that answers what no other route takes (404/405) is walked with a GET."""
    return sorted(
        ("GET" if route.method == hdrs.METH_ANY else route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    )


def _filled(template: str) -> str:
    return re.sub(r"\{[^}]+\}", PLACEHOLDER, template)


def _status(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    """The status `method path` is answered with (its headers only: an event stream never ends)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = "{}" if method == "POST" else None
        connection.request(method, path, body, headers={"Content-Type": "application/json", **headers})
        return connection.getresponse().status
    finally:
        connection.close()


def _walk_http(
    port: int, routes: list[tuple[str, str]], role_of: Any, tokens: Tokens, extra: dict[str, str]
) -> list[str]:
    """Each route with no token and with each role's; what is not as `role_of(method, template)`
    (None: open to all) says."""
    wrong = []
    for method, template in routes:
        path = _filled(template)
        required = role_of(method, template)
        status = _status(port, method, path, extra)
        if required is None:
            # The login form's POST answers a missing token 401 itself: only reads are walked.
            if method != "POST" and status in (401, 403):
                wrong.append(f"{method} {template} without a token: {status} (it is open)")
            continue
        if status != 401:
            wrong.append(f"{method} {template} without a token: {status}")
        for role in Role:
            status = _status(port, method, path, {**extra, "Authorization": f"Bearer {tokens.token[role]}"})
            if role < required and status != 403:
                wrong.append(f"{method} {template} as {role.label}: {status}, not 403")
            if role >= required and status in (401, 403):
                wrong.append(f"{method} {template} as {role.label}: {status}")
    return wrong


def _oip_role(method: str, template: str) -> Role | None:
    """Triton's HTTP routes, as the role table's RPC of the same name: health open, reading and
    inference reader, every other change (load, unload, shared memory, log and trace settings)
    admin."""
    if template in ("/v2/health/live", "/v2/health/ready"):
        return None
    if template == UNROUTED:
        # As Triton: a path the protocol does not serve is 404 to anyone; it reveals no model.
        return None
    if method in ("GET", "HEAD") or template.endswith(("/index", "/infer")):
        return Role.READER
    return Role.ADMIN


def test_every_oip_http_route_needs_the_role_of_its_rpc(walked):
    daemon, tokens = walked
    server = daemon.daemon._oip_http
    assert server is not None and server._runner is not None
    routes = _routes(server._runner.app)
    assert len(routes) >= 30
    wrong = _walk_http(daemon.daemon.oip_http_port, routes, _oip_role, tokens, {})
    assert not wrong, "\n".join(wrong)


def _dashboard_role(method: str, template: str) -> Role | None:
    """The login form, the logout (a session already ended may still clear its cookie) and the
    static code are open; the restores need the role RestoreRun and RestoreExperiment need on
    gRPC; every other page and call reads."""
    if template in ("/login", "/logout") or template.startswith("/static"):
        return None
    if method == "POST":
        assert template.endswith("/restore"), f"{template}: a change the walk does not know"
        return Role.ADMIN
    return Role.READER


def test_every_dashboard_route_needs_its_role(walked):
    daemon, tokens = walked
    server = daemon.daemon._dashboard
    assert server is not None and server._runner is not None
    routes = [
        (method, Path(template, "dashboard.css").as_posix() if template == "/static" else template)
        for method, template in _routes(server._runner.app)
    ]
    assert len(routes) >= 30
    wrong = _walk_http(daemon.daemon.http_port, routes, _dashboard_role, tokens, {CHANGE_HEADER: "1"})
    assert not wrong, "\n".join(wrong)
