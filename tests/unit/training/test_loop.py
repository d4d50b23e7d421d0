"""The worker's training loop in-process: early stopping, regression metrics, checkpoints, exact resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tessera.demo import CLIP_SHAPE, spacetime_clips
from tesserad.training.loop import Distributed, Trainer, TrainingData


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task": "classification",
        "loss": "cross_entropy",
        "seed": 3,
        "architecture": {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [8]},
        "optimizer": {
            "name": "sgd",
            "lr": 0.1,
            "weight_decay": 0.0,
            "momentum": 0.9,
            "nesterov": False,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": 1.0,
        },
        "lr_schedule": {"kind": "step", "warmup_steps": 2, "step_size": 1, "gamma": 0.5},
        "epochs": 4,
        "max_steps": 0,
        "batch_size": 10,
        "log_every_n_steps": 1,
        "early_stopping": {"metric": "val_loss", "mode": "min", "patience": 0, "min_delta": 0.0},
        "checkpoints": {"every_n_epochs": 2, "keep_last": 1, "keep_best_metric": "", "keep_best_mode": ""},
    }
    config.update(changes)
    return config


def _data(regression: bool = False) -> TrainingData:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = x[:, :1] * 2 if regression else (x[:, 0] > 0).astype(np.int64)
    return TrainingData(x, y, np.arange(30), np.arange(30, 40))


def _train(config: dict[str, Any], data: TrainingData, resume: bytes | None = None, device: str = "cpu"):
    events: list[tuple[str, dict]] = []
    checkpoints: list[tuple[bytes, dict]] = []
    trainer = Trainer(
        config,
        data,
        torch.device(device),
        Distributed(0, 1),
        lambda kind, payload: events.append((kind, payload)),
        lambda blob, info: checkpoints.append((blob, info)),
        lambda: False,
        60.0,
    )
    if resume is not None:
        trainer.resume_from(resume)
    return trainer.run(), events, checkpoints


def test_resume_from_a_checkpoint_continues_the_same_curve() -> None:
    outcome, events, checkpoints = _train(_config(), _data())
    assert outcome.status == "succeeded" and outcome.step == 12
    assert [(i["epoch"], i["reason"]) for _, i in checkpoints] == [(2, "periodic"), (4, "final")]
    losses = [p["loss"] for k, p in events if k == "step"]
    lrs = [p["lr"] for k, p in events if k == "step"]
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.1, 0.05])  # warm-up, then halved each epoch
    resumed, again, _ = _train(_config(), _data(), resume=checkpoints[0][0])
    assert [p["loss"] for k, p in again if k == "step"] == losses[6:]
    assert resumed.metrics == outcome.metrics


def test_early_stopping_and_best_checkpoint() -> None:
    config = _config(
        epochs=30,
        optimizer={**_config()["optimizer"], "lr": 5.0, "momentum": 0.0, "grad_clip_norm": 0.0},
        lr_schedule={"kind": "constant", "warmup_steps": 0},
        early_stopping={"metric": "train_loss", "mode": "max", "patience": 2, "min_delta": 0.0},
        checkpoints={
            "every_n_epochs": 100,
            "keep_last": 1,
            "keep_best_metric": "val_accuracy",
            "keep_best_mode": "max",
        },
    )
    outcome, events, checkpoints = _train(config, _data())
    assert outcome.epoch < 30
    assert any(k == "log" and p["message"].startswith("early stopping after epoch") for k, p in events)
    assert checkpoints[0][1]["reason"] == "best" and checkpoints[-1][1]["reason"] == "final"
    # Its facts name the epoch whose train_loss was the best, the highest (mode max) of all.
    (stopped,) = [p["early_stopping"] for k, p in events if k == "log" and "early_stopping" in p]
    losses = [p["metrics"]["train_loss"] for k, p in events if k == "epoch"]
    assert stopped == {
        "metric": "train_loss",
        "mode": "max",
        "best": max(losses),
        "best_epoch": losses.index(max(losses)) + 1,
        "epoch": outcome.epoch,
        "patience": 2,
        "min_delta": 0.0,
    }
    assert stopped["best_epoch"] == outcome.epoch - 2


def test_regression_reports_its_metrics() -> None:
    config = _config(
        task="regression",
        loss="huber",
        architecture={"family": "mlp", "input_shape": [4], "output_size": 1, "hidden_sizes": [8]},
        epochs=2,
    )
    outcome, _, _ = _train(config, _data(regression=True))
    assert set(outcome.metrics) == {"train_loss", "val_loss", "val_mae", "val_rmse", "val_r2"}
    assert outcome.weights is not None and outcome.weights[:8] != b""


def _clips_config(precision: str) -> dict[str, Any]:
    return _config(
        architecture={
            "family": "cnn4d",
            "input_shape": list(CLIP_SHAPE),
            "output_size": 2,
            "channels": [4, 8],
            "kernel_size": 3,
        },
        optimizer={**_config()["optimizer"], "name": "adam", "lr": 0.01, "grad_clip_norm": 0.0},
        lr_schedule={"kind": "constant", "warmup_steps": 0},
        epochs=6,
        batch_size=16,
        log_every_n_steps=10,
        checkpoints={"every_n_epochs": 100, "keep_last": 1, "keep_best_metric": "", "keep_best_mode": ""},
        precision=precision,
    )


# bf16 keeps 8 significant bits, so its loss curve drifts from fp32's; on these clips both
# reach near-perfect validation accuracy, and bf16 must land within 0.1 of fp32 (8 of 80 clips).
BF16_ACCURACY_MARGIN = 0.1


def test_bf16_training_converges_on_the_synthetic_clips_like_fp32() -> None:
    x, y = spacetime_clips(320, seed=5)
    data = TrainingData(x, y, np.arange(240), np.arange(240, 320))
    accuracy = {}
    for precision in ("fp32", "bf16"):
        # Both pass 0.98 by epoch 2 here (0.74 after 1); the rest of _clips_config's 6 buy nothing.
        outcome, _, _ = _train({**_clips_config(precision), "epochs": 2}, data)
        assert outcome.status == "succeeded"
        accuracy[precision] = outcome.metrics["val_accuracy"]
    assert accuracy["fp32"] >= 0.9  # the task is learnable in these few steps
    assert accuracy["bf16"] >= accuracy["fp32"] - BF16_ACCURACY_MARGIN, accuracy


# fp16 keeps 11 significant bits but a narrow range: the loss scaler keeps small gradients from
# flushing to zero. Same margin as bf16 on the CPU.
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_and_bf16_training_on_cuda_converge_like_fp32() -> None:
    x, y = spacetime_clips(320, seed=5)
    data = TrainingData(x, y, np.arange(240), np.arange(240, 320))
    accuracy = {}
    for precision in ("fp32", "bf16", "fp16"):
        outcome, events, _ = _train(_clips_config(precision), data, device="cuda")
        assert outcome.status == "succeeded"
        assert all(np.isfinite(p["loss"]) for k, p in events if k == "step"), precision
        accuracy[precision] = outcome.metrics["val_accuracy"]
    assert accuracy["fp32"] >= 0.9
    assert min(accuracy["bf16"], accuracy["fp16"]) >= accuracy["fp32"] - BF16_ACCURACY_MARGIN, accuracy


def test_compile_setting_auto_compiles_cuda_jobs_only() -> None:
    from tesserad.training.loop import use_compile

    assert use_compile("auto", torch.device("cpu")) is False
    assert use_compile("auto", torch.device("cuda", 0)) is True
    assert use_compile("on", torch.device("cpu")) is True
    assert use_compile("off", torch.device("cuda", 0)) is False


class _Clock:
    """A clock that moves 1 ms each time it is read, and as far as `wait` says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


