"""Dataset calls as the stored versions grow: one upload, one delete, GetDataset, ListDatasets,
and the delete of a whole dataset.

At each size (--sizes stored versions, spread evenly over --datasets datasets, each version
its own small npz, so that every version counts towards the quota) a store is built in this
process, then the `Datasets` domain object is opened on it (its start-up work timed as
`open`) and each call is timed --repeats times: an upload to the first dataset (the blob
put, the header's quota check and `register`, as UploadDataset does them), the delete of the
version it added (so that the size stays put), GetDataset of the first dataset and the first
page of ListDatasets. Each figure is the median of the repeats, wall time beside this process's
CPU time; the answers go beside them so that runs before and after a change can be compared.
Last, the first dataset is deleted whole (DeleteDataset without a version), once: it holds
--sizes / --datasets versions (--datasets 1 puts them all in it).

The versions are written as `register` writes them (version record, blob holder, next number,
the dataset's record; no splits), 500 to a transaction, with the blobs put 500 at a time:
registering thousands one by one costs time that grows with the square of the count wherever
each upload reads every stored version. The store is reopened with full durability (the
daemon's default) before anything is timed.

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/dataset_scale_bench.py \
        [--sizes 10,1000,5000] [--repeats 5] [--label after] [--out NAME.json] [--before OLD.json]

Run it against the tree before a change (PYTHONPATH pointing at that tree's src) and after;
--out writes the result to bench/results/NAME.json (never over an existing file), and
--before adds the ratios of an earlier result's figures to this run's (old / new).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import results_file

from tesserad.datasets import Datasets, UploadSpec
from tesserad.datasets.arrays import inspect_file
from tesserad.datasets.numbering import put_next_number
from tesserad.datasets.references import hold_blob
from tesserad.datasets.service import (
    _DATASET_KIND,
    _SCHEMA,
    DATASETS,
    VERSIONS,
    DatasetVersionRecord,
    _encode_version,
    _holder,
)
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store, checked_digest, encode_record

BATCH = 500
SAMPLES = 8


def npz(seed: int) -> bytes:
    """A small npz (about 700 bytes): 8 samples of 4 float32 features and an int64 label."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.normal(size=(SAMPLES, 4)).astype(np.float32), y=np.arange(SAMPLES) % 2)
    return buffer.getvalue()


def dataset_name(index: int) -> str:
    return f"ds-{index:03d}"


