"""The replica's blob cache: verified fetches, damage found on open, least recently used out."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tesserad.errors import DataLoss, ResourceExhausted
from tesserad.replica.blob_cache import BlobCache


def blob(fill: bytes, size: int = 100) -> tuple[bytes, str]:
    data = fill * size
    return data, hashlib.sha256(data).hexdigest()


class Primary:
    """Serves blobs and counts the fetches."""

    def __init__(self) -> None:
        self.fetches: list[str] = []

    def fetch(self, data: bytes, sha256: str):
        def stream():
            self.fetches.append(sha256)
            return [data[:40], data[40:]]

        return stream


def test_a_blob_is_fetched_once_and_then_read_from_the_cache(tmp_path: Path) -> None:
    cache, primary = BlobCache(tmp_path, 1000), Primary()
    data, sha = blob(b"a")
    for _ in range(2):
        with cache.open(sha, len(data), primary.fetch(data, sha)) as path:
            assert path.read_bytes() == data
    assert primary.fetches == [sha]


def test_a_damaged_blob_is_fetched_again(tmp_path: Path) -> None:
    cache, primary = BlobCache(tmp_path, 1000), Primary()
    data, sha = blob(b"a")
    with cache.open(sha, len(data), primary.fetch(data, sha)) as path:
        pass
    path.write_bytes(b"x" + data[1:])
    with cache.open(sha, len(data), primary.fetch(data, sha)) as path:
        assert path.read_bytes() == data
    assert primary.fetches == [sha, sha]


def test_a_download_that_does_not_match_its_hash_is_not_kept(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, 1000)
    data, sha = blob(b"a")
    with pytest.raises(DataLoss), cache.open(sha, len(data), lambda: [b"b" * 100]):
        pass
    assert not cache.path(sha).exists()


def test_the_least_recently_used_blob_is_evicted_but_never_one_in_use(tmp_path: Path) -> None:
    cache, primary = BlobCache(tmp_path, 250), Primary()
    (a, sha_a), (b, sha_b), (c, sha_c) = blob(b"a"), blob(b"b"), blob(b"c")
    with cache.open(sha_a, 100, primary.fetch(a, sha_a)):
        pass
    with cache.open(sha_b, 100, primary.fetch(b, sha_b)):
        pass
    with cache.open(sha_a, 100, primary.fetch(a, sha_a)):  # a is now the most recent
        pass
    with cache.open(sha_c, 100, primary.fetch(c, sha_c)):
        pass
    assert not cache.path(sha_b).exists()
    assert cache.path(sha_a).exists() and cache.path(sha_c).exists()
    assert cache.used_bytes == 200
    with (
        cache.open(sha_a, 100, primary.fetch(a, sha_a)),
        cache.open(sha_c, 100, primary.fetch(c, sha_c)),
        cache.open(sha_b, 100, primary.fetch(b, sha_b)),
    ):
        assert cache.used_bytes == 300  # over the bound while all three are open
    assert cache.used_bytes <= 250


def test_an_artifact_larger_than_the_cache_is_refused(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, 50)
    data, sha = blob(b"a")
    with (
        pytest.raises(ResourceExhausted, match=r"raise replica\.cache_size"),
        cache.open(sha, 100, lambda: [data]),
    ):
        pass
