"""Pure training logic: LR schedules, queue order and devices, event fan-out, downsampling, spec checks."""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tesserad.store import Store
from tesserad.training.events import EventLog
from tesserad.training.finetune import ParentFacts
from tesserad.training.ray_jobs import ray_resources
from tesserad.training.scheduler import DeviceInventory, QueuedJob, pick_runnable
from tesserad.training.schedules import lr_at
from tesserad.training.spec import DatasetFacts, DeviceFacts, normalize_spec
from tesserad.training.tracking import (
    PARENT_TAG,
    BatchSequence,
    MetricPoint,
    Run,
    Tracking,
    _refuse_parent_tag_change,
)
from tesserad.training.tracking import TABLES as TRACKING_TABLES


def test_schedules_are_pure_functions_of_the_step() -> None:
    constant = {"kind": "constant", "warmup_steps": 4}
    assert [lr_at(constant, 1.0, s, 10, 5) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    step = {"kind": "step", "warmup_steps": 0, "step_size": 2, "gamma": 0.5}
    assert [lr_at(step, 1.0, s, 30, 5) for s in (0, 9, 10, 20)] == [1.0, 1.0, 0.5, 0.25]
    cosine = {"kind": "cosine", "warmup_steps": 0, "min_lr": 0.1}
    assert lr_at(cosine, 1.0, 0, 11, 1) == 1.0 and lr_at(cosine, 1.0, 10, 11, 1) == pytest.approx(0.1)
    cycle = {"kind": "one_cycle", "warmup_steps": 0, "max_lr": 1.0, "pct_start": 0.3}
    curve = [lr_at(cycle, 0.1, s, 100, 10) for s in range(100)]
    peak = curve.index(max(curve))
    assert curve[0] == pytest.approx(0.04) and max(curve) == pytest.approx(1.0) and 25 <= peak <= 30
    assert curve[-1] == pytest.approx(4e-6) and all(math.isfinite(v) for v in curve)


def test_queue_runs_priority_then_submission_order_on_free_devices() -> None:
    inventory = DeviceInventory(cpu_slots=2, gpu_count=2)
    cpu = {"kind": "cpu", "indices": [], "count": 1}
    queue = [
        QueuedJob("job-b", 0, "job-b", cpu),
        QueuedJob("job-a", 0, "job-a", cpu),
        QueuedJob("job-c", 5, "job-c", cpu),
        QueuedJob("job-g2", 0, "job-g2", {"kind": "cuda", "indices": [], "count": 2}),
        QueuedJob("job-g1", 0, "job-g3", {"kind": "cuda", "indices": [0], "count": 1}),
    ]
    started = pick_runnable(queue, inventory)
    assert [(j.job_id, d) for j, d in started] == [
        ("job-c", ["cpu:0"]),
        ("job-a", ["cpu:1"]),
        ("job-g2", ["cuda:0", "cuda:1"]),
    ]
    # The exact-GPU job waits, and blocks later GPU jobs; CPU ones still run when a slot frees.
    inventory.release(["cpu:1"])
    rest = [QueuedJob("job-g1", 0, "job-g1", {"kind": "cuda", "indices": [0], "count": 1}), queue[0]]
    assert [(j.job_id, d) for j, d in pick_runnable(rest, inventory)] == [("job-b", ["cpu:1"])]


def test_a_slow_watcher_is_cut_with_the_seq_to_resume_from(tmp_path: Path) -> None:
    store = Store.open(tmp_path, map_size=1 << 24, tables=["job_events"], group_commit_interval_s=0.001)
    try:
        log = EventLog(store, watch_buffer=4)
        log.open_job("job-1", 0, False)
        slow, newest = log.subscribe("job-1", lambda: None)
        fast, _ = log.subscribe("job-1", lambda: None)
        assert slow is not None and fast is not None and newest == 0
        received = []
        for i in range(10):
            log.append("job-1", 1, "log", {"level": "info", "message": str(i)})
            store.flush()
            received += fast.drain()
        assert [e.seq for e in received] == list(range(1, 11))  # the fast one is unaffected
        with pytest.raises(ResourceExhausted, match="from_seq=1 to resume"):
            slow.raise_if_cut(1)
        assert [e.seq for e in log.read("job-1", 3, 6)] == [3, 4, 5, 6]
        log.append("job-1", 1, "state", {"state": "succeeded", "reason": "", "devices": []}, ends_job=True)
        store.flush()
        assert fast.ended and [e.seq for e in fast.drain()] == [11]
        assert log.subscribe("job-1", lambda: None) == (None, 11)
    finally:
        store.close()


FACTS = DatasetFacts(
    "d",
    3,
    "ab" * 32,
    {"x": ("float32", (10, 4)), "y": ("int64", (10,)), "r": ("float32", (10, 2))},
    {"train": 8, "val": 2},
)


def _no_parent(model: str, version: int | None, alias: str | None) -> ParentFacts:
    raise NotFound(f"model {model!r} does not exist")


def _dataset(name: str, version: int) -> DatasetFacts:
    if name != "d":
        raise NotFound(f"dataset {name!r} does not exist")
    return FACTS


def _raw(**changes: object) -> dict:
    raw = {
        "architecture": {"family": "mlp", "input_shape": [4], "output_size": 2},
        "data": {"dataset": {"name": "d"}},
    }
    raw.update(changes)
    return raw


def test_a_metric_batch_cancelled_with_its_stream_refuses_the_batches_after_it() -> None:
    # The store drops a write whose future is cancelled before its commit: the batches queued
    # after it must not be stored either, or the stream would leave a gap.
    sequence = BatchSequence()
    outcome: Future[int] = Future()
    sequence.watch(outcome)
    assert outcome.cancel()
    assert sequence.failed


def test_a_batch_queued_after_a_cancelled_one_is_refused_before_the_cancel_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel marks its future cancelled, then runs its callbacks: the committer could drop
    # the cancelled batch and store the next in between, before the sequence heard of it.
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=[*TRACKING_TABLES, "meta"])
    tracking = Tracking(store)
    run_id = tracking.create_run("cancelled-batches").run_id
    noting, noted = threading.Event(), threading.Event()
    note = BatchSequence._note

    def slow_note(self: BatchSequence, outcome: Future[int]) -> None:
        noting.set()
        assert noted.wait(10)
        note(self, outcome)

    monkeypatch.setattr(BatchSequence, "_note", slow_note)
    holding, release = threading.Event(), threading.Event()
    store.submit(lambda txn: (holding.set(), release.wait(10)))
    assert holding.wait(10)
    sequence = BatchSequence()
    first = tracking.log_metrics(run_id, [MetricPoint("loss", 1.0, 0)], sequence=sequence)
    second = tracking.log_metrics(run_id, [MetricPoint("loss", 0.5, 1)], sequence=sequence)
    cancelling = threading.Thread(target=first.cancel)
    cancelling.start()
    assert noting.wait(10)  # cancelled, its callback not yet run
    release.set()
    with pytest.raises(FailedPrecondition, match="an earlier batch of the stream failed"):
        second.result(timeout=10)
    noted.set()
    cancelling.join(10)
    assert tracking.metric_history(run_id, "loss", 0, 0, None).points == []
    store.close()


