"""The HTTP listeners' requests on /metrics: tessera_http_requests_total by listener, route,
method and status, and tessera_http_request_duration_seconds, so an alert can see HTTP 5xx as it
sees gRPC's INTERNAL. Labels are bounded whatever a client sends: a route is its template (the
path's parameters are not in it), every path no route takes is one route, and a method the
daemon does not know is one method."""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import struct
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tessera
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.dashboard.conftest import wait_until


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    settings = daemon_settings(tmp_path_factory.mktemp("http"), **{"serving.oip_http_listen": "127.0.0.1:0"})
    running = InProcessDaemon(settings).start()
    try:
        yield running
    finally:
        running.stop()


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> int:
    """The status `method` `path` is answered with on 127.0.0.1:`port`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def expecting(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    """The status `method` `path` with `headers` (an Expect among them) is answered with, its body
    never sent."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def samples(daemon: InProcessDaemon, name: str) -> dict[tuple[str, ...], float]:
    """(listener, route, method[, code]) -> the value of each sample `name` on /metrics."""
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.removeprefix(name + "{").split("} ")
            named = dict(pair.split("=", 1) for pair in labels.split(","))
            key = tuple(
                named[label].strip('"') for label in ("listener", "route", "method", "code") if label in named
            )
            found[key] = float(value)
    return found


def test_oip_http_requests_are_counted_by_route_template_method_and_status(daemon: InProcessDaemon) -> None:
    port = daemon.daemon.oip_http_port
    assert port is not None
    assert request(port, "GET", "/v2/health/live") == 200
    assert request(port, "POST", "/v2/repository/index", b"{not json") == 400
    assert request(port, "GET", "/v2/models/no-such-model") == 404
    assert request(port, "GET", "/v2/models/another-missing-model") == 404
    for index in range(40):
        assert request(port, "GET", f"/attacker/chosen/{index}") == 404
    assert request(port, "PROPFIND", "/v2/health/live") == 405

    totals = samples(daemon, "tessera_http_requests_total")
    assert totals[("oip_http", "/v2/health/live", "GET", "200")] == 1
    assert totals[("oip_http", "/v2/repository/index", "POST", "400")] == 1
    assert totals[("oip_http", "/v2/models/{model}", "GET", "404")] == 2
    assert totals[("oip_http", "unmatched", "GET", "404")] == 40
    assert totals[("oip_http", "unmatched", "other", "405")] == 1
    # No path a client chose became a label.
    assert not [key for key in totals if "attacker" in key[1] or "missing" in key[1] or "PROPFIND" in key]
    timed = samples(daemon, "tessera_http_request_duration_seconds_count")
    assert timed[("oip_http", "/v2/models/{model}", "GET")] == 2
    assert timed[("oip_http", "unmatched", "GET")] == 40


def test_dashboard_requests_are_counted_by_route_template_method_and_status(daemon: InProcessDaemon) -> None:
    port = daemon.daemon.http_port
    assert port is not None
    assert request(port, "GET", "/api/v1/jobs") == 200
    assert request(port, "GET", "/jobs/no-such-job") == 404
    for index in range(10):
        assert request(port, "GET", f"/attacker/{index}") == 404

    totals = samples(daemon, "tessera_http_requests_total")
    assert totals[("dashboard", "/api/v1/jobs", "GET", "200")] == 1
    assert totals[("dashboard", "/jobs/{job_id}", "GET", "404")] == 1
    assert totals[("dashboard", "unmatched", "GET", "404")] == 10


def test_refusals_before_the_body_and_server_errors_are_counted_once(daemon: InProcessDaemon) -> None:
    port = daemon.daemon.oip_http_port
    assert port is not None
    infer = "/v2/models/some-model/infer"
    over = str(daemon.settings.max_message_size + 1)
    # Refused by the expect handler in place of 100 Continue, before any middleware.
    assert expecting(port, "POST", infer, {"Content-Length": over, "Expect": "100-continue"}) == 413
    assert expecting(port, "GET", "/v2/health/live", {"Expect": "a-teapot"}) == 417
    assert request(port, "POST", infer, b"{}", {"Content-Encoding": "x-unknown"}) == 415

    totals = samples(daemon, "tessera_http_requests_total")
    assert totals[("oip_http", "/v2/models/{model}/infer", "POST", "413")] == 1
    assert totals[("oip_http", "/v2/health/live", "GET", "417")] == 1
    assert totals[("oip_http", "/v2/models/{model}/infer", "POST", "415")] == 1


