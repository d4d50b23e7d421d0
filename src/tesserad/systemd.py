"""systemd's service notifications (sd_notify(3)), for the unit's Type=notify: READY=1 once the
daemon has started and answers (a primary once it serves, a replica once it listens), so that units
ordered after it start then, STATUS= lines (a replica's link to its primary), and STOPPING=1 as it
drains, and EXTEND_TIMEOUT_USEC while a start-up upgrade of the store makes progress
(`StartProgress`). A datagram to the socket systemd names in NOTIFY_SOCKET; without one (not under
systemd), nothing."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
# Lines a full queue drops rather than waits for: each says again what the last one said, and
# the next comes soon (the follower's next STATUS=, the upgrade's next batch).
_DROPPABLE = ("STATUS=", "EXTEND_TIMEOUT_USEC=")


# How long a READY=1 or STOPPING=1 waits for room in systemd's queue: past TimeoutStartSec's
# default (90 s) there is no unit left to tell.
_WAIT_FOR_ROOM_S = 90.0


# EXTEND_TIMEOUT_USEC's window: once TimeoutStartSec has passed, systemd kills a start that sends
# no new one within it. Wide enough for the start's work between upgrade batches that tells
# nothing (other passes' first reads, the sweep of unheld blobs); a start stuck for good is still
# killed, this long after its last batch.
EXTEND_S = 300.0
# At most one EXTEND_TIMEOUT_USEC this often, however fast the batches commit.
EXTEND_EVERY_S = 30.0


class StartProgress:
    """Tells systemd EXTEND_TIMEOUT_USEC=EXTEND_S as a start-up upgrade commits its batches, at
    most once per EXTEND_EVERY_S (the first batch at once), so an upgrade that runs past the unit's
    TimeoutStartSec is not killed while it moves, and one that stops moving still is. `progressed`
    is called from the upgrade's thread; `finished` (at READY=1, or a stop) ends it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._finished = False

    def progressed(self) -> None:
        now = self._clock()
        with self._lock:
            if self._finished or (self._last is not None and now - self._last < EXTEND_EVERY_S):
                return
            self._last = now
        notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_S * 1_000_000)}")

    def finished(self) -> None:
        with self._lock:
            self._finished = True


def notify(state: str) -> None:
    """Tell systemd `state` ("READY=1"); a failure is logged, never raised: the daemon serves
    whether or not its supervisor heard. Never blocks (it is called on the event loop): where
    the socket's queue is full (systemd busy), STATUS= lines are dropped, and logged; any other
    state (READY=1, STOPPING=1, which systemd acts on) is sent from a thread that waits for room.
    An EXTEND_TIMEOUT_USEC= line is dropped as a STATUS= line is: the next batch sends another."""
    address = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return
    if address.startswith("@"):
        # An abstract socket: its name starts with a NUL byte.
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %s is not a Unix socket's path; systemd is not told %s", address, state)
        return
    try:
        # Inside: a socket refused (EMFILE, ENOBUFS) is a failure to tell systemd like the others.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        _failed(address, state, exc)
        return
    try:
        sock.connect(address)
        try:
            sock.send(state.encode(), socket.MSG_DONTWAIT)
        except BlockingIOError:
            if all(line.startswith(_DROPPABLE) for line in state.splitlines()):
                raise
            # Not a daemon thread: a daemon that stops at once still tells systemd it stops.
            threading.Thread(target=_send_waiting, args=(sock, address, state), name="sd-notify").start()
            return
    except OSError as exc:
        _failed(address, state, exc)
    sock.close()


def _send_waiting(sock: socket.socket, address: str, state: str) -> None:
    """Send `state` on `sock` once systemd's queue has room for it (or give up, logged)."""
    with sock:
        try:
            sock.settimeout(_WAIT_FOR_ROOM_S)
            sock.send(state.encode())
        except OSError as exc:
            _failed(address, state, exc)


def _failed(address: str, state: str, exc: OSError) -> None:
    log.warning("cannot tell systemd %s at NOTIFY_SOCKET %s: %s", state, address, exc.strerror or exc)
