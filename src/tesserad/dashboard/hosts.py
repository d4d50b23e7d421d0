"""Which Host and Origin headers an HTTP listener (the dashboard's, the HTTP inference one, and
the metrics port on loopback: tesserad.metrics) answers: the guard against DNS rebinding and
cross-site requests (security.http_allowed_hosts).

DNS rebinding: a page at evil.example has its name resolve to 127.0.0.1, and the browser, taking
the daemon for the page's own server, lets it send requests and read the answers. Each such
request says `Host: evil.example`, so a listener that answers only names it knows stays out of
reach. `localhost`, the names under `.localhost` (browsers resolve them to loopback themselves)
and IP addresses (an address cannot be rebound: it is the page's origin itself) are always
answered; other names only when listed. The port is not checked: a rebinding page uses the
daemon's own port anyway, and a tunnel or proxy (`ssh -L 9000:localhost:8080`) shows another.

The Host check is on when the listener is on loopback (where a browser on this machine reaches
it) or when callers need not prove who they are, unless `*` is listed. Beyond loopback with tokens
or client certificates it is off: a rebound page has no token (the browser keeps the login cookie
per name), under mutual TLS its name fails the certificate check, and the names such a daemon is
reached by are many (a Service's, an ingress's, a node's).

A cross-site page needs no rebinding to send a POST that needs no CORS preflight (a form, or
fetch with a plain-text body) to 127.0.0.1: it cannot read the answer, but the request runs. So a
request that is not GET, HEAD or OPTIONS and carries an `Origin` (every browser sends one with a
POST; other clients send none) runs only when that origin is this server (the authority the Host
header names) or a listed name: a proxy that rewrites Host shows the public name in Origin alone.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

SETTING = "security.http_allowed_hosts"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(authority: str) -> str:
    """The name of a Host header's authority (host[:port], [v6][:port]): lower case, without port
    or brackets."""
    text = authority.strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if ":" in text else text


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostRule:
    """What one listener answers; `refusal` says why a request may not run, or None."""

    def __init__(self, listed: Iterable[str], checked: bool) -> None:
        """`listed`: security.http_allowed_hosts; `checked`: whether the Host check is on (the
        listener is on loopback, or callers need not authenticate) unless `*` is listed."""
        names = tuple(listed)
        self._names = frozenset(name for name in names if name != "*" and not name.startswith("."))
        self._suffixes = tuple(name for name in names if name.startswith("."))
        self._check_host = checked and "*" not in names

    def refusal(self, method: str, host: str | None, origin: str | None) -> str | None:
        # A request without Host comes from no browser (every one sends it), so rebinding is moot.
        if self._check_host and host and not self._host_allowed(host_name(host)):
            return (
                f"this tesserad does not answer for the host {host_name(host)[:100]!r} (a guard against "
                f"DNS rebinding); to reach it by that name, add the name to {SETTING}"
            )
        if method not in SAFE_METHODS and origin is not None and not self._origin_allowed(origin, host):
            return (
                f"a {method} must come from this server's own pages, not from a page at "
                f"{origin[:100]!r}; to trust pages served under another name, add it to {SETTING}"
            )
        return None

    def _listed(self, name: str) -> bool:
        return name in self._names or any(
            name.endswith(suffix) or name == suffix[1:] for suffix in self._suffixes
        )

    def _host_allowed(self, name: str) -> bool:
        return name == "localhost" or name.endswith(".localhost") or _is_address(name) or self._listed(name)

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        # "null" (a sandboxed frame, a file) and anything without an authority name no server.
        authority = urllib.parse.urlsplit(origin.strip()).netloc.lower()
        if not authority:
            return False
        if host is not None and authority == host.strip().lower():
            return True
        return self._listed(host_name(authority))
