"""Request ids of submits expire after REQUEST_ID_TTL_S, and each write drops a few expired ones:
a store of them does not grow with every submit ever made. Job and sweep ids are kept apart."""

from __future__ import annotations

from pathlib import Path

from tesserad.store import Store, WriteTxn
from tesserad.training.submit_requests import (
    JOB_REQUESTS,
    REQUEST_ID_TTL_S,
    SWEEP_REQUESTS,
    SubmitRequest,
)

TABLES = [*JOB_REQUESTS.tables, *SWEEP_REQUESTS.tables]


def keep_request(
    txn: WriteTxn, actor: str, request_id: str, job_id: str, fingerprint: str, now: float
) -> None:
    JOB_REQUESTS.keep(txn, SubmitRequest(actor, request_id, fingerprint), job_id, now)


def test_expired_request_ids_are_not_found_and_writes_drop_them_oldest_first(tmp_path: Path) -> None:
    store = Store.open(tmp_path, map_size=1 << 24, tables=TABLES)
    try:
        with store.write() as txn:
            for n in range(20):
                keep_request(txn, "alice", f"id-{n}", f"job-{n}", "fingerprint", float(n))
            keep_request(txn, "alice", "fresh", "job-fresh", "fingerprint", float(REQUEST_ID_TTL_S))
        later = REQUEST_ID_TTL_S + 100.0
        with store.read() as txn:
            assert JOB_REQUESTS.find(txn, "alice", "id-0", later) is None
            kept = JOB_REQUESTS.find(txn, "alice", "fresh", later)
            assert kept is not None and kept.created_id == "job-fresh"
        with store.write() as txn:
            JOB_REQUESTS.drop_expired(txn, later)
        with store.read() as txn:
            left = sorted(str(key[1]) for key, _ in txn.scan("job_requests"))
            assert left == ["fresh", *sorted(f"id-{n}" for n in range(16, 20))]
            assert txn.count("job_request_expiry") == 5
        with store.write() as txn:
            JOB_REQUESTS.drop_expired(txn, later)
            keep_request(txn, "alice", "id-0", "job-again", "other", later)
        with store.read() as txn:
            assert sorted(str(key[1]) for key, _ in txn.scan("job_requests")) == ["fresh", "id-0"]
            again = JOB_REQUESTS.find(txn, "alice", "id-0", later)
            assert again is not None and again.created_id == "job-again"
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
            alice = JOB_REQUESTS.find(txn, "alice", "nightly", 1.0)
            bob = JOB_REQUESTS.find(txn, "bob", "nightly", 1.0)
            assert alice is not None and alice.created_id == "job-alice"
            assert bob is not None and bob.created_id == "job-bob"
            assert JOB_REQUESTS.find(txn, "carol", "nightly", 1.0) is None
        with store.write() as txn:
            JOB_REQUESTS.drop_expired(txn, REQUEST_ID_TTL_S + 5.0)
        with store.read() as txn:
            assert [key for key, _ in txn.scan("job_requests")] == [("bob", "nightly")]
            assert [key[1:] for key, _ in txn.scan("job_request_expiry")] == [("bob", "nightly")]
    finally:
        store.close()


def test_job_and_sweep_request_ids_are_kept_apart(tmp_path: Path) -> None:
    store = Store.open(tmp_path, map_size=1 << 24, tables=TABLES)
    try:
        with store.write() as txn:
            JOB_REQUESTS.keep(txn, SubmitRequest("alice", "nightly", "spec-a"), "job-1", 0.0)
            SWEEP_REQUESTS.keep(txn, SubmitRequest("alice", "nightly", "spec-b"), "sweep-1", 0.0)
        with store.read() as txn:
            job = JOB_REQUESTS.find(txn, "alice", "nightly", 1.0)
            sweep = SWEEP_REQUESTS.find(txn, "alice", "nightly", 1.0)
            assert job is not None and (job.created_id, job.fingerprint) == ("job-1", "spec-a")
            assert sweep is not None and (sweep.created_id, sweep.fingerprint) == ("sweep-1", "spec-b")
    finally:
        store.close()
