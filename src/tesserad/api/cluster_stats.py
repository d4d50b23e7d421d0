"""GetStats scope=cluster: a primary's statistics merged with those of the replicas following it.

The primary knows its replicas from their WatchChanges subscriptions (each announces the
address it serves on). It asks each, concurrently, for its figures with histograms, with the
authorization that replica's own watch presented (replicas share the primary's tokens file; the
caller's token is never sent: any reader may announce an address, and an admin's token sent
there would give that reader the admin role), and merges per model version: latency histograms
by adding bucket counts (so percentiles stay within the histograms' relative error), counts,
batch sizes and throughput by adding. A replica that does not answer is listed in
`unreachable_replicas`, and the rest is still returned.

The calls go over TLS whenever the daemon serves TLS or any replica.tls_* setting is set (see
`replica_credentials`), the replica's certificate checked against the address it announced;
then no call, and so no token, ever goes in plaintext: a replica that does not serve TLS is
unreachable. Without TLS anywhere they go in plaintext, as every other call then does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence

import grpc

from tessera.transport import TLS
from tessera.v1 import inference_pb2 as pb
from tessera.v1 import inference_pb2_grpc
from tesserad.api.convert_inference import latency_to_proto
from tesserad.config import ReplicaSettings
from tesserad.serving.histogram import LogHistogram

log = logging.getLogger(__name__)

REPLICA_TIMEOUT_S = 5.0
_LATENCIES = ("queue", "compute", "total")


class ClusterStats:
    """Asks the replicas following this daemon for their statistics."""

    def __init__(
        self, replicas: Callable[[], list[tuple[str, str]]], tls: grpc.ChannelCredentials | None
    ) -> None:
        """`replicas`: the (address, credential) of each replica following now (see
        ChangeFeed.replicas); `tls`: the credentials to reach them with, None for plaintext."""
        self._replicas = replicas
        self._tls = tls

    async def gather(
        self, request: pb.GetStatsRequest
    ) -> tuple[list[list[pb.ModelStats]], list[str], list[str]]:
        """(each answering replica's stats, the replicas that answered, those that did not)."""
        replicas = self._replicas()
        ask = pb.GetStatsRequest(target=request.target, histograms=True)
        answers = await asyncio.gather(
            *(self._one(address, credential, ask) for address, credential in replicas)
        )
        addresses = [address for address, _ in replicas]
        reached = [a for a, s in zip(addresses, answers, strict=True) if s is not None]
        unreachable = [a for a, s in zip(addresses, answers, strict=True) if s is None]
        return [s for s in answers if s is not None], reached, unreachable

    async def _one(
        self, address: str, credential: str, ask: pb.GetStatsRequest
    ) -> list[pb.ModelStats] | None:
        """`address`'s stats ([] when it has none of the model), None when it did not answer."""
        metadata = (("authorization", credential),) if credential else None
        channel = (
            grpc.aio.insecure_channel(address)
            if self._tls is None
            else grpc.aio.secure_channel(address, self._tls)
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
                    "replica": address,
                    "code": exc.code().name,
                    "reason": exc.details(),
                    "tls": self._tls is not None,
                },
            )
            return None


def replica_credentials(serves_tls: bool, settings: ReplicaSettings) -> grpc.ChannelCredentials | None:
    """How a primary reaches its replicas: over TLS when it serves TLS itself (its replicas
    share its deployment's certificates) or any replica.tls_* setting is set, trusting
    replica.tls_ca_file (default: the system's roots) and presenting replica.tls_cert_file
    when set (replicas asking for client certificates); None for plaintext. The files must
    have been checked (`check_replica_tls_files`)."""
    if not serves_tls and not settings.uses_tls:
        return None
    return TLS(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file).credentials()


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
