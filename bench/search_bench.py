"""Hyperparameter search through tesserad: best validation loss against trials used, for random,
TPE, ASHA and PBT sweeps over the same seeded problem, several seeds each.

The problem: a linear head on a frozen backbone. An MLP 8-512-1 trained for one epoch on a
nonlinear function of 8 inputs is registered as a model by an ordinary job (the backbone); the
targets are a fixed random linear function of its 512 hidden features plus noise (8192 samples,
synthetic, seeded; 6144 to train, 2048 to validate). Each trial fine-tunes from the backbone with
its hidden layer frozen and a fresh head: 20 epochs of Adam, batch 1024, cosine schedule, varied
in learning rate (log 1e-4..1), weight decay (log 1e-6..0.1) and beta1 (0.5..0.99). Each trial is
a real job (a worker forked from the daemon's fork server, init_from a registered version,
epochs, checkpoints) run by the daemon's sweep. Random, TPE and ASHA run one trial at a time, so
a trial's place in the sweep is its place in time and a run's values are deterministic for its
seed (CPU training with one thread); PBT runs its population of 4 at once. ASHA may draw 3x
random's trials; its first N points are random's for the same seed, and it is measured by the
epochs it spent until a trial of it first reached the target (a pruned trial may run an epoch
past its rung before the stop reaches it, so that count moves a little between runs).

Why this problem (changed from the one in search_rugged_mlp.json and search_rugged_mlp_40.json,
commit 31441be and before: an MLP 8-64-1 trained whole for 9 epochs, varied in learning rate,
weight decay and batch size 8..128): "reaches" means within TOLERANCE (2%), and that problem
could not resolve 2%. On seeds 100-104 one config retrained under 5 training seeds spread by a
median 8.7% (relative stdev), and moving one value a step (learning rate 1%, batch size 1: another
number of steps and another data order) moved the value by a median 5.4% under the same seed.
Before anything else was measured, the criterion for a new problem was fixed: both figures at
most 1%, real jobs through the same path, an epoch dimension for ASHA and PBT. A head on frozen
features is a convex problem: on seeds 100-104 this one measured 0.67% and 0.05% (learning
rate and beta1 moved 0.1%, weight decay not at all). Random's per-trial chance of reaching its
pooled best-of-20 there was 7% (the old problem's: 10%), and random search itself needed a
median of 14 of its 20 trials to reach it (the old: 6; on seeds 0-4 of the new problem it was
5, see README). The spread grows with the learning rate: on seeds 0-9 the best configs with a
rate above 0.2 spread up to 3.3%. Those measurements are search_seeds_100_104.json (random and
ASHA) and search_rugged_mlp_seeds_100_104.json (random); TPE was run on neither.

Goals (issue 15): TPE reaches random's best-of-N in at most half the trials (median over seeds);
ASHA reaches random's best in at most 40% of random's epochs (N * 20). "Random's best-of-N" is
read two ways, both reported (TARGETS): per seed ("paired") and the median over seeds of random's
best ("pooled", the one the goals are judged on); "reaches" means within TOLERANCE of it. After
the random runs, each seed's best random config is trained again under 5 training seeds
("noise": the spread TOLERANCE must stay well above), and with each of its values 1% lower and
higher under the same training seed: how far apart neighbouring configs fall. Everything else
is in the JSON: each run's trials in order with value, epochs and state, best-so-far curves,
wall time and CPU seconds (the daemon and every process under it) per trial, and the searchers'
settings.

Seeds: 10 by default. The goals are judged on the first 5 (the issue's count; 0-4, as before);
all 10 are summarised beside them, and "subsets" gives the range of the goal figures over every
choice of 5 of the 10 seeds, each with its own pooled target: how much a 5-seed median is the
luck of its seeds.

The searchers' settings are those chosen for the old problem on other seeds (TPE's: the sweep
defaults, chosen on 100-109; ASHA's on 100-104), kept for this one: ASHA's were checked on seeds
100-104 of it (a median of 20% of random's epochs), TPE was not run on it before the reported
seeds.

Run: .venv/bin/python bench/search_bench.py [--seeds 10] [--trials 20] [--first-seed 0]
        [--searchers random,tpe,asha,pbt] [--out PATH]
     ->  bench/results/search.json (search_40.json: the same with --trials 40)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import safetensors.numpy

sys.path.insert(0, str(Path(__file__).parent))
from daemon_process import start_daemon, tree_cpu_s

from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tesserad.training.samplers import tpe_options

RESULTS = Path(__file__).parent / "results" / "search.json"
S = training_pb2
EPOCHS = 20
SAMPLES = 8192
HIDDEN = 512
BATCH = 1024
BACKBONE = "search-backbone"
SEARCHERS = ("random", "tpe", "asha", "pbt")
# Rungs at 1, 2, 4, 8 and 16 epochs, the best half going on. Chosen for the old problem, whose
# early ranks were a rough guide (keeping a third pruned configs that ended in the best 5%); kept.
ASHA = {"min_epochs": 1, "reduction_factor": 2}
ASHA_RUNGS = [
    ASHA["min_epochs"] * ASHA["reduction_factor"] ** k
    for k in range(EPOCHS)
    if ASHA["min_epochs"] * ASHA["reduction_factor"] ** k < EPOCHS
]
ASHA_DRAWS = 3  # ASHA's max_trials as a multiple of random's
PBT_POPULATION = 4
# "Reached" a value: within 2% of it. Retraining one config under another training seed moves its
# val_loss by a median 0.67% (relative standard deviation; 0.34% to 0.99% over the configs of
# seeds 100-104, see "noise" in the JSON), so a result 2% away is a worse result, not the luck
# of the seed. The same seed twice gives the same value exactly (CPU training, one thread).
TOLERANCE = 0.02
ASHA_GOAL = 0.4  # of random's epochs
TARGETS = {
    "paired": "random's best-of-N on the same seed, per seed",
    "pooled": (
        "the median over the seeds of random's best-of-N, one target for every seed; the goals "
        "are judged on this one. Random's best on one seed is one draw of an extreme; the "
        "median over seeds is the best-of-N random "
        "search typically buys. TPE's draws share nothing with random's on the same seed, so "
        "pairing them adds that draw's luck without cancelling any; ASHA's first N draws are "
        "random's, so its paired figure says whether it finds random's own best point cheaper."
    ),
}
NOISE_SEEDS = (0, 1, 2, 3, 4)
ISSUE_SEEDS = 5  # seeds the goals are judged on (the issue's "5 seeds each"); more are reported beside


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """The problem's inputs, and the nonlinear function of them the backbone is trained on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype(np.float32)
    y = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + 0.1 * rng.normal(size=SAMPLES)
    return x, y.astype(np.float32)


