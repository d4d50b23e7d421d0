"""Job and sweep records stored by earlier daemons load in this one (versioned JSON, schema 1)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.api.convert_training import job_spec_from_proto
from tesserad.server import STORE_TABLES
from tesserad.store import Store, decode_record, encode_record
from tesserad.training.job_records import decode_job, encode_job
from tesserad.training.search_space import SweepParameter
from tesserad.training.sweeps import AshaSettings, Sweep, Trial, decode_sweep, encode_sweep
from tesserad.training.tracking import EARLY_STOPPING_OFF_DROPPED
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.older_store import daemon_on, old_sweep, written_while_stopped
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    job_spec,
    sweep_values,
    upload_standard_datasets,
    wait_sweep,
)

S = training_pb2

JOB_SPEC = {
    "experiment": "old",
    "run_name": "run-1",
    "architecture": {"input_shape": ["6"], "output_size": "2", "mlp": {"hidden_sizes": ["16"]}},
    "data": {"dataset": {"name": "flat", "version": 1}},
    "optimizer": {"name": "adam", "lr": 0.01},
    "epochs": "2",
}
# A succeeded job as the daemon wrote it before jobs were typed records: every field of the
# record, a checkpoint kept, the version it registered.
JOB = {
    "job_id": "job-01old",
    "spec": JOB_SPEC,
    "config": {"experiment": "old", "priority": 0, "devices": {"kind": "cpu", "indices": [], "count": 1}},
    "state": "succeeded",
    "experiment": "old",
    "run_id": "run-01old",
    "attempt": 2,
    "devices": [],
    "created_at": 1700000000.5,
    "started_at": 1700000001.0,
    "ended_at": 1700000060.0,
    "progress": 1.0,
    "epoch": 2,
    "step": 6,
    "total_steps": 6,
    "metrics": {"loss": 0.25, "train_loss": 0.3, "val_loss": 0.4},
    "error": None,
    "registered": {"model": "m", "version": 3, "alias": "staging"},
    "last_seq": 41,
    "created_by": "admin",
    "sweep_id": "sweep-01old",
    "checkpoints": [
        {
            "epoch": 2,
            "step": 6,
            "reason": "final",
            "periodic": True,
            "best": False,
            "metrics": {"train_loss": 0.3},
            "sha256": "ab" * 32,
            "size_bytes": 1234,
        }
    ],
}
FAILED_JOB = {
    **JOB,
    "job_id": "job-02old",
    "state": "failed",
    "registered": None,
    "sweep_id": "",
    "checkpoints": [],
    "error": {"kind": "crash", "message": "the worker process exited with code 3"},
}
SWEEP = {
    "strategy": "grid",
    "metric": "val_loss",
    "mode": "min",
    "max_concurrent": 1,
    "asha": {"min_epochs": 1, "reduction_factor": 3},
    "document": {"base": JOB_SPEC, "strategy": "SWEEP_STRATEGY_GRID", "metric": "val_loss"},
    "sweep_id": "sweep-01old",
    "state": "succeeded",
    "created_at": 1700000000.0,
    "created_by": "admin",
    "best_job_id": "job-01old",
    "rungs": {},
    "trials": [
        {
            "params": {"optimizer.lr": "0.01"},
            "raw": {"optimizer": {"lr": 0.01}},
            "document": JOB_SPEC,
            "job_id": "job-01old",
            "state": "succeeded",
            "metric": 0.4,
            "has_metric": True,
            "pruned": False,
        }
    ],
}


def _record(kind: str, data: dict) -> bytes:
    return json.dumps({"kind": kind, "schema": 1, "data": data}).encode()


def test_records_stored_by_an_earlier_daemon_load(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    with store.write() as txn:
        for job in (JOB, FAILED_JOB):
            txn.put("jobs", (job["job_id"],), _record("job", job))
        txn.put("sweeps", (SWEEP["sweep_id"],), _record("sweep", SWEEP))
    store.close()

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        job = training.GetJob(S.GetJobRequest(job_id="job-01old"))
        assert (job.state, job.attempt, job.last_seq, job.sweep_id) == (
            S.JOB_STATE_SUCCEEDED,
            2,
            41,
            "sweep-01old",
        )
        assert dict(job.metrics) == JOB["metrics"]
        assert (job.registered.model, job.registered.version) == ("m", 3)
        assert (job.spec.experiment, list(job.spec.architecture.mlp.hidden_sizes)) == ("old", [16])
        failed = training.GetJob(S.GetJobRequest(job_id="job-02old"))
        assert (failed.state, failed.error) == (S.JOB_STATE_FAILED, "the worker process exited with code 3")
        listed = training.ListJobs(S.ListJobsRequest(sweep_id="sweep-01old")).jobs
        assert [j.job_id for j in listed] == ["job-01old"]
        sweep = training.GetSweep(S.GetSweepRequest(sweep_id="sweep-01old"))
        assert (sweep.state, sweep.best_job_id, sweep.spec.metric) == (
            S.SWEEP_STATE_SUCCEEDED,
            "job-01old",
            "val_loss",
        )
        assert [(t.job_id, dict(t.params), t.metric) for t in sweep.trials] == [
            ("job-01old", {"optimizer.lr": "0.01"}, 0.4)
        ]
    finally:
        daemon.stop()

    # Read back and written again by this daemon's code, the records keep their stored form.
    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            raw = txn.get("jobs", ("job-01old",))
            sweep_raw = txn.get("sweeps", ("sweep-01old",))
            trial_rows = [json.loads(row) for _, row in txn.scan("sweep_trials", ("sweep-01old",))]
        assert raw is not None
        assert json.loads(encode_job(decode_job(raw))) == {"kind": "job", "schema": 1, "data": JOB}
        # The sweep's trials moved to rows of their own at the daemon's start, the rest kept.
        assert sweep_raw is not None
        stored_sweep = json.loads(sweep_raw)
        assert stored_sweep["schema"] == 3
        assert stored_sweep["data"] == {
            **stored_sweep["data"],
            **{k: v for k, v in SWEEP.items() if k != "trials"},
        }
        assert "trials" not in stored_sweep["data"]
        assert [(row["kind"], row["data"]) for row in trial_rows] == [
            ("sweep_trial", asdict(Trial(number=0, **SWEEP["trials"][0])))
        ]
    finally:
        store.close()


def test_rung_results_in_a_sweep_record_move_to_their_trials_rows(tmp_path: Path) -> None:
    # A sweep record of schema 2 held every rung result, so each epoch at a rung rewrote them all.
    # Keyed by a trial's job, a result moves to that trial's row; one kept in a list (before
    # results were keyed by trial) belongs to none, and stays in the record.
    data_dir = tmp_path / "data"
    trials = [
        {**SWEEP["trials"][0], "number": 0},
        {**SWEEP["trials"][0], "number": 1, "job_id": "job-02old", "state": "cancelled", "pruned": True},
    ]
    rungs = {"0": {"job-01old": 0.4, "job-02old": 0.9, "#0": 0.7}, "1": [0.3]}
    head = {**{k: v for k, v in SWEEP.items() if k != "trials"}, "strategy": "asha", "pruner": "asha"}
    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    with store.write() as txn:
        txn.put(
            "sweeps",
            (SWEEP["sweep_id"],),
            json.dumps({"kind": "sweep", "schema": 2, "data": {**head, "rungs": rungs}}).encode(),
        )
        for trial in trials:
            txn.put("sweep_trials", (SWEEP["sweep_id"], trial["number"]), _record("sweep_trial", trial))
    store.close()

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        sweep = training.GetSweep(S.GetSweepRequest(sweep_id="sweep-01old"))
        assert [(t.job_id, t.pruned) for t in sweep.trials] == [("job-01old", False), ("job-02old", True)]
    finally:
        daemon.stop()

    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            sweep_raw = txn.get("sweeps", ("sweep-01old",))
            trial_rows = [row for _, row in txn.scan("sweep_trials", ("sweep-01old",))]
    finally:
        store.close()
    assert sweep_raw is not None
    stored_sweep = json.loads(sweep_raw)
    assert (stored_sweep["schema"], stored_sweep["data"]["rungs"]) == (
        3,
        {"0": {"#0": 0.7}, "1": {"#0": 0.3}},
    )
    assert [json.loads(row)["data"]["rungs"] for row in trial_rows] == [{"0": 0.4}, {"0": 0.9}]
    # The pruner's tables, rebuilt from the record and the rows, are those stored before.
    assert decode_sweep(sweep_raw, trial_rows).rungs == {**rungs, "1": {"#0": 0.3}}


def test_a_sweep_stored_with_early_stopping_patience_0_starts_its_trials_with_it_off(tmp_path: Path) -> None:
    # Before SubmitSweep refused patience 0 it meant off, and a TPE sweep builds each trial's spec
    # from its stored base as the trial starts: every trial after an upgrade was refused.
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        upload_standard_datasets(daemon.channel())
    finally:
        daemon.stop()
    spec = job_spec("mlp", epochs=1, early_stopping=job_spec_pb2.EarlyStopping(metric="val_loss"))
    base, _ = job_spec_from_proto(spec)
    sweep = Sweep(
        sweep_id="sweep-01old",
        strategy="tpe",
        metric="val_loss",
        mode="min",
        max_concurrent=1,
        asha=AshaSettings(1, 3),
        document={"base": JOB_SPEC, "strategy": "SWEEP_STRATEGY_TPE", "metric": "val_loss"},
        state="running",
        created_at=1700000000.0,
        created_by="admin",
        best_job_id="",
        rungs={},
        base=base,
        parameters=[
            SweepParameter("optimizer.lr", low=0.001, high=0.1, log_scale=True),
            SweepParameter("early_stopping.patience", values=["0", "2"]),
        ],
        max_trials=3,
    )
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    with store.write() as txn:
        txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep))
    store.close()

    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        ended = wait_sweep(training, sweep.sweep_id, timeout_s=120)
        assert [(t.state, t.error) for t in ended.trials] == [(S.JOB_STATE_SUCCEEDED, "")] * 3
        assert ended.state == S.SWEEP_STATE_SUCCEEDED
        # A trial that drew patience 0 trained with early stopping off, and its job's spec says so
        # (it showed the base's section); one that drew 2 keeps that section's metric.
        drawn = [t.params["early_stopping.patience"] for t in ended.trials]
        jobs = [training.GetJob(S.GetJobRequest(job_id=t.job_id)) for t in ended.trials]
        stopping = [
            (job.spec.early_stopping.metric, job.spec.early_stopping.patience)
            if job.spec.HasField("early_stopping")
            else None
            for job in jobs
        ]
        assert "0" in drawn and stopping == [None if p == "0" else ("val_loss", 2) for p in drawn]
    finally:
        daemon.stop()


def test_a_stored_sweep_whose_best_was_a_pruned_trial_reads_its_best_succeeded_one(tmp_path: Path) -> None:
    # Stored while best ranked every trial with a metric: a pruned trial's early rung metric led,
    # though it registered no version for the alias the best trial is picked for.
    data_dir = tmp_path / "data"
    pruned = {
        **SWEEP["trials"][0],
        "job_id": "job-03old",
        "state": "cancelled",
        "metric": 0.1,
        "pruned": True,
    }
    stored = {
        **SWEEP,
        "sweep_id": "sweep-02old",
        "best_job_id": "job-03old",
        "trials": [*SWEEP["trials"], pruned],
    }
    only_pruned = {**SWEEP, "sweep_id": "sweep-03old", "best_job_id": "job-03old", "trials": [pruned]}
    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    with store.write() as txn:
        for record in (stored, only_pruned):
            txn.put("sweeps", (record["sweep_id"],), _record("sweep", record))
    store.close()

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        sweep = training.GetSweep(S.GetSweepRequest(sweep_id="sweep-02old"))
        assert sweep.best_job_id == "job-01old"
        assert training.GetSweep(S.GetSweepRequest(sweep_id="sweep-03old")).best_job_id == ""
        listed = {s.sweep_id: s.best_job_id for s in training.ListSweeps(S.ListSweepsRequest()).sweeps}
        assert listed == {"sweep-02old": "job-01old", "sweep-03old": ""}
    finally:
        daemon.stop()


def test_a_sweep_stored_with_a_0_meaning_a_default_starts_its_trials_with_the_default(tmp_path: Path) -> None:
    # Before these fields were proto3 optional a 0 meant their default, and an older daemon
    # stored sweeps drawing it; after an upgrade SubmitJob refused each such trial (lr 0,
    # batch_size 0) or took a 0 as a value (beta1 0), and 3 refused in a row failed the sweep.
    data_dir = tmp_path / "data"
    with daemon_on(data_dir, **TRAINING_SETTINGS) as daemon:
        upload_standard_datasets(daemon.channel())
    spec = job_spec("mlp", lr_schedule=job_spec_pb2.LrSchedule(step=job_spec_pb2.StepLr(step_size=1)))
    spec.ClearField("epochs")
    base, _ = job_spec_from_proto(spec)
    zeros = [
        "epochs",
        "max_steps",
        "batch_size",
        "log_every_n_steps",
        "backbone_lr_scale",
        "optimizer.lr",
        "optimizer.beta1",
        "optimizer.beta2",
        "optimizer.eps",
        "lr_schedule.step.gamma",
        "checkpoints.every_n_epochs",
        "checkpoints.keep_last",
        "devices.cpu_processes",
    ]
    sweep = old_sweep(
        base, "sweep-01zeros", parameters=[SweepParameter(path, values=["0"]) for path in zeros]
    )
    sweep.strategy, sweep.state, sweep.max_trials, sweep.seed = "tpe", "running", 2, 7
    written_while_stopped(data_dir, lambda txn: txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep)))

    with daemon_on(data_dir, **TRAINING_SETTINGS) as daemon:
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        ended = wait_sweep(training, sweep.sweep_id, timeout_s=120)
        assert [(t.state, t.error) for t in ended.trials] == [(S.JOB_STATE_SUCCEEDED, "")] * 2
        assert ended.state == S.SWEEP_STATE_SUCCEEDED
        job = training.GetJob(S.GetJobRequest(job_id=ended.trials[0].job_id))
        # Trained as the defaults, and its spec says so: the 0s are left out, not set.
        assert not job.spec.HasField("batch_size") and not job.spec.optimizer.HasField("beta1")

    # Each trial's row holds the spec its job was submitted with, not the 0s its values set: a
    # trial drawn for the sweep is built in today's form, and its start submits it as held.
    # The sweep's own space keeps its values as stored, read as it was when the trials are drawn.
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            record = json.loads(txn.get("sweeps", (sweep.sweep_id,)) or b"{}")["data"]
            rows = [json.loads(row)["data"] for _, row in txn.scan("sweep_trials", (sweep.sweep_id,))]
    finally:
        store.close()
    assert [(row["raw"].get("batch_size"), row["document"].get("batch_size")) for row in rows] == [
        (None, None)
    ] * 2
    assert [
        ("beta1" in row["raw"]["optimizer"], "beta1" in row["document"]["optimizer"]) for row in rows
    ] == [(False, False)] * 2
    assert [row["params"]["batch_size"] for row in rows] == ["0", "0"]
    assert (record["parameters"][2]["values"], record["zero_is_a_value"]) == (["0"], False)


def test_a_sweep_submitted_now_trains_a_0_it_draws_as_a_value(tmp_path: Path) -> None:
    # Only a sweep stored before a 0 was a value has its 0s dropped: adam's beta1 0 is in range.
    with daemon_on(tmp_path / "data", **TRAINING_SETTINGS) as daemon:
        upload_standard_datasets(daemon.channel())
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        spec = S.SweepSpec(
            base=job_spec("mlp", epochs=1),
            strategy=S.SWEEP_STRATEGY_GRID,
            parameters=[sweep_values("optimizer.beta1", "0")],
            metric="val_loss",
        )
        ended = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id)
        assert [t.state for t in ended.trials] == [S.JOB_STATE_SUCCEEDED]
        job = training.GetJob(S.GetJobRequest(job_id=ended.trials[0].job_id))
        assert job.spec.optimizer.HasField("beta1") and job.spec.optimizer.beta1 == 0


OFF = {
    "early_stopping.metric": "val_loss",
    "early_stopping.mode": "min",
    "early_stopping.patience": "0",
    "early_stopping.min_delta": "0.0",
}


def test_job_runs_stored_with_early_stopping_off_params_lose_them_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    made = {
        "off": {**OFF, "optimizer.lr": "0.01"},
        "on": {**OFF, "early_stopping.patience": "2"},
        "by-hand": dict(OFF),
    }
    with daemon_on(data_dir) as daemon:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        run_ids = {
            name: stub.CreateRun(S.CreateRunRequest(experiment="old", name=name, params=params)).run_id
            for name, params in made.items()
        }

    def as_jobs_made_them(txn) -> None:
        # Runs of jobs, as a tesserad that recorded early_stopping.* for every spec left them.
        for name in ("off", "on"):
            data = decode_record(txn.get("runs", (run_ids[name],)), "run", 1)[1]
            txn.put("runs", (run_ids[name],), encode_record("run", 1, {**data, "job_id": f"job-{name}"}))
        txn.delete("meta", EARLY_STOPPING_OFF_DROPPED)

    written_while_stopped(data_dir, as_jobs_made_them)
    with daemon_on(data_dir) as daemon:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        params = {
            name: dict(stub.GetRun(S.GetRunRequest(run_id=run_id)).params) for name, run_id in run_ids.items()
        }
    assert params == {
        "off": {"optimizer.lr": "0.01"},
        "on": made["on"],
        "by-hand": made["by-hand"],
    }


def test_a_sweep_stored_with_a_base_resume_from_submits_its_trials_from_the_weights_alone(
    tmp_path: Path,
) -> None:
    # A daemon from before resume_from went on in full stored such sweeps, meaning a start from the
    # checkpoint's weights: a trial submitted now as a full resume would be refused (its epochs
    # are its own, not past the checkpoint's), and the sweep would fail after a few.
    data_dir = tmp_path / "data"
    with daemon_on(data_dir, **TRAINING_SETTINGS) as daemon:
        upload_standard_datasets(daemon.channel())
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        source = training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp", epochs=2)))
        list(training.WatchJob(S.WatchJobRequest(job_id=source.job_id), timeout=120))
    spec = job_spec("mlp", epochs=1, resume_from=source.job_id)
    base, _ = job_spec_from_proto(spec)
    sweep = old_sweep(base, "sweep-01resumed", parameters=[SweepParameter("optimizer.name", values=["sgd"])])
    sweep.strategy, sweep.state, sweep.max_trials, sweep.seed = "tpe", "running", 1, 7
    written_while_stopped(data_dir, lambda txn: txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep)))

    with daemon_on(data_dir, **TRAINING_SETTINGS) as daemon:
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        ended = wait_sweep(training, sweep.sweep_id, timeout_s=120)
        assert [(t.state, t.error) for t in ended.trials] == [(S.JOB_STATE_SUCCEEDED, "")], ended
        job = training.GetJob(S.GetJobRequest(job_id=ended.trials[0].job_id))
        assert job.spec.resume_from == source.job_id and job.spec.resume_weights_only
        run = training.GetRun(S.GetRunRequest(run_id=job.run_id))
        assert run.params["resume_from.mode"] == "weights"
