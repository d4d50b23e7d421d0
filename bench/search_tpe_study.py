"""Why TPE is slow on bench/search_bench.py's problem: TPE's settings side by side on held-out
seeds, and how rugged the objective is around good configs.

Written for search_bench's first problem (an MLP trained whole, varied in batch size among
others: bench/results/search_rugged_mlp.json, commit 31441be); the stored results
search_tpe_study_{mode}_*.json are from that problem. Run now, it studies search_bench's current
problem (a head on a frozen backbone) and names its results search_tpe_study_head_*.json; the
"user" space still varies batch size.

Every value is a real trial through the daemon (a one-point grid sweep over search_bench's
problem and space), so it is the value a sweep would get for that config. TPE runs in this
process through tesserad.training.samplers.suggest with one setting changed per variant, exactly
as the daemon would call it (one trial at a time); random is the daemon's own random sweep.
Configs are cached by their values, so variants that share their random startup trials train
them once.

Modes:
  options     variants of TPE's settings against random, trials to reach random's best-of-N
              (pooled over the seeds, within search_bench.TOLERANCE), per seed and median, and
              the median over every 5-seed subset of the seeds (how far a 5-seed median moves).
  ruggedness  the best config of each random run, its values moved as search_bench.neighbours
              moves them (then: learning rate +-1%, batch size +-1), training seed unchanged:
              how far a neighbour's value falls from it, beside the spread over training seeds
              (search_bench's "noise").

Run: .venv/bin/python bench/search_tpe_study.py options --first-seed 100 --seeds 10 [--trials 20]
     .venv/bin/python bench/search_tpe_study.py ruggedness --first-seed 100 --seeds 10
     ->  bench/results/search_tpe_study_head_{mode}[_user_space]_{trials}_seeds_{first}_{last}.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import search_bench as bench

from tessera.v1 import training_pb2_grpc
from tesserad.training import samplers
from tesserad.training.samplers import PastTrial, tpe_options
from tesserad.training.search_space import SweepParameter

S = bench.S


def _gamma_quarter(n: int) -> int:
    return min(math.ceil(0.25 * n), 25)


# name -> changes to tpe_options(N); gamma, prior_weight and consider_endpoints are deprecated
# TPESampler arguments in optuna 5.0 (FutureWarning), measured here all the same.
VARIANTS: dict[str, dict[str, Any]] = {
    "current": {},
    "startup_3": {"n_startup_trials": 3},
    "ei_24": {"n_ei_candidates": 24},
    "endpoints": {"consider_endpoints": True},
    "prior_0.5": {"prior_weight": 0.5},
    "gamma_quarter": {"gamma": _gamma_quarter},
    "independent": {"multivariate": False, "group": False},
}


def user_parameters() -> list[S.SweepParameter]:
    """The space a user would more likely give Adam: learning rate up to 0.1 (the README's range),
    batch size on a log scale (each doubling as likely)."""
    return [
        S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=1e-4, max=0.1, log_scale=True)),
        S.SweepParameter(
            path="optimizer.weight_decay", range=S.SweepRange(min=1e-6, max=0.1, log_scale=True)
        ),
        S.SweepParameter(path="batch_size", range=S.SweepRange(min=8, max=128, integer=True, log_scale=True)),
    ]


SPACES: dict[str, Callable[[], list[S.SweepParameter]]] = {"bench": bench.parameters, "user": user_parameters}


def space(name: str) -> list[SweepParameter]:
    """The space as the searchers see it."""
    return [
        SweepParameter(
            p.path, low=p.range.min, high=p.range.max, log_scale=p.range.log_scale, integer=p.range.integer
        )
        for p in SPACES[name]()
    ]


def random_trials(
    training: training_pb2_grpc.TrainingStub, space_name: str, trials: int, seed: int
) -> list[tuple[dict[str, str], float]]:
    """The daemon's random sweep over the space, one trial at a time: (values, val_loss) in trial order."""
    spec = S.SweepSpec(
        base=bench.base_spec(),
        parameters=SPACES[space_name](),
        strategy=S.SWEEP_STRATEGY_RANDOM,
        max_trials=trials,
        max_concurrent=1,
        metric="val_loss",
        seed=seed,
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    while (sweep := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).state == S.SWEEP_STATE_RUNNING:
        time.sleep(0.05)
    return [
        (dict(t.params), t.metric if t.has_metric else math.inf)
        for t in sorted(sweep.trials, key=lambda t: t.number)
    ]


class Objective:
    """search_bench's objective at a point, through a one-point grid sweep; cached by point."""

    def __init__(self, training: training_pb2_grpc.TrainingStub) -> None:
        self.training = training
        self.cache: dict[tuple[tuple[str, str], ...], float] = {}
        self.trained = 0
        self.lock = threading.Lock()

    def __call__(self, point: dict[str, str], seed: int = 0) -> float:
        key = (*sorted(point.items()), ("seed", str(seed)))
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        spec = S.SweepSpec(
            base=bench.base_spec(), strategy=S.SWEEP_STRATEGY_GRID, max_concurrent=1, metric="val_loss"
        )
        spec.base.seed = seed
        for path, text in point.items():
            spec.parameters.append(S.SweepParameter(path=path, values=S.SweepValues(values=[text])))
        sweep_id = self.training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
        while (sweep := self.training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).state == (
            S.SWEEP_STATE_RUNNING
        ):
            time.sleep(0.02)
        trial = sweep.trials[0]
        value = trial.metric if trial.has_metric else math.inf
        with self.lock:
            self.cache[key] = value
            self.trained += 1
        return value


def run_tpe(objective: Objective, space_name: str, trials: int, seed: int) -> list[float]:
    """TPE's values in trial order, one trial at a time (settings: samplers.tpe_options)."""
    parameters = space(space_name)
    past: list[PastTrial] = []
    values = []
    for _ in range(trials):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            point, attrs = samplers.suggest("tpe", parameters, past, "min", seed, trials, False)
        value = objective(point)
        past.append(PastTrial(point, "complete", value, 0, attrs))
        values.append(value)
    return values


def trials_to_reach(values: list[float], target: float) -> float:
    return bench.trials_to_reach(list(itertools.accumulate(values, min)), target) or math.inf


def reach_share(runs: list[list[float]], skip: int, target: float) -> float:
    """The share of the trials after the first `skip` of each run that land within tolerance of target."""
    values = [v for run in runs for v in run[skip:]]
    return sum(v <= target * (1 + bench.TOLERANCE) for v in values) / len(values)


def subset_medians(random_runs: list[list[float]], runs: list[list[float]]) -> dict[str, Any]:
    """The median trials to target over every 5 of the seeds, each with its own target (the
    median of random's best over those 5), as search_bench reports its 5 seeds."""
    medians = []
    for chosen in itertools.combinations(range(len(runs)), 5):
        target = statistics.median(min(random_runs[i]) for i in chosen)
        medians.append(statistics.median(trials_to_reach(runs[i], target) for i in chosen))
    return {
        "subsets": len(medians),
        "quartiles": statistics.quantiles(medians, n=4, method="inclusive"),
        "min": min(medians),
        "max": max(medians),
        "share_at_most_half": sum(m <= len(runs[0]) / 2 for m in medians) / len(medians),
    }


def options_mode(
    training: training_pb2_grpc.TrainingStub,
    objective: Objective,
    space_name: str,
    seeds: list[int],
    trials: int,
    variants: list[str],
) -> dict[str, Any]:
    random_runs = [
        [value for _, value in random_trials(training, space_name, trials, seed)] for seed in seeds
    ]
    random_best = [min(v) for v in random_runs]
    target = statistics.median(random_best)
    # search_bench's from_all_random_draws reading: random's median best-of-N from all its trials
    # over the seeds, reached without a tolerance.
    draws_target = bench.median_best_of([v for run in random_runs for v in run], trials)
    print(
        f"random best-of-{trials} by seed {[round(b, 4) for b in random_best]}, target {target:.4f}",
        flush=True,
    )
    out: dict[str, Any] = {
        "random_best_by_seed": random_best,
        "target": target,
        "random_trials_to_target": [trials_to_reach(v, target) for v in random_runs],
        "random_reach_share": reach_share(random_runs, 0, target),
        "all_draws_target": draws_target,
        "random_values": random_runs,
        "variants": {},
    }
    for name in variants:
        started = time.monotonic()
        changes = VARIANTS[name]

        def variant_options(max_trials: int, changes: dict[str, Any] = changes) -> dict[str, Any]:
            return {**tpe_options(max_trials), **changes}

        # suggest reads its settings from samplers.tpe_options: this variant's, for all its seeds.
        samplers.tpe_options = variant_options
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda seed: run_tpe(objective, space_name, trials, seed), seeds))
        samplers.tpe_options = tpe_options
        reach = [trials_to_reach(v, target) for v in runs]
        entry: dict[str, Any] = {
            "changes": {k: (v.__name__ if callable(v) else v) for k, v in changes.items()},
            "trials_to_target": reach,
            "median": statistics.median(reach),
            "five_seed_medians": subset_medians(random_runs, runs),
            "modelled_reach_share": reach_share(
                runs, changes.get("n_startup_trials", tpe_options(trials)["n_startup_trials"]), target
            ),
            "all_draws_trials_to_target": [
                bench.trials_to_reach(list(itertools.accumulate(v, min)), draws_target, 0.0) for v in runs
            ],
            "all_draws_median_curve_reaches_at": bench.trials_to_reach(
                [
                    statistics.median(best)
                    for best in zip(*(itertools.accumulate(v, min) for v in runs), strict=True)
                ],
                draws_target,
                0.0,
            ),
            "best_by_seed": [min(v) for v in runs],
            "best_median": statistics.median(min(v) for v in runs),
            "values": runs,
            "wall_s": round(time.monotonic() - started, 1),
        }
        out["variants"][name] = entry
        entry["all_draws_median"] = statistics.median(
            t or math.inf for t in entry["all_draws_trials_to_target"]
        )
        print(
            f"{name:14s} to target {reach} median {entry['median']} (all draws: "
            f"{entry['all_draws_median']}) best median "
            f"{entry['best_median']:.4f} ({entry['wall_s']} s, {objective.trained} trained)",
            flush=True,
        )
    return out


