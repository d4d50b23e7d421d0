"""Response-cache benchmark: what a hit and a miss cost against the same version served without
the cache, in wall time per request and in the daemon's CPU time per request.

`tesserad serve` runs as a child process (its CPU read from /proc at each cell's start and end)
with serving.response_cache_size set; each model is registered twice, `<model>-cached` loaded
with response_cache and `<model>-plain` without. One caller makes blocking Predict calls of one
row, for --seconds per cell:
- `plain`: the uncached version, a new input each request;
- `miss`: the cached version, a new input each request (lookup and insert, then the model);
- `hit`: the cached version, one input again and again (the lookup and copy, no model).

Cells run in an order that rotates each repeat; ratios are medians of per-repeat ratios (a
repeat's cells run back to back, so a slow spell of the shared machine moves both sides).
Writes bench/results/response_cache.json and prints a table.

    .venv/bin/python bench/response_cache_bench.py [--models tiny_mlp cnn4d] [--seconds S]
        [--repeats N] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from daemon_process import start_daemon, tree_cpu_s
from serve_bench import export_models, model_specs

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

RESULTS = Path(__file__).parent / "results" / "response_cache.json"
CELLS = ("plain", "miss", "hit")
CACHE_SIZE = "256MiB"


def _upload(stub: registry_pb2_grpc.RegistryStub, model: str, artifact: bytes) -> None:
    header = registry_pb2.UploadVersionHeader(
        model=model,
        create_model=True,
        format=registry_pb2.ARTIFACT_FORMAT_ONNX,
        sha256=hashlib.sha256(artifact).hexdigest(),
        size_bytes=len(artifact),
    )

    def chunks() -> Iterator[registry_pb2.UploadVersionRequest]:
        yield registry_pb2.UploadVersionRequest(header=header)
        yield registry_pb2.UploadVersionRequest(chunk=artifact)

    stub.UploadVersion(chunks())


def _request(model: str, x: np.ndarray) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model=model, version=1),
        inputs=[
            common_pb2.Tensor(
                name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=x.shape, data=x.tobytes()
            )
        ],
    )


def _cell(
    stub: inference_pb2_grpc.InferenceStub,
    pid: int,
    requests: Iterator[inference_pb2.PredictRequest],
    seconds: float,
) -> dict[str, float]:
    """Blocking calls for `seconds`: wall and daemon CPU microseconds per request."""
    count = 0
    cpu = tree_cpu_s(pid)
    started = time.perf_counter()
    ends = started + seconds
    while time.perf_counter() < ends:
        stub.Predict(next(requests))
        count += 1
    wall = time.perf_counter() - started
    return {
        "requests": count,
        "wall_us": wall / count * 1e6,
        "cpu_us": (tree_cpu_s(pid) - cpu) / count * 1e6,
    }


def _fresh(model: str, shape: tuple[int, ...], seed: int) -> Iterator[inference_pb2.PredictRequest]:
    """A new input each request (never found in the cache)."""
    rng = np.random.default_rng(seed)
    while True:
        yield _request(model, rng.standard_normal((1, *shape), dtype=np.float32))


def _same(model: str, shape: tuple[int, ...]) -> Iterator[inference_pb2.PredictRequest]:
    request = _request(model, np.full((1, *shape), 0.5, dtype=np.float32))
    while True:
        yield request


def run_model(
    inference: inference_pb2_grpc.InferenceStub, pid: int, name: str, seconds: float, repeats: int
) -> dict[str, Any]:
    shape = tuple(model_specs()[name].input_shape)
    cached, plain = f"{name}-cached", f"{name}-plain"
    inference.Predict(next(_same(cached, shape)))  # the hit cell's answer, cached
    for model in (cached, plain):  # warm the path
        for request, _ in zip(_fresh(model, shape, 1), range(20), strict=False):
            inference.Predict(request)
    runs: dict[str, list[dict[str, float]]] = {cell: [] for cell in CELLS}
    for repeat in range(repeats):
        order = CELLS[repeat % 3 :] + CELLS[: repeat % 3]
        for cell in order:
            seed = 1000 * (repeat + 1) + CELLS.index(cell)
            requests = {
                "plain": _fresh(plain, shape, seed),
                "miss": _fresh(cached, shape, seed),
                "hit": _same(cached, shape),
            }[cell]
            runs[cell].append(_cell(inference, pid, requests, seconds))
        figures = {c: runs[c][-1] for c in CELLS}
        print(
            f"{name} repeat {repeat}: "
            + ", ".join(
                f"{c} {f['wall_us']:.0f} us wall {f['cpu_us']:.0f} us cpu" for c, f in figures.items()
            ),
            flush=True,
        )

    def ratio(a: str, b: str, field: str) -> float:
        return round(statistics.median(x[field] / y[field] for x, y in zip(runs[a], runs[b], strict=True)), 3)

    return {
        "cells": {
            cell: {
                "wall_us": round(statistics.median(r["wall_us"] for r in rs), 1),
                "cpu_us": round(statistics.median(r["cpu_us"] for r in rs), 1),
                "requests": [r["requests"] for r in rs],
            }
            for cell, rs in runs.items()
        },
        "hit_vs_miss": {"wall": ratio("hit", "miss", "wall_us"), "cpu": ratio("hit", "miss", "cpu_us")},
        "hit_vs_plain": {"wall": ratio("hit", "plain", "wall_us"), "cpu": ratio("hit", "plain", "cpu_us")},
        "miss_vs_plain": {"wall": ratio("miss", "plain", "wall_us"), "cpu": ratio("miss", "plain", "cpu_us")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny_mlp", "cnn4d"], choices=list(model_specs()))
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="response-cache-bench-") as tmp:
        root = Path(tmp)
        paths = export_models(root, args.models)
        os.environ["TESSERA_SERVING_RESPONSE_CACHE_SIZE"] = CACHE_SIZE
        process, address = start_daemon(root / "data")
        try:
            channel = grpc.insecure_channel(address)
            registry = registry_pb2_grpc.RegistryStub(channel)
            inference = inference_pb2_grpc.InferenceStub(channel)
            models = {}
            for name in args.models:
                artifact = paths[name].read_bytes()
                for suffix, cache in (("cached", True), ("plain", False)):
                    _upload(registry, f"{name}-{suffix}", artifact)
                    inference.LoadModel(
                        inference_pb2.LoadModelRequest(
                            target=common_pb2.VersionRef(model=f"{name}-{suffix}", version=1),
                            config=inference_pb2.ServingConfig(response_cache=cache),
                        )
                    )
                models[name] = run_model(inference, process.pid, name, args.seconds, args.repeats)
            channel.close()
        finally:
            process.terminate()
            process.wait(30)
    result = {
        "bench": "response_cache",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"seconds": args.seconds, "repeats": args.repeats, "cache_size": CACHE_SIZE, "rows": 1},
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in models.items():
        cells = figures["cells"]
        print(
            f"{name}: "
            + "; ".join(f"{c} {cells[c]['wall_us']} us wall, {cells[c]['cpu_us']} us cpu" for c in CELLS)
            + f"; hit/miss wall {figures['hit_vs_miss']['wall']} cpu {figures['hit_vs_miss']['cpu']}"
            + f"; miss/plain wall {figures['miss_vs_plain']['wall']} cpu {figures['miss_vs_plain']['cpu']}"
        )


if __name__ == "__main__":
    main()
