"""What `tessera demo` (and so `tessera train --follow`) prints while a job runs: each state
once, in words, and the worker's text as it is; and what Ctrl-C while following says."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from rich.console import Console

import tessera
import tessera.follow
import tessera.sweep_commands
import tessera.sweeps
import tesserad.api.training
from tessera.cli import main
from tessera.messages import load_toml
from tessera.transport import RetryPolicy
from tesserad.errors import Unavailable as DaemonUnavailable
from tesserad.training.jobs import Jobs
from tesserad.training.sweeps import Sweeps
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import upload_standard_datasets
from tests.tcp_proxy import CuttableProxy


def test_the_demo_says_each_state_once(tessera_cli):
    result = tessera_cli("demo", "--samples", "48", "--epochs", "1", "--requests", "5")
    assert result.code == 0, result.err
    lines = [line.strip() for line in result.out.splitlines()]
    assert "(cnn4d, 1 epoch)" in result.out
    assert "queued" in lines and "started on cpu:0" in lines and "finished" in lines
    for doubled in ("queued: queued", "running: started", "succeeded: finished"):
        assert doubled not in result.out
    # The summary names the last step's loss apart from the epoch's train_loss.
    assert "loss (last step)" in result.out and "train_loss" in result.out


JOB_SPEC = """\
experiment = "cli-follow"
task = "classification"
epochs = 1
data = { dataset = "table" }

[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }
"""

# About 10 s of training on one CPU slot: it is running when the daemon is killed.
RESTART_JOB_SPEC = """\
experiment = "cli-follow"
task = "classification"
epochs = 10
batch_size = 1
log_every_n_steps = 72
data = { dataset = "flat", val_split = "val" }
optimizer = { name = "adam", lr = 0.01 }

[architecture]
input_shape = [6]
output_size = 2
mlp = { hidden_sizes = [8] }
"""


SWEEP_SPEC = """\
strategy = "random"
metric = "val_loss"
max_trials = 1

[base]
experiment = "cli-follow"
task = "classification"
epochs = 1
data = { dataset = "table", val_split = "val" }

[base.architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }

[[parameters]]
path = "optimizer.lr"
range = { min = 0.001, max = 0.1 }
"""


def ctrl_c(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_while_following_a_job_leaves_it_running_and_says_how_to_follow_or_stop_it(
    tessera_cli, client, table_dataset, tmp_path, monkeypatch
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    monkeypatch.setattr(tessera.follow, "_live", ctrl_c)
    result = tessera_cli("train", str(spec), "--follow")
    assert result.code == 130 and "Traceback" not in result.err
    job_id = result.out.split("submitted job ")[1].split()[0]
    assert f"stopped following job {job_id}, which goes on" in result.err
    assert f"`tessera jobs watch {job_id}`" in result.err and f"`tessera jobs cancel {job_id}`" in result.err
    client.training.job(job_id).wait()  # raises unless the job went on to succeed


def test_ctrl_c_while_following_a_sweep_says_how_to_follow_or_stop_it(
    tessera_cli, client, table_dataset, tmp_path, monkeypatch
):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP_SPEC)
    monkeypatch.setattr(tessera.sweep_commands, "wait_live", ctrl_c)
    result = tessera_cli("sweep", str(spec), "--follow")
    assert result.code == 130 and "Traceback" not in result.err
    sweep_id = tessera_cli("--json", "sweeps", "ls").json()[0]["sweep_id"]
    assert f"stopped following sweep {sweep_id}, which goes on" in result.err
    assert f"`tessera sweeps show {sweep_id} --follow`" in result.err
    assert f"`tessera sweeps cancel {sweep_id}`" in result.err


def test_ctrl_c_while_a_sweeps_trials_are_drawn_ends_their_table_with_a_newline(
    tessera_cli, client, table_dataset, tmp_path, monkeypatch
):
    """The table's last line ("best val_loss: ...") had no newline after Ctrl-C, so the message
    on stderr, and then the shell's prompt, went on at the end of it."""
    # Ctrl-C at the first poll after the sweep's first answer, with its table drawn.
    monkeypatch.setattr(tessera.sweep_commands, "follow_polls", ctrl_c)
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP_SPEC)
    result = tessera_cli("sweep", str(spec), "--follow")
    assert result.code == 130, result.err
    assert "best val_loss" in result.out and result.out.endswith("\n"), repr(result.out[-200:])


