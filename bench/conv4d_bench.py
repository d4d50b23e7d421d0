"""Conv4d formulations side by side, reduced precision, torch.compile, malloc tunables and exported-model latency.

    .venv/bin/python bench/conv4d_bench.py [--quick] [--device cpu|cuda] [--env] [--skip-onnx] [--skip-compile]
    .venv/bin/python bench/conv4d_bench.py --onnx-only      # refresh only that section of the JSON
    .venv/bin/python bench/conv4d_bench.py --compile-only   # likewise for torch.compile

For each shape A-E of issue 7, forward and forward+backward: every formulation in
``tesserad.nn.conv.ALGORITHMS``, the 'auto' choice (heuristic), 'auto' under autocast to the
reduced dtype (bfloat16 on CPU, float16 on CUDA; 'auto_<dtype>'), the choice of measured
selection (``set_benchmark(True)``, 'auto_measured') and an im2col + GEMM baseline (skipped
where its column matrix would pass 2 GB); beside a torch.mm of the same FLOP count so
fractions of the machine's GEMM rate are visible. A row's runners and its GEMM are timed in
turns (one warm-up, then ``reps`` rounds), so load from other processes hits all of them
alike; ratios are medians of per-round ratios (to the loop, to the GEMM rate), in wall time
and again in process CPU time (``*_cpu``), and each runner's wall time sits beside its CPU time. Memory per formulation: the analytic
peak (input, output and ``tesserad.nn.workspace_bytes``) beside the resident-set growth
sampled during one call. What bounds the auto row is measured by timing its pieces
(tap folding, conv3d forward, the input and weight gradients, unfolding) and stated with
the bytes moved per FLOP. ``compile_cnn4d`` times torch.compile of the cnn4d classifier
against eager (forward+backward, batch 1 and 32) in a subprocess capped at
``--compile-timeout`` seconds. Writes bench/results/conv4d_<device>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tesserad.nn.conv import (
    ALGORITHMS,
    PLANES_MAX_CHANNELS,
    Algorithm,
    _conv3d_backward,
    _fold_taps,
    _folded_grad_input,
    _folded_weight,
    _Geometry,
    _grad_blocks,
    _unfold_taps_grad,
    benchmark,
    benchmark_cache,
    clear_benchmark_cache,
    conv4d,
    heuristic_algorithm,
    workspace_bytes,
)

RESULTS = Path(__file__).resolve().parent / "results"
IM2COL_LIMIT_BYTES = 2 << 30
# What `step` runs: one of conv4d's algorithms, or the im2col reference beside them.
Formulation = Algorithm | Literal["im2col"]


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    c_in: int
    c_out: int
    size: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int

    def out_size(self) -> tuple[int, ...]:
        return tuple((s + 2 * self.padding - self.kernel) // self.stride + 1 for s in self.size)

    def fwd_flops(self) -> float:
        return 2.0 * self.n * self.c_out * math.prod(self.out_size()) * self.c_in * self.kernel**4


SHAPES = (
    Shape("A", 8, 8, 16, (16, 16, 16, 16), 3, 1, 1),
    Shape("B", 4, 32, 32, (16, 16, 16, 16), 3, 1, 1),
    Shape("C", 8, 1, 8, (16, 16, 16, 16), 3, 1, 1),
    Shape("D", 1, 8, 16, (16, 16, 16, 16), 3, 1, 1),
    Shape("E", 8, 16, 32, (16, 16, 16, 16), 3, 2, 1),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakRss:
    """Peak resident memory above the starting level, sampled every millisecond (CPU)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call above the level before it, in MiB (after one warm-up call)."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with PeakRss() as rss:
        fn()
    return (rss.peak - rss.base) / 2**20


