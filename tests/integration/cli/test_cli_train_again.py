"""Training again from the CLI: `tessera train SPEC --run-name/--set`, `tessera jobs show JOB
--spec` as a spec `train` takes back, what a run of a job without early stopping records, and
what SIGTERM while following a job says."""

from __future__ import annotations

import numpy as np
import pytest

import tessera.follow
from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tessera.entry import EXIT_TERMINATED
from tessera.errors import Terminated
from tessera.json_output import message_to_plain

JOB_SPEC = """\
experiment = "again"
run_name = "baseline"
task = "classification"
epochs = 1
data = { dataset = "table", val_split = "val" }

[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }
"""

# Every kind of field a spec has: enums, int64s, floats written with exponents, an empty oneof
# member (a table with nothing in it), a map, a list of text.
FULL_SPEC = """\
experiment = "again"
task = "classification"
epochs = 2
batch_size = 8
seed = 7
priority = 3
tags = { team = "vision", "odd key" = "a \\"quoted\\" value" }

[data]
dataset = { name = "table", version = 1 }
val_split = "val"

[optimizer]
name = "sgd"
lr = 3e-4
momentum = 0.9
nesterov = true

[lr_schedule.constant]

[early_stopping]
metric = "val_loss"
mode = "min"
patience = 2

[checkpoints]
keep_last = 1
keep_best_metric = "val_accuracy"

[devices]
cpu = true

[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8, 4] }
"""


def _job_id(result) -> str:
    assert result.code == 0, result.err
    return result.json()["job_id"]


