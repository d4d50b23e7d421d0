"""`tessera` commands against a real daemon: tables for people, --json for scripts, and a
non-zero exit with the daemon's message (never a traceback) on every failure."""

from __future__ import annotations

import re
import socket
import time

import numpy as np
import pytest

import tessera
from tessera.cli import EXIT_DAEMON, EXIT_FAILED, EXIT_USAGE
from tessera.demo import spacetime_clips
from tessera.messages import load_toml
from tesserad.store.schema import STORE_SCHEMA
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.sdk.affine import affine_onnx


@pytest.fixture
def model_file(tmp_path):
    return affine_onnx(tmp_path / "affine.onnx")


@pytest.fixture
def dataset_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    path = tmp_path / "table.npz"
    np.savez(path, x=x, y=(x[:, 0] > 0).astype(np.int64))
    return path


def assert_failed_cleanly(result, code_name: str, *words: str) -> None:
    assert result.code == (EXIT_DAEMON if code_name else EXIT_FAILED)
    assert (
        result.err.startswith(f"tessera: {code_name}: ") if code_name else result.err.startswith("tessera: ")
    )
    assert "Traceback" not in result.err + result.out
    for word in words:
        assert word in result.err


def test_info_table_and_json(tessera_cli):
    table = tessera_cli("info")
    assert table.code == 0 and "tesserad" in table.out and "cpu" in table.out
    assert "role primary: routes by change 0, store " in table.out
    info = tessera_cli("--json", "info").json()
    assert "tessera.v1.System" in info["services"]
    assert info["replication"]["role"] == "primary"
    # The schema `tesserad restore` and an older tesserad check a store against.
    assert info["data_dir"]["store_schema"] == STORE_SCHEMA
    assert f"store schema {STORE_SCHEMA}" in table.out


def test_an_unreachable_daemon_fails_with_a_message(tessera_cli):
    result = tessera_cli("--timeout", "2", "info", target="127.0.0.1:1")
    assert_failed_cleanly(result, "UNAVAILABLE", "is tesserad running at 127.0.0.1:1?", "--target", "--tls")
    # The SDK's message says it in the SDK's words; the CLI in its flags, and once.
    assert result.err.count("is tesserad running") == 1 and "target=" not in result.err, result.err
    assert result.err.count("gRPC said: ") == 1, result.err


