"""A DNS server for one name, so a test can resolve `dns://127.0.0.1:PORT/NAME:P` to several
loopback addresses (the system resolver would give `localhost` one). It answers A queries for
its name with every address, other query types for it with no records, other names NXDOMAIN.
Enough for gRPC's c-ares resolver; not a general DNS server (no TCP, no compression on input).
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

_A, _IN = 1, 1
_NOERROR, _NXDOMAIN = 0, 3
_RESPONSE_FLAGS = 0x8180  # QR (a response), RD copied as set, RA
_NAME_AT_QUESTION = 0xC00C  # a compression pointer to the question's name, at offset 12


class DNSResponder:
    """Serves `name` -> `addresses` on UDP 127.0.0.1:`port` from a daemon thread until closed."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name.lower().rstrip(".")
        self.addresses = addresses
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        # recvfrom wakes this often to see whether close() was called.
        self._socket.settimeout(0.2)
        self._closed = threading.Event()
        self.queries: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, name="dns-responder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                query, peer = self._socket.recvfrom(512)
            except TimeoutError:
                continue
            self._socket.sendto(self.answer(query), peer)

    def answer(self, query: bytes) -> bytes:
        ident = struct.unpack("!H", query[:2])[0]
        labels: list[str] = []
        offset = 12
        while query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii").lower())
            offset += 1 + length
        qtype, _ = struct.unpack("!HH", query[offset + 1 : offset + 5])
        question = query[12 : offset + 5]
        name = ".".join(labels)
        self.queries.append((name, qtype))
        records = b""
        if name == self.name and qtype == _A:
            records = b"".join(
                struct.pack("!HHHIH", _NAME_AT_QUESTION, _A, _IN, 5, 4) + socket.inet_aton(address)
                for address in self.addresses
            )
        rcode = _NOERROR if name == self.name else _NXDOMAIN
        count = len(self.addresses) if records else 0
        header = struct.pack("!HHHHHH", ident, _RESPONSE_FLAGS | rcode, 1, count, 0, 0)
        return header + question + records

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._socket.close()

    def __enter__(self) -> DNSResponder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