def build(data_dir: Path, versions: int, datasets: int) -> float:
    """Write `versions` versions over `datasets` datasets as `register` writes them; seconds taken."""
    began = time.perf_counter()
    store = Store.open(data_dir / "store", map_size=4 << 30, durability="relaxed", tables=STORE_TABLES)
    blobs = BlobStore(data_dir / "blobs")
    try:
        sample = blobs.put_bytes(npz(0))
        arrays, num_samples = inspect_file(blobs.path(sample.sha256), "npz", "x", False)
        blobs.release(sample.sha256)
        per_dataset = max(1, versions // datasets)
        slots = [(dataset_name(i % datasets), i // datasets + 1) for i in range(per_dataset * datasets)]
        for start in range(0, len(slots), BATCH):
            batch = slots[start : start + BATCH]
            contents = [npz(start + offset + 1) for offset in range(len(batch))]
            digests = [checked_digest(data) for data in contents]
            blobs.put_many(dict(zip(digests, contents, strict=True)))
            now = time.time()
            with store.write() as txn:
                for (name, number), digest, data in zip(batch, digests, contents, strict=True):
                    record = DatasetVersionRecord(
                        name, number, "npz", digest, len(data), num_samples, tuple(arrays), (),
                        now, "bench", "", {}, False, "",
                    )  # fmt: skip
                    txn.put(VERSIONS, (name, number), _encode_version(record))
                    hold_blob(txn, digest, _holder(name, number))
                    put_next_number(txn, name, number + 1)
                    data_record = {"name": name, "created_at": now, "updated_at": now}
                    txn.put(DATASETS, (name,), encode_record(_DATASET_KIND, _SCHEMA, data_record))
            blobs.release(*digests)
    finally:
        store.close()
    return time.perf_counter() - began


def timed(call: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    """Median wall and CPU seconds of `repeats` calls, and the last call's answer."""
    walls, cpus, answer = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        answer = call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": median(walls), "cpu_s": median(cpus)}, answer


def measure(versions: int, datasets: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dataset-bench-") as tmp:
        data_dir = Path(tmp)
        built = build(data_dir, versions, datasets)
        store = Store.open(data_dir / "store", map_size=4 << 30, tables=STORE_TABLES)
        blobs = BlobStore(data_dir / "blobs")
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            service = Datasets(
                store, blobs, max_dataset_size=1 << 30, quota=1 << 40, referenced=lambda _txn: ()
            )
            opened = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
            first = dataset_name(0)
            seeds = iter(range(10**9, 10**9 + 2 * repeats))
            uploaded: list[int] = []

            def upload() -> int:
                data = npz(next(seeds))
                spec = UploadSpec(first, "npz", checked_digest(data), len(data))
                service.upload_limit(spec)
                record = service.register(spec, blobs.put_bytes(data))
                uploaded.append(record.version)
                return record.version

            def delete() -> int:
                return service.delete(first, uploaded.pop())

            upload_times: list[dict[str, float]] = []
            delete_times: list[dict[str, float]] = []
            for _ in range(repeats):
                upload_times.append(timed(upload, 1)[0])
                delete_times.append(timed(delete, 1)[0])
            got, dataset = timed(lambda: service.get_dataset(first), repeats)
            listed, page = timed(lambda: service.list_datasets(), repeats)
            deleted_whole, deleted_versions = timed(lambda: service.delete(first), 1)
            return {
                "versions": versions,
                "datasets": datasets,
                "build_s": built,
                "open": opened,
                "upload": {k: median(t[k] for t in upload_times) for k in ("wall_s", "cpu_s")},
                "delete_version": {k: median(t[k] for t in delete_times) for k in ("wall_s", "cpu_s")},
                "get_dataset": got,
                "list_datasets": listed,
                "delete_dataset": deleted_whole,
                "answers": {
                    "get_dataset": [dataset.latest_version, dataset.version_count, dataset.size_bytes],
                    "list_datasets": [
                        [d.name, d.latest_version, d.version_count, d.size_bytes] for d in page.items
                    ],
                    "delete_dataset": deleted_versions,
                },
            }
        finally:
            store.close()


_TIMED = ("open", "upload", "delete_version", "get_dataset", "list_datasets", "delete_dataset")


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of each timed figure, at each size both runs measured."""
    old = {r["versions"]: r for r in before["results"]}
    out = []
    for result in after["results"]:
        if result["versions"] not in old:
            continue
        earlier = old[result["versions"]]
        out.append(
            {
                "versions": result["versions"],
                **{
                    call: {
                        k: round(earlier[call][k] / max(result[call][k], 1e-9), 2)
                        for k in ("wall_s", "cpu_s")
                    }
                    for call in _TIMED
                    if call in earlier
                },
                "same_answers": earlier["answers"] == result["answers"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,5000", help="stored versions to time the calls at")
    parser.add_argument("--datasets", type=int, default=10, help="datasets the versions are spread over")
    parser.add_argument("--repeats", type=int, default=5, help="calls of each kind (medians reported)")
    results_file.add_arguments(parser)
    args = parser.parse_args()
    path = results_file.out_path(parser, args)
    load_before = os.getloadavg()
    results = []
    for versions in (int(s) for s in args.sizes.split(",")):
        result = measure(versions, args.datasets, args.repeats)
        print(json.dumps({k: v for k, v in result.items() if k != "answers"}), flush=True)
        results.append(result)
    results_file.finish("dataset_scale_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()
