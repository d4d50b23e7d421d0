"""System service: server facts and a live stream of resource use."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from tessera.v1 import system_pb2 as pb
from tessera.v1 import system_pb2_grpc
from tesserad.api.convert_common import timestamp
from tesserad.api.transfers import chunk_size
from tesserad.backup import Backups
from tesserad.backup.verify import DAMAGED, MISSING, StoreCheck, StoreCheckReport, StoreChecks
from tesserad.errors import InvalidArgument, Unavailable
from tesserad.host import HostSample
from tesserad.system import Replication, ServerFacts, SystemService
from tesserad.tasks import wait_out
from tesserad.training.ray_cluster import ClusterStatus

MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 60_000
DEFAULT_INTERVAL_MS = 1000
# A BackupChunk's bytes beside its data: the field's tag and length (6 at most), and
# archive_size's tag and varint (11 at most).
_CHUNK_FRAMING = 32


class SystemServicer(system_pb2_grpc.SystemServicer):
    def __init__(
        self,
        system: SystemService,
        stopping: asyncio.Event,
        backups: Backups,
        store_checks: StoreChecks,
        default_chunk_size: int,
        max_message_size: int,
    ) -> None:
        self._system = system
        self._stopping = stopping
        self._backups = backups
        self._store_checks = store_checks
        self._chunk_size = default_chunk_size
        self._max_chunk_size = max_message_size - _CHUNK_FRAMING

    async def GetServerInfo(
        self,
        request: pb.GetServerInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetServerInfoRequest, pb.ServerInfo],
    ) -> pb.ServerInfo:
        facts = await asyncio.to_thread(self._system.facts)
        return server_info_to_proto(facts)

    async def WatchSystem(
        self,
        request: pb.WatchSystemRequest,
        context: grpc.aio.ServicerContext[pb.WatchSystemRequest, pb.SystemSample],
    ) -> AsyncIterator[pb.SystemSample]:
        interval_ms = request.interval_ms or DEFAULT_INTERVAL_MS
        if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
            raise InvalidArgument(
                f"interval_ms must be in {MIN_INTERVAL_MS}..{MAX_INTERVAL_MS} (or 0 for {DEFAULT_INTERVAL_MS}), "
                f"got {interval_ms}"
            )
        if request.max_samples < 0:
            raise InvalidArgument(
                f"max_samples must be >= 0 (0 streams until cancelled), got {request.max_samples}"
            )
        sampler = self._system.sampler()
        sent = 0
        while request.max_samples == 0 or sent < request.max_samples:
            if request.max_samples:
                # A bounded watch is an in-flight call like any other: shutdown lets it finish
                # within the grace period.
                await asyncio.sleep(interval_ms / 1000)
            elif await _stopped_within(self._stopping, interval_ms / 1000):
                raise Unavailable("tesserad is shutting down; reconnect to keep watching")
            sample = sample_to_proto(await asyncio.to_thread(sampler.sample))
            cluster = await asyncio.to_thread(self._system.cluster)
            if cluster is not None:
                sample.training_cluster.CopyFrom(cluster_to_proto(cluster))
            yield sample
            sent += 1

    async def Backup(
        self,
        request: pb.BackupRequest,
        context: grpc.aio.ServicerContext[pb.BackupRequest, pb.BackupChunk],
    ) -> AsyncIterator[pb.BackupChunk]:
        # Each chunk fits one message under the send limit, whatever was asked.
        size = min(chunk_size(request.chunk_size, self._chunk_size), self._max_chunk_size)
        # Leaving the block closes the backup (the temp copy goes, the pinned blobs are released)
        # whatever the client does, and only then lets the next one in line begin.
        async with self._backups.line_up() as turn:
            if turn.waits:
                yield pb.BackupChunk(waiting=True)
            backup = await turn.start()
            if turn.waits:
                with turn.sending(0):
                    yield pb.BackupChunk(waiting=False)
            await asyncio.to_thread(backup.prepare, size)
            while (data := await asyncio.to_thread(backup.next_chunk)) is not None:
                with turn.sending(len(data)):
                    yield pb.BackupChunk(data=data, archive_size=backup.archive_size)
            # The last chunk is sent: the time the backup alert watches (backup.last_success).
            await asyncio.to_thread(self._backups.served_whole)

    async def VerifyStore(
        self,
        request: pb.VerifyStoreRequest,
        context: grpc.aio.ServicerContext[pb.VerifyStoreRequest, pb.VerifyStoreReport],
    ) -> pb.VerifyStoreReport:
        sent = [message async for message in self._check_store(progress=False)]
        return sent[-1].report

    async def VerifyStoreStream(
        self,
        request: pb.VerifyStoreRequest,
        context: grpc.aio.ServicerContext[pb.VerifyStoreRequest, pb.VerifyStoreProgress],
    ) -> AsyncIterator[pb.VerifyStoreProgress]:
        # Closed here, so that a call cancelled while a message waits ends the check at once.
        async with contextlib.aclosing(self._check_store(progress=True)) as messages:
            async for message in messages:
                yield message

    async def _check_store(self, progress: bool) -> AsyncGenerator[pb.VerifyStoreProgress]:
        """One store check: with `progress`, a message after its first step (the count of the
        blobs to check) and then one every PROGRESS_INTERVAL_S at most; last, its report."""
        check = self._store_checks.start(progress)
        try:
            sent_at: float | None = None
            # Step by step in a thread: the loop stays free, and a cancelled call stops the
            # check after the step in flight.
            while await asyncio.to_thread(check.step):
                now = time.monotonic()
                if progress and (sent_at is None or now - sent_at >= PROGRESS_INTERVAL_S):
                    sent_at = now
                    yield store_check_progress(check)
        finally:
            await wait_out(asyncio.ensure_future(asyncio.to_thread(self._store_checks.end, check)))
        last = store_check_progress(check)
        last.report.CopyFrom(store_check_to_proto(check.report()))
        yield last


# How often VerifyStoreStream says how far its check has got: often enough for a progress line
# to move, and few enough messages to cost nothing beside the hashing.
PROGRESS_INTERVAL_S = 1.0

# Problems a VerifyStore reply names at most (each some 600 bytes): the rest are counted, so that
# the reply of a badly damaged store stays far under the message size limit.
REPORTED_PROBLEMS = 1000


def store_check_progress(check: StoreCheck) -> pb.VerifyStoreProgress:
    return pb.VerifyStoreProgress(
        blobs_checked=check.blobs_checked,
        bytes_checked=check.bytes_checked,
        blobs_total=check.blobs_total,
        bytes_total=check.bytes_total,
    )


def store_check_to_proto(report: StoreCheckReport) -> pb.VerifyStoreReport:
    return pb.VerifyStoreReport(
        blobs_checked=report.blobs_checked,
        bytes_checked=report.bytes_checked,
        references_checked=report.references_checked,
        problems=[
            pb.BlobProblem(sha256=p.sha256, kind=p.kind, owners=p.owners, message=p.message)
            for p in report.problems[:REPORTED_PROBLEMS]
        ],
        seconds=report.seconds,
        damaged_blobs=sum(p.kind == DAMAGED for p in report.problems),
        missing_blobs=sum(p.kind == MISSING for p in report.problems),
    )


def server_info_handler(
    system: SystemService,
) -> grpc.RpcMethodHandler[pb.GetServerInfoRequest, pb.ServerInfo]:
    """GetServerInfo alone, as a serving replica answers it: the rest of System (resource use
    over time, backups) is its primary's."""

    async def get_server_info(
        request: pb.GetServerInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetServerInfoRequest, pb.ServerInfo],
    ) -> pb.ServerInfo:
        return server_info_to_proto(await asyncio.to_thread(system.facts))

    return grpc.unary_unary_rpc_method_handler(
        get_server_info,
        request_deserializer=pb.GetServerInfoRequest.FromString,
        response_serializer=pb.ServerInfo.SerializeToString,
    )


