"""systemd's service notifications (sd_notify(3)), for the unit's Type=notify: READY=1 once the
daemon has started and answers (a primary once it serves, a replica once it listens), so that units
ordered after it start then, STATUS= lines (a replica's link to its primary), and STOPPING=1 as it
drains. A datagram to the socket systemd names in NOTIFY_SOCKET; without one (not under systemd),
nothing."""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


# How long a READY=1 or STOPPING=1 waits for room in systemd's queue: past TimeoutStartSec's
# default (90 s) there is no unit left to tell.
_WAIT_FOR_ROOM_S = 90.0


def notify(state: str) -> None:
    """Tell systemd `state` ("READY=1"); a failure is logged, never raised: the daemon serves
    whether or not its supervisor heard. Never blocks (it is called on the event loop): where
    the socket's queue is full (systemd busy), STATUS= lines are dropped, and logged; any other
    state (READY=1, STOPPING=1, which systemd acts on) is sent from a thread that waits for room."""
    address = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return
    if address.startswith("@"):
        # An abstract socket: its name starts with a NUL byte.
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %s is not a Unix socket's path; systemd is not told %s", address, state)
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
        try:
            sock.send(state.encode(), socket.MSG_DONTWAIT)
        except BlockingIOError:
            if all(line.startswith("STATUS=") for line in state.splitlines()):
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
