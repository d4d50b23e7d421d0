"""The datasets' usage index (tesserad.datasets.usage) against a recount of the versions it counts,
after every step of seeded random sequences of adds, deletes and deletes of whole datasets that
share contents across versions and datasets."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tesserad.datasets import usage
from tesserad.store import ReadTxn, Store, decode_record

# A version as the index counts it: (dataset, version, sha256, size in bytes).
Version = tuple[str, int, str, int]


def index_rows(txn: ReadTxn) -> dict[str, Any]:
    """Every row of the index, decoded."""

    def rows(table: str, kind: str) -> dict[Any, dict[str, int]]:
        return {key: decode_record(raw, kind, 1)[1] for key, raw in txn.scan(table)}

    return {
        "summaries": rows(usage.SUMMARIES, "dataset_summary"),
        "contents": rows(usage.CONTENTS, "dataset_content"),
        "usage": rows(usage.USAGE, "dataset_usage"),
    }


def recount(versions: Iterable[Version]) -> dict[str, Any]:
    """What `index_rows` holds when the index counts exactly `versions`."""
    summaries: dict[Any, dict[str, int]] = {}
    contents: dict[Any, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for name, version, sha256, size in versions:
        sizes[sha256] = size
        row = contents.setdefault((name, sha256), {"versions": 0})
        row["versions"] += 1
        summary = summaries.setdefault((name,), {"latest_version": 0, "version_count": 0, "size_bytes": 0})
        summary["latest_version"] = max(summary["latest_version"], version)
        summary["version_count"] += 1
        summary["size_bytes"] += size if row["versions"] == 1 else 0
    shared: dict[Any, dict[str, int]] = {}
    for _name, sha256 in contents:
        row = shared.setdefault(("content", sha256), {"datasets": 0, "size_bytes": sizes[sha256]})
        row["datasets"] += 1
    total = {("total",): {"size_bytes": sum(row["size_bytes"] for row in shared.values())}} if sizes else {}
    return {"summaries": summaries, "contents": contents, "usage": {**shared, **total}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store", map_size=1 << 26, tables=["meta", *usage.TABLES])
    yield opened
    opened.close()


@pytest.mark.parametrize("seed", range(5))
def test_the_index_equals_a_recount_after_each_add_and_delete(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    contents = {f"{i:064x}": rng.randint(1, 10_000) for i in range(6)}
    stored: dict[tuple[str, int], str] = {}
    next_number = {name: 1 for name in ("a", "b", "c")}
    for _ in range(300):
        if stored and rng.random() < 0.03:
            name = rng.choice(sorted({n for n, _ in stored}))
            held = {s for (n, _), s in stored.items() if n == name}
            stored = {key: s for key, s in stored.items() if key[0] != name}
            with store.write() as txn:
                assert sorted(usage.remove_dataset(txn, name)) == sorted(held)
        elif stored and rng.random() < 0.4:
            name, version = rng.choice(sorted(stored))
            sha256 = stored.pop((name, version))
            newest = max((v for n, v in stored if n == name), default=0)
            with store.write() as txn:
                usage.remove_version(txn, name, sha256, contents[sha256], newest)
        else:
            name = rng.choice(sorted(next_number))
            sha256 = rng.choice(sorted(contents))
            version = next_number[name]
            next_number[name] += 1
            stored[(name, version)] = sha256
            with store.write() as txn:
                usage.add_version(txn, name, version, sha256, contents[sha256])
        with store.read() as txn:
            expected = recount((n, v, s, contents[s]) for (n, v), s in stored.items())
            assert index_rows(txn) == expected
            assert usage.used_bytes(txn) == sum(contents[s] for s in set(stored.values()))
            for candidate in contents:
                assert usage.content_stored(txn, candidate) == (candidate in stored.values())


def test_an_empty_index_reads_as_nothing_stored(store: Store) -> None:
    with store.read() as txn:
        assert usage.used_bytes(txn) == 0
        assert usage.summary(txn, "a") == usage.DatasetSummary(0, 0, 0)
        assert not usage.content_stored(txn, "0" * 64)
