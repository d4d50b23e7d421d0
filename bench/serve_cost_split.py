"""Where cnn4d's served CPU beyond onnxruntime goes (issue 19): per thread, per request, in situ.

serve_bench's goal for cnn4d (daemon CPU per request less in-process onnxruntime's CPU for the
same rows, against the echo server's CPU) says how much serving costs beside the model, not where.
This runs serve_bench's daemon in this process and its client processes against it, reads each
thread's CPU from /proc/self/task/*/schedstat (nanoseconds) at each cell's start and end, and
serves `cnn4d-off` (max_batch_size 1) four ways beside serve_bench's echo server (its own process),
in an order that rotates each repeat:

- `constant`: cnn4d's constant twin (reshape and slice): the request path without the model; it
  runs inline, on the event loop's thread (its compute is under the batcher's inline limit);
- `model`: cnn4d itself: over the inline limit, so its run is handed to a worker thread;
- `stand_in`: cnn4d-off with each instance's run replaced by a sleep as long as the in-process
  run: the hand-off to the worker and back with no compute (and no caches swept by it);
- `inline`: cnn4d-off with the batcher's inline limit above its run (the daemon's
  `serving.inline_max_compute_us`): the model runs on the event loop's thread, no hand-off.

In-process onnxruntime (the daemon's session options and threads) is measured after each repeat,
back to back and with an idle gap before each run. A second part measures onnxruntime's
`session.intra_op.allow_spinning` in process: the daemon turns spinning off, and with the
default of one intra-op thread per instance on this box there is no pool to spin.

Writes bench/results/serve_cost_split.json.

    .venv/bin/python bench/serve_cost_split.py [--seconds S] [--repeats N] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import serve_bench as sb

RESULTS = Path(__file__).parent / "results" / "serve_cost_split.json"
MODES = ("echo", "constant", "model", "stand_in", "inline")
# The in-process daemon's event-loop thread (tests/conftest.py's InProcessDaemon names it).
LOOP_THREAD = "tesserad-test-loop"
# Above any cnn4d run on this box: with it, every request that finds an instance idle runs inline.
INLINE_ALL_NS = 1e9
# A runtime's run, which the stand-in replaces.
Run = Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]


def thread_cpu_ns() -> dict[str, tuple[str, int]]:
    """tid -> (group, CPU ns so far) for every thread of this process."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except OSError:  # the thread ended
            continue
        name = names.get(tid, "")
        group = "loop" if name == LOOP_THREAD else "worker" if name.startswith("batcher") else "other"
        out[tid] = (group, ns)
    return out


