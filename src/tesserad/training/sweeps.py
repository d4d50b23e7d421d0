"""Hyperparameter sweeps: many jobs from one base spec, chosen by a searcher, stopped early by a pruner.

Searchers: grid and random plan every trial at submit; TPE and CMA-ES (training.samplers) draw
each trial when a slot frees, from the results so far; PBT (training.pbt) runs generations of a
population, each trial starting from its own or a better trial's weights. Pruners: ASHA and
Hyperband (training.pruning) watch each trial's epoch metric and cancel trailing trials at
their rungs. Each trial's values are set in a copy of the base spec (its plain form, typed by
training.spec.SPEC_FIELDS) and checked like any job's spec; trials run as jobs, at most
`max_concurrent` at a time.

Everything is stored as it happens: the sweep's own state in its record ("sweeps"), each trial
in a row of its own ("sweep_trials", by sweep id and trial number), so that a trial's end
writes that trial, not every trial of the sweep. A trial is written with its values before its
job is submitted (and named after it, so a job whose id did not reach the record before a
crash is found again), a trial's rung results are in its row (the pruner's tables are rebuilt
from the rows, as searchers rebuild their state from the stored trials), so that an epoch at a
rung writes that trial alone too. A sweep so survives a restart of the daemon: each trial is counted once, and
the searcher continues where it was.
"""

from __future__ import annotations

import builtins
import copy
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tesserad.datasets.references import release_dataset_holds, release_ended_holds, sweep_holder
from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound, TesseraError, logged_internal
from tesserad.ids import new_id
from tesserad.names import near_choice
from tesserad.paging import PageFill, answer_bytes, resume_key
from tesserad.store import ReadTxn, Store, decode_record, encode_record
from tesserad.training.job_records import ENDED, JobRecord
from tesserad.training.jobs import Jobs
from tesserad.training.pbt import Member, PbtSettings, next_generation, pbt_settings
from tesserad.training.pruning import (
    asha_prunes,
    bracket_min_epochs,
    hyperband_bracket,
    hyperband_counts,
    rung_of,
)
from tesserad.training.samplers import PastTrial, suggest
from tesserad.training.search_space import (
    MAX_TRIALS,
    SplitSamples,
    SweepParameter,
    boundary_points,
    check_space,
    fewest_steps_points,
    highest_rate_points,
    plan_points,
    point_key,
    random_point,
)
from tesserad.training.spec import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRAIN_SPLIT,
    SPEC_FIELDS,
    Choice,
    SpecField,
    default_mode,
    epoch_metric_names,
)
from tesserad.training.submit_requests import SWEEP_REQUESTS, RequestKept, SubmitRequest, submit_request

log = logging.getLogger(__name__)

TABLES = ["sweeps", "sweep_trials", *SWEEP_REQUESTS.tables]
KIND = "sweep"
# 2: the trials in rows of their own ("sweep_trials"); 1 held them in the sweep's record.
# 3: the rung results in their trials' rows; the record keeps only those no trial holds.
SCHEMA = 3
TRIAL_KIND = "sweep_trial"
# 2: the trial's rung results (`rungs`).
TRIAL_SCHEMA = 2
PLANNED = ("grid", "random")  # searchers that draw every trial at submit
NO_PBT = PbtSettings(0, 0.0, 0.0, 0.0)
# Longer whole numbers go through float(): out of int64 either way, refused with the spec's fields.
_INT64_DIGITS = 19
# Trials in a row whose jobs could not be submitted before the sweep stops starting more: what
# fails so (a dataset gone, a model deleted) fails every trial alike, and drawing on would only
# fill the record with failures.
MAX_SUBMIT_FAILURES = 3
# The run tag of a pruned trial's run, its value the rung epoch: its job ends cancelled, as one a
# user cancelled does.
PRUNED_TAG = "tessera.pruned_at_epoch"
# The ends of a job that ended on its own before its prune's cancel reached it: its trial is
# counted as it ended, not pruned, as Optuna and Ray Tune count a trial that completed or errored.
OWN_ENDS = ("succeeded", "failed")


@dataclass(frozen=True)
class AshaSettings:
    min_epochs: int
    reduction_factor: int


@dataclass(frozen=True)
class SweepRequest:
    """A sweep as asked for; zero values take their defaults."""

    strategy: str  # grid, random, asha, tpe, cmaes, hyperband or pbt
    parameters: list[SweepParameter]
    max_trials: int
    max_concurrent: int
    metric: str
    mode: str  # min, max or "" for the metric's usual direction
    seed: int | None  # None: drawn at submit, and stored (a grid draws nothing: none is drawn)
    asha: AshaSettings
    document: dict[str, Any]  # the sweep spec as stored and returned (the API's form)
    pruner: str = ""  # "", asha or hyperband
    pbt: PbtSettings = NO_PBT


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
    number: int = 0  # its place in the sweep, from 0
    pruned_at: int = 0  # the rung epoch it was pruned at
    bracket: int = 0  # Hyperband's bracket
    generation: int = 0  # PBT's generation
    parent_job_id: str = ""  # PBT: the trial whose weights it starts from
    exploited: bool = False  # PBT: it copied a better trial's weights, not its own slot's
    start_checkpoint: str = ""  # PBT: the sha256 of the checkpoint it starts from
    sampler_attrs: dict[str, Any] = field(default_factory=dict)  # the model-based searcher's notes
    error: str = ""  # why its job could not be submitted
    # The pruner's results of this trial: rung -> its metric there (in its bracket's under Hyperband).
    rungs: dict[str, float] = field(default_factory=dict)

    @property
    def scored(self) -> bool:
        """Whether it has a metric that ranks: a NaN one (a trial that diverged) ranks below every
        other and is never the best, as Optuna fails a trial whose objective is NaN."""
        return self.has_metric and self.metric == self.metric

    def take_metric(self, value: float) -> None:
        """Take its latest metric; a pruned trial keeps the one its rung judged it on, the value it
        ranks by, though its job runs on until the cancel reaches it."""
        if not self.pruned:
            self.metric, self.has_metric = value, True


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
    # rung -> {job id: metric} (see asha_prunes); Hyperband: bracket -> that, per bracket. Built
    # from `unowned_rungs` and each trial's own (`Trial.rungs`), which are what is stored.
    rungs: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    pruner: str = ""
    base: dict[str, Any] = field(default_factory=dict)  # the plain base spec (searchers that draw later)
    parameters: list[SweepParameter] = field(default_factory=list)
    max_trials: int = 0
    seed: int | None = 0  # None: a grid sweep given none, as it draws nothing
    pbt: PbtSettings | None = None
    brackets: list[int] = field(default_factory=list)  # Hyperband: trials per bracket in a round
    error: str = ""  # why it failed: it stopped starting trials, or no trial succeeded
    # Results no trial holds: stored before results were keyed by trial ("#i"), in `rungs`' shape.
    unowned_rungs: dict[str, Any] = field(default_factory=dict)
    # False for a sweep stored while a 0 in the fields of ZERO_MEANT_DEFAULT meant their default:
    # its base and trials are read as today's specs (`_read_as_today`), each trial drawn from its
    # parameters, whose values stay as given, too.
    zero_is_a_value: bool = False

    @property
    def searcher(self) -> str:
        return searcher_and_pruner(self.strategy, "")[0]


@dataclass
class Ledger:
    """What is kept beside a running sweep so that a trial's event or end goes over its unfinished
    trials alone, not every trial: in memory only, built from the sweep as read (`ledger_of`)."""

    numbers: dict[str, int]  # its trials' job ids -> their numbers
    unfinished: dict[int, None]  # the numbers of its trials not ended (pending or running), in order
    best_ended: Trial | None = None  # its best trial (`best_trial`), one that ended


def ledger_of(sweep: Sweep) -> Ledger:
    """The ledger of `sweep` as submitted, or as read at a start."""
    ended = [t for t in sweep.trials if t.state in ENDED]
    return Ledger(
        numbers={t.job_id: t.number for t in sweep.trials if t.job_id},
        unfinished={t.number: None for t in sweep.trials if t.state not in ENDED},
        best_ended=best_trial(sweep.mode, ended),
    )


