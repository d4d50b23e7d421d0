"""The HTTP listeners (dashboard, OIP over HTTP) answer only known hosts and refuse changes from
other sites (security.http_allowed_hosts): a DNS-rebinding page or a cross-site POST reaches
nothing. Raw http.client requests against a real daemon, with the headers a browser would send."""

from __future__ import annotations

import http.client
import json
from typing import Any

from tesserad.security import Role
from tests.integration.security.conftest import Tokens

BOTH = {"http_listen": "127.0.0.1:0", "serving.oip_http_listen": "127.0.0.1:0"}
SETTING = "security.http_allowed_hosts"


def request(
    port: int, path: str, headers: dict[str, str], method: str = "GET", body: bytes | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body), sent to 127.0.0.1 whatever Host says (as a rebound name does)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def error(answer: tuple[int, str, bytes]) -> tuple[int, str]:
    status, _, body = answer
    return status, json.loads(body)["error"]


def ports(daemon: Any) -> tuple[int, int]:
    return daemon.daemon.http_port, daemon.daemon.oip_http_port


def test_a_rebound_host_name_is_refused_on_both_listeners(start_daemon):
    dashboard, oip = ports(start_daemon(**BOTH))
    evil = {"Host": f"evil.example:{oip}"}
    for port, path in ((dashboard, "/api/v1/jobs"), (oip, "/v2"), (oip, "/v2/health/live")):
        status, message = error(request(port, path, {"Host": f"evil.example:{port}"}))
        assert status == 403, path
        assert "'evil.example'" in message and "DNS rebinding" in message and SETTING in message
    # A page is refused too, as a page; a change never runs (403, not the unknown model's 404).
    status, kind, body = request(dashboard, "/jobs", {"Host": "evil.example"})
    assert status == 403 and kind.startswith("text/html") and SETTING.encode() in body
    assert request(oip, "/v2/repository/models/nope/load", evil, "POST", b"")[0] == 403
    assert request(oip, "/v2/repository/models/nope/load", {}, "POST", b"")[0] == 404


def test_loopback_names_and_ip_addresses_are_answered_on_any_port(start_daemon):
    dashboard, oip = ports(start_daemon(**BOTH))
    for host in ("localhost", "LOCALHOST:1", "127.0.0.1:9", "[::1]:8080", "app.localhost:3000", "10.1.2.3"):
        assert request(dashboard, "/api/v1/jobs", {"Host": host})[0] == 200, host
        assert request(oip, "/v2", {"Host": host})[0] == 200, host
    # A trailing dot, a lookalike or a name with "localhost" in it is another name.
    for host in ("localhost.", "localhost.evil.example", "127.0.0.1.evil.example", "evil.example@127.0.0.1"):
        assert request(oip, "/v2", {"Host": host})[0] == 403, host


def test_a_post_from_another_site_is_refused_and_one_from_this_server_runs(start_daemon):
    dashboard, oip = ports(start_daemon(**BOTH))
    load = "/v2/repository/models/nope/load"
    for origin in ("http://evil.example", f"http://localhost:{oip + 1}", "null"):
        status, message = error(request(oip, load, {"Origin": origin}, "POST", b"{}"))
        assert status == 403 and "own pages" in message and SETTING in message, origin
    # This server's own origin, or none (curl, tritonclient): the request runs (the model is unknown).
    assert request(oip, load, {"Origin": f"http://127.0.0.1:{oip}"}, "POST", b"{}")[0] == 404
    assert request(oip, load, {"Host": "localhost", "Origin": "http://localhost"}, "POST", b"{}")[0] == 404
    assert request(oip, load, {}, "POST", b"{}")[0] == 404
    # A GET from another site's page: the browser keeps its answer from the page (no CORS).
    assert request(oip, "/v2", {"Origin": "http://evil.example"})[0] == 200
    # The dashboard's login form too: a cross-site page cannot log the browser in with its token.
    status, kind, body = request(dashboard, "/login", {"Origin": "http://evil.example"}, "POST", b"")
    assert status == 403 and kind.startswith("text/html") and b"own pages" in body


