"""Request ids of job submits expire after REQUEST_ID_TTL_S, and each write drops a few expired
ones: a store of them does not grow with every submit ever made."""

from __future__ import annotations

from pathlib import Path

from tesserad.store import Store
from tesserad.training.job_requests import (
    REQUEST_ID_TTL_S,
    TABLES,
    drop_expired_requests,
    find_request,
    keep_request,
)


def test_expired_request_ids_are_not_found_and_writes_drop_them_oldest_first(tmp_path: Path) -> None:
    store = Store.open(tmp_path, map_size=1 << 24, tables=TABLES)
    try:
        with store.write() as txn:
            for n in range(20):
                keep_request(txn, "alice", f"id-{n}", f"job-{n}", "fingerprint", float(n))
            keep_request(txn, "alice", "fresh", "job-fresh", "fingerprint", float(REQUEST_ID_TTL_S))
        later = REQUEST_ID_TTL_S + 100.0
        with store.read() as txn:
            assert find_request(txn, "alice", "id-0", later) is None
            kept = find_request(txn, "alice", "fresh", later)
            assert kept is not None and kept.job_id == "job-fresh"
        with store.write() as txn:
            drop_expired_requests(txn, later)
        with store.read() as txn:
            left = sorted(str(key[1]) for key, _ in txn.scan("job_requests"))
            assert left == ["fresh", *sorted(f"id-{n}" for n in range(16, 20))]
            assert txn.count("job_request_expiry") == 5
        with store.write() as txn:
            drop_expired_requests(txn, later)
            keep_request(txn, "alice", "id-0", "job-again", "other", later)
        with store.read() as txn:
            assert sorted(str(key[1]) for key, _ in txn.scan("job_requests")) == ["fresh", "id-0"]
            again = find_request(txn, "alice", "id-0", later)
            assert again is not None and again.job_id == "job-again"
            assert txn.count("job_request_expiry") == 2
    finally:
        store.close()


def test_request_ids_are_each_callers_own_and_expire_apart(tmp_path: Path) -> None:
    store = Store.open(tmp_path, map_size=1 << 24, tables=TABLES)
    try:
        with store.write() as txn:
            keep_request(txn, "alice", "nightly", "job-alice", "spec-a", 0.0)
            keep_request(txn, "bob", "nightly", "job-bob", "spec-b", 10.0)
        with store.read() as txn:
            alice = find_request(txn, "alice", "nightly", 1.0)
            bob = find_request(txn, "bob", "nightly", 1.0)
            assert alice is not None and alice.job_id == "job-alice"
            assert bob is not None and bob.job_id == "job-bob"
            assert find_request(txn, "carol", "nightly", 1.0) is None
        with store.write() as txn:
            drop_expired_requests(txn, REQUEST_ID_TTL_S + 5.0)
        with store.read() as txn:
            assert [key for key, _ in txn.scan("job_requests")] == [("bob", "nightly")]
            assert [key[1:] for key, _ in txn.scan("job_request_expiry")] == [("bob", "nightly")]
    finally:
        store.close()