def best_trial(mode: str, trials: Iterable[Trial | None]) -> Trial | None:
    """The trial of the best metric among those of `trials` that succeeded unpruned (of equals,
    the first in the sweep), None when none did. As Optuna's best_trial takes COMPLETE trials
    only: a pruned trial's metric is its rung's, a failed or running one's an epoch's on the way,
    and none registered the version the best trial's alias is set on."""
    scored = [t for t in trials if t is not None and t.scored and t.state == "succeeded" and not t.pruned]
    if not scored:
        return None
    if mode == "min":
        return min(scored, key=lambda t: (t.metric, t.number))
    return max(scored, key=lambda t: (t.metric, -t.number))


def answered_bytes(sweep: Sweep) -> int:
    """What `sweep` takes in a GetSweep or ListSweeps answer at most, as paging.answer_bytes
    sizes every listing's items: its record less what no answer carries (each trial's job spec,
    the searcher's and the pruner's state), which its stored row holds."""
    trials = [replace(t, raw={}, document={}, sampler_attrs={}, rungs={}) for t in sweep.trials]
    return answer_bytes(
        replace(sweep, trials=trials, rungs={}, base={}, parameters=[], brackets=[], unowned_rungs={})
    )


def searcher_and_pruner(strategy: str, pruner: str) -> tuple[str, str]:
    """The searcher and the pruner a strategy and a pruner ask for; refuses the pairs that make no sense."""
    if strategy in ("asha", "hyperband"):  # random search, pruned
        if pruner:
            raise InvalidArgument(
                f"spec.pruner: strategy {strategy.upper()} already prunes with {strategy.upper()}; "
                f"for {pruner.upper()} pruning pick a searcher (GRID, RANDOM, TPE, CMA_ES) as the strategy"
            )
        return "random", strategy
    if strategy == "pbt" and pruner:
        raise InvalidArgument(
            f"spec.pruner: PBT cannot be combined with {pruner.upper()}: PBT replaces trailing trials "
            "with copies of better ones at each generation; pruning them would shrink its population"
        )
    return strategy, pruner


def check_searcher_space(searcher: str, parameters: list[SweepParameter]) -> None:
    check_space(parameters)
    for p in parameters:
        _check_path(p.path)
    for i, p in enumerate(parameters):
        # Checked by name: the extremes checked at submit are whole, the values drawn between are not
        # (a grid takes no ranges, and says so).
        if searcher != "grid" and p.values is None and not p.integer and _value_type(p.path) is int:
            raise InvalidArgument(
                f"spec.parameters[{i}].range: {p.path!r} takes whole numbers; set range.integer = true"
            )
    if searcher == "cmaes":
        for i, p in enumerate(parameters):
            if p.values is not None or p.when_path:
                kind = "categorical" if p.values is not None else "conditional"
                raise InvalidArgument(
                    f"spec.parameters[{i}]: CMA-ES searches numeric ranges only and {p.path!r} is {kind}; "
                    "use strategy TPE for categorical or conditional parameters"
                )


def _value_type(path: str) -> type | Choice | None:
    """The type of the JobSpec value field at `path`; None if the path names none."""
    *parents, leaf = path.split(".")
    fields: Mapping[str, SpecField] = SPEC_FIELDS
    for part in parents:
        spec_field = fields.get(part)
        if spec_field is None or spec_field.kind != "message":
            return None
        fields = spec_field.fields
    leaf_field = fields.get(leaf)
    return leaf_field.value_type if leaf_field is not None else None


def asha_settings(asked: AshaSettings) -> AshaSettings:
    """ASHA's settings with their defaults (min_epochs 1, reduction_factor 3), checked."""
    asha = AshaSettings(asked.min_epochs or 1, asked.reduction_factor or 3)
    if asha.min_epochs < 1 or asha.reduction_factor < 2:
        raise InvalidArgument("spec.asha: min_epochs must be >= 1 and reduction_factor >= 2")
    return asha


def past_trials(trials: list[Trial]) -> list[PastTrial]:
    """The trials as a model-based searcher sees them (ended without a result: failed)."""
    out = []
    for t in trials:
        if t.pruned:
            state = "pruned"
        elif t.state == "succeeded" and t.scored:
            state = "complete"
        elif t.state in ENDED:
            state = "failed"
        else:
            state = "running"
        value = t.metric if t.scored else None
        out.append(PastTrial(t.params, state, value, t.pruned_at, t.sampler_attrs))
    return out


def submit_failures_in_a_row(trials: list[Trial]) -> int:
    """How many of the latest trials started could not be submitted (trials not yet started skipped)."""
    count = 0
    for trial in reversed(trials):
        if trial.state == "pending" and not trial.job_id:
            continue
        if trial.job_id or not trial.error:
            break
        count += 1
    return count


def cancel_failures(sweep: Sweep, failures: list[tuple[str, TesseraError]]) -> TesseraError | None:
    """The error of a sweep cancel whose trials' jobs in `failures` (job id, why) could not be
    cancelled: of the first failure's kind, saying what goes on now, then each trial on a line of
    its own, as a spec's problems are: a client puts the fix that ends each line in its words
    (the CLI its commands), which one line joining them all kept to the last trial's."""
    if not failures:
        return None
    number = {t.job_id: t.number for t in sweep.trials}
    each = "".join(f"\n  trial {number[job_id]} (job {job_id}): {exc.message}" for job_id, exc in failures)
    runs_on, them = (
        ("runs on until it ends", "it") if len(failures) == 1 else ("run on until they end", "them")
    )
    return type(failures[0][1])(
        f"sweep {sweep.sweep_id} is cancelled and its other trials' jobs were cancelled, but "
        f"{len(failures)} could not be and {runs_on}; cancel {them} with CancelJob, or restart "
        f"tesserad, which cancels {them} at its start:{each}"
    )


def rung_table(pruner: str, rungs: dict[str, Any], bracket: int) -> dict[str, Any]:
    """The rung -> {job id: metric} table of `rungs` that judges a trial of `bracket`."""
    return rungs.setdefault(f"bracket {bracket}", {}) if pruner == "hyperband" else rungs


def built_rungs(pruner: str, unowned: dict[str, Any], trials: list[Trial]) -> dict[str, Any]:
    """The pruner's rung tables: the results no trial holds, and each trial's own."""
    rungs = copy.deepcopy(unowned)
    for trial in trials:
        if trial.rungs:
            table = rung_table(pruner, rungs, trial.bracket)
            for rung, metric in trial.rungs.items():
                table.setdefault(rung, {})[trial.job_id] = metric
    return rungs


def split_rungs(pruner: str, rungs: dict[str, Any], trials: list[Trial]) -> dict[str, Any]:
    """Give each of `trials` its results from the rung tables of a record that held them all
    (schema 2 and older); returned are those no trial holds, in the same shape. Results kept in
    lists (before they were keyed by trial) are keyed "#i", as asha_prunes keys them."""
    by_job = {t.job_id: t for t in trials if t.job_id}
    unowned: dict[str, Any] = {}
    for bracket, table in rungs.items() if pruner == "hyperband" else [("", rungs)]:
        for rung, results in table.items():
            if isinstance(results, list):
                results = {f"#{i}": value for i, value in enumerate(results)}
            for key, metric in results.items():
                trial = by_job.get(key)
                if trial is not None and bracket in ("", f"bracket {trial.bracket}"):
                    trial.rungs[rung] = metric
                else:
                    kept = unowned.setdefault(bracket, {}) if bracket else unowned
                    kept.setdefault(rung, {})[key] = metric
    return unowned


def ended_state(sweep: Sweep) -> tuple[str, str]:
    """The state and error of a sweep whose trials have all ended: succeeded when a trial
    succeeded unpruned with the metric (the trials best_trial ranks), cancelled when each was
    cancelled (not pruned), as a sweep cancelled whole is; otherwise failed, saying how its
    trials ended. None succeeding is no ASHA outcome alone (the first trial at a rung goes on):
    the trials that passed the rungs failed or were cancelled."""
    if sweep.error:
        return "failed", sweep.error
    succeeded = [t for t in sweep.trials if t.state == "succeeded" and not t.pruned]
    if any(t.has_metric for t in succeeded):
        return "succeeded", ""
    if succeeded:
        # No best to pick: the metric is likely misspelt for what the trials log.
        return "failed", (
            f"no trial reported metric {sweep.metric!r}: {len(succeeded)} succeeded without it; "
            "sweep again on a metric the trials' runs log"
        )
    if all(t.state == "cancelled" and not t.pruned for t in sweep.trials):
        return "cancelled", ""
    ends = Counter("pruned" if t.pruned else t.state for t in sweep.trials)
    counts = ", ".join(f"{ends[end]} {end}" for end in ("failed", "pruned", "cancelled") if ends[end])
    error = f"no trial succeeded: {counts}"
    if ends["failed"]:
        error += " (a failed trial's job error says why)"
    return "failed", error


