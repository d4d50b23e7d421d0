"""A word or flag a newcomer carried over from a neighbouring command is answered with the one
meant: a spec given to the group that lists what it starts, a flag of a sibling listing."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_USAGE


def refused(tessera_cli, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        tessera_cli(*args)
    assert exited.value.code == EXIT_USAGE
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("group", "meant"), [("sweeps", "tessera sweep sw.toml"), ("jobs", "tessera train sw.toml")]
)
def test_a_spec_given_to_a_listing_group_names_the_command_that_starts_it(tessera_cli, capsys, group, meant):
    told = refused(tessera_cli, capsys, group, "sw.toml")
    assert f"invalid choice: 'sw.toml'; a spec starts one with `{meant}`" in told, told
    followed = refused(tessera_cli, capsys, group, "sw.toml", "--follow")
    assert f"`{meant}`" in followed, followed


@pytest.mark.parametrize("group", ["jobs", "runs"])
@pytest.mark.parametrize("flag", ["--state", "--status"])
def test_jobs_and_runs_ls_take_state_and_status_alike(tessera_cli, group, flag):
    listed = tessera_cli("--json", group, "ls", flag, "succeeded")
    assert listed.code == 0 and listed.json() == [], listed.err


def test_help_names_one_spelling_and_says_the_other(tessera_cli, capsys):
    with pytest.raises(SystemExit):
        tessera_cli("runs", "ls", "--help")
    runs = " ".join(capsys.readouterr().out.split())
    assert (
        "--status STATUS" in runs
        and "--state STATUS" not in runs
        and "--state too, as jobs ls says it" in runs
    ), runs
    with pytest.raises(SystemExit):
        tessera_cli("jobs", "ls", "--help")
    jobs = " ".join(capsys.readouterr().out.split())
    assert (
        "--state STATE" in jobs
        and "--status STATE" not in jobs
        and "--status too, as runs ls says it" in jobs
    ), jobs


def test_an_unknown_flag_is_answered_with_the_one_likely_meant(tessera_cli, capsys):
    told = refused(tessera_cli, capsys, "runs", "ls", "--experimnt", "clips")
    assert "unrecognized arguments: --experimnt clips; did you mean --experiment?" in told, told
    valued = refused(tessera_cli, capsys, "models", "show", "m", "--verison=2")
    assert "unrecognized arguments: --verison=2; did you mean --version?" in valued, valued
    unlike = refused(tessera_cli, capsys, "models", "show", "m", "--zzz")
    assert unlike.endswith("unrecognized arguments: --zzz"), unlike


def test_experiments_show_names_one_experiment(tessera_cli, client):
    client.training.create_experiment("clips", description="4-D CNN on clips", tags={"team": "vision"})
    shown = tessera_cli("experiments", "show", "clips")
    assert shown.code == 0, shown.err
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in shown.out.splitlines()
        if "│" in line
    }
    assert rows["description"] == "4-D CNN on clips" and rows["tag team"] == "vision", shown.out
    assert tessera_cli("--json", "experiments", "show", "clips").json()["description"] == "4-D CNN on clips"
    missing = tessera_cli("experiments", "show", "clip")
    assert missing.code == 3 and "NOT_FOUND" in missing.err, missing.err


GRID_SWEEP = """\
strategy = "grid"
metric = "val_loss"

[base]
experiment = "cli"
task = "classification"
epochs = 1
batch_size = 16
data = { dataset = "table", train_split = "train", val_split = "val" }

[base.architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }

