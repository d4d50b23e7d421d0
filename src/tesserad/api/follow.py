"""A serving replica's link to its primary: follows Registry.WatchChanges into the followed
registry, fetches the versions the feed does not carry (Registry.GetVersion) and downloads
artifacts for the blob cache, and answers the RPCs a replica does not
serve (registry, datasets, training, system but GetServerInfo) with FAILED_PRECONDITION naming
the primary.

Readiness: the replica reports NOT_SERVING (gRPC health) until it has caught up with the
primary and loaded every deployed model's versions. When the primary goes away the replica
keeps serving what it holds and reconnects with backoff, resuming after the last change it
applied; when the primary answers that it never gave that change, or answers from a store of
another incarnation than the one followed (another registry: a backup restored, another data
directory, whatever its change numbers), the replica follows it from the start, serving what it
holds until the replay catches up, then dropping every model the primary did not give (as a
deletion would: requests get NOT_FOUND).

An answer only a fix at the primary cures (a refused token, DATA_LOSS for an artifact, a call it
does not take) is not retried within seconds: it is logged once per cause, told to callers, and
tried again every LASTING_RETRY_S, when the replica reconnects, and at once on SIGHUP (the
operator's word that the primary is fixed). The primary being unreachable, slow or failing
inside is retried soon, as before.

The stream is read on while its answers apply (PENDING_ANSWERS), and the primary's heartbeats on it
tell its newest change while none flows: what the replica routes by and what the primary has stay
known apart, for /metrics (tessera_replica_*) and systemd's STATUS= line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

import tessera.errors as sdk_errors
from tessera.transport import TLS, AioConnection, Connection, keepalive_options, resolve_token
from tessera.v1 import common_pb2
from tessera.v1 import registry_pb2 as pb
from tesserad.api.convert_inference import config_from_proto
from tesserad.api.convert_registry import architecture_to_dict, format_from_proto, signature_from_proto
from tesserad.api.tls import (
    CertificateError,
    check_certificate_window,
    load_client_key_pair,
    read_pem,
    unreadable_pem,
)
from tesserad.config import ReplicaSettings
from tesserad.errors import DataLoss, FailedPrecondition, Lasting, NotFound, TesseraError, Unavailable
from tesserad.replica.followed import FollowedModel, FollowedRegistry, FollowedVersion
from tesserad.replica.link import PrimaryLink
from tesserad.replica.refusals import REPLICA_HEADER
from tesserad.security.key_files import KeyFileModeError, check_key_file_mode
from tesserad.serving.registry_source import serving_signature
from tesserad.serving.service import DeploymentPlan, InferenceService
from tesserad.settings_checks import replica_tls_refusal
from tesserad.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 5.0
# Loads that failed while the primary could not be reached are looked at this often while
# connected, each tried again once its wait passed (InferenceService.retry_failed_loads: it
# doubles with each failure of the version in a row). A pass that raised waits the longer, doubling
# up to RETRY_MAX_S.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# Loads that failed for a cause only a fix at the primary cures (Lasting: a damaged artifact, a
# refused token) are tried again this often, and at once on SIGHUP or when the replica reconnects:
# often enough that a repair is picked up unattended, seldom enough that the log stays readable.
LASTING_RETRY_S = 300.0
# While the primary stays away the replica tries it every few seconds; the log says so once, then
# at most this often (with how long it has been away), each attempt between at DEBUG only.
LOST_REPEAT_S = 60.0
DOWNLOAD_CHUNK = 1 << 20
# The pings a daemon accepts from a replica or an SDK client, at most one per this many ms: half
# the shortest replica.keepalive_s and SDK keepalive (1 s), for the slack of the peers' timers.
MIN_PING_INTERVAL_MS = 500
# systemd's STATUS= line follows the link: at once when its state changes (lost, refused, following),
# else at most this often (a stream of changes would send a line each).
STATUS_REPEAT_S = 1.0
# Answers of the watch read and not yet applied, at most: the stream is read on while a change or a
# catch-up applies (loads there may take minutes), so that the primary's newest change, and how far
# behind this replica is, stay known; past this many the reading waits, the lag told already.
PENDING_ANSWERS = 1000
# The answers read, for the follower to apply in order; then None or the error the stream ended with.
_Answers = asyncio.Queue[pb.WatchChangesResponse | Exception | None]


def replica_keepalive(interval_s: float) -> list[tuple[str, Any]]:
    """gRPC channel arguments that ping the primary every `interval_s` and drop a connection that
    has not answered within as long again, also while no call is in flight (the download channel
    is idle between loads). Without them a connection the primary's side lost without a word (its
    host gone, a NAT or load balancer forgetting it) looks alive forever: the change stream, which
    only reads, would wait on it and never reach a primary that came back."""
    return keepalive_options(interval_s, interval_s, without_calls=True)


def followed_version(v: pb.ModelVersion) -> FollowedVersion:
    return FollowedVersion(
        version=v.version,
        format=format_from_proto(v.format),
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        signature=serving_signature(signature_from_proto(v.signature)),
        architecture=architecture_to_dict(v.architecture) if v.HasField("architecture") else None,
    )


def followed_model(state: pb.ModelServingState) -> FollowedModel:
    deployment = None
    if state.HasField("deployment"):
        d = state.deployment
        deployment = DeploymentPlan(
            routes=tuple((r.resolved_version, r.weight) for r in d.routes),
            shadow=(d.shadow.resolved_version, d.shadow.percent or 100) if d.HasField("shadow") else None,
        )
    versions = {v.version: followed_version(v) for v in state.versions}
    created_at = state.created_at.ToNanoseconds() / 1e9 if state.HasField("created_at") else 0.0
    return FollowedModel(
        state.latest_version,
        dict(state.aliases),
        deployment,
        versions,
        created_at,
        tuple(state.deployment.warnings),
        {version: config_from_proto(config) for version, config in state.serving_configs.items()},
    )


# The primary's answers that no retry soon can change: a damaged artifact, a refused token, a call
# it does not take from this replica at all (another kind of server, another version of tesserad,
# a replica itself).
_LASTING_ANSWERS = (
    sdk_errors.DataLoss,
    sdk_errors.Unauthenticated,
    sdk_errors.PermissionDenied,
    sdk_errors.InvalidArgument,
    sdk_errors.Unimplemented,
    sdk_errors.OutOfRange,
    sdk_errors.FailedPrecondition,
)

# Words in gRPC's connection errors -> the cause in a replica's client's words.
_CONNECTION_CAUSES = (
    ("connection refused", "nothing listens there (connection refused)"),
    ("dns resolution failed", "its name does not resolve"),
    ("name or service not known", "its name does not resolve"),
    ("handshake", "the TLS handshake failed (check replica.tls_ca_file and replica.tls_server_name)"),
    ("ssl", "the TLS handshake failed (check replica.tls_ca_file and replica.tls_server_name)"),
    ("certificate", "the TLS handshake failed (check replica.tls_ca_file and replica.tls_server_name)"),
    ("timed out", "it did not answer in time"),
    ("socket closed", "the connection was cut"),
    ("connection reset", "the connection was cut"),
)


class LastingDataLoss(DataLoss, Lasting):
    """The primary's copy of an artifact is damaged or missing."""


