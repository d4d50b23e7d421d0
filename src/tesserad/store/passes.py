"""A start-up upgrade's one pass over a table, finished by a marker in "meta"."""

from __future__ import annotations

import time
from collections.abc import Callable

from tesserad.store.database import Store, WriteTxn
from tesserad.store.keys import Key
from tesserad.store.records import encode_record


def each_row_once(
    store: Store,
    table: str,
    marker: tuple[str],
    visit: Callable[[WriteTxn, Key, bytes], bool],
    *,
    batch: int,
    rebuilt: tuple[str, ...] | list[str] = (),
    committed: Callable[[int], None] | None = None,
    reserved: bool = False,
) -> int:
    """Call `visit(txn, key, value)` on every row of `table`, `batch` rows a write transaction,
    unless `marker` is in "meta"; the last transaction writes it, so a stop midway leaves the
    pass to run again at the next start. `rebuilt`: index tables the visits write whole, emptied
    first (an older daemon may have left rows of what it deleted). `committed(rows)`: called
    after each batch commits, with the rows visited so far (a long pass logs its progress, one
    that releases blobs deletes them). `reserved`: the pass frees space (as `Store.write`'s).
    Returns how many visits returned True (changed something)."""
    with store.read() as txn:
        if txn.exists("meta", marker):
            return 0
    changed = visited = 0
    after: Key | None = None
    while True:
        with store.write(reserved=reserved) as txn:
            if after is None:
                for index in rebuilt:
                    txn.clear(index)
            rows = list(txn.scan(table, after=after, limit=batch))
            changed += sum(bool(visit(txn, key, raw)) for key, raw in rows)
            if not rows:
                txn.put("meta", marker, encode_record(marker[0], 1, {"at": time.time()}))
                return changed
        after = rows[-1][0]
        visited += len(rows)
        store.upgrade_progressed()
        if committed is not None:
            committed(visited)
