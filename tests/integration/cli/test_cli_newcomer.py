"""What a newcomer's first pass over the CLI tripped on: runs compare shows the params that differ
(and says what it left out), jobs ls filters by experiment and sweep, deleting a dataset's last
version says the dataset went, tables keep sizes and times on one line, and an update with
nothing to change is a usage error."""

from __future__ import annotations

import io
import re

import numpy as np
from rich.console import Console

from tessera.cli import EXIT_USAGE, main

JOB = {
    "task": "classification",
    "epochs": 1,
    "batch_size": 8,
    "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
    "data": {"dataset": "table", "val_split": "val"},
}


def test_runs_compare_shows_the_params_that_differ_unless_all(tessera_cli, client):
    same = {f"same{i}": "1" for i in range(5)}
    a = client.training.create_run("cmp", params={**same, "lr": "0.1", "only_a": "x"}, create_experiment=True)
    b = client.training.create_run("cmp", params={**same, "lr": "0.2"}, create_experiment=True)
    compared = tessera_cli("runs", "compare", a.run_id, b.run_id)
    assert compared.code == 0, compared.err
    assert "param lr" in compared.out and "param only_a" in compared.out
    assert "param same0" not in compared.out
    assert "left out: 5 params with one value in every run (--all shows them)" in compared.out
    every = tessera_cli("runs", "compare", a.run_id, b.run_id, "--all")
    assert every.code == 0, every.err
    assert all(f"param same{i}" in every.out for i in range(5)) and "left out" not in every.out


def test_jobs_ls_filters_by_experiment_and_sweep(tessera_cli, client, table_dataset):
    one = client.training.submit({**JOB, "experiment": "one"})
    two = client.training.submit({**JOB, "experiment": "two"})
    listed = tessera_cli("jobs", "ls", "--experiment", "one")
    assert listed.code == 0, listed.err
    assert one.id in listed.out and two.id not in listed.out
    none = tessera_cli("jobs", "ls", "--sweep", "no-such-sweep")
    assert none.code == 0, none.err
    assert one.id not in none.out and "no job of sweep no-such-sweep" in none.out
    for job in (one, two):
        job.wait(timeout=120)


def test_deleting_a_datasets_last_version_says_the_dataset_went(tessera_cli, client):
    x = np.zeros((4, 2), np.float32)
    client.datasets.push("solo", x=x)
    client.datasets.push("pair", x=x)
    client.datasets.push("pair", x=x + 1)
    kept = tessera_cli("datasets", "rm", "pair:1")
    assert kept.code == 0 and kept.out.strip() == "deleted pair:1", kept.out
    last = tessera_cli("datasets", "rm", "solo:1")
    assert last.code == 0, last.err
    assert "deleted solo:1, its last version: dataset solo is gone" in last.out, last.out


def test_sizes_and_times_stay_on_one_line_at_80_columns(daemon, client):
    x = np.zeros((4000, 16), np.float32)
    client.datasets.push("wide", x=x, description="a description long enough to wrap " * 4)
    screen = io.StringIO()
    console = Console(file=screen, width=80, force_terminal=False, color_system=None)
    assert main(["--target", daemon.target, "datasets", "versions", "wide"], console=console) == 0
    text = screen.getvalue()
    assert re.search(r"\d+(\.\d+)? KiB", text), text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_experiments_update_with_nothing_to_change_is_a_usage_error(tessera_cli, client):
    client.training.create_run("noop", create_experiment=True)
    result = tessera_cli("experiments", "update", "noop")
    assert result.code == EXIT_USAGE
    assert "give --description, --tag or --remove-tag" in result.err, result.err
