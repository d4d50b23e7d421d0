"""A real browser against the HTTP listeners: a page whose name resolves to 127.0.0.1 (DNS
rebinding, made with Chromium's --host-resolver-rules) reads nothing, and a page on another site
cannot make the browser POST a change (security.http_allowed_hosts)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.dashboard.test_dashboard_pages import CHROMIUM, CHROMIUM_ARGS
from tests.integration.dashboard.test_dashboard_pages import pytestmark as pytestmark  # needs chromium

# The attacker's name, which the browser resolves to this machine's loopback.
EVIL = "evil.example"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    settings = daemon_settings(
        tmp_path_factory.mktemp("rebind"), **{"serving.oip_http_listen": "127.0.0.1:0"}
    )
    daemon = InProcessDaemon(settings).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"],
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def attacker_page(page: Any, url: str, html: str) -> None:
    """Open `url` as a page the attacker served (before the name pointed at loopback)."""
    page.route(url, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    page.goto(url)


FETCH = """async (path) => {
  const response = await fetch(path, {method: "GET"});
  return [response.status, await response.text()];
}"""


def test_a_rebound_page_reads_neither_listener(served: InProcessDaemon, page: Any) -> None:
    for port, path in ((served.daemon.http_port, "/api/v1/jobs"), (served.daemon.oip_http_port, "/v2")):
        # The attacker's script runs in the origin http://evil.example:port (here on the page
        # the daemon answered for that name) and asks its own origin, now this machine.
        page.goto(f"http://{EVIL}:{port}/")
        status, body = page.evaluate(FETCH, path)
        assert status == 403, path
        assert "DNS rebinding" in body and "security.http_allowed_hosts" in body
    # Opened by that name, the dashboard shows why, and which setting lets it in.
    response = page.goto(f"http://{EVIL}:{served.daemon.http_port}/jobs")
    assert response.status == 403 and "security.http_allowed_hosts" in page.text_content("main")
    # By its own name the same browser gets the dashboard.
    assert page.goto(f"http://localhost:{served.daemon.http_port}/jobs").status == 200


def test_another_site_cannot_make_the_browser_post_a_change(served: InProcessDaemon, page: Any) -> None:
    action = f"http://127.0.0.1:{served.daemon.oip_http_port}/v2/repository/models/nope/load"
    # A text/plain form posts `name=value`: these make it the JSON body {"x": "="}, as a real attack would.
    form = (
        f'<form method="post" enctype="text/plain" action="{action}">'
        """<input name='{"x": "' value='"}'></form><script>document.forms[0].submit()</script>"""
    )
    with page.expect_navigation(url=action) as navigation:
        attacker_page(page, "http://attacker.test/", form)
    answer = navigation.value
    # Refused before it ran: an admitted load of an unknown model would be a 404.
    assert answer.status == 403 and "own pages" in answer.text()
