"""A backup written to an open file as it comes (`tessera admin backup -o -`) is checked on the
way: a damaged member stops the stream with DataLoss before the chunk that shows the damage is
written, not at the stream's end, and one cut short is DataLoss at the end."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tessera.backup import BLOB_PREFIX
from tessera.errors import DataLoss
from tessera.system import BackupStream, _write_all
from tesserad.backup import Backup
from tesserad.datasets.references import BLOB_HOLDERS, hold_blob
from tesserad.store import BlobStore, Store

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

CHUNK = 4096


def _archive(tmp_path: Path) -> bytes:
    """A daemon's backup holding two blobs of 1 MiB."""
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=["items", BLOB_HOLDERS])
    blobs = BlobStore(tmp_path / "blobs")
    try:
        for holder in ("version:1", "version:2"):
            sha256 = blobs.put_bytes(os.urandom(1 << 20)).sha256
            with store.write() as txn:
                hold_blob(txn, sha256, holder)
            blobs.release(sha256)
        backup = Backup(store, blobs, "test")
        backup.prepare(CHUNK)
        chunks = []
        while (chunk := backup.next_chunk()) is not None:
            chunks.append(chunk)
        backup.close()
    finally:
        store.close()
    return b"".join(chunks)


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def test_a_whole_backup_passes_through_unchanged(tmp_path: Path) -> None:
    data, out = _archive(tmp_path), io.BytesIO()
    sink = BackupStream(out)
    for chunk in _chunks(data):
        sink.write(chunk)
    assert len(sink.finish().blobs) == 2
    assert out.getvalue() == data


def test_a_damaged_blob_ends_the_stream_before_the_rest_comes(tmp_path: Path) -> None:
    data = bytearray(_archive(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        first = next(m for m in tar.getmembers() if m.name.startswith(BLOB_PREFIX))
    data[first.offset_data + 10] ^= 1
    chunks, out = _chunks(bytes(data)), io.BytesIO()
    sink = BackupStream(out)
    with pytest.raises(DataLoss, match=f"{first.name} has sha256 .* it was altered or damaged") as raised:
        for chunk in chunks:
            sink.write(chunk)
    sink.abort()
    # Nothing from the chunk holding the damaged blob's end on, where its sha256 shows the damage.
    end = first.offset_data + first.size
    assert out.getvalue() == data[: out.tell()] and out.tell() <= (end - 1) // CHUNK * CHUNK
    assert "take it again" in str(raised.value)


def test_a_backup_cut_short_is_data_loss_at_its_end(tmp_path: Path) -> None:
    data, out = _archive(tmp_path), io.BytesIO()
    sink = BackupStream(out)
    for chunk in _chunks(data)[:100]:
        sink.write(chunk)
    with pytest.raises(DataLoss, match="truncated"):
        sink.finish()


def test_an_abandoned_stream_ends_its_check(tmp_path: Path) -> None:
    sink = BackupStream(io.BytesIO())
    sink.write(_archive(tmp_path)[:CHUNK])
    sink.abort()
    sink.abort()


class _FullCounted(io.FileIO):
    """A raw file that counts the writes that took nothing, one after another, and says when
    the first came."""

    def __init__(self, fd: int, first_full: threading.Event) -> None:
        super().__init__(fd, "wb")
        self._first_full = first_full
        self.nothing_in_a_row = 0
        self.most_nothing_in_a_row = 0

    def write(self, data: ReadableBuffer, /) -> int | None:
        written = super().write(data)
        self.nothing_in_a_row = self.nothing_in_a_row + 1 if written is None else 0
        self.most_nothing_in_a_row = max(self.most_nothing_in_a_row, self.nothing_in_a_row)
        if written is None:
            self._first_full.set()
        return written


def test_a_full_non_blocking_raw_output_is_waited_on_not_spun_on() -> None:
    # Its write says None when the pipe is full: the loop wrote it again at once, and forever
    # when nothing read the pipe.
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    first_full = threading.Event()
    received = bytearray()

    def drain() -> None:
        first_full.wait()
        with os.fdopen(read_fd, "rb") as reader:
            received.extend(reader.read())

    reading = threading.Thread(target=drain)
    reading.start()
    data = os.urandom(4 << 20)
    with _FullCounted(write_fd, first_full) as output:
        _write_all(output, data)
    reading.join()
    assert bytes(received) == data
    assert output.most_nothing_in_a_row == 1