def upload(channel: grpc.Channel, name: str, x: np.ndarray, y: np.ndarray) -> None:
    """Samples x -> y as dataset `name`: the first three quarters to train, the rest to validate."""
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y[:, None])
    header = datasets_pb2.UploadDatasetHeader(name=name, format=datasets_pb2.DATASET_FORMAT_NPZ)
    cut = len(x) * 3 // 4
    header.splits.indices.splits.extend(
        [
            datasets_pb2.SplitIndices(name="train", indices=list(range(cut))),
            datasets_pb2.SplitIndices(name="val", indices=list(range(cut, len(x)))),
        ]
    )
    data = buffer.getvalue()
    requests = [datasets_pb2.UploadDatasetRequest(header=header)] + [
        datasets_pb2.UploadDatasetRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)
    ]
    datasets_pb2_grpc.DatasetsStub(channel).UploadDataset(iter(requests))


def register_backbone(channel: grpc.Channel) -> None:
    """The trials' backbone: an MLP 8-512-1 trained one epoch (training seed 0) on the inputs'
    nonlinear function and registered as BACKBONE by an ordinary job."""
    x, y = inputs()
    upload(channel, "search-backbone", x, y)
    spec = job_spec_pb2.JobSpec(
        experiment="search-bench",
        architecture=architecture_pb2.Architecture(
            input_shape=[8], output_size=1, mlp=architecture_pb2.MlpSpec(hidden_sizes=[HIDDEN])
        ),
        task=job_spec_pb2.TASK_REGRESSION,
        data=job_spec_pb2.DataSpec(dataset=common_pb2.DatasetRef(name="search-backbone"), val_split="val"),
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=1e-3),
        lr_schedule=job_spec_pb2.LrSchedule(cosine=job_spec_pb2.CosineLr()),
        epochs=1,
        batch_size=64,
        seed=0,
        log_every_n_steps=1000,
        register_as=job_spec_pb2.RegisterAs(model=BACKBONE),
    )
    training = training_pb2_grpc.TrainingStub(channel)
    job_id = training.SubmitJob(S.SubmitJobRequest(spec=spec)).job_id
    while (job := training.GetJob(S.GetJobRequest(job_id=job_id))).state in (
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
    ):
        time.sleep(0.05)
    if job.state != S.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"the backbone job ended {S.JobState.Name(job.state)}: {job.error}")


