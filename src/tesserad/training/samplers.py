"""Model-based searchers (TPE, CMA-ES) through Optuna's samplers, driven by ask-and-tell.

The sweep's own stored trials are the only state: every ask builds an in-memory study from
them (finished trials with their results, running ones as running) and a sampler seeded by the
sweep's seed and the trial's number, so the next suggestion is the same whether or not the
daemon restarted in between, and no second database exists.

Optuna's CMA-ES keeps its optimizer as a pickle in trial attributes. Nothing here is ever
unpickled: those attributes are dropped, and the optimizer is rebuilt by telling it each past
generation again, in order (its update is deterministic; its random draws are reseeded on every ask).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tesserad.training.search_space import SweepParameter, is_active, number_text

_STATES = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    "running": TrialState.RUNNING,
}
_CMA_GENERATION = "cma:generation"
_PICKLED_PREFIX = "cma:optimizer"


@dataclass(frozen=True)
class PastTrial:
    """A trial as the searcher sees it: its values, how it ended, its result."""

    params: dict[str, str]
    state: str  # complete, pruned, failed or running
    value: float | None = None  # the metric (the last one reported, for a pruned trial)
    epoch: int = 0  # where a pruned trial's value was reported
    attrs: dict[str, Any] = field(default_factory=dict)  # the sampler's own notes on it


def startup_trials(max_trials: int) -> int:
    """TPE's random trials before it models: a quarter of the budget, from 3 to 10."""
    return max(3, min(10, max_trials // 4))


def tpe_options(max_trials: int) -> dict[str, Any]:
    """TPESampler's settings for a sweep of `max_trials`: parameters modelled jointly (a good
    learning rate depends on the batch size), in groups (a conditional parameter is modelled
    with the trials that have it), running trials told as running (constant liar: trials drawn
    while others run keep away from those), and each draw the best of 100 candidates from the
    good trials' density rather than Optuna's 24: a closer maximum of the ratio TPE maximises,
    for a few milliseconds per ask; over 10 seeds (100-109) of bench/search_bench.py's first
    problem (an MLP trained whole, bench/results/search_rugged_mlp.json) it reached
    random's best-of-N in 7 trials, not 9.5, at N=20 and 15, not 20, at N=40. Optuna's own split
    into good and bad trials (its gamma, deprecated as an argument since 4.9) is kept. On those
    seeds at N=20 none of 3 startup trials (12.5), consider_endpoints (11), prior_weight 0.5 (9),
    a quarter of the trials as good (8) or independent parameters (8) reached it sooner, nor did
    the last two on seeds 110-119 (16.5 and 11.5; these settings 13.5): bench/search_tpe_study.py.
    That objective's value moves 3-5% between configs 1% apart, as much as between training
    seeds, and TPE's first modelled trials still explore: few land near the best. On seeds
    100-109 and 110-119 of the bench's current problem (random's median best-of-20 from all
    its trials) these settings took 12 and 16.5 trials, independent parameters 10.5 and 13, a
    quarter as good 11.5 and 13.5: none in half the trials, and no variant clearly ahead."""
    return {
        "n_startup_trials": startup_trials(max_trials),
        "n_ei_candidates": 100,
        "multivariate": True,
        "group": True,
        "constant_liar": True,
    }


def suggest(
    searcher: str,
    parameters: list[SweepParameter],
    past: list[PastTrial],
    mode: str,
    seed: int,
    max_trials: int,
    consider_pruned: bool,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The values of trial number len(past), and the sampler's notes to keep with it."""
    number = len(past)
    sampler_seed = (seed * 1_000_003 + number) % 2**32
    sampler: optuna.samplers.BaseSampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if searcher == "tpe":
            sampler = optuna.samplers.TPESampler(seed=sampler_seed, **tpe_options(max_trials))
        else:
            sampler = _ReplayedCmaEs(
                seed=sampler_seed, consider_pruned_trials=consider_pruned, warn_independent_sampling=False
            )
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize", sampler=sampler)
    distributions = {p.path: _distribution(p) for p in parameters}
    for trial in past:
        study.add_trial(
            optuna.trial.create_trial(
                state=_STATES[trial.state],
                value=trial.value if trial.state == "complete" else None,
                params={path: _internal(distributions[path], text) for path, text in trial.params.items()},
                distributions={path: distributions[path] for path in trial.params},
                intermediate_values={trial.epoch: trial.value}
                if trial.state == "pruned" and trial.value is not None
                else None,
                system_attrs=trial.attrs,
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        asked = study.ask()
        point: dict[str, str] = {}
        for p in parameters:
            if is_active(p, point):
                point[p.path] = _suggest(asked, p)
    attrs = study._storage.get_trial(asked._trial_id).system_attrs
    return point, {k: v for k, v in attrs.items() if not k.startswith(_PICKLED_PREFIX)}


def _distribution(p: SweepParameter) -> BaseDistribution:
    if p.values is not None:
        return CategoricalDistribution(p.values)
    if p.integer:
        return IntDistribution(round(p.low), round(p.high), log=p.log_scale)
    return FloatDistribution(p.low, p.high, log=p.log_scale)


def _internal(distribution: BaseDistribution, text: str) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return text
    if isinstance(distribution, IntDistribution):
        return round(float(text))
    return float(text)


def _suggest(trial: optuna.Trial, p: SweepParameter) -> str:
    if p.values is not None:
        return str(trial.suggest_categorical(p.path, p.values))
    if p.integer:
        return number_text(p, trial.suggest_int(p.path, round(p.low), round(p.high), log=p.log_scale))
    return number_text(p, trial.suggest_float(p.path, p.low, p.high, log=p.log_scale))


class _ReplayedCmaEs(optuna.samplers.CmaEsSampler):
    """CMA-ES whose optimizer is rebuilt from the trials' generations instead of unpickled.

    Relies on CmaEsSampler's private _restore_optimizer/_init_optimizer/_get_solution_trials
    of optuna 5.0.0 (pinned): the first is asked for the saved optimizer, the second builds a
    fresh one, which this class then tells each generation that later trials were drawn after.
    """

    _completed: list[FrozenTrial]

    def _restore_optimizer(self, completed_trials: list[FrozenTrial]) -> Any:
        self._completed = completed_trials
        return None

    def _init_optimizer(self, trans: Any, direction: Any) -> Any:
        optimizer = super()._init_optimizer(trans, direction)
        newest = max((t.system_attrs.get(_CMA_GENERATION, -1) for t in self._completed), default=-1)
        while optimizer.generation < newest:
            population = self._get_solution_trials(self._completed, optimizer.generation)
            if len(population) < optimizer.population_size:
                break
            sign = 1.0 if direction == optuna.study.StudyDirection.MINIMIZE else -1.0
            optimizer.tell(
                [
                    (trans.transform(t.params), sign * float(t.value or 0.0))
                    for t in population[: optimizer.population_size]
                ]
            )
        return optimizer
