"""A backup's pins: a blob its snapshot references outlives a delete until the backup ends,
and ending it early (the client gone) leaves no temp copy and no pin behind."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.backup import BLOB_PREFIX, STORE_NAME, ArchiveError, Entry, Manifest, read_archive
from tesserad.backup import Backup, Backups
from tesserad.backup.snapshot import stall_allowance_s
from tesserad.datasets.references import BLOB_HOLDERS, delete_unheld_blobs, hold_blob, release_blob
from tesserad.errors import Unavailable
from tesserad.store import BlobStore, Store
from tests.held_threads import HeldInThread


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Store, BlobStore]]:
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=["items", BLOB_HOLDERS])
    yield store, BlobStore(tmp_path / "blobs")
    store.close()


def _held_blob(store: Store, blobs: BlobStore, data: bytes) -> str:
    sha256 = blobs.put_bytes(data).sha256
    with store.write() as txn:
        hold_blob(txn, sha256, "version:1")
        txn.put("items", ("a",), b"1")
    blobs.release(sha256)
    return sha256


def _delete(store: Store, blobs: BlobStore, sha256: str) -> None:
    """What deleting the blob's only holder does: release it, then delete it if unheld."""
    with store.write() as txn:
        release_blob(txn, sha256, "version:1")
    delete_unheld_blobs(store, blobs, {sha256})


def test_a_blob_deleted_during_a_backup_is_in_it_and_goes_when_it_ends(
    parts: tuple[Store, BlobStore], tmp_path: Path
) -> None:
    store, blobs = parts
    sha256 = _held_blob(store, blobs, b"weights" * 1000)
    backup = Backup(store, blobs, "test")
    manifest = backup.prepare(chunk_size=1024)
    assert manifest is not None and manifest.blobs == {sha256: 7000}
    assert manifest.records == {"items": 1, BLOB_HOLDERS: 1}

    _delete(store, blobs, sha256)
    assert blobs.exists(sha256)  # pinned by the backup
    chunks = []
    while (chunk := backup.next_chunk()) is not None:
        assert len(chunk) <= 1024
        chunks.append(chunk)
    archive = tmp_path / "b.tar"
    archive.write_bytes(b"".join(chunks))
    assert read_archive(archive) == manifest
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["manifest.json", STORE_NAME, BLOB_PREFIX + sha256]
        assert tar.extractfile(BLOB_PREFIX + sha256).read() == b"weights" * 1000
    backup.close()
    assert not blobs.exists(sha256)  # unheld and unpinned: deleted as the backup ended


@pytest.mark.parametrize("chunk_size", [512, 1000, 1 << 20])
def test_a_backup_says_its_archives_size_before_the_first_chunk(
    parts: tuple[Store, BlobStore], chunk_size: int
) -> None:
    # Blobs around a tar block's size, so that each member's padding and the end's are counted.
    store, blobs = parts
    for data in (b"", b"a", b"b" * 511, b"c" * 512, b"d" * 513, b"e" * 10_240, b"f" * 10_241):
        _held_blob(store, blobs, data)
    backup = Backup(store, blobs, "test")
    assert backup.prepare(chunk_size) is not None
    size = backup.archive_size
    chunks = []
    while (chunk := backup.next_chunk()) is not None:
        chunks.append(chunk)
    backup.close()
    assert size == len(b"".join(chunks))


def test_a_backup_closed_mid_stream_leaves_no_copy_and_no_pin(parts: tuple[Store, BlobStore]) -> None:
    store, blobs = parts
    sha256 = _held_blob(store, blobs, bytes(range(256)) * 64)
    backup = Backup(store, blobs, "test")
    backup.prepare(chunk_size=512)
    assert backup.next_chunk() is not None
    assert [p.name.startswith("backup-") for p in blobs.tmp_dir.iterdir()] == [True]
    backup.close()
    assert list(blobs.tmp_dir.iterdir()) == []
    assert backup.next_chunk() is None
    assert not blobs.claimed(sha256)
    _delete(store, blobs, sha256)
    assert not blobs.exists(sha256)


