"""A training job as a typed record, and its stored form (versioned JSON, kind "job", schema 1).

Records are frozen: a change makes a new record (`dataclasses.replace`), so a record handed to
a reader or queued for a store write never changes under it. Their dict values (`spec`,
`config`, `metrics`) are shared between successive records and must be replaced, never
mutated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tesserad.store import decode_record, encode_record

KIND = "job"
SCHEMA = 1
ENDED = frozenset({"succeeded", "failed", "cancelled"})
# A job may keep every checkpoint (a large keep_last or retain_latest; a sweep's trial until its
# sweep ends): a GetJob or ListJobs answer lists this many of them at most.
MAX_LISTED_CHECKPOINTS = 16


@dataclass(frozen=True)
class JobError:
    kind: str  # exception, crash, out_of_memory, nonfinite_loss, registration, storage, dataset_deleted
    message: str


@dataclass(frozen=True)
class Registered:
    """The model version a succeeded job's weights became."""

    model: str
    version: int
    alias: str
    # Its dataset version was gone (force-deleted while the job ran) when it was registered:
    # said once, as the job ends, and not stored (the version's lineage keeps it).
    dataset_deleted: bool = False
    # Why register_as.alias was not set ("" when it was, or none was asked for): the model had
    # reached its alias cap while the job ran, or the version was registered before the job was
    # resumed and the alias does not point at it. Said as the job ends; not stored.
    alias_refused: str = ""
    # The model's deployment warnings after the alias moved, where the deployment names it
    # (`VersionRecord.deployment_warnings`). Said once, as the job ends; not stored.
    deployment_warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint the job keeps: where in training it was taken, why, and its blob."""

    epoch: int
    step: int
    reason: str  # periodic, best or final
    periodic: bool
    best: bool
    metrics: dict[str, float]
    sha256: str
    size_bytes: int
    created_at: float | None = None  # None: stored by a daemon from before it was kept


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    spec: dict[str, Any]  # the spec as submitted (the API's form), returned as it was given
    config: dict[str, Any]  # the checked, complete config (training.spec.normalize_spec)
    state: str
    experiment: str
    run_id: str
    attempt: int
    devices: tuple[str, ...]
    created_at: float
    started_at: float | None
    ended_at: float | None
    progress: float
    epoch: int
    step: int
    total_steps: int
    metrics: dict[str, float]
    error: JobError | None
    registered: Registered | None
    last_seq: int  # the sequence number of the job's newest event
    created_by: str
    sweep_id: str
    checkpoints: tuple[Checkpoint, ...]
    # The sha256 of another job's checkpoint whose weights the first attempt starts from (PBT).
    start_weights: str = ""
    # Attempts started again after a worker died (spec.max_restarts; the Ray backend).
    restarts: int = 0
    # When CancelJob was accepted: a job that has not ended by a daemon's stop ends CANCELLED at
    # the next start instead of being run again.
    cancel_requested_at: float | None = None
    # Checkpoints released when the job ended (the retention policy): only the kept ones are listed.
    checkpoints_released: int = 0
    # Why early stopping ended the job (the worker's early_stopping facts, training.loop), None
    # while it has not: an attempt queued again or started to train clears an earlier one's.
    # `stopped_early_recorded`: the record holds it, as every record does from an attempt's start
    # or an epoch of a job with early stopping on; a record an older daemon stored does not, and
    # only the job's events say it (the next start stores it from them on the record).
    stopped_early: dict[str, Any] | None = None
    stopped_early_recorded: bool = False


def stopped_early(job: JobRecord) -> dict[str, Any] | None:
    """Why early stopping ended `job`'s training, which it says once the job has ended: SUCCEEDED,
    or FAILED or CANCELLED after its training ended (registering its weights failed, say)."""
    return job.stopped_early if job.state in ENDED else None


def encode_job(job: JobRecord) -> bytes:
    # Built field by field rather than with dataclasses.asdict, which deep-copies spec and config
    # on every write (a job is written with each of its events).
    data = {
        "job_id": job.job_id,
        "spec": job.spec,
        "config": job.config,
        "state": job.state,
        "experiment": job.experiment,
        "run_id": job.run_id,
        "attempt": job.attempt,
        "devices": list(job.devices),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "progress": job.progress,
        "epoch": job.epoch,
        "step": job.step,
        "total_steps": job.total_steps,
        "metrics": job.metrics,
        "error": {"kind": job.error.kind, "message": job.error.message} if job.error else None,
        "registered": (
            {"model": job.registered.model, "version": job.registered.version, "alias": job.registered.alias}
            if job.registered
            else None
        ),
        "last_seq": job.last_seq,
        "created_by": job.created_by,
        "sweep_id": job.sweep_id,
        "checkpoints": [_encode_checkpoint(c) for c in job.checkpoints],
    }
    # Written only when set: earlier records keep their stored form.
    if job.start_weights:
        data["start_weights"] = job.start_weights
    if job.restarts:
        data["restarts"] = job.restarts
    if job.cancel_requested_at is not None:
        data["cancel_requested_at"] = job.cancel_requested_at
    if job.checkpoints_released:
        data["checkpoints_released"] = job.checkpoints_released
    if job.stopped_early_recorded:
        data["stopped_early"] = job.stopped_early
    return encode_record(KIND, SCHEMA, data)


def _encode_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    data = {
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "reason": checkpoint.reason,
        "periodic": checkpoint.periodic,
        "best": checkpoint.best,
        "metrics": checkpoint.metrics,
        "sha256": checkpoint.sha256,
        "size_bytes": checkpoint.size_bytes,
    }
    # Written only when known: an earlier record's checkpoints keep their stored form.
    if checkpoint.created_at is not None:
        data["created_at"] = checkpoint.created_at
    return data


def decode_job(raw: bytes) -> JobRecord:
    _, data = decode_record(raw, KIND, SCHEMA)
    error, registered = data["error"], data["registered"]
    return JobRecord(
        job_id=data["job_id"],
        spec=data["spec"],
        config=data["config"],
        state=data["state"],
        experiment=data["experiment"],
        run_id=data["run_id"],
        attempt=data["attempt"],
        devices=tuple(data["devices"]),
        created_at=data["created_at"],
        started_at=data["started_at"],
        ended_at=data["ended_at"],
        progress=data["progress"],
        epoch=data["epoch"],
        step=data["step"],
        total_steps=data["total_steps"],
        metrics=data["metrics"],
        error=JobError(error["kind"], error["message"]) if error else None,
        registered=Registered(registered["model"], registered["version"], registered["alias"])
        if registered
        else None,
        last_seq=data["last_seq"],
        created_by=data["created_by"],
        sweep_id=data["sweep_id"],
        checkpoints=tuple(
            Checkpoint(
                epoch=c["epoch"],
                step=c["step"],
                reason=c["reason"],
                periodic=c["periodic"],
                best=c["best"],
                metrics=c["metrics"],
                sha256=c["sha256"],
                size_bytes=c["size_bytes"],
                created_at=c.get("created_at"),
            )
            for c in data["checkpoints"]
        ),
        start_weights=data.get("start_weights", ""),
        restarts=data.get("restarts", 0),
        cancel_requested_at=data.get("cancel_requested_at"),
        checkpoints_released=data.get("checkpoints_released", 0),
        stopped_early=data.get("stopped_early"),
        stopped_early_recorded="stopped_early" in data,
    )


def retained_at_end(
    checkpoints: tuple[Checkpoint, ...], latest: int, best: int, metric: str, mode: str
) -> tuple[tuple[Checkpoint, ...], set[str]]:
    """What an ended job keeps: its `latest` newest checkpoints (the final one newest at its step)
    and its `best` best by `metric` (`mode` min or max; none without a metric). Returns the kept
    checkpoints, in step order, and the sha256 of every blob none of them is (identical checkpoints
    share one blob, which goes only when no kept one is it)."""
    newest = sorted(checkpoints, key=lambda c: (c.step, c.reason == "final"), reverse=True)
    kept_ids = {id(c) for c in newest[:latest]}
    if metric and best:
        scored = [c for c in checkpoints if metric in c.metrics]
        scored.sort(key=lambda c: c.metrics[metric], reverse=mode == "max")
        kept_ids |= {id(c) for c in scored[:best]}
    kept = tuple(c for c in sorted(checkpoints, key=lambda c: c.step) if id(c) in kept_ids)
    return kept, {c.sha256 for c in checkpoints} - {c.sha256 for c in kept}


def listed_checkpoints(
    checkpoints: tuple[Checkpoint, ...], limit: int = MAX_LISTED_CHECKPOINTS
) -> tuple[Checkpoint, ...]:
    """The checkpoints a job's answer lists, in step order: all when they are at most `limit`,
    else the final one, the newest best and the newest others (those a job resumes, registers
    or is fine-tuned from)."""
    if len(checkpoints) <= limit:
        return checkpoints
    newest_best = [c for c in checkpoints if c.best][-1:]
    final = [c for c in checkpoints if c.reason == "final"]
    newest = sorted(checkpoints, key=lambda c: c.step, reverse=True)
    chosen: dict[int, Checkpoint] = {}
    for c in [*final, *newest_best, *newest]:
        if len(chosen) == limit:
            break
        chosen.setdefault(id(c), c)
    return tuple(sorted(chosen.values(), key=lambda c: c.step))
