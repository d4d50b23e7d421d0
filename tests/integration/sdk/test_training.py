"""client.training against a real daemon: jobs with typed, resumable event streams; tracking."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import tessera
import tessera.aio


def small_spec(dataset: str, **overrides):
    spec = {
        "experiment": "sdk",
        "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
        "task": "classification",
        "data": {"dataset": dataset, "train_split": "train", "val_split": "val"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 2,
        "batch_size": 8,
        "seed": 0,
        "log_every_n_steps": 1,
        "register_as": {"model": "tiny", "alias": "staging"},
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def table(client) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    version = client.datasets.push("table", x=x, y=y, splits={"train": 0.75, "val": 0.25})
    return f"table:{version.version}"


def test_submit_watch_and_wait_register_a_version(client, table):
    job = client.training.submit(small_spec(table))
    assert job.id and job.state in (tessera.JobState.QUEUED, tessera.JobState.RUNNING)
    events = list(job.watch())
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = {type(event) for event in events}
    assert {tessera.StateChanged, tessera.StepMetrics, tessera.EpochMetrics} <= kinds
    assert any(isinstance(e, tessera.VersionRegistered) and e.model == "tiny" for e in events)
    states = [e.state for e in events if isinstance(e, tessera.StateChanged)]
    assert states[-1] == tessera.JobState.SUCCEEDED
    job.wait()
    assert job.state == tessera.JobState.SUCCEEDED
    assert job.registered is not None and job.registered.model == "tiny"
    assert client.models.version("tiny", "staging").version == job.registered.version
    assert job.id in [j.id for j in client.training.jobs(states=["succeeded"])]


def test_watch_replays_from_a_sequence_number(client, table):
    job = client.training.submit(small_spec(table)).wait()
    later = list(client.training.watch(job.id, from_seq=3))
    assert later[0].seq == 3 and later[-1].seq == job.info.last_seq


def test_watch_resumes_after_the_connection_to_the_daemon_is_cut(client, daemon, table, proxy_to):
    job = client.training.submit(small_spec(table, epochs=3))
    proxy = proxy_to(daemon.daemon.port)
    seqs = []
    retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05)
    with tessera.Client(proxy.target, retry=retry) as through_proxy:
        for event in through_proxy.training.watch(job.id):
            seqs.append(event.seq)
            if len(seqs) == 2:
                proxy.cut()
    assert proxy.cuts == 1
    assert seqs == list(range(1, len(seqs) + 1))
    assert seqs[-1] == client.training.job(job.id).info.last_seq


def test_bad_specs_name_the_field(client, table):
    with pytest.raises(tessera.InvalidArgument, match="architecture"):
        client.training.submit(small_spec(table, architecture={"input_shape": [4], "output_size": 2}))
    with pytest.raises(
        (tessera.NotFound, tessera.FailedPrecondition, tessera.InvalidArgument), match="absent"
    ):
        client.training.submit(small_spec("absent"))
    with pytest.raises(ValueError, match="spec"):
        client.training.submit({"no_such_field": 1})
    with pytest.raises(tessera.NotFound):
        client.training.job("job-nope")


def test_cancel_a_queued_or_running_job(client, table):
    job = client.training.submit(small_spec(table, epochs=50))
    job.cancel()
    job.wait(check=False, timeout=120)
    assert job.state == tessera.JobState.CANCELLED
    with pytest.raises(tessera.JobFailed, match="cancelled"):
        job.wait()


def test_tracking_for_an_external_script(client):
    experiment = client.training.create_experiment("external", description="a script outside the daemon")
    assert client.training.experiment("external").name == experiment.name
    assert "external" in [e.name for e in client.training.experiments()]
    runs = []
    for lr in ("0.1", "0.01"):
        run = client.training.create_run("external", params={"lr": lr})
        for step in range(3):
            assert client.training.log_metrics(run.run_id, {"loss": float(lr) * (3 - step)}, step) == 1
        client.training.log_params(run.run_id, {"seed": 1})
        client.training.update_run(run.run_id, status="succeeded", set_tags={"done": "yes"})
        runs.append(run.run_id)
    history = client.training.metric_history(runs[0], "loss")
    assert [p.step for p in history.points] == [0, 1, 2]
    shown = client.training.run(runs[1])
    assert shown.params["lr"] == "0.01" and shown.params["seed"] == "1" and shown.tags["done"] == "yes"
    assert {r.run_id for r in client.training.runs(experiment="external")} == set(runs)
    assert [r.run_id for r in client.training.runs(experiment="external", params={"lr": "0.1"})] == [runs[0]]
    board = client.training.leaderboard("external", "loss", mode="min")
    assert [entry.run.run_id for entry in board] == [runs[1], runs[0]]
    comparison = client.training.compare_runs(runs)
    assert any(p.key == "lr" and p.differs for p in comparison.params)
    with pytest.raises(tessera.FailedPrecondition):
        client.training.log_params(runs[0], {"lr": "0.5"})
    with pytest.raises(ValueError, match="succeeded"):
        client.training.update_run(runs[0], status="done")


def test_aio_submit_watch_and_wait(daemon, client, table):
    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            job = await aio_client.training.submit(small_spec(table))
            events = [event async for event in job.watch()]
            await job.wait()
            listed = [j.id async for j in aio_client.training.jobs()]
            return job, events, listed

    job, events, listed = asyncio.run(scenario())
    assert job.state == tessera.JobState.SUCCEEDED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert job.id in listed
