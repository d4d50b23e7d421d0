"""Searchers' bookkeeping as pure functions: search spaces, TPE/CMA-ES asks rebuilt from stored
trials, Hyperband's brackets, PBT's generations, and which searcher/pruner pairs are refused."""

from __future__ import annotations

import random
import warnings

import pytest

from tesserad.errors import InvalidArgument
from tesserad.training.pbt import Member, PbtSettings, explore, next_generation, pbt_settings
from tesserad.training.pruning import asha_prunes, hyperband_bracket, hyperband_counts
from tesserad.training.samplers import PastTrial, startup_trials, suggest, tpe_options
from tesserad.training.search_space import (
    SweepParameter,
    boundary_points,
    check_space,
    fewest_steps_points,
    grid_points,
    highest_rate_points,
    plan_points,
    random_point,
)
from tesserad.training.sweeps import Trial, check_searcher_space, past_trials, searcher_and_pruner

OPTIMIZER = SweepParameter("optimizer.name", values=["adam", "sgd"])
MOMENTUM = SweepParameter(
    "optimizer.momentum", low=0.5, high=0.99, when_path="optimizer.name", when_values=("sgd",)
)
LR = SweepParameter("optimizer.lr", low=1e-4, high=1.0, log_scale=True)
WIDTH = SweepParameter("architecture.mlp.width", low=4, high=64, integer=True)


def test_conditional_parameters_appear_only_where_their_condition_holds() -> None:
    momentum = SweepParameter(
        "optimizer.momentum", values=["0.5", "0.9"], when_path="optimizer.name", when_values=("sgd",)
    )
    assert grid_points([OPTIMIZER, momentum, SweepParameter("seed", values=["1", "2"])], 10) == [
        {"optimizer.name": "adam", "seed": "1"},
        {"optimizer.name": "adam", "seed": "2"},
        {"optimizer.name": "sgd", "optimizer.momentum": "0.5", "seed": "1"},
        {"optimizer.name": "sgd", "optimizer.momentum": "0.5", "seed": "2"},
        {"optimizer.name": "sgd", "optimizer.momentum": "0.9", "seed": "1"},
        {"optimizer.name": "sgd", "optimizer.momentum": "0.9", "seed": "2"},
    ]
    rng = random.Random(0)
    points = [random_point([OPTIMIZER, MOMENTUM, LR], rng) for _ in range(30)]
    assert {p["optimizer.name"] for p in points} == {"adam", "sgd"}
    for point in points:
        assert ("optimizer.momentum" in point) == (point["optimizer.name"] == "sgd")
        if "optimizer.momentum" in point:
            assert 0.5 <= float(point["optimizer.momentum"]) <= 0.99


def test_boundary_points_reach_every_extreme_and_switch_conditions_on() -> None:
    points = list(boundary_points([OPTIMIZER, MOMENTUM, LR, WIDTH]))
    assert {
        "optimizer.name": "sgd",
        "optimizer.momentum": "0.99",
        "optimizer.lr": "0.0001",
        "architecture.mlp.width": "4",
    } in points
    assert {p["optimizer.lr"] for p in points} == {"0.0001", "1.0"}
    assert {p["architecture.mlp.width"] for p in points} == {"4", "64"}
    assert len(points) == len({tuple(sorted(p.items())) for p in points})  # each once