class LastingFailedPrecondition(FailedPrecondition, Lasting):
    """The primary refused this replica's token or its call."""


def _until_fixed(where: str, cause: str) -> str:
    minutes = LASTING_RETRY_S / 60
    return (
        f"{where}: {cause}; this replica tries again every {minutes:.0f} minutes, when it "
        "reconnects to the primary, and on SIGHUP"
    )


def lasting_answer(exc: sdk_errors.TesseraError) -> bool:
    """Whether the primary's answer lasts until someone fixes its cause there (see primary_error)."""
    return isinstance(exc, _LASTING_ANSWERS)


def primary_error(what: str, primary: str, exc: sdk_errors.TesseraError) -> TesseraError:
    """A failed call to the primary as the error this replica's caller gets: `what` failed, at
    which primary, and why in a few words, with the status the caller can act on. gRPC's own
    connection text (addresses, subchannel states) goes to the log, not to the caller.

    An answer that only a fix at the primary cures (a damaged artifact, a refused token, a call
    it does not know) is Lasting: the load is tried again rarely, not within seconds. Anything
    else (the primary unreachable, slow, overloaded or failing inside) is Unavailable and tried
    again soon."""
    where = f"{what} from the primary {primary}"
    if isinstance(exc, sdk_errors.NotFound):
        return NotFound(f"{where}: the primary no longer has it ({exc.daemon_message})")
    if isinstance(exc, sdk_errors.DataLoss):
        return LastingDataLoss(
            _until_fixed(
                where, f"the primary's copy is damaged or missing ({exc.daemon_message}); restore it there"
            )
        )
    if isinstance(exc, sdk_errors.Unauthenticated | sdk_errors.PermissionDenied):
        return LastingFailedPrecondition(
            _until_fixed(
                where, f"the primary refused this replica's token (replica.token_file): {exc.daemon_message}"
            )
        )
    if lasting_answer(exc):
        refusal = (
            f"the primary refused the call ({exc.code}: {exc.daemon_message}); check that it is a tesserad "
            "primary of this version"
        )
        return LastingFailedPrecondition(_until_fixed(where, refusal))
    if isinstance(exc, sdk_errors.Unavailable | sdk_errors.DeadlineExceeded):
        cause = connection_cause(exc)
        log.warning(
            "the primary did not answer",
            extra={"primary": primary, "cause": cause, "detail": grpc_words(exc)},
        )
        return Unavailable(
            f"{where}: {cause}; this replica serves what it holds and fetches the rest when the "
            "primary is back"
        )
    return Unavailable(f"{where}: the primary answered {exc.code}: {exc.daemon_message}")


