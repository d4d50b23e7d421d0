"""Admission limits on calls in flight, on an HTTP listener's open connections and on failed
logins; a refusal names the setting that raises the limit, or when to try again."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from tesserad.errors import ResourceExhausted

log = logging.getLogger(__name__)

# A flood of refused connections logs one line per this many seconds, with its count.
REFUSAL_LOG_INTERVAL_S = 60.0


class ConcurrencyGate:
    """Counts calls in flight against `limit`.

    Used from one event loop only (the daemon's, where the grpc.aio server and the HTTP
    listeners run), so a plain counter is exact.
    """

    def __init__(self, limit: int, setting: str, what: str) -> None:
        self.limit = limit
        self.in_flight = 0
        self._setting = setting
        self._what = what

    def enter(self) -> None:
        """Count one more call, or raise ResourceExhausted when the limit is reached."""
        self.check()
        self.in_flight += 1

    def check(self) -> None:
        """Raise ResourceExhausted when the limit is reached, as `enter` would, counting nothing."""
        if self.in_flight >= self.limit:
            raise ResourceExhausted(
                f"too many {self._what} at once: {self._setting} = {self.limit} is reached; retry "
                f"later, or raise {self._setting} (env TESSERA_{self._setting.replace('.', '_').upper()})"
            )

    def leave(self) -> None:
        self.in_flight -= 1


class ConnectionLimit:
    """Counts one HTTP listener's open connections against limits.http_max_connections.

    Locked: the metrics port opens and closes its connections on threads of their own.
    """

    def __init__(self, limit: int, listener: str) -> None:
        """`listener`: the listener's name in the log and the metrics."""
        self.limit = limit
        self.listener = listener
        self.open = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._logged_at: float | None = None
        self._unlogged = 0

    def admit(self) -> bool:
        """Count one more connection; False (and the refusal counted) when the limit is reached."""
        with self._lock:
            if self.open < self.limit:
                self.open += 1
                return True
            self.refused += 1
            self._unlogged += 1
            now = time.monotonic()
            if self._logged_at is not None and now - self._logged_at < REFUSAL_LOG_INTERVAL_S:
                return False
            self._logged_at = now
            refused, self._unlogged = self._unlogged, 0
        log.warning(
            "HTTP connections refused: the listener holds limits.http_max_connections open; raise it "
            "(env TESSERA_LIMITS_HTTP_MAX_CONNECTIONS) if its clients need more",
            extra={"listener": self.listener, "limit": self.limit, "refused": refused},
        )
        return False

    def release(self) -> None:
        with self._lock:
            self.open -= 1


class LoginThrottle:
    """Failed logins per client address, as a token bucket: an address may fail `at_once` times
    in a row, then once every `retry_s`; a good login forgets its failures, and good logins never
    count. Guessing a 256-bit token is hopeless anyway; this keeps a script from trying fast.

    Bounded: at most `max_addresses` are remembered; beyond, the one whose last failure is oldest
    is forgotten (most likely refilled by then; if not, it starts afresh). An IPv6 address counts
    as its /64, which one client commonly holds whole. Used from one event loop only (the
    daemon's).
    """

    def __init__(
        self,
        at_once: int,
        retry_s: float,
        max_addresses: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.at_once = at_once
        self.retry_s = retry_s
        self._max_addresses = max_addresses
        self._clock = clock
        # Address (or /64) -> (failures it may still make, when that was so), least recently
        # touched first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait_s(self, address: str | None) -> float:
        """How long `address` must wait before its next login is tried; 0 when it may now."""
        left = self._left(_client_key(address), self._clock())
        return 0.0 if left >= 1 else (1 - left) * self.retry_s

    def failed(self, address: str | None) -> None:
        """Count a failed login from `address` against its bucket."""
        key, now = _client_key(address), self._clock()
        left = self._left(key, now)
        self._buckets.pop(key, None)
        while self._buckets and len(self._buckets) >= self._max_addresses:
            self._buckets.popitem(last=False)
        self._buckets[key] = (max(0.0, left - 1), now)

    def succeeded(self, address: str | None) -> None:
        """Forget `address`'s failures: it holds a good token."""
        self._buckets.pop(_client_key(address), None)

    def _left(self, key: str, now: float) -> float:
        """The failures `key` may make now (fractions refill between whole ones)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.at_once)
        left, since = bucket
        return min(float(self.at_once), left + (now - since) / self.retry_s)


def _client_key(address: str | None) -> str:
    """What a client address counts as: itself, or the /64 of an IPv6 one; "" when unknown (a
    Unix socket)."""
    if not address:
        return ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
