"""A sweep's search space: ranges (uniform, log-uniform, integer), categorical values, and
conditional parameters (present only while an earlier categorical parameter takes given values).

Values travel as text, as the API gives them; `trial_spec` parses them to each field's type.
A point is {path: text} holding the parameters active at that point, in the space's order.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from tesserad.config import format_size
from tesserad.errors import InvalidArgument
from tesserad.registry.validation import MAX_JOB_SPEC_BYTES

MAX_TRIALS = 1000
# A sweep's parameters, serialized: they travel whole in every answer with the sweep, as a version's
# job spec does (registry.validation.MAX_JOB_SPEC_BYTES); a grid of MAX_TRIALS points takes a few KiB.
MAX_SEARCH_SPACE_BYTES = 256 * 2**10
# A categorical value, in characters: each trial keeps the values it draws, as given, in the
# sweep's record (written again at each trial's update), and a number parses from text padded
# to any length. As long as a tag key.
MAX_VALUE_CHARACTERS = 250


@dataclass(frozen=True)
class SweepParameter:
    path: str
    values: list[str] | None = None  # categorical: explicit values (as text)
    low: float = 0.0
    high: float = 0.0
    log_scale: bool = False
    integer: bool = False
    # Present only while the parameter at `when_path` takes one of `when_values`.
    when_path: str = ""
    when_values: tuple[str, ...] = ()


def check_search_space_size(size: int) -> None:
    """InvalidArgument unless a sweep's parameters of `size` bytes (serialized) fit MAX_SEARCH_SPACE_BYTES."""
    if size > MAX_SEARCH_SPACE_BYTES:
        raise InvalidArgument(
            f"spec.parameters take {format_size(size)} ({size:,} bytes) serialized; a sweep's search space "
            f"takes at most {format_size(MAX_SEARCH_SPACE_BYTES)}, as it travels whole in every answer with "
            "the sweep (GetSweep, ListSweeps): list fewer or shorter values"
        )


def check_base_size(size: int) -> None:
    """InvalidArgument unless a sweep's base spec of `size` bytes (serialized) fits MAX_JOB_SPEC_BYTES,
    registering or not: each of up to MAX_TRIALS trials keeps a copy in its job's record (its spec
    and its config), where the run-text bound alone (2 MiB) let a sweep take gigabytes."""
    if size > MAX_JOB_SPEC_BYTES:
        raise InvalidArgument(
            f"spec.base takes {format_size(size)} ({size:,} bytes) serialized; a sweep's base spec takes "
            f"at most {format_size(MAX_JOB_SPEC_BYTES)}, as each of its trials keeps a copy in its job's "
            "record; keep large values in a file and name it"
        )


def check_space(parameters: list[SweepParameter]) -> None:
    """Refuse a space no searcher can draw from, naming the parameter and what to fix."""
    if not parameters:
        raise InvalidArgument("spec.parameters: a sweep varies at least one field")
    first_of: dict[str, int] = {}
    for i, p in enumerate(parameters):
        if p.path and p.path in first_of:
            raise InvalidArgument(
                f"spec.parameters[{i}].path: {p.path[:80]!r} is listed twice (spec.parameters"
                f"[{first_of[p.path]}] sets it too); give each field one parameter, with every value it takes"
            )
        first_of.setdefault(p.path, i)
    earlier: dict[str, SweepParameter] = {}
    for i, p in enumerate(parameters):
        where = f"spec.parameters[{i}]"
        if not p.path:
            raise InvalidArgument(
                f"{where}.path: is required: the JobSpec field the parameter sets, e.g. optimizer.lr"
            )
        if p.values is not None and not p.values:
            raise InvalidArgument(f"{where}.values: list at least one value")
        for j, value in enumerate(p.values or ()):
            if len(value) > MAX_VALUE_CHARACTERS:
                raise InvalidArgument(
                    f"{where}.values[{j}]: {value[:80]!r}… is {len(value):,} characters; a sweep's value "
                    f"takes at most {MAX_VALUE_CHARACTERS}, as every trial keeps the values it draws: "
                    "give shorter ones"
                )
        if p.values is None:
            if not (math.isfinite(p.low) and math.isfinite(p.high)):
                raise InvalidArgument(
                    f"{where}.range: min and max must be finite numbers, got {p.low} and {p.high}"
                )
            if p.low > p.high:
                raise InvalidArgument(f"{where}.range: need min <= max, got {p.low} and {p.high}")
            if p.log_scale and p.low <= 0:
                raise InvalidArgument(f"{where}.range: a log-scale range needs min > 0")
            if p.integer and not (float(p.low).is_integer() and float(p.high).is_integer()):
                raise InvalidArgument(f"{where}.range: an integer range needs whole min and max")
        if p.when_path:
            parent = earlier.get(p.when_path)
            if parent is None or parent.values is None:
                raise InvalidArgument(
                    f"{where}.when: {p.when_path!r} must be a categorical parameter listed before {p.path!r}"
                )
            unknown = [v for v in p.when_values if v not in parent.values]
            if not p.when_values or unknown:
                raise InvalidArgument(
                    f"{where}.when: give values of {p.when_path!r} among {', '.join(parent.values)}"
                )
        earlier[p.path] = p


