"""Hyperparameter sweeps: many jobs from one base spec (grid, random, ASHA).

A sweep is planned at submit (every trial's spec is checked then, like any job's), and its
trials are submitted as jobs, at most `max_concurrent` at a time, as earlier ones end. ASHA
(asynchronous successive halving) watches each trial's epoch metric: at rung epochs
min_epochs * rf^k a trial continues only while it is in the best 1/rf of the trials that
reached that rung so far; otherwise it is cancelled and marked pruned. Rung results are
stored as they arrive, keyed by trial, so they survive a restart of the daemon and a trial's
resumed attempt that reports a rung again counts once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound
from tesserad.ids import new_id
from tesserad.paging import make_token, page_size, resume_after
from tesserad.store import Store, decode_record, encode_record, pack, unpack
from tesserad.training.jobs import ENDED, Jobs
from tesserad.training.spec import epoch_metric_names
from tesserad.training.tracking import default_mode

log = logging.getLogger(__name__)

TABLES = ["sweeps"]
MAX_TRIALS = 1000


@dataclass(frozen=True)
class SweepParameter:
    path: str
    values: list[str] | None = None  # explicit values (as text)
    low: float = 0.0
    high: float = 0.0
    log_scale: bool = False
    integer: bool = False


def plan_trials(
    strategy: str, parameters: list[SweepParameter], max_trials: int, seed: int
) -> list[dict[str, str]]:
    """Each trial's values by parameter path (as text, parsed to the field's type by the caller)."""
    if not parameters:
        raise InvalidArgument("parameters: a sweep varies at least one field")
    paths = [p.path for p in parameters]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("parameters: a path is listed twice")
    if max_trials < 0:
        raise InvalidArgument(f"max_trials must be >= 0, got {max_trials}")
    for i, p in enumerate(parameters):
        if p.values is not None and not p.values:
            raise InvalidArgument(f"parameters[{i}].values: list at least one value")
        if p.values is None:
            if not (math.isfinite(p.low) and math.isfinite(p.high)) or p.low > p.high:
                raise InvalidArgument(f"parameters[{i}].range: need min <= max, got {p.low} and {p.high}")
            if p.log_scale and p.low <= 0:
                raise InvalidArgument(f"parameters[{i}].range: a log-scale range needs min > 0")
    if strategy == "grid":
        for i, p in enumerate(parameters):
            if p.values is None:
                raise InvalidArgument(
                    f"parameters[{i}]: a grid sweep needs explicit values for {p.path}, not a range"
                )
        grid = [
            dict(zip(paths, combo, strict=True))
            for combo in itertools.product(*(p.values for p in parameters))
        ]
        trials = grid[: max_trials or None]
    else:
        if max_trials == 0:
            raise InvalidArgument(f"max_trials: a {strategy} sweep needs the number of trials (> 0)")
        rng = random.Random(seed)
        trials = [{p.path: _draw(p, rng) for p in parameters} for _ in range(max_trials)]
    if len(trials) > MAX_TRIALS:
        raise InvalidArgument(f"the sweep would run {len(trials)} trials; at most {MAX_TRIALS}")
    return trials


def asha_prunes(
    rungs: dict[str, Any],
    job_id: str,
    metric: float,
    epoch: int,
    min_epochs: int,
    reduction_factor: int,
    mode: str,
) -> bool:
    """Record trial `job_id`'s `metric` if `epoch` is a rung (min_epochs * rf^k) and say
    whether the trial trails there: outside the best 1/rf of the trials that reached it.

    `rungs` maps a rung to {job id: metric}, so a trial resumed after a crash that reports a
    rung again counts once. The first trials at a rung have nothing to trail; they continue.
    """
    rung_epochs, rung = min_epochs, 0
    while rung_epochs < epoch:
        rung_epochs *= reduction_factor
        rung += 1
    if rung_epochs != epoch:
        return False
    results = rungs.setdefault(str(rung), {})
    if isinstance(results, list):  # sweeps recorded before results were keyed by trial
        results = rungs[str(rung)] = {f"#{i}": value for i, value in enumerate(results)}
    results[job_id] = metric
    ranked = sorted(results.values(), reverse=mode == "max")
    keep = max(1, len(ranked) // reduction_factor)
    return len(ranked) >= reduction_factor and ranked.index(metric) >= keep


def _draw(p: SweepParameter, rng: random.Random) -> str:
    if p.values is not None:
        return rng.choice(p.values)
    if p.log_scale:
        value = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
    else:
        value = rng.uniform(p.low, p.high)
    return str(round(value)) if p.integer else repr(value)


class Sweeps:
    def __init__(self, store: Store, jobs: Jobs) -> None:
        self._store = store
        self._jobs = jobs
        self._lock = threading.RLock()
        self._running: dict[str, dict[str, Any]] = {}
        jobs.add_listener(self._on_job)

    def start(self) -> None:
        with self._store.read() as txn:
            records = [decode_record(raw, "sweep", 1)[1] for _, raw in txn.scan("sweeps")]
        for sweep in records:
            if sweep["state"] == "running":
                self._running[sweep["sweep_id"]] = sweep
                self._tick(sweep)

    def submit(
        self,
        sweep: dict[str, Any],
        trials: list[tuple[dict[str, str], dict[str, Any], dict[str, Any]]],
        actor: str,
    ) -> dict[str, Any]:
        """`sweep` holds strategy, metric, mode, max_concurrent, asha and the spec document;
        each trial is (params, raw spec, spec document). Every trial is checked now."""
        if not trials:
            raise InvalidArgument("the sweep plans no trials")
        metric = sweep["metric"]
        for i, (_, raw, _) in enumerate(trials):
            config = self._jobs.check(raw)
            reported = epoch_metric_names(config["task"], bool(config["data"]["val_split"]))
            if metric not in reported:
                raise FailedPrecondition(
                    f"spec.metric: trial {i} reports {', '.join(reported)} each epoch, not {metric!r}"
                )
        max_concurrent = sweep["max_concurrent"] or 1
        if max_concurrent < 0:
            raise InvalidArgument(f"spec.max_concurrent must be >= 0 (0 for 1), got {max_concurrent}")
        record = {
            **sweep,
            "sweep_id": new_id("sweep"),
            "state": "running",
            "mode": sweep["mode"] or default_mode(metric),
            "max_concurrent": max_concurrent,
            "created_at": time.time(),
            "created_by": actor,
            "best_job_id": "",
            "rungs": {},
            "trials": [
                {
                    "params": params,
                    "raw": raw,
                    "document": document,
                    "job_id": "",
                    "state": "pending",
                    "metric": 0.0,
                    "has_metric": False,
                    "pruned": False,
                }
                for params, raw, document in trials
            ],
        }
        with self._lock:
            self._running[record["sweep_id"]] = record
            self._tick(record)
        return self.get(record["sweep_id"])

    def get(self, sweep_id: str) -> dict[str, Any]:
        with self._lock:
            if sweep_id in self._running:
                return _public(self._running[sweep_id])
        with self._store.read() as txn:
            raw = txn.get("sweeps", (sweep_id,))
        if raw is None:
            raise NotFound(f"sweep {sweep_id!r} does not exist")
        return _public(decode_record(raw, "sweep", 1)[1])

    def list(self, size: int, token: str) -> tuple[list[dict[str, Any]], str]:
        limit = page_size(size)
        after = resume_after(token, {"list": "sweeps"})
        with self._store.read() as txn:
            keys = [
                k
                for k, _ in txn.scan(
                    "sweeps", after=unpack(after) if after else None, reverse=True, limit=limit + 1
                )
            ]
        sweeps = [self.get(str(k[0])) for k in keys[:limit]]
        return sweeps, make_token(pack(keys[limit - 1]), {"list": "sweeps"}) if len(keys) > limit else ""

    def cancel(self, sweep_id: str) -> dict[str, Any]:
        with self._lock:
            sweep = self._running.get(sweep_id)
            if sweep is None:
                state = self.get(sweep_id)["state"]
                raise FailedPrecondition(f"sweep {sweep_id} has already ended ({state.upper()})")
            sweep["state"] = "cancelled"
            for trial in sweep["trials"]:
                if trial["state"] == "pending":
                    trial["state"] = "cancelled"
            running = [t["job_id"] for t in sweep["trials"] if t["job_id"] and t["state"] not in ENDED]
        for job_id in running:
            with contextlib.suppress(FailedPrecondition):  # it may have ended meanwhile
                self._jobs.cancel(job_id)
        with self._lock:
            self._tick(sweep)
        return self.get(sweep_id)

    # -- driving the trials

    def _on_job(self, job: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        sweep_id = job["sweep_id"]
        if not sweep_id:
            return
        with self._lock:
            sweep = self._running.get(sweep_id)
            if sweep is None:
                return
            trial = next((t for t in sweep["trials"] if t["job_id"] == job["job_id"]), None)
            if trial is None:
                return
            if kind == "epoch" and sweep["metric"] in data["metrics"]:
                trial["metric"], trial["has_metric"] = float(data["metrics"][sweep["metric"]]), True
                if sweep["strategy"] == "asha":
                    asha = sweep["asha"]
                    if asha_prunes(
                        sweep["rungs"],
                        job["job_id"],
                        trial["metric"],
                        data["epoch"],
                        asha["min_epochs"],
                        asha["reduction_factor"],
                        sweep["mode"],
                    ):
                        trial["pruned"] = True
                        threading.Thread(target=self._prune, args=(job["job_id"],), daemon=True).start()
                    # Rung results decide later trials' fate and must survive a restart; the
                    # trial's latest metric is written with them (one write per epoch).
                    self._save(sweep)
            elif kind == "ended":
                trial["state"] = job["state"]
                self._tick(sweep)

    def _prune(self, job_id: str) -> None:
        with contextlib.suppress(FailedPrecondition):  # it may have ended meanwhile
            self._jobs.cancel(job_id)

    def _tick(self, sweep: dict[str, Any]) -> None:
        """Bring trial states up to date, submit pending trials up to max_concurrent, end when done."""
        for trial in sweep["trials"]:
            if trial["job_id"] and trial["state"] not in ENDED:
                trial["state"] = self._jobs.get(trial["job_id"])["state"]
        if sweep["state"] == "running":
            active = sum(1 for t in sweep["trials"] if t["job_id"] and t["state"] not in ENDED)
            for trial in sweep["trials"]:
                if active >= sweep["max_concurrent"]:
                    break
                if trial["state"] == "pending":
                    job = self._jobs.submit(
                        trial["raw"], trial["document"], sweep["created_by"], sweep_id=sweep["sweep_id"]
                    )
                    trial["job_id"], trial["state"] = job["job_id"], job["state"]
                    active += 1
        if all(t["state"] in ENDED for t in sweep["trials"]):
            if sweep["state"] == "running":
                succeeded = any(t["state"] == "succeeded" or t["pruned"] for t in sweep["trials"])
                sweep["state"] = "succeeded" if succeeded else "failed"
            self._running.pop(sweep["sweep_id"], None)
        scored = [t for t in sweep["trials"] if t["has_metric"]]
        if scored:
            pick = min if sweep["mode"] == "min" else max
            sweep["best_job_id"] = pick(scored, key=lambda t: t["metric"])["job_id"]
        self._save(sweep)

    def _save(self, sweep: dict[str, Any]) -> None:
        with self._store.write() as txn:
            txn.put("sweeps", (sweep["sweep_id"],), encode_record("sweep", 1, sweep))


def _public(sweep: dict[str, Any]) -> dict[str, Any]:
    """The sweep without each trial's internal spec copies."""
    trials = [{k: v for k, v in t.items() if k not in ("raw", "document")} for t in sweep["trials"]]
    return {**sweep, "trials": trials}
