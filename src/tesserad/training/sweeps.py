"""Hyperparameter sweeps: many jobs from one base spec (grid, random, ASHA).

A sweep is planned at submit: every trial's values are drawn, set in a copy of the base spec
(its plain form, typed by training.spec.SPEC_FIELDS) and checked like any job's spec. Trials
are submitted as jobs, at most `max_concurrent` at a time, as earlier ones end. ASHA
(asynchronous successive halving) watches each trial's epoch metric: at rung epochs
min_epochs * rf^k a trial continues only while it is in the best 1/rf of the trials that
reached that rung so far; otherwise it is cancelled and marked pruned. Rung results are
stored as they arrive, keyed by trial, so they survive a restart of the daemon and a trial's
resumed attempt that reports a rung again counts once.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound
from tesserad.ids import new_id
from tesserad.paging import make_token, page_size, resume_after
from tesserad.store import Store, decode_record, encode_record, pack, unpack
from tesserad.training.job_records import JobRecord
from tesserad.training.jobs import ENDED, Jobs
from tesserad.training.spec import SPEC_FIELDS, Choice, SpecField, epoch_metric_names
from tesserad.training.tracking import default_mode

log = logging.getLogger(__name__)

TABLES = ["sweeps"]
MAX_TRIALS = 1000
KIND = "sweep"
SCHEMA = 1


@dataclass(frozen=True)
class SweepParameter:
    path: str
    values: list[str] | None = None  # explicit values (as text)
    low: float = 0.0
    high: float = 0.0
    log_scale: bool = False
    integer: bool = False


@dataclass(frozen=True)
class AshaSettings:
    min_epochs: int
    reduction_factor: int


@dataclass(frozen=True)
class SweepRequest:
    """A sweep as asked for; zero values take their defaults."""

    strategy: str  # grid, random or asha
    parameters: list[SweepParameter]
    max_trials: int
    max_concurrent: int
    metric: str
    mode: str  # min, max or "" for the metric's usual direction
    seed: int
    asha: AshaSettings
    document: dict[str, Any]  # the sweep spec as stored and returned (the API's form)


@dataclass
class Trial:
    params: dict[str, str]  # the values this trial sets, by path, as given
    raw: dict[str, Any]  # its job spec, plain form
    document: dict[str, Any]  # its job spec as stored and returned
    job_id: str = ""
    state: str = "pending"  # then its job's state
    metric: float = 0.0
    has_metric: bool = False
    pruned: bool = False


@dataclass
class Sweep:
    sweep_id: str
    strategy: str
    metric: str
    mode: str
    max_concurrent: int
    asha: AshaSettings
    document: dict[str, Any]
    state: str  # running, succeeded, failed, cancelled
    created_at: float
    created_by: str
    best_job_id: str
    rungs: dict[str, dict[str, float]]  # rung -> {job id: metric} (see asha_prunes)
    trials: list[Trial] = field(default_factory=list)


def plan_trials(
    strategy: str, parameters: list[SweepParameter], max_trials: int, seed: int
) -> list[dict[str, str]]:
    """Each trial's values by parameter path (as text, parsed to the field's type by trial_spec)."""
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
            for combo in itertools.product(*(p.values or () for p in parameters))
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


def asha_settings(asked: AshaSettings) -> AshaSettings:
    """ASHA's settings with their defaults (min_epochs 1, reduction_factor 3), checked."""
    asha = AshaSettings(asked.min_epochs or 1, asked.reduction_factor or 3)
    if asha.min_epochs < 1 or asha.reduction_factor < 2:
        raise InvalidArgument("spec.asha: min_epochs must be >= 1 and reduction_factor >= 2")
    return asha


