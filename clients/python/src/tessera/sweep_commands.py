"""`tessera sweep SPEC.toml [--follow]` and `tessera sweeps ls|show|cancel`: a live table of
trials while a sweep runs, then a leaderboard and a plot of the best metric against trials."""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.live import Live

from tessera.follow import stopped_following
from tessera.messages import counted, load_toml
from tessera.plot import line_plot
from tessera.state_words import number_word
from tessera.sweeps import Sweep, SweepState, follow_polls, sweep_failed
from tessera.tables import FittedTable, fitted_table
from tessera.v1 import job_spec_pb2, training_pb2

if TYPE_CHECKING:
    from tessera.cli.output import Output
    from tessera.client import Client
    from tessera.transport import Connection

POLL_S = 1.0
SWEEP_HELP = "the sweep's id (`tessera sweeps ls` lists them)"
S = training_pb2


def sweep_state(sweep: training_pb2.Sweep) -> str:
    return number_word(S.SweepState, sweep.state)


def strategy_name(spec: training_pb2.SweepSpec) -> str:
    name = number_word(S.SweepStrategy, spec.strategy)
    if spec.pruner:
        name += " + " + number_word(S.SweepPruner, spec.pruner)
    return name


def seed_text(spec: training_pb2.SweepSpec) -> str:
    """`, seed N` where the searcher draws (set `seed = N` to draw the same trials again); a grid draws nothing."""
    return "" if spec.strategy == S.SWEEP_STRATEGY_GRID else f", seed {spec.seed}"


def trial_state(trial: training_pb2.SweepTrial) -> str:
    if trial.pruned:
        return f"pruned at epoch {trial.pruned_at_epoch}" if trial.pruned_at_epoch else "pruned"
    if not trial.job_id:
        return {S.JOB_STATE_UNSPECIFIED: "pending", S.JOB_STATE_CANCELLED: "cancelled"}.get(
            trial.state, "failed to start"
        )
    return number_word(S.JobState, trial.state)


def params_text(params: Any) -> str:
    """`lr=0.01, name=sgd`: each parameter by the last part of its path, in path order."""
    return ", ".join(
        f"{path.rsplit('.', 1)[-1]}={short_value(value)}" for path, value in sorted(params.items())
    )


