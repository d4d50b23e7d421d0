"""The daemon's connection to the Ray cluster of training.backend = "ray".

The daemon joins the cluster as a Ray driver, in the background: it starts (and serves every
other RPC) whether or not the cluster answers. Until it is connected, training answers
UNAVAILABLE naming the address and the cause; it retries every few seconds. It also answers
whether a job's resources fit any node at all, so that such a job is refused at submit
(FAILED_PRECONDITION naming the resource) instead of waiting forever.

Once connected, the connection can still be lost. Through a ray:// address Ray Client then
raises ConnectionError: when the head's Ray Client server cannot reach the daemon's session (its
server process there ended, or did not answer within RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S,
30 s, as on a heavily loaded head), Ray's proxy fails even a ray.get with FAILED_PRECONDITION
"'NoneType' object is not iterable", a TypeError of its own; and the session is gone for good
(Ray Client answers every later call "not connected"). `lost` says so in words, and the daemon
connects afresh: SubmitJob answers UNAVAILABLE meanwhile, and each running job restarts per
spec.max_restarts once connected, or fails in those words (one still waiting to be placed waits
again). A call's ConnectionError drops only the connection the call was made on.

Ray calls go through `calls`, which a reconnect waits out (they fail on the lost connection)
before its ray.shutdown: no call runs while Ray's state is torn down or made anew, and none
starts on a connection lost or replaced.
Ray's own ray.init() on a call made while the daemon is not connected is turned off: it would
connect to whatever cluster the daemon's host has, or start one there.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tesserad.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

_RETRY_S = 5.0
_PROBE_TIMEOUT_S = 3.0
# How long a reconnect waits for the calls on the lost connection to fail: Ray Client gives up on
# a broken channel after its 30 s grace (RAY_CLIENT_RECONNECT_GRACE_PERIOD), so a call still
# running past this is stuck, and is not to hold the reconnect up.
_DRAIN_S = 60.0
# Where a request's resource is named in errors: the spec field that asked for it.
_FIELDS = {"CPU": "spec.devices", "GPU": "spec.devices.gpu_count"}

T = TypeVar("T")
# Why a connection is lost when Ray itself closed it (Ray Client does, on its session's error,
# and then fails calls "not connected" or, its client mode off, "Ray has not been started").
RAY_CLOSED = "Ray closed the daemon's connection"


class ConnectionGone(Exception):
    """Ray calls asked for (`RayCluster.calls`) on a connection that is lost or replaced."""


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
        self._lock = threading.Condition()
        # ray.init and ray.shutdown, one at a time: close() may come during a reconnect.
        self._init_lock = threading.Lock()
        self._initialized = False  # Ray's state is set up (under _init_lock)
        self._calls = 0  # threads inside `calls`
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._cause = "still connecting"
        # Counts the connections made: a call that failed under another one failed for want of it.
        self._generation = 0
        self._lost = ""  # why the last connection was lost
        self._lost_status = False  # `_lost` has the status of Ray Client's server
        self._thread = threading.Thread(target=self._connect_loop, name="ray-connect", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        with self._init_lock:
            self._connected.clear()
            if self._initialized:
                import ray

                try:
                    ray.shutdown()
                except Exception:
                    log.warning("the Ray connection did not shut down cleanly", exc_info=True)
                self._initialized = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def generation(self) -> int:
        """Which connection is the current one (1 for the first); it changes once one is lost."""
        with self._lock:
            return self._generation

    def current(self, generation: int) -> bool:
        """Whether connection `generation` is the one the daemon holds, and Ray still has it."""
        with self._lock:
            held = self._connected.is_set() and generation == self._generation
        return held and _ray_connected()

    def intact(self) -> bool:
        """Whether the connection that calls are made on (in `calls`) is still there."""
        return self.current(self.generation)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @contextmanager
    def calls(self) -> Iterator[int]:
        """Make Ray calls on the current connection (its generation, yielded): a reconnect waits
        until they are made. ConnectionGone when it is lost."""
        with self._lock:
            if not self._connected.is_set():
                raise ConnectionGone(self.lost_message() if self._lost else self._cause)
            self._calls += 1
            held = self._generation
        try:
            yield held
        finally:
            with self._lock:
                self._calls -= 1
                self._lock.notify_all()

    def require(self) -> None:
        """Raise Unavailable (naming the address and why) unless connected."""
        if not self._connected.is_set():
            with self._lock:
                cause = self._cause
            raise Unavailable(
                f"training runs on the Ray cluster at {self.address} (training.ray_address), which "
                f"cannot be reached: {cause}; start the cluster or fix training.ray_address"
            )

    def lost(self, exc: Exception, generation: int) -> str:
        """What a ConnectionError from a Ray call on connection `generation` means, in words that
        say what to look at; that connection, if still the current one, is dropped, and a new one
        made in the background."""
        text = str(exc).strip()
        # Ray Client wraps the gRPC error of its server on the head: its status, not its detail
        # (a Python error of Ray's own), is what a user can act on.
        status = re.search(r"status = StatusCode\.([A-Z_]+)", text)
        if status is not None:
            why = f"Ray Client's server on the head answered {status.group(1)}"
        else:
            why = text.splitlines()[0] if text else type(exc).__name__
        detail = f"{why}; the head's Ray logs (ray_client_server*.err for a ray:// address) say why"
        with self._lock:
            reconnect = (
                self._connected.is_set() and generation == self._generation and not self._closing.is_set()
            )
            same_loss = not reconnect and generation == self._generation and not self._connected.is_set()
            if reconnect or (same_loss and status is not None and not self._lost_status):
                # The first call to find the connection lost, or the first whose error has the
                # status of Ray Client's server: the calls Ray Client failed as it closed the
                # session say only "Client is shutting down", whichever comes first.
                self._connected.clear()
                self._cause = f"the connection was lost ({detail})"
                self._lost = detail
                self._lost_status = status is not None
            elif same_loss and self._lost and (status is None or self._lost_status):
                detail = self._lost
        if reconnect:
            log.warning(
                "lost the Ray cluster; connecting again", extra={"address": self.address, "cause": why}
            )
            threading.Thread(target=self._reconnect, name="ray-connect", daemon=True).start()
        return self.lost_message(detail)

    def lost_message(self, detail: str = "") -> str:
        """The words for a job whose connection was lost: `detail`, or the last one `lost` found."""
        if not detail:
            with self._lock:
                detail = self._lost
        return (
            f"the daemon lost its connection to the Ray cluster at {self.address} "
            f"(training.ray_address): {detail}"
        )

    def nodes(self) -> list[RayNode]:
        """The cluster's nodes; Unavailable when the connection to it is lost."""
        import ray

        return [
            RayNode(str(n["NodeID"]), str(n["NodeManagerAddress"]), bool(n["Alive"]), dict(n["Resources"]))
            for n in self._ask(ray.nodes)
        ]

    def available(self) -> dict[str, float]:
        """Ray's free resources; Unavailable when the connection to the cluster is lost."""
        import ray

        return dict(self._ask(ray.available_resources))

    def _ask(self, call: Callable[[], T]) -> T:
        """`call`'s answer; Unavailable (saying why) unless connected throughout."""
        try:
            with self.calls() as generation:
                try:
                    return call()
                except ConnectionError as exc:
                    raise Unavailable(self.lost(exc, generation)) from None
                except Exception:
                    if self.current(generation):
                        raise
                    # Another thread's call lost the connection first: Ray answers "not connected".
                    raise Unavailable(self.lost(ConnectionError(RAY_CLOSED), generation)) from None
        except ConnectionGone:
            self.require()
            raise Unavailable(self.lost_message()) from None

    def status(self) -> ClusterStatus:
        if not self._connected.is_set():
            with self._lock:
                return ClusterStatus(self.address, False, self._cause, [], {})
        try:
            return ClusterStatus(self.address, True, "", self.nodes(), self.available())
        except Unavailable as lost:
            return ClusterStatus(self.address, False, lost.message, [], {})

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
                with self._init_lock:
                    if self._closing.is_set():
                        return
                    self._connect()
                    self._initialized = True
                    with self._lock:
                        self._generation += 1
                        self._connected.set()
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
            log.info("connected to the Ray cluster", extra={"address": self.address})
            return

    def _reconnect(self) -> None:
        import ray

        # The calls under way on the lost connection end first (they fail on it): none is to run
        # as Ray's state goes. No new one starts: `calls` refuses them until connected again.
        with self._lock:
            drained = self._lock.wait_for(lambda: self._calls == 0, timeout=_DRAIN_S)
        if not drained:
            log.warning(
                "Ray calls on the lost connection are still running; connecting again regardless",
                extra={"address": self.address},
            )
        with self._init_lock:
            if self._closing.is_set():
                return
            # Ray's state of the lost connection goes first: ray.init refuses a second one. Its
            # own clean-up may fail on the broken channel, which is gone either way.
            try:
                ray.shutdown()
            except Exception:
                log.warning("the lost Ray connection did not shut down cleanly", exc_info=True)
            self._initialized = False
        self._connect_loop()

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the ray package is not installed; install tesserad[ray]") from None
        from ray._private import auto_init_hook

        # Ray would ray.init() on its own for a call made while the daemon is not connected (a
        # job's, during a reconnect), joining any cluster on this host or starting one here. Ray
        # reads RAY_ENABLE_AUTO_CONNECT=0 into this flag only as it is imported, maybe before now.
        auto_init_hook.enable_auto_connect = False
        # Ray's driver would retry for minutes against an address where nothing listens.
        _probe(self.address)
        # The workers' output stays in Ray's logs: what the daemon needs comes as job events.
        ray.init(
            address=self.address, namespace="tesserad", log_to_driver=False, logging_level=logging.WARNING
        )


def _ray_connected() -> bool:
    import ray

    return bool(ray.is_initialized())


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
