"""The Datasets servicer: proto <-> domain conversion around tesserad.datasets.Datasets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from tessera.v1 import datasets_pb2 as pb
from tessera.v1 import datasets_pb2_grpc
from tesserad.api import convert_datasets as convert
from tesserad.api.auth import caller
from tesserad.api.transfers import (
    chunk_size,
    client_stream,
    download_offset,
    read_header,
    receive_chunks,
    stream_chunks,
)
from tesserad.datasets import Datasets
from tesserad.store import BlobStore


class DatasetsServicer(datasets_pb2_grpc.DatasetsServicer):
    def __init__(self, datasets: Datasets, blobs: BlobStore, default_chunk_size: int) -> None:
        self._datasets = datasets
        self._blobs = blobs
        self._chunk_size = default_chunk_size

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[pb.UploadDatasetRequest],
        context: grpc.aio.ServicerContext[pb.UploadDatasetRequest, pb.DatasetVersion],
    ) -> pb.DatasetVersion:
        messages = client_stream(request_iterator, context)
        spec = convert.upload_spec_from_proto(await read_header(messages))
        limit = await asyncio.to_thread(self._datasets.upload_limit, spec)
        with self._blobs.writer(
            limit,
            "limits.max_dataset_size or the remaining limits.dataset_quota",
            spec.size_bytes or None,
        ) as writer:
            who = caller(context)
            record = await receive_chunks(
                messages,
                writer,
                spec.sha256 or None,
                spec.size_bytes or None,
                lambda blob: self._datasets.register(spec, blob, who),
            )
        return convert.version_to_proto(record)

    async def GetDataset(
        self,
        request: pb.GetDatasetRequest,
        context: grpc.aio.ServicerContext[pb.GetDatasetRequest, pb.Dataset],
    ) -> pb.Dataset:
        return convert.dataset_to_proto(await asyncio.to_thread(self._datasets.get_dataset, request.name))

    async def ListDatasets(
        self,
        request: pb.ListDatasetsRequest,
        context: grpc.aio.ServicerContext[pb.ListDatasetsRequest, pb.ListDatasetsResponse],
    ) -> pb.ListDatasetsResponse:
        page = await asyncio.to_thread(
            self._datasets.list_datasets, request.name_prefix, request.page_size, request.page_token
        )
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset_to_proto(d) for d in page.items], next_page_token=page.next_page_token
        )

    async def GetDatasetVersion(
        self,
        request: pb.GetDatasetVersionRequest,
        context: grpc.aio.ServicerContext[pb.GetDatasetVersionRequest, pb.DatasetVersion],
    ) -> pb.DatasetVersion:
        record = await asyncio.to_thread(self._datasets.resolve, request.ref.name, request.ref.version)
        return convert.version_to_proto(record)

    async def ListDatasetVersions(
        self,
        request: pb.ListDatasetVersionsRequest,
        context: grpc.aio.ServicerContext[pb.ListDatasetVersionsRequest, pb.ListDatasetVersionsResponse],
    ) -> pb.ListDatasetVersionsResponse:
        page = await asyncio.to_thread(
            self._datasets.list_versions, request.name, request.page_size, request.page_token
        )
        return pb.ListDatasetVersionsResponse(
            versions=[convert.version_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def DeleteDataset(
        self,
        request: pb.DeleteDatasetRequest,
        context: grpc.aio.ServicerContext[pb.DeleteDatasetRequest, pb.DeleteDatasetResponse],
    ) -> pb.DeleteDatasetResponse:
        deleted = await asyncio.to_thread(self._datasets.delete, request.name, request.version, request.force)
        return pb.DeleteDatasetResponse(deleted_versions=deleted)

    async def DownloadDataset(
        self,
        request: pb.DownloadDatasetRequest,
        context: grpc.aio.ServicerContext[pb.DownloadDatasetRequest, pb.DownloadDatasetResponse],
    ) -> AsyncIterator[pb.DownloadDatasetResponse]:
        size = chunk_size(request.chunk_size, self._chunk_size)
        record = await asyncio.to_thread(self._datasets.resolve, request.ref.name, request.ref.version)
        offset = download_offset(request.offset, record.size_bytes, f"{record.name} v{record.version}'s file")
        chunks = await asyncio.to_thread(self._datasets.read_chunks, record, size, offset)
        yield pb.DownloadDatasetResponse(header=convert.version_to_proto(record))
        async for chunk in stream_chunks(chunks):
            yield pb.DownloadDatasetResponse(chunk=chunk)

    async def DownloadSplitIndices(
        self,
        request: pb.DownloadSplitIndicesRequest,
        context: grpc.aio.ServicerContext[pb.DownloadSplitIndicesRequest, pb.DownloadSplitIndicesResponse],
    ) -> AsyncIterator[pb.DownloadSplitIndicesResponse]:
        # The stored bytes as they are, read on a thread: 50M samples are 400 MB, and neither
        # a conversion nor a copy of them stalls the loop.
        record, data = await asyncio.to_thread(
            self._datasets.split_of, request.ref.name, request.ref.version, request.split
        )
        what = f"split {request.split!r} of {record.name} v{record.version} (8 bytes a sample)"
        offset = download_offset(request.offset, len(data), what)
        yield pb.DownloadSplitIndicesResponse(header=convert.version_to_proto(record))
        view = memoryview(data)
        for start in range(offset, len(data), self._chunk_size):
            # A chunk's copy, the one a bytes field needs (protobuf takes no memoryview).
            yield pb.DownloadSplitIndicesResponse(chunk=bytes(view[start : start + self._chunk_size]))
