"""GetStats scope=cluster: a primary's statistics merged with those of the replicas following it.

The primary knows its replicas from their WatchChanges subscriptions (each announces the
address it serves on, and whether it serves TLS there). It asks each, concurrently, for its
figures with histograms, with the authorization that replica's own watch presented (replicas
share the primary's tokens file; the caller's token is never sent: any reader may announce an
address, and an admin's token sent there would give that reader the admin role), and merges per
model version: latency histograms by adding bucket counts (so percentiles stay within the
histograms' relative error), counts, batch sizes and throughput by adding. A replica that does
not answer is listed in `unreachable_replicas`, with why in `unreachable`, and the rest is still
returned.

A replica the primary refuses (its watch, or a download) with an answer only a fix cures is
remembered for a while (tesserad.replica.refusals: `RefusalNotes` notes them as the interceptors
end such calls) and listed in `refused`: one refused its watch never follows, and would show
nowhere else.

Transport, per replica (see `Transport.choose`): a replica that says it serves TLS is asked over
TLS, its certificate checked against the address it announced. One that says it serves
plaintext is asked in plaintext when the primary uses no TLS (no TLS of its own, no
replica.tls_* setting: every other call goes in plaintext then), or when its address is a
loopback one (the call never leaves the host); otherwise it is not asked at all, since its token
would travel off the host in plaintext. A replica that does not say (an older one) is asked over
TLS exactly when the primary uses TLS.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from tessera.transport import TLS
from tessera.v1 import inference_pb2 as pb
from tessera.v1 import inference_pb2_grpc
from tesserad.api.aio_handlers import Context
from tesserad.api.convert_inference import latency_to_proto
from tesserad.config import ReplicaSettings
from tesserad.replica.changes import Replica
from tesserad.replica.refusals import REPLICA_HEADER, Refusal, ReplicaRefusals
from tesserad.serving.histogram import LogHistogram

log = logging.getLogger(__name__)

REPLICA_TIMEOUT_S = 5.0
_LATENCIES = ("queue", "compute", "total")


# Words in gRPC's connection errors -> why a replica did not answer, in an operator's words.
_CAUSES = (
    ("connection refused", "nothing listens there (connection refused)"),
    ("dns resolution failed", "its name does not resolve"),
    ("name or service not known", "its name does not resolve"),
    ("handshake", "the TLS handshake failed"),
    ("ssl", "the TLS handshake failed"),
    ("certificate", "the TLS handshake failed"),
    ("socket closed", "the connection was cut"),
    ("connection reset", "the connection was cut"),
)
_REFUSED = "nothing listens there (connection refused)"
_HANDSHAKE = "the TLS handshake failed"
PLAINTEXT_OFF_HOST = (
    "not asked: it serves plaintext at an address off this host, and this primary sends tokens "
    "off the host only over TLS; serve TLS on the replica (security.tls_cert_file) or announce a "
    "loopback address (replica.advertise)"
)


def is_loopback(address: str) -> bool:
    """Whether a host:port, [v6]:port or dns:/// target names this host: a loopback IP, or
    `localhost` (which resolves to loopback only)."""
    host = address.removeprefix("dns:///").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Transport:
    """How this primary may reach its replicas: `tls` for those that serve TLS, and whether
    TLS is configured here (then plaintext goes to loopback addresses only)."""

    tls: grpc.ChannelCredentials
    uses_tls: bool

    def choose(self, replica: Replica) -> grpc.ChannelCredentials | str | None:
        """The credentials to ask `replica` with, None for plaintext, or why it is not asked."""
        serves_tls = self.uses_tls if replica.tls is None else replica.tls
        if serves_tls:
            return self.tls
        if self.uses_tls and not is_loopback(replica.address):
            return PLAINTEXT_OFF_HOST
        return None


# The answers a replica takes to last until someone fixes their cause at the primary (as the
# replica's follow.lasting_answer reads them): a call from a replica that ends with one is noted.
LASTING_CODES = frozenset(
    {
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class RefusalNotes:
    """An interceptor's ErrorListener: notes each call that carries REPLICA_HEADER (a replica's)
    and ends with one of LASTING_CODES in `refusals`. AuthInterceptor tells it of no caller that
    could be anyone (no token, or one the tokens file lacks)."""

    def __init__(self, refusals: ReplicaRefusals) -> None:
        self._refusals = refusals

    def __call__(self, context: Context, method: str, code: grpc.StatusCode, message: str) -> None:
        if code not in LASTING_CODES:
            return
        address = next(
            (v for k, v in context.invocation_metadata() or () if k == REPLICA_HEADER and isinstance(v, str)),
            "",
        )
        if address:
            self._refusals.note(address, context.peer(), method.lstrip("/"), code.name, message)


class ClusterStats:
    """Asks the replicas following this daemon for their statistics."""

    def __init__(
        self,
        replicas: Callable[[], list[Replica]],
        transport: Transport,
        refused: Callable[[], list[Refusal]],
    ) -> None:
        """`replicas`: each replica following now (see ChangeFeed.replicas); `refused`: the
        replicas' calls refused lately (ReplicaRefusals.recent)."""
        self._replicas = replicas
        self._transport = transport
        self.refused = refused

    async def gather(
        self, request: pb.GetStatsRequest
    ) -> tuple[list[list[pb.ModelStats]], list[str], list[tuple[str, str]]]:
        """(each answering replica's stats, the replicas that answered, (address, why) of each
        that did not)."""
        replicas = self._replicas()
        ask = pb.GetStatsRequest(target=request.target, histograms=True)
        answers = await asyncio.gather(*(self._one(replica, ask) for replica in replicas))
        stats: list[list[pb.ModelStats]] = []
        reached: list[str] = []
        unreachable: list[tuple[str, str]] = []
        for replica, answer in zip(replicas, answers, strict=True):
            if isinstance(answer, str):
                unreachable.append((replica.address, answer))
            else:
                stats.append(answer)
                reached.append(replica.address)
        return stats, reached, unreachable

    async def _one(self, replica: Replica, ask: pb.GetStatsRequest) -> list[pb.ModelStats] | str:
        """The replica's stats ([] when it has none of the model), or why it did not answer."""
        credentials = self._transport.choose(replica)
        if isinstance(credentials, str):
            log.warning(
                "a replica was not asked for GetStats",
                extra={"replica": replica.address, "reason": credentials},
            )
            return credentials
        metadata = (("authorization", replica.credential),) if replica.credential else None
        channel = (
            grpc.aio.insecure_channel(replica.address)
            if credentials is None
            else grpc.aio.secure_channel(replica.address, credentials)
        )
        try:
            async with channel:
                stub = inference_pb2_grpc.InferenceStub(channel)
                response = await stub.GetStats(ask, timeout=REPLICA_TIMEOUT_S, metadata=metadata)
                return list(response.stats)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # nothing of that model loaded there
                return []
            log.warning(
                "a replica did not answer GetStats",
                extra={
                    "replica": replica.address,
                    "code": exc.code().name,
                    "reason": exc.details(),
                    "tls": credentials is not None,
                },
            )
            return unreachable_reason(exc.code(), exc.details() or "", tls=credentials is not None)