def test_the_fewest_steps_points_have_the_longest_warm_up_in_the_shortest_jobs() -> None:
    # epochs and max_steps at 0 lift their limit, so the least above 0 is tried; but both at 0
    # train one epoch, so a 0 each may take is tried too.
    space = [
        LR,
        SweepParameter("batch_size", low=8, high=256, integer=True),
        SweepParameter("lr_schedule.warmup_steps", values=["100", "0", "200"]),
        SweepParameter("epochs", values=["3", "0", "2"]),
        SweepParameter("max_steps", low=0, high=500, integer=True),
    ]
    worst = {"optimizer.lr": "0.0001", "batch_size": "256", "lr_schedule.warmup_steps": "200"}
    assert fewest_steps_points(space, _one_split, "train") == [
        {**worst, "epochs": "2", "max_steps": "1"},
        {**worst, "epochs": "2", "max_steps": "0"},
        {**worst, "epochs": "0", "max_steps": "1"},
        {**worst, "epochs": "0", "max_steps": "0"},
    ]
    # No warm-up varied: the boundary has it.
    assert fewest_steps_points([LR, space[1]], _one_split, "train") == []
    # The job's length is the base's: so is the check.
    assert fewest_steps_points([space[2]], _one_split, "train") == []


def test_the_highest_rate_points_have_the_backbone_at_its_highest_rate() -> None:
    # backbone_lr_scale 0 means 1: higher than 0.5, so it is tried too.
    space = [
        SweepParameter("optimizer.lr", low=1e-4, high=1.0, log_scale=True),
        SweepParameter("backbone_lr_scale", values=["0.5", "0", "0.1"]),
        SweepParameter("seed", values=["1", "2"]),
    ]
    assert highest_rate_points(space) == [
        {"optimizer.lr": "1.0", "backbone_lr_scale": "0.5", "seed": "1"},
        {"optimizer.lr": "1.0", "backbone_lr_scale": "0", "seed": "1"},
    ]
    assert highest_rate_points(space[:1] + space[2:]) == []  # no scale varied: the boundary has it
    assert highest_rate_points(space[1:]) == []  # the scaled rate is the base's: so is the check


def _one_split(point: dict[str, str]) -> dict[str, int]:
    return {"train": 100}


def test_the_split_with_the_fewest_samples_is_tried_with_the_longest_warm_up() -> None:
    space = [
        SweepParameter("data.train_split", values=["big", "small", "big"]),
        SweepParameter("lr_schedule.warmup_steps", low=0, high=50, integer=True),
        SweepParameter("epochs", values=["4", "9"]),
    ]
    assert fewest_steps_points(space, lambda point: {"big": 900, "small": 40}, "train") == [
        {"data.train_split": "small", "lr_schedule.warmup_steps": "50", "epochs": "4"},
    ]
    # A split the version lacks is the point tried: its check says so.
    assert fewest_steps_points(space, lambda point: {"big": 900}, "train") == [
        {"data.train_split": "small", "lr_schedule.warmup_steps": "50", "epochs": "4"},
    ]
    # Not varied, the base's split is the one counted, and a version that does not exist is tried.
    assert fewest_steps_points(space[1:], lambda point: {"big": 9, "train": 3}, "train") == [
        {"lr_schedule.warmup_steps": "50", "epochs": "4"},
    ]
    assert fewest_steps_points(space[1:], lambda point: None, "train") == [
        {"lr_schedule.warmup_steps": "50", "epochs": "4"},
    ]


