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

--members N (--mb 0 to skip the above) measures instead what an npz of N arrays of 8 float32
values costs to check (`inspect_file`, stored and compressed), where the zip's central directory,
a ZipInfo per member, is the cost that grows with N: the directory parses it makes (zipfile's
_RealGetContents, counted), the wall and CPU time of one such parse, and of `inspect_file`.
--before-arrays OLD.py (e.g. `git show main:src/tesserad/datasets/arrays.py > /tmp/old.py`)
loads an older arrays module beside this tree's, in this process. A control, this tree's
arrays.py loaded a second time as a module of its own, runs beside them: each repeat checks the
file with every module, in an order that rotates from repeat to repeat, and the medians (and
quartiles) of the per-repeat old / new and control / new ratios are given. CPU time is the judged
figure: on this shared machine the wall time of a check takes in whatever else runs, and the
control's ratio, which measures no change, says how far from 1 noise alone moves a ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import numpy as np
import results_file

from tesserad.datasets import Datasets, UploadSpec, arrays
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


def load_arrays_module(path: Path, name: str) -> Any:
    """An arrays.py (an older tree's, or this one's again), as a module `name` of its own beside
    this tree's."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextmanager
def directory_parses() -> Iterator[dict[str, int]]:
    """{"count": the zip central directories zipfile parsed while the block ran}."""
    parse = zipfile.ZipFile._RealGetContents  # type: ignore[attr-defined]
    counted = {"count": 0}

    def counting(self: zipfile.ZipFile) -> None:
        counted["count"] += 1
        parse(self)

    zipfile.ZipFile._RealGetContents = counting  # type: ignore[attr-defined]
    try:
        yield counted
    finally:
        zipfile.ZipFile._RealGetContents = parse  # type: ignore[attr-defined]


def timed(call: Callable[..., object], *args: Any, **kwargs: Any) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call(*args, **kwargs)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def parse_directory(path: Path) -> None:
    zipfile.ZipFile(path).close()


def over_after(other: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, Any]:
    """The per-repeat ratios other / after: their median and quartiles, CPU time (judged) and wall."""
    out: dict[str, Any] = {"judged": "cpu_s"}
    for k in ("cpu_s", "wall_s"):
        ratio = [o[k] / max(a[k], 1e-9) for o, a in zip(other, after, strict=True)]
        low, middle, high = quantiles(ratio, n=4) if len(ratio) > 1 else (ratio[0],) * 3
        out[k] = {"median": round(middle, 3), "quartiles": [round(low, 3), round(high, 3)]}
    return out


def measure_members(members: int, repeats: int, before: Any) -> list[dict[str, Any]]:
    """The directory's cost in checking an npz of `members` small arrays, stored and compressed."""
    control = load_arrays_module(Path(arrays.__file__), "arrays_control")
    out = []
    with tempfile.TemporaryDirectory(prefix="dataset-members-bench-") as tmp:
        for compressed in (False, True):
            path = Path(tmp) / f"members-{compressed}.npz"
            values = np.arange(8, dtype=np.float32)
            named: dict[str, Any] = {f"a{i}": values for i in range(members)}
            if compressed:
                np.savez_compressed(path, **named)
            else:
                np.savez(path, **named)
            checks = {"after": arrays, "control": control}
            if before is not None:
                checks["before"] = before
            parses = {}
            for label, module in checks.items():
                with directory_parses() as counted:
                    module.inspect_file(path, "npz", "x", False, check_unpacked=lambda _unpacked: None)
                parses[label] = counted["count"]
            one_parse = [timed(parse_directory, path) for _ in range(repeats)]
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in checks}
            for repeat in range(repeats):
                labels = list(checks)
                order = labels[repeat % len(labels) :] + labels[: repeat % len(labels)]
                for label in order:
                    module = checks[label]
                    runs[label].append(
                        timed(module.inspect_file, path, "npz", "x", False, check_unpacked=None)
                    )
            result: dict[str, Any] = {
                "members": members,
                "compressed": compressed,
                "file_bytes": path.stat().st_size,
                "directory_parses": parses,
                "one_directory_parse": {k: median(t[k] for t in one_parse) for k in ("wall_s", "cpu_s")},
                "inspect_file": {
                    label: {k: median(t[k] for t in times) for k in ("wall_s", "cpu_s")}
                    for label, times in runs.items()
                },
            }
            for label in checks:
                if label != "after":
                    result[f"{label}_over_after"] = over_after(runs[label], runs["after"])
            out.append(result)
    return out


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of each figure, at each size both runs measured."""
    old = {r["mb"]: r for r in before["results"] if "mb" in r}
    out = []
    for result in after["results"]:
        earlier = old.get(result.get("mb"))
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
    parser.add_argument("--members", type=int, default=0, help="also check an npz of this many small arrays")
    parser.add_argument("--before-arrays", default="", help="an older arrays.py to compare --members against")
    results_file.add_arguments(parser)
    args = parser.parse_args()
    path = results_file.out_path(parser, args)
    load_before = os.getloadavg()
    results = []
    for mb in (int(s) for s in args.mb.split(",") if int(s)):
        result = measure(mb, args.repeats)
        print(json.dumps({k: v for k, v in result.items() if k != "answers"}), flush=True)
        results.append(result)
    if args.members:
        before = load_arrays_module(Path(args.before_arrays), "arrays_before") if args.before_arrays else None
        for result in measure_members(args.members, args.repeats, before):
            print(json.dumps(result), flush=True)
            results.append(result)
    results_file.finish("dataset_upload_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()
