"""One exception per gRPC status code, each carrying the server's message.

Every failed call raises a subclass of `TesseraError`; catch the base class to handle any
failure, or a subclass (`NotFound`, `InvalidArgument`, ...) for one kind. A job that ended
without succeeding raises `JobFailed` (`JobCancelled` for a cancelled one) from `Job.wait()`;
`Error` is the base of both, for code that handles whatever the SDK raises.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc

from tessera.sdk_words import in_sdk_words


class Error(Exception):
    """The base of the SDK's own exceptions: `TesseraError` (a call failed), `JobFailed` (a
    job ended without succeeding) and `SweepFailed` (a sweep did)."""


class TesseraError(Error):
    """A call to tesserad failed; `code` is the gRPC status name, `message` the server's words
    with the fix they end in said in the SDK's words ("`client.models.versions(name)` lists
    them"), and `daemon_message` the words as the server sent them, naming RPCs
    ("ListVersions lists them"), as a tool that says its own words (the CLI) reads them."""

    code: str = "UNKNOWN"
    # Whether the message may be tesserad's refusal with a fix to say in SDK words.
    says_a_fix: bool = True

    def __init__(self, message: str, trailers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.daemon_message = message
        self.message = in_sdk_words(message) if self.says_a_fix else message
        # The call's trailing metadata: where a call says more than its status (such as how
        # much of a LogMetricsStream was stored).
        self.trailers: dict[str, str] = dict(trailers or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Cancelled(TesseraError):
    """The call was cancelled (by the client, or the server gave up on it)."""

    code = "CANCELLED"


class Unknown(TesseraError):
    """The server failed in a way gRPC could not classify."""

    code = "UNKNOWN"


class InvalidArgument(TesseraError):
    """The request is malformed; the message names the field and what is expected."""

    code = "INVALID_ARGUMENT"


class DeadlineExceeded(TesseraError):
    """The call's deadline passed before the server answered."""

    code = "DEADLINE_EXCEEDED"


class NotAnswering(DeadlineExceeded):
    """The daemon did not answer at all, so that a deadline passed: no connection to it was ready
    at the call's deadline, or a follower's polls went unanswered for minutes. The message says
    what to check; a longer timeout is not the fix."""


class StillRunning(DeadlineExceeded, TimeoutError):
    """`Job.wait(timeout=...)` (`Sweep.wait`) ran out of time while the job (sweep) had not
    ended; it goes on (`job_id`, `sweep_id` names it): wait again, or cancel it. A
    DeadlineExceeded, as the deadline of a call is, and a TimeoutError, as a timeout of the
    standard library's waits is."""

    def __init__(
        self,
        message: str,
        trailers: Mapping[str, str] | None = None,
        *,
        job_id: str = "",
        sweep_id: str = "",
    ) -> None:
        super().__init__(message, trailers)
        self.job_id = job_id
        self.sweep_id = sweep_id


class NotFound(TesseraError):
    """A named model, version, dataset, job or run does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(TesseraError):
    """Something with that name already exists."""

    code = "ALREADY_EXISTS"


class PermissionDenied(TesseraError):
    """The caller's token may not do this."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(TesseraError):
    """A quota, size limit or queue is full; the message gives the numbers."""

    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(TesseraError):
    """The system is not in a state that allows the call (e.g. deleting a deployed version)."""

    code = "FAILED_PRECONDITION"


class Aborted(TesseraError):
    """The call was aborted, typically by a concurrent change; retrying may succeed."""

    code = "ABORTED"


class OutOfRange(TesseraError):
    """A value is past the valid range."""

    code = "OUT_OF_RANGE"


class Unimplemented(TesseraError):
    """The daemon does not offer this call (an older version, or a feature not built in)."""

    code = "UNIMPLEMENTED"
    # gRPC's own "Method not found: tessera.v1.Training/SubmitSweep" (a daemon older than the
    # SDK) names the method the SDK called, which no SDK call would fix.
    says_a_fix = False


class Internal(TesseraError):
    """The daemon hit a bug; the message carries an error id found in the daemon's log."""

    code = "INTERNAL"


class Unavailable(TesseraError):
    """The daemon cannot be reached or is shutting down; retrying later may succeed."""

    code = "UNAVAILABLE"


