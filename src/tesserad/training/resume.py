"""spec.resume_from as a full resume: whether a job's config can go on from another job's
checkpoint with that job's optimiser state, step and epoch counts (what `restore` loads).

The fields that must agree are those whose change would make the restored state wrong rather
than merely different: the optimiser's kind and parameter groups (its state is per parameter,
per group), the schedule's kind, and what fixes the steps per epoch (the step count carries
the schedule's position and the epoch's data order). lr, betas, weight decay and the like are
the new spec's from the checkpoint's step on, as they are a hyperparameter change, not a state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tesserad.training.spec import epoch_step_count

FULL = "full"
WEIGHTS = "weights"


@dataclass(frozen=True)
class ResumeSource:
    """The job resumed from: its id and config, its checkpoint's epoch and step, and the sample
    count of its training split (None where its dataset version is gone)."""

    job_id: str
    config: dict[str, Any]
    epoch: int
    step: int
    train_samples: int | None


def full_resume_problems(source: ResumeSource, config: dict[str, Any], train_samples: int) -> list[str]:
    """Why `config` cannot go on from `source`'s checkpoint, one message per field (none: it can)."""
    old = source.config
    problems: list[str] = []
    instead = "set resume_weights_only = true to start from its weights alone"

    def differs(field: str, new: Any, was: Any, carried: str, fix: str = "") -> None:
        if new != was:
            problems.append(
                f"spec.{field}: {new!r}, but job {source.job_id} trained with {was!r}; a full resume goes "
                f"on with its {carried}: {fix or f'set {field} = {was!r}'}, or {instead}"
            )

    # A job that reached max_steps part way through an epoch took its final checkpoint there:
    # the resumed job trains the rest of that epoch, in the order its seed draws.
    mid_epoch = part_way_through_epoch(source.epoch, source.step, source.train_samples or train_samples, old)
    done = source.epoch - 1 if mid_epoch else source.epoch
    if config["epochs"] and config["epochs"] <= done:
        problems.append(
            f"spec.epochs: job {source.job_id}'s checkpoint is at epoch {source.epoch} (step {source.step}"
            f"{', part way through it' if mid_epoch else ''}), and a full resume counts epochs from that "
            f"job's start: set epochs above {done} (epochs = {done + 1} trains "
            f"{'the rest of that one' if mid_epoch else 'one more'}), or {instead} and train `epochs` of its own"
        )
    if mid_epoch:
        differs(
            "seed",
            config["seed"],
            old["seed"],
            f"epoch {source.epoch}'s data order (its checkpoint is at step {source.step}, part way "
            "through that epoch)",
        )
    if config["max_steps"] and config["max_steps"] <= source.step:
        problems.append(
            f"spec.max_steps: job {source.job_id}'s checkpoint is at step {source.step}, and a full resume "
            f"counts steps from that job's start: set max_steps above {source.step}, or {instead}"
        )
    differs("optimizer.name", config["optimizer"]["name"], old["optimizer"]["name"], "optimiser's state")
    differs(
        "lr_schedule",
        config["lr_schedule"]["kind"],
        old["lr_schedule"]["kind"],
        "schedule's position",
        f"give lr_schedule the {old['lr_schedule']['kind']!r} schedule",
    )
    parent, was_parent = "fine_tune" in config, "fine_tune" in old
    if parent != was_parent:
        problems.append(
            f"spec.init_from: {'set' if parent else 'unset'}, but job {source.job_id} trained "
            f"{'with' if was_parent else 'without'} it; a full resume goes on with its optimiser's "
            f"parameter groups: {'set' if was_parent else 'remove'} init_from as that job's spec has it, "
            f"or {instead}"
        )
    elif parent:
        differs("freeze", config["fine_tune"]["freeze"], old["fine_tune"]["freeze"], "optimiser's parameters")
    differs("batch_size", config["batch_size"], old["batch_size"], "step count")
    differs(
        "devices",
        config["devices"]["count"],
        old["devices"]["count"],
        "step count (the steps per epoch are per process)",
        f"train on {old['devices']['count']} {'process' if old['devices']['count'] == 1 else 'processes'}",
    )
    if source.train_samples is not None and train_samples != source.train_samples:
        split = config["data"]["train_split"]
        problems.append(
            f"spec.data: its split {split!r} holds {train_samples} samples, but job {source.job_id} "
            f"trained on {source.train_samples} ({_steps(source.train_samples, config)} steps per epoch, not "
            f"{_steps(train_samples, config)}); a full resume goes on with its step count: train on that "
            f"job's dataset version ({old['data']['dataset']} version {old['data']['version']}), or {instead}"
        )
    for section, metric_field, mode_field, watched in (
        ("early_stopping", "metric", "mode", "patience"),
        ("checkpoints", "keep_best_metric", "keep_best_mode", "keep_best_metric"),
    ):
        new, was = config[section], old[section]
        if new[watched] and was[watched]:
            for key in (metric_field, mode_field):
                differs(f"{section}.{key}", new[key], was[key], f"{section}'s best so far")
    return problems


def part_way_through_epoch(epoch: int, step: int, train_samples: int, config: dict[str, Any]) -> bool:
    """Whether a checkpoint of `epoch` at `step` was taken part way through that epoch (at
    max_steps), by a job of `config` training on `train_samples` samples."""
    return step < epoch * _steps(train_samples, config)


def _steps(train_samples: int, config: dict[str, Any]) -> int:
    return epoch_step_count(train_samples, config["batch_size"], config["devices"]["count"])


def resumes_fully(config: dict[str, Any]) -> bool:
    """Whether the job's start (before a checkpoint of its own) is a full resume; jobs stored
    before resume_from had modes started from the weights alone."""
    resume = config.get("resume_from") or {}
    return bool(resume.get("mode") == FULL)


def resume_start_step(config: dict[str, Any]) -> int:
    """The last step of the job's run that a start over keeps: a full resume's checkpoint step
    (the other job's points it copied), else none (-1)."""
    return int(config["resume_from"]["step"]) if resumes_fully(config) else -1