def sweep_experiments(sweep: Sweep) -> set[str]:
    """The experiments the sweep's trials' runs go to: the base spec's, and each a parameter sets."""
    names = {str(sweep.base.get("experiment") or DEFAULT_EXPERIMENT)}
    for parameter in sweep.parameters:
        if parameter.path == "experiment":
            names.update(parameter.values or [])
    return names


def running_sweeps_into(txn: ReadTxn, experiment: str) -> builtins.list[str]:
    """The running sweeps whose trials' runs go to `experiment`, read in `txn`: a sweep's trial
    rows are not read, as its record holds its base and parameters."""
    return [
        str(key[0])
        for key, raw in txn.scan("sweeps")
        if (sweep := decode_sweep(raw, [])).state == "running" and experiment in sweep_experiments(sweep)
    ]


def sweep_models(txn: ReadTxn) -> Iterator[tuple[object, object]]:
    """The (model, version) every stored sweep's base spec starts from (`init_from` by number), as
    stored; checked when the sweep was submitted, unless a parameter sets it. Its trials' specs
    are not read: a submitted trial's job record names its version, and one that could not be
    submitted holds values a client chose, never checked (often a version that did not exist, why
    its submit failed)."""
    for key, raw in txn.scan("sweeps"):
        sweep = read_sweep(txn, str(key[0]), raw)
        if any(parameter.path.startswith("init_from") for parameter in sweep.parameters):
            continue
        parent = sweep.base.get("init_from") or {}
        if parent.get("model") and parent.get("version"):
            yield parent["model"], parent["version"]


def sweep_datasets(txn: ReadTxn) -> Iterator[tuple[object, object]]:
    """The (dataset, version) every stored sweep's base spec trains on by number, as stored;
    checked when the sweep was submitted, unless a parameter sets it. Its trials' specs are not
    read, as `sweep_models` reads none: a submitted trial's job record names its version."""
    for _key, raw in txn.scan("sweeps"):
        sweep = decode_sweep(raw, [])
        if any(parameter.path.startswith("data.dataset") for parameter in sweep.parameters):
            continue
        named = (sweep.base.get("data") or {}).get("dataset") or {}
        if named.get("name") and named.get("version"):
            yield named["name"], named["version"]


