"""Population-based training, generation by generation. Pure decisions.

A population of trials trains for the base spec's epochs; then each member of the next
generation either continues its slot's trial (its weights, its values) or, if that trial ended
in the bottom `quantile`, exploits a trial of the top `quantile`: starts from that trial's
weights with its values explored (each number scaled by 1 +- perturb, each categorical value
redrawn with `resample_probability`). A member records whose weights it starts from.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tesserad.errors import InvalidArgument
from tesserad.training.search_space import SweepParameter, draw, is_active, number_text


@dataclass(frozen=True)
class PbtSettings:
    population: int
    quantile: float
    perturb: float
    resample_probability: float


@dataclass(frozen=True)
class Member:
    """A trial of the generation that ended: its values and result (None: it has none)."""

    job_id: str
    params: dict[str, str]
    metric: float | None


@dataclass(frozen=True)
class NextMember:
    parent_job_id: str  # whose weights the new trial starts from
    params: dict[str, str]
    exploited: bool  # it copied a better trial, not its own slot's


def pbt_settings(asked: PbtSettings, max_trials: int) -> PbtSettings:
    """The settings with their defaults (population 4, quantile 0.25, perturb 0.2, resample 0.25), checked."""
    settings = PbtSettings(
        asked.population or 4,
        asked.quantile or 0.25,
        asked.perturb or 0.2,
        asked.resample_probability or 0.25,
    )
    if settings.population < 2:
        raise InvalidArgument(f"spec.pbt.population must be >= 2, got {settings.population}")
    if not 0 < settings.quantile <= 0.5:
        raise InvalidArgument(f"spec.pbt.quantile must be in (0, 0.5], got {settings.quantile}")
    if not 0 < settings.perturb < 1 or not 0 <= settings.resample_probability <= 1:
        raise InvalidArgument("spec.pbt: perturb must be in (0, 1) and resample_probability in [0, 1]")
    if max_trials < 2 * settings.population:
        raise InvalidArgument(
            f"spec.max_trials: PBT runs generations of {settings.population} trials; "
            f"give at least two generations ({2 * settings.population} trials), got {max_trials}"
        )
    return settings


def next_generation(
    members: list[Member],
    parameters: list[SweepParameter],
    settings: PbtSettings,
    mode: str,
    rng: random.Random,
) -> list[NextMember]:
    """The next generation, slot by slot; empty when no member has a result to build on."""
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted((m for m in members if m.metric is not None), key=lambda m: sign * (m.metric or 0.0))
    if not ranked:
        return []
    cut = max(1, math.floor(len(members) * settings.quantile))
    top = ranked[:cut]
    bottom = {m.job_id for m in ranked[len(ranked) - cut :] if m not in top}
    out = []
    for member in members:
        if member.metric is None or member.job_id in bottom:
            donor = rng.choice(top)
            out.append(NextMember(donor.job_id, explore(donor.params, parameters, settings, rng), True))
        else:
            out.append(NextMember(member.job_id, dict(member.params), False))
    return out


def explore(
    params: dict[str, str], parameters: list[SweepParameter], settings: PbtSettings, rng: random.Random
) -> dict[str, str]:
    """`params` perturbed: numbers scaled by 1 +- perturb (clipped to their range), categorical
    values redrawn with resample_probability; a parameter that becomes present is drawn afresh."""
    point: dict[str, str] = {}
    for p in parameters:
        if not is_active(p, point):
            continue
        if p.path not in params or rng.random() < settings.resample_probability:
            point[p.path] = draw(p, rng)
        elif p.values is not None:
            point[p.path] = params[p.path]
        else:
            factor = 1 + settings.perturb if rng.random() < 0.5 else 1 - settings.perturb
            value = float(params[p.path]) * factor
            if p.integer and round(value) == round(float(params[p.path])):  # move an integer by at least 1
                value += 1 if factor > 1 else -1
            point[p.path] = number_text(p, value)
    return point
