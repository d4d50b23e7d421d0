"""Request ids of submits (AIP-155): a job or sweep submit sent again with the id it was first
sent with answers what that first submit created instead of creating another.

Each kind of submit keeps its own ids: "job_requests" ("sweep_requests") maps (caller, request
id) to (the job or sweep, a fingerprint of the spec, when the id expires): ids are each caller's
own, so two callers choosing the same readable id get one each and a refusal never names another
caller's. "job_request_expiry" ("sweep_request_expiry") orders them by expiry, so that each
submit's transaction drops the few that have expired without reading the rest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from tesserad.errors import AlreadyExists, InvalidArgument
from tesserad.store import ReadTxn, Store, WriteTxn
from tesserad.store.records import decode_record, encode_record

# How long a request id is kept after its submit: far beyond any client's retries.
REQUEST_ID_TTL_S = 24 * 3600
MAX_REQUEST_ID_CHARS = 64
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Expired ids one submit drops: a bound on the work each write takes on, above the rate at
# which submits add them, so that none is left behind for long.
_EXPIRED_PER_WRITE = 16
_SCHEMA = 1


@dataclass(frozen=True)
class SubmitRequest:
    """One submit as its request id keys it: its caller, its id ("" for none) and its spec's
    fingerprint, which a repeat must match."""

    actor: str
    request_id: str
    fingerprint: str


@dataclass(frozen=True)
class KeptRequest:
    """What a caller's request id stands for: what its first submit created, and that submit."""

    created_id: str
    fingerprint: str
    expires_at: float


class RequestKept(Exception):
    """Rolls back a submit whose request id a concurrent submit of the same request kept first."""

    def __init__(self, created_id: str) -> None:
        super().__init__(created_id)
        self.created_id = created_id


def check_request_id(request_id: str) -> None:
    """InvalidArgument unless `request_id` is empty or a token the daemon keeps."""
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(
            f"request_id: {request_id[: MAX_REQUEST_ID_CHARS + 1]!r} is not a request id: use 1 to "
            f"{MAX_REQUEST_ID_CHARS} characters from A-Z a-z 0-9 - _ (a UUID4 fits), or none"
        )


def submit_request(actor: str, request_id: str, spec_document: dict[str, Any]) -> SubmitRequest:
    """The submit of `spec_document` by `actor` under `request_id`; InvalidArgument for an id the
    daemon does not keep."""
    check_request_id(request_id)
    if not request_id:
        return SubmitRequest(actor, "", "")
    canonical = json.dumps(spec_document, sort_keys=True, separators=(",", ":"))
    return SubmitRequest(actor, request_id, hashlib.sha256(canonical.encode()).hexdigest())


@dataclass(frozen=True)
class SubmitRequests:
    """The request ids of one kind of submit; `noun` ("job", "sweep") names what it creates."""

    noun: str

    @property
    def tables(self) -> list[str]:
        return [self._ids, self._expiry]

    @property
    def _ids(self) -> str:
        return f"{self.noun}_requests"

    @property
    def _expiry(self) -> str:
        return f"{self.noun}_request_expiry"

    @property
    def _kind(self) -> str:
        return f"{self.noun}_request"

    @property
    def _created(self) -> str:
        return f"{self.noun}_id"

    def earlier(self, store: Store, request: SubmitRequest, now: float) -> str:
        """What the first submit of `request`'s id created, "" when none is kept (or it has no
        id); AlreadyExists when that submit was of another spec. Read before a submit is checked:
        a repeat answers what it created even where its spec would not pass now (its dataset
        deleted since, say)."""
        if not request.request_id:
            return ""
        with store.read() as txn:
            kept = self.find(txn, request.actor, request.request_id, now)
        return "" if kept is None else self._repeated(request, kept)

    def keep(self, txn: WriteTxn, request: SubmitRequest, created_id: str, now: float) -> None:
        """In the transaction that creates `created_id`: drop a few expired ids, and keep
        `request`'s. Writes are serial: a submit of the same id that committed since `earlier`
        read is found here, and RequestKept (naming what it created) rolls this one back."""
        self.drop_expired(txn, now)
        if not request.request_id:
            return
        key = (request.actor, request.request_id)
        kept = self.find(txn, request.actor, request.request_id, now)
        if kept is not None:
            raise RequestKept(self._repeated(request, kept))
        old = txn.get(self._ids, key)
        if old is not None:
            expired = decode_record(old, self._kind, _SCHEMA)[1]
            txn.delete(self._expiry, (int(expired["expires_at"]), *key))
        expires_at = now + REQUEST_ID_TTL_S
        record = {self._created: created_id, "fingerprint": request.fingerprint, "expires_at": expires_at}
        txn.put(self._ids, key, encode_record(self._kind, _SCHEMA, record))
        txn.put(self._expiry, (int(expires_at), *key), b"")

    def find(self, txn: ReadTxn, actor: str, request_id: str, now: float) -> KeptRequest | None:
        """The unexpired submit `actor`'s `request_id` was kept for; None if there is none."""
        raw = txn.get(self._ids, (actor, request_id))
        if raw is None:
            return None
        data = decode_record(raw, self._kind, _SCHEMA)[1]
        kept = KeptRequest(str(data[self._created]), str(data["fingerprint"]), float(data["expires_at"]))
        return kept if kept.expires_at > now else None

    def drop_expired(self, txn: WriteTxn, now: float) -> None:
        """Forget a few request ids that have expired (the oldest first)."""
        expired = [
            key for key, _ in txn.scan(self._expiry, limit=_EXPIRED_PER_WRITE) if int(key[0]) < int(now)
        ]
        for key in expired:
            txn.delete(self._expiry, key)
            txn.delete(self._ids, (key[1], key[2]))

    def _repeated(self, request: SubmitRequest, kept: KeptRequest) -> str:
        if kept.fingerprint != request.fingerprint:
            raise AlreadyExists(
                f"request_id {request.request_id!r} was already used to submit {self.noun} "
                f"{kept.created_id!r} with another spec; use a new request_id for a new {self.noun}"
            )
        return kept.created_id


JOB_REQUESTS = SubmitRequests("job")
SWEEP_REQUESTS = SubmitRequests("sweep")