def im2col_conv4d(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Baseline: every kernel tap gathered into a column matrix, then one GEMM."""
    xp = F.pad(x, (padding,) * 8)
    k = w.shape[2]
    outs = [(s - k) // stride + 1 for s in xp.shape[2:]]
    cols = []
    for a in range(k):
        for b in range(k):
            for c in range(k):
                for d in range(k):
                    cols.append(
                        xp[
                            :,
                            :,
                            a : a + stride * (outs[0] - 1) + 1 : stride,
                            b : b + stride * (outs[1] - 1) + 1 : stride,
                            c : c + stride * (outs[2] - 1) + 1 : stride,
                            d : d + stride * (outs[3] - 1) + 1 : stride,
                        ]
                    )
    col = torch.stack(cols, dim=2).flatten(1, 2).flatten(2)  # (N, C*k^4, positions)
    out = w.flatten(1) @ col  # (N, C_out, positions)
    return out.reshape(x.shape[0], w.shape[0], *outs)


def gemm_runner(flops: float, device: torch.device) -> tuple[Callable[[], object], float]:
    """A torch.mm of a square GEMM of (about) ``flops``, and its exact FLOP count."""
    n = max(256, round((flops / 2) ** (1 / 3)))
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def step(
    algo: Formulation,
    backward: bool,
    shape: Shape,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    autocast: torch.dtype | None = None,
) -> None:
    """One forward (and backward) of one formulation, on fresh leaf tensors, optionally under autocast."""
    xr = x.detach().requires_grad_(backward)
    wr = w.detach().requires_grad_(backward)
    br = b.detach().requires_grad_(backward)
    with (
        torch.set_grad_enabled(backward),
        torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None),
    ):
        if algo == "im2col":
            y = im2col_conv4d(xr, wr, shape.stride, shape.padding) + br.reshape(1, -1, 1, 1, 1, 1)
        else:
            y = conv4d(xr, wr, br, shape.stride, shape.padding, algorithm=algo)
    if backward:
        y.float().sum().backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated


def geometry(shape: Shape) -> _Geometry:
    t_out = shape.out_size()[0]
    s, p = shape.stride, shape.padding
    return _Geometry((p, p), s, 1, t_out, (s, s, s), (p, p, p), (1, 1, 1), 1)


def footprint_mib(
    shape: Shape, algo: str, backward: bool, dtype: torch.dtype = torch.float32, device_type: str = "cpu"
) -> float:
    """Analytic peak of one call: input, output (and their gradients in training) plus workspace."""
    element_size = dtype.itemsize
    x_shape = (shape.n, shape.c_in, *shape.size)
    w_shape = (shape.c_out, shape.c_in, *(shape.kernel,) * 4)
    inputs = math.prod(x_shape)
    out = shape.n * shape.c_out * math.prod(shape.out_size())
    tensors = (inputs + out) * (2 if backward else 1) * element_size
    return (
        tensors
        + workspace_bytes(
            algo,
            x_shape,
            w_shape,
            geometry(shape),
            element_size,
            backward,
            device_type=device_type,
            dtype=dtype,
        )
    ) / 2**20


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large tensor copy (read + write), best of five."""
    src = torch.randn(64 * 2**20 // 4 * 4, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def time_fold_pieces(
    shape: Shape, backward: bool, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rounds: int
) -> dict[str, float]:
    """Median process CPU ms of each piece of the time_fold formulation ('auto' for training calls):
    folding the taps (the im2col-like copy), the conv3d forward, in backward the weight's
    gradient, the folded input's gradient (in _grad_blocks' blocks of output frames) and adding
    its taps back onto the input frames; and, timed in the same rounds, a GEMM of one pass's
    FLOPs ('gemm_one_pass') to hold each conv3d piece against."""
    geo = geometry(shape)
    kt = w.shape[2]
    xs = _fold_taps(x, kt, geo)
    wf = _folded_weight(w)
    y = F.conv3d(xs, wf, b, geo.s3, geo.p3, geo.d3, geo.g)
    go = torch.ones_like(y)
    blocks = _grad_blocks(x.shape[0], geo.t_out, xs[0].numel() * xs.element_size())

    def rows(block: tuple[int, int, int, int]) -> slice:
        n0, n1, t0, t1 = block
        return slice(n0 * geo.t_out + t0, (n1 - 1) * geo.t_out + t1)

    def grad_input_blocks() -> list[torch.Tensor]:
        return [_folded_grad_input(go[rows(k)], xs[rows(k)], wf, geo) for k in blocks]

    def unfold(block_grads: list[torch.Tensor]) -> None:
        gx = x.new_empty(x.shape[0], x.shape[2], *x.shape[3:], geo.g, x.shape[1] // geo.g)
        _unfold_taps_grad(gx, zip(blocks, block_grads, strict=True), kt, x.shape[2], geo)

    block_grads = grad_input_blocks()
    gemm_run, gemm_flops = gemm_runner(shape.fwd_flops(), x.device)
    pieces: dict[str, Callable[[], object]] = {
        "fold_taps": lambda: _fold_taps(x, kt, geo),
        "conv3d_forward": lambda: F.conv3d(xs, wf, b, geo.s3, geo.p3, geo.d3, geo.g),
    }
    if backward:
        pieces.update(
            {
                "grad_input_conv": grad_input_blocks,
                "grad_weight_conv": lambda: _conv3d_backward(go, xs, wf, geo, (False, True, True)),
                "unfold_grad": lambda: unfold(block_grads),
            }
        )
    with torch.no_grad():
        timed = rounds_of({**pieces, "gemm": gemm_run}, rounds, x.device)
    out = {name: statistics.median(t.cpu) for name, t in timed.items()}
    # The GEMM's time scaled to exactly one pass's FLOPs (its square size rounds them).
    out["gemm_one_pass"] = out.pop("gemm") * shape.fwd_flops() / gemm_flops
    return out


def bench_shapes(
    device: torch.device, reps: int, shapes: tuple[Shape, ...], reduced: torch.dtype, bandwidth: float
) -> list[dict[str, Any]]:
    rows = []
    reduced_name = f"auto_{str(reduced).removeprefix('torch.')}"
    for shape in shapes:
        torch.manual_seed(0)
        x = torch.randn(shape.n, shape.c_in, *shape.size, device=device)
        w = torch.randn(shape.c_out, shape.c_in, *(shape.kernel,) * 4, device=device) * 0.05
        b = torch.randn(shape.c_out, device=device)
        for mode in ("fwd", "fwd+bwd"):
            backward = mode == "fwd+bwd"
            flops = shape.fwd_flops() * (3 if backward else 1)
            auto = heuristic_algorithm(
                shape.kernel,
                shape.stride,
                backward,
                footprint_mib(shape, "time_fold", backward, device_type=device.type)
                / footprint_mib(shape, "loop", backward, device_type=device.type),
                device.type,
            )
            col_bytes = 4 * shape.n * shape.c_in * shape.kernel**4 * math.prod(shape.out_size())
            results: dict[str, dict[str, Any]] = {}
            runners: dict[str, Callable[[], object]] = {}
            formulations: tuple[Formulation, ...] = (*ALGORITHMS, "im2col")
            for algo in formulations:
                if algo == "im2col" and col_bytes * (3 if backward else 1) > IM2COL_LIMIT_BYTES:
                    results[algo] = {"skipped": f"column matrix {col_bytes / 2**30:.1f} GiB > 2 GiB"}
                    continue
                runners[algo] = functools.partial(step, algo, backward, shape, x, w, b)
                results[algo] = {"peak_mib": peak_mib(runners[algo], device)}
                if algo != "im2col":
                    results[algo]["analytic_peak_mib"] = footprint_mib(
                        shape, algo, backward, device_type=device.type
                    )
            runners[reduced_name] = functools.partial(step, "auto", backward, shape, x, w, b, reduced)
            results[reduced_name] = {
                "algorithm": auto,
                "dtype": str(reduced),
                "peak_mib": peak_mib(runners[reduced_name], device),
                "analytic_peak_mib": footprint_mib(shape, auto, backward, reduced, device.type),
            }
            # Every formulation and the reference GEMM in turns, so load from other processes
            # hits all of them alike.
            gemm_run, gemm_flops = gemm_runner(flops / (3 if backward else 1), device)
            timed = rounds_of({**runners, "gemm": gemm_run}, reps, device)
            gemm_timed = timed.pop("gemm")
            gemm_times = gemm_timed.wall
            gemm = gemm_flops / (min(gemm_times) / 1e3) / 1e9
            loop_times = timed["loop"].wall
            for name, t in timed.items():
                results[name].update(
                    {
                        "ms": min(t.wall),
                        "median_ms": statistics.median(t.wall),
                        "cpu_ms": statistics.median(t.cpu),
                        "gflops": flops / (min(t.wall) / 1e3) / 1e9,
                        "speedup_vs_loop": median_ratio(loop_times, t.wall),
                        # this round's FLOP rate over the GEMM's in the same round
                        "fraction_of_gemm": median_ratio(
                            [flops * g for g in gemm_times], [gemm_flops * a for a in t.wall]
                        ),
                        # The same in process CPU time, which a busy shared machine inflates less
                        # than wall time (a descheduled thread spends none).
                        "speedup_vs_loop_cpu": median_ratio(timed["loop"].cpu, t.cpu),
                        "fraction_of_gemm_cpu": median_ratio(
                            [flops * g for g in gemm_timed.cpu], [gemm_flops * a for a in t.cpu]
                        ),
                    }
                )
            measured = measured_choice(shape, backward, x, w, b)
            # 'auto' runs exactly the formulation it picks; timing it again would only add noise.
            results["auto"] = {**results[auto], "algorithm": auto}
            results["auto_measured"] = {**results[measured], "algorithm": measured}
            results[reduced_name]["speedup_vs_fp32_auto"] = median_ratio(
                timed[auto].wall, timed[reduced_name].wall
            )
            loop_mib = results["loop"]["analytic_peak_mib"]
            for r in results.values():
                if "ms" in r:
                    r["ratio_to_auto"] = r["ms"] / results["auto"]["ms"]
                if "analytic_peak_mib" in r:
                    r["analytic_peak_vs_loop"] = r["analytic_peak_mib"] / loop_mib
            best = min((a for a in ALGORITHMS), key=lambda a: results[a]["ms"])
            row = {
                "shape": shape.name,
                "config": {
                    "n": shape.n,
                    "c_in": shape.c_in,
                    "c_out": shape.c_out,
                    "size": shape.size,
                    "kernel": shape.kernel,
                    "stride": shape.stride,
                    "padding": shape.padding,
                },
                "mode": mode,
                "gflop": flops / 1e9,
                "auto_choice": auto,
                "measured_choice": measured,
                "fastest": best,
                "gemm_gflops": gemm,
                "auto_fraction_of_gemm": results["auto"]["fraction_of_gemm"],
                "bounds": bounds(shape, backward, auto, results["auto"], gemm, bandwidth, x, w, b, reps),
                "algorithms": results,
            }
            rows.append(row)
            print(
                f"{shape.name} {mode:8s} auto={auto:9s} fastest={best:9s} "
                + " ".join(
                    f"{a}={r['ms']:.0f}ms({r['speedup_vs_loop']:.2f}x,{r.get('analytic_peak_mib', 0):.0f}MiB)"
                    if "ms" in r
                    else f"{a}=skip"
                    for a, r in results.items()
                )
                + f" gemm={gemm:.0f}GF/s auto={row['auto_fraction_of_gemm']:.0%} of gemm; "
                + f"{reduced_name} x{results[reduced_name]['speedup_vs_fp32_auto']:.2f} vs fp32; "
                + f"bound: {row['bounds']['bound']}",
                flush=True,
            )
    return rows


def bounds(
    shape: Shape,
    backward: bool,
    auto: str,
    auto_result: dict[str, Any],
    gemm_gflops: float,
    bandwidth: float,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    reps: int,
) -> dict[str, Any]:
    """What bounds the auto row: bytes it moves per FLOP against the machine's balance, and
    (for time_fold) the measured time of each of its pieces."""
    x_shape = (shape.n, shape.c_in, *shape.size)
    w_shape = (shape.c_out, shape.c_in, *(shape.kernel,) * 4)
    out = shape.n * shape.c_out * math.prod(shape.out_size())
    tensors = 4 * (math.prod(x_shape) + math.prod(w_shape) + out) * (3 if backward else 1)
    # Workspace is written once and read once.
    moved = tensors + 2 * workspace_bytes(auto, x_shape, w_shape, geometry(shape), 4, backward)
    flops = shape.fwd_flops() * (3 if backward else 1)
    out_dict: dict[str, Any] = {
        "bytes_moved": moved,
        "bytes_per_flop": moved / flops,
        "machine_bytes_per_flop": bandwidth / (gemm_gflops * 1e9),
        "copy_bandwidth_gbs": bandwidth / 1e9,
        "ms_at_gemm_rate": flops / (gemm_gflops * 1e9) * 1e3,
        "ms_at_copy_bandwidth": moved / bandwidth * 1e3,
        "median_ms": auto_result["median_ms"],
    }
    # Above 1: the row moves more bytes per FLOP than the copy bandwidth feeds at the GEMM rate,
    # so even with every piece at its best it cannot reach the GEMM rate (memory-bound).
    out_dict["bytes_per_flop_over_machine"] = out_dict["bytes_per_flop"] / out_dict["machine_bytes_per_flop"]
    if auto == "time_fold" and x.device.type == "cpu":
        pieces = time_fold_pieces(shape, backward, x, w, b, reps)
        gemm_pass = pieces.pop("gemm_one_pass")
        # In process CPU time, as the step's own: wall times of pieces on a busy machine do not
        # add up to the step's.
        out_dict["pieces_cpu_ms"] = pieces
        out_dict["cpu_ms"] = auto_result["cpu_ms"]
        # What the pieces leave of the step: the output gradient's layout copy, the input
        # gradient's copy to the input's layout, autograd.
        out_dict["rest_cpu_ms"] = auto_result["cpu_ms"] - sum(pieces.values())
        out_dict["gemm_one_pass_cpu_ms"] = gemm_pass
        # Each conv3d piece against a GEMM of one pass's FLOPs timed in the same rounds, and how
        # many of the vector lanes it computes on hold real channels: oneDNN blocks the channels
        # it writes (forward: C_out; input gradient: kT * C_in of the folded input) in vectors
        # of `lanes`, so 24 channels run as 32.
        out_dict["pieces_fraction_of_gemm"] = {
            k: gemm_pass / v
            for k, v in pieces.items()
            if k in ("conv3d_forward", "grad_input_conv", "grad_weight_conv")
        }
        lanes = 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8
        folded = shape.kernel * shape.c_in
        # as planes, the input gradient writes kD planes per folded channel (_grad_input_planes)
        planes = folded <= PLANES_MAX_CHANNELS
        written = {"conv3d_forward": shape.c_out, "grad_input_conv": folded * (shape.kernel if planes else 1)}
        lane_use = {k: c / (math.ceil(c / lanes) * lanes) for k, c in written.items() if k in pieces}
        out_dict["vector_lanes"] = lanes
        out_dict["vector_lane_use"] = lane_use
        copies = pieces["fold_taps"] + pieces.get("unfold_grad", 0.0)
        named = {
            "im2col copies (tap folding)": copies,
            "conv3d forward below the GEMM rate": pieces["conv3d_forward"],
            "backward's input gradient (conv3d)": pieces.get("grad_input_conv", 0.0),
            "backward's weight gradient (conv3d)": pieces.get("grad_weight_conv", 0.0),
        }
        bound = max(named, key=lambda k: named[k])
        piece = {
            "conv3d forward below the GEMM rate": "conv3d_forward",
            "backward's input gradient (conv3d)": "grad_input_conv",
        }.get(bound)
        if piece is not None:
            strided = f", stride {shape.stride}" if shape.stride > 1 else ""
            if piece == "grad_input_conv" and planes:
                strided += ", as planes"
            elif piece == "grad_input_conv" and shape.stride > 1:
                strided += " by phases"
            bound += (
                f" at {out_dict['pieces_fraction_of_gemm'][piece]:.0%} of the GEMM rate{strided}, "
                f"{lane_use[piece]:.0%} of its vector lanes on real channels"
            )
        out_dict["bound"] = bound
    else:
        memory = out_dict["ms_at_copy_bandwidth"] > out_dict["ms_at_gemm_rate"]
        out_dict["bound"] = "memory traffic" if memory else "compute below the GEMM rate"
    return out_dict


_ENV_PROBE = """
import resource, statistics, time, torch
from tesserad.nn.conv import conv4d
torch.manual_seed(0)
w = (torch.randn(16, 8, 3, 3, 3, 3) * 0.05).requires_grad_({backward})
ms, faults = [], []
for _ in range({reps}):
    x = torch.randn(8, 8, 16, 16, 16, 16)  # a fresh input each step, as a training loop has
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter_ns()
    y = conv4d(x, w, None, 1, 1)
    if {backward}:
        y.sum().backward()
    ms.append((time.perf_counter_ns() - start) / 1e6)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    del x, y
print(statistics.median(ms[1:]), min(ms[1:]), statistics.median(faults[1:]))
"""


def bench_env(reps: int) -> dict[str, Any]:
    """Shape A (time_fold) fwd and fwd+bwd in a fresh process under each glibc malloc setting.

    Speedups compare the best step (other load on a shared machine only adds time).
    """
    from tesserad.runtime_env import worker_environment

    big = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
    variants = {
        "default": "",
        "thresholds": big,
        "hugetlb": "glibc.malloc.hugetlb=1",
        "hugetlb+thresholds": "glibc.malloc.hugetlb=1:" + big,
        "no_mmap+trim": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296",
        "worker_environment()": worker_environment().get("GLIBC_TUNABLES", ""),
    }
    out: dict[str, dict[str, Any]] = {}
    for mode in ("fwd", "fwd+bwd"):
        for name, tunables in variants.items():
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            probe = _ENV_PROBE.format(reps=reps + 1, backward=mode == "fwd+bwd")
            proc = subprocess.run(
                [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
            )
            median, best, faults = (float(v) for v in proc.stdout.split())
            out[f"{mode} {name}"] = {
                "mode": mode,
                "tunables": tunables,
                "median_ms": median,
                "best_ms": best,
                "minor_faults_per_step": faults,
            }
        base = out[f"{mode} default"]["best_ms"]
        for key, r in out.items():
            if r["mode"] == mode:
                r["speedup_vs_default"] = base / r["best_ms"]
                print(
                    f"malloc {key:30s} median={r['median_ms']:.0f}ms best={r['best_ms']:.0f}ms "
                    f"faults/step={r['minor_faults_per_step']:.0f} speedup={r['speedup_vs_default']:.2f}x",
                    flush=True,
                )
    return out


@dataclass
class Rounds:
    """Per-round times of one runner, in ms: wall clock and process CPU time (all threads)."""

    wall: list[float]
    cpu: list[float]


def rounds_of(
    runners: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, Rounds]:
    """Every runner once as a warm-up, then ``rounds`` rounds in turns, so load from other
    processes hits all alike."""
    for run in runners.values():
        run()
    times = {name: Rounds([], []) for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            if device is not None:
                sync(device)
            cpu_start, start = time.process_time_ns(), clock()
            run()
            if device is not None:
                sync(device)
            times[name].wall.append((clock() - start) / 1e6)
            times[name].cpu.append((time.process_time_ns() - cpu_start) / 1e6)
    return times


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of per-round ratios: each round's pair ran side by side, under the same load."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def interleaved(
    runners: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, tuple[float, float]]:
    """(min ms, median ms) per runner, timed in turns (rounds_of)."""
    return {
        name: (min(t.wall), statistics.median(t.wall))
        for name, t in rounds_of(runners, rounds, device, clock).items()
    }


def measured_choice(shape: Shape, backward: bool, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> str:
    """The formulation `set_benchmark(True)` picks for this call (its own timing, cache cleared)."""
    clear_benchmark_cache()
    with benchmark(True):
        step("auto", backward, shape, x, w, b)
    (choice,) = benchmark_cache().values()
    return choice


_COMPILE_PROBE = """
import json, statistics, time, torch
import torch.nn.functional as F
from tesserad.nn import Cnn4dSpec, build_model
torch.manual_seed(0)
device = torch.device("{device}")
spec = Cnn4dSpec(input_shape=(2, 8, 12, 12, 12), output_size=10)
model = build_model(spec).to(device)
compiled = torch.compile(model)
out = {}
for batch in (1, 32):
    x = torch.randn(batch, *spec.input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    def step(net):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    start = time.perf_counter()
    step(compiled)  # compiles (forward and backward graphs) for this batch size
    compile_s = time.perf_counter() - start
    step(model)
    times = {"eager": [], "compiled": []}
    for _ in range({rounds}):
        for name, net in (("eager", model), ("compiled", compiled)):
            start = time.perf_counter()
            step(net)
            times[name].append((time.perf_counter() - start) * 1e3)
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    out[f"batch{batch}"] = {
        "compile_s": compile_s,
        "eager_median_ms": statistics.median(times["eager"]),
        "compiled_median_ms": statistics.median(times["compiled"]),
        "speedup_compiled_vs_eager": statistics.median(ratios),
    }
    print(json.dumps(out), flush=True)
"""


def bench_compile(rounds: int, timeout_s: float, device: str = "cpu") -> dict[str, Any]:
    """torch.compile (inductor) of the cnn4d classifier against eager, forward+backward, on
    ``device`` in a subprocess capped at ``timeout_s``: compile time per batch size and the
    median per-round speedup. Conv4d runs its plain-op formulations under compile
    (tesserad.nn.conv)."""
    probe = _COMPILE_PROBE.replace("{rounds}", str(rounds)).replace("{device}", device)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        stdout, failed = proc.stdout, proc.returncode != 0
        note = proc.stderr.strip().splitlines()[-1:] if failed else []
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        failed, note = True, [f"stopped after the {timeout_s:g} s cap"]
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    out: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    out["wall_s"] = time.perf_counter() - start
    out["timeout_s"] = timeout_s
    if failed:
        out["incomplete"] = note[0] if note else "the probe failed"
    for key, r in out.items():
        if key.startswith("batch"):
            print(
                f"compile cnn4d {key}: compile {r['compile_s']:.1f}s eager={r['eager_median_ms']:.1f}ms "
                f"compiled={r['compiled_median_ms']:.1f}ms speedup x{r['speedup_compiled_vs_eager']:.2f}",
                flush=True,
            )
    if failed:
        print(f"compile cnn4d: {out['incomplete']}", flush=True)
    return out


def bench_onnx(reps: int) -> dict[str, Any]:
    """Exported cnn4d classifier: onnxruntime (decomposed, native) beside torch eager.

    Two settings: every thread torch uses, timed by the wall clock (what a caller sees), and
    one thread timed by that thread's CPU time, which other load on a shared machine cannot
    inflate (with two busy cores, torch's spinning threads lose most of their wall time to
    it). Ratios are onnxruntime time / torch eager time (below 1: onnxruntime is faster),
    from the minimum over interleaved rounds and from the median.
    """
    import numpy as np
    import onnxruntime as ort

    from tesserad.nn import Cnn4dSpec, build_model, export_onnx

    spec = Cnn4dSpec(input_shape=(2, 8, 12, 12, 12), output_size=10)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    threads = torch.get_num_threads()
    settings = {
        f"{threads}_threads_wall": (threads, time.perf_counter_ns),
        "1_thread_cpu_time": (1, time.thread_time_ns),
    }
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for mode in ("decomposed", "native"):
            paths[mode] = Path(tmp) / f"{mode}.onnx"
            report = export_onnx(model, spec, paths[mode], conv4d=mode)
            out[f"export_{mode}"] = {"max_abs_diff": report.max_abs_diff, "opset": report.opset}
        for setting, (n_threads, clock) in settings.items():
            torch.set_num_threads(n_threads)
            sessions = {}
            for mode, path in paths.items():
                options = ort.SessionOptions()
                options.intra_op_num_threads = n_threads
                sessions[mode] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            rows: dict[str, dict[str, Any]] = out.setdefault(
                setting, {"torch_eager": {}, "ort_decomposed": {}, "ort_native": {}}
            )
            for batch in (1, 32):
                x = torch.randn(batch, *spec.input_shape)
                feed = {"input": x.numpy()}
                runners: dict[str, Callable[[], object]] = {"torch_eager": functools.partial(model, x)}
                runners.update(
                    {f"ort_{mode}": functools.partial(s.run, None, feed) for mode, s in sessions.items()}
                )
                with torch.inference_mode():
                    np.testing.assert_allclose(
                        sessions["decomposed"].run(None, feed)[0], model(x).numpy(), atol=1e-4
                    )
                    timings = interleaved(runners, reps * (10 if batch == 1 else 3), clock=clock)
                torch_min, torch_median = timings["torch_eager"]
                for name, (best, median) in timings.items():
                    row = rows[name]
                    row[f"batch{batch}_ms"] = best
                    row[f"batch{batch}_median_ms"] = median
                    if name != "torch_eager":
                        row[f"batch{batch}_ratio_to_torch"] = best / torch_min
                        row[f"batch{batch}_median_ratio_to_torch"] = median / torch_median
                line = " ".join(
                    f"{name}={r[f'batch{batch}_ms']:.1f}ms(median {r[f'batch{batch}_median_ms']:.1f})"
                    + (f"[x{r[f'batch{batch}_ratio_to_torch']:.2f}]" if name != "torch_eager" else "")
                    for name, r in rows.items()
                )
                print(f"onnx cnn4d {setting} batch{batch}: {line}", flush=True)
    torch.set_num_threads(threads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="one timed repetition, shapes as in full")
    parser.add_argument(
        "--env", action="store_true", help="also time glibc malloc tunables (fresh processes)"
    )
    parser.add_argument("--skip-onnx", action="store_true", help="skip the onnxruntime latency runs")
    parser.add_argument("--skip-compile", action="store_true", help="skip torch.compile of the cnn4d")
    parser.add_argument(
        "--compile-timeout", type=float, default=300.0, help="cap in seconds on the torch.compile probe"
    )
    parser.add_argument("--shapes", default="ABCDE", help="subset of shape letters")
    parser.add_argument(
        "--onnx-only",
        action="store_true",
        help="run only the onnxruntime latency runs and replace that section of the device's existing results",
    )
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="run only the torch.compile probe and replace that section of the device's existing results",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 keeps a busy shared machine's spinning "
        "OpenMP waits from swamping the many small calls of the loop",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: torch.cuda.is_available() is False; nothing to measure")
    if args.onnx_only or args.compile_only:
        path = RESULTS / f"conv4d_{args.device}.json"
        report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if args.onnx_only:
            report["onnx_cnn4d"] = bench_onnx(1 if args.quick else 5)
        if args.compile_only:
            report["compile_cnn4d"] = bench_compile(3 if args.quick else 6, args.compile_timeout, args.device)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"updated {path}")
        return
    device = torch.device(args.device)
    reduced = torch.bfloat16 if device.type == "cpu" else torch.float16
    bandwidth = copy_bandwidth(device)
    reps = 1 if args.quick else 5
    shapes = tuple(s for s in SHAPES if s.name in args.shapes)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "reps": reps,
        "copy_bandwidth_gbs": bandwidth / 1e9,
        "shapes": bench_shapes(device, reps, shapes, reduced, bandwidth),
    }
    path = RESULTS / f"conv4d_{device.type}.json"
    if device.type == "cpu" and args.env:
        report["malloc_tunables"] = bench_env(max(reps, 3))
    if device.type == "cpu" and not args.skip_onnx:
        report["onnx_cnn4d"] = bench_onnx(max(reps, 5))
    if not args.skip_compile:
        report["compile_cnn4d"] = bench_compile(max(reps, 3) * 2, args.compile_timeout, args.device)
    # Sections this run skipped keep an earlier run's figures, marked as such.
    previous = json.loads(path.read_text()) if path.exists() else {}
    for section in ("malloc_tunables", "onnx_cnn4d", "compile_cnn4d"):
        if section not in report and section in previous:
            report[section] = {**previous[section], "from_an_earlier_run": True}
    fwd_bwd = [r for r in report["shapes"] if r["mode"] == "fwd+bwd"]
    report["summary"] = {
        "geomean_fwd_bwd_speedup_auto_vs_loop": math.exp(
            statistics.fmean(math.log(r["algorithms"]["auto"]["speedup_vs_loop"]) for r in fwd_bwd)
        )
        if fwd_bwd
        else None,
        "geomean_fwd_bwd_speedup_auto_vs_loop_cpu": math.exp(
            statistics.fmean(math.log(r["algorithms"]["auto"]["speedup_vs_loop_cpu"]) for r in fwd_bwd)
        )
        if fwd_bwd
        else None,
        "geomean_all_speedup_auto_vs_loop": math.exp(
            statistics.fmean(math.log(r["algorithms"]["auto"]["speedup_vs_loop"]) for r in report["shapes"])
        ),
        "slowest_auto_vs_loop": min(r["algorithms"]["auto"]["speedup_vs_loop"] for r in report["shapes"]),
        "slowest_auto_measured_vs_loop": min(
            r["algorithms"]["auto_measured"]["speedup_vs_loop"] for r in report["shapes"]
        ),
        "auto_is_fastest": sum(r["auto_choice"] == r["fastest"] for r in report["shapes"]),
        "rows": len(report["shapes"]),
        "auto_fraction_of_gemm": {
            f"{r['shape']} {r['mode']}": r["auto_fraction_of_gemm"] for r in report["shapes"]
        },
        "auto_fraction_of_gemm_cpu": {
            f"{r['shape']} {r['mode']}": r["algorithms"]["auto"]["fraction_of_gemm_cpu"]
            for r in report["shapes"]
        },
        "slowest_auto_vs_loop_cpu": min(
            r["algorithms"]["auto"]["speedup_vs_loop_cpu"] for r in report["shapes"]
        ),
        "auto_analytic_peak_vs_loop": {
            f"{r['shape']} {r['mode']}": r["algorithms"]["auto"]["analytic_peak_vs_loop"]
            for r in report["shapes"]
        },
        f"auto_{str(reduced).removeprefix('torch.')}_speedup_vs_fp32": {
            f"{r['shape']} {r['mode']}": r["algorithms"][f"auto_{str(reduced).removeprefix('torch.')}"][
                "speedup_vs_fp32_auto"
            ]
            for r in report["shapes"]
        },
        "bounds": {f"{r['shape']} {r['mode']}": r["bounds"]["bound"] for r in report["shapes"]},
    }
    print(json.dumps(report["summary"], indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
