"""Ensemble versions: a small JSON spec naming member versions and how their outputs combine.

The spec is the version's artifact (format "ensemble"). It is parsed here for both the
registry (checked at registration: members exist, are not ensembles, share one signature)
and the serving layer (which loads the members and combines their answers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tesserad.errors import InvalidArgument, NotFound
from tesserad.numbers import INT64_MAX
from tesserad.registry.artifacts import signature_differences
from tesserad.registry.records import Signature, VersionRecord

COMBINES = ("mean", "vote", "weighted_mean", "stacking")
MAX_SPEC_BYTES = 1 << 20
MAX_MEMBERS = 32
_FLOAT_DTYPES = ("float16", "float32", "float64")
_KEYS = {"members", "combine", "weights", "stacking"}


@dataclass(frozen=True)
class Member:
    model: str
    version: int

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class EnsembleSpec:
    """Members and the combine: "mean" of their outputs, "vote" (each member's argmax over the
    last axis is one vote; the answer is each class's share of the votes), "weighted_mean"
    (`weights`, one per member), or "stacking" (a trained linear combiner: the members' outputs
    concatenated on the last axis, times `stacking_weights` (members x classes rows, classes
    columns), plus `stacking_bias`)."""

    members: tuple[Member, ...]
    combine: str
    weights: tuple[float, ...] = ()
    stacking_weights: tuple[tuple[float, ...], ...] = ()
    stacking_bias: tuple[float, ...] = ()

    @property
    def parameter_count(self) -> int:
        return len(self.weights) + sum(map(len, self.stacking_weights)) + len(self.stacking_bias)


def parse_ensemble_spec(data: bytes) -> EnsembleSpec:
    """The spec in an ensemble artifact; InvalidArgument naming the first field that is wrong."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the ensemble spec is not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("the ensemble spec must be a JSON object with members and combine")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise InvalidArgument(
            f"the ensemble spec has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    members = _members(raw.get("members"))
    combine = raw.get("combine")
    if combine not in COMBINES:
        raise InvalidArgument(f"ensemble combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    weights: tuple[float, ...] = ()
    stacking_weights: tuple[tuple[float, ...], ...] = ()
    stacking_bias: tuple[float, ...] = ()
    if "weights" in raw and combine != "weighted_mean":
        raise InvalidArgument(f"ensemble weights are for combine weighted_mean, not {combine}")
    if "stacking" in raw and combine != "stacking":
        raise InvalidArgument(f"an ensemble stacking combiner is for combine stacking, not {combine}")
    if combine == "weighted_mean":
        weights = _numbers("weights", raw.get("weights"))
        if len(weights) != len(members):
            raise InvalidArgument(
                f"ensemble weights has {len(weights)} value(s) for {len(members)} members; give one per member"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise InvalidArgument("ensemble weights must be >= 0 with a positive sum")
    elif combine == "stacking":
        stacking_weights, stacking_bias = _stacking(raw.get("stacking"), len(members))
    return EnsembleSpec(members, combine, weights, stacking_weights, stacking_bias)


def _members(value: Any) -> tuple[Member, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_MEMBERS:
        raise InvalidArgument(
            f"ensemble members must be a list of 2 to {MAX_MEMBERS} {{model, version}} objects"
        )
    members: list[Member] = []
    for i, item in enumerate(value):
        model = item.get("model") if isinstance(item, dict) else None
        version = item.get("version") if isinstance(item, dict) else None
        if not isinstance(model, str) or not model:
            raise InvalidArgument(f"ensemble members[{i}].model is required (a model name)")
        # Bounded: a version over int64 reached the store's key encoding as INTERNAL.
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= INT64_MAX:
            raise InvalidArgument(
                f"ensemble members[{i}].version must be a version number in 1..{INT64_MAX}, got {version!r}"
            )
        member = Member(model, version)
        if member in members:
            raise InvalidArgument(
                f"ensemble member {member.label} is listed twice; use combine weighted_mean to weigh it more"
            )
        members.append(member)
    return tuple(members)


def _numbers(field: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise InvalidArgument(f"ensemble {field} must be a list of finite numbers")
    return tuple(float(v) for v in value)


def _stacking(value: Any, members: int) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    if not isinstance(value, dict) or not isinstance(value.get("weights"), list):
        raise InvalidArgument(
            "combine stacking needs stacking = {weights: [[...], ...], bias: [...]}: the trained linear "
            "combiner (tessera's fit_stacking fits one)"
        )
    rows = tuple(_numbers("stacking.weights rows", row) for row in value["weights"])
    bias = _numbers("stacking.bias", value.get("bias"))
    classes = len(bias)
    if classes == 0 or len(rows) != members * classes or any(len(row) != classes for row in rows):
        raise InvalidArgument(
            f"ensemble stacking.weights must be {members} members x {classes} classes = "
            f"{members * classes} rows of {classes} (the length of stacking.bias); got {len(rows)} rows"
        )
    return rows, bias


def ensemble_signature(spec: EnsembleSpec, members: list[VersionRecord], declared: Signature) -> Signature:
    """The signature every member shares, checked against `declared` when one was given.

    `members` are the member versions' records in the spec's order (`member_records`).
    InvalidArgument naming the member and the mismatch.
    """
    first = members[0]
    for member, record in zip(spec.members[1:], members[1:], strict=True):
        differences = signature_differences(first.signature, record.signature)
        if differences:
            raise InvalidArgument(
                f"ensemble members' signatures must agree: {member.label} differs from "
                f"{spec.members[0].label}: {'; '.join(differences)}"
            )
    signature = first.signature
    if declared.inputs or declared.outputs:
        differences = signature_differences(declared, signature)
        if differences:
            raise InvalidArgument(
                "the declared signature does not match the ensemble members' (a: declared, b: members'): "
                + "; ".join(differences)
            )
    for spec_out in signature.outputs:
        if spec_out.dtype not in _FLOAT_DTYPES:
            raise InvalidArgument(
                f"an ensemble combines floating-point outputs (scores or probabilities); output "
                f"{spec_out.name!r} of its members is {spec_out.dtype}"
            )
    if spec.combine == "stacking":
        if len(signature.outputs) != 1:
            raise InvalidArgument(
                f"combine stacking needs members with one output; they have {len(signature.outputs)}"
            )
        last = signature.outputs[0].shape[-1:] or (1,)
        if last[0] != -1 and last[0] != len(spec.stacking_bias):
            raise InvalidArgument(
                f"ensemble stacking.bias has {len(spec.stacking_bias)} values, but the members' output "
                f"{signature.outputs[0].name!r} has {last[0]} on its last axis"
            )
    return signature


def member_records(spec: EnsembleSpec, lookup: Callable[[str, int], VersionRecord]) -> list[VersionRecord]:
    """Each member's version record via `lookup(model, version)`; NotFound naming a missing member,
    InvalidArgument for a member that is itself an ensemble."""
    records: list[VersionRecord] = []
    for member in spec.members:
        try:
            record = lookup(member.model, member.version)
        except NotFound as exc:
            raise NotFound(f"ensemble member {member.label} does not exist: {exc.message}") from None
        if record.format == "ensemble":
            raise InvalidArgument(
                f"ensemble member {member.label} is itself an ensemble; list its members instead"
            )
        records.append(record)
    return records
