"""Sweeps as handles: `Sweep` (state, typed trials, the best one, wait, cancel), as `Job` is a
training job's."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tessera.calls import C, Call, Op, Part, call
from tessera.errors import (
    DeadlineExceeded,
    NotAnswering,
    StillRunning,
    SweepCancelled,
    SweepFailed,
    TesseraError,
    Unavailable,
)
from tessera.events import JobState
from tessera.state_words import StateWord
from tessera.transport import AioConnection, Connection, call_timeout
from tessera.v1 import job_spec_pb2
from tessera.v1 import training_pb2 as pb

S = "Training"

T = TypeVar("T")

# How long the polls of a sweep may go on failing (DEADLINE_EXCEEDED, UNAVAILABLE: a daemon
# restarting, a network down) before a wait gives up, raising the last failure: a restart ends
# no sweep, and a busy daemon's may take a minute or more. The CLI's followers of a job wait
# out a daemon that does not answer as long (`tessera.follow`).
FAILING_POLLS_S = 120.0


class SweepState(StateWord):
    """A sweep's state; the values are lowercase words ("running", "succeeded"), each also equal
    to its `tessera.v1` SweepState number (see `StateWord`)."""

    UNSPECIFIED = "unspecified"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @staticmethod
    def _numbers() -> type[pb.SweepState]:
        return pb.SweepState

    @property
    def finished(self) -> bool:
        """True for the states a sweep never leaves."""
        return self in (SweepState.SUCCEEDED, SweepState.FAILED, SweepState.CANCELLED)


ParamValue = bool | int | float | str
"""A trial's value of a parameter, typed as the JobSpec field its path names."""

_FLOATS = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)
_INTS = (
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
)


def _field_at(path: str) -> FieldDescriptor | None:
    """The single value field of JobSpec that `path` ("optimizer.lr") names; None for another path
    (a oneof's name, "architecture.family", takes a member's name: text)."""
    message: Descriptor | None = job_spec_pb2.JobSpec.DESCRIPTOR
    found = None
    for part in path.split("."):
        found = message.fields_by_name.get(part) if message is not None else None
        if found is None:
            return None
        message = found.message_type
    if found is None or message is not None or found.is_repeated:
        return None
    return found


def param_value(path: str, text: str) -> ParamValue:
    """A trial's value of the parameter at `path`, from the text the daemon keeps ("0.001"): a
    float, int or bool where the field is one, as the daemon parses it for the trial's spec;
    the text itself for a text or enum field, and where it does not parse."""
    found = _field_at(path)
    if found is None:
        return text
    if found.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return {"true": True, "false": False}.get(text.lower(), text)
    if found.cpp_type not in (*_FLOATS, *_INTS):
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if found.cpp_type in _FLOATS:
        return number
    # Digits read exactly: through a float, 2**53 + 1 would be 2**53.
    return int(text) if text.lstrip("+-").isdigit() else int(number) if number.is_integer() else text


@dataclass(frozen=True)
class SweepTrial:
    """One trial of a sweep: its place (`number`, from 0), its job and the job's state, the
    values it tried (`params`, by path, each typed as the JobSpec field it sets, as Optuna's
    are: 0.001 for optimizer.lr, 16 for batch_size, True, "adamw"; `info.params` has them as
    the daemon's text), and its `metric` (the sweep's, None until it reported one). `pruned`: a
    pruner (ASHA, Hyperband) stopped it early; `error`: why its job could not be submitted.
    `info` is the `tessera.v1` SweepTrial with the rest (bracket, generation, parent_job_id)."""

    number: int
    job_id: str
    state: JobState
    params: dict[str, ParamValue]
    metric: float | None
    pruned: bool
    error: str
    info: pb.SweepTrial

    @classmethod
    def from_proto(cls, trial: pb.SweepTrial) -> SweepTrial:
        return cls(
            number=trial.number,
            job_id=trial.job_id,
            state=JobState.from_proto(trial.state),
            params={path: param_value(path, text) for path, text in trial.params.items()},
            metric=trial.metric if trial.has_metric else None,
            pruned=trial.pruned,
            error=trial.error,
            info=trial,
        )


def sweep_failed(sweep: Sweep[C], info: pb.Sweep) -> SweepFailed:
    """The exception for `sweep`, ended in `info` without succeeding: SweepCancelled where cancelled."""
    state = SweepState.from_proto(info.state)
    why = f": {info.error}" if info.error else ""
    if state == SweepState.CANCELLED:
        return SweepCancelled(sweep, f"sweep {info.sweep_id} was cancelled{why}")
    return SweepFailed(sweep, f"sweep {info.sweep_id} ended {state.value}{why}")