def is_active(p: SweepParameter, point: dict[str, str]) -> bool:
    return not p.when_path or point.get(p.when_path) in p.when_values


def is_conditional(parameters: list[SweepParameter]) -> bool:
    return any(p.when_path for p in parameters)


def draw(p: SweepParameter, rng: random.Random) -> str:
    """One value of `p`, uniform over its values or its (log-)range."""
    if p.values is not None:
        return rng.choice(p.values)
    if p.log_scale:
        value = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
    else:
        value = rng.uniform(p.low, p.high)
    return number_text(p, value)


def number_text(p: SweepParameter, value: float) -> str:
    """`value` clipped to p's range, as text (rounded for an integer range)."""
    value = min(max(value, p.low), p.high)
    return str(round(value)) if p.integer else repr(value)


def random_point(parameters: list[SweepParameter], rng: random.Random) -> dict[str, str]:
    point: dict[str, str] = {}
    for p in parameters:
        if is_active(p, point):
            point[p.path] = draw(p, rng)
    return point


def grid_points(parameters: list[SweepParameter], limit: int) -> list[dict[str, str]]:
    """Every combination of the values, a conditional parameter only where it is active, in
    order (the last parameter varying fastest); the first `limit` of them. Built branch by
    branch, so a grid far larger than `limit` is never listed whole."""
    for i, p in enumerate(parameters):
        if p.values is None:
            raise InvalidArgument(
                f"spec.parameters[{i}]: a grid sweep needs explicit values for {p.path}, not a range"
            )
    points: list[dict[str, str]] = []
    stack: list[tuple[int, dict[str, str]]] = [(0, {})]
    while stack and len(points) < limit:
        index, point = stack.pop()
        if index == len(parameters):
            points.append(point)
            continue
        p = parameters[index]
        if not is_active(p, point):
            stack.append((index + 1, point))
            continue
        # A value listed twice gives its points once; reversed, so the first value is taken first.
        for value in reversed(list(dict.fromkeys(p.values or ()))):
            stack.append((index + 1, {**point, p.path: value}))
    return points