def upload_problem(channel: grpc.Channel) -> None:
    """The trials' dataset "search": the inputs, and as targets a fixed random linear function
    of the backbone's 512 features (relu of its hidden layer), scaled to standard deviation 10,
    plus noise of standard deviation 1. A head on those features can fit it exactly but for the
    noise, so what a trial reaches is how far its optimiser got, not a misfit no setting
    changes. The scale keeps a fresh head's initial output (standard deviation about 0.25)
    small beside the targets, so the head's initialisation (the training seed) barely moves
    where training ends."""
    register_backbone(channel)
    ref = common_pb2.VersionRef(model=BACKBONE, version=1)
    stub = registry_pb2_grpc.RegistryStub(channel)
    weights = b"".join(
        m.chunk
        for m in stub.DownloadVersion(registry_pb2.DownloadVersionRequest(ref=ref))
        if m.HasField("chunk")
    )
    tensors = safetensors.numpy.load(weights)
    x, _ = inputs()
    features = np.maximum(x.astype(np.float64) @ tensors["1.weight"].T + tensors["1.bias"], 0.0)
    rng = np.random.default_rng(2)
    signal = features @ rng.normal(size=HIDDEN)
    y = 10 * (signal - signal.mean()) / signal.std() + rng.normal(size=SAMPLES)
    upload(channel, "search", x, y.astype(np.float32))


def base_spec() -> job_spec_pb2.JobSpec:
    return job_spec_pb2.JobSpec(
        experiment="search-bench",
        task=job_spec_pb2.TASK_REGRESSION,
        data=job_spec_pb2.DataSpec(dataset=common_pb2.DatasetRef(name="search"), val_split="val"),
        # The backbone's hidden layer stays as registered; a fresh head (initialised by the
        # training seed) is all that trains: a linear regression on 512 fixed features.
        init_from=common_pb2.VersionRef(model=BACKBONE, version=1),
        replace_head=job_spec_pb2.ReplaceHead(output_size=1),
        freeze=["1.*"],
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=0.01),
        # Annealed to 0, so a trial's last validation loss is a smooth function of its values,
        # not of where a high rate happened to leave the weights.
        lr_schedule=job_spec_pb2.LrSchedule(cosine=job_spec_pb2.CosineLr()),
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=0,
        log_every_n_steps=1000,
    )


def parameters() -> list[S.SweepParameter]:
    return [
        S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=1e-4, max=1.0, log_scale=True)),
        S.SweepParameter(
            path="optimizer.weight_decay", range=S.SweepRange(min=1e-6, max=0.1, log_scale=True)
        ),
        S.SweepParameter(path="optimizer.beta1", range=S.SweepRange(min=0.5, max=0.99)),
    ]


def sweep_spec(searcher: str, trials: int, seed: int) -> S.SweepSpec:
    spec = S.SweepSpec(
        base=base_spec(),
        parameters=parameters(),
        max_trials=trials,
        max_concurrent=1,
        metric="val_loss",
        seed=seed,
    )
    if searcher == "random":
        spec.strategy = S.SWEEP_STRATEGY_RANDOM
    elif searcher == "tpe":
        spec.strategy = S.SWEEP_STRATEGY_TPE
    elif searcher == "asha":
        spec.strategy = S.SWEEP_STRATEGY_ASHA
        spec.asha.CopyFrom(S.AshaSettings(**ASHA))
        spec.max_trials = trials * ASHA_DRAWS
    else:
        spec.strategy = S.SWEEP_STRATEGY_PBT
        spec.pbt.CopyFrom(S.SweepPbtSettings(population=PBT_POPULATION))
        spec.max_concurrent = PBT_POPULATION
        spec.base.checkpoints.CopyFrom(job_spec_pb2.CheckpointPolicy(every_n_epochs=EPOCHS, keep_last=1))
    return spec


