"""client.training against a real daemon: jobs with typed, resumable event streams; tracking."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

import tessera
import tessera.aio
from tessera.v1 import registry_pb2


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
    # Its run follows the job: no reopening it.
    with pytest.raises(tessera.FailedPrecondition, match=f"belongs to job {job.id}"):
        client.training.start_run(run_id=job.run_id)
    assert client.training.run(job.run_id).metrics["val_loss"] == job.info.metrics["val_loss"]


def test_the_watch_end_and_the_jobs_listed_say_why_early_stopping_ended_a_job(client, table):
    early = {"metric": "val_loss", "patience": 1, "min_delta": 100.0}
    spec = small_spec(table, experiment="sdk-early", epochs=50, early_stopping=early, register_as={})
    job = client.training.submit(spec)
    end = [e for e in job.watch() if isinstance(e, tessera.StateChanged)][-1]
    job.wait()
    assert job.stopped_early is not None and job.stopped_early.epoch == 2
    assert end.state == tessera.JobState.SUCCEEDED and end.stopped_early == job.stopped_early
    (listed,) = client.training.jobs(experiment="sdk-early")
    assert listed.stopped_early == job.stopped_early


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


def test_precision_from_a_spec_dict(client, table):
    job = client.training.submit(small_spec(table, precision="bf16", register_as={}))
    events = list(job.watch())
    job.wait()
    assert job.state == tessera.JobState.SUCCEEDED
    logs = [e.message for e in events if isinstance(e, tessera.LogLine)]
    assert any(m.startswith("training on cpu") and "bf16" in m for m in logs), logs
    with pytest.raises(tessera.InvalidArgument, match=r"spec\.precision: fp16 trains on CUDA devices only"):
        client.training.submit(small_spec(table, precision="fp16"))


def test_cancel_a_queued_or_running_job(client, table):
    job = client.training.submit(small_spec(table, epochs=50))
    job.cancel()
    job.wait(check=False, timeout=120)
    assert job.state == tessera.JobState.CANCELLED
    # States read once: the first page's call read a generator, and the listing then asked for
    # every job.
    # Other jobs on the daemon may be cancelled too: this one is listed, and none in another state.
    cancelled = list(client.training.jobs(states=(s for s in ["cancelled"])))
    assert job.id in [j.id for j in cancelled]
    assert all(j.state == tessera.JobState.CANCELLED for j in cancelled)
    assert list(client.training.jobs(states=(s for s in ["running", "queued"]))) == []
    with pytest.raises(tessera.JobCancelled, match=rf"^job {job.id} was cancelled") as caught:
        job.wait()
    # Code written for JobFailed keeps catching it, and one base catches every SDK error.
    assert isinstance(caught.value, tessera.JobFailed) and isinstance(caught.value, tessera.Error)
    assert caught.value.job is job
    assert issubclass(tessera.TesseraError, tessera.Error) and not issubclass(
        tessera.JobFailed, tessera.TesseraError
    )


def test_tracking_for_an_external_script(client):
    experiment = client.training.create_experiment("external", description="a script outside the daemon")
    assert client.training.experiment("external").name == experiment.name
    assert "external" in [e.name for e in client.training.experiments()]
    runs = []
    for lr in ("0.1", "0.01"):
        run = client.training.create_run("external", params={"lr": lr}, create_experiment=True)
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
    with pytest.raises(tessera.FailedPrecondition, match="already has lr"):
        client.training.log_params(runs[0], {"lr": "0.5"})
    with pytest.raises(ValueError, match="succeeded"):
        client.training.update_run(runs[0], status="done")


def test_log_metrics_takes_mlflows_timestamp_and_names_the_key_of_a_value_that_is_no_number(client):
    run_id = client.training.create_run("external-times", create_experiment=True).run_id
    # As MLflow's: whole milliseconds since the Unix epoch; numpy's integers are whole numbers too.
    assert client.training.log_metrics(run_id, {"loss": 0.5}, 0, timestamp=1_700_000_000_123) == 1
    assert client.training.log_metrics(run_id, {"loss": 0.4}, 1, timestamp=np.int64(1_700_000_001_000)) == 1
    client.training.log_metrics(run_id, {"loss": 0.3}, 2)
    points = client.training.metric_history(run_id, "loss").points
    assert [p.time.ToMilliseconds() for p in points[:2]] == [1_700_000_000_123, 1_700_000_001_000]
    assert points[2].time.ToMilliseconds() > 1_700_000_001_000  # the daemon's clock
    for timestamp, error, words in (
        (1.7e12, TypeError, "timestamp must be whole milliseconds since the Unix epoch, as MLflow's"),
        (True, TypeError, "got bool True"),
        (-1, ValueError, "from 0 to 253402300799999 (the end of year 9999), got -1"),
        (253_402_300_800_000, ValueError, "got 253402300800000"),
    ):
        with pytest.raises(error, match=re.escape(words)):
            client.training.log_metrics(run_id, {"loss": 0.1}, 3, timestamp=timestamp)
    # float()'s own error named neither the key nor what was given.
    with pytest.raises(ValueError, match=re.escape("metric val_acc: value must be a number, got str 'high'")):
        client.training.log_metrics(run_id, {"loss": 0.1, "val_acc": "high"}, 3)
    with pytest.raises(
        TypeError, match=re.escape("metric val_acc: value must be a number, got NoneType None")
    ):
        client.training.log_metrics_stream(run_id, [(3, {"val_acc": None})])
    assert [p.step for p in client.training.metric_history(run_id, "loss").points] == [0, 1, 2]


def test_params_and_tags_of_any_value_are_sent_as_text_everywhere(client):
    """log_params writes values as text; creating a run, tagging it and creating an experiment
    take the same values (MLflow's log_param and set_tag turn theirs into text too)."""
    client.training.create_experiment("as-text", tags={"priority": 1})
    run = client.training.create_run(
        "as-text", params={"lr": 0.1, "layers": 3}, tags={"seeded": True}, create_experiment=True
    )
    client.training.update_run(run.run_id, set_tags={"attempt": 2, "draft": True})
    client.training.update_run(run.run_id, remove_tags=["draft"])
    client.training.log_params(run.run_id, {"dropout": 0.5})
    shown = client.training.run(run.run_id)
    assert shown.params == {"lr": "0.1", "layers": "3", "dropout": "0.5"}
    assert shown.tags == {"seeded": "True", "attempt": "2"}
    assert client.training.experiment("as-text").tags == {"priority": "1"}
    assert [r.run_id for r in client.training.runs("as-text", params={"lr": 0.1})] == [run.run_id]


def test_params_as_pairs_are_refused_before_a_key_given_twice_loses_a_value(client):
    """A request's params are a map, which keeps one value of a key: pairs, which may give a key
    twice, are refused by the SDK, and nothing is sent."""
    run = client.training.create_run("pairs", create_experiment=True)
    pairs = [("lr", "0.1"), ("lr", "0.2")]
    for call in (
        lambda: client.training.log_params(run.run_id, pairs),
        lambda: client.training.create_run("pairs", params=pairs, create_experiment=True),
    ):
        with pytest.raises(
            TypeError, match=r"^params: give a mapping of key to value, such as a dict, not list"
        ):
            call()
    with pytest.raises(
        TypeError, match=r"^set_tags: give a mapping .* not tuple: pairs may give a key twice"
    ):
        client.training.update_run(run.run_id, set_tags=(("a", "1"), ("a", "2")))
    assert client.training.run(run.run_id).params == {}
    assert [r.run_id for r in client.training.runs("pairs")] == [run.run_id]


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


def _sweep_spec(table: str) -> dict:
    return {
        "base": small_spec(table, epochs=1, register_as={}),
        "strategy": "SWEEP_STRATEGY_GRID",
        "parameters": [{"path": "optimizer.lr", "values": {"values": ["0.001", "0.05"]}}],
        "max_concurrent": 2,
        "metric": "val_loss",
    }


def test_sweeps_submit_get_list_and_cancel(client, table):
    sweep = client.training.submit_sweep(_sweep_spec(table))
    assert sweep.id and len(sweep.trials()) == 2
    done = client.training.sweep(sweep.id).wait(poll=0.2)
    assert done.state == tessera.SweepState.SUCCEEDED
    assert sorted(t.params["optimizer.lr"] for t in done.trials()) == [0.001, 0.05]
    assert done.info.best_job_id in {t.job_id for t in done.trials()}
    assert sweep.id in [s.id for s in client.training.sweeps()]
    with pytest.raises(tessera.FailedPrecondition):
        client.training.cancel_sweep(sweep.id)
    with pytest.raises(tessera.NotFound):
        client.training.sweep("no-such-sweep")
    with pytest.raises(tessera.InvalidArgument, match=r"optimizer\.nope"):
        client.training.submit_sweep(
            {**_sweep_spec(table), "parameters": [{"path": "optimizer.nope", "values": {"values": ["1"]}}]}
        )


def test_aio_sweeps(daemon, client, table):
    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            sweep = await aio_client.training.submit_sweep(_sweep_spec(table))
            cancelled = await aio_client.training.cancel_sweep(sweep.id)
            fetched = await aio_client.training.sweep(sweep.id)
            listed = [s.id async for s in aio_client.training.sweeps()]
            return sweep, cancelled, fetched, listed

    sweep, cancelled, fetched, listed = asyncio.run(scenario())
    assert cancelled.state == tessera.SweepState.CANCELLED
    assert fetched.state == tessera.SweepState.CANCELLED
    assert sweep.id in listed


def test_export_onnx_of_a_trained_version_sync_and_aio(daemon, client, table):
    job = client.training.submit(small_spec(table)).wait()
    trained = job.registered.version
    exported = client.models.export_onnx("tiny", trained, set_alias="production")
    assert "production" in exported.version.aliases
    assert exported.version.format == registry_pb2.ARTIFACT_FORMAT_ONNX
    assert exported.version.lineage.parent_version == trained
    assert exported.max_abs_error < 1e-4
    with pytest.raises(tessera.FailedPrecondition, match="onnx"):
        client.models.export_onnx("tiny", exported.version.version)

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            with pytest.warns(DeprecationWarning, match=r"models\.export_onnx\(alias=\.\.\.\) is deprecated"):
                return await aio_client.models.export_onnx(
                    "tiny", trained, conv4d="decomposed", alias="canary"
                )

    again = asyncio.run(scenario())  # auto is decomposed: the same bytes, so the same version
    assert again.reused and again.version.version == exported.version.version
    prediction = client.inference.predict(
        "tiny", {"input": np.ones((3, 4), np.float32)}, version=again.version.version
    )
    assert prediction["output"].shape == (3, 2)


def test_a_wait_that_times_out_says_the_job_goes_on_and_what_to_do_sync_and_aio(daemon, client, table):
    job = client.training.submit(small_spec(table, epochs=100_000, register_as={}))
    try:
        with pytest.raises(tessera.StillRunning) as caught:
            job.wait(timeout=1)
        assert isinstance(caught.value, tessera.DeadlineExceeded) and isinstance(caught.value, TimeoutError)
        assert re.fullmatch(
            rf"job {job.id} is still (queued|running) after 1 s, the timeout given to wait\(\); it goes on: "
            r"call wait\(\) again to wait longer, or cancel\(\) to stop it",
            caught.value.message,
        ), caught.value.message
        assert caught.value.job_id == job.id

        async def scenario():
            async with tessera.aio.Client(daemon.target) as aio_client:
                aio_job = await aio_client.training.job(job.id)
                with pytest.raises(tessera.StillRunning, match=r"is still (queued|running) after 0\.5 s"):
                    await aio_job.wait(timeout=0.5)

        asyncio.run(scenario())
    finally:
        job.cancel()
        job.wait(check=False)
