"""How `tessera train --follow` and `tessera demo` print an epoch's metrics: each metric's name
with its value, never wrapped apart at the terminal's width."""

from __future__ import annotations

import io
import re

from rich.console import Console

from tessera.events import EpochMetrics
from tessera.follow import Curves, _live


def test_an_epoch_line_wrapped_at_80_columns_keeps_each_metric_with_its_value():
    # The demo's first epoch: at 80 columns the line wrapped between "val_loss" and its value.
    metrics = {"train_accuracy": 0.5972, "train_loss": 0.6473, "val_accuracy": 0.9167, "val_loss": 0.6236}
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    event = EpochMetrics(seq=5, time=None, attempt=1, epoch=1, step=9, metrics=metrics, duration_s=0.2)
    _live([event], Curves(), console)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("epoch 1: ") for line in lines), lines
    for key, value in metrics.items():
        assert any(re.search(rf"\b{key}\W{value:g}\b", line) for line in lines), (key, lines)
