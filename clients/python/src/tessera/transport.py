"""Channels, credentials, deadlines, retries and error mapping, shared by every client part.

`Connection` makes the four kinds of gRPC call on a blocking channel, `AioConnection` on an
asyncio one, with the same deadlines, metadata and error mapping (`tessera.calls` builds the
client methods on them). Both channels carry one gRPC service config that retries the
idempotent calls listed in `RETRIED_METHODS`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import queue
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Coroutine, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tessera.errors import (
    CONNECT_TIMEOUT_S,
    Cancelled,
    DeadlineExceeded,
    NotAnswering,
    Unavailable,
    error_from_rpc,
    explain_unreachable,
    reached_before_message,
    sent_by_a_server,
    silent_message,
)
from tessera.messages import is_digits
from tessera.v1 import (
    datasets_pb2_grpc,
    inference_pb2_grpc,
    registry_pb2_grpc,
    system_pb2_grpc,
    training_pb2_grpc,
)

TOKEN_ENV = "TESSERA_TOKEN"
# `tessera`'s --tls-ca where the flag is not given.
TLS_CA_ENV = "TESSERA_TLS_CA"
# Where a client made without a target connects, as `tessera` does.
TARGET_ENV = "TESSERA_TARGET"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
# Uploads and downloads move whole artifacts and datasets: a deadline sized for them.
DEFAULT_TRANSFER_TIMEOUT_S = 3600.0
# The least a call that builds or runs a whole model gets (load, export, explain), and an unload,
# whatever the client's timeout: a large model's load or export takes minutes.
MODEL_CALL_TIMEOUT_S = 300.0
UNLOAD_TIMEOUT_S = 120.0
# gRPC turns a timeout into a deadline on a clock that ends a few billion seconds from now: a
# call given more fails at once with a bare DEADLINE_EXCEEDED.
MAX_TIMEOUT_S = 1e9
# The limit as refusals (the SDK's and the CLI's) write it: "1e+09" reads as a formula.
MAX_TIMEOUT_TEXT = f"{MAX_TIMEOUT_S:,.0f}"
MAX_MESSAGE_BYTES = 64 * 2**20
# Between attempts to reach a daemon that is away (gRPC's own default is 120 s).
MAX_RECONNECT_BACKOFF_MS = 2000
# How long a blocking client waits to hear whether its channel is connected, on a call that
# ran past its deadline: a subscriber hears the state within milliseconds; this bounds a machine
# so busy that gRPC's polling thread waits seconds for its turn.
STATE_CHECK_S = 5.0
KEEPALIVE_ENV = "TESSERA_KEEPALIVE_S"
# A call in flight whose connection has been silent this long pings the daemon: often enough
# that a connection lost without a word (a NAT or VPN forgetting it, a host gone) ends a watch
# within a minute, and that a NAT or load balancer that forgets connections idle for a few
# minutes keeps this one; seldom enough to cost nothing (one small frame per connection).
DEFAULT_KEEPALIVE_S = 30.0
# A ping unanswered this long (or the interval, when shorter) drops the connection: gRPC's own
# default, ample for a slow link, since gRPC's transport answers pings, not the daemon's handlers.
KEEPALIVE_TIMEOUT_S = 20.0
# tesserad takes a ping every 0.5 s (its MIN_PING_INTERVAL_MS) and answers more with GOAWAY
# "too_many_pings"; twice that leaves room for the slack of the timers.
MIN_KEEPALIVE_S = 1.0
MAX_KEEPALIVE_S = 3600.0

_STUBS: dict[str, type] = {
    "Registry": registry_pb2_grpc.RegistryStub,
    "Datasets": datasets_pb2_grpc.DatasetsStub,
    "Training": training_pb2_grpc.TrainingStub,
    "Inference": inference_pb2_grpc.InferenceStub,
    "System": system_pb2_grpc.SystemStub,
}


@dataclass(frozen=True)
class TLS:
    """TLS settings: the CA that signed the daemon's certificate (None: the system's roots),
    an optional client certificate and key for mutual TLS, and an optional name to check the
    server certificate against (when the address is an IP or differs from the cert's name)."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; ValueError when only one of cert_file and key_file is set."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS: a client certificate needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls that fail UNAVAILABLE (see `RETRIED_METHODS`): at most
    `attempts` tries in all (gRPC allows up to 5 for a call), with exponential backoff and
    jitter, always within the call's deadline. Unary calls are retried by gRPC itself, from
    the channel's service config; `Job.watch` reconnects a cut stream with the same figures."""

    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy: attempts must be >= 1 (1: no retries), got {self.attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.multiplier <= 0:
            raise ValueError("RetryPolicy: backoffs and multiplier must be > 0")

    def backoff_s(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        # Full jitter spreads reconnecting clients apart after a daemon restart.
        return random.uniform(ceiling / 2, ceiling)


RETRIED_METHODS: dict[str, tuple[str, ...]] = {
    # Reads, and calls that set a state to the value given: repeating one after it took
    # effect changes nothing. SetAlias is left out for its compare-and-set form (a repeat
    # after success would fail), GetStats for its reset form (a repeat would lose figures):
    # gRPC's service config chooses per method, not per request.
    "Registry": (
        "GetModel",
        "ListModels",
        "UpdateModel",
        "GetVersion",
        "ListVersions",
        "GetAlias",
        "ListAliases",
        "ListAliasHistory",
        "GetLineage",
        "CompareVersions",
        "GetDeployment",
        "ListDeployments",
    ),
    "Datasets": ("GetDataset", "ListDatasets", "GetDatasetVersion", "ListDatasetVersions"),
    "Training": (
        # Safe to send again: `training.submit` and `submit_sweep` give each submit a request_id,
        # and the daemon answers a repeat of one with the job (sweep) it first created.
        "SubmitJob",
        "SubmitSweep",
        "GetJob",
        "ListJobs",
        "GetExperiment",
        "ListExperiments",
        "UpdateExperiment",
        "RestoreExperiment",
        "UpdateRun",
        "GetRun",
        "RestoreRun",
        "ListRuns",
        "CompareRuns",
        "Leaderboard",
        "LogParams",
        "GetMetricHistory",
        "ListRunMetrics",
        "GetSweep",
        "ListSweeps",
    ),
    # Predict and Explain change no state, so a call that never reached a ready daemon is safe to resend.
    "Inference": ("Predict", "Explain", "LoadModel", "ListLoaded", "ListShadowResults"),
    "System": ("GetServerInfo",),
}
"""The unary calls that are retried on UNAVAILABLE, by service; every other call is tried once."""


# gRPC clamps maxAttempts to this (and logs an error); `Job.watch` reconnects take the policy's own.
GRPC_MAX_ATTEMPTS = 5


# Calls go round robin over every address the target resolves to (dns:/// to a headless
# Kubernetes Service, or ipv4:a:p,b:p): gRPC's default, pick_first, would send all to one.
_BALANCING: list[dict[str, dict[str, object]]] = [{"round_robin": {}}]


def service_config(retry: RetryPolicy) -> str:
    """The channel's gRPC service config: round robin, and `retry` for the methods in RETRIED_METHODS."""
    if retry.attempts == 1:
        return json.dumps({"loadBalancingConfig": _BALANCING, "methodConfig": []})
    names = [
        {"service": f"tessera.v1.{service}", "method": method}
        for service, methods in RETRIED_METHODS.items()
        for method in methods
    ]
    policy = {
        "maxAttempts": min(retry.attempts, GRPC_MAX_ATTEMPTS),
        "initialBackoff": _duration(retry.initial_backoff_s),
        "maxBackoff": _duration(retry.max_backoff_s),
        "backoffMultiplier": retry.multiplier,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {"loadBalancingConfig": _BALANCING, "methodConfig": [{"name": names, "retryPolicy": policy}]}
    )


def _duration(seconds: float) -> str:
    """Seconds as a protobuf JSON Duration ("0.1s")."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def call_timeout(timeout: float | None) -> float | None:
    """A method's `timeout=` as gRPC takes it. One method or another took 0 as the default or
    as a deadline already past, which the asyncio channel did not always fail: every method
    refuses 0, as it does what gRPC cannot keep (negative, NaN, inf, past its clock, which it
    fails at once with a bare DEADLINE_EXCEEDED), with ValueError before anything is sent."""
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout must be seconds above 0 (at most {MAX_TIMEOUT_TEXT}), got {timeout}; "
            "None takes the client's default (no deadline for a watch or a stream)"
        )
    return timeout


def timeout_or(timeout: float | None, default: float) -> float:
    """A method's `timeout=`, checked as call_timeout does, else `default` (`timeout or
    default` took 0 for the default)."""
    checked = call_timeout(timeout)
    return default if checked is None else checked


def check_keepalive(seconds: float, text: str | None = None) -> float:
    """`seconds` between keepalive pings, as a float; ValueError, showing `text` (what was
    written, where it was read) or else `seconds`, unless 0 (no pings) or from MIN_KEEPALIVE_S to
    MAX_KEEPALIVE_S (NaN and infinities too). A bool is refused: True would be 1 s, the most
    pings there are, where a reader expects "the default"."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(
            "seconds between keepalive pings must be a number: 0 (no pings) or from "
            f"{MIN_KEEPALIVE_S:g} to {MAX_KEEPALIVE_S:g}; None takes the default "
            f"({DEFAULT_KEEPALIVE_S:g} s), got {seconds!r}"
        )
    if seconds != 0 and not MIN_KEEPALIVE_S <= seconds <= MAX_KEEPALIVE_S:
        raise ValueError(
            f"seconds between keepalive pings must be 0 (no pings) or from {MIN_KEEPALIVE_S:g} to "
            f"{MAX_KEEPALIVE_S:g} (tesserad refuses pings more often than twice a second), "
            f"got {seconds if text is None else repr(text)}"
        )
    return float(seconds)


def resolve_keepalive(keepalive: float | None) -> float:
    """Seconds between keepalive pings: `keepalive` given, else TESSERA_KEEPALIVE_S from the
    environment, else DEFAULT_KEEPALIVE_S; 0 turns pings off. ValueError, naming where the value
    came from, for one that `check_keepalive` refuses."""
    if keepalive is not None:
        try:
            return check_keepalive(keepalive)
        except ValueError as err:
            raise ValueError(f"keepalive: {err}") from None
    text = os.environ.get(KEEPALIVE_ENV, "").strip()
    if not text:
        return DEFAULT_KEEPALIVE_S
    try:
        return check_keepalive(parse_seconds(text), text)
    except ValueError as err:
        raise ValueError(f"{KEEPALIVE_ENV}: {err}") from None


def parse_seconds(text: str) -> float:
    """`text` as a number, NaN when it is none (for the range checks to refuse it)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def keepalive_options(
    interval_s: float, timeout_s: float, without_calls: bool = False
) -> list[tuple[str, Any]]:
    """gRPC channel arguments that ping the daemon after `interval_s` of silence on the connection
    and drop it when a ping is not answered within `timeout_s` (calls on it fail UNAVAILABLE);
    with `without_calls`, also while no call is in flight. `interval_s` 0: no arguments (no pings)."""
    if interval_s == 0:
        return []
    return [
        ("grpc.keepalive_time_ms", round(interval_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(timeout_s * 1000)),
        # One ping is in flight at a time: a flow-control ping sent just before the connection
        # went silent holds the keepalive back until it times out (60 s by default).
        ("grpc.http2.ping_timeout_ms", round(timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", int(without_calls)),
        # gRPC stops pinging after 2 pings while it sends no data (a watch sends none after its
        # request) unless told not to (grpc/grpc#25722).
        ("grpc.http2.max_pings_without_data", 0),
    ]


def resolve_target(target: str | None) -> str:
    """The target given, else TESSERA_TARGET from the environment, else DEFAULT_TARGET (as
    `tessera` takes its --target). ValueError when the target given or TESSERA_TARGET is not a
    gRPC target with a port (`check_target`)."""
    if target is not None:
        return check_target(target, "as the client's target", "tls=True")
    from_env = os.environ.get(TARGET_ENV)
    return check_target(from_env, f"in env {TARGET_ENV}", "tls=True") if from_env else DEFAULT_TARGET


def check_target(text: str, where: str, tls_option: str) -> str:
    """`text` when it is a gRPC target, never a URL, with a host and a port (gRPC resolves
    "http://host:port" as a host name, and dials 443 without a port); else ValueError saying the form, ending with
    `where` the target was given. `tls_option`: what turns TLS on there, for an https URL.
    TypeError, in the same words, for a target that is not a string (a port given as a number)."""
    if not isinstance(text, str):
        raise TypeError(
            f"the target must be a string, HOST:PORT (e.g. {DEFAULT_TARGET}), not {type(text).__name__}, {where}"
        )
    default_port = DEFAULT_TARGET.rsplit(":", 1)[1]
    if not text:
        raise ValueError(f"the target is empty: write HOST:PORT, e.g. {DEFAULT_TARGET}, {where}")
    if text.startswith(("http://", "https://")):
        host = text.split("://", 1)[1].split("/", 1)[0]
        example = host if ":" in host else f"{host}:{default_port}"
        tls = f" (with {tls_option} for TLS)" if text.startswith("https://") else ""
        raise ValueError(
            f"{text!r} is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. {example}{tls}, {where}"
        )
    if is_digits(text):
        default_host = DEFAULT_TARGET.rsplit(":", 1)[0]
        raise ValueError(f"{text!r} has no host: write HOST:PORT, e.g. {default_host}:{text}, {where}")
    if ":" not in text:
        raise ValueError(f"{text!r} has no port: write HOST:PORT, e.g. {text}:{default_port}, {where}")
    return text


def resolve_token(token: str | None) -> str | None:
    """The token given, else TESSERA_TOKEN from the environment, else None; without the
    whitespace around it (a token read from a file or a secret often ends in a newline).

    ValueError, never showing the token, when it holds a character a gRPC header cannot
    carry: gRPC would fail every call with a bare INTERNAL "Invalid metadata".
    """
    token = (token if token is not None else os.environ.get(TOKEN_ENV, "")).strip()
    if not token:
        return None
    if not all(" " <= char <= "~" for char in token):
        raise ValueError(
            f"the token (--token or {TOKEN_ENV}) holds a character other than printable ASCII, "
            "which no gRPC header can carry; copy it again as `tesserad tokens add` printed it"
        )
    return token


def _channel_options(tls: TLS | None, retry: RetryPolicy, keepalive_s: float) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        *keepalive_options(keepalive_s, min(keepalive_s, KEEPALIVE_TIMEOUT_S)),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.primary_user_agent", "tessera-client/0.1"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retry)),
        # gRPC keeps a call's request for a retry only up to this size (256 KiB by default):
        # a large Predict batch is retried like a small one.
        ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
        # gRPC waits up to 120 s between connection attempts to a daemon that stays away, and
        # fails calls at once meanwhile: a follow (or a replica) would see a restarted daemon
        # minutes late, or give up on it while it answers again.
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        # gRPC's name for how long a connection attempt may take, its HTTP/2 SETTINGS included.
        ("grpc.min_reconnect_backoff_ms", round(CONNECT_TIMEOUT_S * 1000)),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


class _RequestsStopped(Exception):
    """What a stopped _Requests raises to gRPC's sending thread: gRPC cancels a call whose
    requests raise (grpc/_channel.py, "Exception iterating requests!"), where a StopIteration
    half-closes it, and the daemon would take the requests sent so far as all of them."""


class _WithoutStoppedRequests(logging.Filter):
    """Drops gRPC's log record of a stopped _Requests (logged with its traceback): the call
    was cut short on purpose, and the caller has its own exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _RequestsStopped))


_STOPPED_REQUESTS_FILTER = _WithoutStoppedRequests()


class _Requests:
    """A stream's requests as gRPC takes them, keeping the exception that making one raised (the
    caller's progress callback, an item that cannot be encoded): gRPC drops it and fails the
    call UNKNOWN "Exception iterating requests!" (blocking) or with a bare CancelledError
    (asyncio), where the caller must see their own error."""

    def __init__(self, requests: Iterable[Message]) -> None:
        self._requests = iter(requests)
        self.error: BaseException | None = None
        self._stopped = False

    def stop(self) -> None:
        """Ends the requests for a call being cancelled: gRPC's thread that sends them takes no
        more (reads no more of a file, calls no progress callback again), and cancels the call
        if it has not been already (a call started but not yet handed back when a
        KeyboardInterrupt came)."""
        logging.getLogger("grpc._channel").addFilter(_STOPPED_REQUESTS_FILTER)  # added once
        self._stopped = True

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        if self._stopped:
            raise _RequestsStopped("the call's requests were stopped")
        try:
            return next(self._requests)
        except StopIteration:
            raise
        except BaseException as error:
            self.error = error
            raise


T = TypeVar("T")

# What grpc.aio's request writer sets as a call's status when a write fails as the call ends,
# over the status the daemon sent (grpc/grpc#36066).
_WRITE_FAILED_DETAILS = "Internal error from Core"
# gRPC's words for a deadline the client's own core ended a call at, with no stream open on a
# connection ("Stream removed (Deadline Exceeded)" where one was). A status the daemon sent has
# the daemon's words (the batcher's, for a request whose deadline passed in its queue), and the
# channel's state says nothing of it: after a GOAWAY (a daemon draining) the channel has no
# connection ready while the calls in flight on the old one go on to their answers.
_OWN_DEADLINE_DETAILS = "Deadline Exceeded"
# How long a stream whose write failed waits for the daemon's status to be delivered: gRPC's
# core delivers it with the write's failure, so this bounds only a core that never does.
DAEMON_STATUS_WAIT_S = 5.0


def _settled(status: Coroutine[Any, Any, T]) -> T:
    """The value of a finished call's status coroutine (code(), details(), ...), which returns
    without waiting once the status is set."""
    try:
        status.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    status.close()
    raise RuntimeError("the call's status is not set yet")


def _write_failed(err: grpc.RpcError) -> bool:
    """Whether `err` is grpc.aio's own INTERNAL for a write that failed, not the daemon's word."""
    return err.code() == grpc.StatusCode.INTERNAL and err.details() == _WRITE_FAILED_DETAILS


class _DaemonStatus:
    """The status the daemon ended a streaming call with, kept as it is set: grpc.aio's request
    writer puts its own INTERNAL "Internal error from Core" over it when a write in flight fails
    as the call ends, losing the daemon's code, message and trailers (the blocking channel keeps
    them). gRPC runs a call's done callbacks each time a status is set on it."""

    def __init__(self, call: Any) -> None:
        self._error: grpc.aio.AioRpcError | None = None
        self._set = asyncio.Event()
        call.add_done_callback(self._keep)

    def _keep(self, call: Any) -> None:
        error = grpc.aio.AioRpcError(
            _settled(call.code()),
            _settled(call.initial_metadata()),
            _settled(call.trailing_metadata()),
            _settled(call.details()),
            _settled(call.debug_error_string()),
        )
        if not _write_failed(error):
            self._error = error
            self._set.set()

    async def error(self, err: grpc.RpcError) -> grpc.RpcError:
        """`err`, unless it is grpc.aio's own write failure over the daemon's error: then that."""
        if not _write_failed(err):
            return err
        try:
            await asyncio.wait_for(self._set.wait(), DAEMON_STATUS_WAIT_S)
        except TimeoutError:
            return err
        if self._error is None or self._error.code() == grpc.StatusCode.OK:
            return err
        return self._error


async def _send(call: Any, feed: _Requests) -> None:
    """Write `feed`'s requests on a streaming `call`, then half-close it. Written here rather
    than by grpc.aio's own writer, which ends a failed write by putting its INTERNAL over the
    daemon's status (see _DaemonStatus) and then writes on: this one stops at the first write
    that fails, as the call has ended and its status says why."""
    try:
        for request in feed:
            await call.write(request)
        await call.done_writing()
    except asyncio.CancelledError:
        raise
    except BaseException:
        # A write that met the end of the call, or a request that could not be made (`feed`
        # keeps its exception for the caller): the call is cancelled for the latter, as gRPC does.
        if feed.error is not None:
            call.cancel()


class _Channel(ABC):
    """What both connections share: target, metadata, deadlines, the retry policy, and the
    stubs on a channel that the subclass opens (blocking or asyncio)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
        keepalive: float | None = None,
    ) -> None:
        """`target`: dialled as given; the clients check a user's with `resolve_target` first,
        while tesserad's replica.primary may name a host alone (gRPC dials 443, as behind a TLS
        ingress). `options`: gRPC channel arguments beside the SDK's own. `keepalive`: seconds
        between pings on a silent connection while a call is in flight (see `resolve_keepalive`)."""
        if not all(0 < seconds <= MAX_TIMEOUT_S for seconds in (timeout, transfer_timeout)):
            raise ValueError(
                f"timeouts must be a finite number of seconds above 0 (at most {MAX_TIMEOUT_TEXT}), "
                f"got {timeout} and {transfer_timeout}"
            )
        self.target = target
        self.tls = TLS() if tls is True else (tls or None)
        token = resolve_token(token)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self.retry = retry or RetryPolicy()
        self.keepalive = resolve_keepalive(keepalive)
        channel_options = [*_channel_options(self.tls, self.retry, self.keepalive), *options]
        credentials = None if self.tls is None else self.tls.credentials()
        self.closed = False
        # Whether a call of this client has had a response, or a status only a server sends: a
        # later call that passes its own deadline with no connection ready met a daemon that
        # stopped answering, not a silent port.
        self.answered = False
        self.channel = self._open(self.target, credentials, channel_options)
        self._stubs = {name: stub(self.channel) for name, stub in _STUBS.items()}

    @abstractmethod
    def _open(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> Any:
        """The gRPC channel (credentials None: plaintext)."""

    def method(self, service: str, method: str) -> Any:
        if self.closed:
            # gRPC's own words differ between its channels (a ValueError, an aio UsageError).
            raise ValueError(
                f"this client of {self.target} is closed; make a new one to call the daemon again"
            )
        return getattr(self._stubs[service], method)

    def error(
        self, err: grpc.RpcError | asyncio.CancelledError, feed: _Requests | None = None
    ) -> BaseException:
        """What a call that `err` ended raises: the exception that making its requests raised;
        Cancelled, saying so, for a call that close() cut (an asyncio channel raises a bare
        CancelledError for one, as if the caller's own task were cancelled, which stays one);
        Unavailable for a stream whose requests could not be sent (the asyncio channel cancels
        it, with a bare CancelledError too, where the connection broke under them); else the
        SDK's error for the status (for no daemon reached, or one that answered before and no
        longer does, saying what to check)."""
        if feed is not None and feed.error is not None:
            return feed.error
        if isinstance(err, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return err
            if self.closed:
                return Cancelled(f"the client of {self.target} was closed while the call was in flight")
            if feed is not None:
                return Unavailable(
                    f"the connection to {self.target} broke while the call's requests were sent"
                )
            return err
        if self.closed and err.code() == grpc.StatusCode.CANCELLED:
            return Cancelled(f"the client of {self.target} was closed while the call was in flight")
        if sent_by_a_server(err.code(), err.details()):
            # A refusal is an answer too: a client whose every call was refused reached the daemon.
            self.answered = True
        error = error_from_rpc(err)
        if (
            isinstance(error, DeadlineExceeded)
            and err.details() == _OWN_DEADLINE_DETAILS
            and not self.closed
            and not self._connected()
        ):
            # gRPC's words are a bare "Deadline Exceeded", both where the call waited for a
            # connection all along and where the daemon it reached is draining (GOAWAY: the
            # channel's connection is gone while the call on it goes on to its deadline).
            message = (
                reached_before_message(self.target, error.daemon_message)
                if self.answered
                else silent_message(
                    self.target, "before the call's deadline", error.daemon_message, accepted=False
                )
            )
            return NotAnswering(message, error.trailers)
        return explain_unreachable(
            error,
            self.target,
            self.tls is not None,
            client_cert=self.tls is not None and self.tls.cert_file is not None,
        )

    @abstractmethod
    def _connected(self) -> bool:
        """Whether the channel has a connection ready for calls."""


class _HeardState:
    """What gRPC's polling thread last told of a channel's state. It refers to no channel: the
    thread holds it, and a client dropped without close() must leave its channel free to be
    collected, which unsubscribes it and so ends the thread."""

    def __init__(self) -> None:
        self.heard = threading.Event()
        self.state: grpc.ChannelConnectivity | None = None

    def __call__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state
        self.heard.set()


class _ChannelState:
    """Whether a blocking channel has a connection ready, from one subscription held from the
    first question until the channel closes. A blocking channel tells its state only to
    subscribers, through a thread gRPC starts that checks the state first and then polls it: a
    check on a closed channel raises in that thread ("Cannot invoke RPC: Channel closed!"), so
    the channel may close only once the first check is done, and a subscription per question
    would leave a thread starting late on a busy machine after each. The thread wakes five times
    a second while subscribed: only in a client that has had a call end at its own deadline."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._heard: _HeardState | None = None
        self._ended = False

    def ready(self) -> bool:
        with self._lock:
            if self._ended:
                return False
            if self._heard is None:
                self._heard = _HeardState()
                self._channel.subscribe(self._heard, try_to_connect=False)
            heard = self._heard
        heard.heard.wait(STATE_CHECK_S)
        return heard.state == grpc.ChannelConnectivity.READY

    def end(self) -> None:
        """Before the channel closes: lets gRPC's thread finish its first check."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            heard = self._heard
        if heard is not None:
            heard.heard.wait(STATE_CHECK_S)
            self._channel.unsubscribe(heard)


class Connection(_Channel):
    """A blocking channel to tesserad: the four kinds of gRPC call, with the SDK's deadlines,
    metadata and errors (`tessera.calls` builds every client method on these)."""

    def _open(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> Any:
        if credentials is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            channel = grpc.secure_channel(target, credentials, options=options)
        self._state = _ChannelState(channel)
        return channel

    def unary(self, service: str, method: str, request: Message, timeout: float | None) -> Any:
        """The response of a unary call; `timeout` None: the client's (gRPC retries the
        RETRIED_METHODS within it)."""
        try:
            response = self.method(service, method)(
                request,
                timeout=self.timeout if timeout is None else call_timeout(timeout),
                metadata=self.metadata,
            )
        except grpc.RpcError as err:
            raise self.error(err) from None
        self.answered = True
        return response

    def server_stream(
        self, service: str, method: str, request: Message, timeout: float | None
    ) -> Generator[Any]:
        """The responses of a server stream; `timeout` None: no deadline. Closing it cancels the call."""
        call = self.method(service, method)(request, timeout=call_timeout(timeout), metadata=self.metadata)
        try:
            for response in call:
                self.answered = True
                yield response
        except grpc.RpcError as err:
            raise self.error(err) from None
        finally:
            call.cancel()

    def client_stream(self, service: str, method: str, requests: Iterable[Message], timeout: float) -> Any:
        """The response of a client stream fed from `requests`. A KeyboardInterrupt (or any
        exception) while it waits cancels the call, so the daemon keeps nothing of it.

        Made as a future, on the channel's own completion queue: the blocking form gives the call
        a queue of its own that a KeyboardInterrupt destroys while gRPC's thread still sends
        requests on it, which aborts the process ("Check failed: grpc_cq_begin_op"). Its end is
        awaited on a queue of this call's own, so that the KeyboardInterrupt is raised there, not
        inside gRPC's Python code holding a lock its threads share."""
        feed = _Requests(requests)
        ended: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Made inside the try: a KeyboardInterrupt just after the call starts cancels it too.
        future = None
        try:
            future = self.method(service, method).future(
                feed, timeout=call_timeout(timeout), metadata=self.metadata
            )
            future.add_done_callback(ended.put)
            ended.get()
            response = future.result()
        except grpc.RpcError as err:
            raise self.error(err, feed) from None
        except BaseException:
            # Cancelled before its requests stop, which cancels a call started but not yet
            # handed back (`future` None) as gRPC's sending thread next asks for a request.
            if future is not None:
                future.cancel()
            feed.stop()
            raise
        self.answered = True
        return response

    def bidi_stream(
        self, service: str, method: str, requests: Iterable[Message], timeout: float | None
    ) -> Generator[Any]:
        """The responses of a bidirectional stream fed from `requests`; `timeout` None: no deadline."""
        feed = _Requests(requests)
        # Made inside the try, as client_stream's call is: a stopped feed cancels one started but
        # not yet handed back.
        call = None
        try:
            call = self.method(service, method)(feed, timeout=call_timeout(timeout), metadata=self.metadata)
            for response in call:
                self.answered = True
                yield response
        except grpc.RpcError as err:
            raise self.error(err, feed) from None
        finally:
            # Cancelled first: a stream cut short must not end as if its requests were all sent.
            if call is not None:
                call.cancel()
            feed.stop()

    def _connected(self) -> bool:
        return self._state.ready()

    def close(self) -> None:
        self.closed = True
        self._state.end()
        self.channel.close()


class AioConnection(_Channel):
    """An asyncio channel to tesserad with the same calls and rules as `Connection`."""

    def _open(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> Any:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    def method(self, service: str, method: str) -> Any:
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            # gRPC's words for it are "Event loop is closed" or a Future "attached to a different loop".
            raise RuntimeError(
                f"this asyncio client of {self.target} can only be used in the event loop it was made "
                "in; make one client per event loop"
            )
        return super().method(service, method)

    async def unary(self, service: str, method: str, request: Message, timeout: float | None) -> Any:
        """The response of a unary call; `timeout` None: the client's."""
        try:
            response = await self.method(service, method)(
                request,
                timeout=self.timeout if timeout is None else call_timeout(timeout),
                metadata=self.metadata,
            )
        except (grpc.RpcError, asyncio.CancelledError) as err:
            raise self.error(err) from None
        self.answered = True
        return response

    async def server_stream(
        self, service: str, method: str, request: Message, timeout: float | None
    ) -> AsyncGenerator[Any]:
        """The responses of a server stream; `timeout` None: no deadline. Closing it cancels the call."""
        call = self.method(service, method)(request, timeout=call_timeout(timeout), metadata=self.metadata)
        try:
            async for response in call:
                self.answered = True
                yield response
        except (grpc.RpcError, asyncio.CancelledError) as err:
            raise self.error(err) from None
        finally:
            call.cancel()

    async def client_stream(
        self, service: str, method: str, requests: Iterable[Message], timeout: float
    ) -> Any:
        """The response of a client stream fed from `requests`; the daemon's status when it
        ends the call before every request is sent (see _DaemonStatus)."""
        feed = _Requests(requests)
        call = self.method(service, method)(timeout=call_timeout(timeout), metadata=self.metadata)
        status = _DaemonStatus(call)
        writer = asyncio.create_task(_send(call, feed))
        try:
            response = await call
        except grpc.RpcError as err:
            raise self.error(await status.error(err), feed) from None
        except asyncio.CancelledError as err:
            raise self.error(err, feed) from None
        finally:
            writer.cancel()
        self.answered = True
        return response

    async def bidi_stream(
        self, service: str, method: str, requests: Iterable[Message], timeout: float | None
    ) -> AsyncGenerator[Any]:
        """The responses of a bidirectional stream fed from `requests`; `timeout` None: no
        deadline. Its error is the daemon's status, as for `client_stream`."""
        feed = _Requests(requests)
        call = self.method(service, method)(timeout=call_timeout(timeout), metadata=self.metadata)
        status = _DaemonStatus(call)
        writer = asyncio.create_task(_send(call, feed))
        try:
            async for response in call:
                self.answered = True
                yield response
        except grpc.RpcError as err:
            raise self.error(await status.error(err), feed) from None
        except asyncio.CancelledError as err:
            raise self.error(err, feed) from None
        finally:
            writer.cancel()
            call.cancel()

    def _connected(self) -> bool:
        return self.channel.get_state() == grpc.ChannelConnectivity.READY  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.closed = True
        await self.channel.close()
