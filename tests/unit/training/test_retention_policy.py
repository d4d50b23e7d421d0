"""The retention policy an ended job's checkpoints go through (training.job_records.retained_at_end),
and which of them an answer lists (listed_checkpoints)."""

from __future__ import annotations

from dataclasses import replace

from tesserad.training.job_records import (
    MAX_LISTED_CHECKPOINTS,
    Checkpoint,
    listed_checkpoints,
    retained_at_end,
)


def _checkpoint(epoch: int, loss: float, sha256: str = "", reason: str = "periodic") -> Checkpoint:
    return Checkpoint(
        epoch, epoch * 10, reason, reason == "periodic", False, {"loss": loss}, sha256 or f"s{epoch}", 1
    )


CHECKPOINTS = (_checkpoint(1, 0.9), _checkpoint(2, 0.2), _checkpoint(3, 0.5), _checkpoint(4, 0.4))


def test_it_keeps_the_newest_and_the_best_by_the_metric() -> None:
    kept, dropped = retained_at_end(CHECKPOINTS, 1, 1, "loss", "min")
    assert [c.epoch for c in kept] == [2, 4] and dropped == {"s1", "s3"}
    kept, dropped = retained_at_end(CHECKPOINTS, 2, 1, "loss", "max")
    assert [c.epoch for c in kept] == [1, 3, 4] and dropped == {"s2"}


def test_without_a_metric_best_keeps_none_and_zero_keeps_nothing() -> None:
    assert [c.epoch for c in retained_at_end(CHECKPOINTS, 1, 3, "", "")[0]] == [4]
    kept, dropped = retained_at_end(CHECKPOINTS, 0, 0, "loss", "min")
    assert kept == () and dropped == {"s1", "s2", "s3", "s4"}


def test_the_final_checkpoint_is_the_newest_and_a_shared_blob_stays_while_one_keeps_it() -> None:
    final = _checkpoint(4, 0.4, sha256="s4", reason="final")
    kept, dropped = retained_at_end((*CHECKPOINTS, final), 1, 0, "", "")
    assert kept == (final,) and dropped == {"s1", "s2", "s3"}


def test_an_answer_lists_every_checkpoint_up_to_its_cap_then_the_final_the_best_and_the_newest() -> None:
    many = tuple(_checkpoint(epoch, 1.0) for epoch in range(1, 41))
    best = replace(many[2], best=True, reason="best")
    final = _checkpoint(41, 1.0, reason="final")
    checkpoints = (*many[:2], best, *many[3:], final)
    assert listed_checkpoints(checkpoints[:MAX_LISTED_CHECKPOINTS]) == checkpoints[:MAX_LISTED_CHECKPOINTS]
    listed = listed_checkpoints(checkpoints)
    newest = [c.epoch for c in checkpoints[-(MAX_LISTED_CHECKPOINTS - 1) :]]
    assert [c.epoch for c in listed] == [best.epoch, *newest]
    assert listed[-1] is final and len(listed) == MAX_LISTED_CHECKPOINTS
