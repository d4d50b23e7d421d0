"""A primary's memory of the calls it refused its replicas lately, for its cluster statistics.

A replica whose watch the primary refuses (its token expired, say) never follows, so the
primary would not know of it, and an operator looking at the primary would see nothing. Each
replica names the address it serves on in REPLICA_HEADER on its calls to the primary; a call
carrying it that the primary answers with an error only a fix cures is noted here, one entry per
announced address (the newest refusal), at most `limit` addresses, each kept `keep_s` after its
last refusal: long enough to outlast a replica's retry of such an answer (every 5 minutes), so
one that is still refused stays listed. A replica that follows again is forgotten at once.

The address is as the caller announced it; the peer is where the call came from. What a caller
presented (its token) is never kept. Only a caller that could be a replica is heard: with
authentication on, one the primary knows by a token of its tokens file (an expired one too: a
replica whose token lapsed is the case to show) or by its certificate under mutual TLS. A caller
with no token or an unknown one could be anyone, and is not listed (a replica given a wrong token
says so itself, in its health and its answers). Without authentication every caller is admin and
any caller's header is heard; the bound keeps that cheap.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# The metadata key a replica's calls to its primary carry: the address the replica serves on.
REPLICA_HEADER = "tessera-replica"
# An announced address is kept to this many characters (a host name's limit and a port).
MAX_ADDRESS_CHARS = 261
REFUSALS_LIMIT = 64
REFUSALS_KEEP_S = 900.0


@dataclass(frozen=True)
class Refusal:
    """The newest refused call from the replica at `address`: from `peer`, to `rpc`, answered
    `code` (a gRPC status name) with `reason`, at `time` (seconds since the epoch)."""

    address: str
    peer: str
    rpc: str
    code: str
    reason: str
    time: float


class ReplicaRefusals:
    """The refusals of the last `keep_s` seconds, newest per address; thread-safe."""

    def __init__(
        self,
        limit: int = REFUSALS_LIMIT,
        keep_s: float = REFUSALS_KEEP_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._limit = limit
        self._keep_s = keep_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        # address -> (the refusal, when it was noted on `clock`), oldest first.
        self._refusals: collections.OrderedDict[str, tuple[Refusal, float]] = collections.OrderedDict()

    def note(self, address: str, peer: str, rpc: str, code: str, reason: str) -> None:
        address = address[:MAX_ADDRESS_CHARS]
        refusal = Refusal(address, peer, rpc, code, reason, self._wall_clock())
        with self._lock:
            self._refusals.pop(address, None)
            self._refusals[address] = (refusal, self._clock())
            while len(self._refusals) > self._limit:
                self._refusals.popitem(last=False)

    def forget(self, address: str) -> None:
        """The replica at `address` follows again: its refusals are over."""
        with self._lock:
            self._refusals.pop(address, None)

    def recent(self) -> list[Refusal]:
        """The refusals kept now, newest first."""
        horizon = self._clock() - self._keep_s
        with self._lock:
            while self._refusals:
                address, (_, noted) = next(iter(self._refusals.items()))
                if noted > horizon:
                    break
                del self._refusals[address]
            return [refusal for refusal, _ in reversed(self._refusals.values())]
