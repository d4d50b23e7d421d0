"""The daemon's connection to the Ray cluster of training.backend = "ray".

The daemon joins the cluster as a Ray driver, in the background: it starts (and serves every
other RPC) whether or not the cluster answers. Until it is connected, training answers
UNAVAILABLE naming the address and the cause; it retries every few seconds. It also answers
whether a job's resources fit any node at all, so that such a job is refused at submit
(FAILED_PRECONDITION naming the resource) instead of waiting forever.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from dataclasses import dataclass

from tesserad.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

_RETRY_S = 5.0
_PROBE_TIMEOUT_S = 3.0
# Where a request's resource is named in errors: the spec field that asked for it.
_FIELDS = {"CPU": "spec.devices", "GPU": "spec.devices.gpu_count"}


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str
    alive: bool
    total: dict[str, float]


@dataclass(frozen=True)
class ClusterStatus:
    address: str
    connected: bool
    error: str  # why it is not connected; "" when it is
    nodes: list[RayNode]
    available: dict[str, float]  # free now, summed over the nodes


class RayCluster:
    def __init__(self, address: str) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._cause = "still connecting"
        self._thread = threading.Thread(target=self._connect_loop, name="ray-connect", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._connected.is_set():
            import ray

            ray.shutdown()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def require(self) -> None:
        """Raise Unavailable (naming the address and why) unless connected."""
        if not self._connected.is_set():
            with self._lock:
                cause = self._cause
            raise Unavailable(
                f"training runs on the Ray cluster at {self.address} (training.ray_address), which "
                f"cannot be reached: {cause}; start the cluster or fix training.ray_address"
            )

    def nodes(self) -> list[RayNode]:
        import ray

        return [
            RayNode(str(n["NodeID"]), str(n["NodeManagerAddress"]), bool(n["Alive"]), dict(n["Resources"]))
            for n in ray.nodes()
        ]

    def available(self) -> dict[str, float]:
        import ray

        return dict(ray.available_resources())

    def status(self) -> ClusterStatus:
        if not self._connected.is_set():
            with self._lock:
                return ClusterStatus(self.address, False, self._cause, [], {})
        return ClusterStatus(self.address, True, "", self.nodes(), self.available())

    def check_feasible(self, request: dict[str, float], processes: int = 1) -> None:
        """FailedPrecondition naming the resource unless the alive nodes have room for
        `processes` times `request`, each on one node."""
        nodes = [n for n in self.nodes() if n.alive]
        room = sum(min(int(n.total.get(k, 0.0) // v) for k, v in request.items()) for n in nodes)
        if room >= processes:
            return
        for name, amount in request.items():
            most = max((n.total.get(name, 0.0) for n in nodes), default=0.0)
            if most < amount:
                raise FailedPrecondition(
                    f"{_FIELDS.get(name, 'spec.devices.ray_resources')}: the job needs {name} {amount:g} "
                    f"{'per process ' if processes > 1 else ''}but no node of the Ray cluster at "
                    f"{self.address} has that much (the most one has: {most:g}); ask for less, or add "
                    "a node that has it"
                )
        wanted = ", ".join(f"{k} {v:g}" for k, v in request.items())
        if room == 0:
            raise FailedPrecondition(
                f"spec.devices: the job needs {wanted} on one node, but no node of the Ray cluster at "
                f"{self.address} has all of them"
            )
        raise FailedPrecondition(
            f"spec.devices: the job needs {processes} processes of {wanted} each, but the nodes of the "
            f"Ray cluster at {self.address} have room for {room}"
        )

    def _connect_loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._connect()
            except Exception as exc:
                cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                with self._lock:
                    changed = cause != self._cause
                    self._cause = cause
                if changed:
                    log.warning(
                        "cannot reach the Ray cluster", extra={"address": self.address, "cause": cause}
                    )
                self._closing.wait(_RETRY_S)
                continue
            self._connected.set()
            log.info("connected to the Ray cluster", extra={"address": self.address})
            return

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the ray package is not installed; install tesserad[ray]") from None
        # Ray's driver would retry for minutes against an address where nothing listens.
        _probe(self.address)
        # The workers' output stays in Ray's logs: what the daemon needs comes as job events.
        ray.init(
            address=self.address, namespace="tesserad", log_to_driver=False, logging_level=logging.WARNING
        )


def _probe(address: str) -> None:
    """Fail fast (OSError's reason) when nothing listens at a host:port address."""
    match = re.match(r"^(?:ray://)?\[?([^\[\]]+?)\]?:([0-9]+)$", address)
    if match is None:
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RuntimeError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