def test_a_port_that_says_nothing_past_the_deadline_is_not_told_to_give_timeout_more_seconds(tessera_cli):
    """No connection was ready at the deadline: the message says what to check, and a longer
    --timeout, which it also said to give, would not have helped."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel's backlog takes the connection; nothing answers on it
        silent = f"127.0.0.1:{listener.getsockname()[1]}"
        result = tessera_cli("--timeout", "1", "info", target=silent)
    assert result.code == EXIT_DAEMON, result.err
    assert result.err.startswith(
        f"tessera: DEADLINE_EXCEEDED: nothing at {silent} answered gRPC before the call's deadline"
    ), result.err
    assert "more seconds" not in result.err, result.err


def test_a_token_no_header_can_carry_fails_with_a_message_that_does_not_show_it(tessera_cli):
    result = tessera_cli("--token", "tsr_caf\u00e9-secret", "info")
    assert_failed_cleanly(result, "", "printable ASCII", "--token or TESSERA_TOKEN")
    assert "secret" not in result.err and "Invalid metadata" not in result.err


def test_models_commands(tessera_cli, model_file, tmp_path):
    pushed = tessera_cli("models", "push", "affine", str(model_file), "--set-alias", "production")
    assert pushed.code == 0 and "registered affine v1" in pushed.out
    assert tessera_cli("--json", "models", "push", "affine", str(model_file)).json()["version"] == 2
    listed = tessera_cli("models", "ls")
    assert "affine" in listed.out and "production=1" in listed.out
    assert [m["name"] for m in tessera_cli("--json", "models", "ls").json()] == ["affine"]
    shown = tessera_cli("models", "show", "affine", "--version", "production")
    assert "affine v1" in shown.out and re.search(r"input input +│ float32 \(\?, ", shown.out), shown.out
    versions = tessera_cli("--json", "models", "versions", "affine").json()
    assert [v["version"] for v in versions] == [2, 1]
    assert "staging -> v2" in tessera_cli("models", "alias", "affine", "staging", "2").out
    compared = tessera_cli("models", "compare", "affine", "1", "staging")
    assert compared.code == 0 and "v1 vs v2" in compared.out
    download = tessera_cli("models", "download", "affine", str(tmp_path / "copy.onnx"), "--version", "1")
    assert download.code == 0 and (tmp_path / "copy.onnx").read_bytes() == model_file.read_bytes()
    deployed = tessera_cli("models", "deploy", "affine", "1=90", "staging=10", "--shadow", "2")
    assert deployed.code == 0 and "revision 1" in deployed.out and "90%" in deployed.out
    assert tessera_cli("--json", "models", "deploy", "affine", "2=100").json()["revision"] == 2
    assert "revision 3" in tessera_cli("models", "rollback", "affine").out


def test_models_errors(tessera_cli, tmp_path, capsys):
    assert_failed_cleanly(tessera_cli("models", "show", "absent"), "NOT_FOUND", "absent")
    with pytest.raises(SystemExit) as usage:
        tessera_cli("models", "deploy", "m", "oops")
    assert usage.value.code == EXIT_USAGE and "argument ROUTE: route 'oops': write VERSION=PERCENT" in (
        capsys.readouterr().err
    )
    assert_failed_cleanly(tessera_cli("models", "push", "m", str(tmp_path / "none.onnx")), "", "none.onnx")


def test_a_version_written_as_the_tables_show_it_is_answered_with_how_to_name_it(tessera_cli, model_file):
    assert tessera_cli("models", "push", "affine", str(model_file)).code == 0
    for command in (
        ("models", "show", "affine", "--version", "v1"),
        ("models", "deploy", "affine", "v1=100"),
    ):
        assert_failed_cleanly(
            tessera_cli(*command),
            "NOT_FOUND",
            "no alias 'v1' (to name version 1, write 1)",
            "tessera models alias",
        )


def test_a_dataset_with_nan_is_refused_with_the_flag_that_accepts_it(tessera_cli, tmp_path):
    path = tmp_path / "nan.npz"
    np.savez(path, x=np.array([[np.nan, 1.0]], dtype=np.float32), y=np.zeros(1))
    assert_failed_cleanly(
        tessera_cli("datasets", "push", "nan", str(path)),
        "INVALID_ARGUMENT",
        "`tessera datasets push --allow-nonfinite`",
    )
    assert tessera_cli("datasets", "push", "nan", str(path), "--allow-nonfinite").code == 0


def test_datasets_commands(tessera_cli, dataset_file, capsys):
    pushed = tessera_cli(
        "datasets", "push", "table", str(dataset_file), "--split", "train=0.75", "--split", "val=0.25"
    )
    assert pushed.code == 0 and "stored table:1: 40 samples" in pushed.out and "train 30" in pushed.out
    assert "table" in tessera_cli("datasets", "ls").out
    assert tessera_cli("--json", "datasets", "ls").json()[0]["name"] == "table"
    shown = tessera_cli("datasets", "show", "table:1")
    assert "float32" in shown.out and "(40, 4)" in shown.out
    assert tessera_cli("--json", "datasets", "show", "table").json()["num_samples"] == 40
    assert_failed_cleanly(tessera_cli("datasets", "show", "absent"), "NOT_FOUND", "absent")
    with pytest.raises(SystemExit) as usage:
        tessera_cli("datasets", "push", "t", str(dataset_file), "--split", "train")
    assert usage.value.code == EXIT_USAGE
    assert "argument --split: 'train': write NAME=FRACTION" in capsys.readouterr().err


def test_predict_stats_and_serve_status(tessera_cli, client, model_file, tmp_path):
    client.models.push("affine", model_file)
    client.inference.load("affine")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    predicted = tessera_cli(
        "predict", "affine", "--input", str(inputs), "--output", str(tmp_path / "out.npz")
    )
    assert predicted.code == 0 and "affine v1" in predicted.out
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["output"], 3.0)
    as_json = tessera_cli("--json", "predict", "affine", "--input", str(inputs), "--version", "1").json()
    assert as_json["outputs"]["output"] == [[3.0] * 4] * 2
    stats = tessera_cli("stats", "affine")
    assert stats.code == 0 and "p99" in stats.out and "2 requests" in stats.out
    assert tessera_cli("--json", "stats").json()[0]["request_count"] == 2
    status = tessera_cli("serve-status")
    assert "affine" in status.out and "ready" in status.out and "instances" in status.out
    (loaded,) = tessera_cli("--json", "serve-status", "affine").json()
    assert loaded["state"] == "ready" and loaded["config"]["instances"] == 2  # a CPU's default
    mistyped = tessera_cli("predict", "afine", "--input", str(inputs))
    assert mistyped.code == EXIT_DAEMON and mistyped.err.strip() == (
        "tessera: NOT_FOUND: model 'afine' does not exist; did you mean 'affine'? "
        "Or create it with `tessera models push MODEL FILE`"
    )
    np.savez(inputs, input=np.ones((2, 3), np.float32))
    assert_failed_cleanly(
        tessera_cli("predict", "affine", "--input", str(inputs)), "INVALID_ARGUMENT", "input"
    )
    # An array named for no input: the message names the model's inputs and says how to fix it.
    np.savez(inputs, x=np.ones((2, 4), np.float32))
    misnamed = tessera_cli("predict", "affine", "--input", str(inputs))
    assert misnamed.code == EXIT_DAEMON and misnamed.err.strip() == (
        "tessera: INVALID_ARGUMENT: input 'x' is not an input of model 'affine' version 1; its "
        f"inputs are input float32[-1, 4]. In {inputs}, rename the array 'x' to the input it is "
        "for: numpy.savez(FILE, NAME=array) stores each array under its input's name (a .npy "
        "file is sent to a model's sole input, and as 'input' to one of several)"
    ), misnamed.err


SPEC = """
experiment = "cli"
task = "classification"
epochs = 2
batch_size = 8
log_every_n_steps = 1

