"""A TCP proxy for tests of connections that break: cut (as a restarted load balancer would)
or black-holed (as a NAT that forgot them would, saying nothing to either end)."""

from __future__ import annotations

import contextlib
import socket
import threading

# HTTP/2 framing, as far as `CuttableProxy.cut_at_next_answer` needs it.
_FRAME_HEADER = 9
_HEADERS = 0x1
_STREAM_ID = 0x7FFFFFFF


class CuttableProxy:
    """A TCP proxy in front of a target; `cut()` drops every open connection, as a broken
    network or a restarted load balancer would; `black_hole()` makes them pass nothing either
    way while both ends keep them open, as a NAT or VPN that forgot them would, with no word to
    either end. New connections keep working, to `target_port` as it is when they open (a test
    may point it at a restarted target). `cut_at_next_answer()` cuts them when the target starts
    its next answer to a call, instead of passing that on: the call reached the target, and its
    client never hears what came of it. `answering`: only the first so many connections pass the
    target's answers to calls; those after pass the rest (settings, pings: the connection looks
    well) and hold every answer back, as a call that stalls does."""

    def __init__(self, target_port: int, answering: int | None = None) -> None:
        self.target_port = target_port
        self._answering = answering
        self._accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.black_holes: list[threading.Event] = []
        self.cuts = 0
        self._cut_at_answer = threading.Event()
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the target is down (restarting): the client hears the connection end
                downstream.close()
                continue
            black_holed = threading.Event()
            self._accepted += 1
            hold = self._answering is not None and self._accepted > self._answering
            pumps = [
                threading.Thread(target=self._pump, args=(downstream, upstream, black_holed), daemon=True),
                threading.Thread(
                    target=self._pump_answers, args=(upstream, downstream, black_holed, hold), daemon=True
                ),
            ]
            with self._lock:
                # Black-holed sockets stay referenced here: one collected would close, and its
                # peer would hear of it.
                self.connections += [downstream, upstream]
                self.black_holes.append(black_holed)
                self._pumps += pumps
            for pump in pumps:
                pump.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, black_holed: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if not black_holed.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        if black_holed.is_set():
            return  # not even an end gets through a black hole
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _pump_answers(
        self, source: socket.socket, sink: socket.socket, black_holed: threading.Event, hold: bool
    ) -> None:
        """`_pump` for the target's side, frame by frame (HTTP/2: a 9-byte header whose first 3
        bytes are the payload's length, then its type, flags and stream id), so that the first
        HEADERS frame of a call (stream id > 0) can be held back and the connection cut instead,
        and (`hold`) every frame of a call dropped."""
        buffer = b""
        try:
            while data := source.recv(65536):
                buffer += data
                frames = b""
                while len(buffer) >= _FRAME_HEADER:
                    end = _FRAME_HEADER + int.from_bytes(buffer[:3], "big")
                    if len(buffer) < end:
                        break
                    frame, buffer = buffer[:end], buffer[end:]
                    of_a_call = int.from_bytes(frame[5:9], "big") & _STREAM_ID > 0
                    if hold and of_a_call:
                        continue
                    answer = frame[3] == _HEADERS and of_a_call
                    if answer and self._cut_at_answer.is_set():
                        self._cut_at_answer.clear()
                        if frames:
                            sink.sendall(frames)
                        self.cut()
                        return
                    frames += frame
                if frames and not black_holed.is_set():
                    sink.sendall(frames)
        except OSError:
            pass
        if black_holed.is_set():
            return
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut_at_next_answer(self) -> None:
        self._cut_at_answer.set()

    def black_hole(self) -> None:
        with self._lock:
            for black_holed in self.black_holes:
                black_holed.set()

    def cut(self) -> None:
        with self._lock:
            connections, self.connections = self.connections, []
            self.black_holes = []
            self.cuts += 1
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop accepting, cut every connection and wait for the proxy's threads to end. A
        listener's close alone does not wake a thread blocked in accept(); its shutdown does."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(5)
        self.cut()
        with self._lock:
            pumps = list(self._pumps)
        for pump in pumps:
            pump.join(5)
        left = [t for t in (self._acceptor, *pumps) if t.is_alive()]
        assert not left, f"proxy threads still running after close(): {left}"