def connection_cause(exc: sdk_errors.TesseraError) -> str:
    """Why the primary could not be reached, in a few words of a replica's (the SDK's message
    advises its own users: `make run`, target=)."""
    text = exc.daemon_message.lower()
    cause = next((words for key, words in _CONNECTION_CAUSES if key in text), None)
    if cause is not None:
        return cause
    return (
        "it did not answer in time"
        if isinstance(exc, sdk_errors.DeadlineExceeded)
        else "it cannot be reached"
    )


def grpc_words(exc: sdk_errors.TesseraError) -> str:
    """gRPC's own words for a failed call, without the advice the SDK puts before them."""
    return exc.daemon_message.rpartition("gRPC said: ")[2]


class _StoreReplaced(Exception):
    """The primary answered from a store of another incarnation than the one whose changes this
    replica holds (see FollowedRegistry.same_store)."""

    def __init__(self, followed: str, answered: str) -> None:
        super().__init__(followed, answered)
        self.followed = followed
        self.answered = answered


class PrimaryCertificateError(Exception):
    """The primary's TLS certificate does not verify (or its TLS handshake fails) with the
    replica's settings, or a replica.tls_* file cannot be used; the message names the setting
    to fix."""


class ReplicaTlsSettingsError(PrimaryCertificateError):
    """replica.tls_cert_file is set without replica.tls_key_file, or the reverse: wrong whatever
    the files hold."""


def check_replica_tls_files(settings: ReplicaSettings) -> ssl.SSLContext:
    """The replica.tls_* files checked (readable, the client certificate valid now and its key
    its own, kept from other users), as a client context; PrimaryCertificateError naming the setting otherwise. The
    files serve a replica's link to its primary and a primary's calls to its replicas."""
    refused = replica_tls_refusal(settings)
    if refused is not None:
        raise ReplicaTlsSettingsError(refused)
    ca, cert, key = settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
    try:
        # Each file read first: ssl's own errors name no file ("[Errno 2] No such file or directory").
        for setting, path in (
            ("replica.tls_ca_file", ca),
            ("replica.tls_cert_file", cert),
            ("replica.tls_key_file", key),
        ):
            if path is not None:
                read_pem(setting, path)
        try:
            context = ssl.create_default_context(cafile=None if ca is None else str(ca))
        except ssl.SSLError as exc:
            raise PrimaryCertificateError(
                f"replica.tls_ca_file {ca} holds no usable CA certificate ({exc.reason or exc}); point "
                "it at the PEM file of the CA that signed the primary's certificate"
            ) from None
        except OSError as exc:
            # Read above, then moved or removed before ssl loaded it (a rotation under way).
            if ca is None:
                raise
            raise unreadable_pem("replica.tls_ca_file", ca, exc) from None
        if cert is not None and key is not None:
            load_client_key_pair(context, "replica.tls_cert_file", cert, "replica.tls_key_file", key)
            check_certificate_window("replica.tls_cert_file", cert, read_pem("replica.tls_cert_file", cert))
            check_key_file_mode("replica.tls_key_file", key)
    except (CertificateError, KeyFileModeError) as exc:
        raise PrimaryCertificateError(str(exc)) from None
    return context