def point_key(point: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A point as a set's key: the same parameters with the same values, in any order."""
    return tuple(sorted(point.items()))


def _active_part(parameters: list[SweepParameter], full: dict[str, str]) -> dict[str, str]:
    point: dict[str, str] = {}
    for p in parameters:
        if is_active(p, point):
            point[p.path] = full[p.path]
    return point


def boundary_points(parameters: list[SweepParameter]) -> Iterator[dict[str, str]]:
    """Points that set each parameter to each of its extremes (min, max, every value), the others
    at their first: what a searcher that draws as it goes can reach is checked at submit this way."""
    first = {p.path: p.values[0] if p.values else number_text(p, p.low) for p in parameters}
    by_path = {p.path: p for p in parameters}
    seen: set[tuple[tuple[str, str], ...]] = set()
    for p in parameters:
        extremes = p.values if p.values is not None else [number_text(p, p.low), number_text(p, p.high)]
        for value in extremes:
            full = {**first, p.path: value}
            parent = p
            while parent.when_path:  # switch on what makes p present
                full[parent.when_path] = parent.when_values[0]
                parent = by_path[parent.when_path]
            point = _active_part(parameters, full)
            if point_key(point) not in seen:
                seen.add(point_key(point))
                yield point


# The fields that together set how many steps a job trains against its warm-up: each at the
# end that leaves the fewest steps for the longest warm-up.
_MOST = ("lr_schedule.warmup_steps", "batch_size", "devices.count")
# 0 lifts the limit, so the fewest is the least above 0; but 0 in both is a job of no length,
# which SubmitJob refuses, so a 0 either may take is tried too.
_FEWEST = ("epochs", "max_steps")
# Which samples an epoch goes through: the dataset version (name and number) and its split. The
# fewest steps are at the fewest samples, so the one with the fewest is tried.
_DATASET = ("data.dataset.name", "data.dataset.version")
_SPLIT = "data.train_split"
_SAMPLES = (*_DATASET, _SPLIT)

# The sample count of each split of the dataset version a point names (the base's name or number
# where the point leaves it out); None where that version does not exist or the point's number
# is not one.
SplitSamples = Callable[[dict[str, str]], Mapping[str, int] | None]


def fewest_steps_points(
    parameters: list[SweepParameter], split_samples: SplitSamples, base_split: str
) -> list[dict[str, str]]:
    """The points with the longest warm-up in the shortest jobs the space reaches, when the space
    varies the warm-up and what the job's length depends on: no boundary point has them all at
    their worst at once, yet a searcher that draws as it goes may draw them so. Where the length
    is not monotone in a field (epochs and max_steps at 0), a point is made for each of its
    candidates; the samples are the fewest of any dataset version and split listed (trained on
    `base_split` where the space leaves it out). A listed dataset version or split that does not
    exist gives the first such point instead, whose check says what is missing.

    `split_samples` is asked once per dataset version listed, and each answer read for at most
    one split more than it has, so the work grows with the lists' lengths, not their product;
    only the names times the numbers, each its own dataset version, are capped."""
    paths = {p.path for p in parameters}
    if "lr_schedule.warmup_steps" not in paths or not paths & {*_MOST[1:], *_FEWEST, *_SAMPLES}:
        return []
    full = {p.path: p.values[0] if p.values else number_text(p, p.low) for p in parameters}
    for p in parameters:
        if p.path in _MOST:
            full[p.path] = _extreme(p, max)
    length = (*_FEWEST, *_SAMPLES)
    for p in parameters:
        # Switch on what makes a varied field present, unless that is itself one of them.
        if p.path in (*_MOST, *length) and p.when_path and p.when_path not in (*_MOST, *length):
            full[p.when_path] = p.when_values[0]
    by_path = {p.path: p for p in parameters}
    varied = [path for path in _DATASET if path in by_path]
    versions = [[(path, value) for value in _every(by_path[path])] for path in varied]
    count = math.prod(len(values) for values in versions)
    if count > MAX_TRIALS:
        # Each name with each number is a version of its own, looked up one by one.
        raise InvalidArgument(
            f"spec.parameters: {' and '.join(varied)} name {count} dataset versions, more than the "
            f"{MAX_TRIALS} trials a sweep runs could train on: list fewer values of {' or '.join(varied)}"
        )
    splits = _every(by_path[_SPLIT]) if _SPLIT in by_path else []
    fewest: tuple[int, dict[str, str]] | None = None
    for choice in itertools.product(*versions):
        at = {**full, **dict(choice)}
        point = _active_part(parameters, at)
        samples = split_samples(point)
        if samples is None:
            return [point]
        tried = (
            ((split, {**at, _SPLIT: split}) for split in splits) if _SPLIT in point else [(base_split, at)]
        )
        for split, at_split in tried:
            in_split = samples.get(split)
            if in_split is None:
                # The splits are listed once each: at most one past the version's own is read.
                return [_active_part(parameters, at_split)]
            if fewest is None or in_split < fewest[0]:
                fewest = in_split, at_split
    assert fewest is not None  # every version listed has its samples, or was returned above
    candidates = [
        [(p.path, value) for value in _with_zero(p, _extreme(p, min, above_zero=True))]
        for p in parameters
        if p.path in _FEWEST
    ]
    return _points(parameters, fewest[1], candidates)


# The rates a fine-tuning job's backbone learns at, whose product spec.MAX_LR bounds.
_RATES = ("optimizer.lr", "lr_schedule.one_cycle.max_lr", "backbone_lr_scale")


def highest_rate_points(parameters: list[SweepParameter]) -> list[dict[str, str]]:
    """The points with the highest backbone rate the space reaches, when it varies
    backbone_lr_scale and the rate it scales: as with the warm-up, no boundary point has both at
    their highest. A 0 the space has is a candidate too, which SubmitJob refuses in each (each
    must be > 0)."""
    paths = {p.path for p in parameters}
    if "backbone_lr_scale" not in paths or not paths & set(_RATES[:2]):
        return []
    full = {p.path: p.values[0] if p.values else number_text(p, p.low) for p in parameters}
    for p in parameters:
        if p.path in _RATES and p.when_path and p.when_path not in _RATES:
            full[p.when_path] = p.when_values[0]
    candidates = [
        [(p.path, value) for value in _with_zero(p, _extreme(p, max))] for p in parameters if p.path in _RATES
    ]
    return _points(parameters, full, candidates)


def _points(
    parameters: list[SweepParameter], full: dict[str, str], candidates: list[list[tuple[str, str]]]
) -> list[dict[str, str]]:
    """Each combination of the candidates over `full`, the parameters active there, each once."""
    points: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for choice in itertools.product(*candidates):
        point = _active_part(parameters, {**full, **dict(choice)})
        points.setdefault(point_key(point), point)
    return list(points.values())


def _with_zero(p: SweepParameter, value: str) -> list[str]:
    """`value`, and 0 where p takes it."""
    if p.values is not None:
        zero = [v for v in p.values if _is_number(v) and float(v) == 0]
    else:
        zero = [number_text(p, 0.0)] if p.low <= 0 <= p.high else []
    return list(dict.fromkeys([value, *zero[:1]]))


def _every(p: SweepParameter) -> list[str]:
    return (
        list(dict.fromkeys(p.values))
        if p.values is not None
        else [number_text(p, p.low), number_text(p, p.high)]
    )


def _extreme(p: SweepParameter, pick: Callable[[list[float]], float], above_zero: bool = False) -> str:
    if p.values is not None:
        numbers = {float(v): v for v in p.values if _is_number(v) and (float(v) > 0 or not above_zero)}
        return numbers[pick(list(numbers))] if numbers else p.values[0]
    low = p.low
    if above_zero and low < 1 <= p.high:  # epochs and max_steps take whole numbers
        low = 1.0
    return number_text(p, pick([low, p.high]))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def plan_points(
    searcher: str, parameters: list[SweepParameter], max_trials: int, seed: int, strategy: str = ""
) -> list[dict[str, str]]:
    """Every trial's values for the searchers that plan them all at submit: grid and random.
    `strategy`: the one asked for, named in messages (ASHA and Hyperband search at random)."""
    check_space(parameters)
    if max_trials < 0:
        raise InvalidArgument(f"spec.max_trials must be >= 0, got {max_trials}")
    if searcher == "grid":
        # Grid's max_trials is an upper bound; past MAX_TRIALS it bounds nothing a sweep may run.
        points = grid_points(parameters, min(max_trials or MAX_TRIALS + 1, MAX_TRIALS + 1))
        if len(points) > MAX_TRIALS:
            raise InvalidArgument(
                f"the grid has more than {MAX_TRIALS} points, the most one sweep runs: "
                f"list fewer values, or set max_trials to run the first {MAX_TRIALS} or fewer"
            )
    else:
        if max_trials == 0:
            raise InvalidArgument(
                f"spec.max_trials: a {strategy or searcher} sweep needs the number of trials (> 0)"
            )
        if max_trials > MAX_TRIALS:  # checked before drawing them
            raise InvalidArgument(
                f"spec.max_trials: a sweep runs at most {MAX_TRIALS} trials, got {max_trials}"
            )
        rng = random.Random(seed)
        points = [random_point(parameters, rng) for _ in range(max_trials)]
    return points
