"""Request ids of job submits (AIP-155): a submit sent again with the id it was first sent with
answers the job that first submit created instead of creating another.

"job_requests" maps (caller, request id) to (the job, a fingerprint of the spec, when the id
expires): ids are each caller's own, so two callers choosing the same readable id get a job each
and a refusal never names another caller's job. "job_request_expiry" orders them by expiry, so
that each submit's transaction drops the few that have expired without reading the rest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from tesserad.errors import AlreadyExists, InvalidArgument
from tesserad.store import ReadTxn, WriteTxn
from tesserad.store.records import decode_record, encode_record

TABLES = ["job_requests", "job_request_expiry"]
# How long a request id is kept after its submit: far beyond any client's retries.
REQUEST_ID_TTL_S = 24 * 3600
MAX_REQUEST_ID_CHARS = 64
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Expired ids one submit drops: a bound on the work each write takes on, above the rate at
# which submits add them, so that none is left behind for long.
_EXPIRED_PER_WRITE = 16
_KIND = "job_request"
_SCHEMA = 1


@dataclass(frozen=True)
class JobRequest:
    """What a caller's request id stands for: the job its first submit created, and that submit."""

    job_id: str
    fingerprint: str
    expires_at: float


def check_request_id(request_id: str) -> None:
    """InvalidArgument unless `request_id` is empty or a token the daemon keeps."""
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(
            f"request_id: {request_id[: MAX_REQUEST_ID_CHARS + 1]!r} is not a request id: use 1 to "
            f"{MAX_REQUEST_ID_CHARS} characters from A-Z a-z 0-9 - _ (a UUID4 fits), or none"
        )


def submit_fingerprint(spec_document: dict[str, Any]) -> str:
    """What a repeat of a submit must match: its spec (the caller is part of the key)."""
    canonical = json.dumps(spec_document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_request(txn: ReadTxn, actor: str, request_id: str, now: float) -> JobRequest | None:
    """The unexpired submit `actor`'s `request_id` was kept for; None if there is none."""
    raw = txn.get("job_requests", (actor, request_id))
    if raw is None:
        return None
    data = decode_record(raw, _KIND, _SCHEMA)[1]
    request = JobRequest(str(data["job_id"]), str(data["fingerprint"]), float(data["expires_at"]))
    return request if request.expires_at > now else None


def repeated_job(request_id: str, request: JobRequest, fingerprint: str) -> str:
    """The job a repeat of a submit answers; AlreadyExists if it is not a repeat of that submit."""
    if request.fingerprint != fingerprint:
        raise AlreadyExists(
            f"request_id {request_id!r} was already used to submit job {request.job_id!r} with another "
            "spec; use a new request_id for a new job"
        )
    return request.job_id


def keep_request(
    txn: WriteTxn, actor: str, request_id: str, job_id: str, fingerprint: str, now: float
) -> None:
    """Record `actor`'s `request_id` for the job created in `txn`. The caller found no unexpired
    request of that id in `txn`; an expired one it replaces."""
    old = txn.get("job_requests", (actor, request_id))
    if old is not None:
        expired = decode_record(old, _KIND, _SCHEMA)[1]
        txn.delete("job_request_expiry", (int(expired["expires_at"]), actor, request_id))
    expires_at = now + REQUEST_ID_TTL_S
    record = {"job_id": job_id, "fingerprint": fingerprint, "expires_at": expires_at}
    txn.put("job_requests", (actor, request_id), encode_record(_KIND, _SCHEMA, record))
    txn.put("job_request_expiry", (int(expires_at), actor, request_id), b"")


def drop_expired_requests(txn: WriteTxn, now: float) -> None:
    """Forget a few request ids that have expired (the oldest first)."""
    expired = [
        key for key, _ in txn.scan("job_request_expiry", limit=_EXPIRED_PER_WRITE) if int(key[0]) < int(now)
    ]
    for key in expired:
        txn.delete("job_request_expiry", key)
        txn.delete("job_requests", (key[1], key[2]))