class DataLoss(TesseraError):
    """Bytes were lost or corrupted (a checksum did not match)."""

    code = "DATA_LOSS"


class Unauthenticated(TesseraError):
    """No valid token was sent; pass `token=` or set TESSERA_TOKEN."""

    code = "UNAUTHENTICATED"


class JobFailed(Error):
    """`Job.wait()` found the job ended without succeeding; `job` holds its final state. No call
    failed, so it is no TesseraError (it has no status `code`); `Error` is the base of both. Pickled
    (as a multiprocessing pool hands a worker's exception to its parent), `job` becomes that
    state alone, the `tessera.v1` Job message (`job.info`): a Job holds the client's channel,
    which no pickle can carry."""

    def __init__(self, job: object, message: str) -> None:
        super().__init__(message)
        self.job = job

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own gives (message,) to a class that takes (job, message), and the job's channel.
        state = {name: value for name, value in vars(self).items() if name != "job"}
        return type(self), (getattr(self.job, "info", self.job), *self.args), state


class JobCancelled(JobFailed):
    """`Job.wait()` found the job ended CANCELLED (by `cancel()`, the CLI's `jobs cancel`, or a
    sweep's cancel): a JobFailed, so that code catching that catches it too."""


class StoreDamaged(Error):
    """`tessera admin verify` found damage in the daemon's store: the report was printed, and the
    CLI exits 1. No call failed, so it is no TesseraError."""


class SweepFailed(Error):
    """`Sweep.wait()` found the sweep ended without succeeding (its `info.error` says why);
    `sweep` holds its final state. As JobFailed: no TesseraError, and pickled, `sweep` becomes
    that state alone, the `tessera.v1` Sweep message."""

    def __init__(self, sweep: object, message: str) -> None:
        super().__init__(message)
        self.sweep = sweep

    def __reduce__(self) -> tuple[Any, ...]:
        state = {name: value for name, value in vars(self).items() if name != "sweep"}
        return type(self), (getattr(self.sweep, "info", self.sweep), *self.args), state


class SweepCancelled(SweepFailed):
    """`Sweep.wait()` found the sweep ended CANCELLED (by `cancel()` or `tessera sweeps cancel`)."""


class StoppedFollowing(KeyboardInterrupt):
    """Ctrl-C while following a job or a sweep: following stops, the job or sweep goes on; the
    message says how to follow it again or stop it."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread where it is, as Ctrl-C raises KeyboardInterrupt (the
    CLI's handler raises it): the temp file of a download or backup is removed on the way out,
    where the default action of SIGTERM would leave it behind. Raised while following a job or a
    sweep, its message says, as StoppedFollowing's does, how to follow it again or stop it."""