def trial_spec(base: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The plain base spec with each path set to its value, parsed to the field's type."""
    spec = copy.deepcopy(base)
    spec.pop("run_name", None)  # a sweep stored before base.run_name was refused may hold one
    for path, text in values.items():
        _set_path(spec, path, text)
    return spec


# The spec fields whose 0 meant their default before they were proto3 optional (a 0 set now is
# a value, refused where out of range).
ZERO_MEANT_DEFAULT = (
    "epochs",
    "max_steps",
    "batch_size",
    "log_every_n_steps",
    "backbone_lr_scale",
    "optimizer.lr",
    "optimizer.beta1",
    "optimizer.beta2",
    "optimizer.eps",
    "lr_schedule.step.gamma",
    "lr_schedule.one_cycle.max_lr",
    "lr_schedule.one_cycle.pct_start",
    "checkpoints.every_n_epochs",
    "checkpoints.keep_last",
    "devices.cpu_processes",
)
# A 0 in a plain spec, or in its stored form (where a whole number of 64 bits is text).
_ZERO = (0, "0")


def _read_as_today(spec: dict[str, Any], drawn: Iterable[str] = ()) -> None:
    """Drop from `spec` (plain or stored form), in place, what an older sweep stored in the sense
    it had then: a 0 in the fields of ZERO_MEANT_DEFAULT, which meant their default, and an
    early_stopping section of patience 0, which meant off (SubmitJob and SubmitSweep now refuse
    it), unless a parameter (by its path in `drawn`) sets a field of it: each trial's drawn value
    decides then. Its trials so train as they did, rather than each refused (or with beta1 0)."""
    for path in ZERO_MEANT_DEFAULT:
        *parents, leaf = path.split(".")
        section: Any = spec
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and section.get(leaf) in _ZERO:
            del section[leaf]
    stopping = spec.get("early_stopping")
    if (
        isinstance(stopping, dict)
        and stopping.get("patience", 0) in _ZERO
        and not any(path.startswith("early_stopping.") for path in drawn)
    ):
        del spec["early_stopping"]


def _check_path(path: str) -> None:
    """Refuse a path that names no single value field of JobSpec, as `_set_path` would: whatever
    its values, so before any trial is drawn (not as a draw's refusal, which names the seed)."""
    *parents, leaf = path.split(".")
    fields: Mapping[str, SpecField] = SPEC_FIELDS
    inline = ""
    for part in parents:
        spec_field = fields.get(part)
        if spec_field is None or spec_field.kind != "message":
            raise _no_field(path, part)
        fields, inline = spec_field.fields, spec_field.inline
    spec_field = fields.get(leaf)
    if not (inline and leaf == inline) and (
        spec_field is None or spec_field.kind != "value" or spec_field.value_type is None
    ):
        raise _no_value_field(path, leaf)


def _check_members(base: dict[str, Any], parameters: list[SweepParameter]) -> None:
    """Refuse a path (checked by `_check_path`) through a oneof member other than the one the
    base sets, as `_set_path` would for every draw, where no parameter draws the member
    (architecture.family): before any trial is drawn (not as a draw's refusal, which names the
    seed)."""
    drawn = {p.path for p in parameters}
    for parameter in parameters:
        *parents, _ = parameter.path.split(".")
        fields: Mapping[str, SpecField] = SPEC_FIELDS
        target: Any = base  # the dict that holds the fields of the message the path is in
        inline, prefix = "", ""
        for part in parents:
            spec_field = fields[part]
            oneof = spec_field.oneof
            current = None
            if oneof and oneof == inline:
                if f"{prefix}{inline}" not in drawn:
                    current = target.get(inline)
            elif oneof:
                current = next((n for n, f in fields.items() if f.oneof == oneof and n in target), None)
            if current not in (None, part):
                switch = f", or add a parameter for {prefix}{inline}" if oneof == inline else ""
                raise InvalidArgument(
                    f"spec.parameters: {parameter.path!r}: the base spec sets {oneof} to {current}, not "
                    f"{part}; set the base's {prefix.rstrip('.')} to {part}{switch}"
                )
            if not (oneof and oneof == inline):
                target = target.get(part) or {}
            prefix += f"{part}."
            fields, inline = spec_field.fields, spec_field.inline


def _no_field(path: str, part: str) -> InvalidArgument:
    return InvalidArgument(f"spec.parameters: {path!r} does not name a field of JobSpec (at {part!r})")


def _no_value_field(path: str, leaf: str) -> InvalidArgument:
    return InvalidArgument(
        f"spec.parameters: {path!r} does not name a single value field of JobSpec (at {leaf!r}){_full_paths(path)}"
    )


def _set_path(spec: dict[str, Any], path: str, text: str) -> None:
    where = f"spec.parameters: {path!r}"
    *parents, leaf = path.split(".")
    fields: Mapping[str, SpecField] = SPEC_FIELDS
    target = spec  # the dict that holds the fields of the message the path is in
    inline = ""  # the oneof whose member is stored flat in `target`, if any
    for part in parents:
        spec_field = fields.get(part)
        if spec_field is None or spec_field.kind != "message":
            raise _no_field(path, part)
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
    if inline and leaf == inline:  # e.g. architecture.family: another member of the flat oneof
        _switch_member(target, fields, inline, text, where)
        return
    spec_field = fields.get(leaf)
    if spec_field is None or spec_field.kind != "value" or spec_field.value_type is None:
        raise _no_value_field(path, leaf)
    value = _parse(spec_field.value_type, text)
    if value is None:
        raise InvalidArgument(
            f"{where}: {text!r} is not a valid value for this field; expected {_expected(spec_field.value_type)}"
            + (
                near_choice(text, spec_field.value_type.values)
                if isinstance(spec_field.value_type, Choice)
                else ""
            )
        )
    if spec_field.oneof:  # setting one member of a oneof (devices.gpu_count) unsets the others
        for name, sibling in fields.items():
            if sibling.oneof == spec_field.oneof and name != leaf:
                target.pop(name, None)
    target[leaf] = value


def _value_paths(fields: Mapping[str, SpecField], prefix: str = "") -> Iterator[str]:
    """The paths of every single value field under `fields`."""
    for name, spec_field in fields.items():
        if spec_field.kind == "message":
            yield from _value_paths(spec_field.fields, f"{prefix}{name}.")
        elif spec_field.kind == "value" and spec_field.value_type is not None:
            yield f"{prefix}{name}"


def _full_paths(path: str) -> str:
    """ "; did you mean 'optimizer.lr'?" for a path ("lr", "adam.lr") whose last part names value
    fields elsewhere in JobSpec; else ""."""
    leaf = path.rsplit(".", 1)[-1]
    meant = [full for full in _value_paths(SPEC_FIELDS) if full.rsplit(".", 1)[-1] == leaf and full != path]
    return f"; did you mean {' or '.join(repr(full) for full in meant)}?" if meant else ""


def _switch_member(
    target: dict[str, Any], fields: Mapping[str, SpecField], oneof: str, name: str, where: str
) -> None:
    """Make `name` the member of the flat `oneof` in `target`, dropping the old member's fields
    (the new member's take their defaults unless parameters set them)."""
    members = {n: f for n, f in fields.items() if f.oneof == oneof}
    if name not in members:
        raise InvalidArgument(
            f"{where}: {name!r} is not one of {', '.join(members)}{near_choice(name, tuple(members))}"
        )
    current = target.get(oneof)
    if current in members and current != name:
        for field_name in members[current].fields:
            target.pop(field_name, None)
    target[oneof] = name


def _expected(value_type: type | Choice) -> str:
    """What `_parse` takes for `value_type`, in a message's words."""
    if isinstance(value_type, Choice):
        return "one of " + ", ".join(value_type.values)
    return {bool: "true or false", int: "a whole number"}.get(value_type, "a number")


def _parse(value_type: type | Choice, text: str) -> Any:
    """`text` as a value of `value_type`; None if it is not one."""
    if isinstance(value_type, Choice):
        return value_type.parse(text)
    if value_type is str:
        return text
    if value_type is bool:
        return {"true": True, "false": False}.get(text.lower())
    # float() also reads other scripts' digits ("٣" as 3) and "1_0" as 10.
    if not text.isascii() or "_" in text:
        return None
    whole = text.strip().removeprefix("-").removeprefix("+")
    if value_type is int and whole.isdigit() and len(whole) <= _INT64_DIGITS:
        return int(text)  # exactly: through float, 2**53 + 1 became 2**53
    try:
        number = float(text)
    except ValueError:
        return None
    if value_type is float:
        return number
    return int(number) if number.is_integer() else None


class Sweeps:
    def __init__(
        self, store: Store, jobs: Jobs, document_of: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """`document_of` gives a trial spec's stored and returned form (the API's)."""
        self._store = store
        self._jobs = jobs
        self._document_of = document_of
        self._lock = threading.RLock()
        self._running: dict[str, Sweep] = {}
        # By running sweep: what finds its trials without going over them all.
        self._ledgers: dict[str, Ledger] = {}
        # Jobs a crash left out of their sweep's record (submitted, id not yet written), by run name.
        self._orphans: dict[str, JobRecord] = {}
        # Sweeps whose trials' jobs are being cancelled: their ends are recorded once, after the last.
        self._cancelling: set[str] = set()
        # By sweep: the numbers of its trials changed in memory since their rows were last written.
        self._unsaved: dict[str, set[int]] = {}
        jobs.add_listener(self._on_job)
        jobs.keep_trial_checkpoints_while(self._running_sweep)
        jobs.end_trials_holding(self._lock)

    def start(self) -> None:
        self._migrate_records_once()
        with self._store.read() as txn:
            records = [read_sweep(txn, str(key[0]), raw) for key, raw in txn.scan("sweeps")]
        # After jobs.start and before any trial is submitted: the holds of both kinds in one pass.
        running = {s.sweep_id for s in records if s.state == "running"}
        active = self._jobs.unended_ids()
        release_ended_holds(self._store, active, running)
        self._jobs.release_ended_checkpoints_once(running)
        # Asked of the jobs, not only the trials' rows: a trial's row takes its job's end even
        # when the store refused the job's own write of it (the job was then re-queued at this
        # start), and a job whose id never reached its trial's row is in none.
        active_of_sweep: dict[str, builtins.list[str]] = {}
        for job_id in active:
            job = self._jobs.get(job_id)
            if job.sweep_id:
                active_of_sweep.setdefault(job.sweep_id, []).append(job_id)
        with self._lock:
            for sweep in records:
                unended = active_of_sweep.get(sweep.sweep_id, [])
                unsettled = any(t.job_id and t.state not in ENDED for t in sweep.trials)
                if sweep.state in ("succeeded", "failed") and unended:
                    self._cancel_strays(sweep, unended)
                if sweep.state == "cancelled" and (unended or unsettled):
                    # The daemon stopped before the cancelled trials did: their jobs were re-queued.
                    self._run(sweep)
                    self._cancelling.add(sweep.sweep_id)
                    failed = self._cancel_trials(sweep, unended)
                    if failed:
                        log.error(
                            "a cancelled sweep's trials could not all be cancelled",
                            extra={"sweep_id": sweep.sweep_id, "error": failed.message},
                        )
                if sweep.state != "running":
                    continue
                known = {t.job_id for t in sweep.trials}
                for job in self._sweep_jobs(sweep.sweep_id):
                    if job.job_id not in known:
                        self._orphans[job.config["run_name"]] = job
                self._run(sweep)
                ended = {t.job_id for t in sweep.trials if t.job_id and t.state in ENDED}
                # Its orphans (named by no row) are left to be adopted by their trials.
                self._cancel_strays(sweep, [job_id for job_id in unended if job_id in ended])
                for trial in sweep.trials:  # pruned, but the cancel did not reach the job before the crash
                    if trial.pruned and trial.job_id and self._jobs.get(trial.job_id).state not in ENDED:
                        self._prune(trial.job_id, trial.pruned_at)
                self._tick(sweep)

    def _cancel_strays(self, sweep: Sweep, job_ids: builtins.list[str]) -> None:
        """Cancel the jobs re-queued at this start that are no trial of `sweep` to run: those of
        trials whose rows hold their ends, or of a sweep that ended. Their ends leave the trials'
        rows as they are (`_on_job`)."""
        failed = self._jobs.cancel_all(job_ids)
        if failed:
            log.error(
                "a sweep's stray trial jobs could not all be cancelled",
                extra={"sweep_id": sweep.sweep_id, "jobs": [job_id for job_id, _ in failed]},
            )

    def _migrate_records_once(self) -> None:
        """Move what older records hold of their trials to the trials' rows, each sweep in one
        write (a stop between two leaves every sweep readable): the trials themselves from a
        schema-1 record, the rung results from a schema-1 or 2 one."""
        with self._store.read() as txn:
            old = [key for key, raw in txn.scan("sweeps") if decode_record(raw, KIND, SCHEMA)[0] < SCHEMA]
        for key in old:
            # Reserved: a daemon must start on a full store, for its operator to make room.
            with self._store.write(reserved=True) as txn:
                raw = txn.get("sweeps", key)
                if raw is None or decode_record(raw, KIND, SCHEMA)[0] == SCHEMA:
                    continue
                sweep = read_sweep(txn, str(key[0]), raw)
                for trial in sweep.trials:
                    txn.put("sweep_trials", (sweep.sweep_id, trial.number), encode_trial(trial))
                txn.put("sweeps", key, encode_sweep(sweep))
        if old:
            log.info("sweeps' trials and rung results moved to the trials' rows", extra={"sweeps": len(old)})

    def _running_sweep(self, sweep_id: str) -> bool:
        """Whether the sweep still runs, so may yet copy its ended trials' checkpoints (PBT).
        Asked of the store too: a job may end at the daemon's start before `start` read the sweeps."""
        with self._lock:
            if sweep_id in self._running:
                return self._running[sweep_id].state == "running"
        with self._store.read() as txn:
            raw = txn.get("sweeps", (sweep_id,))
        return raw is not None and decode_sweep(raw, []).state == "running"

    def _sweep_jobs(self, sweep_id: str) -> builtins.list[JobRecord]:
        """Every job of the sweep: a page of jobs also ends at a size, before MAX_TRIALS."""
        jobs, token = self._jobs.list([], "", sweep_id, MAX_TRIALS, "")
        while token:
            page, token = self._jobs.list([], "", sweep_id, MAX_TRIALS, token)
            jobs += page
        return jobs

    def submit(self, request: SweepRequest, base: dict[str, Any], actor: str, request_id: str = "") -> Sweep:
        """Check the sweep over the plain spec `base`, each trial's spec like a job's (for searchers
        that draw later: every extreme of the space), and start the first trials. `request_id`
        (see submit_requests): a submit sent again with the id of one whose sweep exists answers
        that sweep, checked and started nothing."""
        submit = submit_request(actor, request_id, request.document)
        if earlier := SWEEP_REQUESTS.earlier(self._store, submit, time.time()):
            return self.get(earlier)
        metric = request.metric
        if not metric:
            raise InvalidArgument(
                "spec.metric is required: the epoch metric that ranks trials, e.g. val_loss"
            )
        if base.get("run_name"):
            # As Ray Tune and Optuna number a study's trials themselves: the name is the sweep's
            # to give (its id and the trial's number), unique in the experiment, and how a
            # restarted daemon finds the trial a job belongs to.
            raise InvalidArgument(
                "spec.base.run_name: a sweep names its trials' runs itself (SWEEP_ID-TRIAL_NUMBER); "
                "leave it unset, and group the trials' runs by spec.base.experiment or tags"
            )
        if base.get("resume_from"):
            # Each trial would take the source's newest kept checkpoint as it is submitted, and
            # nothing holds that checkpoint between one trial's submit and the next: a later
            # trial could find it released, or start from another.
            raise InvalidArgument(
                f"spec.base.resume_from: a sweep submits its trials over time, and would not hold job "
                f"{base['resume_from']}'s checkpoint for them all; resume that job once with SubmitJob "
                "and register_as, then set spec.base.init_from to the version it registers"
            )
        register_as = base.get("register_as") or {}
        if register_as.get("alias"):
            # Each trial registers its own version as it succeeds, and the alias would follow each
            # in turn: it would end on the trial that finished last, not the best. As Ray Tune,
            # Optuna and Determined leave picking the best to the user once the search is done.
            raise InvalidArgument(
                f"spec.base.register_as.alias: each trial registers a version of {register_as.get('model')!r} "
                f"as it succeeds, so {register_as['alias']!r} would move to each in turn and end on the "
                "trial that finished last, not the best; leave the alias unset, and once the sweep "
                "ended set it on the best trial's version (the sweep's best_job_id; its job's "
                "registered version) with SetAlias"
            )
        searcher, pruner = searcher_and_pruner(request.strategy, request.pruner)
        asha = asha_settings(request.asha)
        if not pruner and request.asha != AshaSettings(0, 0):
            raise InvalidArgument(
                f"spec.asha is set but the strategy {request.strategy.upper()} has no pruner: "
                "set pruner ASHA or HYPERBAND, or leave spec.asha unset"
            )
        check_searcher_space(searcher, request.parameters)
        _check_members(base, request.parameters)
        if searcher != "pbt" and request.pbt != NO_PBT:
            raise InvalidArgument(f"spec.pbt is set but the strategy is {request.strategy.upper()}, not PBT")
        pbt = pbt_settings(request.pbt, request.max_trials) if searcher == "pbt" else None
        # As Optuna and Ray Tune draw afresh unless seeded; stored, so a restart draws on from it
        # and the answer names it, for the sweep to be repeated. A grid draws nothing (Ray Tune's
        # grid_search): a seed drawn for it would claim to repeat what no seed changes.
        seed = request.seed
        if seed is None and searcher != "grid":
            seed = random.SystemRandom().randrange(2**31)
        if searcher in PLANNED:
            points = plan_points(
                searcher, request.parameters, request.max_trials, seed or 0, strategy=request.strategy
            )
            checked = points
        else:
            if not 0 < request.max_trials <= MAX_TRIALS:
                raise InvalidArgument(
                    f"spec.max_trials: a {request.strategy} sweep needs the number of trials (1 to {MAX_TRIALS}), "
                    f"got {request.max_trials}"
                )
            checked = list(boundary_points(request.parameters))
            seen = {point_key(point) for point in checked}
            data = base.get("data") or {}
            worst = (
                *fewest_steps_points(
                    request.parameters,
                    self._split_samples(base),
                    data.get("train_split") or DEFAULT_TRAIN_SPLIT,
                ),
                *highest_rate_points(request.parameters),
            )
            for point in worst:
                if point_key(point) not in seen:
                    seen.add(point_key(point))
                    checked.append(point)
            rng = random.Random(f"{seed}:pbt:0")
            points = [random_point(request.parameters, rng) for _ in range(pbt.population)] if pbt else []
        try:
            configs = [
                self._check_point(base, point, metric, i, searcher in PLANNED)
                for i, point in enumerate(checked)
            ]
            if not configs:
                raise InvalidArgument("the sweep plans no trials")
            epochs = [config["epochs"] for config in configs]
            if pruner == "asha" and 0 not in epochs and max(epochs) < asha.min_epochs:
                raise InvalidArgument(
                    f"spec.asha.min_epochs: no trial reaches ASHA's first rung (epoch {asha.min_epochs}); "
                    f"trials end by epoch {max(epochs)}, so none would be pruned: lower asha.min_epochs"
                )
            brackets = []
            if pruner == "hyperband":
                if len(set(epochs)) > 1:
                    raise InvalidArgument(
                        "spec.parameters: Hyperband needs trials of a fixed number of epochs; these run "
                        f"{' or '.join(str(e) for e in sorted(set(epochs)))}"
                    )
                max_epochs = epochs[0]
                if max_epochs < asha.min_epochs:
                    raise InvalidArgument(
                        f"spec.base.epochs: Hyperband needs trials of a fixed number of epochs, at least "
                        f"asha.min_epochs ({asha.min_epochs}); got {max_epochs}"
                    )
                brackets = hyperband_counts(max_epochs, asha.min_epochs, asha.reduction_factor)
        except InvalidArgument as refused:
            if request.seed is not None or searcher != "random":
                raise
            # Its trials were checked as drawn, and another draw may pass: the seed repeats this one.
            raise InvalidArgument(
                f"{refused.message} (seed {seed} was drawn: set seed = {seed} to repeat this draw)"
            ) from None
        max_concurrent = request.max_concurrent or (pbt.population if pbt else 1)
        if not 0 <= max_concurrent <= MAX_TRIALS:
            # No sweep runs more trials than MAX_TRIALS, so none can run more at once.
            raise InvalidArgument(
                f"spec.max_concurrent must be 0 (for 1) to {MAX_TRIALS}, a sweep's most trials; got {max_concurrent}"
            )
        sweep = Sweep(
            sweep_id=new_id("sweep"),
            strategy=request.strategy,
            metric=metric,
            mode=request.mode or default_mode(metric),
            max_concurrent=max_concurrent,
            asha=asha,
            document={**request.document, **({} if seed is None else {"seed": str(seed)})},
            state="running",
            created_at=time.time(),
            created_by=actor,
            best_job_id="",
            rungs={},
            pruner=pruner,
            base=base,
            parameters=request.parameters,
            max_trials=request.max_trials,
            seed=seed,
            pbt=pbt,
            brackets=brackets,
            zero_is_a_value=True,
        )
        for point in points:
            sweep.trials.append(self._new_trial(sweep, point))
        # The sweep holds each dataset version its trials use from here until it ends: between one
        # trial's end and the next one's submit, no job holds it.
        used = {(c["data"]["dataset"], c["data"]["version"]): c for c in configs}
        try:
            with self._lock:
                # Written before any trial's job is submitted: a restart then finds each job's trial.
                self._write(
                    sweep,
                    sweep.trials,
                    head=True,
                    hold=list(used.values()),
                    experiments=sweep_experiments(sweep),
                    submit=submit,
                )
                self._run(sweep)
                self._tick(sweep)
        except RequestKept as taken:
            return self.get(taken.created_id)
        return self.get(sweep.sweep_id)

    def _run(self, sweep: Sweep) -> None:
        """Count `sweep` among the running, its trials' events and ends taken in from now."""
        self._running[sweep.sweep_id] = sweep
        self._ledgers[sweep.sweep_id] = ledger_of(sweep)

    def _split_samples(self, base: dict[str, Any]) -> SplitSamples:
        """The splits' sample counts of the dataset version a point names, with the base's name or
        number where the point leaves it out."""
        dataset = (base.get("data") or {}).get("dataset") or {}

        def split_samples(point: dict[str, str]) -> dict[str, int] | None:
            try:
                name = point.get("data.dataset.name", dataset.get("name", ""))
                version = int(point.get("data.dataset.version", dataset.get("version", 0)))
                return self._jobs.split_samples(name, version)
            except (ValueError, TesseraError):
                return None  # the point's check says what is wrong

        return split_samples

    def _check_point(
        self, base: dict[str, Any], point: dict[str, str], metric: str, index: int, planned: bool
    ) -> dict[str, Any]:
        values = ", ".join(f"{k}={v}" for k, v in point.items())
        where = f"trial {index} ({values})" if planned else f"the trial with {values}"
        raw = trial_spec(base, point)
        try:
            config = self._jobs.check(raw)
            self._document_of(raw)  # a value the check takes may not fit the stored form's field
        except TesseraError as exc:
            raise type(exc)(f"{where}: {exc.message}") from None
        reported = epoch_metric_names(config["task"], bool(config["data"]["val_split"]))
        if metric not in reported:
            raise FailedPrecondition(
                f"spec.metric: {where} reports {', '.join(reported)} each epoch, not {metric!r}"
                + near_choice(metric, reported)
            )
        return config

    def get(self, sweep_id: str) -> Sweep:
        """A copy of the sweep, safe to read while its trials go on."""
        running = self._running_copy(sweep_id)
        if running is not None:
            return running
        with self._store.read() as txn:
            raw = txn.get("sweeps", (sweep_id,))
            if raw is None:
                raise NotFound(f"sweep {sweep_id!r} does not exist; ListSweeps lists them")
            return read_sweep(txn, sweep_id, raw)

    def _running_copy(self, sweep_id: str) -> Sweep | None:
        """A copy of the sweep if it runs, else None."""
        with self._lock:
            sweep = self._running.get(sweep_id)
            if sweep is None:
                return None
            # The record takes a trial's state from its job when the job ends; until then, ask the job.
            trials = [
                replace(t, state=self._jobs.get(t.job_id).state)
                if t.job_id and t.state not in ENDED
                else replace(t)
                for t in sweep.trials
            ]
            return replace(sweep, trials=trials, rungs=copy.deepcopy(sweep.rungs))

    def list(self, size: int, token: str) -> tuple[list[Sweep], str]:
        query = {"list": "sweeps"}
        after = resume_key(token, query)
        fill: PageFill[Sweep] = PageFill(size, query)
        # Copied before the scan: a running sweep's copy asks its trials' jobs, which may read the store.
        with self._lock:
            running_ids = list(self._running)
        running = {sweep_id: found for sweep_id in running_ids if (found := self._running_copy(sweep_id))}
        with self._store.read() as txn:
            for key, raw in txn.scan("sweeps", after=after, reverse=True):
                sweep = running.get(str(key[0])) or read_sweep(txn, str(key[0]), raw)
                if not fill.room(answered_bytes(sweep)):
                    break
                fill.add(key, sweep)
        return fill.page.items, fill.page.next_page_token

    def cancel(self, sweep_id: str) -> Sweep:
        with self._lock:
            sweep = self._running.get(sweep_id)
            # A cancelled sweep stays among the running until its trials' jobs have stopped (their
            # ends reach it after GetJob shows them): it is refused alike before and after.
            state = self.get(sweep_id).state if sweep is None else sweep.state
            if sweep is None or state != "running":
                raise FailedPrecondition(f"sweep {sweep_id} has already ended ({state})")
            trials = [replace(t, state="cancelled") if t.state == "pending" else t for t in sweep.trials]
            never_started = [t for t in trials if t.state == "cancelled" and not t.job_id]
            # Stored before any trial's job is cancelled: a daemon killed meanwhile finishes the
            # cancel at its start. Taken in memory once stored: a refused write leaves it running.
            self._write(
                replace(sweep, state="cancelled", trials=trials), never_started, head=True, reserved=True
            )
            sweep.state, sweep.trials = "cancelled", trials
            # In this lock hold: a trial ending before `_cancel_trials` must leave the sweep's end
            # to it, not end the sweep under it.
            self._cancelling.add(sweep_id)
            running = [t.job_id for t in sweep.trials if t.job_id and t.state not in ENDED]
        failed = self._cancel_trials(sweep, running)
        if failed:
            raise failed
        return self.get(sweep_id)

    def _cancel_trials(self, sweep: Sweep, job_ids: builtins.list[str]) -> TesseraError | None:
        """Cancel the jobs of the cancelled `sweep`'s trials: the queued ones' ends are stored in
        one commit (`Jobs.cancel_all`), and reach its record in one write after the last. A write
        each, of the whole record, made a cancel's time grow with the square of the trials. A job
        that cannot be cancelled does not stop the others' cancel: returned is the error that
        names each such trial, None when there is none. The caller has put the sweep in
        `_cancelling` in the lock hold that cancelled it."""
        try:
            failed = self._jobs.cancel_all(job_ids)
        finally:
            with self._lock:
                self._cancelling.discard(sweep.sweep_id)
                if sweep.sweep_id in self._running:
                    self._tick(sweep)
        failures = [
            (
                job_id,
                exc
                if isinstance(exc, TesseraError)
                else logged_internal(log, "a sweep trial's cancel", exc, sweep_id=sweep.sweep_id),
            )
            for job_id, exc in failed
        ]
        return cancel_failures(sweep, failures)

    # -- driving the trials

    def _on_job(self, job: JobRecord, kind: str, data: dict[str, Any]) -> None:
        if not job.sweep_id:
            return
        with self._lock:
            sweep = self._running.get(job.sweep_id)
            number = self._ledgers[job.sweep_id].numbers.get(job.job_id) if sweep is not None else None
            if sweep is None or number is None:
                return
            trial = sweep.trials[number]
            if trial.state in ENDED:
                # Its row holds its end: the job's later events (a stray re-queued at a start,
                # then cancelled) must not change the trial nor the sweep's best.
                return
            # A pruned trial's later epochs are no part of the search: neither its metric nor a rung's.
            if kind == "epoch" and sweep.metric in data["metrics"] and not trial.pruned:
                trial.take_metric(float(data["metrics"][sweep.metric]))
                self._changed(sweep, trial)
                if sweep.pruner:
                    rungs = rung_table(sweep.pruner, sweep.rungs, trial.bracket)
                    min_epochs = sweep.asha.min_epochs
                    if sweep.pruner == "hyperband":
                        min_epochs = bracket_min_epochs(
                            trial.bracket, min_epochs, sweep.asha.reduction_factor
                        )
                    prunes = asha_prunes(
                        rungs,
                        job.job_id,
                        trial.metric,
                        data["epoch"],
                        min_epochs,
                        sweep.asha.reduction_factor,
                        sweep.mode,
                        last_epoch=job.config["epochs"],
                    )
                    if prunes:
                        trial.pruned, trial.pruned_at = True, data["epoch"]
                    rung = rung_of(data["epoch"], min_epochs, sweep.asha.reduction_factor)
                    if rung is not None:
                        # A new dict: copies of the trial handed to readers share the old one.
                        trial.rungs = {**trial.rungs, str(rung): trial.metric}
                    # Rung results decide later trials' fate and must survive a restart: they are
                    # written in the trial's row, with its latest metric (one write per epoch, of
                    # that trial alone, however many trials reached a rung).
                    try:
                        self._save(sweep, head=False)
                    except TesseraError as exc:  # the store full: the operator's to fix, not a crash
                        log.warning(
                            "a sweep trial's epoch result could not be stored; its next write stores it",
                            extra={"sweep_id": sweep.sweep_id, "trial": trial.number, "error": exc.message},
                        )
                    finally:
                        if prunes:
                            # Started once its row says it was pruned: a crash before leaves no
                            # cancelled trial whose row does not say so. Where the store refused
                            # the row, started all the same: the trial is pruned in memory, its
                            # later epochs are passed over, and its end's write (from the store's
                            # reserve) stores its row.
                            threading.Thread(
                                target=self._prune, args=(job.job_id, trial.pruned_at), daemon=True
                            ).start()
            elif kind == "ended":
                self._settle(sweep, trial, job)
                if sweep.sweep_id not in self._cancelling:
                    self._tick(sweep)

    def _prune(self, job_id: str, epoch: int) -> None:
        # Tagged before the cancel: once the job shows cancelled, its run says it was pruned.
        # Under the lock `_settle` takes a trial's end under: a job that ended on its own first is
        # not tagged, and one that ends so after the tag has it removed there.
        with self._lock:
            if self._jobs.get(job_id).state in OWN_ENDS:
                return
            self._tag_pruned(job_id, {PRUNED_TAG: str(epoch)}, [])
        try:
            self._jobs.cancel(job_id)
        except FailedPrecondition:  # it ended meanwhile: on its own, it was not pruned
            with self._lock:
                if self._jobs.get(job_id).state in OWN_ENDS:
                    self._tag_pruned(job_id, {}, [PRUNED_TAG])

    def _tag_pruned(self, job_id: str, tags: dict[str, str], remove: builtins.list[str]) -> None:
        """Set or remove a trial's pruned tag on its run; a failure is logged, the search goes on."""
        try:
            self._jobs.tag_run(job_id, tags, remove)
        except TesseraError as exc:  # its run deleted meanwhile, or the store full
            log.warning(
                "a pruned trial's run tag could not be changed",
                extra={"job_id": job_id, "error": exc.message},
            )

    def _settle(self, sweep: Sweep, trial: Trial, job: JobRecord) -> None:
        """Take the job's state, and its last metric once it ended (an epoch event may have been missed)."""
        before = (trial.state, trial.pruned, trial.metric, trial.has_metric)
        trial.state = job.state
        # A job that failed once the prune's cancel was accepted failed stopping for it (its
        # worker's error, its stop checkpoint refused): it stays pruned.
        own_end = job.state == "succeeded" or (job.state == "failed" and job.cancel_requested_at is None)
        if own_end and trial.pruned:
            # It ended on its own (its max_steps, early stopping, an error) before the prune's
            # cancel reached it.
            trial.pruned, trial.pruned_at = False, 0
            self._tag_pruned(job.job_id, {}, [PRUNED_TAG])
        if job.state in ENDED and sweep.metric in job.metrics:
            trial.take_metric(float(job.metrics[sweep.metric]))
        if (trial.state, trial.pruned, trial.metric, trial.has_metric) != before:
            self._changed(sweep, trial)

    def _changed(self, sweep: Sweep, trial: Trial) -> None:
        """Note that `trial` changed in memory: the sweep's next write stores its row."""
        self._unsaved.setdefault(sweep.sweep_id, set()).add(trial.number)

    def _tick(self, sweep: Sweep) -> None:
        """Bring trial states up to date, start trials up to max_concurrent, end when done. Goes
        over the unfinished trials alone: a trial's end costs as much in a sweep of any size."""
        own_state = (sweep.state, sweep.error, sweep.best_job_id)
        ledger = self._ledgers[sweep.sweep_id]
        for number in ledger.unfinished:
            trial = sweep.trials[number]
            if trial.job_id and trial.state not in ENDED:
                self._settle(sweep, trial, self._jobs.get(trial.job_id))
        if sweep.state == "running" and not sweep.error:
            active = sum(
                1 for n in ledger.unfinished if sweep.trials[n].job_id and sweep.trials[n].state not in ENDED
            )
            while active < sweep.max_concurrent and not sweep.error:
                try:
                    following = self._next_trial(sweep, ledger)
                except Exception as exc:
                    # Raised here, it would reach only the job listener's log, and leave the
                    # sweep RUNNING with nothing to start: it ends FAILED once its trials have.
                    sweep.error = self._draw_error(sweep, exc)
                    break
                if following is None:
                    break
                self._start(sweep, following)
                if following.job_id:
                    ledger.numbers[following.job_id] = following.number
                active += following.state not in ENDED
        if sweep.state == "running" and sweep.error:
            for number in ledger.unfinished:  # planned, or drawn with a PBT generation: never to start
                trial = sweep.trials[number]
                if trial.state == "pending" and not trial.job_id:
                    trial.state = "cancelled"
                    self._changed(sweep, trial)
        finished = [sweep.trials[n] for n in ledger.unfinished if sweep.trials[n].state in ENDED]
        for trial in finished:
            del ledger.unfinished[trial.number]
        ledger.best_ended = best_trial(sweep.mode, [ledger.best_ended, *finished])
        ended = not ledger.unfinished
        if ended and sweep.state == "running":
            sweep.state, sweep.error = ended_state(sweep)
        if ledger.best_ended is not None:
            sweep.best_job_id = ledger.best_ended.job_id
        try:
            # It records trials' ends and the sweep's own: the store's reserve is for such writes.
            self._save(sweep, head=(sweep.state, sweep.error, sweep.best_job_id) != own_state, reserved=True)
        finally:
            if ended:
                # Its last write: what a refused one left unstored, nothing would write again.
                # The next start ends the sweep from its trials' jobs, as it does after a crash.
                self._unsaved.pop(sweep.sweep_id, None)
        # Only once its end is stored: a sweep whose end the store refused is shown ended (and
        # refuses a cancel as ended) until then, not as its stored record, still running.
        if ended:
            self._running.pop(sweep.sweep_id, None)
            self._ledgers.pop(sweep.sweep_id, None)

    @staticmethod
    def _draw_error(sweep: Sweep, exc: Exception) -> str:
        where = f"could not draw trial {len(sweep.trials)}"
        if isinstance(exc, TesseraError):
            log.warning(where, extra={"sweep_id": sweep.sweep_id, "error": exc.message})
            return f"{where}: {exc.message}"
        log.exception(where, extra={"sweep_id": sweep.sweep_id})
        return f"{where}: an internal error; the daemon's log has it under sweep {sweep.sweep_id}"

    def _next_trial(self, sweep: Sweep, ledger: Ledger) -> Trial | None:
        """The next trial to start: a planned one, or one the searcher draws now (written to the
        record before its job exists); None while there is none to start."""
        for number in ledger.unfinished:
            if sweep.trials[number].state == "pending" and not sweep.trials[number].job_id:
                return sweep.trials[number]
        drawn: builtins.list[Trial] = []
        if sweep.searcher in ("tpe", "cmaes") and len(sweep.trials) < sweep.max_trials:
            point, attrs = suggest(
                sweep.searcher,
                sweep.parameters,
                past_trials(sweep.trials),
                sweep.mode,
                sweep.seed or 0,  # drawn at submit for every searcher but grid
                sweep.max_trials,
                consider_pruned=bool(sweep.pruner),
            )
            drawn = [self._new_trial(sweep, point, sampler_attrs=attrs)]
        elif sweep.pbt is not None:
            drawn = self._next_generation(sweep, sweep.pbt)
        if not drawn:
            return None
        sweep.trials.extend(drawn)
        ledger.unfinished.update((t.number, None) for t in drawn)
        self._write(sweep, drawn, head=False)
        return drawn[0]

    def _next_generation(self, sweep: Sweep, settings: PbtSettings) -> builtins.list[Trial]:
        generation = sweep.trials[-1].generation
        current = [t for t in sweep.trials if t.generation == generation]
        if (
            any(t.state not in ENDED for t in current)
            or len(sweep.trials) + settings.population > sweep.max_trials
        ):
            return []
        # Weights pass on through a checkpoint: a trial that left none (cancelled or failed before
        # its first) ranks as one without a result, neither continued nor copied.
        members = [
            Member(
                t.job_id,
                t.params,
                t.metric if t.scored and self._latest_checkpoint(t.job_id) else None,
            )
            for t in current
        ]
        rng = random.Random(f"{sweep.seed}:pbt:{generation + 1}")
        trials: builtins.list[Trial] = []
        for slot in next_generation(members, sweep.parameters, settings, sweep.mode, rng):
            trial = self._new_trial(
                sweep,
                slot.params,
                generation=generation + 1,
                parent_job_id=slot.parent_job_id,
                exploited=slot.exploited,
                start_checkpoint=self._latest_checkpoint(slot.parent_job_id),
            )
            trial.number += len(trials)
            trials.append(trial)
        return trials

    def _latest_checkpoint(self, job_id: str) -> str:
        checkpoints = self._jobs.get(job_id).checkpoints
        return max(checkpoints, key=lambda c: c.step).sha256 if checkpoints else ""

    def _new_trial(self, sweep: Sweep, point: dict[str, str], **fields: Any) -> Trial:
        raw = trial_spec(sweep.base, point)
        if not sweep.zero_is_a_value:
            # Its values are drawn from a space stored in the older sense (a 0 in one may mean
            # the default): the trial is built in today's, as decode_sweep reads the stored ones.
            _read_as_today(raw)
        if raw.get("resume_from"):
            # Only a daemon from before resume_from went on in full stored a base with it (a
            # submit now refuses one): it meant a start from the checkpoint's weights alone.
            raw["resume_weights_only"] = True
        number = len(sweep.trials)
        bracket = hyperband_bracket(number, sweep.brackets) if sweep.brackets else 0
        return Trial(point, raw, self._document_of(raw), number=number, bracket=bracket, **fields)

    def _start(self, sweep: Sweep, trial: Trial) -> None:
        name = f"{sweep.sweep_id}-{trial.number}"
        orphan = self._orphans.pop(name, None)
        self._changed(sweep, trial)
        if orphan is not None:  # submitted before a crash: the same trial, counted once
            trial.job_id = orphan.job_id
            self._settle(sweep, trial, self._jobs.get(orphan.job_id))
            return
        try:
            job = self._jobs.submit(
                {**trial.raw, "run_name": name},
                trial.document,
                sweep.created_by,
                sweep_id=sweep.sweep_id,
                start_weights=trial.start_checkpoint,
            )
        except TesseraError as exc:  # a drawn value the checks at submit could not foresee
            log.warning(
                "a sweep trial could not start",
                extra={"sweep_id": sweep.sweep_id, "trial": trial.number, "error": exc.message},
            )
            trial.state, trial.error = "failed", exc.message
            if submit_failures_in_a_row(sweep.trials) >= MAX_SUBMIT_FAILURES:
                sweep.error = (
                    f"{MAX_SUBMIT_FAILURES} trials in a row could not be submitted; the last: {exc.message}"
                )
            return
        except Exception:
            # Raised on, it would leave the sweep RUNNING with nothing to start.
            log.exception(
                "a sweep trial could not start", extra={"sweep_id": sweep.sweep_id, "trial": trial.number}
            )
            trial.state = "failed"
            trial.error = f"an internal error; the daemon's log has it under sweep {sweep.sweep_id}"
            sweep.error = f"could not submit trial {trial.number}: {trial.error}"
            return
        trial.job_id, trial.state = job.job_id, job.state

    def _save(self, sweep: Sweep, *, head: bool, reserved: bool = False) -> None:
        """Write the trials changed since the sweep's last write, and its own record if `head`."""
        unsaved = self._unsaved.get(sweep.sweep_id, set())
        self._write(sweep, [sweep.trials[n] for n in sorted(unsaved)], head=head, reserved=reserved)

    def _write(
        self,
        sweep: Sweep,
        trials: builtins.list[Trial],
        *,
        head: bool,
        hold: builtins.list[dict[str, Any]] | None = None,
        experiments: Iterable[str] = (),
        reserved: bool = False,
        submit: SubmitRequest | None = None,
    ) -> None:
        """Write `trials`' rows, and the sweep's own record if `head` (its state, best trial, error:
        what is not a trial's); a trial's end or rung so writes that trial alone, whatever the
        sweep's size. `hold`: configs whose dataset versions the sweep holds from now (a trial's
        job adds the hold of a version first named at its submit). An ended sweep holds none.
        `experiments`: those its trials' runs go to, refused if one is deleted (each trial's
        submit would be), in the transaction that stores a new sweep, as a deletion checks
        running sweeps in its own.
        `reserved`: a trial's end or the sweep's own, which may use the store's kept room.
        `submit`: the submit that creates the sweep, whose request id is kept with it."""
        holder = sweep_holder(sweep.sweep_id)
        released: set[str] = set()
        ended = sweep.state != "running"
        with self._store.write(reserved=reserved) as txn:
            if submit is not None:
                SWEEP_REQUESTS.keep(txn, submit, sweep.sweep_id, time.time())
            for experiment in sorted(experiments):
                self._jobs.refuse_deleted_experiment(txn, experiment)
            for config in hold or []:
                self._jobs.hold_dataset(txn, config, holder)
            if ended and head:
                release_dataset_holds(txn, holder)
            # Its trials kept their checkpoints while it ran: all release them when its end is
            # written, those yet to end as they do.
            for trial in sweep.trials if ended and head else trials if ended else []:
                if trial.job_id:
                    released |= self._jobs.release_checkpoints(txn, trial.job_id)
            for trial in trials:
                txn.put("sweep_trials", (sweep.sweep_id, trial.number), encode_trial(trial))
            if head:
                txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep))
        unsaved = self._unsaved.get(sweep.sweep_id)
        if unsaved is not None:
            unsaved.difference_update(t.number for t in trials)
            if not unsaved:
                del self._unsaved[sweep.sweep_id]
        self._jobs.collect_blobs(released)


