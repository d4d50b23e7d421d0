"""Registry reads as a model's versions grow, and the rate of small registrations.

Reads: one model grown to 100, 1k, 10k and 100k versions; at each size `tesserad serve` is
started on the store and ListModels, GetModel, GetVersion (latest) and ListVersions (first
page and last page, newest first, 100 a page) are each called --reads times over gRPC; p50 and
p99 of the wall time per call, and the daemon's CPU time per call, are reported. The versions
are created in this process through the registry's domain API (gRPC registration of 100k
versions would take most of the run), with the store in relaxed durability and every version
holding the same tiny blob; the reads do not depend on how the rows were written.

Registration: a fresh daemon (full durability) takes --registrations distinct tiny safetensors
artifacts (an MLP 4 -> 4 -> 2, 34 parameters) over ONE gRPC channel (grpc.aio, as `tessera.aio`
pushes in parallel): through UploadVersionInline with --concurrency calls in flight, the same
through the streamed UploadVersion, UploadVersionInline one call at a time, and
UploadVersionBatch with --batch-size versions a call, 8 calls in flight; versions/s and the
daemon's and the client's CPU time per registration, medians over --repeats interleaved runs.

    .venv/bin/python bench/registry_scale_bench.py [--sizes 100,1000,10000,100000] [--reads 200]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import grpc
from daemon_process import start_daemon

from tessera.v1 import architecture_pb2, common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.errors import NotFound
from tesserad.registry import Registry
from tesserad.registry.records import Lineage, Signature, TensorSpec
from tesserad.registry.versions import VersionUpload
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store

RESULTS = Path(__file__).parent / "results" / "registry_scale_bench.json"
MODEL = "bench"
PAGE = 100


# The smallest useful model: an MLP 4 -> 4 -> 2 (the artifact must hold exactly its tensors).
HIDDEN = [4]
TENSORS = {"1.weight": [4, 4], "1.bias": [4], "3.weight": [2, 4], "3.bias": [2]}


def tiny_safetensors(seed: int) -> bytes:
    """A valid safetensors file of the MLP's float32 tensors (34 values) that carry `seed`."""
    meta, offset = {}, 0
    for name, shape in TENSORS.items():
        size = 4 * math.prod(shape)
        meta[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(meta).encode()
    header += b" " * (-len(header) % 8)
    values = [float(seed + i) for i in range(offset // 4)]
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(values)}f", *values)


def signature() -> common_pb2.Signature:
    spec = common_pb2.TensorSpec
    return common_pb2.Signature(
        inputs=[spec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 4])],
        outputs=[spec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2])],
    )


def upload_header(model: str, data: bytes) -> registry_pb2.UploadVersionHeader:
    return registry_pb2.UploadVersionHeader(
        model=model,
        create_model=True,
        format=registry_pb2.ARTIFACT_FORMAT_SAFETENSORS,
        signature=signature(),
        architecture=architecture_pb2.Architecture(
            input_shape=[4], output_size=2, mlp=architecture_pb2.MlpSpec(hidden_sizes=HIDDEN)
        ),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )


def upload_requests(model: str, data: bytes) -> Iterator[registry_pb2.UploadVersionRequest]:
    yield registry_pb2.UploadVersionRequest(header=upload_header(model, data))
    yield registry_pb2.UploadVersionRequest(chunk=data)


# -- the daemon --------------------------------------------------------------------------------