def test_following_a_sweep_of_a_daemon_never_reached_fails_at_once(tessera_cli, monkeypatch):
    """`tessera sweeps show SWEEP --follow` with no daemon there (not started yet, a wrong
    --target) printed nothing for 2 minutes, waiting out an outage as for a restart, where
    `tessera jobs watch` said UNAVAILABLE at once."""

    def outage_waited(self: tessera.sweeps.FailingPolls) -> bool:
        raise AssertionError("waited out an outage of a daemon never reached")

    monkeypatch.setattr(tessera.sweeps.FailingPolls, "give_up", outage_waited)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{unused.getsockname()[1]}"
    result = tessera_cli("sweeps", "show", "sweep-x", "--follow", target=nobody)
    assert result.code == 3 and result.err.startswith("tessera: UNAVAILABLE: "), result.err
    assert f"is tesserad running at {nobody}?" in result.err


@pytest.mark.parametrize("stop", ["sigkill", "sigterm"])
def test_following_a_job_outlasts_a_daemon_restart(stop, spawn_daemon, tmp_path, capsys, monkeypatch):
    # The job resumes after a SIGKILL of the daemon; its follower gave up with UNAVAILABLE after
    # the SDK's 5 reconnects (about 2 s), where a sweep's follower waits up to 2 minutes. After
    # a graceful stop it gave up at once: the shutdown's INTERRUPTED ended the watch as if the
    # job had, and it then failed on "ended interrupted", or on the daemon gone (exit 1 or 3).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--listen", f"127.0.0.1:{port}", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data")]
    daemon = spawn_daemon(*args)
    address = daemon.wait_serving()
    channel = grpc.insecure_channel(address)
    upload_standard_datasets(channel)
    spec = tmp_path / "job.toml"
    spec.write_text(RESTART_JOB_SPEC)
    with tessera.Client(address) as sdk:
        job_id = sdk.training.submit(load_toml(spec)).id
    screen = io.StringIO()
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(
            main(["--target", address, "jobs", "watch", job_id], console=Console(file=screen))
        )
    )
    # The follower's own wait begins once the SDK's reconnects have given up.
    outage_waited = threading.Event()
    outage_wait = tessera.follow.Outage.wait

    def wait(self: tessera.follow.Outage, error: Exception) -> None:
        outage_waited.set()
        outage_wait(self, error)

    monkeypatch.setattr(tessera.follow.Outage, "wait", wait)
    follower.start()
    # Killed once the follower has shown the job running.
    while "started" not in screen.getvalue():
        assert follower.is_alive()
        time.sleep(0.05)
    if stop == "sigkill":
        daemon.kill()
    else:
        daemon.terminate()
        assert daemon.process.wait(60) == 0
    channel.close()
    # Down for longer than the SDK's reconnects take, as a restart of a busy daemon may be.
    while not outage_waited.wait(0.05):
        assert follower.is_alive(), capsys.readouterr().err
    spawn_daemon(*args).wait_serving()
    follower.join(timeout=300)
    assert result == [0], capsys.readouterr().err
    assert "succeeded" in screen.getvalue() and "interrupted" in screen.getvalue()


def test_following_a_job_that_stops_early_says_why(tessera_cli, table_dataset, tmp_path):
    # It ended "finished" at a fraction of its steps with nothing to say why: the worker's
    # line about the early stop was left out with every other info line.
    spec = tmp_path / "job.toml"
    # No val_loss improves by 100: the second epoch stops the job.
    spec.write_text(
        f"{JOB_SPEC.replace('epochs = 1', 'epochs = 50')}\n[early_stopping]\npatience = 1\nmin_delta = 100.0\n"
    )
    result = tessera_cli("train", str(spec), "--follow")
    assert result.code == 0, result.err
    # The worker's line, and the summary's, name the best value and the epoch it was reached in.
    assert "early stopping after epoch 2: val_loss did not improve on its best, " in result.out
    assert "after epoch 1, by more than 100.0 for 1 epoch" in result.out
    assert "training on cpu with " in result.out  # where it trains, an info line too
    assert "stopped early" in result.out
    # Once followed, `jobs show` said only "succeeded" at epoch 2 of 50.
    job_id = result.out.split("submitted job ", 1)[1].split()[0]
    stopped = tessera_cli("--json", "jobs", "show", job_id).json()["stopped_early"]
    assert {k: v for k, v in stopped.items() if k != "best"} == {
        "metric": "val_loss",
        "mode": "min",
        "best_epoch": 1,
        "epoch": 2,
        "patience": 1,
        "min_delta": 100.0,
    }
    shown = tessera_cli("jobs", "show", job_id)
    assert shown.code == 0, shown.err
    assert (
        f"after epoch 2: val_loss did not improve on its best, {stopped['best']:.6g} after epoch 1, by more "
        "than 100 for 1 epoch (early_stopping.patience)"
    ) in " ".join(shown.out.split()), shown.out


