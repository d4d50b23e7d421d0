"""The blob directory: atomic writes, declared-hash checks, corruption detection."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tesserad.errors import DataLoss, InvalidArgument, ResourceExhausted
from tesserad.store import BlobStore, checked_digest
from tesserad.store import blobs as blobs_module


def test_write_commit_read(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"tessera" * 100_000
    with blobs.writer() as writer:
        for i in range(0, len(data), 65536):
            writer.write(data[i : i + 65536])
        ref = writer.commit(hashlib.sha256(data).hexdigest(), len(data))
    assert ref.size == len(data) and blobs.exists(ref.sha256)
    assert b"".join(blobs.read_chunks(ref.sha256, 4096)) == data
    assert blobs.path(ref.sha256).parent.name == ref.sha256[:2]
    assert list(blobs.tmp_dir.iterdir()) == []


def test_put_moved_renames_a_temp_file_into_place(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"onnx" * 100_000
    inodes = []
    for _ in range(2):  # the second finds the blob in place and drops its file
        source = blobs.tmp_dir / "export-1.onnx"
        source.write_bytes(data)
        inodes.append(source.stat().st_ino)
        ref = blobs.put_moved(source)
        assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size == len(data)
        assert list(blobs.tmp_dir.iterdir()) == []
        blobs.release(ref.sha256)
    assert blobs.path(ref.sha256).stat().st_ino == inodes[0]  # moved, not copied
    assert blobs.read_bytes(ref.sha256) == data


def test_put_moved_refuses_a_file_outside_the_stores_temp_dir(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    source = tmp_path / "elsewhere.onnx"
    source.write_bytes(b"onnx")
    with pytest.raises(ValueError, match="takes a file in"):
        blobs.put_moved(source)
    assert list(blobs.all()) == []


def test_declared_hash_or_size_mismatch_is_the_senders_invalid_argument_and_stores_nothing(
    tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path)
    with blobs.writer() as writer:
        writer.write(b"abc")
        with pytest.raises(InvalidArgument, match="checksum mismatch"):
            writer.commit("0" * 64)
    with blobs.writer() as writer:
        writer.write(b"abc")
        with pytest.raises(InvalidArgument, match="declared 4"):
            writer.commit(expected_size=4)
    assert list(blobs.all()) == [] and list(blobs.tmp_dir.iterdir()) == []


def test_an_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(KeyboardInterrupt), blobs.writer() as writer:
        writer.write(b"partial")
        raise KeyboardInterrupt
    assert list(blobs.all()) == [] and list(blobs.tmp_dir.iterdir()) == []


def test_size_limit_is_resource_exhausted(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with blobs.writer(max_size=10, limit_name="limits.max_upload_size") as writer:
        writer.write(b"0123456789")
        with pytest.raises(ResourceExhausted, match=r"limits\.max_upload_size"):
            writer.write(b"x")
    assert list(blobs.tmp_dir.iterdir()) == []


def test_corruption_on_disk_is_data_loss(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.put_bytes(b"a" * 10_000)
    path = blobs.path(ref.sha256)
    path.chmod(0o644)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataLoss, match="damaged"):
        list(blobs.read_chunks(ref.sha256, 1024))
    assert not blobs.verify(ref.sha256)


def test_hash_names_cannot_escape(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63):
        with pytest.raises(InvalidArgument):
            blobs.path(bad)


def test_collect_spares_live_and_young_blobs(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    live = blobs.put_bytes(b"live")
    dead = blobs.put_bytes(b"dead")
    assert blobs.collect({live.sha256}, min_age_s=3600) == []
    assert blobs.collect({live.sha256}, min_age_s=0) == [dead.sha256]
    assert blobs.exists(live.sha256) and not blobs.exists(dead.sha256)


def test_stale_uploads_are_cleared_on_open(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    writer = blobs.writer()
    writer.write(b"left behind by a crash")
    assert BlobStore(tmp_path).tmp_dir.exists()
    assert list(blobs.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_put_each_stores_what_was_declared_once(tmp_path: Path, syncfs: bool) -> None:
    blobs = BlobStore(tmp_path, syncfs=syncfs)
    data = b"small artifact"
    digest = checked_digest(
        data, hashlib.sha256(data).hexdigest(), len(data), 1024, "limits.max_artifact_size"
    )
    assert blobs.put_each([(digest, data)]) == [None]
    assert blobs.read_bytes(digest) == data
    assert blobs.put_each([(digest, data)]) == [None]
    assert list(blobs.all()) == [digest] and list(blobs.tmp_dir.iterdir()) == []


def test_checked_digest_refuses_what_was_not_declared(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="checksum mismatch"):
        checked_digest(b"abc", "0" * 64, 3)
    with pytest.raises(InvalidArgument, match="declared 4"):
        checked_digest(b"abc", hashlib.sha256(b"abc").hexdigest(), 4)
    with pytest.raises(ResourceExhausted, match=r"limits\.max_artifact_size"):
        checked_digest(b"abcd", max_size=3, limit_name="limits.max_artifact_size")


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_put_each_remakes_a_shard_directory_removed_by_hand(tmp_path: Path, syncfs: bool) -> None:
    blobs = BlobStore(tmp_path, syncfs=syncfs)
    data = b"x"
    digest = hashlib.sha256(data).hexdigest()
    blobs.path(digest).parent.rmdir()
    assert blobs.put_each([(digest, data)]) == [None]
    assert blobs.read_bytes(digest) == data


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_put_many_stores_every_blob_and_skips_those_already_there(tmp_path: Path, syncfs: bool) -> None:
    blobs = BlobStore(tmp_path, syncfs=syncfs)
    datas = [f"blob {i}".encode() for i in range(40)]
    digests = [checked_digest(d, hashlib.sha256(d).hexdigest(), len(d)) for d in datas]
    blobs.put_bytes(datas[0])
    blobs.put_many(dict(zip(digests, datas, strict=True)))
    assert sorted(blobs.all()) == sorted(digests)
    assert all(blobs.read_bytes(d) == data for d, data in zip(digests, datas, strict=True))
    assert list(blobs.tmp_dir.iterdir()) == []


def test_a_put_claims_its_blob_until_released_and_delete_leaves_a_claimed_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.put_bytes(b"shared bytes")
    # A second upload of the same bytes finds the file in place and claims it too.
    assert blobs.put_each([(ref.sha256, b"shared bytes")]) == [None]
    blobs.release(ref.sha256)
    assert blobs.claimed(ref.sha256)
    assert not blobs.delete(ref.sha256) and blobs.exists(ref.sha256)
    blobs.release(ref.sha256)
    assert not blobs.claimed(ref.sha256)
    assert blobs.delete(ref.sha256) and not blobs.exists(ref.sha256)


def test_put_many_claims_every_digest_even_those_already_in_place(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    first = blobs.put_bytes(b"one")
    blobs.release(first.sha256)
    second = hashlib.sha256(b"two").hexdigest()
    blobs.put_many({first.sha256: b"one", second: b"two"})
    assert blobs.claimed(first.sha256) and blobs.claimed(second)
    assert not blobs.delete(first.sha256)
    blobs.release(first.sha256, second, second)  # releasing more than was claimed is harmless
    assert blobs.delete(first.sha256) and blobs.delete(second)


class _FailingWrites(BlobStore):
    """A blob store whose writes of `refused` fail as a full disk would."""

    refused = b"no room for this one"

    def _write_temp(self, data: bytes, fsync: bool) -> Path:
        if data == self.refused:
            raise OSError(28, "No space left on device")
        return super()._write_temp(data, fsync)


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_put_each_gives_each_entry_its_own_outcome_and_claim(tmp_path: Path, syncfs: bool) -> None:
    blobs = _FailingWrites(tmp_path, syncfs=syncfs)
    datas = [b"one", b"two", b"one", blobs.refused]
    digests = [hashlib.sha256(d).hexdigest() for d in datas]
    outcomes = blobs.put_each(list(zip(digests, datas, strict=True)))
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], ResourceExhausted)
    assert "the disk under tesserad's data directory is full: the blob needs 20 B" in outcomes[3].message
    assert sorted(blobs.all()) == sorted(set(digests[:2]))
    assert list(blobs.tmp_dir.iterdir()) == []
    blobs.release(digests[0], digests[3])
    assert blobs.claimed(digests[0])  # claimed once per entry: the second entry still holds it
    assert not blobs.delete(digests[0])
    blobs.release(digests[0], digests[1])
    assert not any(blobs.claimed(d) for d in digests)


class _Syncfs:
    """syncfs(2) as a disk with a writeback error answers it, once `failing` is set; `hold`
    keeps a call waiting (set `release` to let it answer)."""

    def __init__(self) -> None:
        self.failing = False
        self.hold = False
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, fd: int) -> int:
        self.calls += 1
        self.entered.set()
        if self.hold:
            self.release.wait(10)
        if self.failing:
            ctypes.set_errno(errno.EIO)
            return -1
        return 0


@pytest.fixture
def syncfs(monkeypatch: pytest.MonkeyPatch) -> _Syncfs:
    fake = _Syncfs()
    monkeypatch.setattr(blobs_module, "_syncfs_call", lambda: fake)
    return fake


def test_a_failed_syncfs_removes_the_blobs_it_was_to_make_durable_and_spares_the_rest(
    tmp_path: Path, syncfs: _Syncfs
) -> None:
    blobs = BlobStore(tmp_path)
    old, new = (hashlib.sha256(data).hexdigest() for data in (b"old", b"new"))
    assert blobs.put_each([(old, b"old")]) == [None] and syncfs.calls == 1
    syncfs.failing = True
    failed, kept = blobs.put_each([(new, b"new"), (old, b"old")])
    assert isinstance(failed, OSError) and failed.errno == errno.EIO and "syncfs" in str(failed)
    assert kept is None  # in place before this put: durable already
    assert list(blobs.all()) == [old] and list(blobs.tmp_dir.iterdir()) == []
    assert blobs.put_each([(old, b"old")]) == [None] and syncfs.calls == 2  # nothing to sync
    syncfs.failing = False
    assert blobs.put_each([(new, b"new")]) == [None]
    assert blobs.read_bytes(new) == b"new"


def test_a_blob_a_failed_syncfs_could_not_remove_is_written_and_synced_again(
    tmp_path: Path, syncfs: _Syncfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = BlobStore(tmp_path)
    digest = hashlib.sha256(b"kept").hexdigest()
    unlink = os.unlink

    def read_only_blob_directory(path: str) -> None:
        if f"{os.sep}sha256{os.sep}" in path:
            raise OSError(errno.EROFS, "Read-only file system")
        unlink(path)

    syncfs.failing = True
    with monkeypatch.context() as patch:
        patch.setattr(blobs_module.os, "unlink", read_only_blob_directory)
        [failed] = blobs.put_each([(digest, b"kept")])
    assert isinstance(failed, OSError) and failed.errno == errno.EIO
    assert blobs.exists(digest)  # left in place, not durable
    syncfs.failing = False
    calls = syncfs.calls
    # Not taken for a durable blob: written again and synced, by a grouped or a streamed put.
    assert blobs.put_each([(digest, b"kept")]) == [None] and syncfs.calls == calls + 1
    assert blobs.put_each([(digest, b"kept")]) == [None] and syncfs.calls == calls + 1
    assert blobs.read_bytes(digest) == b"kept"


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_a_failed_directory_fsync_leaves_no_blob_in_place(
    tmp_path: Path, syncfs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = BlobStore(tmp_path, syncfs=syncfs)

    def failing_fsync_dir(path: str | Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(blobs_module, "fsync_dir", failing_fsync_dir)
    with pytest.raises(OSError, match="Input/output"):
        blobs.put_bytes(b"streamed")
    assert not blobs.claimed(hashlib.sha256(b"streamed").hexdigest())
    if not syncfs:  # the syncfs path fsyncs no directory
        digest = hashlib.sha256(b"grouped").hexdigest()
        [outcome] = blobs.put_each([(digest, b"grouped")])
        assert isinstance(outcome, OSError) and outcome.errno == errno.EIO
    assert list(blobs.all()) == [] and list(blobs.tmp_dir.iterdir()) == []


def test_a_put_waits_for_another_put_of_its_digest_to_make_it_durable_or_remove_it(
    tmp_path: Path, syncfs: _Syncfs
) -> None:
    blobs = BlobStore(tmp_path)
    digest = hashlib.sha256(b"both").hexdigest()
    syncfs.hold = syncfs.failing = True
    grouped: list[Exception | None] = []
    group = threading.Thread(target=lambda: grouped.extend(blobs.put_each([(digest, b"both")])))
    group.start()
    assert syncfs.entered.wait(10)
    assert blobs.exists(digest)  # renamed into place, not durable yet
    streamed: list[str] = []
    stream = threading.Thread(target=lambda: streamed.append(blobs.put_bytes(b"both").sha256))
    stream.start()
    stream.join(0.3)
    assert stream.is_alive()  # it would have taken the group's blob for a durable one
    syncfs.release.set()
    group.join(10)
    stream.join(10)
    assert isinstance(grouped[0], OSError) and streamed == [digest]
    assert blobs.read_bytes(digest) == b"both"


_OVER_FILE_SIZE_LIMIT = """
import resource, sys
from pathlib import Path
from tesserad.errors import ResourceExhausted
from tesserad.store import BlobStore
blobs = BlobStore(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    blobs.put_bytes(bytes(2 << 20))
except ResourceExhausted as exc:
    print(exc.message)
"""


def test_a_blob_over_the_daemons_file_size_limit_is_resource_exhausted_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # A real limit (ulimit -f) in a process of its own: the kernel answers EFBIG.
    ran = subprocess.run(
        [sys.executable, "-c", _OVER_FILE_SIZE_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "the blob (2 MiB) is larger than the largest file tesserad may write" in ran.stdout, ran.stderr
    assert "ulimit -f" in ran.stdout
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(BlobStore(tmp_path).all()) == []


def _census_once_refreshed(store: BlobStore, before: tuple[int, int]) -> tuple[int, int]:
    """The census once it differs from `before` (a walk right after another may wait its turn)."""
    for _ in range(1000):
        census = store.census()
        if (census.count, census.bytes) != before:
            return census.count, census.bytes
        threading.Event().wait(0.01)
    return before


def test_census_counts_blobs_and_their_bytes_as_they_come_and_go(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    assert (store.census().count, store.census().bytes) == (0, 0)
    first = store.put_bytes(b"x" * 100)
    assert _census_once_refreshed(store, (0, 0)) == (1, 100)
    store.put_many({checked_digest(b"y" * 30): b"y" * 30, checked_digest(b"x" * 100): b"x" * 100})
    assert _census_once_refreshed(store, (1, 100)) == (2, 130)
    store.release(first.sha256, first.sha256, checked_digest(b"y" * 30))  # the puts' claims
    assert store.delete(first.sha256)
    assert _census_once_refreshed(store, (2, 130)) == (1, 30)