class ThisProcess:
    """What serve_bench's Clients measure against: the daemon in this process. Clients read its CPU
    as the cell starts (its callers warmed up) and as it ends; each reading also keeps every
    thread's CPU in `snapshots`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.snapshots: list[dict[str, tuple[str, int]]] = []

    def cpu_s(self) -> float:
        self.snapshots.append(thread_cpu_ns())
        times = os.times()
        return times.user + times.system


def paced(run: Callable[[], object], runs: int, gap_s: float) -> tuple[float, float]:
    """(CPU us per run, median wall us per run) of `run`, each run after `gap_s` idle. The CPU is
    this process's over the whole loop, gaps included, so that a runtime's threads spinning after
    a run are counted."""
    for _ in range(3):
        run()
    walls = []
    cpu = time.process_time()
    for _ in range(runs):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
    return (time.process_time() - cpu) / runs * 1e6, statistics.median(walls) * 1e6


def served(args: argparse.Namespace, work: Path, paths: dict[str, Path]) -> dict[str, Any]:
    """The cells of every mode at every concurrency, and in-process onnxruntime after each repeat."""
    from tesserad.serving.runtimes import OnnxRuntime

    daemon, files = sb.start_file_daemon(work / "data", paths)
    served_version = sb.loaded(files, "cnn4d-off")
    batcher = served_version.batcher
    assert batcher is not None  # an onnx version served through the batcher
    runtimes = batcher._runtimes
    runs: dict[int, Run] = {id(r): r.run for r in runtimes}
    shape = sb.SHAPES["cnn4d"]
    x = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    reference = OnnxRuntime(paths["cnn4d"], "cpu", served_version.config.intra_op_threads)
    answer = {"output": np.zeros((1, sb.OUTPUT_SIZES["cnn4d"]), dtype=np.float32)}
    wall = paced(lambda: reference.run(x, ["output"]), 50, 0.0)[1] / 1e6

    def sleep_run(inputs: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(wall)
        return answer

    echo = sb.Server(sb.echo_server_process)
    clients = sb.Clients()
    me = ThisProcess(daemon.target)
    inline_limit = batcher._inline_max_ns
    cells: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
    in_process: dict[str, list[float]] = defaultdict(list)
    try:
        # The first calls of a fresh daemon cost it hundreds of milliseconds more (a first cell's
        # p99 was 196 ms): one short cell of each served version first, not counted.
        for version in ("cnn4d-constant", "cnn4d-off"):
            clients.measure(me, version, shape, 1, 0.3)
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                shift = repeat % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    for r in runtimes:
                        # Each instance's own run replaced in place: the batcher's path to it is unchanged.
                        r.run = sleep_run if mode == "stand_in" else runs[id(r)]  # type: ignore[method-assign, assignment]
                    batcher._inline_max_ns = INLINE_ALL_NS if mode == "inline" else inline_limit
                    version = "cnn4d-constant" if mode == "constant" else "cnn4d-off"
                    if mode == "echo":
                        cell = clients.measure(echo, "cnn4d", shape, concurrency, args.seconds)
                        per = {"total": cell["server_cpu_us_per_request"]}
                    else:
                        cell = clients.measure(me, version, shape, concurrency, args.seconds)
                        before, after = me.snapshots[-2:]
                        per = split(before, after, cell["requests"])
                    per.update(
                        p50_us=cell["p50_ms"] * 1000, p99_us=cell["p99_ms"] * 1000, rps=cell["throughput_rps"]
                    )
                    cells[(concurrency, mode)].append(per)
                    print(f"#{repeat} c={concurrency:<3d} {mode:9s}", {k: round(v) for k, v in per.items()})
            for name, gap in (("back_to_back", 0.0), ("after_0.5ms_idle", 0.0005)):
                in_process[name].append(paced(lambda: reference.run(x, ["output"]), 100, gap)[0])
    finally:
        for r in runtimes:
            r.run = runs[id(r)]  # type: ignore[method-assign, assignment]
        batcher._inline_max_ns = inline_limit
        clients.close()
        echo.stop()
        daemon.stop()
    return summarise(cells, in_process, wall, args.concurrency)


def split(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]], requests: int
) -> dict[str, float]:
    """CPU us per request by thread group between two snapshots, and their total."""
    per = {"loop": 0.0, "worker": 0.0, "other": 0.0}
    for tid, (group, ns) in after.items():
        per[group] += (ns - before.get(tid, (group, 0))[1]) / requests / 1000
    per["total"] = sum(per.values())
    return per


def _median_ratio(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(x[key] / y[key] for x, y in zip(a, b, strict=True)), 3)


def _goal_ratio(
    cells: dict[tuple[int, str], list[dict[str, float]]], c: int, mode: str, less: list[float]
) -> dict[str, Any]:
    each = [
        (cell["total"] - cpu) / echo["total"]
        for cell, echo, cpu in zip(cells[(c, mode)], cells[(c, "echo")], less, strict=True)
    ]
    return {"median": round(statistics.median(each), 3), "each": [round(r, 3) for r in each]}


def summarise(
    cells: dict[tuple[int, str], list[dict[str, float]]],
    in_process: dict[str, list[float]],
    wall_s: float,
    concurrency: list[int],
) -> dict[str, Any]:
    hot = statistics.median(in_process["back_to_back"])
    by_concurrency = []
    for c in concurrency:
        medians = {
            mode: {
                k: round(statistics.median(cell[k] for cell in cells[(c, mode)]), 1)
                for k in cells[(c, mode)][0]
            }
            for mode in MODES
        }
        model, stand_in, constant = medians["model"], medians["stand_in"], medians["constant"]
        by_concurrency.append(
            {
                "concurrency": c,
                "us_per_request": medians,
                # Differences of medians: what each part of the served path adds.
                "split_us": {
                    "hand_off_to_worker_and_back": round(stand_in["total"] - constant["total"], 1),
                    "worker_run_less_in_process_back_to_back": round(
                        model["worker"] - stand_in["worker"] - hot, 1
                    ),
                    "loop_thread_after_a_model_run_less_after_a_sleep": round(
                        model["loop"] - stand_in["loop"], 1
                    ),
                },
                # serve_bench's goal figure, per repeat: CPU less in-process onnxruntime's (back to
                # back, measured after the repeat) over the echo server's; the constant model's
                # path (no model, no hand-off) over the echo server's beside it.
                "model_less_in_process_vs_echo": _goal_ratio(cells, c, "model", in_process["back_to_back"]),
                "inline_less_in_process_vs_echo": _goal_ratio(cells, c, "inline", in_process["back_to_back"]),
                "constant_vs_echo": _goal_ratio(cells, c, "constant", [0.0] * len(cells[(c, "echo")])),
                "inline_vs_model": {
                    k: _median_ratio(cells[(c, "inline")], cells[(c, "model")], k)
                    for k in ("total", "p50_us", "p99_us", "rps")
                },
            }
        )
    return {
        "in_process_onnxruntime_wall_us": round(wall_s * 1e6, 1),
        "in_process_onnxruntime_cpu_us": {k: round(statistics.median(v), 1) for k, v in in_process.items()},
        "by_concurrency": by_concurrency,
    }


def spinning(repeats: int, path: Path) -> list[dict[str, Any]]:
    """onnxruntime's intra-op spinning, in process: CPU and wall per cnn4d run for 1 and 2 intra-op
    threads with spinning off (the daemon's setting) and on, back to back and after idle gaps."""
    import onnxruntime

    model = path.read_bytes()
    x = {"input": np.random.default_rng(0).standard_normal(sb.SHAPES["cnn4d"]).astype(np.float32)}
    sessions = {}
    for threads in (1, 2):
        for spin in ("0", "1"):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            before = len(os.listdir("/proc/self/task"))
            session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            sessions[(threads, spin)] = (session, len(os.listdir("/proc/self/task")) - before)
    figures: dict[tuple[int, str, float], list[tuple[float, float]]] = defaultdict(list)
    for repeat in range(repeats):
        keys = list(sessions)
        for threads, spin in keys[repeat % len(keys) :] + keys[: repeat % len(keys)]:
            session = sessions[(threads, spin)][0]
            for gap in (0.0, 0.0005):

                def run(s: Any = session) -> object:  # onnxruntime ships no types
                    return s.run(["output"], x)

                figures[(threads, spin, gap)].append(paced(run, 150, gap))
    rows = []
    for (threads, spin, gap), v in figures.items():
        off = figures[(threads, "0", gap)]
        rows.append(
            {
                "intra_op_threads": threads,
                "allow_spinning": spin == "1",
                "threads_started": sessions[(threads, spin)][1],
                "idle_gap_ms": gap * 1000,
                "cpu_us_per_run": round(statistics.median(c for c, _ in v), 1),
                "wall_us_per_run": round(statistics.median(w for _, w in v), 1),
                # Medians of per-repeat ratios against spinning off, same threads and gap.
                "cpu_vs_spinning_off": round(
                    statistics.median(a[0] / b[0] for a, b in zip(v, off, strict=True)), 3
                ),
                "wall_vs_spinning_off": round(
                    statistics.median(a[1] / b[1] for a, b in zip(v, off, strict=True)), 3
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per cell")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "seconds_per_cell": args.seconds,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="serve-cost-") as work:
        paths = sb.export_models(Path(work), ["cnn4d"])
        results["served"] = served(args, Path(work), paths)
        results["spinning"] = spinning(args.repeats, paths["cnn4d"])
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("served", "spinning")}, indent=1))
    print(f"wrote {args.out} in {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