def test_following_a_job_of_a_daemon_that_stops_answering_gives_up_saying_so(
    tessera_cli, tmp_path, monkeypatch
):
    """A hung daemon (here, its connection black-holed) held the follower for ever: its watch had
    no deadline, and nor would a GetJob after it. It asks in rounds and gives up, saying why, and
    not that a longer --timeout would help."""
    # A daemon that schedules nothing: the job stays queued, quiet, with no worker to wait for.
    monkeypatch.setattr(Jobs, "_schedule_loop", lambda self: None)
    queued = InProcessDaemon(daemon_settings(tmp_path / "queued")).start()
    proxy = CuttableProxy(queued.daemon.port)
    try:
        with tessera.Client(queued.target) as sdk:
            table = tmp_path / "table.npz"
            np.savez(table, x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64))
            sdk.datasets.push("table", table)
            spec = tmp_path / "job.toml"
            spec.write_text(JOB_SPEC)
            job = sdk.training.submit(load_toml(spec))
        for name, seconds in (("WATCH_ROUND_S", 0.5), ("POLL_TIMEOUT_S", 0.3), ("_ASK_AGAIN_S", 0.1)):
            monkeypatch.setattr(tessera.follow, name, seconds)
        monkeypatch.setattr(tessera.sweeps, "FAILING_POLLS_S", 1.0)
        shown = tessera.follow.state_line

        def black_hole_once_followed(event: tessera.StateChanged) -> str:
            proxy.black_hole()
            return shown(event)

        monkeypatch.setattr(tessera.follow, "state_line", black_hole_once_followed)
        results: list[Any] = []
        follower = threading.Thread(
            target=lambda: results.append(tessera_cli("jobs", "watch", job.id, target=proxy.target)),
            daemon=True,
        )
        follower.start()
        follower.join(60)
        assert results, "the follower still waits on a daemon that does not answer"
    finally:
        proxy.close()
        queued.stop()
    [result] = results
    assert result.code == 3, result.err
    # Counted from the start of the round without an event, and the asks said as they were made.
    assert re.match(
        rf"tessera: DEADLINE_EXCEEDED: the daemon has not answered for \d+ s: asked for job {job.id} \d+ times?, "
        r"each ask given up to 0.3 s and the next made 0.1 s after one failed; gave up following it",
        result.err,
    ), result.err
    assert f"`tessera jobs watch {job.id}`" in result.err and "--timeout" not in result.err, result.err


def test_jobs_watch_looks_its_job_up_whatever_the_timeout(
    tessera_cli, client, table_dataset, tmp_path, monkeypatch
):
    """Help says watching has no limit, yet a --timeout shorter than a lookup failed `jobs watch`
    with DEADLINE_EXCEEDED on its first GetJob, before the watch began."""
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    job = client.training.submit(load_toml(spec))
    job.wait()
    real_get = Jobs.get

    def slow_get(self: Jobs, job_id: str) -> Any:
        # Ten times the --timeout below, far inside the lookup's floor.
        time.sleep(1)
        return real_get(self, job_id)

    monkeypatch.setattr(Jobs, "get", slow_get)
    result = tessera_cli("--timeout", "0.1", "jobs", "watch", job.id)
    assert result.code == 0, result.err
    assert "succeeded" in result.out


def test_following_a_sweep_looks_it_up_whatever_the_timeout(
    tessera_cli, client, table_dataset, tmp_path, monkeypatch
):
    """Help says following has no limit, as `jobs watch` has none, yet a --timeout shorter than
    a lookup failed `sweeps show --follow` with DEADLINE_EXCEEDED on its first GetSweep."""
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP_SPEC)
    sweep_id = client.training.submit_sweep(load_toml(spec)).wait(poll=0.2).id
    real_get = Sweeps.get

    def slow_get(self: Sweeps, sweep_id: str) -> Any:
        # Ten times the --timeout below, far inside the lookup's floor.
        time.sleep(1)
        return real_get(self, sweep_id)

    monkeypatch.setattr(Sweeps, "get", slow_get)
    result = tessera_cli("--timeout", "0.1", "sweeps", "show", sweep_id, "--follow")
    assert result.code == 0, result.err
    assert f"sweep {sweep_id}: succeeded" in result.out