DOWNLOAD = "/api/v1/runs/{run_id}/artifact"


def _artifacts(daemon: InProcessDaemon, tmp_path: Path, files: dict[str, bytes]) -> str:
    """A new run holding `files` (name -> content) as its artifacts."""
    with tessera.Client(daemon.target, timeout=60) as client:
        run_id = client.training.create_run("http-metrics", create_experiment=True).run_id
        for name, content in files.items():
            local = tmp_path / name
            local.write_bytes(content)
            client.training.log_artifact(run_id, local)
    return run_id


def _downloads(daemon: InProcessDaemon) -> dict[str, float]:
    """code -> the artifact downloads the dashboard answered with it."""
    totals = samples(daemon, "tessera_http_requests_total")
    return {key[3]: value for key, value in totals.items() if key[:3] == ("dashboard", DOWNLOAD, "GET")}


def _internal_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage().startswith("unexpected error")]


def test_a_client_leaving_mid_download_is_no_server_error(
    daemon: InProcessDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Far more than the socket buffers hold: the daemon is still writing when the client leaves.
    content = np.random.default_rng(3).bytes(48 * 1024 * 1024)
    run_id = _artifacts(daemon, tmp_path, {"big.bin": content})
    before = _downloads(daemon)
    port = daemon.daemon.http_port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        path = f"/api/v1/runs/{run_id}/artifact?path=big.bin"
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        # Closed with unread bytes and no linger: a reset, as a browser's cancelled download.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def counted() -> dict[str, float]:
        now = _downloads(daemon)
        return {
            code: count - before.get(code, 0) for code, count in now.items() if count != before.get(code, 0)
        }

    # Counted as the answer it was sent, which no alert on server errors takes for one.
    assert wait_until(counted, 60, "the download to be counted") == {"200": 1}
    assert _internal_errors(caplog) == []


def test_damage_found_mid_download_is_counted_a_server_error_and_logged(
    daemon: InProcessDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = np.random.default_rng(5).bytes(600_000)  # several chunks: damage is found after the headers
    run_id = _artifacts(daemon, tmp_path, {"damaged.bin": content})
    digest = hashlib.sha256(content).hexdigest()
    blob = daemon.settings.data_dir / "blobs" / "sha256" / digest[:2] / digest[2:]
    blob.chmod(0o644)
    blob.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    before = _downloads(daemon).get("500", 0)
    port = daemon.daemon.http_port
    assert port is not None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "GET", f"/api/v1/runs/{run_id}/artifact?{urllib.parse.urlencode({'path': 'damaged.bin'})}"
        )
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        connection.close()

    wait_until(lambda: _downloads(daemon).get("500", 0) == before + 1, 60, "the download to be counted 500")
    assert [r for r in caplog.records if r.levelno == logging.ERROR and "cut short" in r.getMessage()]


def test_damage_found_before_the_first_byte_is_answered_500_counted_and_logged(
    daemon: InProcessDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = np.random.default_rng(6).bytes(1000)  # one chunk: checked before any byte goes out
    run_id = _artifacts(daemon, tmp_path, {"damaged-small.bin": content})
    digest = hashlib.sha256(content).hexdigest()
    blob = daemon.settings.data_dir / "blobs" / "sha256" / digest[:2] / digest[2:]
    blob.chmod(0o644)
    blob.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    before = _downloads(daemon).get("500", 0)
    port = daemon.daemon.http_port
    assert port is not None
    assert request(port, "GET", f"/api/v1/runs/{run_id}/artifact?path=damaged-small.bin") == 500
    wait_until(lambda: _downloads(daemon).get("500", 0) == before + 1, 60, "the download to be counted 500")
    # Logged once, by the answer's middleware, under an error id.
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and "damaged" in r.getMessage()]
    assert len(logged) == 1 and getattr(logged[0], "error_id", None), [r.getMessage() for r in logged]