def test_the_store_copy_is_the_snapshot_not_later_writes(
    parts: tuple[Store, BlobStore], tmp_path: Path
) -> None:
    store, blobs = parts
    _held_blob(store, blobs, b"x")
    backup = Backup(store, blobs, "test")
    backup.prepare(chunk_size=4096)
    with store.write() as txn:
        txn.put("items", ("b",), b"2")
    data = b"".join(iter(backup.next_chunk, None))
    backup.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        copy = tar.extractfile(STORE_NAME).read()
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "data.mdb").write_bytes(copy)
    restored = Store.open(tmp_path / "copy", map_size=64 * 2**20, tables=["items", BLOB_HOLDERS])
    try:
        with restored.read() as txn:
            assert [key for key, _ in txn.scan("items")] == [("a",)]
    finally:
        restored.close()


def test_a_daemon_stopping_ends_its_open_backups_unavailable(parts: tuple[Store, BlobStore]) -> None:
    store, blobs = parts
    sha256 = _held_blob(store, blobs, bytes(range(256)) * 64)
    backups = Backups(store, blobs, "test", stall_timeout_s=120.0)
    backup = backups.start()
    backup.prepare(chunk_size=512)
    assert backup.next_chunk() is not None
    backups.close()
    with pytest.raises(Unavailable, match="stopping"):
        backup.next_chunk()
    assert list(blobs.tmp_dir.iterdir()) == []
    assert not blobs.claimed(sha256)


def test_a_manifest_digest_with_a_line_end_is_malformed():
    # `$` also matches before a final newline, and the name would not be the blob's in the archive.
    good = Manifest("1", "now", {}, Entry("a" * 64, 1), {"b" * 64: 2})
    assert Manifest.from_json(good.to_json()) == good
    damaged = Manifest("1", "now", {}, Entry("a" * 64, 1), {"b" * 64 + "\n": 2})
    with pytest.raises(ArchiveError, match="malformed"):
        Manifest.from_json(damaged.to_json())


def test_a_big_chunk_on_a_slow_link_is_given_time_to_send_at_the_floor_rate() -> None:
    # 4 MiB at 8 KiB/s takes 512 s: a client reading steadily at 20 KB/s was ended at 120 s.
    assert stall_allowance_s(120.0, 4 * 2**20) == 512.0
    assert stall_allowance_s(120.0, 64 * 2**10) == 120.0


def test_a_backup_call_cancelled_again_while_its_backup_closes_ends_only_once_it_is_closed(
    parts: tuple[Store, BlobStore],
) -> None:
    """The client gone, then the daemon stopping: the call's end waits out the close in its
    thread, so nothing of the backup (its store copy, its pins) outlives the call."""
    store, blobs = parts
    sha256 = _held_blob(store, blobs, bytes(range(256)) * 64)
    backups = Backups(store, blobs, "test", stall_timeout_s=120.0)

    async def backing_up(prepared: asyncio.Event) -> None:
        async with backups.line_up() as turn:
            backup = await turn.start()
            await asyncio.to_thread(backup.prepare, 512)
            prepared.set()
            await asyncio.Event().wait()

    async def cancel_twice_mid_close(held: HeldInThread) -> None:
        prepared = asyncio.Event()
        call = asyncio.create_task(backing_up(prepared))
        await prepared.wait()
        call.cancel()
        assert await asyncio.to_thread(held.reached.wait, 30)
        try:
            call.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
            assert not call.done(), "the call ended while its backup was still being closed"
        finally:
            held.let_go.set()
        await asyncio.wait([call])
        assert call.cancelled()

    with HeldInThread(Backup.close, "self._copy_path.unlink(missing_ok=True)") as held:
        asyncio.run(cancel_twice_mid_close(held))
    assert held.raised == []
    assert list(blobs.tmp_dir.iterdir()) == []
    assert not blobs.claimed(sha256)
