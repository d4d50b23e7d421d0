"""Sample splits: random by fractions (reproducible from a seed) or explicit index lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tesserad.errors import InvalidArgument
from tesserad.names import validate_name

DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class FractionSplit:
    """(name, fraction) pairs summing to 1 within 1e-6, shuffled with `seed` (>= 0); each
    split must come out with at least one sample."""

    fractions: tuple[tuple[str, float], ...]
    seed: int = 0


@dataclass(frozen=True)
class IndexSplit:
    """(name, indices) pairs; at least one index each, in [0, num_samples), no duplicates
    within a split."""

    splits: tuple[tuple[str, tuple[int, ...]], ...]


SplitSpec = FractionSplit | IndexSplit


def _check_names(names: list[str]) -> None:
    if not names:
        raise InvalidArgument("splits must name at least one split")
    for i, name in enumerate(names):
        validate_name(f"splits[{i}].name", name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"split names must be unique; repeated: {', '.join(duplicates)}")


def validate_split_spec(spec: SplitSpec | None) -> None:
    """What can be checked before the number of samples is known."""
    if spec is None:
        return
    if isinstance(spec, FractionSplit):
        _check_names([n for n, _ in spec.fractions])
        if spec.seed < 0:
            raise InvalidArgument(f"splits.fractions.seed must be >= 0, got {spec.seed}")
        for name, fraction in spec.fractions:
            if not 0 < fraction <= 1:
                raise InvalidArgument(f"split {name!r}: fraction must be in (0, 1], got {fraction}")
        total = sum(f for _, f in spec.fractions)
        if abs(total - 1) > 1e-6:
            raise InvalidArgument(f"split fractions must sum to 1, got {total:.6g}")
    else:
        _check_names([n for n, _ in spec.splits])
        for name, indices in spec.splits:
            if not indices:
                # Nothing could train or validate on it, as on a fraction that rounds to none.
                raise InvalidArgument(
                    f"split {name!r} lists no sample; give it the indices of at least one, or leave it out"
                )
            # Checked here, before the file is taken; the upper bound needs its sample count.
            values = np.asarray(indices, dtype=np.int64)
            if values.min() < 0:
                raise InvalidArgument(
                    f"split {name!r}: index {int(values[values < 0][0])} is negative; samples are "
                    "numbered from 0"
                )
            if np.unique(values).size != values.size:
                raise InvalidArgument(
                    f"split {name!r}: indices repeat (e.g. {_first_repeat(values)}); list each sample once"
                )


def compute_splits(spec: SplitSpec | None, num_samples: int) -> dict[str, np.ndarray]:
    """Sorted int64 sample indices of each split."""
    validate_split_spec(spec)
    if spec is None:
        return {DEFAULT_SPLIT: np.arange(num_samples, dtype=np.int64)}
    if isinstance(spec, FractionSplit):
        order = np.random.default_rng(spec.seed).permutation(num_samples)
        bounds = np.round(np.cumsum([f for _, f in spec.fractions]) * num_samples).astype(np.int64)
        bounds[-1] = num_samples
        out = {}
        low = 0
        for (name, fraction), high in zip(spec.fractions, bounds.tolist(), strict=True):
            if high == low:
                raise InvalidArgument(
                    f"split {name!r}: fraction {fraction:g} of {num_samples} samples rounds to none; "
                    "raise its fraction, drop the split or upload more samples"
                )
            out[name] = np.sort(order[low:high]).astype(np.int64)
            low = high
        return out
    out = {}
    for name, indices in spec.splits:
        values = np.asarray(indices, dtype=np.int64)
        bad = values[values >= num_samples]
        if bad.size:
            raise InvalidArgument(
                f"split {name!r}: index {int(bad[0])} is outside [0, {num_samples}) (the dataset has {num_samples} samples)"
            )
        out[name] = np.sort(values)
    return out


def _first_repeat(values: np.ndarray) -> int:
    uniques, counts = np.unique(values, return_counts=True)
    return int(uniques[counts > 1][0])