def run_sweep(
    training: training_pb2_grpc.TrainingStub, daemon_pid: int, searcher: str, trials: int, seed: int
) -> dict[str, Any]:
    cpu_before = tree_cpu_s(daemon_pid)
    started = time.monotonic()
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=sweep_spec(searcher, trials, seed))).sweep_id
    while (sweep := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).state == S.SWEEP_STATE_RUNNING:
        time.sleep(0.05)
    wall_s = time.monotonic() - started
    time.sleep(0.2)  # the last worker's parent reaps it, and its CPU time counts
    cpu_s = tree_cpu_s(daemon_pid) - cpu_before
    rows: list[dict[str, Any]] = []
    for t in sorted(sweep.trials, key=lambda t: t.number):
        job = training.GetJob(S.GetJobRequest(job_id=t.job_id))
        rows.append(
            {
                "number": t.number,
                "params": dict(t.params),
                "val_loss": t.metric if t.has_metric else None,
                "epochs": job.epoch,
                "pruned": t.pruned,
                "generation": t.generation,
                "exploited": t.exploited,
            }
        )
    best, curve = math.inf, []
    for row in rows:
        if row["val_loss"] is not None and math.isfinite(row["val_loss"]):
            best = min(best, row["val_loss"])
        curve.append(best)
    return {
        "searcher": searcher,
        "seed": seed,
        "state": S.SweepState.Name(sweep.state),
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "wall_s_per_trial": round(wall_s / len(rows), 3),
        "cpu_s_per_trial": round(cpu_s / len(rows), 3),
        "best": best,
        "epochs": sum(r["epochs"] for r in rows),
        "best_so_far": curve,
        "trials": rows,
    }


def measure_noise(
    training: training_pb2_grpc.TrainingStub, random_runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each random run's best config trained again under each of NOISE_SEEDS (training seeds;
    the problem's own, 0, among them: that rerun must give the run's value exactly). The spread
    of one config's values is how far apart two results fall by the training seed alone, which
    must stay well inside TOLERANCE."""
    out = []
    for run in random_runs:
        best = min((r for r in run["trials"] if r["val_loss"] is not None), key=lambda r: r["val_loss"])
        spec = S.SweepSpec(
            base=base_spec(),
            strategy=S.SWEEP_STRATEGY_GRID,
            parameters=[
                S.SweepParameter(path="seed", values=S.SweepValues(values=[str(s) for s in NOISE_SEEDS]))
            ],
            max_concurrent=1,
            metric="val_loss",
        )
        for path, text in best["params"].items():
            spec.parameters.append(S.SweepParameter(path=path, values=S.SweepValues(values=[text])))
        sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
        while (
            sweep := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))
        ).state == S.SWEEP_STATE_RUNNING:
            time.sleep(0.05)
        values = [t.metric for t in sorted(sweep.trials, key=lambda t: int(t.params["seed"]))]
        mean = statistics.mean(values)
        near = {name: train_once(training, point) for name, point in neighbours(best["params"]).items()}
        out.append(
            {
                "from_seed": run["seed"],
                "params": best["params"],
                "val_loss_by_training_seed": values,
                "repeat_equal": values[NOISE_SEEDS.index(0)] == best["val_loss"],
                "relative_stdev": statistics.stdev(values) / mean,
                "relative_range": (max(values) - min(values)) / mean,
                "neighbours_val_loss": near,
                "neighbours_relative_change": {k: v / best["val_loss"] - 1 for k, v in near.items()},
            }
        )
    return out


def neighbours(point: dict[str, str]) -> dict[str, dict[str, str]]:
    """`point` with each of its values in turn 1% lower and higher."""
    return {
        f"{path.removeprefix('optimizer.')}*{factor}": {**point, path: repr(float(text) * factor)}
        for path, text in point.items()
        for factor in (0.99, 1.01)
    }


def train_once(training: training_pb2_grpc.TrainingStub, point: dict[str, str]) -> float:
    """The problem's val_loss at `point` (training seed 0, as every sweep trial), as a one-point grid sweep."""
    spec = S.SweepSpec(base=base_spec(), strategy=S.SWEEP_STRATEGY_GRID, max_concurrent=1, metric="val_loss")
    for path, text in point.items():
        spec.parameters.append(S.SweepParameter(path=path, values=S.SweepValues(values=[text])))
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    while (sweep := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).state == S.SWEEP_STATE_RUNNING:
        time.sleep(0.05)
    return sweep.trials[0].metric if sweep.trials[0].has_metric else math.inf


