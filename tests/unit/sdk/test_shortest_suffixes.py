"""The leaderboard's param names when their full paths do not fit."""

from __future__ import annotations

from tessera.cli.tracking import shortest_suffixes


def test_each_path_by_its_last_part_unless_another_path_ends_so_too():
    paths = ["optimizer.lr", "optimizer.weight_decay", "scheduler.gamma", "lr_schedule.lr", "seed"]
    assert shortest_suffixes(paths) == {
        "optimizer.lr": "optimizer.lr",
        "optimizer.weight_decay": "weight_decay",
        "scheduler.gamma": "gamma",
        "lr_schedule.lr": "lr_schedule.lr",
        "seed": "seed",
    }


def test_a_path_that_is_the_tail_of_another_is_kept_whole():
    assert shortest_suffixes(["lr", "optimizer.lr"]) == {"lr": "lr", "optimizer.lr": "optimizer.lr"}
