"""The store's schema version, and which start-up markers a daemon may trust.

Every daemon that opens a store for writing records, in "meta", the store schema it writes
(`STORE_SCHEMA`) and its tesserad version. A daemon refuses a store whose recorded schema is
newer than its own: it could not read all of it, and would write rows without the indexes the
newer one keeps.

Start-up upgrades (backfills) are finished by markers in "meta". A marker says that every row
was indexed when it was written, and each later write kept the index, which holds only while
every daemon writing the store knows that index. An older daemon that writes after the marker
breaks that; its marker must not be trusted. The rule, cheapest correct:

- Each marker declares the schema from which every daemon keeps its index (`markers` below).
- A daemon trusts the markers the last daemon that wrote the store kept: those declared at or
  below that daemon's recorded schema. It drops the others before the backfills run, which run
  again and write them again: each is idempotent, and one that builds an index empties it
  first, so that rows the older daemon left stale (of what it deleted or changed) go too.
- Older tesserads of a schema refuse the store once a newer one has recorded its own, so the
  only writers that can come after are those from before schema versions, or an older schema
  whose store was never opened by a newer one (then its markers are its own).
- The last writer is known when the store's record and the data directory's lock file carry the
  same token. Every tesserad rewrites the lock file when it takes the data directory; one that
  records a schema writes the token again, and tesserads from before schema versions (which
  record nothing and refuse nothing) do not: if one ran since, the tokens differ. A store with
  no record, or a token that differs, was last written by a daemon of unknown schema (0), so
  every marker present is dropped: the first start after an upgrade from a tesserad that
  recorded no schema runs every backfill once. A crash changes neither token: after one, the
  markers are trusted as before.

Bump `STORE_SCHEMA` when a change needs a daemon of this schema or newer to write the store: a
new index kept by every write (declare its marker at the new schema), or rows an older daemon
would misread.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tesserad.errors import FailedPrecondition
from tesserad.store.database import ReadTxn, Store
from tesserad.store.incarnation import keep_incarnation
from tesserad.store.keys import Key
from tesserad.store.lockfile import DataDirLock
from tesserad.store.records import decode_record, encode_record

# The schema this tesserad writes. Bump it here (see the module's doc for when).
# 3: a sweep's trials in rows of their own (training.sweeps), which an older tesserad misreads.
# 4: model records that number on past skipped numbers and alias events (`numbers_skipped`,
# `first_event`), which an older tesserad's change feed misreads, and the numbers pass it undoes
# (registry.backfill: a model it creates again numbers from 1).
STORE_SCHEMA = 4
# The "meta" row that records who last opened the store for writing.
SCHEMA_KEY = ("store_schema",)
_KIND = "store_schema"
_RECORD_SCHEMA = 1
# The schema of a store whose last writer recorded none: a tesserad from before schema versions.
UNKNOWN_SCHEMA = 0


@dataclass(frozen=True)
class SchemaRecord:
    """What the last daemon to open a store for writing recorded in "meta"."""

    schema: int
    tesserad_version: str
    token: str


def recorded_schema(txn: ReadTxn) -> SchemaRecord | None:
    """The store's schema record; None for a store that has none (made before schema versions,
    or new)."""
    if not txn.has_table("meta"):
        return None
    raw = txn.get("meta", SCHEMA_KEY)
    return None if raw is None else decode_schema_record(raw)


def decode_schema_record(raw: bytes) -> SchemaRecord:
    """The schema record stored as `raw` (the "meta" row at SCHEMA_KEY)."""
    data = decode_record(raw, _KIND, _RECORD_SCHEMA)[1]
    return SchemaRecord(int(data["schema"]), str(data["tesserad_version"]), str(data["token"]))


class StoreTooNew(FailedPrecondition):
    """The store's schema is newer than this tesserad's: no restart of this tesserad mends it
    (`tesserad serve` exits EXIT_STORE_TOO_NEW, which the systemd unit does not restart on)."""


def too_new(record: SchemaRecord, where: str) -> StoreTooNew:
    return StoreTooNew(
        f"the store in {where} has schema {record.schema}, written by tesserad "
        f"{record.tesserad_version}; this tesserad writes schema {STORE_SCHEMA} and cannot open "
        f"a newer one. Run tesserad {record.tesserad_version} or newer on it, or restore a backup "
        "made before the upgrade into a new data directory (`tesserad restore`)"
    )


def refuse_newer(where: str) -> Callable[[ReadTxn], None]:
    """A `Store.open` check that refuses (FailedPrecondition) a store whose recorded schema is
    newer than this daemon's, before the open creates any table in it. `where`: its data
    directory, for the message."""

    def check(txn: ReadTxn) -> None:
        record = recorded_schema(txn)
        if record is not None and record.schema > STORE_SCHEMA:
            raise too_new(record, where)

    return check


def open_for_writing(
    store: Store, lock: DataDirLock, markers: Mapping[Key, int], tesserad_version: str
) -> list[Key]:
    """Take `store` for this daemon before anything writes it: drop the `markers` the last
    writer may not have kept, record this daemon's schema and version, and give the store an
    incarnation if it has none (tesserad.store.incarnation). `store`: opened with
    the check `refuse_newer`, so that a newer store is refused before its open creates a table.
    `markers`: each marker's key and the schema from which every daemon keeps what it marks.
    `lock`: the data directory's, held. Returns the markers dropped."""
    # Reserved: a daemon must start on a full store, for its operator to make room.
    with store.write(reserved=True) as txn:
        record = recorded_schema(txn)
        known = record is not None and record.token == lock.store_token
        last_writer = record.schema if record is not None and known else UNKNOWN_SCHEMA
        token = record.token if record is not None and known else secrets.token_hex(8)
        dropped: list[Key] = []
        for marker, since in markers.items():
            if since > last_writer and txn.delete("meta", marker):
                dropped.append(marker)
        data = {
            "schema": STORE_SCHEMA,
            "tesserad_version": tesserad_version,
            "token": token,
            "at": time.time(),
        }
        txn.put("meta", SCHEMA_KEY, encode_record(_KIND, _RECORD_SCHEMA, data))
        keep_incarnation(txn)
    # After the commit: a stop between the two leaves tokens that differ, which only costs the
    # backfills of markers already dropped.
    lock.keep_store_token(token)
    return dropped