def check_primary_tls(settings: ReplicaSettings, timeout_s: float = 5.0) -> None:
    """One TLS handshake with the primary, checked as gRPC will check it; PrimaryCertificateError
    when it fails. A primary that cannot be reached now passes: the follower keeps trying, as
    for a plaintext primary. Runs at start, so a wrong CA or name stops the replica at once
    instead of leaving it NOT_SERVING with the reason in its log only."""
    # The files are checked whatever the target, so a bad one stops the start with its setting.
    context = check_replica_tls_files(settings)
    address = _host_and_port(settings.primary)
    if address is None:
        log.info(
            "the primary's certificate is checked at the first connection, not at start: its "
            "target is not host:port",
            extra={"primary": settings.primary},
        )
        return
    host, port = address
    context.set_alpn_protocols(["h2"])
    name = settings.tls_server_name or host
    try:
        connection = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        log.warning(
            "the primary cannot be reached to check its certificate; following it once it can",
            extra={"primary": settings.primary, "reason": str(exc)},
        )
        return
    with connection:
        try:
            context.wrap_socket(connection, server_hostname=name).close()
        except ssl.SSLCertVerificationError as exc:
            raise PrimaryCertificateError(
                f"the primary {settings.primary} presented a certificate that does not verify "
                f"({exc.verify_message}) for the name {name!r}; set replica.tls_ca_file to the CA "
                "that signed it and replica.tls_server_name to a name it holds"
            ) from None
        except (TimeoutError, ConnectionError) as exc:
            # A primary that is slow or going away, not one whose TLS is wrong.
            log.warning(
                "the primary's TLS handshake did not finish; following it once it does",
                extra={"primary": settings.primary, "reason": str(exc)},
            )
        except (ssl.SSLError, OSError) as exc:
            raise PrimaryCertificateError(
                f"the TLS handshake with the primary {settings.primary} failed ({exc}); check that "
                "it serves TLS (security.tls_cert_file there), and replica.tls_cert_file and "
                "replica.tls_key_file when it asks for a client certificate"
            ) from None


def _host_and_port(target: str) -> tuple[str, int] | None:
    """(host, port) of a host:port or [v6]:port target (dns:/// allowed); None for others."""
    text = target.removeprefix("dns:///")
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or "/" in text or (":" in host and not host.startswith("[")):
        return None
    return host.strip("[]"), int(port)


