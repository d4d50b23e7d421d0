"""`tessera runs ...` and `tessera experiments ...`: the runs jobs log, their artifacts and
leaderboards. Each command takes (client, args, out) and prints its result."""

from __future__ import annotations

import argparse
import difflib
import itertools
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from tessera.cli.arguments import (
    NotFoundInCliWords,
    UsageError,
    once_each,
    refused_resume_in_cli_words,
    replaced_only_with_force,
)
from tessera.cli.output import Output, size, transfer_progress, when
from tessera.client import Client
from tessera.errors import NotFound
from tessera.json_output import to_plain
from tessera.messages import counted
from tessera.param_values import param_values_differ
from tessera.plot import line_plot
from tessera.progress_line import byte_size
from tessera.rpc_commands import in_cli_words
from tessera.run_filter import (
    RunFilterError,
    is_order_string,
    parse_filter,
    parse_order_keys,
)
from tessera.state_words import number_word
from tessera.sweep_commands import short_value
from tessera.training import LIST_ARTIFACTS_WORDS, artifact_target
from tessera.v1 import training_pb2

VIEWS = {"active": "active_only", "deleted": "deleted_only", "all": "all"}
"""--view choices -> the SDK's LifecycleView names."""


def run_status(run: training_pb2.Run) -> str:
    status = number_word(training_pb2.RunStatus, run.status)
    return f"{status} (deleted)" if run.deleted else status


def check_run_search(args: argparse.Namespace) -> None:
    """UsageError for a --filter or --order-by that cannot be read, that says again what a flag
    beside it says (whether both should hold would be a guess), or --asc/--desc without an order."""
    try:
        found = parse_filter(args.filter)
    except RunFilterError as err:
        raise UsageError(f"--filter: {err}") from None
    try:
        keys = parse_order_keys(args.order_by) if args.order_by and is_order_string(args.order_by) else []
    except RunFilterError as err:
        raise UsageError(f"--order-by: {err}") from None
    for flag, given, written, in_filter in (
        ("--status", args.status, "attributes.status", found.statuses),
        ("--param", args.param, "params", found.params),
        ("--tag", args.tag, "tags", found.tags),
        ("--metric", args.metric, "metrics", found.metrics),
    ):
        if given and in_filter:
            raise UsageError(
                f"--filter compares {written} and {flag} too; give those conditions in one of them"
            )
    if args.descending is not None and not args.order_by:
        flag = "--desc" if args.descending else "--asc"
        raise UsageError(f"{flag} orders by the metric --order-by names: add --order-by METRIC")
    if args.descending is not None and (len(keys) > 1 or any(k.entity != "metrics" for k in keys)):
        raise UsageError(
            "--asc and --desc order by one metric: write ASC or DESC after each key in --order-by"
        )
    if keys and keys[0].descending is not None and args.descending is not None:
        raise UsageError(f"--order-by {args.order_by!r} gives its direction: leave out --asc and --desc")


def sweep_experiment(spec: training_pb2.SweepSpec) -> str:
    """The one experiment holding a sweep's trials' runs, its base spec's; "" (every experiment)
    where a parameter sets `experiment`, sending each trial's run to its value."""
    if any(parameter.path == "experiment" for parameter in spec.parameters):
        return ""
    return spec.base.experiment