def short_value(text: str) -> str:
    """A number to 4 significant digits (an integer as it is), any other text as it is."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() and "." not in text and "e" not in text else f"{number:.4g}"


def trial_rows(sweep: training_pb2.Sweep) -> list[tuple[str, ...]]:
    pbt = sweep.spec.strategy == S.SWEEP_STRATEGY_PBT
    rows: list[tuple[str, ...]] = []
    for t in sweep.trials:
        lineage = ""
        if pbt and t.generation:
            lineage = f"gen {t.generation}, " + ("copied " if t.exploited else "continued ") + t.parent_job_id
        rows.append(
            (
                str(t.number),
                trial_state(t),
                f"{t.metric:.5g}" if t.has_metric else "-",
                params_text(t.params),
                lineage or (f"bracket {t.bracket}" if sweep.spec.pruner == S.SWEEP_PRUNER_HYPERBAND else ""),
                t.job_id or "-",
            )
        )
    return rows


def completed(trial: training_pb2.SweepTrial) -> bool:
    """Whether the trial ran to its end, so its metric is a final one and it may be the best (as
    the daemon's best_job_id, and Optuna's best_trial, take COMPLETE trials only)."""
    return trial.state == S.JOB_STATE_SUCCEEDED and not trial.pruned and trial.has_metric


def best_so_far(sweep: training_pb2.Sweep, maximise: bool) -> list[tuple[float, float]]:
    """(trials used, best metric among those that completed) after each trial from the first
    completed one, in trial order."""
    best = -math.inf if maximise else math.inf
    points = []
    for used, t in enumerate(sorted(sweep.trials, key=lambda t: t.number), start=1):
        if completed(t) and math.isfinite(t.metric):
            best = max(best, t.metric) if maximise else min(best, t.metric)
        if math.isfinite(best):
            points.append((float(used), best))
    return points


def maximises(sweep: training_pb2.Sweep) -> bool:
    if sweep.spec.mode:
        return bool(sweep.spec.mode == job_spec_pb2.OPTIMIZE_MODE_MAX)
    return not sweep.spec.metric.endswith(("loss", "error", "mse", "mae"))


def trials_table(sweep: training_pb2.Sweep, width: int) -> FittedTable:
    """The sweep's trials for a console `width` cells wide."""
    # Trials that ran: a trial a cancel or a stop reached before it started has no job.
    done = sum(1 for t in sweep.trials if t.job_id and (t.state in _ENDED or t.pruned))
    limit = f" of {sweep.spec.max_trials}" if sweep.spec.max_trials else ""
    rows = trial_rows(sweep)
    columns = ["#", "state", sweep.spec.metric, "params", "lineage", "job"]
    shown = [i for i, column in enumerate(columns) if column != "lineage" or any(row[i] for row in rows)]
    return fitted_table(
        width,
        f"sweep {sweep.sweep_id} ({strategy_name(sweep.spec)}{seed_text(sweep.spec)}): {sweep_state(sweep)}, "
        f"{counted(done, 'trial')} done{limit}",
        [columns[i] for i in shown],
        [[row[i] for i in shown] for row in rows],
        whole=("#", "job"),
        unbroken=("params", "lineage"),
        caption="\n".join([f"best {sweep.spec.metric}: {_best_caption(sweep)}", *problems(sweep)]),
    )


_ENDED = {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED}


def problems(sweep: training_pb2.Sweep) -> list[str]:
    """Why trials could not start, and why the sweep failed, in words."""
    lines = [f"trial {t.number} failed to start: {t.error}" for t in sweep.trials if t.error]
    if sweep.error:
        lines.append(f"the sweep failed: {sweep.error}")
    return lines


def _best_text(sweep: training_pb2.Sweep, with_job: bool = True) -> str:
    best = next((t for t in sweep.trials if t.job_id == sweep.best_job_id and t.has_metric), None)
    if best is None:
        return "-"
    return (
        f"{best.metric:.5g} (trial {best.number}, {best.job_id})"
        if with_job
        else f"{best.metric:.5g} (trial {best.number})"
    )


def _best_caption(sweep: training_pb2.Sweep) -> str:
    """The best trial, or why there is none: only a trial that succeeded can be the best."""
    if sweep.best_job_id:
        return _best_text(sweep)
    return (
        "none yet, no trial has succeeded"
        if sweep.state == S.SWEEP_STATE_RUNNING
        else "none, no trial succeeded"
    )


def leaderboard_rows(sweep: training_pb2.Sweep, limit: int = 10) -> list[tuple[str, ...]]:
    """The trials that completed ranked by their metric, then, unranked ("-"), those with a metric
    that did not (a pruned trial's is its rung's, a failed or running one's an epoch's on the way)."""
    scored = [t for t in sweep.trials if t.has_metric]
    order = sorted(scored, key=lambda t: (not completed(t), -t.metric if maximises(sweep) else t.metric))
    ranks = itertools.count(1)
    return [
        (
            str(next(ranks)) if completed(t) else "-",
            f"{t.metric:.5g}",
            str(t.number),
            trial_state(t),
            params_text(t.params),
            t.job_id,
        )
        for t in order[:limit]
    ]


def registered_versions(client: Client, sweep: training_pb2.Sweep) -> dict[str, str]:
    """The version each trial's job registered ("tuned v3"), by job id: what promoting a trial
    takes, which the sweep's record does not carry."""
    if not sweep.spec.base.HasField("register_as"):
        return {}
    return {
        job.id: f"{job.registered.model} v{job.registered.version}"
        for job in client.training.jobs(sweep_id=sweep.sweep_id)
        if job.registered is not None
    }


