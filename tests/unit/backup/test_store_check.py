"""The store check, step by step: a daemon stopping ends the checks under way, a blob deleted
after its shard was listed is no damage, and weights only a job's hold references are looked for."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesserad.backup.verify import MISSING, StoreCheck, StoreChecks
from tesserad.datasets.references import hold_blob, start_weights_holder
from tesserad.errors import Unavailable
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Store, BlobStore]]:
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=STORE_TABLES)
    yield store, BlobStore(tmp_path / "blobs")
    store.close()


def test_a_daemon_stopping_ends_the_checks_under_way(parts: tuple[Store, BlobStore]) -> None:
    store, blobs = parts
    for data in (b"one", b"two"):
        blobs.put_bytes(data)
    checks = StoreChecks(store, blobs)
    check = checks.start(progress=True)
    assert check.step()
    checks.close()
    with pytest.raises(Unavailable, match="stopping"):
        check.step()
    with pytest.raises(Unavailable, match="not begun"):
        checks.start(progress=False)


def test_a_check_that_tells_no_progress_does_not_count_the_blobs_first(
    parts: tuple[Store, BlobStore],
) -> None:
    store, blobs = parts
    blobs.put_bytes(b"one")
    check = StoreCheck(store, blobs)
    # Its first step hashes the blob at once: no walk of the blob directory before it.
    assert check.step()
    assert (check.blobs_total, check.blobs_checked) == (0, 1)
    assert check.run().blobs_checked == 1


def _same_shard_as(sha256: str) -> bytes:
    """Bytes whose blob lands in the shard of `sha256`'s, so that one listing names both."""
    candidates = (f"other {i}".encode() for i in itertools.count())
    return next(data for data in candidates if hashlib.sha256(data).hexdigest()[:2] == sha256[:2])


def test_a_blob_deleted_after_its_shard_was_listed_is_no_damage(parts: tuple[Store, BlobStore]) -> None:
    store, blobs = parts
    one = blobs.put_bytes(b"one").sha256
    other = blobs.put_bytes(_same_shard_as(one)).sha256
    blobs.release(one, other)
    first, second = sorted((one, other))
    check = StoreCheck(store, blobs, progress=True)
    # The first step counts the blobs to check; the next lists the shard and hashes its first.
    assert check.step()
    assert (check.blobs_total, check.blobs_checked) == (2, 0)
    assert check.step()
    assert check.blobs_checked == 1
    assert blobs.delete(second)
    report = check.run()
    assert report.problems == ()
    assert report.blobs_checked == 1
    assert blobs.exists(first)


def test_the_weights_an_unended_job_starts_from_are_looked_for(parts: tuple[Store, BlobStore]) -> None:
    """Only the job's hold references them: a resumed checkpoint its own job has released."""
    store, blobs = parts
    sha256 = blobs.put_bytes(b"weights").sha256
    with store.write() as txn:
        hold_blob(txn, sha256, start_weights_holder("job-1"))
    blobs.release(sha256)
    blobs.delete(sha256)
    report = StoreCheck(store, blobs).run()
    assert [(p.sha256, p.kind, p.owners) for p in report.problems] == [
        (sha256, MISSING, ("job job-1 (the weights it starts from)",))
    ]
    assert report.references_checked == 1
