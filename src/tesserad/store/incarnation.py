"""The store's incarnation: a random id that tells one history of a store from another.

It is written once, in "meta", by the first daemon that takes the store for writing (a new
store, or one from before incarnations: an absent row is simply created, and older tesserads,
which neither read nor delete it, may go on writing the store, whose history they continue).
`tesserad restore` writes a new one into the store it restores: the restored registry goes on
from the backup, apart from the one backed up, which may have changed since. Replicas follow the
primary's store by it (WatchChanges' answers carry it), so that a registry swapped in whose
change numbers reached theirs is not taken for the one they followed.
"""

from __future__ import annotations

import secrets
import time

from tesserad.store.database import ReadTxn, WriteTxn
from tesserad.store.records import decode_record, encode_record

# The "meta" row that holds the store's incarnation.
INCARNATION_KEY = ("store_incarnation",)
_KIND = "store_incarnation"
_RECORD_SCHEMA = 1


def new_incarnation_record() -> bytes:
    """A new incarnation, as stored at INCARNATION_KEY."""
    return encode_record(_KIND, _RECORD_SCHEMA, {"id": secrets.token_hex(16), "at": time.time()})


def decode_incarnation(raw: bytes) -> str:
    """The incarnation stored as `raw` (the "meta" row at INCARNATION_KEY)."""
    return str(decode_record(raw, _KIND, _RECORD_SCHEMA)[1]["id"])


def store_incarnation(txn: ReadTxn) -> str | None:
    """The store's incarnation; None for a store no daemon has taken since incarnations."""
    raw = txn.get("meta", INCARNATION_KEY)
    return None if raw is None else decode_incarnation(raw)


def keep_incarnation(txn: WriteTxn) -> None:
    """Give the store an incarnation unless it has one."""
    txn.put("meta", INCARNATION_KEY, new_incarnation_record(), overwrite=False)
