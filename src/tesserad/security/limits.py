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
    in a row, then once every `retry_s`; only time refills it (a good login, which any token's
    holder can make, would let them guess again for ever), and good logins never count. Guessing
    a 256-bit token is hopeless anyway; this keeps a script from trying fast.

    An IPv6 address counts as its /64, which one client commonly holds whole, and as its /48
    (one site's, commonly), which may fail SITE_AT_ONCE times as often in a row: a client holding
    many /64s cannot try from each in turn. Bounded: at most `max_addresses` buckets are
    remembered, and one is forgotten only once it has refilled (forgetting one still held back
    would let a client with many addresses try on for ever); while none has, addresses not
    remembered all count against one shared bucket. Used from one event loop only (the daemon's).
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
        # Address (or network) -> (failures it may still make, when that was so, the most it may
        # make in a row), least recently touched first.
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait_s(self, address: str | None) -> float:
        """How long `address` must wait before its next login is tried; 0 when it may now."""
        now = self._clock()
        left = min(self._left(key, at_once, now) for key, at_once in self._keys(address, now))
        return 0.0 if left >= 1 else (1 - left) * self.retry_s

    def failed(self, address: str | None) -> None:
        """Count a failed login from `address` against its buckets."""
        now = self._clock()
        for key, at_once in self._keys(address, now):
            left = self._left(key, at_once, now)
            self._buckets.pop(key, None)
            self._buckets[key] = (max(0.0, left - 1), now, at_once)

    def _keys(self, address: str | None, now: float) -> list[tuple[str, float]]:
        """The buckets `address` counts against, with the most each may fail in a row: those
        there is no room for give way to the shared one."""
        wanted: list[tuple[str, float]] = [
            (key, self.at_once * share) for key, share in _client_keys(address)
        ]
        new = sum(1 for key, _ in wanted if key not in self._buckets)
        if new and not self._room_for(new, now):
            wanted = [(key, at_once) for key, at_once in wanted if key in self._buckets]
            wanted.append((_OVERFLOW, float(self.at_once)))
        return wanted

    def _room_for(self, new: int, now: float) -> bool:
        """Whether `new` more buckets fit, forgetting refilled ones to make room: at most
        _SCAN_AT_ONCE are looked at, least recently touched first, and one still held back goes
        behind the others, so that one slow to refill (a drained /48) does not keep the refilled
        ones after it. The shared bucket may be one beyond `max_addresses`."""
        for _ in range(min(len(self._buckets), _SCAN_AT_ONCE)):
            if self._held() + new <= self._max_addresses:
                break
            key, bucket = self._buckets.popitem(last=False)
            left, since, at_once = bucket
            if left + (now - since) / self.retry_s < at_once:
                self._buckets[key] = bucket
        return self._held() + new <= self._max_addresses

    def _held(self) -> int:
        """The buckets remembered, less the shared one."""
        return len(self._buckets) - (_OVERFLOW in self._buckets)

    def _left(self, key: str, at_once: float, now: float) -> float:
        """The failures `key` may make now (fractions refill between whole ones)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return at_once
        left, since, _ = bucket
        return min(at_once, left + (now - since) / self.retry_s)


# The shared bucket of the addresses a full table has no room for (no address is written so).
_OVERFLOW = "(addresses not remembered)"
# The most buckets one failed login looks at to make room (bounded work on the event loop).
_SCAN_AT_ONCE = 64
# How many times as often as one address an IPv6 /48 may fail in a row.
SITE_AT_ONCE = 4


def _client_keys(address: str | None) -> list[tuple[str, int]]:
    """What a client address counts as, each with how many times as often as one address it may
    fail in a row: itself, or the /64 and the /48 of an IPv6 one; "" when unknown (a Unix
    socket)."""
    if not address:
        return [("", 1)]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return [(address, 1)]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return [(str(parsed.ipv4_mapped), 1)]
        return [
            (str(ipaddress.IPv6Network((parsed, 64), strict=False)), 1),
            (str(ipaddress.IPv6Network((parsed, 48), strict=False)), SITE_AT_ONCE),
        ]
    return [(str(parsed), 1)]