def test_the_setting_adds_names_and_star_turns_the_host_check_off(start_daemon):
    dashboard, oip = ports(start_daemon(**BOTH, **{SETTING: "tessera.test, .corp.example"}))
    for host in ("tessera.test:8000", "corp.example", "a.b.corp.example", "localhost", "10.0.0.1"):
        assert request(oip, "/v2", {"Host": host})[0] == 200, host
        assert request(dashboard, "/api/v1/jobs", {"Host": host})[0] == 200, host
    for host in ("evil.example", "xcorp.example", "tessera.test.evil.example"):
        assert request(oip, "/v2", {"Host": host})[0] == 403, host
    # A listed name's pages may post (a proxy that rewrites Host shows the public name in Origin).
    assert (
        request(oip, "/v2/repository/models/nope/load", {"Origin": "https://tessera.test"}, "POST", b"")[0]
        == 404
    )


def test_star_answers_any_host_and_still_refuses_cross_site_posts(start_daemon):
    _, oip = ports(start_daemon(**BOTH, **{SETTING: "*"}))
    assert request(oip, "/v2", {"Host": "evil.example"})[0] == 200
    load = "/v2/repository/models/nope/load"
    assert (
        request(oip, load, {"Host": "evil.example", "Origin": "http://evil.example"}, "POST", b"")[0] == 404
    )
    assert request(oip, load, {"Origin": "http://evil.example"}, "POST", b"")[0] == 403


def test_beyond_loopback_with_tokens_the_host_is_not_checked_and_listed_origins_are_trusted(
    start_daemon, tokens: Tokens
):
    reader = {"Authorization": f"Bearer {tokens.token[Role.READER]}"}
    daemon = start_daemon(
        **{
            "http_listen": "0.0.0.0:0",
            "serving.oip_http_listen": "0.0.0.0:0",
            "security.tokens_file": str(tokens.file),
            SETTING: "tessera.example.com",
        }
    )
    dashboard, oip = ports(daemon)
    # A rebound page has no token: the token check refuses it, and any name the operator uses works.
    assert request(oip, "/v2", {"Host": "evil.example"})[0] == 401
    assert request(oip, "/v2", {"Host": "gpu-box.internal:8000", **reader})[0] == 200
    assert request(dashboard, "/api/v1/jobs", {"Host": "gpu-box.internal", **reader})[0] == 200
    index = "/v2/repository/index"
    assert request(oip, index, {"Origin": "http://evil.example", **reader}, "POST", b"")[0] == 403
    # A proxy that sends its backend's address as Host: its public name comes in Origin alone.
    proxied = {"Host": "10.0.0.5:8000", "Origin": "https://tessera.example.com", **reader}
    assert request(oip, index, proxied, "POST", b"")[0] == 200


def metrics(port: int, host: str) -> tuple[int, str]:
    status, _, body = request(port, "/metrics", {"Host": host})
    return status, body.decode()


def test_the_metrics_port_on_loopback_answers_the_same_hosts(start_daemon):
    daemon = start_daemon(**{SETTING: "tessera.test"})
    port = daemon.daemon.metrics_port
    status, body = metrics(port, f"evil.example:{port}")
    assert status == 403
    assert "'evil.example'" in body and "DNS rebinding" in body and SETTING in body
    assert "tessera_" not in body
    for host in ("localhost", f"127.0.0.1:{port}", "[::1]", "tessera.test:9464"):
        status, body = metrics(port, host)
        assert status == 200 and "process_cpu_seconds_total" in body, host


def test_beyond_loopback_the_metrics_port_answers_any_name_prometheus_scrapes_by(
    start_daemon, tokens: Tokens
):
    daemon = start_daemon(**{"metrics_listen": "0.0.0.0:0", "security.tokens_file": str(tokens.file)})
    port = daemon.daemon.metrics_port
    for host in ("tesserad.monitoring.svc:9464", "10.0.0.7:9464", "gpu-box"):
        status, body = metrics(port, host)
        assert status == 200 and "process_cpu_seconds_total" in body, host
