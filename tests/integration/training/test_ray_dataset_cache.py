"""A Ray node's dataset cache (training.ray_worker_client.cached_dataset) against a real daemon:
fetched by content hash, verified, reused, and bounded by training.ray_dataset_cache_size."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from tesserad.training import ray_worker_client
from tesserad.training.ray_worker_client import (
    RECENT_USE_S,
    CachedFile,
    DatasetFetchError,
    cached_dataset,
    files_to_evict,
)
from tests.integration.training.conftest import upload_dataset


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "node-cache"
    monkeypatch.setattr(ray_worker_client, "CACHE_DIR", directory)
    return directory


def _dataset(channel, name: str, rows: int):
    x = np.random.default_rng(rows).normal(size=(rows, 6)).astype(np.float32)
    return upload_dataset(channel, name, {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})


def test_the_cache_keeps_what_fits_and_evicts_the_least_recently_used(training_daemon, cache_dir) -> None:
    channel = training_daemon.channel()
    first, second = _dataset(channel, "first", 400), _dataset(channel, "second", 500)
    limit = first.size_bytes + second.size_bytes

    def fetch(name: str, sha256: str) -> Path:
        return cached_dataset(training_daemon.target, "", name, 1, sha256, "npz", limit)

    path = fetch("first", first.sha256)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256
    os.utime(path, (0, 0))  # used long ago
    assert fetch("first", first.sha256) == path and path.stat().st_mtime > RECENT_USE_S  # a hit marks its use
    os.utime(path, (0, 0))
    assert fetch("second", second.sha256).exists() and path.exists()  # both fit
    third = _dataset(channel, "third", 300)
    kept = fetch("third", third.sha256)
    # Over the limit: the least recently used goes; the second was fetched just now and stays.
    assert kept.exists() and not path.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(f"{v.sha256}.npz" for v in (second, third))


def test_a_hit_is_marked_used_after_its_hash_however_long_that_takes(
    training_daemon, cache_dir, monkeypatch
) -> None:
    """A large file's hash can outlast RECENT_USE_S: the mark made before it must not be the last,
    or another job's trim evicts the file this job is about to read."""
    version = _dataset(training_daemon.channel(), "large", 300)
    path = cached_dataset(training_daemon.target, "", "large", 1, version.sha256, "npz", 2**30)
    hash_file = ray_worker_client._sha256_of

    def hash_outlasting_recent_use(file: Path) -> str:
        digest = hash_file(file)
        os.utime(file, (0, 0))  # the mark before the hash, as seen when the hash ends long after
        return digest

    monkeypatch.setattr(ray_worker_client, "_sha256_of", hash_outlasting_recent_use)
    assert cached_dataset(training_daemon.target, "", "large", 1, version.sha256, "npz", 2**30) == path
    used = CachedFile(path.name, path.stat().st_size, path.stat().st_mtime)
    assert files_to_evict([used], 0, keep="another job's file", now=time.time()) == []


def test_a_hit_another_job_evicts_during_its_hash_is_fetched_again(
    training_daemon, cache_dir, monkeypatch
) -> None:
    """Another job's trim can remove the file while a long hash runs: the job fetches it again
    rather than fail."""
    version = _dataset(training_daemon.channel(), "evicted", 300)
    path = cached_dataset(training_daemon.target, "", "evicted", 1, version.sha256, "npz", 2**30)
    genuine = path.read_bytes()
    hash_file = ray_worker_client._sha256_of

    def hash_outlasted_by_an_eviction(file: Path) -> str:
        digest = hash_file(file)
        file.unlink()  # another job's trim, while the hash ran
        return digest

    monkeypatch.setattr(ray_worker_client, "_sha256_of", hash_outlasted_by_an_eviction)
    again = cached_dataset(training_daemon.target, "", "evicted", 1, version.sha256, "npz", 2**30)
    assert again == path and again.read_bytes() == genuine


def test_bytes_that_are_not_the_version_asked_for_are_refused_and_not_kept(
    training_daemon, cache_dir
) -> None:
    version = _dataset(training_daemon.channel(), "other", 200)
    with pytest.raises(DatasetFetchError, match=f"has sha256 {version.sha256}, not the 0+ the job"):
        cached_dataset(training_daemon.target, "", "other", 1, "0" * 64, "npz", 2**30)
    assert list(cache_dir.iterdir()) == []


def test_a_cached_file_changed_on_disk_is_fetched_again_not_used(training_daemon, cache_dir) -> None:
    version = _dataset(training_daemon.channel(), "planted", 300)
    path = cached_dataset(training_daemon.target, "", "planted", 1, version.sha256, "npz", 2**30)
    genuine = path.read_bytes()
    # Another user of the node, or a bad disk, puts other bytes under the version's name.
    path.write_bytes(b"PK planted" + genuine[10:])
    again = cached_dataset(training_daemon.target, "", "planted", 1, version.sha256, "npz", 2**30)
    assert again == path and again.read_bytes() == genuine


def test_the_cache_directory_is_made_for_this_user_alone_and_a_loose_one_is_closed(
    training_daemon, cache_dir
) -> None:
    version = _dataset(training_daemon.channel(), "private", 100)
    cached_dataset(training_daemon.target, "", "private", 1, version.sha256, "npz", 2**30)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    cache_dir.chmod(0o777)
    cached_dataset(training_daemon.target, "", "private", 1, version.sha256, "npz", 2**30)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give the directory to another user")
def test_a_cache_directory_another_user_owns_is_refused(training_daemon, cache_dir) -> None:
    version = _dataset(training_daemon.channel(), "squatted", 100)
    cache_dir.mkdir(mode=0o755)
    os.chown(cache_dir, 65534, 65534)
    with pytest.raises(
        DatasetFetchError,
        match=f"the dataset cache {cache_dir} on this Ray node is not a directory of the user",
    ):
        cached_dataset(training_daemon.target, "", "squatted", 1, version.sha256, "npz", 2**30)
    assert list(cache_dir.iterdir()) == []


def test_a_link_in_place_of_the_cache_directory_is_refused(training_daemon, cache_dir, tmp_path) -> None:
    version = _dataset(training_daemon.channel(), "linked", 100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache_dir.symlink_to(elsewhere)
    with pytest.raises(DatasetFetchError, match="remove it, and the next job makes it anew"):
        cached_dataset(training_daemon.target, "", "linked", 1, version.sha256, "npz", 2**30)
    assert list(elsewhere.iterdir()) == []
