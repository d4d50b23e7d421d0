"""The HTTP listeners' Host and Origin rule (pure logic; the daemon's tests are in
tests/integration/security/test_http_hosts.py)."""

from __future__ import annotations

import pytest

from tesserad.dashboard.hosts import HostRule, host_name


@pytest.mark.parametrize(
    ("authority", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8080", "localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:1", "127.0.0.1"),
        (" tessera.example.com ", "tessera.example.com"),
    ],
)
def test_host_name_drops_port_brackets_and_case(authority, name):
    assert host_name(authority) == name


def test_an_unchecked_rule_refuses_only_cross_site_changes():
    rule = HostRule((), checked=False)
    assert rule.refusal("GET", "evil.example", None) is None
    assert rule.refusal("POST", "evil.example", "http://evil.example") is None
    assert rule.refusal("POST", "gpu-box:8080", "http://evil.example") is not None


def test_no_host_header_is_no_browser_s_request():
    assert HostRule((), checked=True).refusal("GET", None, None) is None


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "POST"])
def test_every_method_that_may_change_something_checks_the_origin(method):
    rule = HostRule((), checked=True)
    assert rule.refusal(method, "127.0.0.1:8080", "http://127.0.0.1:8081") is not None
    assert rule.refusal(method, "127.0.0.1:8080", "http://127.0.0.1:8080") is None


def test_star_lifts_the_host_check_only():
    rule = HostRule(("*",), checked=True)
    assert rule.refusal("GET", "evil.example", None) is None
    assert rule.refusal("POST", "127.0.0.1", "http://evil.example") is not None