async def _stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


def server_info_to_proto(facts: ServerFacts) -> pb.ServerInfo:
    devices = [
        pb.Device(
            id="cpu",
            kind=pb.DEVICE_KIND_CPU,
            name=facts.cpu.name,
            memory_total_bytes=facts.cpu.memory_total_bytes,
            cores=facts.cpu.cores,
        )
    ]
    devices += [
        pb.Device(id=g.id, kind=pb.DEVICE_KIND_CUDA, name=g.name, memory_total_bytes=g.memory_total_bytes)
        for g in facts.gpus
    ]
    usage = facts.data_dir
    return pb.ServerInfo(
        version=facts.version,
        started_at=timestamp(facts.started_at),
        uptime_s=facts.uptime_s,
        devices=devices,
        data_dir=pb.DataDirUsage(
            path=usage.path,
            store_bytes=usage.store_bytes,
            store_map_size_bytes=usage.store_map_size_bytes,
            blob_bytes=usage.blob_bytes,
            fs_free_bytes=usage.fs_free_bytes,
            fs_total_bytes=usage.fs_total_bytes,
            store_schema=usage.store_schema,
        ),
        services=facts.services,
        hostname=facts.hostname,
        pid=facts.pid,
        runtime_versions=facts.runtime_versions,
        training_cluster=cluster_to_proto(facts.cluster) if facts.cluster is not None else None,
        replication=replication_to_proto(facts.replication),
    )


_ROLES = {"primary": pb.REPLICATION_ROLE_PRIMARY, "replica": pb.REPLICATION_ROLE_REPLICA}


def replication_to_proto(replication: Replication) -> pb.Replication:
    return pb.Replication(
        role=_ROLES[replication.role],
        primary=replication.primary,
        connected=replication.connected,
        refused=bool(replication.refusal),
        refusal=replication.refusal,
        applied_change=replication.applied_change,
        primary_change=replication.primary_change,
        store_incarnation=replication.store_incarnation,
        last_contact=timestamp(replication.last_contact) if replication.last_contact else None,
    )


def cluster_to_proto(cluster: ClusterStatus) -> pb.TrainingCluster:
    return pb.TrainingCluster(
        address=cluster.address,
        connected=cluster.connected,
        error=cluster.error,
        nodes=[
            pb.ClusterNode(node_id=n.node_id, address=n.address, alive=n.alive, total=n.total)
            for n in cluster.nodes
        ],
        available=cluster.available,
    )


def sample_to_proto(sample: HostSample) -> pb.SystemSample:
    return pb.SystemSample(
        time=timestamp(sample.time),
        cpu_percent=sample.cpu_percent,
        per_cpu_percent=sample.per_cpu_percent,
        memory_used_bytes=sample.memory_used_bytes,
        memory_total_bytes=sample.memory_total_bytes,
        process_cpu_percent=sample.process_cpu_percent,
        process_rss_bytes=sample.process_rss_bytes,
        gpus=[
            pb.GpuSample(
                id=g.id,
                utilization_percent=g.utilization_percent,
                memory_used_bytes=g.memory_used_bytes,
                memory_total_bytes=g.memory_total_bytes,
                temperature_c=g.temperature_c,
                power_w=g.power_w,
            )
            for g in sample.gpus
        ],
    )
