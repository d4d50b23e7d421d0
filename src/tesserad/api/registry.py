"""The Registry servicer: proto <-> domain conversion around tesserad.registry.Registry."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from tessera.v1 import common_pb2, registry_pb2_grpc
from tessera.v1 import registry_pb2 as pb
from tesserad.api import convert_registry as convert
from tesserad.api.auth import alias_move_denied, caller, presented_authorization
from tesserad.api.convert_changes import heartbeat_interval_from_proto, replica_tls_from_proto, watch_response
from tesserad.api.convert_training import job_spec_from_proto
from tesserad.api.transfers import (
    chunk_size,
    client_stream,
    download_offset,
    read_header,
    read_start,
    receive_chunks,
    stream_chunks,
)
from tesserad.errors import InvalidArgument
from tesserad.registry import Registry
from tesserad.registry.export import Exports
from tesserad.registry.validation import check_job_spec_size, check_lineage_datasets, check_uploaded_lineage
from tesserad.registry.versions import VersionUpload, batch_item
from tesserad.replica.changes import ChangeFeed
from tesserad.store import BlobStore, check_sha256
from tesserad.training.spec import check_spec_values

# Threads that store and record uploads. A registration mostly waits on fsyncs (the blob's,
# and for a streamed upload the group commit's); on asyncio's default executor (cpu_count + 4
# threads) those waits capped how many registrations could share one group commit, and so the rate.
UPLOAD_THREADS = 16

# The longest a SetAlias, DeleteAlias, Deploy or Rollback waits, once committed, for this daemon's
# serving to route by it (a version it moves to loaded and warmed first): a large model's load
# must not hold the call for minutes; past it serving moves when the load ends, as it would have.
ROUTING_WAIT_S = 30.0

T = TypeVar("T")


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(
        self,
        registry: Registry,
        changes: ChangeFeed,
        blobs: BlobStore,
        exports: Exports,
        default_chunk_size: int,
        routed_by_now: Callable[[str], Future[None]],
    ) -> None:
        """`routed_by_now(model)`: done once this daemon's serving routes `model` by every change
        committed to it (InferenceService.routed_by_now)."""
        self._registry = registry
        self._routed_by_now = routed_by_now
        self._changes = changes
        self._blobs = blobs
        self._exports = exports
        self._chunk_size = default_chunk_size
        self._uploads = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="registry-upload")
        self._handoff: _LoopHandoff | None = None

    async def _until_routed(self, model: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Wait until this daemon's serving routes `model` by the change the call committed, so
        that the caller's next request is answered by it: at most ROUTING_WAIT_S, and half of
        what is left of the call's deadline (a change committed is answered as such, never as a
        deadline passed)."""
        routed = self._routed_by_now(model)
        if routed.done():
            return
        remaining = context.time_remaining()
        wait = ROUTING_WAIT_S if remaining is None else min(ROUTING_WAIT_S, remaining / 2)
        try:
            await asyncio.wait_for(asyncio.wrap_future(routed), wait)
        except TimeoutError:
            return

    def close(self) -> None:
        """Wait for the upload threads' work (calls the server has ended may have left some)."""
        self._uploads.shutdown(wait=True)

    # -- models

    async def CreateModel(
        self,
        request: pb.CreateModelRequest,
        context: grpc.aio.ServicerContext[pb.CreateModelRequest, pb.Model],
    ) -> pb.Model:
        record = await asyncio.to_thread(
            self._registry.create_model, request.name, request.description, dict(request.tags)
        )
        return convert.model_to_proto(record)

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext[pb.GetModelRequest, pb.Model]
    ) -> pb.Model:
        return convert.model_to_proto(await asyncio.to_thread(self._registry.get_model, request.name))

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        page = await asyncio.to_thread(
            self._registry.list_models,
            request.name_prefix,
            dict(request.tags),
            request.page_size,
            request.page_token,
        )
        return pb.ListModelsResponse(
            models=[convert.model_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def UpdateModel(
        self,
        request: pb.UpdateModelRequest,
        context: grpc.aio.ServicerContext[pb.UpdateModelRequest, pb.Model],
    ) -> pb.Model:
        record = await asyncio.to_thread(
            self._registry.update_model,
            request.name,
            request.description if request.HasField("description") else None,
            dict(request.set_tags),
            list(request.remove_tags),
        )
        return convert.model_to_proto(record)

    async def DeleteModel(
        self,
        request: pb.DeleteModelRequest,
        context: grpc.aio.ServicerContext[pb.DeleteModelRequest, pb.DeleteModelResponse],
    ) -> pb.DeleteModelResponse:
        deleted = await asyncio.to_thread(self._registry.delete_model, request.name, request.force)
        return pb.DeleteModelResponse(deleted_versions=deleted)

    # -- versions

    async def UploadVersion(
        self,
        request_iterator: AsyncIterator[pb.UploadVersionRequest],
        context: grpc.aio.ServicerContext[pb.UploadVersionRequest, pb.ModelVersion],
    ) -> pb.ModelVersion:
        messages = client_stream(request_iterator, context)
        header: pb.UploadVersionHeader = await read_header(messages)
        fields = _version_fields(self._registry, header, context)
        start = await read_start(messages, header.size_bytes)
        artifact = start.in_hand()
        if artifact is not None:
            # A small upload, all in hand: gathered with the others in flight (submit_upload).
            return await self._upload_in_hand(header, artifact, fields)
        await asyncio.to_thread(
            self._registry.check_upload,
            header.model,
            format=fields["format"],
            signature=fields["signature"],
            architecture=fields["architecture"],
            size_bytes=header.size_bytes,
            create_model_if_missing=header.create_model,
            tags=fields["tags"],
            metrics=fields["metrics"],
            alias=fields["alias"],
            description=fields["description"],
            params=fields["params"],
        )
        with self._blobs.writer(
            self._registry.max_artifact_size, "limits.max_artifact_size", header.size_bytes or None
        ) as writer:
            record = await receive_chunks(
                start.replay(messages),
                writer,
                header.sha256,
                header.size_bytes,
                lambda blob: self._registry.register_version(header.model, blob=blob, **fields),
                self._uploads,
            )
        return convert.version_to_proto(record)

    async def UploadVersionInline(
        self,
        request: pb.UploadVersionInlineRequest,
        context: grpc.aio.ServicerContext[pb.UploadVersionInlineRequest, pb.ModelVersion],
    ) -> pb.ModelVersion:
        header = request.header
        return await self._upload_in_hand(
            header, request.artifact, _version_fields(self._registry, header, context)
        )

    async def UploadVersionBatch(
        self,
        request: pb.UploadVersionBatchRequest,
        context: grpc.aio.ServicerContext[pb.UploadVersionBatchRequest, pb.UploadVersionBatchResponse],
    ) -> pb.UploadVersionBatchResponse:
        items = []
        for index, item in enumerate(request.items):
            with batch_item(index):
                header = item.header
                items.append(
                    VersionUpload(
                        model=header.model,
                        artifact=item.artifact,
                        sha256=header.sha256,
                        size_bytes=header.size_bytes,
                        **_version_fields(self._registry, header, context),
                    )
                )
        records = await self._registered(lambda: self._registry.start_uploads(items))
        return pb.UploadVersionBatchResponse(versions=[convert.version_to_proto(r) for r in records])

    async def _upload_in_hand(
        self, header: pb.UploadVersionHeader, artifact: bytes, fields: dict[str, Any]
    ) -> pb.ModelVersion:
        """Register an artifact whose bytes have all arrived; no thread hop of this call's own."""
        upload = VersionUpload(
            model=header.model,
            artifact=artifact,
            sha256=header.sha256,
            size_bytes=header.size_bytes,
            **fields,
        )
        return convert.version_to_proto(await self._settled(self._registry.submit_upload(upload)))

    async def _registered(self, start: Callable[[], Future[T]]) -> T:
        """`start` on an upload thread, in this call's context; the outcome of the registration
        it starts. The thread is free again while the group commit runs."""
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        handoff = self._loop_handoff()

        def run() -> None:
            try:
                committed = start()
            except BaseException as exc:
                committed = Future()
                committed.set_exception(exc)
            # Settled in the committing thread, or here when `start` failed.
            committed.add_done_callback(lambda done: handoff.hand(done, outcome))

        self._uploads.submit(contextvars.copy_context().run, run)
        return await outcome

    async def _settled(self, committed: Future[T]) -> T:
        """The outcome of a registration settled in another thread. It reaches the event loop in
        at most one wake-up, shared with the registrations settled with it (one wake-up each
        cost a small registration more than storing it)."""
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        handoff = self._loop_handoff()
        committed.add_done_callback(lambda done: handoff.hand(done, outcome))
        return await outcome

    def _loop_handoff(self) -> _LoopHandoff:
        loop = asyncio.get_running_loop()
        if self._handoff is None or self._handoff.loop is not loop:
            self._handoff = _LoopHandoff(loop)
        return self._handoff

    async def DownloadVersion(
        self,
        request: pb.DownloadVersionRequest,
        context: grpc.aio.ServicerContext[pb.DownloadVersionRequest, pb.DownloadVersionResponse],
    ) -> AsyncIterator[pb.DownloadVersionResponse]:
        size = chunk_size(request.chunk_size, self._chunk_size)
        record = await asyncio.to_thread(self._registry.resolve, *convert.ref_args(request.ref))
        offset = download_offset(
            request.offset, record.size_bytes, f"{record.model} v{record.version}'s artifact"
        )
        chunks = await asyncio.to_thread(self._registry.open_artifact, record, size, offset)
        yield pb.DownloadVersionResponse(header=convert.version_to_proto(record))
        async for chunk in stream_chunks(chunks):
            yield pb.DownloadVersionResponse(chunk=chunk)

    async def GetVersion(
        self,
        request: pb.GetVersionRequest,
        context: grpc.aio.ServicerContext[pb.GetVersionRequest, pb.ModelVersion],
    ) -> pb.ModelVersion:
        record = await asyncio.to_thread(self._registry.resolve, *convert.ref_args(request.ref))
        return convert.version_to_proto(record)

    async def ListVersions(
        self,
        request: pb.ListVersionsRequest,
        context: grpc.aio.ServicerContext[pb.ListVersionsRequest, pb.ListVersionsResponse],
    ) -> pb.ListVersionsResponse:
        page = await asyncio.to_thread(
            self._registry.list_versions, request.model, request.page_size, request.page_token
        )
        return pb.ListVersionsResponse(
            versions=[convert.version_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def DeleteVersion(
        self,
        request: pb.DeleteVersionRequest,
        context: grpc.aio.ServicerContext[pb.DeleteVersionRequest, pb.DeleteVersionResponse],
    ) -> pb.DeleteVersionResponse:
        if request.version <= 0:
            raise InvalidArgument(f"version must be >= 1, got {request.version}")
        await asyncio.to_thread(self._registry.delete_version, request.model, request.version)
        return pb.DeleteVersionResponse()

    # -- aliases

    async def SetAlias(
        self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext[pb.SetAliasRequest, pb.Alias]
    ) -> pb.Alias:
        expected = request.expected_version if request.HasField("expected_version") else None
        record = await asyncio.to_thread(
            self._registry.set_alias, request.model, request.alias, request.version, caller(context), expected
        )
        await self._until_routed(request.model, context)
        return convert.alias_to_proto(record)

    async def GetAlias(
        self, request: pb.GetAliasRequest, context: grpc.aio.ServicerContext[pb.GetAliasRequest, pb.Alias]
    ) -> pb.Alias:
        return convert.alias_to_proto(
            await asyncio.to_thread(self._registry.get_alias, request.model, request.alias)
        )

    async def ListAliases(
        self,
        request: pb.ListAliasesRequest,
        context: grpc.aio.ServicerContext[pb.ListAliasesRequest, pb.ListAliasesResponse],
    ) -> pb.ListAliasesResponse:
        page = await asyncio.to_thread(
            self._registry.list_aliases, request.model, request.page_size, request.page_token
        )
        return pb.ListAliasesResponse(
            aliases=[convert.alias_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def DeleteAlias(
        self,
        request: pb.DeleteAliasRequest,
        context: grpc.aio.ServicerContext[pb.DeleteAliasRequest, pb.DeleteAliasResponse],
    ) -> pb.DeleteAliasResponse:
        await asyncio.to_thread(self._registry.delete_alias, request.model, request.alias, caller(context))
        await self._until_routed(request.model, context)
        return pb.DeleteAliasResponse()

    async def ListAliasHistory(
        self,
        request: pb.ListAliasHistoryRequest,
        context: grpc.aio.ServicerContext[pb.ListAliasHistoryRequest, pb.ListAliasHistoryResponse],
    ) -> pb.ListAliasHistoryResponse:
        page = await asyncio.to_thread(
            self._registry.list_alias_history,
            request.model,
            request.alias,
            request.page_size,
            request.page_token,
        )
        return pb.ListAliasHistoryResponse(
            events=[convert.alias_event_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    # -- lineage, comparison, export

    async def GetLineage(
        self,
        request: pb.GetLineageRequest,
        context: grpc.aio.ServicerContext[pb.GetLineageRequest, pb.GetLineageResponse],
    ) -> pb.GetLineageResponse:
        record, derived = await asyncio.to_thread(self._registry.get_lineage, *convert.ref_args(request.ref))
        return pb.GetLineageResponse(
            version=convert.version_to_proto(record),
            derived=[common_pb2.VersionRef(model=d.model, version=d.version) for d in derived],
        )

    async def CompareVersions(
        self,
        request: pb.CompareVersionsRequest,
        context: grpc.aio.ServicerContext[pb.CompareVersionsRequest, pb.CompareVersionsResponse],
    ) -> pb.CompareVersionsResponse:
        comparison = await asyncio.to_thread(
            self._registry.compare, convert.ref_args(request.a, "a"), convert.ref_args(request.b, "b")
        )
        return convert.comparison_to_proto(comparison)

    async def ExportOnnx(
        self,
        request: pb.ExportOnnxRequest,
        context: grpc.aio.ServicerContext[pb.ExportOnnxRequest, pb.ExportOnnxResponse],
    ) -> pb.ExportOnnxResponse:
        source = await asyncio.to_thread(self._registry.resolve, *convert.ref_args(request.source, "source"))
        # Checked on a thread (the first check imports onnx; an alias's reads the store), queued on
        # the loop: a caller that goes away once its export is queued then always withdraws it.
        checked = await asyncio.to_thread(
            self._exports.check,
            source,
            opset=request.opset,
            conv4d=request.conv4d,
            alias=request.alias,
            description=request.description,
            actor=caller(context),
            # An earlier export of the same bytes is returned: moving the alias onto it is SetAlias's.
            alias_move_denied=alias_move_denied(context),
        )
        queued = self._exports.submit(checked)
        try:
            result = await asyncio.wrap_future(queued)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            self._exports.withdraw(queued)
            raise
        return convert.export_to_proto(result)

    # -- deployments

    async def Deploy(
        self, request: pb.DeployRequest, context: grpc.aio.ServicerContext[pb.DeployRequest, pb.Deployment]
    ) -> pb.Deployment:
        record = await asyncio.to_thread(
            self._registry.deploy,
            request.model,
            convert.routes_from_proto(request.routes),
            convert.shadow_from_proto(request),
            request.comment,
            caller(context),
            request.expected_revision if request.HasField("expected_revision") else None,
        )
        await self._until_routed(request.model, context)
        return convert.deployment_to_proto(record)

    async def GetDeployment(
        self,
        request: pb.GetDeploymentRequest,
        context: grpc.aio.ServicerContext[pb.GetDeploymentRequest, pb.Deployment],
    ) -> pb.Deployment:
        return convert.deployment_to_proto(
            await asyncio.to_thread(self._registry.get_deployment, request.model)
        )

    async def ListDeployments(
        self,
        request: pb.ListDeploymentsRequest,
        context: grpc.aio.ServicerContext[pb.ListDeploymentsRequest, pb.ListDeploymentsResponse],
    ) -> pb.ListDeploymentsResponse:
        page = await asyncio.to_thread(
            self._registry.list_deployments, request.model, request.page_size, request.page_token
        )
        return pb.ListDeploymentsResponse(
            deployments=[convert.deployment_to_proto(d) for d in page.items],
            next_page_token=page.next_page_token,
        )

    async def Rollback(
        self,
        request: pb.RollbackRequest,
        context: grpc.aio.ServicerContext[pb.RollbackRequest, pb.Deployment],
    ) -> pb.Deployment:
        record = await asyncio.to_thread(
            self._registry.rollback,
            request.model,
            caller(context),
            request.expected_revision if request.HasField("expected_revision") else None,
        )
        await self._until_routed(request.model, context)
        return convert.deployment_to_proto(record)

    async def WatchChanges(
        self,
        request: pb.WatchChangesRequest,
        context: grpc.aio.ServicerContext[pb.WatchChangesRequest, pb.WatchChangesResponse],
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        watch = self._changes.watch(
            request.from_seq,
            request.replica_address,
            presented_authorization(context),
            replica_tls_from_proto(request.replica_transport),
            heartbeat_interval_from_proto(request.heartbeat_interval_ms),
        )
        async for event in watch:
            yield watch_response(event, self._changes.store_incarnation)


class _LoopHandoff:
    """Outcomes of registrations handed from other threads to one event loop. A group commit
    settles many at once; the burst costs the loop one wake-up instead of one each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[Future[Any], asyncio.Future[Any]]] = []

    def hand(self, done: Future[T], outcome: asyncio.Future[T]) -> None:
        with self._lock:
            self._ready.append((done, outcome))
            if len(self._ready) > 1:
                return  # a wake-up is already on its way and takes this one too
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for done, outcome in ready:
            _copy_outcome(done, outcome)


def _copy_outcome(done: Future[T], outcome: asyncio.Future[T]) -> None:
    if outcome.cancelled():
        return
    error = done.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())


def _version_fields(
    registry: Registry, header: pb.UploadVersionHeader, context: grpc.aio.ServicerContext[Any, Any]
) -> dict[str, Any]:
    """An upload header's checked sha256 and its version fields in the domain's terms; a run it
    names (run_id) is checked here, a read of one record, before any byte is stored."""
    check_sha256(header.sha256, "header.sha256")
    check_job_spec_size("lineage.job_spec", header.lineage.job_spec.ByteSize())
    if header.lineage.HasField("job_spec"):
        # Only the values a spec holds on its own: what it names is another daemon's.
        raw, _ = job_spec_from_proto(header.lineage.job_spec, "lineage.job_spec")
        check_spec_values(raw, "lineage.job_spec")
    check_lineage_datasets(len(header.lineage.datasets))
    lineage = convert.lineage_from_proto(header.lineage)
    check_uploaded_lineage(lineage)
    if header.run_id:
        lineage = registry.with_tracked_run(lineage, header.run_id)
    return {
        "format": convert.format_from_proto(header.format),
        "signature": convert.signature_from_proto(header.signature),
        "architecture": (
            convert.architecture_to_dict(header.architecture) if header.HasField("architecture") else None
        ),
        "params": dict(header.params),
        "metrics": dict(header.metrics),
        "tags": dict(header.tags),
        "lineage": lineage,
        "description": header.description,
        "create_model_if_missing": header.create_model,
        "alias": header.alias,
        "actor": caller(context),
    }