def test_spec_defaults_are_applied() -> None:
    config = normalize_spec(_raw(), _dataset, DeviceFacts(cpu_slots=1, gpu_count=0), _no_parent)
    assert config["experiment"] == "default" and config["task"] == "classification"
    assert config["data"] == {
        "dataset": "d",
        "version": 3,
        "train_split": "train",
        "val_split": "val",
        "input_array": "x",
        "target_array": "y",
    }
    assert config["optimizer"]["name"] == "adam" and config["optimizer"]["lr"] == 1e-3
    assert (config["epochs"], config["batch_size"], config["log_every_n_steps"]) == (1, 32, 10)
    assert config["checkpoints"] == {
        "every_n_epochs": 1,
        "keep_last": 2,
        "keep_best_metric": "",
        "keep_best_mode": "",
    }
    assert config["devices"] == {"kind": "cpu", "indices": [], "count": 1}
    assert config["early_stopping"]["mode"] == "min" and config["register_as"] is None


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("val_loss", "min"),
        ("val_mae", "min"),
        ("val_rmse", "min"),
        ("val_r2", "max"),
        ("val_accuracy", "max"),
    ],
)
def test_early_stopping_and_best_checkpoints_follow_the_metrics_direction(metric: str, mode: str) -> None:
    raw = _raw(
        early_stopping={"metric": metric, "patience": 2},
        checkpoints={"keep_best_metric": metric},
    )
    if metric in ("val_mae", "val_rmse", "val_r2"):
        raw.update(task="regression", architecture={**raw["architecture"], "output_size": 1})
    config = normalize_spec(raw, _dataset, DeviceFacts(cpu_slots=1, gpu_count=0), _no_parent)
    assert config["early_stopping"]["mode"] == mode and config["checkpoints"]["keep_best_mode"] == mode