class Follower:
    def __init__(
        self,
        settings: ReplicaSettings,
        followed: FollowedRegistry,
        inference: InferenceService,
        advertise: str,
        set_ready: Callable[[bool], Awaitable[None]],
        serves_tls: bool,
        link: PrimaryLink,
        tell_status: Callable[[str], None],
    ) -> None:
        """`advertise`: the address this replica announces to its primary, `serves_tls` whether
        it serves TLS there (the primary asks it for statistics in the matching transport);
        `link`: where the stream's state is noted for /metrics; `tell_status`: where the link's
        state is told in a line (systemd's STATUS=)."""
        tls = None
        if settings.uses_tls:
            tls = TLS(
                settings.tls_ca_file,
                settings.tls_cert_file,
                settings.tls_key_file,
                settings.tls_server_name or None,
            )
        self._token_file = settings.token_file
        token = settings.token_file.read_text().strip() if settings.token_file else None
        self.primary = settings.primary
        # The replica's own keepalive, not the SDK's (nor TESSERA_KEEPALIVE_S from the environment).
        keepalive = replica_keepalive(settings.keepalive_s)
        self._watch = AioConnection(settings.primary, token=token, tls=tls, options=keepalive, keepalive=0)
        self._downloads = Connection(settings.primary, token=token, tls=tls, options=keepalive, keepalive=0)
        self._advertise = advertise
        self._present(self._watch.metadata)
        self._followed = followed
        self._inference = inference
        self._transport = pb.REPLICA_TRANSPORT_TLS if serves_tls else pb.REPLICA_TRANSPORT_PLAINTEXT
        # The primary's newest change, told as often as the connection is pinged: known while no
        # change flows (a stream that stalls), not only as far as the changes read.
        self._heartbeat_ms = round(settings.keepalive_s * 1000)
        self._set_ready = set_ready
        self._ready = False
        self._connected = False  # the current stream has delivered something
        self._link = link
        # Following failed for a cause of the replica's own (logged with its traceback): the next
        # stream that answers says that it follows again.
        self._failed = False
        # When the primary was lost (time.monotonic), while it stays away, and when that was
        # last logged at WARNING.
        self._lost_at: float | None = None
        self._lost_said_at = 0.0
        # Set by retry_now: the watch's wait ends, and loads the primary refused are tried again.
        self._wake = asyncio.Event()
        self._retry_lasting_now = asyncio.Event()
        self._tell_status = tell_status
        # The state (a word) and line last told, and when (time.monotonic); a line held back
        # meanwhile, told when its STATUS_REPEAT_S is up (else the status stays stale).
        self._told: tuple[str, str] = ("waiting", "")
        self._told_at = 0.0
        self._held: tuple[str, str] | None = None
        self._held_timer: asyncio.TimerHandle | None = None

    def fetch_version(self, model: str, version: int) -> FollowedVersion | None:
        """Version `version` of `model`'s record from the primary (runs on a request thread);
        None when the primary has no such version."""
        request = pb.GetVersionRequest(ref=common_pb2.VersionRef(model=model, version=version))
        try:
            record = self._downloads.unary("Registry", "GetVersion", request, None)
        except sdk_errors.NotFound:
            return None
        except sdk_errors.TesseraError as exc:
            raise primary_error(f"cannot look up version {version} of {model!r}", self.primary, exc) from None
        return followed_version(record)

    def download(self, model: str, version: int, sha256: str) -> Iterator[bytes]:
        """Version `version` of `model`'s artifact (blob `sha256`) from the primary (runs on a
        load thread)."""
        request = pb.DownloadVersionRequest(
            ref=common_pb2.VersionRef(model=model, version=version), chunk_size=DOWNLOAD_CHUNK
        )
        try:
            for response in self._downloads.server_stream(
                "Registry", "DownloadVersion", request, self._downloads.transfer_timeout
            ):
                if response.WhichOneof("part") == "chunk":
                    yield response.chunk
        except sdk_errors.TesseraError as exc:
            what = f"cannot download version {version} of {model!r} (blob sha256 {sha256[:12]})"
            raise primary_error(what, self.primary, exc) from None

    async def run(self) -> None:
        """Follow the primary until cancelled."""
        retries = asyncio.create_task(self._retry_failed_loads())
        try:
            await self._follow_forever()
        finally:
            await cancel_and_wait([retries])

    def read_token(self) -> bool:
        """Read replica.token_file again (on SIGHUP), for the calls from now on: a replica whose
        token the primary refused takes a new one without a restart. An unreadable file keeps
        the token read before, and says so. Whether a token was read (False without the
        setting too)."""
        if self._token_file is None:
            return False
        try:
            token = resolve_token(self._token_file.read_text())
        except (OSError, ValueError) as exc:
            log.error(
                "replica.token_file cannot be read again; the token read before is kept",
                extra={"path": str(self._token_file), "reason": str(exc)},
            )
            return False
        self._present((("authorization", f"Bearer {token}"),) if token else ())
        return True

    def _present(self, authorization: tuple[tuple[str, str], ...]) -> None:
        """Send `authorization` on the calls to the primary from now on, beside this replica's
        address, by which the primary lists the calls it refuses it (tesserad.replica.refusals)."""
        self._watch.metadata = self._downloads.metadata = (
            *authorization,
            (REPLICA_HEADER, self._advertise),
        )

    def retry_now(self) -> None:
        """What SIGHUP does on a replica (after read_token): try the primary again at once, the
        watch if it waits and every failed load, those the primary refused lastingly too (an
        operator who fixed the primary says so this way instead of waiting LASTING_RETRY_S)."""
        self._wake.set()
        self._retry_lasting_now.set()

    async def _follow_forever(self) -> None:
        delay = RECONNECT_FIRST_S
        while True:
            self._connected = False
            from_seq = self._followed.seq + 1
            refused = False  # for a cause only a fix at the primary cures
            try:
                await self._follow(from_seq)
            except _StoreReplaced as exc:
                log.warning(
                    "the primary's registry was replaced (another store: a backup restored, another "
                    "data directory); following it from the start",
                    extra={
                        "primary": self.primary,
                        "followed_incarnation": exc.followed,
                        "primary_incarnation": exc.answered,
                    },
                )
                self._followed.restart()
                self._link.restarted()
            except sdk_errors.FailedPrecondition as exc:
                if from_seq > 1:
                    self._answered()
                    log.warning(
                        "the primary does not know this replica's changes; following it from the start",
                        extra={"primary": self.primary, "reason": exc.daemon_message},
                    )
                    self._followed.restart()
                    self._link.restarted()
                else:  # no registry of changes to follow there (a replica, say)
                    refused = True
                    self._refused(exc)
            except sdk_errors.TesseraError as exc:
                if lasting_answer(exc):
                    refused = True
                    self._refused(exc)
                elif isinstance(exc, sdk_errors.Unavailable | sdk_errors.DeadlineExceeded):
                    self._lost(connection_cause(exc), grpc_words(exc))
                else:  # it answered, with an error that may pass (INTERNAL, RESOURCE_EXHAUSTED...)
                    self._lost(f"it answered {exc.code}", exc.daemon_message)
            except TesseraError as exc:
                self._lost(exc.message)
            except Exception:  # keep following whatever one change did; the log has it
                log.exception("following the primary failed; reconnecting", extra={"primary": self.primary})
                self._failed = True
            if self._connected:  # a stream that worked: retry soon
                delay = RECONNECT_FIRST_S
            if not refused:
                await self._sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            else:
                await self._sleep(LASTING_RETRY_S)
                delay = RECONNECT_FIRST_S

    def _lost(self, cause: str, detail: str = "") -> None:
        """An attempt to follow the primary failed for `cause` (gRPC's words: `detail`): said at
        WARNING when the primary is lost, then at most once a LOST_REPEAT_S while it stays away
        (tried every few seconds, it would fill the log), each attempt at DEBUG."""
        now = time.monotonic()
        self._say("waiting", f"waiting for primary {self.primary}: {cause}")
        said = {"primary": self.primary, "cause": cause, **({"detail": detail} if detail else {})}
        if self._lost_at is None:
            self._lost_at = self._lost_said_at = now
            log.warning(
                "lost the primary; serving what this replica holds until it is back (replica.primary, "
                "--follow, names it)",
                extra=said,
            )
        elif now - self._lost_said_at >= LOST_REPEAT_S:
            self._lost_said_at = now
            log.warning(
                "the primary is still away; serving what this replica holds",
                extra={**said, "away_s": round(now - self._lost_at)},
            )
        else:
            log.debug("the primary is still away", extra={**said, "away_s": round(now - self._lost_at)})

    def _answered(self) -> None:
        """The primary answered the watch, were it with a refusal: a loss before is over, and the
        next one is a new loss, counted from then."""
        if self._lost_at is not None:
            log.info(
                "the primary is back",
                extra={"primary": self.primary, "away_s": round(time.monotonic() - self._lost_at)},
            )
            self._lost_at = None

    def _followed_again(self) -> None:
        """The watch answered with a change or its catch-up: a refusal or a failure of this
        replica's own before is over, said once (a loss is, by _answered)."""
        if self._followed.refused is not None:
            log.info("the primary accepts this replica again; following it", extra={"primary": self.primary})
            self._followed.refused = None
        if self._failed:
            log.info(
                "following the primary again after the failure logged before", extra={"primary": self.primary}
            )
            self._failed = False

    def _refused(self, exc: sdk_errors.TesseraError) -> None:
        """The primary refused the watch for a cause only a fix there cures: said once per
        cause in the log, and to callers asking for what this replica does not hold."""
        self._answered()
        self._say("refused", f"refused by primary {self.primary} ({exc.code}); serving what it holds")
        refused = primary_error("cannot follow the registry's changes", self.primary, exc)
        if self._followed.refused is None or self._followed.refused.message != refused.message:
            log.error(
                "the primary refused this replica",
                extra={"primary": self.primary, "reason": refused.message, "code": exc.code},
            )
        self._followed.refused = refused

    def _say(self, state: str, line: str) -> None:
        """Tell `line` as the link's status, at once when `state` differs from the one told last,
        else at most once a STATUS_REPEAT_S: a line held back is told when its time is up, unless
        a later one replaced it."""
        now = time.monotonic()
        told_state, told_line = self._told
        if line == told_line:
            self._held = None
            return
        if state == told_state and now - self._told_at < STATUS_REPEAT_S:
            self._held = (state, line)
            if self._held_timer is None:
                self._held_timer = asyncio.get_running_loop().call_later(
                    self._told_at + STATUS_REPEAT_S - now, self._tell_held
                )
            return
        self._tell(state, line, now)

    def _tell(self, state: str, line: str, now: float) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        self._held = None
        self._told = (state, line)
        self._told_at = now
        self._tell_status(line)

    def _tell_held(self) -> None:
        self._held_timer = None
        if self._held is not None:
            state, line = self._held
            self._tell(state, line, time.monotonic())

    def _say_following(self) -> None:
        applied = self._followed.seq
        newest = self._link.state().primary_change
        behind = f" (the primary's newest: {newest})" if newest > applied else ""
        if self._ready:
            self._say("following", f"following primary {self.primary} at change {applied}{behind}")
        else:
            self._say("catching up", f"catching up with primary {self.primary} at change {applied}{behind}")

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less when retry_now is called meanwhile."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return
        self._wake.clear()

    async def _follow(self, from_seq: int) -> None:
        """One watch from `from_seq`: its answers applied in order as _read hands them over, then
        what ended the stream raised."""
        request = pb.WatchChangesRequest(
            from_seq=from_seq,
            replica_address=self._advertise,
            replica_transport=self._transport,
            heartbeat_interval_ms=self._heartbeat_ms,
        )
        answers: _Answers = asyncio.Queue(PENDING_ANSWERS)
        reader = asyncio.create_task(self._read(request, answers))
        try:
            while (answer := await answers.get()) is not None:
                if isinstance(answer, Exception):
                    raise answer
                await self._apply(answer)
        finally:
            await cancel_and_wait([reader])
            self._link.closed()

    async def _read(self, request: pb.WatchChangesRequest, answers: _Answers) -> None:
        """Read the watch's answers as they come, noting each (a heartbeat is no more), and hand
        the rest to _follow in order, then the stream's end: None, or the error that ended it."""
        end: Exception | None = None
        try:
            async for response in self._watch.server_stream("Registry", "WatchChanges", request, None):
                self._received(response)
                if not response.HasField("heartbeat"):
                    await answers.put(response)
        except Exception as exc:  # raised by _follow once the answers before it are applied
            end = exc
        finally:
            self._link.closed()
        await answers.put(end)

    def _received(self, response: pb.WatchChangesResponse) -> None:
        """An answer read: the primary answers, from the store followed (else _StoreReplaced), and
        its newest change is known to be at least the answer's."""
        self._connected = True
        self._answered()
        self._followed_again()
        self._wake.clear()  # a SIGHUP while connected asks nothing of the next reconnect
        followed = self._followed.store_incarnation
        if not self._followed.same_store(response.store_incarnation):
            raise _StoreReplaced(followed, response.store_incarnation)
        event = response.WhichOneof("event")
        if event == "change":
            self._link.answered(response.change.seq)
        elif event == "heartbeat":
            self._link.answered(response.heartbeat.seq)
            self._say_following()
        else:
            self._link.answered(response.caught_up.seq)

    async def _apply(self, response: pb.WatchChangesResponse) -> None:
        """One answer of the watch: a change applied, or the replay caught up."""
        if response.HasField("change"):
            change = response.change
            state = followed_model(change.state) if change.HasField("state") else None
            created = pb.CHANGE_KIND_MODEL_CREATED in change.kinds
            saved_before = self._followed.saved_configs(change.model)
            before = self._followed.apply(change.seq, change.model, state, created)
            if state is not None and state.deployment_warnings and state.deployment_warnings != before:
                # Requests follow the deployment all the same; a replica's operator, who has
                # no GetDeployment here, reads why in its log.
                log.warning(
                    "the primary's deployment of a model warns of what it routes to",
                    extra={
                        "model": change.model,
                        "revision": change.state.deployment.revision,
                        "warnings": list(state.deployment_warnings),
                    },
                )
            self._inference.on_registry_change(change.model)
            saved = {} if state is None else state.serving_configs
            for version in sorted(saved.keys() | saved_before.keys()):
                if state is not None and saved.get(version) != saved_before.get(version):
                    # The primary saved another config: versions loaded here follow it.
                    self._inference.apply_saved_config(change.model, version)
            self._say_following()
            return
        # Every model of the primary's was given: what this replica held beyond them goes.
        for model in self._followed.drop_unconfirmed():
            self._inference.on_registry_change(model)
        if self._ready:
            # Back after losing the primary: what failed to load meanwhile is tried again
            # now, what it refused too (a primary restarted may have been repaired).
            await asyncio.to_thread(self._inference.retry_failed_loads, True)
        else:
            await asyncio.to_thread(self._load_deployments)
            self._ready = True
            await self._set_ready(True)
            log.info(
                "replica caught up with the primary",
                extra={"primary": self.primary, "seq": response.caught_up.seq},
            )
        self._say_following()

    async def _retry_failed_loads(self) -> None:
        """While connected, try again the loads that failed because the primary could not be
        reached (briefly gone, a connection cut mid-download), each the less often the more times
        in a row it failed: the registry may not change again to set them off. Refreshes of
        changes that failed are queued again too (see InferenceService.retry_failed_loads). Those
        the primary refused lastingly (a damaged artifact) are tried every LASTING_RETRY_S, or at
        once on retry_now, with every other failed load whatever its wait."""
        delay = RETRY_FIRST_S
        lasting_due = asyncio.get_running_loop().time() + LASTING_RETRY_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_lasting_now.wait(), delay)
            now = asyncio.get_running_loop().time()
            lasting = self._retry_lasting_now.is_set() or now >= lasting_due
            self._retry_lasting_now.clear()
            if lasting:
                lasting_due = now + LASTING_RETRY_S
            raised = False
            if self._connected:
                try:
                    await asyncio.to_thread(self._inference.retry_failed_loads, lasting)
                except Exception:
                    # Logged and tried again after a longer wait: retries that stopped would leave
                    # every failed load to a registry change that may never come.
                    log.exception("retrying the failed loads failed", extra={"primary": self.primary})
                    raised = True
            delay = min(delay * 2, RETRY_MAX_S) if raised else RETRY_FIRST_S

    def _load_deployments(self) -> None:
        """Load what every deployment routes to; Unavailable (the primary went) is retried by
        reconnecting, a version that cannot load (an ensemble whose member is gone, a broken
        artifact) is logged."""
        for model in self._followed.deployed_models():
            try:
                self._inference.load_serving(model)
            except FailedPrecondition as exc:
                log.warning(
                    "a deployed model cannot be served by this replica",
                    extra={"model": model, "reason": exc.message},
                )

    async def close(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
        await self._watch.close()
        self._downloads.close()


def refusing_handlers(
    services: list[descriptor.ServiceDescriptor], primary: str
) -> tuple[grpc.GenericRpcHandler, ...]:
    """Handlers for every method of `services` that fail FAILED_PRECONDITION naming the primary."""
    refusal = FailedPrecondition(
        f"this tesserad is a serving replica of {primary}: it serves inference only; call the "
        f"primary at {primary} for the registry, datasets, training and system information"
    )

    async def unary(request: Any, context: Any) -> Any:
        raise refusal

    async def streaming(request: Any, context: Any) -> Any:
        raise refusal
        yield  # an async generator, as a streaming handler must be

    makers = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    generic = []
    for service in services:
        handlers = {
            method.name: makers[(method.client_streaming, method.server_streaming)](
                streaming if method.server_streaming else unary,
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
            )
            for method in service.methods
        }
        generic.append(grpc.method_handlers_generic_handler(service.full_name, handlers))
    return tuple(generic)