def cmd_runs_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    check_run_search(args)
    sweep = client.training.sweep(args.sweep) if args.sweep else None
    experiment = args.experiment or (sweep_experiment(sweep.info.spec) if sweep is not None else "")
    # The messages: the table and the JSON read their fields as the daemon sent them.
    runs = [
        run.info
        for run in client.training.runs(
            experiment=experiment,
            statuses=args.status or (),
            params=once_each(args.param, "--param"),
            tags=once_each(args.tag, "--tag"),
            metrics=args.metric or (),
            order_by=args.order_by or "",
            descending=args.descending,
            view=VIEWS[args.view],
            filter=args.filter,
        )
    ]
    if sweep is not None:
        # ListRuns has no sweep filter and a run no sweep field: a trial's run is its job's. A
        # trial that never started has no job, and its "" would match every run made by CreateRun.
        trial_jobs = {trial.job_id for trial in sweep.trials() if trial.job_id}
        runs = [run for run in runs if run.job_id in trial_jobs]
    if out.as_json:
        return out.json(runs)
    if not runs and args.experiment and args.view == "active" and experiment_deleted(client, args.experiment):
        # Its runs went with it: an empty table would read as an experiment with no runs.
        return out.line(
            f"experiment {args.experiment} is deleted, with its runs; bring them back with: "
            f"tessera experiments restore {args.experiment} (--view deleted lists them meanwhile)"
        )
    if not runs and (args.status or args.param or args.tag or args.metric or args.filter or args.sweep):
        # An empty table gives no clue that a key was misspelt (`lr` where a job's run says optimizer.lr).
        of = f" of experiment {args.experiment}" if args.experiment else ""
        return out.line(
            f"no run{of} meets these conditions; `tessera runs show RUN_ID` lists the params, tags and "
            "metrics a run has (a job's run has each field of its spec as a param, by path: optimizer.lr)"
            + "".join(summary_reading(m) for m in parse_filter(args.filter).metrics)
        )
    out.table(
        "runs",
        ["id", "experiment", "name", "status", "metrics (last values)", "started"],
        [
            (
                r.run_id,
                r.experiment,
                "  " * depth + ("└ " if depth else "") + r.name,
                run_status(r),
                ", ".join(f"{m.key}={m.last:.4g}" for m in r.metrics),
                when(r.start_time),
            )
            for r, depth in nested(runs)
        ],
        whole=("id", "experiment", "name"),
        unbroken=("metrics (last values)",),
        stacked={"name": "id"},
    )


def nested(runs: list[training_pb2.Run]) -> list[tuple[training_pb2.Run, int]]:
    """The runs in their order, each listed run's nested runs right under it (in their order),
    with how deep each is; a run whose parent is not listed stays where it is."""
    listed = {r.run_id for r in runs}
    children: dict[str, list[training_pb2.Run]] = {}
    for r in runs:
        if r.parent_run_id in listed and r.parent_run_id != r.run_id:
            children.setdefault(r.parent_run_id, []).append(r)
    out: list[tuple[training_pb2.Run, int]] = []
    for r in runs:
        if r.parent_run_id in listed and r.parent_run_id != r.run_id:
            continue
        # A run's parent existed before it, so parents form no cycle; a stack, as nesting may be deep.
        stack = [(r, 0)]
        while stack:
            run, depth = stack.pop()
            out.append((run, depth))
            stack.extend((child, depth + 1) for child in reversed(children.get(run.run_id, [])))
    return out


def summary_reading(condition: training_pb2.MetricFilter) -> str:
    """How a filter read `metrics.KEY.min` or `.max`, which MLflow reads as a metric of that
    whole name: when no run matches, that may be what was meant."""
    if condition.field not in (training_pb2.SUMMARY_FIELD_MIN, training_pb2.SUMMARY_FIELD_MAX):
        return ""
    field = number_word(training_pb2.SummaryField, condition.field)
    named = "`" + f"{condition.key}.{field}".replace("`", "``") + "`"
    return (
        f"; metrics.{condition.key}.{field} compares the {field} of metric {condition.key}, where "
        f"MLflow reads a metric named {condition.key}.{field}: write metrics.{named} for that one"
    )


def experiment_deleted(client: Client, name: str) -> bool:
    """Whether the experiment is deleted; False for one that does not exist, whose runs no list shows."""
    try:
        return client.training.experiment(name).deleted
    except NotFound:
        return False


def cmd_runs_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    run = client.training.run(args.run_id).info
    if out.as_json:
        return out.json(run)
    rows: list[tuple[str, Any]] = [
        ("experiment", run.experiment),
        ("name", run.name),
        ("status", run_status(run)),
        ("job", run.job_id or "-"),
        ("started", when(run.start_time)),
        ("ended", when(run.end_time)),
    ]
    rows += [(f"param {k}", v) for k, v in sorted(run.params.items())]
    rows += [(f"tag {k}", v) for k, v in sorted(run.tags.items())]
    rows += [
        (
            f"metric {m.key}",
            f"last {m.last:.5g}  min {m.min:.5g}  max {m.max:.5g}  ({counted(m.count, 'point')})",
        )
        for m in run.metrics
    ]
    if run.metrics_left_out:
        # The daemon answers a run's first keys only; without this row the table reads as all of them.
        rows.append(
            (
                "metrics left out",
                f"{counted(run.metrics_left_out, 'more key')} after {run.metrics[-1].key} (the first "
                f"{len(run.metrics):,} by key are shown); list every key with: "
                f"tessera runs metrics {run.run_id}",
            )
        )
    out.pairs(f"run {run.run_id}", rows)