def trials_to_reach(curve: list[float], target: float, tolerance: float = TOLERANCE) -> int | None:
    """Trials used until the best so far is within `tolerance` of target (None: never)."""
    return next((i + 1 for i, value in enumerate(curve) if value <= target * (1 + tolerance)), None)


def epochs_to_reach(run: dict[str, Any], target: float, tolerance: float = TOLERANCE) -> int | None:
    """Epochs of the trials up to and including the first within `tolerance` of target (None: never)."""
    used: int = 0
    for row in run["trials"]:
        used += row["epochs"]
        if row["val_loss"] is not None and row["val_loss"] <= target * (1 + tolerance):
            return used
    return None


def settings(trials: int) -> dict[str, Any]:
    """What each searcher ran with, the same for every seed (TPE: the sweep defaults; ASHA: ASHA)."""
    return {
        "max_concurrent": {"random": 1, "tpe": 1, "asha": 1, "pbt": PBT_POPULATION},
        "tpe": {**tpe_options(trials), "source": "tesserad.training.samplers.tpe_options (sweep defaults)"},
        "asha": {
            **ASHA,
            "rungs_at_epochs": ASHA_RUNGS,
            "max_trials": trials * ASHA_DRAWS,
            "draws": "random's points for the same seed, then more random points",
        },
        "pbt": {"population": PBT_POPULATION, "quantile": 0.25, "perturb": 0.2, "resample_probability": 0.25},
        "reached_means": f"within {TOLERANCE:.0%} of the target (val_loss, lower is better)",
    }


