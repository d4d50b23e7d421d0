"""Ensemble versions: a small JSON spec naming member versions and how their outputs combine.

The spec is the version's artifact (format "ensemble"). It is parsed here for both the
registry (checked at registration: members exist, are not ensembles, share one signature)
and the serving layer (which loads the members and combines their answers).

A member is a version by number; an alias cannot name one (the spec refuses anything but a
number), so an alias on a member moves or goes freely. The member versions themselves are
pinned: the index tables `ENSEMBLE_MEMBERS` and `MEMBER_OF`, written in the ensemble
version's own transaction, let a delete refuse a version (or a model) that an ensemble of
another version uses, in the deleting transaction. Otherwise a deleted member broke the
ensemble at its next load, and a model deleted and created again by a tesserad that numbered
it from 1 (from before `tables.RETIRED_NUMBERS`) would hand the ensemble unrelated artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tesserad.client_json import parse_client_json
from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound
from tesserad.numbers import INT64_MAX
from tesserad.registry.artifacts import signature_differences
from tesserad.registry.records import Signature, VersionRecord
from tesserad.registry.tables import ENSEMBLE_MEMBERS, MEMBER_OF
from tesserad.store import ReadTxn, WriteTxn

COMBINES = ("mean", "vote", "weighted_mean", "stacking")
MAX_SPEC_BYTES = 1 << 20
MAX_MEMBERS = 32
# Ensembles named in one refused delete's message at most; the rest are counted.
_NAMED_USERS = 10
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
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the ensemble spec is not UTF-8 JSON: {exc}") from None
    raw = parse_client_json(
        text,
        "the ensemble spec",
        "it is an object of members and combine, as tessera.ensembles.ensemble_spec writes it",
    )
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


def index_members(txn: WriteTxn, ensemble: Member, spec: EnsembleSpec) -> None:
    """Record that the ensemble version `ensemble` uses each member of `spec`."""
    for member in spec.members:
        txn.put(ENSEMBLE_MEMBERS, (ensemble.model, ensemble.version, member.model, member.version), b"")
        txn.put(MEMBER_OF, (member.model, member.version, ensemble.model, ensemble.version), b"")


def unindex_members(txn: WriteTxn, ensemble: Member) -> None:
    """Forget the members of the ensemble version `ensemble` (nothing when it is not one)."""
    prefix = (ensemble.model, ensemble.version)
    for key, _ in txn.scan(ENSEMBLE_MEMBERS, prefix):
        txn.delete(MEMBER_OF, (key[2], key[3], ensemble.model, ensemble.version))
    txn.delete_range(ENSEMBLE_MEMBERS, prefix)


def check_no_ensemble_uses_version(txn: ReadTxn, member: Member) -> None:
    """FailedPrecondition naming the ensemble versions that use `member`, if any do."""
    users = [Member(str(k[2]), int(k[3])) for k, _ in txn.scan(MEMBER_OF, (member.model, member.version))]
    if not users:
        return
    those = "those ensemble versions" if len(users) > 1 else "that ensemble version"
    raise FailedPrecondition(
        f"version {member.version} of model {member.model!r} is a member of ensemble "
        f"version{'s' if len(users) > 1 else ''} {_labels(users)}; delete {those} first (to "
        f"replace one, register an ensemble version without {member.label} and move its aliases "
        "and deployment there)"
    )


def check_no_other_ensemble_uses_model(txn: ReadTxn, model: str) -> None:
    """FailedPrecondition naming the ensemble versions of models other than `model` that use any
    of its versions, if any do (its own ensembles go with it)."""
    uses: dict[Member, list[str]] = {}
    for key, _ in txn.scan(MEMBER_OF, (model,)):
        ensemble = Member(str(key[2]), int(key[3]))
        if ensemble.model != model:
            uses.setdefault(ensemble, []).append(Member(model, int(key[1])).label)
    if not uses:
        return
    named = [
        f"{ensemble.label} uses {' and '.join(members)}"
        for ensemble, members in sorted(uses.items(), key=lambda item: (item[0].model, item[0].version))
    ]
    more = f" and {len(named) - _NAMED_USERS} more" if len(named) > _NAMED_USERS else ""
    raise FailedPrecondition(
        f"model {model!r} cannot be deleted while ensembles of other models use its versions: "
        f"{', '.join(named[:_NAMED_USERS])}{more}; delete those ensemble versions (or their models) first"
    )


def _labels(members: list[Member]) -> str:
    more = f" and {len(members) - _NAMED_USERS} more" if len(members) > _NAMED_USERS else ""
    return ", ".join(m.label for m in members[:_NAMED_USERS]) + more