def test_samples_per_s_leaves_out_the_time_between_epochs() -> None:
    # 3 steps an epoch, a step event every 4: most windows span an epoch's end, where a slow
    # checkpoint (as validation would) took 100 s. The rate dropped to ~0.4 samples/s for them.
    clock = _Clock()
    events: list[tuple[str, dict]] = []
    trainer = Trainer(
        _config(log_every_n_steps=4, checkpoints={**_config()["checkpoints"], "every_n_epochs": 1}),
        _data(),
        torch.device("cpu"),
        Distributed(0, 1),
        lambda kind, payload: events.append((kind, payload)),
        lambda _blob, _info: clock.wait(100.0),
        lambda: False,
        60.0,
        clock=clock,
    )
    trainer.run()
    rates = [p["samples_per_s"] for k, p in events if k == "step"]
    assert len(rates) == 3 and min(rates) > 100, rates
    # The time left is the whole job's pace: the checkpoints' time is in it.
    etas = [p["eta_s"] for k, p in events if k == "progress"]
    assert etas[0] > 100, etas


def test_a_checkpoint_taken_mid_epoch_at_max_steps_goes_on_with_the_rest_of_that_epoch() -> None:
    # 3 steps per epoch; max_steps 4 ends the source in epoch 2, after its first batch.
    outcome, events, _ = _train(_config(epochs=0, max_steps=10), _data())
    losses = [(p["step"], p["loss"]) for k, p in events if k == "step"]
    lrs = [p["lr"] for k, p in events if k == "step"]
    _, _, cut_checkpoints = _train(_config(epochs=0, max_steps=4), _data())
    assert [(i["epoch"], i["step"], i["reason"]) for _, i in cut_checkpoints] == [(2, 4, "final")]

    # The lr is the schedule's over max_steps 10 from the start, as the uninterrupted job's.
    config = _config(epochs=0, max_steps=10)
    resumed, again, _ = _train(config, _data(), resume=cut_checkpoints[-1][0])
    assert [(p["step"], p["loss"]) for k, p in again if k == "step"] == losses[4:]
    assert [p["lr"] for k, p in again if k == "step"] == lrs[4:]
    assert resumed.step == outcome.step == 10 and resumed.metrics == outcome.metrics

    # Going on from it with the same max_steps has nothing left to train.
    restarted, nothing, saved = _train(_config(epochs=0, max_steps=4), _data(), resume=cut_checkpoints[-1][0])
    assert restarted.step == 4 and [k for k, _ in nothing if k in ("step", "epoch")] == [] and saved == []


