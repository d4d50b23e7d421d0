"""Checkpoint round trips: what a resumed run must get back besides weights and optimiser."""

from __future__ import annotations

import torch

from tesserad.training.checkpoints import checkpoint_bytes, restore


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _overflowing_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> None:
    """One step whose gradients overflow: the scaler skips it and backs its scale off."""
    optimizer.zero_grad()
    scaler.scale(model(torch.full((1, 3), float("inf"))).sum()).backward()
    scaler.step(optimizer)
    scaler.update()


def test_an_enabled_loss_scaler_resumes_at_its_backed_off_scale():
    model, optimizer = _model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    for _ in range(3):
        _overflowing_step(model, optimizer, scaler)
    assert scaler.get_scale() == 2.0**13
    saved = checkpoint_bytes(model, optimizer, {"epoch": 1}, scaler)

    fresh_model, fresh_optimizer = _model_and_optimizer()
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    state = restore(saved, fresh_model, fresh_optimizer, fresh_scaler)
    assert state == {"epoch": 1}
    assert fresh_scaler.get_scale() == 2.0**13
    assert fresh_scaler.state_dict() == scaler.state_dict()


def test_a_disabled_scaler_neither_writes_nor_reads_a_scale():
    model, optimizer = _model_and_optimizer()
    saved = checkpoint_bytes(model, optimizer, {"epoch": 2}, torch.amp.GradScaler("cpu", enabled=False))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    restore(saved, *_model_and_optimizer(), scaler)
    assert scaler.state_dict()["scale"] == 2.0**16
