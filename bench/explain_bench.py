"""Explanation benchmark: attributions per second of the cnn4d for each method at batch 1 and
16, and Predict latency with and without a concurrent Explain load, against a real `tesserad
serve` over gRPC.

- Attributions per second: rows explained per second of one Explain call (one attribution is a
  whole input row's map), the median of `--repeats` calls after a one-row warm-up call, with the
  version loaded for Predict first. Method
  defaults (32 integrated-gradients steps, 16 GradientShap samples), occlusion with an
  OCCLUSION_WINDOW window.
- Predict under Explain load: `--predict-clients` threads each keep one Predict (one row) in
  flight for `--seconds`; once alone, once while `--explain-clients` threads keep integrated
  gradients explanations (one row each) in flight. Client-side latency p50/p99 per phase.
- The stated bound: a Predict waits behind at most one explain chunk per explain thread (see
  tesserad/serving/explain.py). The chunk's cost, measured here in-process, is a forward and
  backward pass of `explain_chunk_rows` rows (the daemon's default, 8); `p99_increase_us` is set
  beside `bound_us`, the chunk's time times the explain threads.

Writes bench/results/explain.json and prints a table.

    .venv/bin/python bench/explain_bench.py [--seconds 10] [--repeats 1] [--methods ...]
        [--batches 1 16] [--predict-clients 2] [--explain-clients 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from daemon_process import start_daemon

import tessera
from tessera.v1 import architecture_pb2, common_pb2

RESULTS = Path(__file__).parent / "results" / "explain.json"
INPUT_SHAPE = (1, 8, 16, 16, 16)  # the cnn4d of bench/serve_bench.py
OUTPUTS = 3
CHANNELS = (8, 16)
METHODS = ("integrated_gradients", "saliency", "occlusion", "gradient_shap")
# Occlusion's default window, (1, 1, 4, 4, 4) here, makes 512 windows per row (about a minute
# per row on the 2-core dev box); the bench uses a coarser one, 32 windows per row.
OCCLUSION_WINDOW = (1, 2, 8, 8, 8)
# The daemon's default serving.explain_chunk_rows and serving.explain_threads.
CHUNK_ROWS = 8
EXPLAIN_THREADS = 1


def cnn4d_weights(path: Path) -> tuple[Path, dict[str, Any]]:
    import torch
    from safetensors.torch import save_file

    from tesserad.nn import build_model, spec_from_dict

    spec = {
        "family": "cnn4d",
        "input_shape": list(INPUT_SHAPE),
        "output_size": OUTPUTS,
        "channels": list(CHANNELS),
    }
    torch.manual_seed(0)
    model = build_model(spec_from_dict(spec)).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, spec


def chunk_seconds(spec: dict[str, Any], rows: int, repeats: int = 5) -> float:
    """Median time of one explain chunk in-process: forward and backward of `rows` rows."""
    import torch

    from tesserad.nn import build_model, spec_from_dict

    model = build_model(spec_from_dict(spec)).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = torch.randn(rows, *INPUT_SHAPE, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        model(x)[:, 0].sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def predict_phase(target: str, seconds: float, clients: int, explain_clients: int) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal((1, *INPUT_SHAPE)).astype(np.float32)
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    explained = [0] * explain_clients
    refused = [0] * explain_clients

    def predict(i: int) -> None:
        with tessera.Client(target, timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.inference.predict("cnn4d", x)
                latencies[i].append((time.perf_counter() - started) * 1e6)

    def explain(i: int) -> None:
        with tessera.Client(target, timeout=600) as client:
            while not stop.is_set():
                try:
                    client.inference.explain("cnn4d", x, "ig", target=0)
                    explained[i] += 1
                except tessera.ResourceExhausted:
                    refused[i] += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=explain, args=(i,)) for i in range(explain_clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    merged = [v for per_client in latencies for v in per_client]
    return {
        "predict_clients": clients,
        "explain_clients": explain_clients,
        "predict_requests": len(merged),
        "predict_p50_us": round(percentile(merged, 50)),
        "predict_p99_us": round(percentile(merged, 99)),
        "predict_max_us": round(max(merged)) if merged else None,
        "explanations_done": sum(explained),
        "explanations_refused": sum(refused),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--predict-clients", type=int, default=2)
    parser.add_argument("--explain-clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        weights, spec = cnn4d_weights(Path(tmp) / "cnn4d.safetensors")
        process, target = start_daemon(Path(tmp) / "data")
        try:
            with tessera.Client(target, timeout=600) as client:
                client.models.push(
                    "cnn4d",
                    weights,
                    architecture=architecture_pb2.Architecture(
                        input_shape=INPUT_SHAPE,
                        output_size=OUTPUTS,
                        cnn4d=architecture_pb2.Cnn4dSpec(channels=CHANNELS, kernel_size=3),
                    ),
                    signature=common_pb2.Signature(
                        inputs=[
                            common_pb2.TensorSpec(
                                name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, *INPUT_SHAPE]
                            )
                        ],
                        outputs=[
                            common_pb2.TensorSpec(
                                name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, OUTPUTS]
                            )
                        ],
                    ),
                )
                rng = np.random.default_rng(0)
                # Served first, as an explained model usually is: serving's warm-up (a 32-row
                # batch) leaves glibc's malloc keeping large buffers on its heap, which makes
                # explanations 2.5-3x faster than in a daemon that never served the model.
                client.inference.predict("cnn4d", rng.standard_normal((1, *INPUT_SHAPE)).astype(np.float32))
                throughput = []
                for method in args.methods:
                    for batch in args.batches:
                        x = rng.standard_normal((batch, *INPUT_SHAPE)).astype(np.float32)
                        window = OCCLUSION_WINDOW if method == "occlusion" else ()
                        client.inference.explain("cnn4d", x[:1], method, target=0, window=window)  # warm-up
                        seconds = []
                        for _ in range(args.repeats):
                            started = time.perf_counter()
                            client.inference.explain("cnn4d", x, method, target=0, window=window)
                            seconds.append(time.perf_counter() - started)
                        cell = {
                            "method": method,
                            "batch": batch,
                            "seconds_per_call": round(statistics.median(seconds), 4),
                            "attributions_per_s": round(batch / statistics.median(seconds), 3),
                        }
                        throughput.append(cell)
                        print(
                            f"{method:22} batch {batch:3}: {cell['attributions_per_s']:8.2f} attributions/s",
                            flush=True,
                        )
            alone = predict_phase(target, args.seconds, args.predict_clients, 0)
            loaded = predict_phase(target, args.seconds, args.predict_clients, args.explain_clients)
        finally:
            process.terminate()
            process.wait(30)
        chunk_s = chunk_seconds(spec, CHUNK_ROWS)

    bound_us = chunk_s * 1e6 * EXPLAIN_THREADS
    increase = loaded["predict_p99_us"] - alone["predict_p99_us"]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "device": "cpu",
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "model": {
            "family": "cnn4d",
            "input_shape": list(INPUT_SHAPE),
            "output_size": OUTPUTS,
            "channels": list(CHANNELS),
        },
        "defaults": {
            "integrated_gradients_steps": 32,
            "gradient_shap_samples": 16,
            "occlusion_window": list(OCCLUSION_WINDOW),
            "explain_chunk_rows": CHUNK_ROWS,
            "explain_threads": EXPLAIN_THREADS,
        },
        "attributions_per_s": throughput,
        "predict_alone": alone,
        "predict_with_explain_load": loaded,
        "bound": {
            "chunk_us": round(chunk_s * 1e6),
            "bound_us": round(bound_us),
            "p99_increase_us": increase,
            "within_bound": increase <= bound_us,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"Predict p50/p99 alone {alone['predict_p50_us']}/{alone['predict_p99_us']} us; with Explain load "
        f"{loaded['predict_p50_us']}/{loaded['predict_p99_us']} us ({loaded['explanations_done']} explanations); "
        f"p99 +{increase} us against a bound of {round(bound_us)} us (one {CHUNK_ROWS}-row chunk)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
