"""`tessera sweep SPEC.toml --follow` and `tessera sweeps ls|show|cancel` against a real daemon."""

from __future__ import annotations

import io
import socket
import threading
import time

import grpc
from rich.console import Console

import tessera
import tessera.sweep_commands
from tessera.cli import EXIT_DAEMON, EXIT_FAILED, main
from tessera.messages import load_toml
from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.errors import NotFound, ResourceExhausted
from tesserad.training.jobs import Jobs
from tests.integration.training.conftest import upload_standard_datasets

SPEC = """\
strategy = "tpe"
pruner = "asha"
metric = "val_loss"
max_trials = 3
max_concurrent = 2
seed = 1

[asha]
min_epochs = 1
reduction_factor = 2

[base]
experiment = "cli-sweeps"
task = "classification"
epochs = 2
batch_size = 16
data = { dataset = "table", val_split = "val" }
optimizer = { name = "adam", lr = 0.01 }

[base.architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }

[[parameters]]
path = "optimizer.name"
values = { values = ["adam", "sgd"] }

[[parameters]]
path = "optimizer.momentum"
range = { min = 0.5, max = 0.9 }
when = { path = "optimizer.name", values = ["sgd"] }

[[parameters]]
path = "optimizer.lr"
range = { min = 0.001, max = 0.1, log_scale = true }
"""

# Two trials long enough to be running when the daemon is killed.
RESTART_SPEC = """\
strategy = "random"
metric = "val_loss"
max_trials = 2
max_concurrent = 2

[base]
experiment = "cli-sweeps"
task = "classification"
epochs = 20
batch_size = 1
log_every_n_steps = 72
data = { dataset = "flat", val_split = "val" }
optimizer = { name = "adam", lr = 0.01 }

[base.architecture]
input_shape = [6]
output_size = 2
mlp = { hidden_sizes = [8] }

[[parameters]]
path = "optimizer.lr"
range = { min = 0.001, max = 0.1, log_scale = true }
"""


def test_sweep_follow_shows_trials_then_a_leaderboard_and_a_plot(tessera_cli, table_dataset, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC)
    result = tessera_cli("sweep", str(spec), "--follow")
    assert result.code == 0, result.err
    (tmp_path.parent / "sweep_out.txt").write_text(result.out)
    assert "(tpe + asha, seed 1)" in result.out and "succeeded" in result.out
    assert "rank" in result.out and "best val_loss so far" in result.out and "trials" in result.out
    listed = tessera_cli("--json", "sweeps", "list").json()
    sweep_id = listed[0]["sweep_id"]
    assert [t["number"] for t in listed[0]["trials"]] == [0, 1, 2]
    shown = tessera_cli("sweeps", "show", sweep_id)
    assert shown.code == 0 and sweep_id in shown.out and "momentum=" in shown.out + "name=adam"
    assert "tpe + asha" in tessera_cli("sweeps", "ls").out
    cancelled = tessera_cli("sweeps", "cancel", sweep_id)
    assert cancelled.code == EXIT_DAEMON and "already ended (succeeded)" in cancelled.err


def test_sweep_spec_problems_are_reported_by_file_and_line(tessera_cli, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        SPEC.replace('strategy = "tpe"', 'strategy = "bayes"').replace("max_trials = 3", "max_trial = 3")
    )
    result = tessera_cli("sweep", str(spec))
    assert result.code == 1 and "Traceback" not in result.err
    assert f"{spec}:1" in result.err and "bayes" in result.err
    assert f"{spec}:4" in result.err and "max_trials" in result.err


def test_a_refused_sweep_names_the_combination(tessera_cli, table_dataset, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.replace('strategy = "tpe"', 'strategy = "pbt"'))
    result = tessera_cli("sweep", str(spec))
    assert result.code == EXIT_DAEMON
    assert (
        result.err.startswith("tessera: INVALID_ARGUMENT: ")
        and "PBT cannot be combined with ASHA" in result.err
    )


