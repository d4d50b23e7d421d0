"""The validation of a large dataset upload: how many bytes it reads per byte stored, and its time.

An npz of --mb MiB (x: float32 rows of 512 values, y: an int64 label a row, both stored
uncompressed, as np.savez writes them) is streamed into a real blob store in 4 MiB chunks
(BlobWriter, as UploadDataset writes it: sha256 taken on the way) and then registered
(`Datasets.register` on a real store: the checks of every array, CRC-32 and statistics, the
splits and the version's transaction), which is the validation step measured. Each repeat
deletes the version again, so the next one stores the same bytes anew.

Three passes over the repeats:
- timed: wall time and this process's CPU time of `register` (medians), the file's bytes in the
  page cache as an upload leaves them;
- bytes: what `register` reads of the file, per byte stored. Reads by read(2) are /proc/self/io's
  rchar; reads from a memory map are no system call, so they are counted by the file pages they
  map into the process (the peak growth of RssFile, /proc/self/status, sampled every 5 ms on a
  thread kept out of the timed pass). Their sum over the file's size is bytes_read_per_byte;
- cold: the file's pages dropped from the page cache first (posix_fadvise DONTNEED on the
  fsynced file), wall and CPU time with read_bytes, what came from the disk itself, per byte.

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/dataset_upload_bench.py \\
        [--mb 200] [--repeats 3] [--label after] [--out NAME.json] [--before OLD.json]

Run it against the tree before a change (PYTHONPATH pointing at that tree's src) and after;
--out writes the result to bench/results/NAME.json (never over an existing file), and
--before adds the ratios of an earlier result's figures to this run's (old / new).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import results_file

from tesserad.datasets import Datasets, UploadSpec
from tesserad.server import STORE_TABLES
from tesserad.store import BlobRef, BlobStore, Store

CHUNK = 4 * 2**20
FEATURES = 512
NAME = "large"


def write_npz(path: Path, mb: int) -> None:
    rows = mb * 2**20 // (FEATURES * 4 + 8)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    np.savez(path, x=x, y=np.arange(rows, dtype=np.int64) % 10)


def proc_io() -> dict[str, int]:
    lines = Path("/proc/self/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssFile line")


@contextmanager
def rss_file_peak() -> Iterator[dict[str, int]]:
    """{"growth": the most RssFile grew above its start while the block ran}."""
    start = rss_file()
    peak = {"growth": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak["growth"] = max(peak["growth"], rss_file() - start)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak["growth"] = max(peak["growth"], rss_file() - start)


def stream_in(blobs: BlobStore, source: Path) -> BlobRef:
    with blobs.writer() as writer, source.open("rb") as file:
        while chunk := file.read(CHUNK):
            writer.write(chunk)
        writer.hand_off()
        return writer.commit()


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(mb: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dataset-upload-bench-") as tmp:
        data_dir = Path(tmp)
        source = data_dir / "upload.npz"
        write_npz(source, mb)
        size = source.stat().st_size
        store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
        blobs = BlobStore(data_dir / "blobs")
        service = Datasets(store, blobs, max_dataset_size=1 << 40, quota=1 << 40, referenced=lambda _txn: ())
        spec = UploadSpec(NAME, "npz")
        try:

            def registered(before: Callable[[BlobRef], None]) -> tuple[dict[str, float], dict[str, int], Any]:
                """One upload: stream in (untimed), `before(blob)`, register (timed); the version deleted."""
                blob = stream_in(blobs, source)
                before(blob)
                io_start = proc_io()
                wall, cpu = time.perf_counter(), time.process_time()
                record = service.register(spec, blob)
                times = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
                io_end = proc_io()
                service.delete(NAME)
                return times, {k: io_end[k] - io_start[k] for k in io_end}, record

            timed = [registered(lambda _blob: None) for _ in range(repeats)]
            counted = []
            for _ in range(repeats):
                with rss_file_peak() as mapped:
                    _, io, _ = registered(lambda _blob: None)
                counted.append((io["rchar"], mapped["growth"]))
            cold = [
                registered(lambda blob: drop_from_page_cache(blobs.path(blob.sha256))) for _ in range(repeats)
            ]
            rchar = median(c[0] for c in counted)
            mapped_bytes = median(c[1] for c in counted)
            record = timed[-1][2]
            return {
                "mb": mb,
                "file_bytes": size,
                "register": {k: median(t[0][k] for t in timed) for k in ("wall_s", "cpu_s")},
                "bytes": {
                    "rchar": rchar,
                    "mapped_file_bytes": mapped_bytes,
                    "rchar_per_byte": round(rchar / size, 3),
                    "mapped_per_byte": round(mapped_bytes / size, 3),
                    "bytes_read_per_byte": round((rchar + mapped_bytes) / size, 3),
                },
                "cold": {
                    **{k: median(t[0][k] for t in cold) for k in ("wall_s", "cpu_s")},
                    "disk_read_bytes_per_byte": round(median(t[1]["read_bytes"] for t in cold) / size, 3),
                },
                # As a result file holds them (class counts keyed by strings), for --before to compare.
                "answers": json.loads(
                    json.dumps(
                        {"num_samples": record.num_samples, "arrays": [asdict(a) for a in record.arrays]}
                    )
                ),
            }
        finally:
            store.close()


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of each figure, at each size both runs measured."""
    old = {r["mb"]: r for r in before["results"]}
    out = []
    for result in after["results"]:
        earlier = old.get(result["mb"])
        if earlier is None:
            continue
        out.append(
            {
                "mb": result["mb"],
                "register": {
                    k: round(earlier["register"][k] / max(result["register"][k], 1e-9), 2)
                    for k in ("wall_s", "cpu_s")
                },
                "cold": {
                    k: round(earlier["cold"][k] / max(result["cold"][k], 1e-9), 2)
                    for k in ("wall_s", "cpu_s")
                },
                "bytes_read_per_byte": round(
                    earlier["bytes"]["bytes_read_per_byte"]
                    / max(result["bytes"]["bytes_read_per_byte"], 1e-9),
                    2,
                ),
                "same_answers": earlier["answers"] == result["answers"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", default="200", help="sizes of the npz uploaded, in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="uploads in each pass (medians reported)")
    results_file.add_arguments(parser)
    args = parser.parse_args()
    path = results_file.out_path(parser, args)
    load_before = os.getloadavg()
    results = []
    for mb in (int(s) for s in args.mb.split(",")):
        result = measure(mb, args.repeats)
        print(json.dumps({k: v for k, v in result.items() if k != "answers"}), flush=True)
        results.append(result)
    results_file.finish("dataset_upload_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()