[architecture]
input_shape = [4]
output_size = 2
mlp = {{ hidden_sizes = [8] }}

[data]
dataset = "{dataset}"
train_split = "train"
val_split = "val"

[register_as]
model = "cli-mlp"
alias = "staging"
"""


def test_train_follow_jobs_runs_and_export(tessera_cli, client, dataset_file, tmp_path):
    client.datasets.push("table", dataset_file, splits={"train": 0.75, "val": 0.25})
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(dataset="table"))
    followed = tessera_cli("train", str(spec), "--follow")
    assert followed.code == 0, followed.err
    assert "succeeded" in followed.out and "cli-mlp v1" in followed.out and "train_loss" in followed.out
    job_id = followed.out.split("submitted job ", 1)[1].split()[0]
    lines = tessera_cli("--json", "jobs", "watch", job_id).out.strip().splitlines()
    assert '"kind": "StateChanged"' in lines[0] and '"kind": "Job"' in lines[-1]
    assert job_id in tessera_cli("jobs", "ls").out
    shown = tessera_cli("jobs", "show", job_id)
    assert shown.code == 0, shown.err
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in shown.out.splitlines()
        if "│" in line
    }
    # Two epochs, a checkpoint each: the daemon's retention keeps the newest, the final one.
    assert rows["state"] == "succeeded" and rows["registered"] == "cli-mlp v1 (alias staging)"
    assert rows["checkpoints"] == "1 kept, 1 released"
    assert rows["run"] == client.training.job(job_id).run_id
    cells = [
        [c.strip() for c in line.split("│")[1:-1]] for line in shown.out.splitlines() if " final " in line
    ]
    assert [(row[0], row[2]) for row in cells] == [("2", "final")]
    assert tessera_cli("--json", "jobs", "show", job_id).json()["checkpoints"][0]["reason"] == "final"
    assert tessera_cli("--json", "jobs", "ls", "--state", "succeeded").json()[0]["job_id"] == job_id
    submitted = tessera_cli("--json", "train", str(spec)).json()
    assert submitted["job_id"] != job_id
    runs = tessera_cli("--json", "runs", "ls", "--experiment", "cli").json()
    assert len(runs) == 2
    shown = tessera_cli("runs", "show", runs[0]["run_id"])
    assert shown.code == 0 and f"run {runs[0]['run_id']}" in shown.out
    board = tessera_cli("runs", "leaderboard", "cli", "val_loss", "--mode", "min")
    assert board.code == 0 and "cli by val_loss" in board.out
    exported = tessera_cli("export", "onnx", "cli-mlp", "--version", "1", "--set-alias", "production")
    assert exported.code == 0 and "exported cli-mlp v" in exported.out
    spec.write_text(SPEC.format(dataset="table").replace("epochs = 2", "epochs = 500"))
    long_job = tessera_cli("--json", "train", str(spec)).json()["job_id"]
    cancelled = tessera_cli("jobs", "cancel", long_job)
    assert cancelled.code == 0 and f"job {long_job}" in cancelled.out


def test_jobs_cancel_says_a_queued_job_ended_and_a_running_one_stops_at_its_next_step(
    tessera_cli, dataset_file, tmp_path
):
    # One CPU slot: the second job waits in the queue behind the first.
    one_slot = InProcessDaemon(
        daemon_settings(tmp_path / "one-slot", **{"training.cpu_slots": 1, "training.threads_per_slot": 1})
    ).start()
    try:
        with tessera.Client(one_slot.target) as sdk:
            sdk.datasets.push("table", dataset_file, splits={"train": 0.75, "val": 0.25})
            path = tmp_path / "long.toml"
            # Long enough never to end by itself before its cancel, however loaded the machine.
            path.write_text(SPEC.format(dataset="table").replace("epochs = 2", "epochs = 100000"))
            spec = load_toml(path)
            running, queued = sdk.training.submit(spec), sdk.training.submit(spec)
            while running.refresh().state != tessera.JobState.RUNNING:
                time.sleep(0.05)
            cancelled = tessera_cli("jobs", "cancel", queued.id, target=one_slot.target)
            assert cancelled.code == 0 and cancelled.out == f"job {queued.id}: cancelled\n"
            stopping = tessera_cli("jobs", "cancel", running.id, target=one_slot.target)
            assert (
                stopping.code == 0
                and stopping.out == f"job {running.id}: running; it stops at its next step\n"
            )
            running.wait(check=False)
    finally:
        one_slot.stop()


def test_runs_show_tells_an_ended_runs_status_times_and_tags(tessera_cli, client):
    run = client.training.create_run(
        "cli-show", name="tagged", params={"lr": "0.1"}, tags={"team": "vision"}, create_experiment=True
    )
    client.training.update_run(run.run_id, status="failed")
    shown = tessera_cli("runs", "show", run.run_id)
    assert shown.code == 0, shown.err
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in shown.out.splitlines()
        if "│" in line
    }
    assert rows["status"] == "failed" and rows["tag team"] == "vision" and rows["param lr"] == "0.1"
    assert rows["started"] != "-" and rows["ended"] != "-"


def test_runs_show_says_how_many_metric_keys_the_daemon_left_out(tessera_cli, client):
    run = client.training.create_run("cli-show", create_experiment=True)
    # GetRun answers a run's first 2,000 keys; the table must not read as every key the run has.
    client.training.log_metrics(run.run_id, {f"class_{i:04}": 0.5 for i in range(2003)}, step=0)
    shown = tessera_cli("runs", "show", run.run_id)
    assert shown.code == 0, shown.err
    assert "metric class_1999" in shown.out and "metric class_2000" not in shown.out
    assert (
        " ".join(shown.out.split()).count("3 more keys after class_1999 (the first 2,000 by key are shown)")
        == 1
    )


def test_train_errors(tessera_cli, tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("epochs = [")
    assert_failed_cleanly(tessera_cli("train", str(spec)), "", "not valid TOML")
    spec.write_text(SPEC.format(dataset="absent"))
    result = tessera_cli("train", str(spec))
    assert result.code == EXIT_DAEMON and "absent" in result.err and "Traceback" not in result.err
    spec.write_text(SPEC.format(dataset="absent").replace("epochs = 2", 'epochs = 2\nprecision = "fp8"'))
    result = tessera_cli("train", str(spec))
    assert result.code == EXIT_DAEMON and "spec.precision: must be one of fp32, bf16, fp16" in result.err
    assert_failed_cleanly(tessera_cli("jobs", "watch", "job-nope"), "NOT_FOUND")


def test_bad_usage_exits_2(tessera_cli):
    with pytest.raises(SystemExit) as caught:
        tessera_cli("models", "frobnicate")
    assert caught.value.code == 2


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "1e400", "soon"])
def test_a_timeout_that_is_no_number_of_seconds_above_0_is_bad_usage(tessera_cli, capsys, seconds):
    # NaN and infinity used to pass and end every call at once with DEADLINE_EXCEEDED.
    with pytest.raises(SystemExit) as caught:
        tessera_cli("--timeout", seconds, "info")
    assert caught.value.code == 2
    assert "argument --timeout: seconds a call may take must be above 0" in capsys.readouterr().err


def test_demo_runs_the_whole_life_cycle(tessera_cli, daemon):
    result = tessera_cli("demo", "--samples", "64", "--epochs", "1", "--requests", "20")
    assert result.code == 0, result.err
    for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7"):
        assert step in result.out
    assert "p99" in result.out and "exported" in result.out
    # It ended at "done in N s", leaving a newcomer to find what to run on the model it made; and
    # those commands, without the --target the demo was given, went to the default address.
    tessera = f"tessera --target {daemon.target}"
    assert (
        f"next: {tessera} predict demo-cnn4d --input FILE.npz, {tessera} stats demo-cnn4d, "
        f"{tessera} models versions demo-cnn4d;" in " ".join(result.out.split())
    ), result.out


def test_synthetic_clips_need_time_to_tell_apart():
    x, y = spacetime_clips(32)
    assert x.shape == (32, 1, 4, 4, 4, 4) and set(np.unique(y)) <= {0, 1}
    # Summed over time, both classes light the same number of voxels: only motion separates them.
    assert np.isclose((x > 1.0).sum(axis=(1, 2, 3, 4, 5)).mean(), 4, atol=0.5)


def test_models_show_prints_the_versions_tags(tessera_cli, client, model_file):
    client.models.push("affine", model_file, description="scaled", tags={"team": "vision", "empty": ""})
    shown = tessera_cli("models", "show", "affine")
    assert shown.code == 0, shown.err
    assert re.search(r"│ description +│ scaled +│\n│ tag empty +│ +│\n│ tag team +│ vision +│", shown.out), (
        shown.out
    )
    assert tessera_cli("--json", "models", "show", "affine").json()["tags"] == {"team": "vision", "empty": ""}