def trial_spec(base: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The plain base spec with each path set to its value, parsed to the field's type."""
    spec = copy.deepcopy(base)
    spec.pop("run_name", None)  # each trial gets its own run
    for path, text in values.items():
        _set_path(spec, path, text)
    return spec


def _set_path(spec: dict[str, Any], path: str, text: str) -> None:
    where = f"spec.parameters: {path!r}"
    *parents, leaf = path.split(".")
    fields: Mapping[str, SpecField] = SPEC_FIELDS
    target = spec  # the dict that holds the fields of the message the path is in
    inline = ""  # the oneof whose member is stored flat in `target`, if any
    for part in parents:
        spec_field = fields.get(part)
        if spec_field is None or spec_field.kind != "message":
            raise InvalidArgument(f"{where} does not name a field of JobSpec (at {part!r})")
        oneof = spec_field.oneof
        if oneof:
            if oneof == inline:
                current = target.get(inline)
            else:
                current = next((n for n, f in fields.items() if f.oneof == oneof and n in target), None)
            if current not in (None, part):
                raise InvalidArgument(f"{where}: the base spec sets {oneof} to {current}, not {part}")
        if oneof and oneof == inline:
            target[inline] = part
        else:
            target = target.setdefault(part, {})
        fields, inline = spec_field.fields, spec_field.inline
    spec_field = fields.get(leaf)
    if spec_field is None or spec_field.kind != "value" or spec_field.value_type is None:
        raise InvalidArgument(f"{where} does not name a single value field of JobSpec (at {leaf!r})")
    value = _parse(spec_field.value_type, text)
    if value is None:
        raise InvalidArgument(f"{where}: {text!r} is not a valid value for this field")
    if spec_field.oneof:  # setting one member of a oneof (devices.gpu_count) unsets the others
        for name, sibling in fields.items():
            if sibling.oneof == spec_field.oneof and name != leaf:
                target.pop(name, None)
    target[leaf] = value


def _parse(value_type: type | Choice, text: str) -> Any:
    """`text` as a value of `value_type`; None if it is not one."""
    if isinstance(value_type, Choice):
        return value_type.parse(text)
    if value_type is str:
        return text
    if value_type is bool:
        return {"true": True, "false": False}.get(text.lower())
    try:
        number = float(text)
    except ValueError:
        return None
    if value_type is float:
        return number
    return int(number) if number.is_integer() else None


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
        self._running: dict[str, Sweep] = {}
        jobs.add_listener(self._on_job)

    def start(self) -> None:
        with self._store.read() as txn:
            records = [decode_sweep(raw) for _, raw in txn.scan("sweeps")]
        for sweep in records:
            if sweep.state == "running":
                self._running[sweep.sweep_id] = sweep
                self._tick(sweep)

    def submit(
        self,
        request: SweepRequest,
        base: dict[str, Any],
        actor: str,
        document_of: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Sweep:
        """Plan every trial of `request` over the plain spec `base`, check each like a job's spec,
        and start the first ones. `document_of` gives a trial spec's stored and returned form."""
        metric = request.metric
        if not metric:
            raise InvalidArgument(
                "spec.metric is required: the epoch metric that ranks trials, e.g. val_loss"
            )
        asha = asha_settings(request.asha)
        plans = plan_trials(request.strategy, request.parameters, request.max_trials, request.seed)
        trials = []
        for values in plans:
            raw = trial_spec(base, values)
            trials.append(Trial(values, raw, document_of(raw)))
        if not trials:
            raise InvalidArgument("the sweep plans no trials")
        for i, trial in enumerate(trials):
            config = self._jobs.check(trial.raw)
            reported = epoch_metric_names(config["task"], bool(config["data"]["val_split"]))
            if metric not in reported:
                raise FailedPrecondition(
                    f"spec.metric: trial {i} reports {', '.join(reported)} each epoch, not {metric!r}"
                )
        max_concurrent = request.max_concurrent or 1
        if max_concurrent < 0:
            raise InvalidArgument(f"spec.max_concurrent must be >= 0 (0 for 1), got {max_concurrent}")
        sweep = Sweep(
            sweep_id=new_id("sweep"),
            strategy=request.strategy,
            metric=metric,
            mode=request.mode or default_mode(metric),
            max_concurrent=max_concurrent,
            asha=asha,
            document=request.document,
            state="running",
            created_at=time.time(),
            created_by=actor,
            best_job_id="",
            rungs={},
            trials=trials,
        )
        with self._lock:
            self._running[sweep.sweep_id] = sweep
            self._tick(sweep)
        return self.get(sweep.sweep_id)

    def get(self, sweep_id: str) -> Sweep:
        """A copy of the sweep, safe to read while its trials go on."""
        with self._lock:
            if sweep_id in self._running:
                sweep = self._running[sweep_id]
                return replace(
                    sweep, trials=[replace(t) for t in sweep.trials], rungs=copy.deepcopy(sweep.rungs)
                )
        with self._store.read() as txn:
            raw = txn.get("sweeps", (sweep_id,))
        if raw is None:
            raise NotFound(f"sweep {sweep_id!r} does not exist")
        return decode_sweep(raw)

    def list(self, size: int, token: str) -> tuple[list[Sweep], str]:
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

    def cancel(self, sweep_id: str) -> Sweep:
        with self._lock:
            sweep = self._running.get(sweep_id)
            if sweep is None:
                state = self.get(sweep_id).state
                raise FailedPrecondition(f"sweep {sweep_id} has already ended ({state.upper()})")
            sweep.state = "cancelled"
            for trial in sweep.trials:
                if trial.state == "pending":
                    trial.state = "cancelled"
            running = [t.job_id for t in sweep.trials if t.job_id and t.state not in ENDED]
        for job_id in running:
            with contextlib.suppress(FailedPrecondition):  # it may have ended meanwhile
                self._jobs.cancel(job_id)
        with self._lock:
            self._tick(sweep)
        return self.get(sweep_id)

    # -- driving the trials

    def _on_job(self, job: JobRecord, kind: str, data: dict[str, Any]) -> None:
        if not job.sweep_id:
            return
        with self._lock:
            sweep = self._running.get(job.sweep_id)
            if sweep is None:
                return
            trial = next((t for t in sweep.trials if t.job_id == job.job_id), None)
            if trial is None:
                return
            if kind == "epoch" and sweep.metric in data["metrics"]:
                trial.metric, trial.has_metric = float(data["metrics"][sweep.metric]), True
                if sweep.strategy == "asha":
                    if asha_prunes(
                        sweep.rungs,
                        job.job_id,
                        trial.metric,
                        data["epoch"],
                        sweep.asha.min_epochs,
                        sweep.asha.reduction_factor,
                        sweep.mode,
                    ):
                        trial.pruned = True
                        threading.Thread(target=self._prune, args=(job.job_id,), daemon=True).start()
                    # Rung results decide later trials' fate and must survive a restart; the
                    # trial's latest metric is written with them (one write per epoch).
                    self._save(sweep)
            elif kind == "ended":
                trial.state = job.state
                self._tick(sweep)

    def _prune(self, job_id: str) -> None:
        with contextlib.suppress(FailedPrecondition):  # it may have ended meanwhile
            self._jobs.cancel(job_id)

    def _tick(self, sweep: Sweep) -> None:
        """Bring trial states up to date, submit pending trials up to max_concurrent, end when done."""
        for trial in sweep.trials:
            if trial.job_id and trial.state not in ENDED:
                trial.state = self._jobs.get(trial.job_id).state
        if sweep.state == "running":
            active = sum(1 for t in sweep.trials if t.job_id and t.state not in ENDED)
            for trial in sweep.trials:
                if active >= sweep.max_concurrent:
                    break
                if trial.state == "pending":
                    job = self._jobs.submit(
                        trial.raw, trial.document, sweep.created_by, sweep_id=sweep.sweep_id
                    )
                    trial.job_id, trial.state = job.job_id, job.state
                    active += 1
        if all(t.state in ENDED for t in sweep.trials):
            if sweep.state == "running":
                succeeded = any(t.state == "succeeded" or t.pruned for t in sweep.trials)
                sweep.state = "succeeded" if succeeded else "failed"
            self._running.pop(sweep.sweep_id, None)
        scored = [t for t in sweep.trials if t.has_metric]
        if scored:
            pick = min if sweep.mode == "min" else max
            sweep.best_job_id = pick(scored, key=lambda t: t.metric).job_id
        self._save(sweep)

    def _save(self, sweep: Sweep) -> None:
        with self._store.write() as txn:
            txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep))


