"""Dataset version numbers, never reused: lineage and job records name a dataset version by name
and number, so a number once given keeps naming that content after its version, or the whole
dataset, is deleted and the name is uploaded again (as a model's versions are never renumbered).

`dataset_numbers` keeps each name's next number and outlives the dataset. A store written before
it numbered from the dataset's record, which went with the dataset: at the first start the
numbers are derived once from the records left and from every version the store's records still
name (`referenced`: lineage, jobs, sweeps' base specs), then a marker in "meta" makes a start cost
one read (`Datasets`). A reference that can name no version (no dataset name, a number outside
1..int64 max - 1) is passed over with a warning: start-up never fails on what a record holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tesserad.store import ReadTxn, WriteTxn, decode_record, encode_record

NUMBERS = "dataset_numbers"
# In the "meta" table once every dataset name the store's records name numbers on past them. A
# new key: stores marked under the first one ("dataset_numbers_derived") were passed without
# reading sweeps' base specs, so they are passed again (numbers are only raised).
NUMBERS_DERIVED = ("dataset_numbers_past_references",)
_KIND = "dataset_number"
_SCHEMA = 1

# The (dataset name, version) pairs the store's other records name, as those records hold them:
# the pass keeps only those that can name a version (`named_versions`).
References = Callable[[ReadTxn], Iterable[tuple[object, object]]]


def next_number(txn: ReadTxn, name: str) -> int:
    """The number the dataset's next version gets."""
    raw = txn.get(NUMBERS, (name,))
    return 1 if raw is None else int(decode_record(raw, _KIND, _SCHEMA)[1]["next_version"])


def put_next_number(txn: WriteTxn, name: str, number: int) -> None:
    txn.put(NUMBERS, (name,), encode_record(_KIND, _SCHEMA, {"next_version": number}))