def encode_sweep(sweep: Sweep) -> bytes:
    """The sweep's own record: all but its trials, which `encode_trial` stores in rows of their own."""
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
        "rungs": sweep.unowned_rungs,
        "pruner": sweep.pruner,
        "base": sweep.base,
        "parameters": [asdict(p) for p in sweep.parameters],
        "max_trials": sweep.max_trials,
        "pbt": asdict(sweep.pbt) if sweep.pbt else None,
        "brackets": sweep.brackets,
        "error": sweep.error,
        "zero_is_a_value": sweep.zero_is_a_value,
    }
    # A grid given none has none: left out, as records before seeds were stored have none (an
    # older daemon reads a missing one as 0, and would fail on a null one).
    if sweep.seed is not None:
        data["seed"] = sweep.seed
    return encode_record(KIND, SCHEMA, data)


def encode_trial(trial: Trial) -> bytes:
    return encode_record(TRIAL_KIND, TRIAL_SCHEMA, asdict(trial))


def read_sweep(txn: ReadTxn, sweep_id: str, raw: bytes) -> Sweep:
    """The sweep stored as `raw` in "sweeps", with its trials' rows."""
    return decode_sweep(raw, [row for _, row in txn.scan("sweep_trials", (sweep_id,))])


def decode_sweep(raw: bytes, trial_rows: builtins.list[bytes]) -> Sweep:
    """The sweep stored as `raw`, its trials from `trial_rows` (by number); a record of schema 1
    holds its trials itself, one of schema 1 or 2 all rung results. Its specs are read as today's
    (`_read_as_today`): once per read, not as each trial starts; the stored bytes are left as they
    are, and a row holds today's form once its trial is written again."""
    schema, data = decode_record(raw, KIND, SCHEMA)
    stored_trials = (
        data["trials"]
        if schema == 1
        else [decode_record(row, TRIAL_KIND, TRIAL_SCHEMA)[1] for row in trial_rows]
    )
    zero_is_a_value = data.get("zero_is_a_value", False)
    base = data.get("base", {})
    parameters = [
        SweepParameter(**{**p, "when_values": tuple(p.get("when_values", ()))})
        for p in data.get("parameters", [])
    ]
    if not zero_is_a_value:
        _read_as_today(base, drawn=[p.path for p in parameters])
        for stored in stored_trials:
            _read_as_today(stored["raw"])
            _read_as_today(stored["document"])
    pbt = data.get("pbt")
    # Records written before trials were numbered: their place in the list.
    trials = [Trial(**{"number": i, **t}) for i, t in enumerate(stored_trials)]
    pruner = data.get("pruner", "asha" if data["strategy"] == "asha" else "")
    unowned = data["rungs"] if schema >= 3 else split_rungs(pruner, data["rungs"], trials)
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
        # Not the stored one: a sweep stored while best ranked pruned and failed trials too may
        # name one of those.
        best_job_id=best.job_id if (best := best_trial(data["mode"], trials)) else "",
        rungs=built_rungs(pruner, unowned, trials),
        trials=trials,
        pruner=pruner,
        base=base,
        parameters=parameters,
        max_trials=data.get("max_trials", 0),
        # None for a grid given none (see encode_sweep), 0 for a search stored before seeds were.
        seed=data.get("seed", None if data["strategy"] == "grid" else 0),
        pbt=PbtSettings(**pbt) if pbt else None,
        brackets=data.get("brackets", []),
        error=data.get("error", ""),
        unowned_rungs=unowned,
        zero_is_a_value=zero_is_a_value,
    )