def encode_sweep(sweep: Sweep) -> bytes:
    data = {
        "sweep_id": sweep.sweep_id,
        "strategy": sweep.strategy,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "max_concurrent": sweep.max_concurrent,
        "asha": {"min_epochs": sweep.asha.min_epochs, "reduction_factor": sweep.asha.reduction_factor},
        "document": sweep.document,
        "state": sweep.state,
        "created_at": sweep.created_at,
        "created_by": sweep.created_by,
        "best_job_id": sweep.best_job_id,
        "rungs": sweep.rungs,
        "trials": [
            {
                "params": t.params,
                "raw": t.raw,
                "document": t.document,
                "job_id": t.job_id,
                "state": t.state,
                "metric": t.metric,
                "has_metric": t.has_metric,
                "pruned": t.pruned,
            }
            for t in sweep.trials
        ],
    }
    return encode_record(KIND, SCHEMA, data)


def decode_sweep(raw: bytes) -> Sweep:
    _, data = decode_record(raw, KIND, SCHEMA)
    return Sweep(
        sweep_id=data["sweep_id"],
        strategy=data["strategy"],
        metric=data["metric"],
        mode=data["mode"],
        max_concurrent=data["max_concurrent"],
        asha=AshaSettings(data["asha"]["min_epochs"], data["asha"]["reduction_factor"]),
        document=data["document"],
        state=data["state"],
        created_at=data["created_at"],
        created_by=data["created_by"],
        best_job_id=data["best_job_id"],
        rungs=data["rungs"],
        trials=[Trial(**t) for t in data["trials"]],
    )
