"""Dataset version numbers, never reused: lineage and job records name a dataset version by name
and number, so a number once given keeps naming that content after its version, or the whole
dataset, is deleted and the name is uploaded again (as a model's versions are never renumbered).

`dataset_numbers` keeps each name's next number and outlives the dataset. A store written before
it numbered from the dataset's record, which went with the dataset: at the first start the
numbers are derived once from the records left and from every version the store's records still
name (`referenced`), then a marker in "meta" makes a start cost one read (`Datasets`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tesserad.store import ReadTxn, WriteTxn, decode_record, encode_record

NUMBERS = "dataset_numbers"
NUMBERS_DERIVED = ("dataset_numbers_derived",)
_KIND = "dataset_number"
_SCHEMA = 1

# The (dataset name, version) pairs the store's other records name.
References = Callable[[ReadTxn], Iterable[tuple[str, int]]]


def next_number(txn: ReadTxn, name: str) -> int:
    """The number the dataset's next version gets."""
    raw = txn.get(NUMBERS, (name,))
    return 1 if raw is None else int(decode_record(raw, _KIND, _SCHEMA)[1]["next_version"])


def put_next_number(txn: WriteTxn, name: str, number: int) -> None:
    txn.put(NUMBERS, (name,), encode_record(_KIND, _SCHEMA, {"next_version": number}))
