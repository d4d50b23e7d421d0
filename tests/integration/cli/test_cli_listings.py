"""`tessera jobs ls` and `tessera runs ls` after a real training job: ids are printed whole on
a narrow or piped console."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from tessera.cli import main

SPEC = {
    "experiment": "listings",
    "task": "classification",
    "epochs": 1,
    "batch_size": 8,
    "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
    "data": {"dataset": "table"},
}


@pytest.fixture
def finished_job(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    client.datasets.push("table", x=x, y=(x[:, 0] > 0).astype(np.int64), splits={"train": 0.75, "val": 0.25})
    return client.training.submit(SPEC).wait(timeout=120)


def printed(daemon, width: int, *args: str) -> str:
    screen = io.StringIO()
    console = Console(file=screen, width=width, force_terminal=False, color_system=None)
    assert main(["--target", daemon.target, *args], console=console) == 0
    return screen.getvalue()


def test_ids_are_never_cut_on_a_narrow_console(daemon, finished_job):
    jobs = printed(daemon, 60, "jobs", "ls")
    assert finished_job.id in jobs and "…" not in jobs
    assert all(len(line) <= 60 for line in jobs.splitlines())
    runs = printed(daemon, 60, "runs", "ls")
    assert finished_job.info.run_id in runs and finished_job.id in runs  # run name: the job id
    assert "left out to fit the width" in runs and "…" not in runs


def test_jobs_and_runs_name_their_losses_apart(daemon, finished_job):
    """A job's "loss" is its last step's; the jobs table shows the last epoch's train_loss, and
    runs list each metric by its key with its last value."""
    metrics = finished_job.info.metrics
    jobs = printed(daemon, 200, "jobs", "ls")
    header = next(line for line in jobs.splitlines() if " id " in line)
    assert "train_loss (epoch)" in header and " loss " not in header
    assert f" {metrics['train_loss']:.4g} " in jobs
    runs = printed(daemon, 200, "runs", "ls")
    assert "metrics (last values)" in runs
    assert f"train_loss={metrics['train_loss']:.4g}" in runs and f"loss={metrics['loss']:.4g}" in runs


def test_jobs_say_which_stopped_early(daemon, client, finished_job, tessera_cli):
    early = {"metric": "val_loss", "patience": 1, "min_delta": 100.0}
    stopped = client.training.submit({**SPEC, "epochs": 50, "early_stopping": early}).wait(timeout=120)
    assert stopped.stopped_early is not None and stopped.stopped_early.epoch == 2
    jobs = printed(daemon, 200, "jobs", "ls")
    header = next([c.strip() for c in line.split("┃")[1:-1]] for line in jobs.splitlines() if "┃" in line)
    rows = {
        cells[0]: cells for line in jobs.splitlines() if (cells := [c.strip() for c in line.split("│")[1:-1]])
    }
    column = header.index("stopped early (epoch)")
    assert (rows[stopped.id][column], rows[finished_job.id][column]) == ("2", "-")
    # Narrower, it goes before the train loss (an id and a state are never left out).
    narrow = printed(daemon, 80, "jobs", "ls")
    assert "train_loss" in narrow and "stopped early (epoch)" in narrow.split("left out to fit")[1], narrow
    listed = {job["job_id"]: job for job in tessera_cli("--json", "jobs", "ls").json()}
    assert listed[stopped.id]["stopped_early"]["epoch"] == 2
    assert "stopped_early" not in listed[finished_job.id]


@pytest.mark.parametrize("group", ["models", "datasets", "jobs", "runs"])
def test_every_ls_also_answers_to_list(daemon, finished_job, group):
    listed = printed(daemon, 200, group, "list")
    assert listed == printed(daemon, 200, group, "ls")
    assert listed.strip()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (("models", "ls"), "no models yet; `tessera models push MODEL FILE` registers one"),
        (("models", "ls", "--prefix", "clips"), "no model's name starts with clips"),
        (("datasets", "ls"), "no datasets yet; `tessera datasets push NAME FILE` uploads one"),
        (("jobs", "ls"), "no jobs yet; `tessera train SPEC.toml` submits one"),
        (("jobs", "ls", "--state", "running"), "no job is running"),
        (("experiments", "ls"), "no experiments yet; a job makes its spec's experiment"),
        (("experiments", "ls", "--view", "deleted"), "no experiment is deleted"),
        (("sweeps", "ls"), "no sweeps yet; `tessera sweep SPEC.toml` starts one"),
        (("serve-status",), "nothing is loaded; `tessera load MODEL` loads a version"),
        (("stats",), "nothing is loaded, so there are no figures; `tessera load MODEL` loads a version"),
    ],
)
def test_an_empty_listing_says_so_and_how_to_fill_it(tessera_cli, command, said):
    """A newcomer's first `tessera models ls` on a new daemon drew an empty box."""
    listed = tessera_cli(*command)
    assert listed.code == 0, listed.err
    assert said in " ".join(listed.out.split()), listed.out
    assert tessera_cli("--json", *command).json() == []
