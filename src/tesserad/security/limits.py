"""Admission limits on calls in flight and on an HTTP listener's open connections; a refusal
names the setting that raises the limit."""

from __future__ import annotations

import logging
import threading
import time

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
