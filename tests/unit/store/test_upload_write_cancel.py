"""An upload cancelled while a chunk is being written (the client gone, then the daemon stopping):
the upload ends only once the write in its thread has returned, so the writer is aborted after
it, never under it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from tessera.v1 import registry_pb2 as pb
from tesserad.api.transfers import receive_chunks
from tesserad.store import BlobStore, BlobWriter
from tests.held_threads import HeldInThread


async def _one_chunk() -> AsyncIterator[pb.UploadVersionRequest]:
    yield pb.UploadVersionRequest(chunk=b"x" * 4096)
    await asyncio.Event().wait()


def test_an_upload_cancelled_twice_mid_write_ends_only_after_the_write_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path / "blobs")

    async def upload() -> None:
        # As the servicers do: leaving the block aborts the writer.
        with blobs.writer() as writer:
            await receive_chunks(_one_chunk(), writer, None, None, lambda ref: ref)

    async def cancel_twice_mid_write(held: HeldInThread) -> None:
        receiving = asyncio.create_task(upload())
        assert await asyncio.to_thread(held.reached.wait, 30)
        try:
            for _ in range(2):
                receiving.cancel()
                # Each yield lets the task take its cancel before the next comes.
                for _ in range(5):
                    await asyncio.sleep(0)
            assert not receiving.done(), "the upload ended, and aborted its writer, while a write ran"
        finally:
            held.let_go.set()
        await asyncio.wait([receiving])
        assert receiving.cancelled()

    with HeldInThread(BlobWriter.write, "self._file.write(data)") as held:
        asyncio.run(cancel_twice_mid_write(held))
    assert held.raised == []
    assert list(blobs.tmp_dir.iterdir()) == []