def test_follow_outlasts_a_daemon_restart(spawn_daemon, tmp_path, capsys, monkeypatch):
    # The sweep survives a SIGKILL of the daemon; its follower gave up with UNAVAILABLE at the
    # first poll that found the daemon gone (gRPC's retries span about a second, a restart more).
    # Its first answer is not waited for (a daemon never reached is said at once), so the kill
    # comes once the follower has had it, as `jobs watch`'s comes once it has shown the job.
    follow_polls = tessera.sweep_commands.follow_polls
    first_answered = threading.Event()

    def after_the_first_answer(sweep, poll, seen, settled):
        first_answered.set()
        return follow_polls(sweep, poll, seen, settled)

    monkeypatch.setattr(tessera.sweep_commands, "follow_polls", after_the_first_answer)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--listen", f"127.0.0.1:{port}", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data")]
    daemon = spawn_daemon(*args)
    address = daemon.wait_serving()
    channel = grpc.insecure_channel(address)
    upload_standard_datasets(channel)
    spec = tmp_path / "sweep.toml"
    spec.write_text(RESTART_SPEC)
    # Submitted first, so that the kill cannot cut the submit (which is not retried) short.
    with tessera.Client(address) as sdk:
        sweep_id = sdk.training.submit_sweep(load_toml(spec)).id
    screen = io.StringIO()
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(
            main(["--target", address, "sweeps", "show", sweep_id, "--follow"], console=Console(file=screen))
        )
    )
    follower.start()
    assert first_answered.wait(timeout=60)
    training = training_pb2_grpc.TrainingStub(channel)
    deadline = time.monotonic() + 60
    while not any(
        j.state == training_pb2.JOB_STATE_RUNNING
        for j in training.ListJobs(training_pb2.ListJobsRequest(sweep_id=sweep_id)).jobs
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    daemon.kill()
    channel.close()
    spawn_daemon(*args).wait_serving()
    follower.join(timeout=300)
    assert result == [0], capsys.readouterr().err
    assert "succeeded" in screen.getvalue()


def test_a_refused_alias_names_the_command_once(tessera_cli, table_dataset, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        SPEC.replace(
            'experiment = "cli-sweeps"',
            'experiment = "cli-sweeps"\nregister_as = { model = "tuned", alias = "prod" }',
        )
    )
    result = tessera_cli("sweep", str(spec))
    assert result.code == EXIT_DAEMON
    assert result.err.count("`tessera models alias MODEL ALIAS VERSION`") == 1, result.err
    assert "SetAlias" not in result.err


def test_a_sweeps_values_may_be_numbers(tessera_cli, table_dataset, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        SPEC.split("[[parameters]]")[0]
        .replace('strategy = "tpe"', 'strategy = "grid"')
        .replace('pruner = "asha"\n', "")
        .replace("[asha]\nmin_epochs = 1\nreduction_factor = 2\n", "")
        + '[[parameters]]\npath = "optimizer.lr"\nvalues = { values = [0.001, 1e-2, 0.05] }\n'
    )
    shown = tessera_cli("--json", "sweep", str(spec))
    assert shown.code == 0, shown.err
    sweep = shown.json()
    assert [t["params"]["optimizer.lr"] for t in sweep["trials"]] == ["0.001", "0.01", "0.05"]
    tessera_cli("sweeps", "cancel", sweep["sweep_id"])


def test_a_sweep_cancel_names_each_trial_it_could_not_cancel_on_a_line_of_its_own(
    tessera_cli, table_dataset, tmp_path, monkeypatch
):
    # The trials were joined by "; " on one line, of which the CLI puts the fix that ends it in
    # its words: an earlier trial's fix ("ListJobs lists them") stayed in the API's.
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        SPEC.split("[[parameters]]")[0]
        .replace('strategy = "tpe"', 'strategy = "grid"')
        .replace('pruner = "asha"\n', "")
        .replace("[asha]\nmin_epochs = 1\nreduction_factor = 2\n", "")
        .replace("max_concurrent = 2", "max_concurrent = 4")
        .replace("epochs = 2", "epochs = 0\nmax_steps = 1000000")
        + '[[parameters]]\npath = "seed"\nvalues = { values = [1, 2, 3, 4] }\n'
    )
    submitted = tessera_cli("--json", "sweep", str(spec))
    assert submitted.code == 0, submitted.err
    sweep = submitted.json()
    full, gone = (t["job_id"] for t in sweep["trials"][1:3])
    accept = Jobs._accept_cancel

    def failing_accept(self, job_id):
        if job_id == full:
            raise ResourceExhausted("the store is full")
        if job_id == gone:  # as Jobs.get says it of a job it has no record of
            raise NotFound(f"job {job_id!r} does not exist; ListJobs lists them")
        return accept(self, job_id)

    monkeypatch.setattr(Jobs, "_accept_cancel", failing_accept)
    cancelled = tessera_cli("sweeps", "cancel", sweep["sweep_id"])
    monkeypatch.undo()
    for job_id in (full, gone):
        tessera_cli("jobs", "cancel", job_id)
    assert cancelled.code == EXIT_DAEMON
    assert cancelled.err == (
        f"tessera: RESOURCE_EXHAUSTED: sweep {sweep['sweep_id']} is cancelled and its other trials' "
        "jobs were cancelled, but 2 could not be and run on until they end; cancel them with "
        "`tessera jobs cancel JOB_ID`, or restart tesserad, which cancels them at its start:\n"
        f"  trial 1 (job {full}): the store is full\n"
        f"  trial 2 (job {gone}): job '{gone}' does not exist; `tessera jobs ls` lists them\n"
    )