[[parameters]]
path = "optimizer.lr"
values = { values = [0.01, 0.1] }
"""


def test_runs_ls_sweep_lists_the_runs_of_its_trials(tessera_cli, table_dataset, tmp_path):
    sweep_spec = tmp_path / "sweep.toml"
    sweep_spec.write_text(GRID_SWEEP)
    assert tessera_cli("sweep", str(sweep_spec), "--follow").code == 0
    job_spec = tmp_path / "job.toml"
    base = GRID_SWEEP.split("[base]\n", 1)[1].split("[[parameters]]", 1)[0]
    job_spec.write_text(base.replace("[base.", "["))
    assert tessera_cli("train", str(job_spec), "--follow").code == 0
    [sweep] = tessera_cli("--json", "sweeps", "ls").json()
    trial_jobs = {trial["job_id"] for trial in sweep["trials"]}

    runs = tessera_cli("--json", "runs", "ls", "--sweep", sweep["sweep_id"]).json()
    assert sorted(run["job_id"] for run in runs) == sorted(trial_jobs)
    assert len(tessera_cli("--json", "runs", "ls", "--experiment", "cli").json()) == 3
    missing = tessera_cli("runs", "ls", "--sweep", "sweep-nope")
    assert missing.code == 3 and "NOT_FOUND" in missing.err, missing.err


def test_runs_ls_sweep_lists_trials_runs_in_each_experiment_a_parameter_sets(
    tessera_cli, table_dataset, tmp_path
):
    # A parameter on `experiment` sends each trial's run to its value: reading only the base
    # spec's experiment listed none of them.
    sweep_spec = tmp_path / "sweep.toml"
    sweep_spec.write_text(
        GRID_SWEEP.replace('path = "optimizer.lr"', 'path = "experiment"').replace(
            "values = [0.01, 0.1]", 'values = ["cli-a", "cli-b"]'
        )
    )
    assert tessera_cli("sweep", str(sweep_spec), "--follow").code == 0
    [sweep] = tessera_cli("--json", "sweeps", "ls").json()
    trial_jobs = {trial["job_id"] for trial in sweep["trials"]}

    listed = tessera_cli("--json", "runs", "ls", "--sweep", sweep["sweep_id"])
    assert listed.code == 0, listed.err
    runs = listed.json()
    assert sorted(run["job_id"] for run in runs) == sorted(trial_jobs)
    assert sorted(run["experiment"] for run in runs) == ["cli-a", "cli-b"]


def test_runs_ls_sweep_leaves_out_runs_of_no_job_when_a_trial_never_started(
    tessera_cli, client, table_dataset, tmp_path
):
    # A trial cancelled before it started has no job: its "" matched every run of no job, as a
    # script's run made by CreateRun is.
    sweep_spec = tmp_path / "sweep.toml"
    sweep_spec.write_text(
        GRID_SWEEP.replace("epochs = 1", "epochs = 0\nmax_steps = 1000000")
        .replace('metric = "val_loss"', 'metric = "val_loss"\nmax_concurrent = 1')
        .replace("values = [0.01, 0.1]", "values = [0.01, 0.1, 1.0]")
    )
    started = tessera_cli("--json", "sweep", str(sweep_spec))
    assert started.code == 0, started.err
    sweep = client.training.cancel_sweep(started.json()["sweep_id"])
    assert any(not trial.job_id for trial in sweep.trials()), sweep.info
    external = client.training.create_run("cli", "by-hand", create_experiment=True)
    client.training.create_run("other", "elsewhere", create_experiment=True)

    runs = tessera_cli("--json", "runs", "ls", "--sweep", sweep.id).json()
    assert external.run_id not in {run["run_id"] for run in runs}, runs
    assert {run["job_id"] for run in runs} <= {t.job_id for t in sweep.trials() if t.job_id}, runs


def test_an_unknown_option_of_tessera_itself_is_answered_with_the_one_likely_meant(tessera_cli, capsys):
    told = refused(tessera_cli, capsys, "--tiemout=5", "info")
    assert "unrecognized arguments: --tiemout=5; did you mean --timeout?" in told, told


def test_a_hidden_other_spelling_makes_no_prefix_ambiguous(tessera_cli, client):
    # jobs ls takes --status for --state, hidden from its help: `--stat` was refused as ambiguous.
    client.training.create_run("cli", "by-hand", create_experiment=True)
    jobs = tessera_cli("--json", "jobs", "ls", "--stat", "running")
    assert jobs.code == 0 and jobs.json() == [], jobs.err
    runs = tessera_cli("--json", "runs", "ls", "--stat", "running")
    assert runs.code == 0 and len(runs.json()) == 1, runs.err


def test_did_you_mean_names_no_option_hidden_from_the_help(tessera_cli, capsys, tmp_path):
    # models push refuses --alias, hidden from its help: a near miss was pointed at it.
    model = tmp_path / "a.onnx"
    model.write_bytes(b"")
    told = refused(tessera_cli, capsys, "models", "push", "a", str(model), "--aliass", "prod")
    assert "unrecognized arguments: --aliass prod" in told, told
    assert "did you mean --alias?" not in told, told
