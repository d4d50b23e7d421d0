"""Typed job events: what `Job.watch()` yields, one class per kind of `tessera.v1.JobEvent`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TypedDict

from tessera.messages import to_datetime
from tessera.state_words import StateWord
from tessera.v1 import training_pb2 as pb


class JobState(StateWord):
    """A training job's state; the values are lowercase words ("running", "succeeded"), each also
    equal to its `tessera.v1` JobState number (see `StateWord`)."""

    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @staticmethod
    def _numbers() -> type[pb.JobState]:
        return pb.JobState

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """Fields every event has: its sequence number (resume point), time and attempt."""

    seq: int
    time: dt.datetime | None
    attempt: int


@dataclass(frozen=True, kw_only=True)
class StateChanged(JobEvent):
    """The job moved to `state`; `reason` says why in words. On the state that ends a job whose
    training early stopping ended (SUCCEEDED, FAILED or CANCELLED: a FAILED one's registration
    failed), `stopped_early` says why (as `Job.stopped_early`)."""

    state: JobState
    reason: str
    devices: list[str] = field(default_factory=list)
    stopped_early: pb.EarlyStop | None = None


@dataclass(frozen=True, kw_only=True)
class StepMetrics(JobEvent):
    """Training loss and throughput at a step (every `log_every_n_steps`)."""

    epoch: int
    step: int
    loss: float
    lr: float
    samples_per_s: float


@dataclass(frozen=True, kw_only=True)
class EpochMetrics(JobEvent):
    """End-of-epoch metrics: train_loss, val_loss and the task's own (accuracy, mae, ...)."""

    epoch: int
    step: int
    metrics: dict[str, float]
    duration_s: float


@dataclass(frozen=True, kw_only=True)
class Progress(JobEvent):
    """How far along the job is (0..1) and the estimated seconds left."""

    fraction: float
    eta_s: float
    step: int
    total_steps: int


@dataclass(frozen=True, kw_only=True)
class ResourceUsage(JobEvent):
    """The job's CPU, memory and GPU memory use."""

    cpu_percent: float
    rss_bytes: int
    gpu_memory_bytes: dict[str, int]


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(JobEvent):
    """A checkpoint was written ("periodic", "best" or "final")."""

    epoch: int
    step: int
    size_bytes: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class LogLine(JobEvent):
    """A line the worker logged."""

    level: str
    message: str


@dataclass(frozen=True, kw_only=True)
class JobError(JobEvent):
    """What went wrong (kind: exception, crash, out_of_memory, nonfinite_loss, ...)."""

    kind: str
    message: str


@dataclass(frozen=True, kw_only=True)
class VersionRegistered(JobEvent):
    """The trained weights became `model` version `version` (and `alias` moved to it)."""

    model: str
    version: int
    alias: str


class _Common(TypedDict):
    """The JobEvent fields every event class takes, spread into each constructor."""

    seq: int
    time: dt.datetime | None
    attempt: int


def event_from_proto(event: pb.JobEvent) -> JobEvent:
    """The typed event for a JobEvent message (a plain JobEvent for kinds newer than the SDK)."""
    base: _Common = {"seq": event.seq, "time": to_datetime(event.time), "attempt": event.attempt}
    kind = event.WhichOneof("event")
    if kind == "state":
        s = event.state
        return StateChanged(
            **base,
            state=JobState.from_proto(s.state),
            reason=s.reason,
            devices=list(s.devices),
            stopped_early=s.stopped_early if s.HasField("stopped_early") else None,
        )
    if kind == "step":
        m = event.step
        return StepMetrics(
            **base, epoch=m.epoch, step=m.step, loss=m.loss, lr=m.lr, samples_per_s=m.samples_per_s
        )
    if kind == "epoch":
        e = event.epoch
        return EpochMetrics(
            **base, epoch=e.epoch, step=e.step, metrics=dict(e.metrics), duration_s=e.duration_s
        )
    if kind == "progress":
        p = event.progress
        return Progress(**base, fraction=p.fraction, eta_s=p.eta_s, step=p.step, total_steps=p.total_steps)
    if kind == "resources":
        r = event.resources
        return ResourceUsage(
            **base,
            cpu_percent=r.cpu_percent,
            rss_bytes=r.rss_bytes,
            gpu_memory_bytes=dict(r.gpu_memory_bytes),
        )
    if kind == "checkpoint":
        c = event.checkpoint
        return CheckpointSaved(**base, epoch=c.epoch, step=c.step, size_bytes=c.size_bytes, reason=c.reason)
    if kind == "log":
        return LogLine(**base, level=event.log.level, message=event.log.message)
    if kind == "error":
        return JobError(**base, kind=event.error.kind, message=event.error.message)
    if kind == "registered":
        v = event.registered
        return VersionRegistered(**base, model=v.model, version=v.version, alias=v.alias)
    return JobEvent(**base)