def test_long_dataset_and_split_lists_are_checked_with_one_look_up_per_version() -> None:
    # Their product was each a point checked as a job (40 each: 64,000; the daemon never answered);
    # the fewest samples of them all is the one point that matters.
    names, versions, splits = ([f"{kind}{i}" for i in range(40)] for kind in ("d", "", "s"))
    space = [
        SweepParameter("data.dataset.name", values=names),
        SweepParameter("data.dataset.version", values=versions[1:26]),
        SweepParameter("data.train_split", values=splits),
        SweepParameter("lr_schedule.warmup_steps", values=["10", "20"]),
        SweepParameter("epochs", values=["3", "0"]),
    ]
    asked: list[dict[str, str]] = []

    def split_samples(point: dict[str, str]) -> dict[str, int]:
        asked.append(point)
        name, version = names.index(point["data.dataset.name"]), int(point["data.dataset.version"])
        return {
            split: 1000 - name - version - i + (500 if (name, version) != (7, 3) else 0)
            for i, split in enumerate(splits)
        }

    points = fewest_steps_points(space, split_samples, "train")
    assert len(asked) == 40 * 25  # one per dataset version, none per split
    fewest = {"data.dataset.name": "d7", "data.dataset.version": "3", "data.train_split": "s39"}
    assert points == [
        {**fewest, "lr_schedule.warmup_steps": "20", "epochs": "3"},
        {**fewest, "lr_schedule.warmup_steps": "20", "epochs": "0"},
    ]
    # Each name with each number is its own version: past a sweep's most trials, refused.
    space[1] = SweepParameter("data.dataset.version", values=versions[1:])
    with pytest.raises(
        InvalidArgument, match=r"data\.dataset\.name and data\.dataset\.version name 1560 dataset"
    ):
        fewest_steps_points(space, split_samples, "train")


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ([], "varies at least one field"),
        ([LR, LR], "listed twice"),
        ([SweepParameter("epochs", low=1.5, high=3, integer=True)], "whole min and max"),
        ([SweepParameter("optimizer.lr", low=0, high=1, log_scale=True)], "needs min > 0"),
        ([MOMENTUM, OPTIMIZER], "'optimizer.name' must be a categorical parameter listed before"),
        (
            [LR, SweepParameter("epochs", values=["1"], when_path="optimizer.lr", when_values=("1",))],
            "categorical",
        ),
        (
            [
                OPTIMIZER,
                SweepParameter("epochs", values=["1"], when_path="optimizer.name", when_values=("rmsprop",)),
            ],
            "among adam, sgd",
        ),
    ],
)
def test_bad_spaces_are_refused_naming_the_parameter(space: list[SweepParameter], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        check_space(space)


def test_random_plans_are_seeded_and_grid_needs_values() -> None:
    assert plan_points("random", [LR, WIDTH], 5, 3) == plan_points("random", [LR, WIDTH], 5, 3)
    with pytest.raises(InvalidArgument, match="grid sweep needs explicit values"):
        plan_points("grid", [LR], 0, 0)


@pytest.mark.parametrize(
    ("strategy", "pruner", "words"),
    [
        ("pbt", "asha", "PBT cannot be combined with ASHA"),
        ("pbt", "hyperband", "PBT cannot be combined with HYPERBAND"),
        ("asha", "hyperband", "strategy ASHA already prunes"),
        ("hyperband", "asha", "strategy HYPERBAND already prunes"),
    ],
)
def test_pairs_that_make_no_sense_are_refused_by_name(strategy: str, pruner: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        searcher_and_pruner(strategy, pruner)


def test_pruning_searchers_pair_with_pruners() -> None:
    assert searcher_and_pruner("asha", "") == ("random", "asha")
    assert searcher_and_pruner("hyperband", "") == ("random", "hyperband")
    assert searcher_and_pruner("tpe", "hyperband") == ("tpe", "hyperband")
    assert searcher_and_pruner("grid", "asha") == ("grid", "asha")
    with pytest.raises(InvalidArgument, match="CMA-ES searches numeric ranges only"):
        check_searcher_space("cmaes", [LR, OPTIMIZER])


def _objective(point: dict[str, str]) -> float:
    return (float(point["optimizer.lr"]) - 0.01) ** 2 * 100 + (
        float(point["architecture.mlp.width"]) - 40
    ) ** 2 / 400


def _run(searcher: str, trials: int, seed: int) -> list[PastTrial]:
    past: list[PastTrial] = []
    for _ in range(trials):
        point, attrs = suggest(searcher, [LR, WIDTH], past, "min", seed, trials, consider_pruned=False)
        past.append(PastTrial(point, "complete", _objective(point), attrs=attrs))
    return past


@pytest.mark.parametrize("searcher", ["tpe", "cmaes"])
def test_each_ask_is_rebuilt_from_the_stored_trials_alone(searcher: str) -> None:
    past = _run(searcher, 14, seed=5)
    assert past == _run(searcher, 14, seed=5)  # nothing but the trials and the seed decide
    # A restarted daemon asks with the same stored trials: the same next trial.
    stored = [PastTrial(t.params, t.state, t.value, t.epoch, dict(t.attrs)) for t in past]
    assert suggest(searcher, [LR, WIDTH], stored, "min", 5, 14, False) == suggest(
        searcher, [LR, WIDTH], past, "min", 5, 14, False
    )
    for t in past:
        assert (
            1e-4 <= float(t.params["optimizer.lr"]) <= 1.0
            and 4 <= int(t.params["architecture.mlp.width"]) <= 64
        )
        assert not any(key.startswith("cma:optimizer") for key in t.attrs)  # no pickles kept


def test_cma_es_moves_through_generations_without_a_pickled_optimizer() -> None:
    past = _run("cmaes", 30, seed=1)
    generations = [t.attrs["cma:generation"] for t in past if "cma:generation" in t.attrs]
    assert generations == sorted(generations) and generations[-1] >= 3
    first, last = past[:6], past[-6:]
    assert min(t.value or 0 for t in last) < min(t.value or 0 for t in first)


def test_tpe_takes_conditional_spaces_and_running_trials() -> None:
    space = [OPTIMIZER, MOMENTUM, LR]
    past = [
        PastTrial(
            {"optimizer.name": "sgd", "optimizer.momentum": "0.9", "optimizer.lr": "0.01"}, "complete", 0.5
        ),
        PastTrial({"optimizer.name": "adam", "optimizer.lr": "0.1"}, "running"),
        PastTrial({"optimizer.name": "adam", "optimizer.lr": "0.2"}, "pruned", 2.0, epoch=1),
        PastTrial({"optimizer.name": "adam", "optimizer.lr": "0.3"}, "failed"),
    ]
    point, _ = suggest("tpe", space, past, "max", 0, 10, consider_pruned=True)
    assert ("optimizer.momentum" in point) == (point["optimizer.name"] == "sgd")


def test_stored_trials_become_the_searchers_view() -> None:
    trials = [
        Trial({"a": "1"}, {}, {}, state="succeeded", metric=0.5, has_metric=True),
        Trial({"a": "2"}, {}, {}, state="cancelled", metric=0.9, has_metric=True, pruned=True, pruned_at=3),
        Trial({"a": "3"}, {}, {}, state="failed"),
        Trial({"a": "4"}, {}, {}, job_id="job-x", state="running"),
        Trial({"a": "5"}, {}, {}),
    ]
    assert [(p.state, p.value, p.epoch) for p in past_trials(trials)] == [
        ("complete", 0.5, 0),
        ("pruned", 0.9, 3),
        ("failed", None, 0),
        ("running", None, 0),
        ("running", None, 0),
    ]


def test_hyperband_deals_more_trials_to_the_brackets_that_stop_sooner() -> None:
    assert hyperband_counts(9, 1, 3) == [9, 5, 3]  # first rungs at epochs 1, 3 and 9
    assert hyperband_counts(8, 1, 3) == [3, 2]
    assert hyperband_counts(2, 1, 3) == [1]
    dealt = [hyperband_bracket(n, [9, 5, 3]) for n in range(17)]
    assert [dealt.count(k) for k in range(3)] == [9, 5, 3]
    assert dealt[:3] == [0, 1, 0] and hyperband_bracket(17, [9, 5, 3]) == dealt[0]
    assert sorted(set(dealt[:6])) == [0, 1, 2]  # a short sweep still reaches every bracket


def test_hyperband_brackets_keep_their_own_rungs() -> None:
    rungs: dict[str, dict[str, object]] = {}
    bracket0, bracket1 = rungs.setdefault("bracket 0", {}), rungs.setdefault("bracket 1", {})
    assert not asha_prunes(bracket0, "a", 1.0, 1, 1, 2, "min", last_epoch=8)
    assert asha_prunes(bracket0, "b", 2.0, 1, 1, 2, "min", last_epoch=8)
    assert not asha_prunes(
        bracket1, "c", 5.0, 1, 2, 2, "min", last_epoch=8
    )  # epoch 1 is no rung of bracket 1
    assert not asha_prunes(bracket1, "c", 5.0, 2, 2, 2, "min", last_epoch=8)  # nothing to trail there yet
    assert rungs == {"bracket 0": {"0": {"a": 1.0, "b": 2.0}}, "bracket 1": {"0": {"c": 5.0}}}


SETTINGS = PbtSettings(population=4, quantile=0.25, perturb=0.2, resample_probability=0.0)


def test_pbt_bottom_quantile_copies_the_top_and_explores() -> None:
    members = [
        Member("a", {"optimizer.lr": "0.1"}, 0.3),
        Member("b", {"optimizer.lr": "0.01"}, 0.1),  # best
        Member("c", {"optimizer.lr": "0.5"}, 0.9),  # worst
        Member("d", {"optimizer.lr": "0.2"}, None),  # no result
    ]
    following = next_generation(members, [LR], SETTINGS, "min", random.Random(0))
    assert [(m.parent_job_id, m.exploited) for m in following] == [
        ("a", False),
        ("b", False),
        ("b", True),
        ("b", True),
    ]
    assert following[0].params == {"optimizer.lr": "0.1"}
    for copied in following[2:]:
        assert float(copied.params["optimizer.lr"]) in (pytest.approx(0.012), pytest.approx(0.008))
    maximising = next_generation(members, [LR], SETTINGS, "max", random.Random(0))
    assert [m.parent_job_id for m in maximising] == ["a", "c", "c", "c"]
    assert next_generation([Member("a", {}, None)], [LR], SETTINGS, "min", random.Random(0)) == []


def test_pbt_explore_stays_in_range_and_keeps_conditions() -> None:
    settings = PbtSettings(4, 0.25, 0.5, 0.5)
    rng = random.Random(1)
    point = {"optimizer.name": "adam", "optimizer.lr": "1.0", "architecture.mlp.width": "64"}
    for _ in range(50):
        point = explore(point, [OPTIMIZER, MOMENTUM, LR, WIDTH], settings, rng)
        assert 1e-4 <= float(point["optimizer.lr"]) <= 1.0 and 4 <= int(point["architecture.mlp.width"]) <= 64
        assert ("optimizer.momentum" in point) == (point["optimizer.name"] == "sgd")
    moved = explore(
        {"architecture.mlp.width": "5"}, [WIDTH], PbtSettings(4, 0.25, 0.1, 0.0), random.Random(0)
    )
    assert moved["architecture.mlp.width"] in ("4", "6")  # an integer moves by at least one


def test_pbt_settings_default_and_are_checked() -> None:
    assert pbt_settings(PbtSettings(0, 0, 0, 0), 8) == PbtSettings(4, 0.25, 0.2, 0.25)
    with pytest.raises(InvalidArgument, match="at least two generations"):
        pbt_settings(PbtSettings(4, 0, 0, 0), 7)
    with pytest.raises(InvalidArgument, match="population must be >= 2"):
        pbt_settings(PbtSettings(1, 0, 0, 0), 8)


def test_tpe_starts_modelling_after_a_quarter_of_the_budget_from_3_to_10_trials() -> None:
    assert [startup_trials(n) for n in (4, 12, 20, 40, 200)] == [3, 3, 5, 10, 10]


def test_tpe_models_jointly_with_running_trials_told_and_starts_by_the_budget() -> None:
    assert tpe_options(40) == {
        "n_startup_trials": 10,
        "n_ei_candidates": 100,
        "multivariate": True,
        "group": True,
        "constant_liar": True,
    }
    assert tpe_options(12)["n_startup_trials"] == startup_trials(12) == 3


@pytest.mark.parametrize("searcher", ["tpe", "cmaes"])
def test_searchers_use_no_deprecated_optuna_argument(searcher: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _run(searcher, 8, seed=2)
