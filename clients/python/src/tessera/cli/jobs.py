"""`tessera train` and `tessera jobs ...`: training jobs. Each command takes (client, args, out)
and prints its result."""

from __future__ import annotations

import argparse
from typing import Any

from tessera.cli.arguments import AlreadyExistsInCliWords, UsageError
from tessera.cli.models import print_alias_moved, warn
from tessera.cli.output import Output, size, when
from tessera.client import Client
from tessera.errors import AlreadyExists, JobFailed
from tessera.events import JobState
from tessera.follow import follow, registered_text, stopped_early_text
from tessera.messages import dotted_name, load_toml, with_settings
from tessera.progress_line import byte_size
from tessera.rpc_commands import in_cli_words
from tessera.toml_text import message_toml
from tessera.v1 import job_spec_pb2

# The fix the daemon gives for a run name its experiment has (tracking's put_new_run), said as
# the CLI's flags say it.
_RUN_NAME_TAKEN_FIX = "pick another name or leave it empty to generate one"


def cmd_train(client: Client, args: argparse.Namespace, out: Output) -> None:
    settings = list(args.settings or ())
    if args.run_name is not None:
        if any(path == ("run_name",) for path, _, _ in settings):
            raise UsageError("--run-name and --set run_name=... both name the run; give one of them")
        settings.append((("run_name",), args.run_name, f"--run-name {args.run_name}"))
    if args.resume_from is not None:
        if any(path == ("resume_from",) for path, _, _ in settings):
            raise UsageError("--resume-from and --set resume_from=... both name the job; give one of them")
        settings.append((("resume_from",), args.resume_from, f"--resume-from {args.resume_from}"))
    if args.resume_weights_only:
        if any(path == ("resume_weights_only",) for path, _, _ in settings):
            raise UsageError(
                "--resume-weights-only and --set resume_weights_only=... both set it; give one of them"
            )
        settings.append((("resume_weights_only",), True, "--resume-weights-only"))
    _each_field_set_once(settings)
    try:
        job = client.training.submit(with_settings(load_toml(args.spec), settings, job_spec_pb2.JobSpec))
    except AlreadyExists as err:
        # The daemon's words: `message` has the SDK's (restore it with `client.training...`).
        told = err.daemon_message
        if not (told.startswith("spec.run_name: ") and told.endswith(_RUN_NAME_TAKEN_FIX)):
            raise
        said = in_cli_words(told.removesuffix(_RUN_NAME_TAKEN_FIX))
        raise AlreadyExistsInCliWords(
            f"{said}pick another with --run-name NAME or --set run_name=NAME, or leave run_name out of "
            "the spec to name the run after its job"
        ) from None
    if not args.follow:
        if out.as_json:
            return out.json(job.info)
        out.line(f"submitted job {job.id} ({job.state.value}); follow it with: tessera jobs watch {job.id}")
        return None
    if not out.as_json:
        out.line(f"submitted job {job.id}")
    finish(follow(job, out.console, out.as_json))
    return None


def finish(job: Any) -> None:
    """A followed job that did not succeed makes the command fail."""
    if job.state != JobState.SUCCEEDED:
        raise JobFailed(
            job, f"job {job.id} ended {job.state.value}" + (f": {job.info.error}" if job.info.error else "")
        )


def _each_field_set_once(settings: list[tuple[tuple[str | int, ...], Any, str]]) -> None:
    """UsageError for two flags that set one field, or a field and a table holding it: the later
    would drop the earlier without a word."""
    for index, (path, _, words) in enumerate(settings):
        for other, _, other_words in settings[index + 1 :]:
            if other == path:
                raise UsageError(f"{words} and {other_words} both set {dotted_name(path)}; give one of them")
            shorter, longer = sorted(((path, words), (other, other_words)), key=lambda item: len(item[0]))
            if longer[0][: len(shorter[0])] == shorter[0]:
                raise UsageError(
                    f"{longer[1]} sets a field of {dotted_name(shorter[0])}, which {shorter[1]} sets "
                    "whole; give one of them"
                )


