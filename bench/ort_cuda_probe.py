"""onnxruntime's CUDA provider on the served cnn4d, by batch size: the first run of each new
batch size (where cuDNN picks its convolution algorithms) and the steady runs after it, under
each `cudnn_conv_algo_search` setting. A dynamic batcher meets many batch sizes, so what a new
size costs matters as much as the steady rate.

    python bench/ort_cuda_probe.py        # on a machine with onnxruntime-gpu; part of gpu_check.sh

Writes bench/results/ort_cuda_probe.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from serve_bench import SHAPES, export_models

RESULTS = Path(__file__).parent / "results" / "ort_cuda_probe.json"
BATCHES = (1, 2, 3, 4, 5, 8, 13, 16, 32)
SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def probe(path: Path, search: str) -> dict[str, dict[str, float]]:
    import onnxruntime

    onnxruntime.preload_dlls()
    options = onnxruntime.SessionOptions()
    provider = ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": search})
    session = onnxruntime.InferenceSession(str(path), options, providers=[provider])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        sys.exit(f"onnxruntime did not start its CUDA provider: {session.get_providers()}")
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for batch in BATCHES:
        x = {"input": rng.standard_normal([batch, *SHAPES["cnn4d"][1:]]).astype(np.float32)}
        started = time.perf_counter()
        session.run(["output"], x)
        first_ms = (time.perf_counter() - started) * 1e3
        walls = []
        for _ in range(30):
            started = time.perf_counter()
            session.run(["output"], x)
            walls.append(time.perf_counter() - started)
        steady = statistics.median(walls)
        out[str(batch)] = {
            "first_run_ms": round(first_ms, 3),
            "steady_run_us": round(steady * 1e6, 1),
            "steady_us_per_row": round(steady * 1e6 / batch, 1),
        }
        print(f"{search:10s} batch {batch:2d}: first {first_ms:8.2f} ms, steady {steady * 1e6:7.0f} us "
              f"({steady * 1e6 / batch:6.1f} us/row)", flush=True)  # fmt: skip
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        path = export_models(Path(work), ["cnn4d"])["cnn4d"]
        report = {search: probe(path, search) for search in SEARCHES}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
