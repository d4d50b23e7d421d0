"""Early stopping of trials: ASHA's rungs and Hyperband's brackets of ASHA. Pure bookkeeping.

ASHA (asynchronous successive halving): at rung epochs min_epochs * rf^k a trial continues only
while it is in the best 1/rf of the trials that reached that rung so far. Hyperband runs several
ASHA brackets side by side, bracket k with its first rung at min_epochs * rf^k, so that some
trials are judged early and often and others late; trials are dealt to brackets in the
proportions of Hyperband's schedule (more trials to the brackets that stop them sooner).
"""

from __future__ import annotations

import math
from typing import Any


def asha_prunes(
    rungs: dict[str, Any],
    job_id: str,
    metric: float,
    epoch: int,
    min_epochs: int,
    reduction_factor: int,
    mode: str,
    last_epoch: int,
) -> bool:
    """Record trial `job_id`'s `metric` if `epoch` is a rung (min_epochs * rf^k) and say
    whether the trial trails there: outside the best 1/rf of the trials that reached it.

    `rungs` maps a rung to {job id: metric}, so a trial resumed after a crash that reports a
    rung again counts once. The first trials at a rung have nothing to trail; they continue.
    At its `last_epoch` (its spec's epochs; 0: no epoch limit, it stops at max_steps) a trial
    has finished: its result ranks later trials, but it is complete, not pruned.
    """
    rung = rung_of(epoch, min_epochs, reduction_factor)
    if rung is None:
        return False
    results = rungs.setdefault(str(rung), {})
    if isinstance(results, list):  # sweeps recorded before results were keyed by trial
        results = rungs[str(rung)] = {f"#{i}": value for i, value in enumerate(results)}
    results[job_id] = metric
    # NaN (a trial that diverged) trails every number: it ranks last, never among the best.
    ranked = sorted((value for value in results.values() if value == value), reverse=mode == "max")
    keep = max(1, len(results) // reduction_factor)
    finished = 0 < last_epoch <= epoch
    if finished or len(results) < reduction_factor:
        return False
    return metric != metric or ranked.index(metric) >= keep


def rung_of(epoch: int, min_epochs: int, reduction_factor: int) -> int | None:
    """The rung (k) whose epoch min_epochs * rf^k `epoch` is; None if it is none."""
    rung_epochs, rung = min_epochs, 0
    while rung_epochs < epoch:
        rung_epochs *= reduction_factor
        rung += 1
    return rung if rung_epochs == epoch else None


def hyperband_counts(max_epochs: int, min_epochs: int, reduction_factor: int) -> list[int]:
    """Trials per bracket in one round of Hyperband; bracket k's first rung is min_epochs * rf^k.

    With s_max the number of brackets less one, bracket k gets ceil((s_max + 1) / (s + 1) * rf^s)
    trials for s = s_max - k (Li et al., Hyperband, 2018).
    """
    s_max = 0
    while min_epochs * reduction_factor ** (s_max + 1) <= max_epochs:
        s_max += 1
    return [
        math.ceil((s_max + 1) / (s + 1) * reduction_factor**s) for s in (s_max - k for k in range(s_max + 1))
    ]


def hyperband_bracket(number: int, counts: list[int]) -> int:
    """The bracket of trial `number`: brackets take turns, each in proportion to its count, so
    every prefix of the trials is split close to the round's proportions."""
    total = sum(counts)
    position = number % total
    dealt = [0] * len(counts)
    bracket = 0
    for i in range(position + 1):
        # The bracket furthest behind its share of the first i + 1 trials goes next.
        bracket = max(range(len(counts)), key=lambda k: (counts[k] * (i + 1) / total - dealt[k], -k))
        dealt[bracket] += 1
    return bracket


def bracket_min_epochs(bracket: int, min_epochs: int, reduction_factor: int) -> int:
    return int(min_epochs * reduction_factor**bracket)
