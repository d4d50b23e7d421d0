"""The `Sweep` handle against a real daemon: typed state and trials, the best trial, wait (with
its timeout, and its errors for a sweep that failed or was cancelled) and cancel, sync and aio."""

from __future__ import annotations

import asyncio
import pickle
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import tessera
import tessera.aio
from tessera.v1 import training_pb2 as pb
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.sdk.test_stream_restarts import restarted, wait_reachable
from tests.readme_blocks import code_blocks

CLIENT_README = Path(__file__).resolve().parents[3] / "clients" / "python" / "README.md"


def dataset_of(client: tessera.Client) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    version = client.datasets.push("table", x=x, y=y, splits={"train": 0.75, "val": 0.25})
    return f"table:{version.version}"


@pytest.fixture
def table(client) -> str:
    return dataset_of(client)


def sweep_spec(table: str, epochs: int = 1, lrs: tuple[str, ...] = ("0.001", "0.05")) -> dict:
    return {
        "base": {
            "experiment": "sweeps",
            "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
            "task": "classification",
            "data": {"dataset": table, "train_split": "train", "val_split": "val"},
            "optimizer": {"name": "adam", "lr": 0.01},
            "epochs": epochs,
            "batch_size": 8,
            "seed": 0,
        },
        "strategy": "grid",
        "parameters": [{"path": "optimizer.lr", "values": {"values": list(lrs)}}],
        "max_concurrent": 2,
        "metric": "val_loss",
    }


def test_a_sweep_waited_for_has_typed_trials_and_names_its_best(client, table):
    sweep = client.training.submit_sweep(sweep_spec(table))
    assert isinstance(sweep, tessera.Sweep) and sweep.id == sweep.info.sweep_id
    assert sweep.state == tessera.SweepState.RUNNING and sweep.state == "running"
    assert sweep.wait(poll=0.2) is sweep
    assert sweep.state is tessera.SweepState.SUCCEEDED
    trials = sweep.trials()
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state is tessera.JobState.SUCCEEDED and t.metric is not None for t in trials)
    assert sorted(t.params["optimizer.lr"] for t in trials) == [0.001, 0.05]  # floats, as Optuna gives
    best = sweep.best()
    assert best is not None and best.job_id == sweep.info.best_job_id
    assert best.metric == min(t.metric for t in trials)  # val_loss: lowest is best
    listed = [s for s in client.training.sweeps() if s.id == sweep.id]
    assert len(listed) == 1 and listed[0].state is tessera.SweepState.SUCCEEDED
    fetched = client.training.sweep(sweep.id)
    assert fetched.best() == best
    assert re.fullmatch(rf"Sweep\('{sweep.id}', state='succeeded', trials=2\)", repr(fetched))
    with pytest.raises(tessera.FailedPrecondition):
        sweep.cancel()


def test_a_wait_that_times_out_says_the_sweep_goes_on_and_cancel_ends_it(client, table):
    sweep = client.training.submit_sweep(sweep_spec(table, epochs=100_000))
    try:
        with pytest.raises(tessera.StillRunning) as caught:
            sweep.wait(timeout=1, poll=0.2)
        assert isinstance(caught.value, tessera.DeadlineExceeded) and isinstance(caught.value, TimeoutError)
        assert caught.value.message == (
            f"sweep {sweep.id} is still running after 1 s, the timeout given to wait(); it goes on: "
            "call wait() again to wait longer, or cancel() to stop it"
        )
        assert caught.value.sweep_id == sweep.id
    finally:
        assert sweep.cancel() is sweep
    assert sweep.state is tessera.SweepState.CANCELLED
    with pytest.raises(tessera.SweepCancelled, match=rf"sweep {sweep.id} was cancelled") as cancelled:
        sweep.wait(poll=0.2)
    assert isinstance(cancelled.value, tessera.SweepFailed) and cancelled.value.sweep is sweep
    assert sweep.wait(check=False, poll=0.2).state is tessera.SweepState.CANCELLED
    # Pickled, the sweep becomes its final state, the Sweep message: the handle holds a channel.
    unpickled = pickle.loads(pickle.dumps(cancelled.value))
    assert type(unpickled) is tessera.SweepCancelled and unpickled.sweep == sweep.info