def cmd_runs_compare(client: Client, args: argparse.Namespace, out: Output) -> None:
    if len(args.run_ids) < 2:
        raise UsageError("runs compare takes two or more RUN_IDs")
    compared = client.training.compare_runs(args.run_ids).info
    if out.as_json:
        return out.json(compared)
    runs = compared.runs
    params = [
        (p.key, [v if there else "-" for v, there in zip(p.values, p.present, strict=True)], p.differs)
        for p in compared.params
    ]
    # A job's run logs every field of its spec: the few that differ are what a compare is read for
    # (as the daemon tells them apart: 3e-3 and 0.003 are one value, as a --param filter reads them).
    shown = [(key, values) for key, values, differs in params if args.all or differs]
    rows: list[tuple[str, ...]] = [("name", *(r.name for r in runs)), ("status", *map(run_status, runs))]
    rows += [(f"param {key}", *values) for key, values in shown]
    rows += [
        (
            f"metric {m.key}",
            *(f"{v:.5g}" if there else "-" for v, there in zip(m.values, m.present, strict=True)),
        )
        for m in compared.metrics
    ]
    out.table("runs compared (metrics: last values)", ["", *(r.run_id for r in runs)], rows)
    if len(shown) < len(params):
        out.line(
            f"left out: {counted(len(params) - len(shown), 'param')} with one value in every run "
            "(--all shows them)"
        )
    if compared.metrics_left_out:
        # The daemon compares the runs' first keys only; without this line the table reads as all of them.
        out.line(
            f"left out: {counted(compared.metrics_left_out, 'more metric key')} after "
            f"{compared.metrics[-1].key} (the first {len(compared.metrics):,} of the runs' keys together "
            "are compared); list each run's with: tessera runs metrics RUN_ID"
        )


