"""A replica's link to its primary as an operator watches it: whether its change stream is open,
the newest change the primary has told of, and when the stream last was open. The follower
(tesserad.api.follow) notes each event; /metrics (tesserad.replica.prometheus) and GetServerInfo
read it. A replica stays ready without its primary, serving what it holds: these figures are how
an alert, or an operator, learns that what it holds may be stale."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tesserad.replica.followed import FollowedRegistry
from tesserad.system import Replication


@dataclass(frozen=True)
class LinkState:
    """`connected`: the change stream is open and has answered. `primary_change`: the primary's
    newest change number as last heard, a change's, a caught-up's or a heartbeat's (0 before any,
    and again once the replica follows another store from the start): the stream is read on while
    changes apply, and heartbeats tell it while none flows. `last_contact`: when the stream was
    last open, seconds since the epoch (0.0 before it ever was)."""

    connected: bool
    primary_change: int
    last_contact: float


class PrimaryLink:
    """The link's state, noted by the follower's task and read by scrapes; thread-safe."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._connected = False
        self._primary_change = 0
        self._last_contact = 0.0

    def answered(self, primary_change: int) -> None:
        """The stream gave a change, said it caught up or beat, at `primary_change`."""
        with self._lock:
            self._connected = True
            self._primary_change = max(self._primary_change, primary_change)

    def closed(self) -> None:
        """The stream ended (or never opened): the routing held is as of now."""
        with self._lock:
            if self._connected:
                self._last_contact = self._wall_clock()
            self._connected = False

    def restarted(self) -> None:
        """Following another store from the start: the primary's change numbers are another
        history's, unknown until its stream tells."""
        with self._lock:
            self._primary_change = 0

    def state(self) -> LinkState:
        with self._lock:
            last_contact = self._wall_clock() if self._connected else self._last_contact
            return LinkState(self._connected, self._primary_change, last_contact)


def replica_replication(primary: str, link: PrimaryLink, followed: FollowedRegistry) -> Replication:
    """A replica's place in replication, for its server facts (GetServerInfo)."""
    state = link.state()
    refused = followed.refused
    return Replication(
        role="replica",
        applied_change=followed.seq,
        store_incarnation=followed.store_incarnation,
        primary=primary,
        connected=state.connected,
        refusal=refused.message if refused is not None else "",
        primary_change=state.primary_change,
        last_contact=state.last_contact,
    )