def test_code_written_for_the_sweep_message_still_reads_the_handle(client, table):
    sweep = client.training.submit_sweep(sweep_spec(table))
    with pytest.warns(DeprecationWarning, match=r"Sweep\.sweep_id is deprecated: use Sweep\.id"):
        assert sweep.sweep_id == sweep.id
    # A polling loop written for the tessera.v1 Sweep the calls returned before the handle.
    while sweep.state == pb.SWEEP_STATE_RUNNING:
        time.sleep(0.2)
        sweep = client.training.sweep(sweep.id)
    assert sweep.state == pb.SWEEP_STATE_SUCCEEDED and sweep.state == "succeeded"
    best = sweep.best()
    with pytest.warns(DeprecationWarning, match=r"use Sweep\.info\.best_job_id"):
        assert best is not None and sweep.best_job_id == best.job_id
    with pytest.warns(DeprecationWarning, match=r"use Sweep\.info\.error"):
        assert sweep.error == ""
    with pytest.raises(AttributeError, match="no_such_field"):
        _ = sweep.no_such_field


def test_a_wait_without_a_timeout_outlasts_polls_that_fail(daemon, table, proxy_to):
    proxy = proxy_to(int(daemon.target.rsplit(":", 1)[1]))
    with tessera.Client(proxy.target, timeout=0.5) as sdk:
        sweep = sdk.training.submit_sweep(sweep_spec(table))
        # Polls go unanswered (their deadline passes), then their connection ends (UNAVAILABLE),
        # then a new one answers.
        proxy.black_hole()
        reopen = threading.Timer(2, proxy.cut)
        reopen.start()
        try:
            assert sweep.wait(poll=0.2) is sweep
        finally:
            reopen.join()
    assert sweep.state is tessera.SweepState.SUCCEEDED


def _looked_up(sdk: tessera.Client, sweep_id: str) -> tessera.Sweep:
    """The sweep through a client whose 0.5 s deadline a loaded machine may pass before the proxy
    is cut: the lookup is set-up, not what the test checks."""
    for _ in range(20):
        try:
            return sdk.training.sweep(sweep_id)
        except tessera.DeadlineExceeded:
            continue
    return sdk.training.sweep(sweep_id)


def test_a_wait_without_a_timeout_gives_up_on_polls_failing_past_the_window_with_the_last_error(
    client, table, proxy_to, monkeypatch
):
    # A daemon that never answers again: the wait asked it for ever.
    monkeypatch.setattr(tessera.sweeps, "FAILING_POLLS_S", 2.0)
    sweep = client.training.submit_sweep(sweep_spec(table, epochs=100_000))
    proxy = proxy_to(int(client.target.rsplit(":", 1)[1]))
    try:
        with tessera.Client(proxy.target, timeout=0.5) as sdk:
            waited = _looked_up(sdk, sweep.id)
            proxy.black_hole()
            with pytest.raises(tessera.DeadlineExceeded) as caught:
                waited.wait(poll=0.2)
        assert not isinstance(caught.value, tessera.StillRunning)
        # Said as what it is: nothing answered for the window, which a longer deadline would not fix.
        assert isinstance(caught.value, tessera.NotAnswering), caught.value
        assert f"gave up waiting for sweep {sweep.id}: its polls failed for 2 s in a row" in str(caught.value)
    finally:
        sweep.cancel()


def test_a_wait_with_a_timeout_past_the_window_outlasts_polls_failing_until_it(
    client, table, proxy_to, monkeypatch
):
    # It gave up once the polls had failed for FAILING_POLLS_S, the timeout given not reached.
    monkeypatch.setattr(tessera.sweeps, "FAILING_POLLS_S", 1.0)
    sweep = client.training.submit_sweep(sweep_spec(table, epochs=100_000))
    proxy = proxy_to(int(client.target.rsplit(":", 1)[1]))
    try:
        with tessera.Client(proxy.target, timeout=0.5) as sdk:
            waited = _looked_up(sdk, sweep.id)
            proxy.close()
            with pytest.raises(tessera.StillRunning, match=r"after 3 s, the timeout given to wait\(\)"):
                waited.wait(timeout=3, poll=0.2)
    finally:
        sweep.cancel()