def cmd_runs_metrics(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.history:
        return print_metric_history(client, args.run_id, args.history, out, every_point=args.all)
    if args.all:
        raise UsageError("--all prints every point of --history KEY; add --history KEY")
    summaries = list(client.training.list_metrics(args.run_id))
    if out.as_json:
        return out.json(summaries)
    if not summaries:
        return out.line(f"run {args.run_id} has logged no metrics")
    out.table(
        f"metrics of run {args.run_id}",
        ["metric", "last", "min", "max", "points", "last step"],
        [
            (m.key, f"{m.last:.5g}", f"{m.min:.5g}", f"{m.max:.5g}", f"{m.count:,}", m.last_step)
            for m in summaries
        ],
        whole=("metric",),
    )


# The rows of a metric's history printed without --all: a long run logs a million points.
HISTORY_ROWS = 20


def print_metric_history(client: Client, run_id: str, key: str, out: Output, *, every_point: bool) -> None:
    """One metric's points in step order (the last HISTORY_ROWS unless `every_point`), and the
    curve of them all, as `jobs watch` draws a job's."""
    history = client.training.metric_history(run_id, key).info
    if out.as_json:
        return out.json(history)
    if not history.points:
        return out.line(
            f"run {run_id} has logged no {key} (`tessera runs metrics {run_id}` lists its metrics)"
        )
    shown = history.points if every_point else history.points[-HISTORY_ROWS:]
    out.table(
        f"{key} of run {run_id}",
        ["step", key, "time"],
        [(p.step, f"{p.value:.5g}", when(p.time)) for p in shown],
        whole=("step", key),
    )
    left_out = len(history.points) - len(shown)
    if left_out:
        out.line(
            f"the last {len(shown):,} of {len(history.points):,} points; {left_out:,} earlier left out "
            "(--all prints every one)"
        )
    plot = line_plot({key: [(float(p.step), p.value) for p in history.points]}, max_width=out.console.width)
    if plot:
        out.line(plot)
    return None


# DeleteRun/RestoreRun and their experiment twins are idempotent (a retried call succeeds) and
# answer the same record either way, so the CLI reads the state first to say when nothing changed.
def cmd_runs_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    if out.as_json:
        # The state read first only words the line; a read failing would fail the delete.
        return out.json(client.training.delete_run(args.run_id).info)
    was_deleted = client.training.run(args.run_id).deleted
    run = client.training.delete_run(args.run_id)
    done = f"run {run.run_id} was already deleted" if was_deleted else f"deleted run {run.run_id}"
    out.line(f"{done}; bring it back with: tessera runs restore {run.run_id}")


def cmd_runs_restore(client: Client, args: argparse.Namespace, out: Output) -> None:
    if out.as_json:
        return out.json(client.training.restore_run(args.run_id).info)
    was_deleted = client.training.run(args.run_id).deleted
    run = client.training.restore_run(args.run_id)
    out.line(
        f"restored run {run.run_id}"
        if was_deleted
        else f"run {run.run_id} is not deleted; nothing to restore"
    )


def cmd_runs_artifacts_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    artifacts = list(client.training.list_artifacts(args.run_id, args.path))
    if out.as_json:
        return out.json(artifacts)
    under = f" under {args.path}" if args.path else ""
    if not artifacts:
        return out.line(
            f"run {args.run_id} has no artifacts{under}; store one with: "
            f"tessera runs artifacts put {args.run_id} FILE"
        )
    out.table(
        f"artifacts of run {args.run_id}{under}",
        ["path", "size", "sha256", "stored"],
        [(a.path, size(a.size_bytes), a.sha256[:12], when(a.created_at)) for a in artifacts],
        whole=("path",),
    )


def cmd_runs_artifacts_put(client: Client, args: argparse.Namespace, out: Output) -> None:
    if Path(args.file).is_dir():
        return put_artifact_tree(client, args, out)
    artifact = client.training.log_artifact(
        args.run_id,
        args.file,
        args.path or None,
        progress=transfer_progress(out, f"storing {Path(args.file).name}"),
    )
    if out.as_json:
        return out.json(artifact)
    out.line(
        f"stored {artifact.path} in run {artifact.run_id} "
        f"({byte_size(artifact.size_bytes)}, sha256 {artifact.sha256[:12]})"
    )


def put_artifact_tree(client: Client, args: argparse.Namespace, out: Output) -> None:
    """`put RUN DIR`: every file under DIR, at its path under --path, as MLflow's log_artifacts."""
    stored = client.training.log_artifacts(args.run_id, args.file, args.path or None)
    if out.as_json:
        return out.json(stored)
    where = f"under {args.path.removesuffix('/')}/" if args.path else "at the top"
    if not stored:
        return out.line(f"no files under {args.file}, so nothing was stored in run {args.run_id}")
    total = sum(a.size_bytes for a in stored)
    out.line(
        f"stored {counted(len(stored), 'file')} ({byte_size(total)}) from {args.file} {where} in run {args.run_id}; "
        f"list them with: tessera runs artifacts ls {args.run_id}"
    )


def cmd_runs_artifacts_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    # "plots/" is the directory "plots" (see download_artifacts).
    args.path = args.path.removesuffix("/")
    listed = list(client.training.list_artifacts(args.run_id, args.path))
    if not listed and not args.path.strip("/"):
        # Every artifact asked for, and there are none: not a path to refuse.
        if out.as_json:
            return out.json({"path": str(Path(args.output or ".")), "artifacts": []})
        return out.line(
            f"run {args.run_id} has no artifacts, so nothing was written; store one with: "
            f"tessera runs artifacts put {args.run_id} FILE"
        )
    if not listed:
        # Said here, not by the daemon or the SDK: their message put in the CLI's words would
        # rewrite a word of the path that names a flag (ckpt/force.pt as ckpt/--force.pt).
        raise NotFoundInCliWords(
            f"run {args.run_id!r} has no artifact at {args.path!r}; {in_cli_words(LIST_ARTIFACTS_WORDS)}"
        )
    if any(a.path == args.path for a in listed):
        # One file.
        path = artifact_target(args.path, args.output)
        with replaced_only_with_force(), refused_resume_in_cli_words():
            artifact = client.training.download_artifact(
                args.run_id,
                args.path,
                path,
                progress=transfer_progress(out, f"downloading {args.path}"),
                overwrite=args.force,
                resume=args.resume,
            )
        if out.as_json:
            return out.json({"path": str(path), "artifact": to_plain(artifact)})
        return out.line(f"wrote {path}: {artifact.path}, {byte_size(artifact.size_bytes)}, sha256 verified")
    root = Path(args.output or ".")
    with replaced_only_with_force(), refused_resume_in_cli_words():
        local = client.training.download_artifacts(
            args.run_id, args.path, root, overwrite=args.force, resume=args.resume
        )
    if out.as_json:
        return out.json({"path": str(local), "artifacts": to_plain(listed)})
    total = sum(a.size_bytes for a in listed)
    out.line(
        f"wrote {counted(len(listed), 'artifact')} ({byte_size(total)}) under {local}, each sha256 verified"
    )


def cmd_experiments_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    experiments = list(client.training.experiments(prefix=args.prefix, view=VIEWS[args.view]))
    if out.as_json:
        return out.json(experiments)
    if not experiments:
        deleted = "deleted " if args.view == "deleted" else ""
        if args.prefix:
            return out.line(f"no {deleted}experiment's name starts with {args.prefix}")
        if deleted:
            return out.line("no experiment is deleted")
        return out.line("no experiments yet; a job makes its spec's experiment, a run its own")
    out.table(
        "experiments",
        ["name", "runs", "description", "tags", "created"],
        [
            (
                e.name + (" (deleted)" if e.deleted else ""),
                e.run_count,
                e.description,
                ", ".join(f"{k}={v}" for k, v in sorted(e.tags.items())),
                when(e.created_at),
            )
            for e in experiments
        ],
        whole=("name",),
        unbroken=("tags",),
    )


def cmd_experiments_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    experiment = client.training.experiment(args.name)
    if out.as_json:
        return out.json(experiment)
    rows: list[tuple[str, Any]] = [
        ("description", experiment.description or "-"),
        ("runs", f"{experiment.run_count:,} (`tessera runs ls --experiment {experiment.name}` lists them)"),
        ("created", when(experiment.created_at)),
    ]
    rows += [(f"tag {key}", value) for key, value in sorted(experiment.tags.items())]
    if experiment.deleted:
        rows.append(
            ("deleted", f"{when(experiment.deleted_at)} (`tessera experiments restore` brings it back)")
        )
    out.pairs(f"experiment {experiment.name}", rows)


def cmd_experiments_update(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.description is None and not args.tag and not args.remove_tag:
        raise UsageError("nothing to change: give --description, --tag or --remove-tag")
    experiment = client.training.update_experiment(
        args.name,
        description=args.description,
        set_tags=once_each(args.tag, "--tag"),
        remove_tags=args.remove_tag or (),
    )
    if out.as_json:
        return out.json(experiment)
    rows: list[tuple[str, Any]] = [("description", experiment.description or "-")]
    rows += [(f"tag {k}", v) for k, v in sorted(experiment.tags.items())]
    out.pairs(f"experiment {experiment.name}", rows)


def cmd_experiments_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    if out.as_json:
        # As in `runs rm`: no state read first, which only words the line.
        return out.json(client.training.delete_experiment(args.name))
    was_deleted = client.training.experiment(args.name).deleted
    experiment = client.training.delete_experiment(args.name)
    name = experiment.name
    done = f"experiment {name} was already deleted, with" if was_deleted else f"deleted experiment {name} and"
    out.line(f"{done} its runs; bring them back with: tessera experiments restore {name}")


def cmd_experiments_restore(client: Client, args: argparse.Namespace, out: Output) -> None:
    if out.as_json:
        return out.json(client.training.restore_experiment(args.name))
    was_deleted = client.training.experiment(args.name).deleted
    experiment = client.training.restore_experiment(args.name)
    if not was_deleted:
        return out.line(f"experiment {experiment.name} is not deleted; nothing to restore")
    out.line(f"restored experiment {experiment.name} ({counted(experiment.run_count, 'run')})")


def cmd_runs_leaderboard(client: Client, args: argparse.Namespace, out: Output) -> None:
    def board() -> list[training_pb2.LeaderboardEntry]:
        ranked = client.training.leaderboard(
            args.experiment, args.metric, mode=args.mode, limit=args.limit, field=args.field
        )
        return [entry.info for entry in ranked]

    entries = board()
    if not entries:
        nothing = nothing_ranked(client, args.experiment, args.metric)
        if nothing is None:
            # A run logged the metric between the two reads: the board read again ranks it.
            entries = board()
        if not entries:
            said = nothing or f"no run of experiment {args.experiment} has logged {args.metric}"
            return out.json([]) if out.as_json else out.line(said)
    if out.as_json:
        return out.json(list(entries))
    runs = [e.run for e in entries]
    differing = differing_params(runs)
    tails = unambiguous_tails(differing, {k for run in runs for k in run.params})

    # Each param by its full dotted key, however narrow: a tail alone (`version=2`, `count=1`) left
    # the reader to guess which of the spec's fields it was. Narrower, the value goes under its key.
    def rows(pair: Callable[[str, str], str]) -> list[tuple[Any, ...]]:
        return [
            (
                e.rank,
                f"{e.value:.5g}",
                e.run.run_id,
                e.run.name,
                "\n".join(pair(k, e.run.params[k]) for k in differing if k in e.run.params),
            )
            for e in entries
        ]

    out.table(
        f"{args.experiment} by {args.metric}",
        ["rank", args.metric, "run", "name", "params that differ"],
        rows(lambda key, value: f"{key}={value}"),
        whole=("rank", "run", "name"),
        unbroken=("params that differ",),
        stacked={"name": "run"},
        narrower_rows=rows(lambda key, value: f"{key}=\n  {short_value(value)}"),
        # A key too long for the column even so: its shortest dotted tail that no other key of
        # these runs ends with, where the column left out altogether said nothing.
        narrowest_rows=rows(lambda key, value: f"{tails[key]}=\n  {short_value(value)}"),
    )
    same = len({k for run in runs for k in run.params}) - len(differing)
    if same:
        out.line(
            f"left out: {counted(same, 'param')} with one value in every run above "
            "(`tessera runs show RUN` or --json lists them)"
        )


def unambiguous_tails(keys: Iterable[str], among: Collection[str]) -> dict[str, str]:
    """Each key's shortest dotted tail ("lr" of "optimizer.lr") that no other key of `among`
    ends with, the key whole where every tail is shared."""
    tails: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for start in range(len(parts) - 1, -1, -1):
            tail = ".".join(parts[start:])
            if not any(other != key and (other == tail or other.endswith(f".{tail}")) for other in among):
                break
        tails[key] = tail
    return tails


# Runs and keys a leaderboard of a metric no run logged reads and names, so that a misspelt
# metric is answered at once in an experiment of thousands of runs and keys.
RUNS_READ_FOR_KEYS = 100
KEYS_NAMED = 20


def nothing_ranked(client: Client, experiment: str, metric: str) -> str | None:
    """Why a leaderboard is empty, where that is an answer: the experiment has no runs, its newest
    runs have logged no metric yet, or a run still running, or interrupted and waiting to resume
    (a daemon stopped mid-job; the job resumes it), may log `metric` yet. NotFound where its runs
    have logged metrics, none of them `metric`, and none is running or interrupted: a misspelt name,
    which an empty answer and exit 0 would let a script go on with; the message names the keys
    the newest runs have logged, a near miss first. None where those runs have logged `metric`:
    it was logged after the leaderboard was read."""
    training = client.training
    runs = list(itertools.islice(training.runs(experiment, page_size=RUNS_READ_FOR_KEYS), RUNS_READ_FOR_KEYS))
    if not runs:
        return f"experiment {experiment} has no runs yet"
    keys = sorted({summary.key for run in runs for summary in run.metrics})
    if metric in keys:
        return None
    said = f"no run of experiment {experiment} has logged {metric}"
    whose = f"its newest {len(runs)} runs" if len(runs) == RUNS_READ_FOR_KEYS else "its runs"
    if not keys:
        return f"{said}; {whose} have logged no metric yet"
    named = ", ".join(keys[:KEYS_NAMED])
    more = f" and {len(keys) - KEYS_NAMED} more" if len(keys) > KEYS_NAMED else ""
    logged = f"{whose.capitalize()} have logged: {named}{more}."
    # Any run of the experiment that may log yet, not only of the newest read: an older one may log
    # it too. An interrupted run is running again once its re-queued job's next attempt starts.
    may_log = len(
        list(
            itertools.islice(
                training.runs(experiment, statuses=["running", "interrupted"], page_size=RUNS_READ_FOR_KEYS),
                RUNS_READ_FOR_KEYS,
            )
        )
    )
    if may_log:
        at_least = " or more" if may_log == RUNS_READ_FOR_KEYS else ""
        are = "is" if may_log == 1 else "are"
        return (
            f"{said} yet; {counted(may_log, 'run')}{at_least} {are} still running or waiting to resume "
            f"and may log it. {logged}"
        )
    near = difflib.get_close_matches(metric, keys, n=1)
    if near:
        said += f"; did you mean {near[0]}?"
    raise NotFoundInCliWords(f"{said}{' ' if near else '. '}{logged}")


def differing_params(runs: Sequence[training_pb2.Run]) -> list[str]:
    """The params whose values are not the same in every run (set in some runs only included),
    sorted: a job's run logs every field of its spec, and the few a search varies are what a
    leaderboard is read for."""
    names = sorted({k for run in runs for k in run.params})
    return [k for k in names if param_values_differ([run.params.get(k) for run in runs])]
