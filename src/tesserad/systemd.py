"""systemd's service notifications (sd_notify(3)), for the unit's Type=notify: READY=1 once the
daemon has started and answers (a primary once it serves, a replica once it listens), so that units
ordered after it start then, STATUS= lines (a replica's link to its primary), and STOPPING=1 as it
drains. A datagram to the socket systemd names in NOTIFY_SOCKET; without one (not under systemd),
nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(state: str) -> None:
    """Tell systemd `state` ("READY=1"); a failure is logged, never raised: the daemon serves
    whether or not its supervisor heard. Never blocks (it is called on the event loop): where
    the socket's queue is full (systemd busy), the notification is dropped, and logged."""
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
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(state.encode(), socket.MSG_DONTWAIT)
    except OSError as exc:
        log.warning("cannot tell systemd %s at NOTIFY_SOCKET %s: %s", state, address, exc.strerror or exc)