def _judged(events: list[tuple[str, dict]], checkpoints: list[tuple[bytes, dict]], after: int):
    """What the epochs' ends said and decided after step `after`: their metrics, the early stop's
    facts, the checkpoints (best or not) and the outcome's metrics; no timings."""
    epochs = [(p["epoch"], p["step"], p["metrics"]) for k, p in events if k == "epoch" and p["step"] > after]
    stops = [p["early_stopping"] for k, p in events if k == "log" and "early_stopping" in p]
    saved = [{k: v for k, v in info.items()} for _, info in checkpoints if info["step"] > after]
    return epochs, stops, saved


def test_a_mid_epoch_resume_judges_that_epoch_once_as_the_uninterrupted_job() -> None:
    # The cut job's end looked at its partial epoch 6 (a bad epoch for early stopping); the
    # resumed job counted epoch 6 again and stopped after it, a patience short, with the partial
    # epoch's train metrics left out and its last batch's accuracy taken as the best.
    config = _config(
        epochs=0,
        max_steps=30,
        early_stopping={"metric": "val_loss", "mode": "min", "patience": 2, "min_delta": 0.005},
        checkpoints={
            "every_n_epochs": 100,
            "keep_last": 1,
            "keep_best_metric": "train_accuracy",
            "keep_best_mode": "max",
        },
    )
    straight, events, checkpoints = _train(config, _data())
    # 3 steps per epoch: max_steps 17 stops after two batches of epoch 6.
    _, _, cut_checkpoints = _train({**config, "max_steps": 17}, _data())
    assert [(i["epoch"], i["step"], i["reason"]) for _, i in cut_checkpoints][-1] == (6, 17, "final")

    resumed, again, saved = _train(config, _data(), resume=cut_checkpoints[-1][0])
    expected = _judged(events, checkpoints, after=17)
    assert expected[1] and expected[1][0]["epoch"] == 7  # the uninterrupted job stops early
    assert _judged(again, saved, after=17) == expected
    assert (resumed.epoch, resumed.step, resumed.metrics) == (straight.epoch, straight.step, straight.metrics)