def test_the_leaderboard_names_the_version_each_trial_registered(
    tessera_cli, client, daemon, table_dataset, tmp_path
):
    # Promoting the best trial takes its version: the leaderboard names it, so that neither the
    # trial's job nor the model's versions need to be looked through for it.
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        SPEC.split("[[parameters]]")[0]
        .replace('strategy = "tpe"', 'strategy = "grid"')
        .replace('pruner = "asha"\n', "")
        .replace("[asha]\nmin_epochs = 1\nreduction_factor = 2\n", "")
        .replace("max_trials = 3", "max_trials = 2")
        .replace('experiment = "cli-sweeps"', 'experiment = "cli-sweeps"\nregister_as = { model = "tuned" }')
        + '[[parameters]]\npath = "optimizer.lr"\nvalues = { values = [0.001, 0.01] }\n'
    )
    followed = tessera_cli("sweep", str(spec), "--follow")
    assert followed.code == 0, followed.err
    sweep_id = tessera_cli("--json", "sweeps", "ls").json()[0]["sweep_id"]
    shown = tessera_cli("sweeps", "show", sweep_id)
    for result in (followed, shown):
        board = result.out[result.out.index(f"sweep {sweep_id}: succeeded") :]
        header = next(line for line in board.splitlines() if "rank" in line)
        assert "registered" in header
        rows = [line.split("│")[1:-1] for line in board.splitlines() if line.startswith("│")]
        registered = {row[-1].strip(): row[-2].strip() for row in rows}
        assert registered == {
            job_id: f"tuned v{client.training.job(job_id).registered.version}" for job_id in registered
        }
        assert sorted(registered.values()) == ["tuned v1", "tuned v2"]
    # The versions the trials registered, told apart by the job that trained each.
    versions = tessera_cli("models", "versions", "tuned")
    assert versions.code == 0, versions.err
    header = next(line for line in versions.out.splitlines() if "version" in line and "┃" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]][:2] == ["version", "source"]
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in versions.out.splitlines()
        if line.startswith("│")
    ]
    assert {row[0]: row[1] for row in rows} == {
        f"{v.version}": v.lineage.job_id for v in client.models.versions("tuned")
    }
    # At 80 columns the job ids stay whole; the description is what gives way, as it was.
    screen = io.StringIO()
    narrow = Console(file=screen, width=80, force_terminal=False, color_system=None)
    assert main(["--target", daemon.target, "models", "versions", "tuned"], console=narrow) == 0
    text = screen.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for version in client.models.versions("tuned"):
        assert any(f"│ {version.lineage.job_id} │" in line for line in text.splitlines()), text


def test_a_followed_sweep_that_is_cancelled_ends_on_its_trials_settled_states(
    daemon, client, table_dataset, tmp_path, monkeypatch
):
    # A cancel ends the sweep at once; its running trials stop at their next step, after. The
    # follower stopped at the sweep's end and printed a trial "running" under "cancelled".
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        SPEC.split("[[parameters]]")[0]
        .replace('strategy = "tpe"', 'strategy = "grid"')
        .replace('pruner = "asha"\n', "")
        .replace("[asha]\nmin_epochs = 1\nreduction_factor = 2\n", "")
        .replace("max_trials = 3", "max_trials = 2")
        .replace("epochs = 2", "epochs = 0\nmax_steps = 1000000")
        + '[[parameters]]\npath = "seed"\nvalues = { values = [1, 2] }\n'
    )
    sweep_id = client.training.submit_sweep(load_toml(spec)).id
    follow_polls = tessera.sweep_commands.follow_polls
    first_answered, saw_cancelled = threading.Event(), threading.Event()

    def noting_the_cancel(sweep, poll, seen, settled):
        first_answered.set()

        def noted(info):
            if info.state == training_pb2.SWEEP_STATE_CANCELLED:
                saw_cancelled.set()
            seen(info)

        return follow_polls(sweep, poll, noted, settled)

    monkeypatch.setattr(tessera.sweep_commands, "follow_polls", noting_the_cancel)
    screen = io.StringIO()
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(
            main(
                ["--target", daemon.target, "sweeps", "show", sweep_id, "--follow"],
                console=Console(file=screen, width=160, force_terminal=False, color_system=None),
            )
        )
    )
    follower.start()
    deadline = time.monotonic() + 60
    while sum(j.state.value == "running" for j in client.training.jobs(sweep_id=sweep_id)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    jobs = [t.job_id for t in client.training.sweep(sweep_id).trials()]
    assert first_answered.wait(timeout=60)
    # The trials' jobs take their cancel late: the sweep has ended while they still run.
    with monkeypatch.context() as late:
        late.setattr(Jobs, "cancel_all", lambda self, job_ids: [])
        client.training.cancel_sweep(sweep_id)
    assert saw_cancelled.wait(timeout=60)
    for job_id in jobs:
        client.training.cancel(job_id)
    follower.join(timeout=120)
    assert result == [EXIT_FAILED]
    text = screen.getvalue()
    final = text[text.rindex(f"sweep {sweep_id} (grid") :]
    assert ": cancelled" in final.splitlines()[0] and "running" not in final, text
    assert final.count("cancelled") >= 3, text
