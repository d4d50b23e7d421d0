"""`tessera.Client`: one connection to tesserad with a part per service."""

from __future__ import annotations

import sys
from types import TracebackType

from tessera.datasets import Datasets
from tessera.inference import Inference
from tessera.models import Models
from tessera.run_logging import end_runs_left_open
from tessera.system import System
from tessera.training import Training
from tessera.transport import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_TRANSFER_TIMEOUT_S,
    TLS,
    Connection,
    RetryPolicy,
    resolve_target,
)


class Client:
    """A blocking client for tesserad.

    `target` is "host:port" or any gRPC target: "dns:///name:port" (every address the name
    resolves to, e.g. a headless Kubernetes Service over serving replicas), "ipv4:a:p,b:p";
    None (the default) takes the TESSERA_TARGET environment variable, else 127.0.0.1:50051, and
    refuses (ValueError) a target, given or in TESSERA_TARGET, that is a URL or has no port, as `tessera` does. Calls go round robin over the target's addresses, one call to the next. `token` is sent as `authorization: Bearer <token>` (default: the
    TESSERA_TOKEN environment variable). `tls` is a `tessera.TLS` (CA file, client cert and
    key) or True for the system's CAs; None is plaintext. `timeout` is the deadline of every
    unary call in seconds (per-call `timeout=` overrides it); uploads and downloads use
    `transfer_timeout`. A per-call `timeout=` is seconds above 0, None for the default (no
    deadline for a watch or a stream); 0 or less raises ValueError before anything is sent, in
    `tessera.aio.Client` too. Idempotent calls that fail UNAVAILABLE are retried per `retry`.
    While a call is in flight, a connection silent for `keepalive` seconds (default: the
    TESSERA_KEEPALIVE_S environment variable, else 30) is pinged, and one that leaves a ping
    unanswered for 20 s (or `keepalive`, when shorter) is dropped: a call on it, a watch without
    deadline too, fails UNAVAILABLE (a watch connects again) instead of waiting for ever on a
    connection lost without a word (a NAT or VPN that forgot it). 0 turns pings off, for a proxy
    that limits them; else 1 to 3600, or ValueError.

        with tessera.Client("127.0.0.1:50051") as client:
            print(client.system.info().version)
    """

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        keepalive: float | None = None,
    ) -> None:
        self._conn = Connection(
            resolve_target(target), token, tls, timeout, transfer_timeout, retry, keepalive=keepalive
        )
        self.models: Models[Connection] = Models(self._conn)
        """The registry: models, versions, aliases, lineage, ONNX export, deployments."""
        self.datasets: Datasets[Connection] = Datasets(self._conn)
        """Datasets: push, list, inspect, download."""
        self.training: Training[Connection] = Training(self._conn)
        """Jobs, experiments, runs, metrics, sweeps."""
        self.inference: Inference[Connection] = Inference(self._conn)
        """Predict, streaming predict, load/unload, stats."""
        self.system: System[Connection] = System(self._conn)
        """Server info and resource use."""

    @property
    def target(self) -> str:
        """The daemon address this client talks to."""
        return self._conn.target

    @property
    def tls(self) -> TLS | None:
        """The TLS settings this client connects with (None: plaintext)."""
        return self._conn.tls

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled. The loggers left open are closed and
        the runs of `training.start_run` left open ended first: SUCCEEDED, or FAILED where
        close() is called while an exception is handled (in a `finally` or `except` block; see
        `tessera.ActiveRun`)."""
        self._close(sys.exc_info()[1])

    def _close(self, error: BaseException | None) -> None:
        end_runs_left_open(self._conn, error)
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A block that raised ends the runs it left open FAILED (CANCELLED on Ctrl-C, SUCCEEDED on
        # sys.exit(0)).
        self._close(exc)
