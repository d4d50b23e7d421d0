"""What `tessera demo` (and so `tessera train --follow`) prints while a job runs: each state
once, in words, and the worker's text as it is."""

from __future__ import annotations


def test_the_demo_says_each_state_once(tessera_cli):
    result = tessera_cli("demo", "--samples", "48", "--epochs", "1", "--requests", "5")
    assert result.code == 0, result.err
    lines = [line.strip() for line in result.out.splitlines()]
    assert "(cnn4d, 1 epoch)" in result.out
    assert "queued" in lines and "started on cpu:0" in lines and "finished" in lines
    for doubled in ("queued: queued", "running: started", "succeeded: finished"):
        assert doubled not in result.out
    # The summary names the last step's loss apart from the epoch's train_loss.
    assert "loss (last step)" in result.out and "train_loss" in result.out