def ruggedness_mode(
    training: training_pb2_grpc.TrainingStub, objective: Objective, seeds: list[int]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        point, value = min(random_trials(training, "bench", 20, seed), key=lambda trial: trial[1])
        near = {name: objective(p) for name, p in bench.neighbours(point).items()}
        by_seed = [objective(point, s) for s in bench.NOISE_SEEDS]
        rows.append(
            {
                "from_seed": seed,
                "params": point,
                "value": value,
                "neighbours": near,
                "neighbour_relative_change": {k: v / value - 1 for k, v in near.items()},
                "training_seed_relative_stdev": statistics.stdev(by_seed) / statistics.mean(by_seed),
            }
        )
        print(json.dumps({k: rows[-1][k] for k in ("from_seed", "neighbour_relative_change")}), flush=True)
    changes = [abs(c) for r in rows for c in r["neighbour_relative_change"].values()]
    return {
        "configs": rows,
        "neighbour_abs_relative_change_median": statistics.median(changes),
        "training_seed_relative_stdev_median": statistics.median(
            r["training_seed_relative_stdev"] for r in rows
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("options", "ruggedness"))
    parser.add_argument("--seeds", type=int, default=10, help="at least 6")
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="options: comma-separated, of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--space", choices=tuple(SPACES), default="bench", help="options: the space searched")
    args = parser.parse_args()
    if args.seeds < 6:
        parser.error("--seeds: at least 6 (the spread over choices of 5 of them is reported)")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    load_before = os.getloadavg()
    started = time.monotonic()
    with bench.problem_daemon() as (_, training):
        objective = Objective(training)
        if args.mode == "options":
            result = options_mode(
                training, objective, args.space, seeds, args.trials, args.variants.split(",")
            )
        else:
            result = ruggedness_mode(training, objective, seeds)
    name = args.mode if args.space == "bench" else f"{args.mode}_{args.space}_space"
    out = (
        Path(__file__).parent
        / "results"
        / f"search_tpe_study_head_{name}_{args.trials}_seeds_{seeds[0]}_{seeds[-1]}.json"
    )
    out.write_text(
        json.dumps(
            {
                "mode": args.mode,
                "seed_list": seeds,
                "trials": args.trials,
                "space": args.space,
                "tpe_options": tpe_options(args.trials),
                "tolerance": bench.TOLERANCE,
                "result": result,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "wall_s": round(time.monotonic() - started, 1),
            },
            indent=2,
            default=str,
        ).replace("Infinity", "null")
        + "\n"
    )


if __name__ == "__main__":
    main()