@contextlib.contextmanager
def problem_daemon() -> Iterator[tuple[subprocess.Popen[str], training_pb2_grpc.TrainingStub]]:
    """A daemon on a temporary data directory holding the problem's dataset: two training slots
    of one thread each, so that a sweep's trials run two at a time on the 2-core dev box."""
    os.environ.setdefault("TESSERA_TRAINING_CPU_SLOTS", "2")
    os.environ.setdefault("TESSERA_TRAINING_THREADS_PER_SLOT", "1")
    with tempfile.TemporaryDirectory() as data_dir:
        process, address = start_daemon(Path(data_dir))
        try:
            channel = grpc.insecure_channel(address)
            upload_problem(channel)
            yield process, training_pb2_grpc.TrainingStub(channel)
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help=f"at least {ISSUE_SEEDS}")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed .. first-seed + seeds - 1 (0: the reported ones)",
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per sweep (PBT: generations of 4)")
    parser.add_argument(
        "--searchers", default=",".join(SEARCHERS), help="comma-separated subset of " + ", ".join(SEARCHERS)
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--summarise", action="store_true", help="recompute the summary of the stored JSON")
    args = parser.parse_args()
    if args.summarise:
        stored = json.loads(args.out.read_text())
        problem = stored["problem"]
        stored["summary"] = summaries(
            stored["runs"], problem["seed_list"], problem["trials_per_sweep"], stored["noise"]
        )
        args.out.write_text(json.dumps(stored, indent=2) + "\n")
        print(json.dumps(stored["summary"], indent=2))
        return
    searchers = args.searchers.split(",")
    if "random" not in searchers or not set(searchers) <= set(SEARCHERS):
        parser.error(f"--searchers: a subset of {', '.join(SEARCHERS)} that includes random (the targets)")
    if args.seeds < ISSUE_SEEDS:
        parser.error(f"--seeds: at least {ISSUE_SEEDS} (the goals are judged on the first {ISSUE_SEEDS})")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    started = time.monotonic()
    with problem_daemon() as (process, training):
        for seed in seeds:
            for searcher in (s for s in SEARCHERS if s in searchers):
                run = run_sweep(training, process.pid, searcher, args.trials, seed)
                runs.append(run)
                print(
                    f"seed {seed} {searcher:6s} best {run['best']:.4f} epochs {run['epochs']:3d} "
                    f"({run['wall_s']} s, {run['cpu_s']} s CPU)",
                    flush=True,
                )
        noise = measure_noise(training, [r for r in runs if r["searcher"] == "random"])
    summary = summaries(runs, seeds, args.trials, noise)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "problem": {
                    "model": (
                        f"mlp 8-{HIDDEN}-1: hidden layer from {BACKBONE} (trained 1 epoch), frozen; "
                        "a fresh head trains; adam, cosine schedule to 0"
                    ),
                    "samples": SAMPLES,
                    "batch_size": BATCH,
                    "epochs_per_trial": EPOCHS,
                    "targets": (
                        "10 * a standardised random linear function of the backbone's hidden "
                        "features + N(0, 1) noise"
                    ),
                    "parameters": "lr log[1e-4,1], weight_decay log[1e-6,0.1], beta1 [0.5,0.99]",
                    "trials_per_sweep": args.trials,
                    "seeds": len(seeds),
                    "seed_list": seeds,
                },
                "settings": settings(args.trials),
                "targets": TARGETS,
                "summary": summary,
                "noise": noise,
                "runs": runs,
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "wall_s": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(json.dumps(summary, indent=2))


def finite_or_none(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def summaries(
    runs: list[dict[str, Any]], seeds: list[int], trials: int, noise: list[dict[str, Any]]
) -> dict[str, Any]:
    """The goals' figures on the first ISSUE_SEEDS seeds (the issue's count: the goals are judged
    on these) and on all of them, and how far the first reading moves with the choice of seeds."""
    first = seeds[:ISSUE_SEEDS]
    out: dict[str, Any] = {
        "judged_on": f"seeds {first[0]}-{first[-1]} (the issue's {ISSUE_SEEDS}), pooled target",
        f"seeds_{first[0]}_{first[-1]}": summarise(
            runs, first, trials, [n for n in noise if n["from_seed"] in first]
        ),
    }
    if len(seeds) > ISSUE_SEEDS:
        out[f"seeds_{seeds[0]}_{seeds[-1]}"] = summarise(runs, seeds, trials, noise)
        out["subsets"] = subset_spread(runs, seeds, trials)
    return out


def subset_spread(runs: list[dict[str, Any]], seeds: list[int], trials: int) -> dict[str, Any]:
    """The pooled goal figures of every choice of ISSUE_SEEDS of `seeds`, each with its own
    target (the median of random's best over those seeds): the range a 5-seed reading can fall in."""
    by = {(r["searcher"], r["seed"]): r for r in runs}
    figures: dict[str, list[float]] = {"tpe": [], "asha": []}
    for chosen in itertools.combinations(seeds, ISSUE_SEEDS):
        target = statistics.median(by["random", seed]["best"] for seed in chosen)
        if all(("tpe", seed) in by for seed in seeds):
            figures["tpe"].append(
                statistics.median(
                    trials_to_reach(by["tpe", seed]["best_so_far"], target) or math.inf for seed in chosen
                )
            )
        if all(("asha", seed) in by for seed in seeds):
            figures["asha"].append(
                statistics.median(
                    epoch_fraction(by["asha", seed], target, by["random", seed]["epochs"]) for seed in chosen
                )
            )
    goals = {"tpe": trials / 2, "asha": ASHA_GOAL}
    out: dict[str, Any] = {"subsets": math.comb(len(seeds), ISSUE_SEEDS)}
    for searcher, values in figures.items():
        if values:
            quartiles = statistics.quantiles(values, n=4, method="inclusive")
            out[searcher] = {
                "median_of_subset_medians": finite_or_none(statistics.median(values)),
                "quartiles": [finite_or_none(q) for q in quartiles],
                "min": finite_or_none(min(values)),
                "max": finite_or_none(max(values)),
                "share_meeting_goal": round(sum(v <= goals[searcher] for v in values) / len(values), 3),
            }
    return out


def summarise(
    runs: list[dict[str, Any]], seeds: list[int], trials: int, noise: list[dict[str, Any]]
) -> dict[str, Any]:
    """The goals' figures against both readings of "random's best-of-N" (see TARGETS)."""
    by = {(r["searcher"], r["seed"]): r for r in runs}
    searchers = [s for s in SEARCHERS if all((s, seed) in by for seed in seeds)]
    random_best = {seed: by["random", seed]["best"] for seed in seeds}
    pooled = statistics.median(random_best.values())
    targets = {"pooled": dict.fromkeys(seeds, pooled), "paired": random_best}

    def per(searcher: str, key: str) -> list[Any]:
        return [by[searcher, seed][key] for seed in seeds]

    summary: dict[str, Any] = {
        "best_val_loss_median": {s: statistics.median(per(s, "best")) for s in searchers},
        "epochs_median": {s: statistics.median(per(s, "epochs")) for s in searchers},
        "wall_s_per_trial_median": {s: statistics.median(per(s, "wall_s_per_trial")) for s in searchers},
        "cpu_s_per_trial_median": {s: statistics.median(per(s, "cpu_s_per_trial")) for s in searchers},
        "random_best_by_seed": [round(random_best[seed], 5) for seed in seeds],
        "random_best_median": round(pooled, 5),
    }
    if "tpe" in searchers:
        summary["per_trial_reach"] = per_trial_reach(by, seeds, trials, pooled)
    summary["from_all_random_draws"] = from_all_random_draws(by, seeds, trials, searchers)
    if noise:
        stdevs = [n["relative_stdev"] for n in noise]
        changes = [abs(c) for n in noise for c in n["neighbours_relative_change"].values()]
        summary["noise"] = {
            "relative_stdev_by_config": [round(x, 4) for x in stdevs],
            "relative_stdev_median": round(statistics.median(stdevs), 4),
            "neighbour_abs_relative_change_median": round(statistics.median(changes), 4),
            "same_seed_repeats_equal": all(n["repeat_equal"] for n in noise),
            "tolerance": TOLERANCE,
        }
    for name, target in targets.items():
        figures: dict[str, Any] = {
            "random_trials_to_target": [
                trials_to_reach(by["random", seed]["best_so_far"], target[seed]) for seed in seeds
            ]
        }
        if "tpe" in searchers:
            tpe = [
                trials_to_reach(by["tpe", seed]["best_so_far"], target[seed]) or math.inf for seed in seeds
            ]
            figures["tpe_trials_to_target"] = [finite_or_none(v, 0) for v in tpe]
            figures["tpe_trials_to_target_median"] = finite_or_none(statistics.median(tpe), 1)
            figures["tpe_goal_met"] = statistics.median(tpe) <= trials / 2
        for searcher in ("asha", "pbt"):
            if searcher in searchers:
                # Random's best-of-N costs all N trials' epochs: only after them is it known to be the best.
                fraction = [
                    epoch_fraction(by[searcher, seed], target[seed], by["random", seed]["epochs"])
                    for seed in seeds
                ]
                figures[f"{searcher}_epochs_to_target_fraction"] = [finite_or_none(v) for v in fraction]
                figures[f"{searcher}_epochs_to_target_fraction_median"] = finite_or_none(
                    statistics.median(fraction)
                )
        if "asha" in searchers:
            figures["asha_goal_met"] = figures["asha_epochs_to_target_fraction_median"] is not None and (
                figures["asha_epochs_to_target_fraction_median"] <= ASHA_GOAL
            )
        summary[name] = figures
    summary["goals"] = {
        "judged_on": "pooled",
        "tpe_trials_goal": trials / 2,
        "asha_epochs_fraction_goal": ASHA_GOAL,
        "tpe_met": summary["pooled"].get("tpe_goal_met"),
        "asha_met": summary["pooled"].get("asha_goal_met"),
    }
    return summary


def per_trial_reach(
    by: dict[tuple[str, int], dict[str, Any]], seeds: list[int], trials: int, target: float
) -> dict[str, Any]:
    """How often one trial lands within TOLERANCE of the pooled target: random's trials, and TPE's
    modelled ones (after its random startup) in the first and the second half of the sweep. If
    trials landed independently at these rates, TPE would reach the target within half the trials
    for half the seeds when its modelled trials in the first half land at least at
    "tpe_modelled_needed" ((1 - random)^startup * (1 - needed)^(N/2 - startup) = 1/2, or 0)."""
    startup, half = tpe_options(trials)["n_startup_trials"], trials // 2

    def share(rows: list[dict[str, Any]]) -> float:
        values: list[float] = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        return sum(v <= target * (1 + TOLERANCE) for v in values) / len(values)

    random = share([row for seed in seeds for row in by["random", seed]["trials"]])
    return {
        "random": round(random, 4),
        "tpe_modelled_first_half": round(
            share([row for seed in seeds for row in by["tpe", seed]["trials"][startup:half]]), 4
        ),
        "tpe_modelled_second_half": round(
            share([row for seed in seeds for row in by["tpe", seed]["trials"][half:]]), 4
        ),
        # 0 when the random startup alone reaches the target within half the trials for half the seeds.
        "tpe_modelled_needed": round(
            max(0.0, 1 - (0.5 / (1 - random) ** startup) ** (1 / (half - startup))), 4
        ),
    }


def epoch_fraction(run: dict[str, Any], target: float, epochs: int, tolerance: float = TOLERANCE) -> float:
    """Epochs `run` spent until it reached `target`, as a fraction of `epochs` (inf: never)."""
    used = epochs_to_reach(run, target, tolerance)
    return used / epochs if used is not None else math.inf


def median_best_of(values: list[float], n: int) -> float:
    """The median of the best of `n` draws from `values` (with replacement): the first value
    in order whose chance of being at least matched by one of n draws reaches one half."""
    ordered = sorted(values)
    return next(v for rank, v in enumerate(ordered, 1) if 1 - (1 - rank / len(ordered)) ** n >= 0.5)


def from_all_random_draws(
    by: dict[tuple[str, int], dict[str, Any]], seeds: list[int], trials: int, searchers: list[str]
) -> dict[str, Any]:
    """The goals against random's best-of-N read from all of random's trials over the seeds.

    Random's trials are independent draws of one distribution whatever their seed, so the
    median best of N of them is an order statistic of seeds * N draws, not of one sweep's
    luck; the pooled target is the median of only 5 such extremes. Every noisy value is a draw
    on both sides, so a trial reaches the target without a tolerance. TPE is also read from
    its median best-so-far over the seeds (the trial where that curve first reaches it)."""
    draws = [
        row["val_loss"] if row["val_loss"] is not None else math.inf
        for seed in seeds
        for row in by["random", seed]["trials"]
    ]
    target = median_best_of(draws, trials)
    out: dict[str, Any] = {
        "random_draws": len(draws),
        "random_median_best_of_n": round(target, 5),
        "random_median_best_of_half": round(median_best_of(draws, trials // 2), 5),
    }
    goals: dict[str, Any] = {}
    if "tpe" in searchers:
        curves = [by["tpe", seed]["best_so_far"] for seed in seeds]
        reach = [trials_to_reach(curve, target, 0.0) or math.inf for curve in curves]
        median_curve = [statistics.median(curve[i] for curve in curves) for i in range(trials)]
        out["tpe_trials_to_target"] = [finite_or_none(v, 0) for v in reach]
        out["tpe_trials_to_target_median"] = finite_or_none(statistics.median(reach), 1)
        out["tpe_median_best_so_far_reaches_at"] = trials_to_reach(median_curve, target, 0.0)
        goals["tpe_met"] = statistics.median(reach) <= trials / 2
    for searcher in ("asha", "pbt"):
        if searcher in searchers:
            fraction = [
                epoch_fraction(by[searcher, seed], target, by["random", seed]["epochs"], 0.0)
                for seed in seeds
            ]
            out[f"{searcher}_epochs_to_target_fraction"] = [finite_or_none(v) for v in fraction]
            out[f"{searcher}_epochs_to_target_fraction_median"] = finite_or_none(statistics.median(fraction))
    if "asha" in searchers:
        goals["asha_met"] = (
            statistics.median(
                epoch_fraction(by["asha", seed], target, by["random", seed]["epochs"], 0.0) for seed in seeds
            )
            <= ASHA_GOAL
        )
    out["goals"] = goals
    return out


if __name__ == "__main__":
    main()