def follow_in_a_thread(tessera_cli: Any, *args: str, target: str | None = None) -> Any:
    """`tessera ARGS` on a thread, its result; fails the test where it still follows after 30 s."""
    results: list[Any] = []
    follower = threading.Thread(target=lambda: results.append(tessera_cli(*args, target=target)), daemon=True)
    follower.start()
    follower.join(30)
    assert results, "the follower still follows"
    return results[0]


def fail_every_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every WatchJob fails UNAVAILABLE from now on while GetJob answers, as behind a proxy that
    drops each stream; the SDK's reconnects and the follower's pauses made short."""

    async def unavailable(*args: object) -> None:
        raise DaemonUnavailable("the stream's upstream went away")

    monkeypatch.setattr(tesserad.api.training, "watch_job", unavailable)
    monkeypatch.setattr(RetryPolicy, "backoff_s", lambda self, retry: 0.01)
    monkeypatch.setattr(tessera.follow, "_ASK_AGAIN_S", 0.1)
    monkeypatch.setattr(tessera.sweeps, "FAILING_POLLS_S", 1.0)


def test_following_a_job_whose_watch_keeps_failing_gives_up_though_the_daemon_answers(
    tessera_cli, tmp_path, monkeypatch
):
    """Each GetJob answered restarted the outage's count: the follower watched again for ever."""
    with daemon_of_a_queued_job(tmp_path, monkeypatch) as (queued, job_id):
        fail_every_watch(monkeypatch)
        result = follow_in_a_thread(tessera_cli, "jobs", "watch", job_id, target=queued.target)
    assert result.code == 3, result.err
    assert result.err.startswith(f"tessera: UNAVAILABLE: watching job {job_id} has failed for "), result.err
    assert "while the daemon answered" in result.err and "the stream's upstream went away" in result.err


def test_following_a_job_that_ended_while_its_watch_fails_prints_its_summary(
    tessera_cli, tmp_path, monkeypatch
):
    """GetJob said the job had ended, and the follower watched again all the same, for ever."""
    with daemon_of_a_queued_job(tmp_path, monkeypatch) as (queued, job_id):
        with tessera.Client(queued.target) as sdk:
            sdk.training.cancel(job_id)
        fail_every_watch(monkeypatch)
        result = follow_in_a_thread(tessera_cli, "jobs", "watch", job_id, target=queued.target)
    # A job followed to an end other than success fails the command, saying how it ended.
    assert result.code == 1 and f"job {job_id} ended cancelled" in result.err, result.err
    assert f"job {job_id}" in result.out and "cancelled" in result.out, result.out


def test_following_a_job_that_a_daemon_at_its_stream_limit_refuses_to_watch_fails_saying_so(
    tmp_path, tessera_cli, monkeypatch
):
    """RESOURCE_EXHAUSTED was asked again, GetJob answered each time: the follower never ended."""
    monkeypatch.setattr(RetryPolicy, "backoff_s", lambda self, retry: 0.01)
    with (
        daemon_of_a_queued_job(tmp_path, monkeypatch, **{"limits.max_concurrent_streams": 1}) as (
            full,
            job_id,
        ),
        tessera.Client(full.target) as sdk,
    ):
        # The one stream allowed, held open by another watcher (until its client closes).
        held = iter(sdk.training.watch(job_id))
        next(held)
        result = follow_in_a_thread(tessera_cli, "jobs", "watch", job_id, target=full.target)
        del held
    assert result.code != 0
    assert "RESOURCE_EXHAUSTED" in result.err and "limits.max_concurrent_streams" in result.err, result.err


@contextlib.contextmanager
def daemon_of_a_queued_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[tuple[InProcessDaemon, str]]:
    """A daemon of `settings` that schedules nothing, and a job queued there, quiet, for ever."""
    monkeypatch.setattr(Jobs, "_schedule_loop", lambda self: None)
    running = InProcessDaemon(daemon_settings(tmp_path / "queued", **settings)).start()
    try:
        with tessera.Client(running.target) as sdk:
            table = tmp_path / "table.npz"
            np.savez(table, x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64))
            sdk.datasets.push("table", table)
            spec = tmp_path / "job.toml"
            spec.write_text(JOB_SPEC)
            job_id = sdk.training.submit(load_toml(spec)).id
        yield running, job_id
    finally:
        running.stop()
