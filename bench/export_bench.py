"""ONNX export benchmark: wall and CPU time per phase of `export_onnx`, first export in a
process (cold: the exporter's imports included) and later ones (warm), for the demo's cnn4d and
the bench's cnn4d.

Each repeat is a fresh process per model (the daemon's situation: torch imported, the exporter
not yet) that exports it `--warm + 1` times; the first is the cold one. Phases are timed by
wrapping the exporter's own steps (private functions of torch 2.13's exporter, which other
versions may rename): capture (torch.export), registry (torchlib's op table), decompose,
translate (FX graph to ONNX IR), optimize (onnxscript), save, check (onnx.load and the
checker), parity (onnxruntime against torch); imports (onnx's and the exporter's, cold only);
`other` is the rest (the model's lowered copy). CPU is the process's CPU time (every thread),
beside wall.

`--baseline-src DIR` runs each repeat twice, interleaved, once importing tesserad from DIR (e.g.
the src/ of a worktree of main) and once from this checkout, and gives the median of the
per-repeat ratios baseline / this checkout.

    .venv/bin/python bench/export_bench.py [--repeats 5] [--warm 2] [--baseline-src DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from results_file import RESULTS

SRC = Path(__file__).resolve().parent.parent / "src"
MODELS: dict[str, dict[str, Any]] = {
    # clients/python/src/tessera/demo.py's model
    "demo_cnn4d": {
        "family": "cnn4d",
        "input_shape": [1, 4, 4, 4, 4],
        "output_size": 2,
        "channels": [4, 8],
        "kernel_size": 3,
    },
    # bench/conv4d_bench.py's bench_onnx model
    "bench_cnn4d": {"family": "cnn4d", "input_shape": [2, 8, 12, 12, 12], "output_size": 10},
}
PHASES = ("imports", "capture", "registry", "decompose", "translate", "optimize", "save", "check", "parity")


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _instrument(spent: dict[str, list[float]]) -> None:
    """Wrap each phase's function so its wall and CPU time add to `spent[phase]`; the imports
    this needs (the exporter's own) count as `spent["imports"]`."""
    wall, cpu = _clocks()
    import onnx
    from torch.onnx._internal.exporter import _capture_strategies, _core, _onnx_program, _registration

    import tesserad.nn.onnx_export as onnx_export

    end_wall, end_cpu = _clocks()
    spent["imports"] = [end_wall - wall, end_cpu - cpu]

    def timed(phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = _clocks()
            try:
                return function(*args, **kwargs)
            finally:
                end_wall, end_cpu = _clocks()
                spent[phase][0] += end_wall - wall
                spent[phase][1] += end_cpu - cpu

        return wrapper

    strategy = _capture_strategies.CaptureStrategy
    strategy.__call__ = timed("capture", strategy.__call__)  # type: ignore[method-assign]
    registry = _registration.ONNXRegistry
    registry.from_torchlib = classmethod(timed("registry", registry.from_torchlib.__func__))  # type: ignore[method-assign,assignment,attr-defined]
    _core._prepare_exported_program_for_export = timed(
        "decompose", _core._prepare_exported_program_for_export
    )
    _core._exported_program_to_onnx_program = timed("translate", _core._exported_program_to_onnx_program)
    program = _onnx_program.ONNXProgram
    program.optimize = timed("optimize", program.optimize)  # type: ignore[method-assign]
    program.save = timed("save", program.save)  # type: ignore[method-assign]
    onnx.load = timed("check", onnx.load)
    onnx.checker.check_model = timed("check", onnx.checker.check_model)
    onnx_export._parity = timed("parity", onnx_export._parity)


def worker(name: str, warm: int) -> list[dict[str, Any]]:
    """One process's exports of model `name`: the cold export then `warm` more."""
    import tempfile

    import torch

    from tesserad.nn import build_model, export_onnx, spec_from_dict

    spec = spec_from_dict(MODELS[name])
    torch.manual_seed(0)
    model = build_model(spec).eval()
    spent: dict[str, list[float]] = {phase: [0.0, 0.0] for phase in PHASES}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(warm + 1):
            wall, cpu = _clocks()
            if n == 0:  # after torch's import, as the daemon has it before any export
                _instrument(spent)
            report = export_onnx(model, spec, Path(tmp) / f"{name}-{n}.onnx")
            end_wall, end_cpu = _clocks()
            run: dict[str, Any] = {
                "total": {"wall_s": end_wall - wall, "cpu_s": end_cpu - cpu},
                "max_abs_diff": report.max_abs_diff,
                "file_size": report.file_size,
            }
            for phase, (phase_wall, phase_cpu) in spent.items():
                run[phase] = {"wall_s": phase_wall, "cpu_s": phase_cpu}
            run["other"] = {
                key: run["total"][key] - sum(run[p][key] for p in PHASES) for key in ("wall_s", "cpu_s")
            }
            runs.append(run)
            for pair in spent.values():
                pair[0] = pair[1] = 0.0
    return runs


def run_worker(src: Path, warm: int) -> dict[str, Any]:
    """Per model, its exports in a fresh process importing tesserad from `src`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(SRC.parent / "clients" / "python" / "src")])
    result: dict[str, Any] = {}
    for name in MODELS:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--warm", str(warm)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _summary(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, cold and warm: the median of each phase's wall and CPU over repeats."""
    out: dict[str, Any] = {}
    for name in MODELS:
        for kind in ("cold", "warm"):
            runs = (
                [r[name][0] for r in repeats] if kind == "cold" else [x for r in repeats for x in r[name][1:]]
            )
            if not runs:
                continue
            out[f"{name}_{kind}"] = {
                phase: {
                    key: statistics.median(run[phase][key] for run in runs) for key in ("wall_s", "cpu_s")
                }
                for phase in ("total", *PHASES, "other")
            } | {"runs": len(runs), "max_abs_diff": max(run["max_abs_diff"] for run in runs)}
    return out


def _ratios(baseline: list[dict[str, Any]], current: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, cold and warm: median over repeats of baseline / current total (wall and CPU)."""
    out: dict[str, Any] = {}
    for name in MODELS:
        for kind in ("cold", "warm"):
            pairs = []
            for old, new in zip(baseline, current, strict=True):
                olds = old[name][:1] if kind == "cold" else old[name][1:]
                news = new[name][:1] if kind == "cold" else new[name][1:]
                pairs += list(zip(olds, news, strict=True))
            if pairs:
                out[f"{name}_{kind}"] = {
                    f"{key}_ratio": statistics.median(o["total"][key] / n["total"][key] for o, n in pairs)
                    for key in ("wall_s", "cpu_s")
                } | {"pairs": len(pairs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per side")
    parser.add_argument("--warm", type=int, default=2, help="exports per model after the first, per process")
    parser.add_argument(
        "--baseline-src", default="", help="a src/ to compare with, e.g. a worktree of main's"
    )
    parser.add_argument("--label", default="", help="what this run measures")
    parser.add_argument("--out", default="", help="write the result to bench/results/OUT (a new file)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.warm)))
        return
    path = RESULTS / args.out if args.out else None
    if path is not None and path.exists():
        parser.error(f"{path} exists; results files are never overwritten, pick another --out name")
    load_before = os.getloadavg()
    sides = {"current": SRC} | ({"baseline": Path(args.baseline_src).resolve()} if args.baseline_src else {})
    raw: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side, src in sides.items() if repeat % 2 == 0 else reversed(sides.items()):
            raw[side].append(run_worker(src, args.warm))
            cold = {name: f"{runs[0]['total']['wall_s']:.2f}s" for name, runs in raw[side][-1].items()}
            print(f"repeat {repeat} {side}: cold {cold}", flush=True)
    out: dict[str, Any] = {
        "bench": "export_bench",
        "label": args.label,
        "repeats": args.repeats,
        "warm_exports_per_process": args.warm,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "phases": {side: _summary(runs) for side, runs in raw.items()},
    }
    if args.baseline_src:
        out["baseline_over_current"] = _ratios(raw["baseline"], raw["current"])
    out["raw"] = raw
    print(json.dumps({k: v for k, v in out.items() if k != "raw"}, indent=2))
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