def stop_daemon(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- reads -------------------------------------------------------------------------------------


def grow_model(data_dir: Path, model: str, versions: int) -> float:
    """Register versions of `model` in this process until it has `versions`; returns seconds."""
    # The grow runs before the daemon that reads is started: both would take the data dir.
    store = Store.open(data_dir / "store", map_size=8 << 30, durability="relaxed", tables=STORE_TABLES)
    try:
        blobs = BlobStore(data_dir / "blobs")
        registry = Registry(store, blobs, max_artifact_size=1 << 30, deployment_history=100)
        have = registry.get_model(model).version_count if _has_model(registry, model) else 0
        blob = blobs.put_bytes(tiny_safetensors(0))
        arch = {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": HIDDEN}
        sig = Signature(
            (TensorSpec("input", "float32", (-1, 4)),), (TensorSpec("output", "float32", (-1, 2)),)
        )

        def register(_: int) -> None:
            registry.register_version(
                model,
                format="safetensors",
                blob=blob,
                signature=sig,
                architecture=arch,
                create_model_if_missing=True,
            )

        started = time.perf_counter()
        # Several at once, so that the store's group commit batches them.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(versions - have)))
        return time.perf_counter() - started
    finally:
        store.close()


def _has_model(registry: Registry, model: str) -> bool:
    try:
        registry.get_model(model)
    except NotFound:
        return False
    return True


def last_page_token(stub: registry_pb2_grpc.RegistryStub, model: str) -> str:
    """The token that fetches ListVersions' last page (found by walking the pages once, untimed)."""
    token = ""
    while True:
        page = stub.ListVersions(
            registry_pb2.ListVersionsRequest(model=model, page_size=PAGE, page_token=token)
        )
        if not page.next_page_token:
            return token
        token = page.next_page_token


def read_calls(stub: registry_pb2_grpc.RegistryStub, model: str) -> dict[str, Callable[[], Any]]:
    token = last_page_token(stub, model)
    latest = common_pb2.VersionRef(model=model, alias="latest")
    return {
        "ListModels": lambda: stub.ListModels(registry_pb2.ListModelsRequest()),
        "GetModel": lambda: stub.GetModel(registry_pb2.GetModelRequest(name=model)),
        "GetVersion": lambda: stub.GetVersion(registry_pb2.GetVersionRequest(ref=latest)),
        "ListVersions_first_page": lambda: stub.ListVersions(
            registry_pb2.ListVersionsRequest(model=model, page_size=PAGE)
        ),
        "ListVersions_last_page": lambda: stub.ListVersions(
            registry_pb2.ListVersionsRequest(model=model, page_size=PAGE, page_token=token)
        ),
    }


def time_reads(address: str, pid: int, model: str, reads: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per read: the median over `rounds` rounds of `reads` calls of p50 and p99 wall ms, and of
    the daemon's CPU ms per call (the rounds interleave the reads, so a burst of load from
    elsewhere on the machine spreads over all of them instead of landing on one)."""
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    try:
        stub = registry_pb2_grpc.RegistryStub(channel)
        calls = read_calls(stub, model)
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in calls}
        for call in calls.values():
            for _ in range(min(20, reads)):
                call()
        for _ in range(rounds):
            for name, call in calls.items():
                wall = []
                cpu_before = cpu_seconds(pid)
                for _ in range(reads):
                    started = time.perf_counter()
                    call()
                    wall.append(time.perf_counter() - started)
                cpu = cpu_seconds(pid) - cpu_before
                wall.sort()
                samples[name].append((percentile(wall, 0.5), percentile(wall, 0.99), cpu / reads))
        return {
            name: {
                "p50_ms": round(median([s[0] for s in runs]) * 1000, 3),
                "p99_ms": round(median([s[1] for s in runs]) * 1000, 3),
                "daemon_cpu_ms_per_call": round(median([s[2] for s in runs]) * 1000, 3),
            }
            for name, runs in samples.items()
        }
    finally:
        channel.close()


def read_scaling(root: Path, sizes: list[int], reads: int, rounds: int) -> dict[str, Any]:
    """Each read's p50/p99 at each size, and its p99 at the largest size over the smallest."""
    data_dir = root / "reads"
    by_size: dict[str, Any] = {}
    for size in sizes:
        grow_s = grow_model(data_dir, MODEL, size)
        process, address = start_daemon(data_dir)
        try:
            by_size[str(size)] = {
                "reads": time_reads(address, process.pid, MODEL, reads, rounds),
                "grow_s": round(grow_s, 1),
            }
        finally:
            stop_daemon(process)
    smallest, largest = by_size[str(sizes[0])]["reads"], by_size[str(sizes[-1])]["reads"]
    growth = {name: round(largest[name]["p99_ms"] / smallest[name]["p99_ms"], 2) for name in smallest}
    p50_growth = {name: round(largest[name]["p50_ms"] / smallest[name]["p50_ms"], 2) for name in smallest}
    return {
        "versions_created_by": "the registry's domain API in the bench process (relaxed durability, one shared blob)",
        "page_size": PAGE,
        "calls_per_round": reads,
        "rounds": rounds,
        "by_versions": by_size,
        "p99_growth_largest_vs_smallest": growth,
        "p50_growth_largest_vs_smallest": p50_growth,
        "goal_max_p99_growth": 2.0,
        "goal_met": all(g <= 2.0 for g in growth.values()),
    }


# -- registration ------------------------------------------------------------------------------


def registration_rate(
    address: str,
    pid: int,
    model: str,
    count: int,
    concurrency: int,
    first: int,
    rpc: str,
    batch_size: int = 1,
) -> dict[str, Any]:
    """`count` distinct tiny artifacts registered over one gRPC channel (grpc.aio, as
    `tessera.aio` pushes), `concurrency` calls in flight; `rpc` is UploadVersionInline (header
    and artifact in one message), UploadVersion (a client stream: header, then a chunk) or
    UploadVersionBatch (`batch_size` such messages in one call)."""
    return asyncio.run(_registration_rate(address, pid, model, count, concurrency, first, rpc, batch_size))


async def _registration_rate(
    address: str, pid: int, model: str, count: int, concurrency: int, first: int, rpc: str, batch_size: int
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        artifacts = [tiny_safetensors(first + i) for i in range(count)]
        slots = asyncio.Semaphore(concurrency)

        async def push(batch: list[bytes]) -> list[int]:
            async with slots:
                if rpc == "UploadVersionBatch":
                    items = [
                        registry_pb2.UploadVersionInlineRequest(header=upload_header(model, d), artifact=d)
                        for d in batch
                    ]
                    response = await stub.UploadVersionBatch(
                        registry_pb2.UploadVersionBatchRequest(items=items), timeout=60
                    )
                    return [v.version for v in response.versions]
                (data,) = batch
                if rpc == "UploadVersionInline":
                    request = registry_pb2.UploadVersionInlineRequest(
                        header=upload_header(model, data), artifact=data
                    )
                    return [(await stub.UploadVersionInline(request, timeout=60)).version]
                return [(await stub.UploadVersion(upload_requests(model, data), timeout=60)).version]

        await push([tiny_safetensors(-1 - first)])  # the model exists and the channel is connected
        calls = [artifacts[i : i + batch_size] for i in range(0, count, batch_size)]
        cpu_before, client_before = cpu_seconds(pid), time.process_time()
        started = time.perf_counter()
        versions = [v for call in await asyncio.gather(*(push(c) for c in calls)) for v in call]
        wall = time.perf_counter() - started
        daemon_cpu, client_cpu = cpu_seconds(pid) - cpu_before, time.process_time() - client_before
    assert len(set(versions)) == count
    return {
        "rpc": rpc,
        "registrations": count,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "versions_per_s": round(count / wall, 1),
        "wall_s": round(wall, 3),
        "daemon_cpu_ms_per_registration": round(daemon_cpu / count * 1000, 3),
        "client_cpu_ms_per_registration": round(client_cpu / count * 1000, 3),
    }


def domain_registration_rate(root: Path, count: int, concurrency: int) -> dict[str, Any]:
    """The same registrations without gRPC: the daemon's path for an artifact in hand
    (`submit_upload`: gathered, blob written and fsynced, version queued for the group
    commit), waited for by `concurrency` threads, in this process, full durability. Where the gRPC rate falls short
    of this, the time goes to the RPC path, not the store."""
    store = Store.open(root / "domain" / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        blobs = BlobStore(root / "domain" / "blobs")
        registry = Registry(store, blobs, max_artifact_size=1 << 30, deployment_history=100)
        arch = {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": HIDDEN}
        sig = Signature(
            (TensorSpec("input", "float32", (-1, 4)),), (TensorSpec("output", "float32", (-1, 2)),)
        )
        artifacts = [tiny_safetensors(i) for i in range(count)]

        def register(data: bytes) -> int:
            upload = VersionUpload(
                model="reg",
                artifact=data,
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
                format="safetensors",
                signature=sig,
                architecture=arch,
                params={},
                metrics={},
                tags={},
                lineage=Lineage(),
                description="",
                create_model_if_missing=True,
                alias="",
                actor="bench",
            )
            return registry.submit_upload(upload).result().version

        commits_before, cpu_before = store.group_commits, time.process_time()
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            versions = list(pool.map(register, artifacts))
        wall = time.perf_counter() - started
        assert len(set(versions)) == count
        return {
            "registrations": count,
            "concurrency": concurrency,
            "versions_per_s": round(count / wall, 1),
            "wall_s": round(wall, 3),
            "cpu_ms_per_registration": round((time.process_time() - cpu_before) / count * 1000, 3),
            "group_commits": store.group_commits - commits_before,
        }
    finally:
        store.close()


RUNS = {
    # name: (rpc, calls in flight (None: --concurrency), versions per call (None: --batch-size))
    "concurrent": ("UploadVersionInline", None, 1),
    "concurrent_streamed": ("UploadVersion", None, 1),
    "sequential": ("UploadVersionInline", 1, 1),
    "batched": ("UploadVersionBatch", 8, None),
}


def registration(root: Path, count: int, concurrency: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """Each run of RUNS `repeats` times, interleaved; per run the medians over the repeats."""
    load_before = os.getloadavg()[0]
    process, address = start_daemon(root / "registration")
    try:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}
        first = 0
        for _ in range(repeats):
            for name, (rpc, inflight, per_call) in RUNS.items():
                runs[name].append(
                    registration_rate(
                        address,
                        process.pid,
                        "reg",
                        count,
                        inflight or concurrency,
                        first,
                        rpc,
                        per_call or batch_size,
                    )
                )
                first += count + 1
    finally:
        stop_daemon(process)
    out: dict[str, Any] = {}
    for name, results in runs.items():
        out[name] = {
            "rpc": results[0]["rpc"],
            "registrations": count,
            "concurrency": results[0]["concurrency"],
            "batch_size": results[0]["batch_size"],
            **{
                key: median(r[key] for r in results)
                for key in (
                    "versions_per_s",
                    "daemon_cpu_ms_per_registration",
                    "client_cpu_ms_per_registration",
                )
            },
            "all_versions_per_s": [r["versions_per_s"] for r in results],
        }
        cpu_ms = out[name]["daemon_cpu_ms_per_registration"] + out[name]["client_cpu_ms_per_registration"]
        # Where other work shares the machine, the wall rate says more about it than about
        # tesserad; this is the rate at which daemon and client would keep every CPU busy.
        out[name]["cpu_bound_versions_per_s"] = round((os.cpu_count() or 1) * 1000 / cpu_ms, 1)
    # Runs of one repeat are back to back, so their ratios shift less with the machine's load
    # than either run's own figures.
    pairs = list(zip(runs["concurrent"], runs["concurrent_streamed"], strict=True))
    out["inline_vs_streamed_median_of_repeats"] = {
        key: round(median(inline[key] / streamed[key] for inline, streamed in pairs), 3)
        for key in ("versions_per_s", "daemon_cpu_ms_per_registration", "client_cpu_ms_per_registration")
    }
    batched = list(zip(runs["batched"], runs["concurrent"], strict=True))
    out["batched_vs_concurrent_median_of_repeats"] = {
        key: round(median(batch[key] / single[key] for batch, single in batched), 3)
        for key in ("versions_per_s", "daemon_cpu_ms_per_registration", "client_cpu_ms_per_registration")
    }
    out["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    out["in_process_without_grpc"] = domain_registration_rate(root, count, concurrency)
    out["connection"] = (
        "one gRPC channel (grpc.aio); concurrent runs keep --concurrency calls in flight on it, "
        "the batched run 8 calls of --batch-size versions"
    )
    out["durability"] = (
        "full (the daemon's default: blob durable, fsynced or by one syncfs per group of blobs, "
        "then the version committed with fsync)"
    )
    out["goal_versions_per_s"] = 1000
    out["goal_met_per_call"] = out["concurrent"]["versions_per_s"] >= 1000
    out["goal_met_batched"] = out["batched"]["versions_per_s"] >= 1000
    # The goal is small versions over one connection; a batch call is one way the API offers.
    out["goal_met"] = out["goal_met_per_call"] or out["goal_met_batched"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,10000,100000", help="version counts to read at")
    parser.add_argument("--reads", type=int, default=200, help="calls of each read per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of reads at each size (medians reported)"
    )
    parser.add_argument("--registrations", type=int, default=2000, help="uploads per registration run")
    parser.add_argument("--concurrency", type=int, default=32, help="uploads in flight on the one channel")
    parser.add_argument(
        "--batch-size", type=int, default=100, help="versions per UploadVersionBatch call (batched run)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="registration runs (the median is reported)")
    parser.add_argument(
        "--skip-reads", action="store_true", help="measure registration only (the JSON keeps the last reads)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {
        "benchmark": "registry_scale_bench",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        result["registration"] = registration(
            Path(tmp), args.registrations, args.concurrency, args.repeats, args.batch_size
        )
        print(json.dumps(result["registration"], indent=2), flush=True)
        if not args.skip_reads:
            result["reads"] = read_scaling(Path(tmp), sizes, args.reads, args.rounds)
        elif RESULTS.exists():
            # Reads take most of a full run: --skip-reads keeps those of the last full run.
            result["reads"] = json.loads(RESULTS.read_text()).get("reads")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
