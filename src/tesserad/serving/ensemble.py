"""Ensembles in the serving layer: a runtime that sends each batch to every member version at
once, through the members' own batchers (loaded in the pool like any version, each with its
own worker threads, so members run in parallel), and combines their answers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tesserad.errors import FailedPrecondition, NotFound, Unavailable
from tesserad.registry.ensembles import EnsembleSpec, Member
from tesserad.serving.batcher import Answer, BatcherClosed, MemberAnswer
from tesserad.serving.signature import Signature, validate_request

if TYPE_CHECKING:
    from tesserad.serving.pool import LoadedVersion, ServableVersion

# A member swapped out between finding it and queuing to it is looked up again; more rounds
# than this means it is being unloaded faster than a request can find it.
_MAX_MEMBER_ROUNDS = 5


@dataclass(frozen=True)
class EnsemblePlan:
    """An ensemble version's spec with each member as the pool loads it."""

    spec: EnsembleSpec
    members: tuple[ServableVersion, ...]


def plan_ensemble(
    model: str, version: int, spec: EnsembleSpec, member_servable: Callable[[Member], ServableVersion]
) -> EnsemblePlan:
    """The plan of ensemble `version` of `model`, each member from its source;
    FailedPrecondition naming a member deleted since the ensemble was registered."""
    members: list[ServableVersion] = []
    for member in spec.members:
        try:
            members.append(member_servable(member))
        except NotFound as exc:
            raise FailedPrecondition(
                f"model {model!r} version {version} is an ensemble whose member "
                f"{member.label} no longer exists ({exc.message}); register a new ensemble "
                "version whose members exist"
            ) from None
    return EnsemblePlan(spec, tuple(members))


class EnsembleRuntime:
    """One instance of an ensemble version. `member_entry` gives a member's READY entry in the
    pool, loading it again if it was unloaded since the ensemble loaded."""

    def __init__(
        self,
        label: str,
        plan: EnsemblePlan,
        signature: Signature,
        member_entry: Callable[[ServableVersion], LoadedVersion],
        device: str,
    ) -> None:
        self._label = label
        self._plan = plan
        self._member_entry = member_entry
        self.signature = signature
        self.device = device
        self.memory_bytes = 0  # the members' memory is theirs, reported under their names
        # The members' answers to the batch last run, read by the batcher after `run` (the
        # runtime is its worker's alone meanwhile): its requests' child traces.
        self.member_answers: tuple[MemberAnswer, ...] = ()

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        return self._run(inputs, output_names, warmup=False)

    def warm_up(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """`run` for the ensemble's warm-up: through the members' batchers, as its requests go
        (that is what it warms), but counted in none of the members' figures or cost estimates."""
        return self._run(inputs, output_names, warmup=True)

    def _run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *, warmup: bool
    ) -> dict[str, np.ndarray]:
        # Queued to every member before waiting on any: the members' workers run at once.
        futures = [self._submit(member, inputs, output_names, warmup) for member in self._plan.members]
        predictions = [future.result() for future in futures]
        self.member_answers = tuple(
            MemberAnswer(member.model, member.version, prediction)
            for member, prediction in zip(self._plan.members, predictions, strict=True)
        )
        return combine(self._plan, [p.outputs for p in predictions], output_names)

    def helper_cpu_ns(self) -> int:
        """0: its members run in their own batchers, which cost their own batches."""
        return 0

    def _submit(
        self,
        member: ServableVersion,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        warmup: bool,
    ) -> Answer:
        for _ in range(_MAX_MEMBER_ROUNDS):
            entry = self._member_entry(member)
            batcher, signature = entry.batcher, entry.signature
            if batcher is None or signature is None:
                continue
            rows = validate_request(signature, inputs, output_names, entry.label, strings=True)
            try:
                # Never inline: this worker thread would run the members one after another.
                return batcher.submit(inputs, output_names, rows, allow_inline=False, warmup=warmup)
            except BatcherClosed:
                continue
        raise Unavailable(
            f"member {member.model}:{member.version} of {self._label} is being unloaded or swapped "
            "repeatedly; retry the request"
        )

    def close(self) -> None:
        """Nothing to free: the members stay loaded (other ensembles or clients may use them)."""


def combine(
    plan: EnsemblePlan, answers: list[dict[str, np.ndarray]], output_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The ensemble's outputs from its members' (in the spec's order), each in the members' dtype."""
    spec = plan.spec
    combined: dict[str, np.ndarray] = {}
    for name in output_names:
        arrays = [answer[name] for answer in answers]
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise FailedPrecondition(
                f"the members answered output {name!r} in different shapes "
                f"({', '.join(f'{m.model}:{m.version} {list(a.shape)}' for m, a in zip(plan.members, arrays, strict=True))}); "
                "an ensemble needs members whose outputs agree"
            )
        stack = np.stack(arrays).astype(np.float64)  # (members, *output shape)
        if spec.combine == "mean":
            value = stack.mean(axis=0)
        elif spec.combine == "weighted_mean":
            weights = np.asarray(spec.weights)
            value = np.tensordot(weights / weights.sum(), stack, axes=1)
        elif spec.combine == "vote":
            classes = stack.shape[-1]
            votes = stack.argmax(axis=-1)[..., None] == np.arange(classes)  # (members, ..., classes)
            value = votes.mean(axis=0)
        else:
            value = _stack_linear(spec, stack, name)
        combined[name] = value.astype(arrays[0].dtype)
    return combined


def _stack_linear(spec: EnsembleSpec, stack: np.ndarray, name: str) -> np.ndarray:
    """The stacking combiner: members' outputs side by side on the last axis, times W, plus b."""
    features = np.concatenate(list(stack), axis=-1)  # (..., members * classes)
    weights = np.asarray(spec.stacking_weights)  # (members * classes, classes)
    if features.shape[-1] != weights.shape[0]:
        raise FailedPrecondition(
            f"the stacking combiner takes {weights.shape[0]} values per row (members x classes) but the "
            f"members' output {name!r} gives {features.shape[-1]}; refit it for these members"
        )
    result: np.ndarray = features @ weights + np.asarray(spec.stacking_bias)
    return result