def unreachable_reason(code: grpc.StatusCode, details: str, tls: bool) -> str:
    """Why a replica did not answer, in a few words; gRPC's own text stays in the log."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "it did not answer in time"
    if code == grpc.StatusCode.UNAVAILABLE:
        text = details.lower()
        cause = next((words for key, words in _CAUSES if key in text), "it cannot be reached")
        if cause == _HANDSHAKE:
            return (
                f"{cause} (check that it serves TLS with a certificate for the address it "
                "announced, signed by the CA of replica.tls_ca_file here)"
            )
        if tls or cause == _REFUSED:
            return cause
        return f"{cause} (asked in plaintext, as it announced: does it serve TLS?)"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return (
            f"it refused the primary ({code.name}: {details}); it admits the token its own watch "
            "presents when its tokens file is the primary's"
        )
    return f"it answered {code.name}: {details}"


def replica_transport(serves_tls: bool, settings: ReplicaSettings) -> Transport:
    """How a primary reaches its replicas. TLS is configured when it serves TLS itself (its
    replicas share its deployment's certificates) or any replica.tls_* setting is set. A replica
    serving TLS is asked trusting replica.tls_ca_file (default: the system's roots), presenting
    replica.tls_cert_file when set (for replicas asking for client certificates). The files must
    have been checked (`check_replica_tls_files`)."""
    tls = TLS(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file).credentials()
    return Transport(tls, serves_tls or settings.uses_tls)


def merge_stats(parts: Iterable[Sequence[pb.ModelStats]], histograms: bool) -> list[pb.ModelStats]:
    """One ModelStats per model version, merged over the parts (each part's carry histograms)."""
    by_version: dict[tuple[str, int], list[pb.ModelStats]] = collections.defaultdict(list)
    for part in parts:
        for stats in part:
            by_version[(stats.model, stats.version)].append(stats)
    return [_merge(group, histograms) for _, group in sorted(by_version.items())]


def _histogram(summary: pb.LatencySummary) -> LogHistogram:
    h = summary.histogram
    return LogHistogram.from_buckets(h.relative_error, dict(h.counts), h.sum_us, summary.max_us)


def _merge(group: list[pb.ModelStats], histograms: bool) -> pb.ModelStats:
    first = group[0]
    batches: collections.Counter[int] = collections.Counter()
    for stats in group:
        for batch in stats.batch_sizes:
            batches[batch.rows] += batch.count
    merged = pb.ModelStats(
        model=first.model,
        version=first.version,
        request_count=sum(s.request_count for s in group),
        error_count=sum(s.error_count for s in group),
        row_count=sum(s.row_count for s in group),
        shadow_count=sum(s.shadow_count for s in group),
        cache_hit_count=sum(s.cache_hit_count for s in group),
        cache_hit_time_us=sum(s.cache_hit_time_us for s in group),
        cache_miss_count=sum(s.cache_miss_count for s in group),
        cache_miss_time_us=sum(s.cache_miss_time_us for s in group),
        throughput_rps=sum(s.throughput_rps for s in group),
        batch_sizes=[pb.BatchSizeCount(rows=rows, count=n) for rows, n in sorted(batches.items())],
        since=min((s.since for s in group), key=lambda t: (t.seconds, t.nanos)),
    )
    for name in _LATENCIES:
        histogram = _histogram(getattr(first, name))
        for stats in group[1:]:
            histogram.merge(_histogram(getattr(stats, name)))
        getattr(merged, name).CopyFrom(
            latency_to_proto(histogram.summary(), histogram if histograms else None)
        )
    return merged
