"""The CUDA section of the GPU check: Conv4d on a GPU against the CPU float64 reference, then the bench.

    .venv/bin/python bench/gpu_check_conv4d.py [--skip-bench] [--quick] [--compile-timeout S]

1. Correctness: the forty configurations of the unit tests (tests/unit/nn/conv4d_cases.py),
   every formulation and 'auto', output and gradients of input, weight and bias, on CUDA in
   float32 (TF32 off), and under autocast to float16 and bfloat16, against float64 on the CPU
   (the loop formulation, itself checked against the numpy direct sum by the unit tests).
   Tolerances, as a fraction of the reference's largest magnitude: float32 1e-5, float16
   4e-3, bfloat16 2e-2 (the unit tests' bounds). Writes bench/results/conv4d_cuda_correctness.json.
2. Speed: bench/conv4d_bench.py --device cuda (shapes A-E against the loop over cuDNN conv3d,
   and torch.compile of the cnn4d against eager), writing bench/results/conv4d_cuda.json; the
   goal is a forward+backward geomean of auto against the loop of at least 2x with no row below 1x.

Exits 1 (loudly) without a CUDA device, on any correctness failure, or when the bench fails;
the speed goal is reported, not enforced. ``run_check()`` is the entry point for other scripts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests" / "unit" / "nn"))

from conv4d_cases import CASES  # noqa: E402

from tesserad.nn import ALGORITHMS, conv4d  # noqa: E402
from tesserad.nn.conv import Algorithm  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
NAMES = ("output", "grad x", "grad w", "grad b")


def _tensors(
    cfg: dict[str, Any], device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["n"], cfg["c_in"], *cfg["size"], generator=g, dtype=torch.float64)
    w = torch.randn(
        cfg["c_out"], cfg["c_in"] // cfg["groups"], *cfg["kernel"], generator=g, dtype=torch.float64
    )
    b = torch.randn(cfg["c_out"], generator=g, dtype=torch.float64) if cfg["bias"] else None
    return (
        x.to(device, dtype).requires_grad_(),
        w.to(device, dtype).requires_grad_(),
        None if b is None else b.to(device, dtype).requires_grad_(),
    )


def _run(
    cfg: dict[str, Any],
    algorithm: Algorithm,
    device: str,
    dtype: torch.dtype,
    autocast: torch.dtype | None,
    upstream: torch.Tensor | None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    x, w, b = _tensors(cfg, device, dtype)
    with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
        out = conv4d(
            x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"], algorithm
        )
    if upstream is None:
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out.backward(upstream.to(device, out.dtype))  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    results = [out.detach()]
    for t in (x, w, b):
        if t is not None:
            assert t.grad is not None  # each requires grad, and backward ran
            results.append(t.grad)
    return [r.double().cpu() for r in results], upstream


def check_correctness(device: str = "cuda") -> tuple[int, list[str]]:
    """The tensors checked, and every mismatch as a line naming the case, formulation, precision
    and tensor (``device`` other than cuda only to try the check itself)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    failures = []
    checked = 0
    for index, cfg in enumerate(CASES):
        expected, upstream = _run(cfg, "loop", "cpu", torch.float64, None, None)
        for algorithm in (*ALGORITHMS, "auto"):
            for autocast in (None, torch.float16, torch.bfloat16):
                got, _ = _run(cfg, algorithm, device, torch.float32, autocast, upstream)
                precision = autocast or torch.float32
                for name, g, e in zip(NAMES, got, expected, strict=False):
                    scale = e.abs().max().item() or 1.0
                    error = (g - e).abs().max().item()
                    checked += 1
                    if not error <= TOLERANCE[precision] * scale:
                        failures.append(
                            f"case {index} {algorithm} {str(precision).removeprefix('torch.')} {name}: "
                            f"error {error:.3g} over {TOLERANCE[precision]:g} x scale {scale:.3g} ({cfg})"
                        )
    print(
        f"conv4d {device} correctness: {checked - len(failures)}/{checked} tensors within tolerance",
        flush=True,
    )
    return checked, failures


def run_bench(quick: bool, compile_timeout: float) -> int:
    command = [sys.executable, str(ROOT / "bench" / "conv4d_bench.py"), "--device", "cuda"]
    command += ["--compile-timeout", str(compile_timeout), *(["--quick"] if quick else [])]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        print("conv4d cuda bench: FAILED", flush=True)
        return result.returncode
    summary = json.loads((RESULTS / "conv4d_cuda.json").read_text())["summary"]
    geomean = summary["geomean_fwd_bwd_speedup_auto_vs_loop"]
    slowest = summary["slowest_auto_vs_loop"]
    met = geomean >= 2.0 and slowest >= 1.0
    print(
        f"conv4d cuda bench: fwd+bwd geomean {geomean:.2f}x the cuDNN loop, slowest row {slowest:.2f}x "
        f"(goal >= 2x, no row < 1x: {'met' if met else 'NOT met'})",
        flush=True,
    )
    return 0


def run_check(skip_bench: bool = False, quick: bool = False, compile_timeout: float = 120.0) -> int:
    """0 when Conv4d on CUDA matches the reference (and the bench ran); 1 otherwise."""
    if not torch.cuda.is_available():
        print(
            "conv4d gpu check: FAILED: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr
        )
        return 1
    print(f"conv4d gpu check on {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    started = time.perf_counter()
    checked, failures = check_correctness()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "conv4d_cuda_correctness.json").write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "cases": len(CASES),
                "formulations": [*ALGORITHMS, "auto"],
                "tolerance_fraction_of_reference_max": {str(k): v for k, v in TOLERANCE.items()},
                "tensors_checked": checked,
                "mismatches": failures,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    for line in failures:
        print(f"  MISMATCH {line}", flush=True)
    if failures:
        print(f"conv4d gpu check: FAILED: {len(failures)} mismatches", file=sys.stderr)
        return 1
    return 0 if skip_bench else run_bench(quick, compile_timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bench", action="store_true", help="correctness only")
    parser.add_argument("--quick", action="store_true", help="one timed round per bench row")
    parser.add_argument(
        "--compile-timeout", type=float, default=120.0, help="cap in seconds on the torch.compile probe"
    )
    args = parser.parse_args()
    sys.exit(run_check(args.skip_bench, args.quick, args.compile_timeout))


if __name__ == "__main__":
    main()