def test_ray_resources_and_max_restarts_are_checked_and_absent_unless_set() -> None:
    devices = DeviceFacts(1, 0)
    plain = normalize_spec(_raw(), _dataset, devices, _no_parent)
    assert "max_restarts" not in plain and "ray_resources" not in plain["devices"]
    config = normalize_spec(
        _raw(devices={"cpu": True, "ray_resources": {"node_b": 1}}, max_restarts=2),
        _dataset,
        devices,
        _no_parent,
    )
    assert config["devices"]["ray_resources"] == {"node_b": 1.0} and config["max_restarts"] == 2
    assert ray_resources(config["devices"]) == {"CPU": 1.0, "node_b": 1.0}
    # Per process: a 2-GPU job is two actors of one GPU each.
    assert ray_resources({"kind": "cuda", "indices": [], "count": 2}) == {"CPU": 1.0, "GPU": 1.0}
    with pytest.raises(InvalidArgument) as err:
        normalize_spec(
            _raw(devices={"ray_resources": {"node_b": 0}}, max_restarts=-1), _dataset, devices, _no_parent
        )
    assert "spec.devices.ray_resources" in err.value.message and "spec.max_restarts" in err.value.message


def test_spec_regression_targets_must_fit_the_output() -> None:
    devices = DeviceFacts(1, 0)
    config = normalize_spec(
        _raw(task="regression", data={"dataset": {"name": "d"}, "target_array": "r"}),
        _dataset,
        devices,
        _no_parent,
    )
    assert config["loss"] == "mse"
    arch = {"family": "mlp", "input_shape": [4], "output_size": 3}
    with pytest.raises(FailedPrecondition, match=r"needs targets shaped \(N, 3\)"):
        normalize_spec(
            _raw(task="regression", architecture=arch, data={"dataset": {"name": "d"}, "target_array": "r"}),
            _dataset,
            devices,
            _no_parent,
        )
    with pytest.raises(NotFound, match=re.escape("spec.data.dataset: dataset 'e' does not exist")):
        normalize_spec(_raw(data={"dataset": {"name": "e"}}), _dataset, devices, _no_parent)
    with pytest.raises(InvalidArgument, match=re.escape("spec.architecture.mlp.hidden_sizes")):
        normalize_spec(_raw(architecture={**arch, "hidden_sizes": [0]}), _dataset, devices, _no_parent)


def test_an_empty_validation_split_is_refused_by_name_and_never_taken_by_default() -> None:
    # Uploads refuse empty splits now; a store written before that may still hold one, and a job
    # validating on it failed after its first epoch with KeyError: 'val_loss'.
    facts = dataclasses.replace(FACTS, splits={"train": 8, "val": 0})
    devices = DeviceFacts(cpu_slots=1, gpu_count=0)
    named = _raw(data={"dataset": {"name": "d"}, "val_split": "val"})
    with pytest.raises(
        FailedPrecondition, match=re.escape("spec.data.val_split: split 'val' of dataset 'd' v3 is empty")
    ):
        normalize_spec(named, lambda name, version: facts, devices, _no_parent)
    config = normalize_spec(_raw(), lambda name, version: facts, devices, _no_parent)
    assert not config["data"]["val_split"]


def test_a_job_training_on_the_val_split_does_not_validate_on_it_by_default() -> None:
    config = normalize_spec(
        _raw(data={"dataset": {"name": "d"}, "train_split": "val"}),
        _dataset,
        DeviceFacts(cpu_slots=1, gpu_count=0),
        _no_parent,
    )
    assert config["data"]["train_split"] == "val" and not config["data"]["val_split"]


def test_the_parent_tag_of_a_run_without_a_parent_can_be_removed() -> None:
    # Job runs stored it without a parent_run_id before the job spec refused it; it could not go.
    legacy = Run("run-1", "exp", "r", "running", {}, {PARENT_TAG: "x"}, 0.0, None, 0, "job-1")
    _refuse_parent_tag_change(legacy, {}, [PARENT_TAG])
    with pytest.raises(FailedPrecondition, match="cannot change after a run is created"):
        _refuse_parent_tag_change(legacy, {PARENT_TAG: "y"}, [])
    nested = dataclasses.replace(legacy, job_id="", parent_run_id="x")
    with pytest.raises(FailedPrecondition, match="cannot change after a run is created"):
        _refuse_parent_tag_change(nested, {}, [PARENT_TAG])