def print_result(client: Client, sweep: training_pb2.Sweep, out: Output) -> None:
    """The leaderboard, with the version each trial registered where its spec registers one, and
    the plot of best-so-far against trials."""
    columns = ["rank", sweep.spec.metric, "trial", "state", "params", "job"]
    rows = leaderboard_rows(sweep)
    registered = registered_versions(client, sweep)
    if registered:
        columns.insert(-1, "registered")
        rows = [(*row[:-1], registered.get(row[-1], "-"), row[-1]) for row in rows]
    out.table(
        f"sweep {sweep.sweep_id}: {sweep_state(sweep)}, best {sweep.spec.metric}",
        columns,
        rows,
        whole=("rank", "job", "registered"),
        unbroken=("params",),
        # Its job names the trial; its state tells a pruned trial's rung metric from a final one.
        leave_out_first=("trial",),
    )
    plot = line_plot(
        {f"best {sweep.spec.metric} so far": best_so_far(sweep, maximises(sweep))},
        x_label="trials",
        max_width=out.console.width,
    )
    if plot:
        out.line(plot)


def settling(sweep: training_pb2.Sweep) -> bool:
    """Whether the sweep runs, or has ended while trials' jobs still run: a cancel ends the sweep
    at once, and its running trials stop at their next step, after it."""
    return sweep.state == S.SWEEP_STATE_RUNNING or any(
        t.job_id and t.state not in _ENDED for t in sweep.trials
    )


def settled(sweep: training_pb2.Sweep) -> bool:
    return not settling(sweep)


def wait_live(sweep: Sweep[Connection], out: Output) -> Sweep[Connection]:
    """Poll the sweep until it and its trials' jobs have ended, redrawing its table of trials
    each time. Polls that fail are made again as `Sweep.wait` makes them: a sweep goes on after
    a restart of the daemon, and so does following it."""
    if out.as_json:
        return follow_polls(sweep, POLL_S, lambda info: None, settled)
    try:
        with Live(
            trials_table(sweep.info, out.console.width).table, console=out.console, auto_refresh=False
        ) as live:
            return follow_polls(
                sweep,
                POLL_S,
                lambda info: live.update(trials_table(info, out.console.width).table, refresh=True),
                settled,
            )
    finally:
        # Live leaves its last line open, also when Ctrl-C ends it: what follows starts below it.
        out.line("")


def cmd_sweep(client: Client, args: argparse.Namespace, out: Output) -> None:
    sweep = client.training.submit_sweep(load_toml(args.spec)).info
    if not args.follow:
        if out.as_json:
            return out.json(sweep)
        out.line(
            f"submitted sweep {sweep.sweep_id} ({strategy_name(sweep.spec)}); "
            f"follow it with: tessera sweeps show {sweep.sweep_id} --follow"
        )
        return None
    finish(follow_sweep(client, sweep.sweep_id, out))
    return None


def follow_sweep(client: Client, sweep_id: str, out: Output) -> Sweep[Connection]:
    with stopped_following(
        f"stopped following sweep {sweep_id}, which goes on: `tessera sweeps show {sweep_id} --follow` "
        f"follows it again, `tessera sweeps cancel {sweep_id}` stops it"
    ):
        # The first answer is not asked again: a daemon never reached (not started, a wrong
        # --target) is said at once, as `jobs watch` says it; later polls outlast a restart.
        sweep = wait_live(client.training.sweep(sweep_id), out)
    if out.as_json:
        out.json(sweep.info)
    else:
        print_result(client, sweep.info, out)
    return sweep


def finish(sweep: Sweep[Connection]) -> None:
    """A followed sweep that did not succeed makes the command fail, as `Sweep.wait` does."""
    if sweep.state != SweepState.SUCCEEDED:
        raise sweep_failed(sweep, sweep.info)