ERROR_BY_CODE: dict[grpc.StatusCode, type[TesseraError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}

# gRPC's words when no connection could be made at all, as opposed to a daemon answering
# UNAVAILABLE itself (shutting down, a version unloading).
UNREACHABLE = re.compile(r"backends failing|failed to connect|errors resolving", re.IGNORECASE)


def stream_reset(error: TesseraError) -> bool:
    """Whether `error` is gRPC's for a stream that the other end, or a proxy between, reset
    (HTTP/2 RST_STREAM: "Received RST_STREAM with error code 2" is INTERNAL, code 8 CANCELLED), as
    a daemon restarting or a proxy dropping its upstream does, not the daemon's own INTERNAL (a
    bug, with an error id, which a retry meets again)."""
    return isinstance(error, Internal | Cancelled) and "RST_STREAM" in error.daemon_message


def reached_no_daemon(error: TesseraError) -> bool:
    """Whether `error` is gRPC's for a call that found no connection: none of it was sent."""
    return isinstance(error, Unavailable) and UNREACHABLE.search(error.daemon_message) is not None


# Codes gRPC's client makes itself: no connection, its own deadline, a cancel, its own message
# size limits, a request iterator that raised, a frame it could not read.
_CLIENT_MADE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
# Also no proof: another gRPC service on the port, or a proxy with no route (Envoy), answers
# UNIMPLEMENTED; so does a tesserad older than the SDK for a method added since, which is taken
# for no tesserad too, on the safe side.
_NOT_TESSERAD_PROOF = _CLIENT_MADE_CODES | {grpc.StatusCode.UNIMPLEMENTED}
# gRPC's words for a status it read from an HTTP answer (401, 403, 404...) of a server that is
# no gRPC server: another service's port, a proxy.
_HTTP_STATUS = re.compile(r"^Received http2 header with status: \d+")


def sent_by_a_server(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a call's status `code` (with `details`) can only have come from tesserad
    answering the call (NOT_FOUND, INVALID_ARGUMENT, ...), not from gRPC's client, nor from
    another server that does not implement it."""
    return code not in _NOT_TESSERAD_PROOF and _HTTP_STATUS.match(details or "") is None


# The SDK's words for the settings a message about an unreachable daemon points at; the CLI
# says its flags instead (tessera.rpc_commands).
TARGET_WORDS = "`target=`"
TLS_WORDS = "`tls=` (a tessera.TLS, or True for the system's CAs)"
TLS_CA_WORDS = "`TLS(ca_file=)`"
TLS_NAME_WORDS = "`TLS(server_name=)`"
TLS_CLIENT_WORDS = "`TLS(cert_file=, key_file=)`"

# How long a client waits for a connection to answer HTTP/2 (its SETTINGS frame) before the
# attempt fails and calls waiting on it fail UNAVAILABLE: gRPC's own 20 s let a port that takes
# connections and says nothing (another service's, a proxy's) hold a call to its whole deadline.
# Ample for a TLS handshake on a slow link; a daemon's gRPC core answers at once, however busy.
CONNECT_TIMEOUT_S = 10.0
# gRPC's words when what answered at the address speaks HTTP/1.x, not HTTP/2.
_HTTP1_PEER = re.compile(r"connect an http1\.x server", re.IGNORECASE)
# gRPC's words when the host name in the address does not resolve.
_UNRESOLVED = re.compile(r"errors resolving|dns resolution failed|name or service not known", re.IGNORECASE)
# gRPC's words when a connection was taken but no HTTP/2 came back on it within CONNECT_TIMEOUT_S.
_NO_SETTINGS = re.compile(r"before receiving SETTINGS frame", re.IGNORECASE)
# OpenSSL's words when a TLS client's first bytes are answered in plaintext.
_PLAINTEXT_PEER = re.compile(r"wrong_version_number", re.IGNORECASE)
# gRPC's and OpenSSL's words when a daemon answered but the TLS handshake failed on its
# certificate, its name or this client's (the daemon's cluster_stats tells these apart too).
_HANDSHAKE = re.compile(r"handshake|certificate|hostname verification|ssl", re.IGNORECASE)
# gRPC's words for a connection closed before the daemon's first HTTP/2 frame. To a TLS client,
# whose handshake then ended on its side (one cut short says "Handshake read failed"), that is a
# daemon under mutual TLS refusing its certificate: under TLS 1.3 the daemon checks it once the
# client is done, and the alert it sends is lost with the connection.
_CLOSED = re.compile(r"socket closed", re.IGNORECASE)


# gRPC's words for the address that refused the connection, when that was its last error.
_REFUSED_AT = re.compile(
    r"(?:ipv4:(?P<ipv4>[0-9.]+)|ipv6:%5B(?P<ipv6>[0-9a-f:.]+)%5D):(?P<port>\d+): [^;]*connection refused",
    re.IGNORECASE,
)
# How long a check that something listens at a loopback address waits for the connection: one
# there is answered at once, so this bounds only a listener whose backlog is full, on the
# asyncio client's event loop too.
_LISTENER_PROBE_S = 0.2


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:  # an IPv6 address with a zone, never a loopback one
        return False


def listener_beside_refused(target: str, detail: str) -> str | None:
    """Where `detail`, gRPC's words, says one address of `target` refused the connection: another
    address its host resolves to that accepts one (as `HOST:PORT`), else None. gRPC names only the
    last address it tried: for `localhost` that may be ::1, where nothing listens, while the
    daemon on 127.0.0.1 closed the connection after the TLS handshake. Checked only for the
    `localhost` of this machine (every address it resolves to a loopback one), and where the
    refused address is one of them, at the target's port: elsewhere the refusal may be a proxy's
    (grpc_proxy), and a connection to a remote address may wait on the network."""
    refused = _REFUSED_AT.search(detail)
    host, _, port = target.removeprefix("dns:///").rpartition(":")
    if refused is None or refused["port"] != port or host.lower().rstrip(".") != "localhost":
        return None
    try:
        addresses = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return None
    resolved = {str(address[4][0]) for address in addresses}
    refused_ip = refused["ipv4"] or refused["ipv6"]
    if refused_ip not in resolved or not all(_loopback(ip) for ip in resolved):
        return None
    for family, kind, proto, _, address in addresses:
        ip = str(address[0])
        if ip == refused_ip:
            continue
        # No IPv6 on this machine (EAFNOSUPPORT), or no file descriptor left (EMFILE): then
        # the advice goes without this check.
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.settimeout(_LISTENER_PROBE_S)
                if probe.connect_ex(address) == 0:
                    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        except OSError:
            continue
    return None


def unreachable_message(
    target: str, detail: str, tls: bool, client_cert: bool = False, listener: str | None = None
) -> str:
    """What to check when no daemon answered at `target` (this client with TLS or not, and with
    a client certificate or not), then gRPC's own words, `detail`. `listener`: another address of
    the target's host that accepts connections where the one `detail` names refused them."""
    refused = _REFUSED_AT.search(detail)
    if tls and listener is not None and refused is not None:
        # A daemon listens there, so starting one is the wrong advice. Its own words are lost,
        # so each reason it can refuse a TLS client is as likely as the others.
        if client_cert:
            trust = (
                "where it does not trust this client's certificate (mutual TLS), check that the CA in its "
                f"security.tls_client_ca_file signed the one given as {TLS_CLIENT_WORDS}"
            )
        else:
            trust = (
                "where it requires a client certificate (mutual TLS), pass one signed by the CA in its "
                f"security.tls_client_ca_file as {TLS_CLIENT_WORDS}"
            )
        advice = (
            f"the daemon at {target} did not take this client's TLS connection: it accepts connections at "
            f"{listener} (gRPC's words are for {refused['ipv4'] or refused['ipv6']}, another address of the "
            f"host, where nothing listens); where it serves plaintext, connect without {TLS_WORDS}; where "
            f"another CA signed its certificate, give that CA as {TLS_CA_WORDS}; {trust}"
        )
    elif _UNRESOLVED.search(detail):
        advice = (
            f"the host name in {target} does not resolve: check it, or give the address tesserad "
            f"listens on as {TARGET_WORDS}"
        )
    elif _NO_SETTINGS.search(detail):
        return silent_message(target, f"within {CONNECT_TIMEOUT_S:g} s", detail, accepted=True)
    elif _PLAINTEXT_PEER.search(detail):
        advice = f"{target} answers in plaintext, not TLS: connect to it without {TLS_WORDS}"
    elif _HANDSHAKE.search(detail):
        # Something answers TLS there, so starting a daemon is the wrong advice.
        advice = (
            f"the TLS handshake with {target} failed: check that the CA given as {TLS_CA_WORDS} signed "
            f"the daemon's certificate, that the certificate names the host in {TARGET_WORDS} (or give "
            f"the name it has as {TLS_NAME_WORDS}), and, where the daemon asks for one (mutual TLS), a "
            f"client certificate it trusts as {TLS_CLIENT_WORDS}"
        )
    elif tls and _CLOSED.search(detail) and client_cert:
        # The TLS handshake went through, so starting a daemon is the wrong advice.
        advice = (
            f"the daemon at {target} may not trust this client's certificate (mutual TLS): it closed the "
            "connection after the TLS handshake, as tesserad does with a certificate its "
            "security.tls_client_ca_file did not sign; check that the CA there signed the one given as "
            f"{TLS_CLIENT_WORDS}"
        )
    elif tls and _CLOSED.search(detail):
        advice = (
            f"the daemon at {target} may require a client certificate (mutual TLS): it closed the "
            "connection after the TLS handshake, as tesserad does with a client that sends none; pass one "
            f"signed by the CA in its security.tls_client_ca_file as {TLS_CLIENT_WORDS}"
        )
    elif _HTTP1_PEER.search(detail):
        # Something listens there, so starting a daemon is the wrong advice: the dashboard's
        # port (8080) is the one a newcomer has just opened in a browser.
        advice = (
            f"{target} answers HTTP/1.x, so it is an HTTP port (the dashboard's, /metrics or the Open "
            "Inference Protocol over HTTP), not tesserad's gRPC address (`tesserad serve --listen`, "
            f"default 127.0.0.1:50051): pass that as {TARGET_WORDS}"
        )
    else:
        transport = (
            "this client uses TLS: a daemon serving plaintext does not answer it"
            if tls
            else f"this client sends plaintext: a daemon serving TLS needs {TLS_WORDS}"
        )
        advice = (
            f"is tesserad running at {target}? Start it with `tesserad serve` (`make run` in a checkout), "
            f"or give the address it listens on as {TARGET_WORDS}; {transport}"
        )
    return f"{advice}; gRPC said: {detail}"


def silent_message(target: str, within: str, detail: str, accepted: bool) -> str:
    """What to check when nothing at `target` answered gRPC `within` ("within 10 s"), then gRPC's
    own words, `detail`. `accepted`: whether gRPC's words say the connection was taken."""
    there = (
        "something there takes connections and sends no HTTP/2"
        if accepted
        else "no connection to it was ready: something there may take connections and send no HTTP/2, "
        "or drop them (a firewall)"
    )
    return (
        f"nothing at {target} answered gRPC {within}; is it a tesserad? {there}, as another service's "
        f"port or a proxy with nothing behind it does: check that {TARGET_WORDS} is the daemon's gRPC "
        f"address (`tesserad serve --listen`, default 127.0.0.1:50051); gRPC said: {detail}"
    )


def reached_before_message(target: str, detail: str) -> str:
    """What to check when the daemon at `target`, which answered this client before, had no
    connection ready when a call's own deadline ended it (a daemon shutting down sends GOAWAY and
    takes no new connections), then gRPC's own words, `detail`."""
    return (
        f"the daemon at {target} was reached before, and no connection to it was ready at the call's "
        "deadline: it may be shutting down (a daemon told to stop takes no new connections while it "
        "finishes the calls it has) or have stopped; check that tesserad runs there, and call again "
        f"once it answers; gRPC said: {detail}"
    )


def explain_unreachable(
    error: TesseraError, target: str, tls: bool, client_cert: bool = False
) -> TesseraError:
    """`error` saying what to check when gRPC's words say no daemon answered at `target`; else
    `error` itself (a daemon that answers UNAVAILABLE, shutting down, keeps its words)."""
    if not reached_no_daemon(error):
        return error
    # A plaintext client's advice already names the one reason an address that accepts its
    # connection fails it: a daemon serving TLS.
    listener = listener_beside_refused(target, error.daemon_message) if tls else None
    return Unavailable(
        unreachable_message(target, error.daemon_message, tls, client_cert, listener), error.trailers
    )


_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode, message: str, trailers: Mapping[str, str] | None = None) -> TesseraError:
    """The exception for a status code (Unknown for a code outside the table)."""
    return ERROR_BY_CODE.get(code, Unknown)(message, trailers)


def error_from_rpc(err: grpc.RpcError) -> TesseraError:
    """The SDK exception for a failed gRPC call (sync or asyncio)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else None
    # Pairs of key and value on both clients (the blocking one's are named tuples).
    metadata = cast(
        Iterable[tuple[str, Any]], err.trailing_metadata() if hasattr(err, "trailing_metadata") else ()
    )
    trailers = {key: value for key, value in metadata or () if isinstance(value, str)}
    return error_for(
        code, _client_limit_message(details) or details or str(code.name if code else "no message"), trailers
    )


# gRPC's words when a message passes this client's own size limit (the daemon names its setting).
_CLIENT_LIMIT = re.compile(r"CLIENT: (Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")


def _client_limit_message(details: str | None) -> str | None:
    """gRPC's message for a message over this client's limit, said with what to do; else None."""
    found = _CLIENT_LIMIT.search(details or "")
    if found is None:
        return None
    direction, size, limit = found.group(1), int(found.group(2)), int(found.group(3))
    if direction == "Sent":
        return (
            f"the request is {size:,} bytes, over the {limit:,} bytes this client "
            "sends in one message; send fewer rows per call (uploads and downloads go in chunks)"
        )
    return (
        f"the response is {size:,} bytes, over the {limit:,} bytes this client "
        "accepts in one message; ask for fewer rows per call, or smaller pages"
    )


def error_from_status_number(number: int, message: str) -> TesseraError:
    """The exception for a status carried inside a message (e.g. a PredictStream item)."""
    return error_for(_CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), message)