def cmd_jobs_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    jobs = list(
        client.training.jobs(states=args.state or (), experiment=args.experiment, sweep_id=args.sweep)
    )
    if out.as_json:
        return out.json([job.info for job in jobs])
    if not jobs:
        of = (f" of experiment {args.experiment}" if args.experiment else "") + (
            f" of sweep {args.sweep}" if args.sweep else ""
        )
        if args.state:
            return out.line(f"no job{of} is {' or '.join(args.state)}")
        if of:
            return out.line(f"no job{of}")
        return out.line("no jobs yet; `tessera train SPEC.toml` submits one")
    out.table(
        "jobs",
        [
            "id",
            "state",
            "experiment",
            "progress",
            "epoch",
            "train_loss (epoch)",
            "stopped early (epoch)",
            "created",
        ],
        [
            (
                j.id,
                j.state.value,
                j.info.experiment,
                f"{j.info.progress:.0%}",
                j.info.epoch,
                f"{j.info.metrics['train_loss']:.4g}" if "train_loss" in j.info.metrics else "-",
                str(j.stopped_early.epoch) if j.stopped_early is not None else "-",
                when(j.info.created_at),
            )
            for j in jobs
        ],
        whole=("id",),
        leave_out_first=("created", "epoch", "stopped early (epoch)"),
    )


def cmd_jobs_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.spec and out.as_json:
        raise UsageError(
            "--spec prints TOML, for `tessera train`; without --spec, --json has the spec as JSON"
        )
    job = client.training.job(args.job_id).info
    if args.spec:
        # The run's name is the job's: the same spec again would be refused it.
        spec = job_spec_pb2.JobSpec()
        spec.CopyFrom(job.spec)
        spec.ClearField("run_name")
        print(message_toml(spec), end="")
        return None
    if out.as_json:
        return out.json(job)
    registered = registered_text(job) if job.HasField("registered") else "-"
    out.pairs(
        f"job {job.job_id}",
        [
            ("state", JobState.from_proto(job.state).value),
            ("experiment", job.experiment),
            ("run", job.run_id),
            ("sweep", job.sweep_id or "-"),
            ("attempt", job.attempt),
            ("progress", f"{job.progress:.0%} (epoch {job.epoch}, step {job.step} of {job.total_steps})"),
            ("created", when(job.created_at)),
            ("started", when(job.started_at)),
            ("ended", when(job.ended_at)),
            *(
                [("stopped early", stopped_early_text(job.stopped_early))]
                if job.HasField("stopped_early")
                else []
            ),
            ("error", job.error or "-"),
            ("registered", registered),
            *[(f"metric {k}", f"{v:.5g}") for k, v in sorted(job.metrics.items())],
            (
                "checkpoints",
                f"{job.checkpoints_kept} kept"
                + (f" ({len(job.checkpoints)} listed)" if len(job.checkpoints) < job.checkpoints_kept else "")
                + f", {job.checkpoints_released} released",
            ),
        ],
    )
    if not job.checkpoints:
        return None
    # The value of the metric that makes a checkpoint the best, beside each.
    metric = job.spec.checkpoints.keep_best_metric
    out.table(
        "checkpoints",
        ["epoch", "step", "reason", *([metric] if metric else []), "size", "saved", "sha256"],
        [
            (
                c.epoch,
                c.step,
                c.reason + (" (best)" if c.best and c.reason != "best" else ""),
                *([f"{c.metrics[metric]:.5g}" if metric in c.metrics else "-"] if metric else []),
                size(c.size_bytes),
                when(c.created_at),
                c.sha256[:12],
            )
            for c in job.checkpoints
        ],
        whole=("epoch", "step", "sha256"),
    )
    return None


def cmd_jobs_watch(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.training.job(args.job_id)
    finish(follow(job, out.console, out.as_json, from_seq=args.from_seq))


def cmd_jobs_cancel(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.training.cancel(args.job_id)
    if out.as_json:
        return out.json(job.info)
    # A queued job ends at once; a running one is asked to stop and goes on until its next step.
    stopping = "; it stops at its next step" if job.state == JobState.RUNNING else ""
    out.line(f"job {job.id}: {job.state.value}{stopping}")


def cmd_jobs_register(client: Client, args: argparse.Namespace, out: Output) -> None:
    result = client.training.register(
        args.job_id, args.model, set_alias=args.set_alias, description=args.description
    )
    version = result.version
    if out.as_json:
        out.json(result)
    elif result.reused:
        out.line(
            f"job {args.job_id} is registered already as {version.model} v{version.version}: no version added"
        )
        if args.description and args.description != version.description:
            out.line(
                f"description not applied: v{version.version} keeps its own ({version.description!r}); "
                "versions are immutable"
            )
    else:
        out.line(
            f"registered {version.model} v{version.version} from job {args.job_id} "
            f"({byte_size(version.size_bytes)}, sha256 {version.sha256[:12]})"
        )
    if not out.as_json and version.HasField("alias_moved"):
        print_alias_moved(out, version.alias_moved)
    warn(version.alias_moved.deployment_warnings)