class FailingPolls:
    """The polls of a sweep that have failed in a row, since the first failure after an answer."""

    def __init__(self) -> None:
        self._since: float | None = None

    def answered(self) -> None:
        self._since = None

    def give_up(self, deadline: float | None = None) -> bool:
        """Whether to raise the failure just now, the polls having failed for FAILING_POLLS_S,
        or up to `deadline` (a wait's timeout, time.monotonic()'s) where that is later: a wait
        given a longer timeout waits out a longer outage."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if deadline is not None and deadline - self._since >= FAILING_POLLS_S:
            # The wait's own timeout ends it (StillRunning), not the failure of a poll sent near it.
            return False
        return now - self._since >= FAILING_POLLS_S


def _finished(info: pb.Sweep) -> bool:
    return SweepState.from_proto(info.state).finished


def _unseen(info: pb.Sweep) -> None:
    return None


@dataclass(frozen=True)
class SweepEnd(Call[T]):
    """`Sweep.wait`'s: GetSweep every `poll` seconds (there is no watch of a sweep) until the
    sweep is `settled` (by default: has ended), then `ended` of it; `seen` is given every answer.
    A GetSweep that fails DEADLINE_EXCEEDED or UNAVAILABLE (a daemon restarting, a network down)
    is tried again after `poll` seconds, until the polls have failed for FAILING_POLLS_S in a row
    (or up to the timeout, where that is later): then that failure is raised. Where `timeout` runs out first,
    StillRunning says that the sweep goes on (in the state last seen, from `state` on) and what
    to do."""

    sweep_id: str
    state: SweepState
    poll: float
    timeout: float | None
    ended: Callable[[pb.Sweep], T]
    settled: Callable[[pb.Sweep], bool] = _finished
    seen: Callable[[pb.Sweep], None] = _unseen

    def run(self, conn: Connection) -> T:
        deadline = self._deadline()
        state = self.state
        failing = FailingPolls()
        while True:
            get = self._get(deadline, state)
            try:
                info = get.run(conn)
            except (DeadlineExceeded, Unavailable) as error:
                if failing.give_up(deadline):
                    raise self._gave_up(error) from None
                time.sleep(self._retry_pause(deadline, state, error))
                continue
            failing.answered()
            self.seen(info)
            state = SweepState.from_proto(info.state)
            if self.settled(info):
                return self.ended(info)
            time.sleep(self._pause(deadline, state))

    async def run_async(self, conn: AioConnection) -> T:
        deadline = self._deadline()
        state = self.state
        failing = FailingPolls()
        while True:
            get = self._get(deadline, state)
            try:
                info = await get.run_async(conn)
            except (DeadlineExceeded, Unavailable) as error:
                if failing.give_up(deadline):
                    raise self._gave_up(error) from None
                await asyncio.sleep(self._retry_pause(deadline, state, error))
                continue
            failing.answered()
            self.seen(info)
            state = SweepState.from_proto(info.state)
            if self.settled(info):
                return self.ended(info)
            await asyncio.sleep(self._pause(deadline, state))

    def _gave_up(self, error: DeadlineExceeded | Unavailable) -> TesseraError:
        """`error`, the last poll's, saying that the polls failed for FAILING_POLLS_S in a row: a
        NotAnswering for a deadline, as a longer one would not have been answered either."""
        said = (
            f"{error.daemon_message} (gave up waiting for sweep {self.sweep_id}: its polls failed for "
            f"{FAILING_POLLS_S:g} s in a row; it may go on there: check that the daemon runs and answers, "
            "then wait for it again)"
        )
        if isinstance(error, DeadlineExceeded):
            return NotAnswering(said, error.trailers)
        return type(error)(said, error.trailers)

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _get(self, deadline: float | None, state: SweepState) -> Op[pb.Sweep]:
        """GetSweep, bounded by what is left of the wait (None: the client's own deadline)."""
        left = self._left(deadline, state)
        return Op(S, "GetSweep", pb.GetSweepRequest(sweep_id=self.sweep_id), timeout=left)

    def _retry_pause(self, deadline: float | None, state: SweepState, error: TesseraError) -> float:
        """How long to sleep before trying a failed GetSweep again; StillRunning (from `error`)
        where the wait has no time left."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise self._still(state, error) from error
        return self.poll if left is None else min(self.poll, left)

    def _pause(self, deadline: float | None, state: SweepState) -> float:
        """How long to sleep before the next GetSweep; StillRunning where the wait has no time left."""
        left = self._left(deadline, state)
        return self.poll if left is None else min(self.poll, left)

    def _left(self, deadline: float | None, state: SweepState) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._still(state, None)
        return left

    def _still(self, state: SweepState, error: TesseraError | None) -> StillRunning:
        return StillRunning(
            f"sweep {self.sweep_id} is still {state.value} after {self.timeout:g} s, the timeout given "
            "to wait(); it goes on: call wait() again to wait longer, or cancel() to stop it",
            error.trailers if error is not None else None,
            sweep_id=self.sweep_id,
        )


# The handle's own names for what the Sweep message calls otherwise.
_RENAMED = {"sweep_id": "id"}


class Sweep(Part[C]):
    """A hyperparameter sweep on the daemon. `info` is its latest known state, the `tessera.v1`
    Sweep message (refresh() updates it). The calls that return it returned that message before;
    its fields the handle does not have (`sweep_id`, `best_job_id`, `error`) still read, with a
    DeprecationWarning naming the handle's spelling (`id`, `info.best_job_id`)."""

    def __init__(self, conn: C, info: pb.Sweep) -> None:
        Part.__init__(self, conn)
        self.info = info

    def __getattr__(self, name: str) -> object:
        # Only reached for a name the handle lacks. "_" names are the handle's own (a copy or an
        # unpickling asks before `info` is set) and none of the message's.
        if name.startswith("_") or name not in pb.Sweep.DESCRIPTOR.fields_by_name:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        instead = _RENAMED.get(name, f"info.{name}")
        warnings.warn(
            f"Sweep.{name} is deprecated: use Sweep.{instead} (the calls return a Sweep handle, "
            "its message under .info)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self.info, name)

    def __repr__(self) -> str:
        return f"Sweep({self.id!r}, state={self.state.value!r}, trials={len(self.info.trials)})"

    @property
    def id(self) -> str:
        """The sweep id."""
        return self.info.sweep_id

    @property
    def state(self) -> SweepState:
        """The state when `info` was last fetched."""
        return SweepState.from_proto(self.info.state)

    def trials(self) -> list[SweepTrial]:
        """The trials when `info` was last fetched, in the order they were started."""
        return [SweepTrial.from_proto(trial) for trial in self.info.trials]

    def best(self) -> SweepTrial | None:
        """The trial with the best metric among those that succeeded unpruned (the daemon's
        pick, `info.best_job_id`); None until one has."""
        if not self.info.best_job_id:
            return None
        return next((t for t in self.trials() if t.job_id == self.info.best_job_id), None)

    @call
    def refresh(self, *, timeout: float | None = None) -> Op[Sweep[C]]:
        """Fetch the sweep's current state into `info`; returns self."""
        return Op(S, "GetSweep", pb.GetSweepRequest(sweep_id=self.id), self._updated, timeout=timeout)

    @call
    def wait(self, timeout: float | None = None, poll: float = 1.0, check: bool = True) -> SweepEnd[Sweep[C]]:
        """Block until the sweep ends, asking the daemon for it every `poll` seconds; returns
        self with `info` final. With `check`, raises SweepFailed when it did not succeed
        (SweepCancelled, a SweepFailed, when it was cancelled). `timeout` (seconds; None: no
        limit) ends the wait, not the sweep: past it, StillRunning (a DeadlineExceeded and a
        TimeoutError) says so; call `wait()` again to wait longer, or `cancel()` to stop it.
        Asks that fail DEADLINE_EXCEEDED or UNAVAILABLE (a daemon restarting) are made again for
        up to FAILING_POLLS_S (2 minutes) in a row, or until `timeout` where that is later, then
        the last failure is raised (StillRunning once `timeout` has passed)."""
        call_timeout(timeout)
        if not poll > 0:
            raise ValueError(f"poll must be seconds above 0, got {poll}")

        def ended(info: pb.Sweep) -> Sweep[C]:
            self.info = info
            if check and self.state != SweepState.SUCCEEDED:
                raise sweep_failed(self, info)
            return self

        return SweepEnd(self.id, self.state, poll, timeout, ended)

    @call
    def cancel(self, *, timeout: float | None = None) -> Op[Sweep[C]]:
        """Cancel the sweep and its running trials (FailedPrecondition if it already ended);
        returns self, refreshed."""
        return Op(S, "CancelSweep", pb.CancelSweepRequest(sweep_id=self.id), self._updated, timeout=timeout)

    def _updated(self, info: pb.Sweep) -> Sweep[C]:
        self.info = info
        return self


def follow_polls(
    sweep: Sweep[Connection],
    poll: float,
    seen: Callable[[pb.Sweep], None],
    settled: Callable[[pb.Sweep], bool],
) -> Sweep[Connection]:
    """`sweep`, asked for every `poll` seconds as `Sweep.wait` asks (failing asks made again the
    same way), `seen` given every answer, until `settled` says so: for a follower that shows
    each answer and waits for more than the sweep's end (the CLI's `--follow`). Returns `sweep`,
    its `info` the last answer."""
    end = SweepEnd(sweep.id, sweep.state, poll, None, sweep._updated, settled=settled, seen=seen)
    return end.run(sweep._conn)
