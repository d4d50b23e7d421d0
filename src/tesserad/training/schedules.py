"""Learning rate as a pure function of the step, so a resumed job continues the same curve."""

from __future__ import annotations

import math
from typing import Any


def lr_at(
    schedule: dict[str, Any], base_lr: float, step: int, total_steps: int, steps_per_epoch: int
) -> float:
    """The rate for optimisation step `step` (0-based) of `total_steps`.

    Linear warm-up from 0 over `warmup_steps` applies before (multiplies) any schedule.
    """
    kind = schedule["kind"]
    if kind == "constant":
        lr = base_lr
    elif kind == "step":
        epoch = step // max(steps_per_epoch, 1)
        lr = base_lr * schedule["gamma"] ** (epoch // schedule["step_size"])
    elif kind == "cosine":
        progress = min(step / max(total_steps - 1, 1), 1.0)
        lr = schedule["min_lr"] + (base_lr - schedule["min_lr"]) * 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "one_cycle":
        lr = _one_cycle(schedule["max_lr"], schedule["pct_start"], step, total_steps)
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    warmup = schedule["warmup_steps"]
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


def _one_cycle(max_lr: float, pct_start: float, step: int, total_steps: int) -> float:
    """Smith's one-cycle with torch's defaults: max_lr/25 up to max_lr, cosine down to max_lr/1e4."""
    initial, final = max_lr / 25.0, max_lr / 25.0 / 1e4
    peak = max(pct_start * total_steps - 1, 1.0)
    if step <= peak:
        return initial + (max_lr - initial) * 0.5 * (1 - math.cos(math.pi * step / peak))
    progress = min((step - peak) / max(total_steps - 1 - peak, 1.0), 1.0)
    return final + (max_lr - final) * 0.5 * (1 + math.cos(math.pi * progress))