def test_train_again_names_the_run_with_run_name_and_overrides_fields_with_set(
    tessera_cli, client, table_dataset, tmp_path
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    first = _job_id(tessera_cli("--json", "train", str(spec)))
    client.training.job(first).wait()

    again = tessera_cli("train", str(spec))
    assert again.code == EXIT_DAEMON, again.err
    assert "experiment 'again' already has a run named 'baseline'" in again.err
    assert "--run-name NAME or --set run_name=NAME" in again.err

    second = _job_id(
        tessera_cli(
            "--json",
            "train",
            str(spec),
            "--run-name",
            "longer",
            "--set",
            "epochs=2",
            "--set",
            "optimizer.lr=3e-4",
            "--set",
            "architecture.mlp.hidden_sizes=[16, 16]",
            "--set",
            "optimizer.name=adamw",
        )
    )
    job = client.training.job(second).wait().info
    assert job.spec.run_name == "longer" and job.spec.epochs == 2
    assert job.spec.optimizer.lr == pytest.approx(3e-4) and job.spec.optimizer.name == "adamw"
    assert list(job.spec.architecture.mlp.hidden_sizes) == [16, 16]
    assert client.training.run(job.run_id).name == "longer"


def test_train_set_names_its_problems_with_the_spec_checks_words(
    tessera_cli, table_dataset, tmp_path, capsys
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    typo = tessera_cli("train", str(spec), "--set", "optimizer.lrr=0.1", "--set", "epochs=two")
    assert typo.code == 1 and "Traceback" not in typo.err
    assert "--set optimizer.lrr=0.1: optimizer.lrr: unknown key; did you mean lr?" in typo.err
    assert '--set epochs=two: epochs: expected a whole number, got "two"' in typo.err
    not_a_table = tessera_cli("train", str(spec), "--set", "epochs.count=2")
    assert not_a_table.code == 1
    assert "--set epochs.count=2: epochs is 1, not a table" in not_a_table.err
    daemon_check = tessera_cli("train", str(spec), "--set", "optimizer.lr=1e3")
    assert daemon_check.code == EXIT_DAEMON and "spec.optimizer.lr: must be at most 10" in daemon_check.err
    with pytest.raises(SystemExit) as no_value:
        tessera_cli("train", str(spec), "--set", "epochs")
    assert no_value.value.code == EXIT_USAGE
    assert "argument --set: 'epochs': write KEY=VALUE" in capsys.readouterr().err
    both = tessera_cli("train", str(spec), "--run-name", "a", "--set", "run_name=b")
    assert both.code == EXIT_USAGE and "--run-name and --set run_name=... both name the run" in both.err


def test_train_set_reaches_inside_a_dataset_the_spec_names_as_text(
    tessera_cli, client, table_dataset, tmp_path
):
    # The spec's `dataset = "table"` was text, not a table: "data.dataset is "table", not a table".
    x = np.zeros((8, 4), dtype=np.float32)
    client.datasets.push("table", x=x, y=np.arange(8) % 2, splits={"train": 0.5, "val": 0.5})
    spec = tmp_path / "job.toml"
    for named, run in (('"table"', "first"), ('"table:2"', "second")):
        spec.write_text(JOB_SPEC.replace('"table"', named))
        job_id = _job_id(
            tessera_cli("--json", "train", str(spec), "--run-name", run, "--set", "data.dataset.version=1")
        )
        job = client.training.job(job_id).wait().info
        assert (job.spec.data.dataset.name, job.spec.data.dataset.version) == ("table", 1)
    spec.write_text(JOB_SPEC.replace('"table"', '"table:two"'))
    bad = tessera_cli("train", str(spec), "--set", "data.dataset.version=1")
    assert bad.code == 1 and "--set data.dataset.version=1: data.dataset: dataset 'table:two'" in bad.err, (
        bad.err
    )


def test_train_set_refuses_a_key_given_twice_or_inside_another_naming_both_flags(
    tessera_cli, table_dataset, tmp_path
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    twice = tessera_cli("train", str(spec), "--set", "epochs=2", "--set", "epochs=3")
    assert twice.code == EXIT_USAGE
    assert "--set epochs=2 and --set epochs=3 both set epochs; give one of them" in twice.err
    inside = tessera_cli("train", str(spec), "--set", "optimizer.lr=1e-3", "--set", 'optimizer={name="sgd"}')
    assert inside.code == EXIT_USAGE
    assert (
        '--set optimizer.lr=1e-3 sets a field of optimizer, which --set optimizer={name="sgd"} sets '
        "whole; give one of them"
    ) in inside.err


def test_train_set_splits_at_the_first_equals_sign_outside_quotes(
    tessera_cli, client, table_dataset, tmp_path
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    quoted = tessera_cli("--json", "train", str(spec), "--run-name", "quoted", "--set", 'tags."a=b"=c')
    assert client.training.job(_job_id(quoted)).info.spec.tags == {"a=b": "c"}


def test_jobs_show_spec_prints_toml_that_train_takes_back_unchanged(
    tessera_cli, client, table_dataset, tmp_path
):
    spec = tmp_path / "full.toml"
    spec.write_text(FULL_SPEC)
    first = client.training.job(_job_id(tessera_cli("--json", "train", str(spec)))).wait(check=False).info
    shown = tessera_cli("jobs", "show", first.job_id, "--spec")
    assert shown.code == 0, shown.err
    assert "run_name" not in shown.out  # the run's name is taken: the job's run had it
    again = tmp_path / "again.toml"
    again.write_text(shown.out)
    second = client.training.job(_job_id(tessera_cli("--json", "train", str(again)))).info
    assert second.job_id != first.job_id
    expected, got = message_to_plain(first.spec), message_to_plain(second.spec)
    assert expected.pop("run_name") == first.job_id and got.pop("run_name") == second.job_id
    assert got == expected

    more = tessera_cli("--json", "train", str(again), "--set", "epochs=3")
    assert client.training.job(_job_id(more)).info.spec.epochs == 3
    as_json = tessera_cli("--json", "jobs", "show", first.job_id, "--spec")
    assert as_json.code == EXIT_USAGE and "--spec prints TOML" in as_json.err


def test_a_run_without_early_stopping_records_no_early_stopping_params(
    tessera_cli, client, table_dataset, tmp_path
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    job = client.training.job(_job_id(tessera_cli("--json", "train", str(spec)))).wait().info
    params = client.training.run(job.run_id).params
    assert "optimizer.lr" in params
    assert not [key for key in params if key.startswith("early_stopping.")], params
    stopping = tessera_cli(
        "--json", "train", str(spec), "--run-name", "stopping", "--set", "early_stopping.patience=2"
    )
    stopped = client.training.job(_job_id(stopping)).wait().info
    assert client.training.run(stopped.run_id).params["early_stopping.patience"] == "2"


def terminate(*args: object, **kwargs: object) -> None:
    raise Terminated


def test_sigterm_while_following_a_job_says_it_goes_on_and_how_to_follow_or_stop_it(
    tessera_cli, client, table_dataset, tmp_path, monkeypatch
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    monkeypatch.setattr(tessera.follow, "_live", terminate)
    result = tessera_cli("train", str(spec), "--follow")
    assert result.code == EXIT_TERMINATED and "Traceback" not in result.err
    job_id = result.out.split("submitted job ")[1].split()[0]
    assert f"stopped following job {job_id}, which goes on" in result.err
    assert f"`tessera jobs watch {job_id}`" in result.err and f"`tessera jobs cancel {job_id}`" in result.err
    client.training.job(job_id).wait()


def test_a_run_name_a_deleted_run_holds_is_refused_in_cli_words(tessera_cli, client, table_dataset, tmp_path):
    deleted = client.training.create_run("again-deleted", "gone", create_experiment=True)
    client.training.delete_run(deleted.run_id)
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC.replace('"again"', '"again-deleted"').replace('"baseline"', '"gone"'))

    refused = tessera_cli("train", str(spec))
    assert refused.code == EXIT_DAEMON, refused.err
    assert "restore it with `tessera runs restore RUN_ID`" in refused.err
    assert "--run-name NAME or --set run_name=NAME" in refused.err
    assert "client." not in refused.err