def cmd_sweeps_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    sweeps = [sweep.info for sweep in client.training.sweeps()]
    if out.as_json:
        return out.json(sweeps)
    if not sweeps:
        return out.line("no sweeps yet; `tessera sweep SPEC.toml` starts one")

    def rows(with_job: bool) -> list[tuple[Any, ...]]:
        return [
            (
                s.sweep_id,
                strategy_name(s.spec),
                sweep_state(s),
                len(s.trials),
                s.spec.metric,
                _best_text(s, with_job),
                s.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            )
            for s in sweeps
        ]

    # What a sweep is listed for: its state and its best. Where both do not fit, the best's job
    # goes (`tessera sweeps show` names it), then the strategy and the creation time.
    out.table(
        "sweeps",
        ["id", "strategy", "state", "trials", "metric", "best", "created"],
        rows(with_job=True),
        whole=("id",),
        unbroken=("state", "metric", "best"),
        leave_out_first=("strategy", "created"),
        narrower_rows=rows(with_job=False),
    )


def cmd_sweeps_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.follow:
        finish(follow_sweep(client, args.sweep_id, out))
        return None
    sweep = client.training.sweep(args.sweep_id).info
    if out.as_json:
        return out.json(sweep)
    fitted = trials_table(sweep, out.console.width)
    out.console.print(fitted.table, width=fitted.width, crop=False)
    if sweep.state != S.SWEEP_STATE_RUNNING:
        print_result(client, sweep, out)
    return None


def cmd_sweeps_cancel(client: Client, args: argparse.Namespace, out: Output) -> None:
    sweep = client.training.cancel_sweep(args.sweep_id).info
    if out.as_json:
        return out.json(sweep)
    out.line(f"cancelled sweep {sweep.sweep_id}; its running trials stop at their next step")
    return None


def add_sweep_commands(
    commands: Any,
    command: Callable[[Any, str, Callable[..., None], str], argparse.ArgumentParser],
    group: Callable[[Any, str, str, str, list[tuple[str, str]]], Any],
) -> None:
    sub = command(commands, "sweep", cmd_sweep, "start a hyperparameter sweep from a TOML spec")
    sub.add_argument(
        "spec",
        help="SPEC.toml (SweepSpec fields: [base] is the job spec, [[parameters]] the space, values "
        "numbers, true/false or text; seed = N draws the same trials again, unset a seed is drawn and "
        "`tessera sweeps show` names it (a grid draws nothing: none is drawn for it)); - reads it from stdin",
    )
    sub.add_argument(
        "--follow", action="store_true", help="show the trials live, then a leaderboard and a plot"
    )
    sweeps = group(
        commands,
        "sweeps",
        "hyperparameter sweeps: list, show, cancel",
        "Hyperparameter sweeps, each started by `tessera sweep SPEC.toml`: one training job a "
        "trial, their leaderboard and the best metric so far.",
        [
            ("start a sweep and watch its trials", "tessera sweep sweep.toml --follow"),
            ("list the sweeps", "tessera sweeps ls"),
            ("a sweep's trials, leaderboard and plot", "tessera sweeps show SWEEP_ID"),
            ("stop it and its running trials", "tessera sweeps cancel SWEEP_ID"),
        ],
    )
    command(sweeps, "ls", cmd_sweeps_ls, "list the sweeps, newest first")
    sub = command(sweeps, "show", cmd_sweeps_show, "show a sweep's trials, leaderboard and best-so-far plot")
    sub.add_argument("sweep_id", help=SWEEP_HELP)
    sub.add_argument(
        "--follow", action="store_true", help="show the trials live until the sweep and its trials' jobs end"
    )
    command(sweeps, "cancel", cmd_sweeps_cancel, "stop a sweep and its running trials").add_argument(
        "sweep_id", help=SWEEP_HELP
    )
