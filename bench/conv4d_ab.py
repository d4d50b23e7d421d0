"""Conv4d before/after: this tree's conv4d against another tree's, side by side in one run.

    git show REV:src/tesserad/nn/conv.py > conv_rev.py   # the version to compare against
    .venv/bin/python bench/conv4d_ab.py --against conv_rev.py \\
        [--shapes ABCDE] [--mode fwd+bwd] [--algorithm time_fold] [--reps 7] [--threads 1] [--name NAME]

For each shape A-E of bench/conv4d_bench.py, one step (fresh leaf tensors; forward, and
backward of the sum for fwd+bwd) of the same formulation through both modules, timed in turns
(one warm-up each, then ``--reps`` rounds) so load from other processes hits both alike.
Reports per shape the median of per-round ratios (other/this: above 1 means this tree is
faster) of wall time and of process CPU time, beside each side's median wall and CPU ms, and
checks that both give the same output and gradients. The other module is loaded from its file
(conv.py imports nothing from tesserad), so any commit's version can be compared. Writes
bench/results/conv4d_ab_<name>.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv4d_bench import RESULTS, SHAPES, Shape, median_ratio, rounds_of

import tesserad.nn.conv as this_conv


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("conv4d_other", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot load a Python module from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(
    module: ModuleType,
    algorithm: str,
    backward: bool,
    shape: Shape,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One forward (and backward) on fresh leaf tensors; returns the output and gradients."""
    xr = x.detach().requires_grad_(backward)
    wr = w.detach().requires_grad_(backward)
    br = b.detach().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        y = module.conv4d(xr, wr, br, shape.stride, shape.padding, algorithm=algorithm)
    if not backward:
        return (y,)
    y.sum().backward()
    assert xr.grad is not None and wr.grad is not None and br.grad is not None
    return (y.detach(), xr.grad, wr.grad, br.grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the other tree's tesserad/nn/conv.py")
    parser.add_argument("--shapes", default="ABCDE", help="subset of shape letters")
    parser.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd+bwd")
    parser.add_argument("--algorithm", default="time_fold", help="formulation both sides run (or 'auto')")
    parser.add_argument("--reps", type=int, default=7, help="timed rounds per shape")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--name", default="partial", help="results file suffix: conv4d_ab_<name>.json")
    args = parser.parse_args()
    if not args.against.is_file():
        sys.exit(f"--against {args.against}: no such file (give the other tree's src/tesserad/nn/conv.py)")
    if args.reps < 1:
        sys.exit("--reps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    other = load_module(args.against)
    backward = args.mode == "fwd+bwd"
    rows = []
    for shape in (s for s in SHAPES if s.name in args.shapes):
        torch.manual_seed(0)
        x = torch.randn(shape.n, shape.c_in, *shape.size)
        w = torch.randn(shape.c_out, shape.c_in, *(shape.kernel,) * 4) * 0.05
        b = torch.randn(shape.c_out)
        runners = {
            name: functools.partial(step, module, args.algorithm, backward, shape, x, w, b)
            for name, module in (("other", other), ("this", this_conv))
        }
        # 'auto' may pick different formulations on the two sides: they agree to float32
        # rounding of sums taken in another order, not bit for bit.
        tolerance = 1e-4 if args.algorithm == "auto" else 1e-5
        for got, expected in zip(runners["this"](), runners["other"](), strict=True):
            torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
        wall = rounds_of(runners, args.reps)
        row = {
            "shape": shape.name,
            "mode": args.mode,
            "algorithm": args.algorithm,
            "other_median_ms": statistics.median(wall["other"].wall),
            "this_median_ms": statistics.median(wall["this"].wall),
            "other_cpu_ms": statistics.median(wall["other"].cpu),
            "this_cpu_ms": statistics.median(wall["this"].cpu),
            "speedup_wall": median_ratio(wall["other"].wall, wall["this"].wall),
            "speedup_cpu": median_ratio(wall["other"].cpu, wall["this"].cpu),
        }
        rows.append(row)
        print(
            f"{shape.name} {args.mode} {args.algorithm}: other {row['other_cpu_ms']:.0f} ms CPU "
            f"({row['other_median_ms']:.0f} wall), this {row['this_cpu_ms']:.0f} ms CPU "
            f"({row['this_median_ms']:.0f} wall); other/this CPU x{row['speedup_cpu']:.3f}, "
            f"wall x{row['speedup_wall']:.3f}",
            flush=True,
        )
    report = {
        "against": args.against.name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
        "geomean_speedup_cpu": math.exp(statistics.fmean(math.log(r["speedup_cpu"]) for r in rows)),
        "geomean_speedup_wall": math.exp(statistics.fmean(math.log(r["speedup_wall"]) for r in rows)),
    }
    path = RESULTS / f"conv4d_ab_{args.name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
