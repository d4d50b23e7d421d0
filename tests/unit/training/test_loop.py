"""The worker's training loop in-process: early stopping, regression metrics, checkpoints, exact resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

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


def _train(config: dict[str, Any], data: TrainingData, resume: bytes | None = None):
    events: list[tuple[str, dict]] = []
    checkpoints: list[tuple[bytes, dict]] = []
    trainer = Trainer(
        config,
        data,
        torch.device("cpu"),
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