def test_an_aio_wait_outlasts_a_daemon_restarted_on_the_same_port(tmp_path):
    data_dir = tmp_path / "data"
    daemons = [InProcessDaemon(daemon_settings(data_dir)).start()]
    target = daemons[0].target
    waiting, outcome = threading.Event(), []

    async def wait(sweep_id: str) -> None:
        async with tessera.aio.Client(target) as aio_client:
            sweep = await aio_client.training.sweep(sweep_id)
            waiting.set()
            await sweep.wait(poll=0.2)

    def waiter(sweep_id: str) -> None:
        try:
            asyncio.run(wait(sweep_id))
        except BaseException as error:
            outcome.append(error)

    try:
        with tessera.Client(target) as sdk:
            sweep = sdk.training.submit_sweep(sweep_spec(dataset_of(sdk), epochs=100_000))
            follower = threading.Thread(target=waiter, args=(sweep.id,))
            follower.start()
            while not any(t.state is tessera.JobState.RUNNING for t in sweep.refresh().trials()):
                time.sleep(0.05)
        assert waiting.wait(60)
        # The wait's polls fail while the daemon is down; the restarted one answers them.
        daemons.append(restarted(daemons[0], data_dir))
        with tessera.Client(target) as sdk:
            wait_reachable(sdk)
            sdk.training.cancel_sweep(sweep.id)
        follower.join(120)
        assert len(outcome) == 1 and isinstance(outcome[0], tessera.SweepCancelled), outcome
    finally:
        daemons[-1].stop()


def _worker_pids() -> set[int]:
    """The daemon's job workers: the children of its fork server (training.worker_start)."""
    return {
        child.pid
        for child in psutil.Process().children(recursive=True)
        if "forkserver" in " ".join(child.parent().cmdline())
    }


def test_a_sweep_that_ended_failed_raises_sweep_failed_saying_why(client, table):
    sweep = client.training.submit_sweep(sweep_spec(table, epochs=100_000))
    deadline = time.monotonic() + 120
    while len(_worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # Workers that crash fail their trials' jobs: no trial succeeds.
    for pid in _worker_pids():
        psutil.Process(pid).send_signal(signal.SIGSEGV)
    with pytest.raises(tessera.SweepFailed) as caught:
        sweep.wait(poll=0.2)
    assert type(caught.value) is tessera.SweepFailed and caught.value.sweep is sweep
    assert str(caught.value) == f"sweep {sweep.id} ended failed: {sweep.info.error}"
    assert sweep.info.error.startswith("no trial succeeded: 2 failed")
    assert [t.state for t in sweep.trials()] == [tessera.JobState.FAILED] * 2
    assert sweep.best() is None


def test_wait_refuses_a_poll_or_timeout_it_cannot_keep(client, table):
    sweep = client.training.submit_sweep(sweep_spec(table))
    with pytest.raises(ValueError, match="poll must be seconds above 0"):
        sweep.wait(poll=0)
    with pytest.raises(ValueError, match="timeout must be seconds above 0"):
        sweep.wait(timeout=0)
    sweep.wait(poll=0.2)


def test_aio_sweep_handle(daemon, client, table):
    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            sweep = await aio_client.training.submit_sweep(sweep_spec(table, epochs=100_000))
            with pytest.raises(tessera.StillRunning, match=r"is still running after 0\.5 s"):
                await sweep.wait(timeout=0.5, poll=0.1)
            await sweep.cancel()
            with pytest.raises(tessera.SweepCancelled):
                await sweep.wait(poll=0.1)
            fetched = await aio_client.training.sweep(sweep.id)
            refreshed = await fetched.refresh()
            listed = [s.id async for s in aio_client.training.sweeps()]
            return sweep, refreshed, listed

    sweep, refreshed, listed = asyncio.run(scenario())
    assert isinstance(sweep, tessera.aio.Sweep)
    assert refreshed.state is tessera.SweepState.CANCELLED and sweep.id in listed


def test_the_readme_sweep_example_runs_as_written(client, table):
    (block,) = [
        b
        for b in code_blocks(CLIENT_README.read_text(encoding="utf-8"), "The SDK", {"python"})
        if "submit_sweep" in b
    ]
    exec(block, {"client": client, "sweep_spec": sweep_spec(table), "tessera": tessera})
