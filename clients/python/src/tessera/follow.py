"""Following a training job in a terminal: a live progress bar, then a summary and loss plot."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from tessera.errors import (
    DeadlineExceeded,
    NotAnswering,
    StoppedFollowing,
    Terminated,
    TesseraError,
    Unavailable,
    stream_reset,
)
from tessera.events import (
    EpochMetrics,
    JobError,
    JobEvent,
    JobState,
    LogLine,
    StateChanged,
    StepMetrics,
    VersionRegistered,
)
from tessera.events import Progress as ProgressEvent
from tessera.job_progress import Pace
from tessera.json_output import dumps, message_to_plain
from tessera.plot import line_plot
from tessera.sweeps import FailingPolls
from tessera.training import Job
from tessera.transport import Connection
from tessera.v1 import training_pb2

# Between asks while the daemon does not answer.
_ASK_AGAIN_S = 1.0
# A follower's watch is made again after this long (from the next event), and where no event came
# in it the daemon is asked for the job: a quiet job (queued for hours) goes on being followed, a
# daemon that no longer answers (hung, or behind a proxy that lost it) is told from it.
WATCH_ROUND_S = 60.0
# The deadline of each such ask: the daemon answers GetJob from its store in milliseconds.
POLL_TIMEOUT_S = 10.0


def transient(error: TesseraError) -> bool:
    """Whether a follower asks again after `error`: the daemon restarting or out of reach
    (UNAVAILABLE), a stream reset by it or a proxy (`stream_reset`), an ask or a round that ran
    past its own deadline (DEADLINE_EXCEEDED: the follower's deadlines, not the job's). Any other
    code is the daemon's answer, given again: RESOURCE_EXHAUSTED too (its streams at
    limits.max_concurrent_streams; a watcher too slow is resumed by the watch itself)."""
    return isinstance(error, Unavailable | DeadlineExceeded) or stream_reset(error)


class Outage(FailingPolls):
    """How long a follower of a job has gone without its watch going on, counted as a sweep's
    failing polls are: a restart ends no job, and its follower waits it out as long. It runs from
    the first failure after an event, or from the start of a round that brought none, and only an
    event (or a quiet round the daemon then answers for) ends it: a daemon answering GetJob while
    each watch fails (a proxy resetting every stream) is no watch that goes on."""

    def __init__(self, job: Job[Connection]) -> None:
        super().__init__()
        self._job = job
        self._asks = 0
        self._answers = 0

    def answered(self) -> None:
        """The watch went on: an event came, or a round was quiet and the daemon answers."""
        super().answered()
        self._asks = self._answers = 0

    def silent_since(self, began: float) -> None:
        """A round that began at `began` (time.monotonic()'s) brought no event: an outage not yet
        counted is counted from then."""
        if self._since is None:
            self._since = began

    def wait(self, error: TesseraError) -> None:
        """Pause before asking again; raise `error`, saying how long the watch has not gone on,
        once that is FAILING_POLLS_S."""
        if self.give_up():
            raise self._gave_up(error)
        time.sleep(_ASK_AGAIN_S)

    def until_answered(self, error: TesseraError | None) -> None:
        """Ask the daemon for the job (GetJob, POLL_TIMEOUT_S each) until it answers: at once
        where `error` is None, else after a pause, and _ASK_AGAIN_S after each ask that fails."""
        while True:
            if error is not None:
                self.wait(error)
            self._asks += 1
            try:
                self._job.refresh(timeout=POLL_TIMEOUT_S)
            except TesseraError as failed:
                if not transient(failed):
                    raise
                error = failed
                continue
            self._answers += 1
            return

    def _gave_up(self, error: TesseraError) -> TesseraError:
        job_id = self._job.id
        assert self._since is not None, "give_up starts the count"
        seconds = f"{time.monotonic() - self._since:.0f} s"
        asks = (
            f"asked for job {job_id} {self._asks} time{'s' if self._asks != 1 else ''}, each ask given up to "
            f"{POLL_TIMEOUT_S:g} s and the next made {_ASK_AGAIN_S:g} s after one failed"
        )
        if self._answers:
            said = (
                f"watching job {job_id} has failed for {seconds} while the daemon answered {self._answers} "
                f"of {self._asks} asks for it; gave up following it: it may go on there. Check what ends "
                f"its streams (a proxy between?), then follow it again with `tessera jobs watch {job_id}` "
                f"(the last failure said {error.code}: {error.daemon_message})"
            )
        else:
            said = (
                f"the daemon has not answered for {seconds}: {asks}; gave up following it: it may go on "
                f"there. Check that tesserad runs and answers there, then follow it again with "
                f"`tessera jobs watch {job_id}` (the last ask said {error.code}: {error.daemon_message})"
            )
        if isinstance(error, DeadlineExceeded):
            # The follower's own deadlines passed, not --timeout's: a longer one is not the fix.
            return NotAnswering(said, error.trailers)
        return type(error)(said, error.trailers)


def events_outlasting_restarts(job: Job[Connection], from_seq: int) -> Iterator[JobEvent]:
    """The job's events from `from_seq` until it ends, watched in rounds of WATCH_ROUND_S, and
    again from the next one once the daemon answers after a transient failure (`transient`; the
    SDK's reconnects span seconds, a restart may take longer); a round without events asks the
    daemon for the job first. Where the daemon says the job has ended and the watch after that
    fails too, it ends (the job's events up to then may be missed; its state is in `job.info`).
    Gives up once the watch has not gone on for FAILING_POLLS_S (`Outage`)."""
    outage = Outage(job)
    ended = False
    while True:
        heard = False
        began = time.monotonic()
        try:
            for event in job.watch(from_seq=from_seq, timeout=WATCH_ROUND_S):
                heard = True
                outage.answered()
                from_seq = event.seq + 1
                yield event
            return
        except TesseraError as error:
            if not transient(error):
                raise
            if isinstance(error, DeadlineExceeded):
                if heard:
                    # The round ran out with the job talking: the daemon answers.
                    continue
                outage.silent_since(began)
                outage.until_answered(None)
                # The watch was open all round, and the daemon answers: a quiet job.
                outage.answered()
            else:
                if ended:
                    return
                outage.until_answered(error)
            ended = job.state.finished


@dataclass
class Curves:
    """What a follower keeps of a job's events for its end summary."""

    train_loss: list[tuple[float, float]] = field(default_factory=list)
    val_loss: list[tuple[float, float]] = field(default_factory=list)
    last_epoch_metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    samples_per_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    registered: str = ""

    def add(self, event: JobEvent) -> None:
        if isinstance(event, StepMetrics):
            self.train_loss.append((event.step, event.loss))
            self.samples_per_s = event.samples_per_s
        elif isinstance(event, EpochMetrics):
            self.epochs = max(self.epochs, event.epoch)
            self.last_epoch_metrics = dict(event.metrics)
            if "val_loss" in event.metrics:
                self.val_loss.append((event.step, event.metrics["val_loss"]))
        elif isinstance(event, JobError):
            self.errors.append(f"{event.kind}: {event.message}")
        elif isinstance(event, VersionRegistered):
            alias = f" (alias {event.alias})" if event.alias else ""
            self.registered = f"{event.model} v{event.version}{alias}"


def event_json(event: JobEvent) -> str:
    """One event as a JSON line: its kind and fields."""
    values = {key: value for key, value in vars(event).items()}
    values["time"] = event.time.isoformat() if event.time else None
    return dumps({"kind": type(event).__name__, **values})


def follow(job: Job[Connection], console: Console, as_json: bool, from_seq: int = 1) -> Job[Connection]:
    """Stream a job's events until it ends (JSON lines with `as_json`), then print the summary
    and, for people, the loss curves. Returns the job with its final state. Ctrl-C stops the
    following, not the job: StoppedFollowing (Terminated for SIGTERM) says how to follow it
    again or cancel it."""
    with stopped_following(
        f"stopped following job {job.id}, which goes on: `tessera jobs watch {job.id}` follows it "
        f"again, `tessera jobs cancel {job.id}` stops it"
    ):
        return _follow(job, console, as_json, from_seq)


@contextlib.contextmanager
def stopped_following(words: str) -> Iterator[None]:
    """Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated) while following a job or a sweep, said
    in `words`: what goes on without the follower, and how to follow it again or stop it."""
    try:
        yield
    except KeyboardInterrupt:
        raise StoppedFollowing(words) from None
    except Terminated:
        raise Terminated(words) from None


def _follow(job: Job[Connection], console: Console, as_json: bool, from_seq: int) -> Job[Connection]:
    started = time.monotonic()
    curves = Curves()
    if as_json:
        for event in events_outlasting_restarts(job, from_seq):
            curves.add(event)
            print(event_json(event), flush=True)
        job.refresh()
        print(dumps({"kind": "Job", **message_to_plain(job.info)}))
        return job
    _live(events_outlasting_restarts(job, from_seq), curves, console)
    job.refresh()
    console.print(summary_table(job, curves, time.monotonic() - started))
    plot = line_plot({"train_loss": curves.train_loss, "val_loss": curves.val_loss}, max_width=console.width)
    if plot:
        console.print(plot, markup=False, highlight=False)
    return job


def _live(events: Iterable[JobEvent], curves: Curves, console: Console) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[speed]}"),
        # The job's own estimate: rich's TimeRemainingColumn times the bar's updates, which
        # follow the events' bursty arrival, not the training.
        TextColumn("{task.fields[left]}"),
    )
    pace = Pace()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None, loss="", speed="", steps="", left="")
        epoch = 0
        for event in events:
            curves.add(event)
            pace.add(event)
            if isinstance(event, StateChanged):
                bar.update(task, description=event.state.value)
                bar.console.print(Text(state_line(event), style="dim"))
            elif isinstance(event, StepMetrics):
                epoch = event.epoch
                bar.update(
                    task,
                    description=f"epoch {epoch}",
                    completed=event.step,
                    loss=f"loss {event.loss:.4f}",
                    speed=f"{pace.samples_per_s:,.0f} samples/s",
                )
            elif isinstance(event, ProgressEvent):
                bar.update(
                    task,
                    completed=event.step,
                    total=event.total_steps or None,
                    steps=f"step {event.step}/{event.total_steps}",
                    left=pace.time_left(),
                )
            elif isinstance(event, EpochMetrics):
                # key=value words: a line wrapped at the terminal's width never parts a metric
                # from its value, as "val_loss 0.6236" was.
                shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
                bar.console.print(Text(f"epoch {event.epoch}: {shown}  ({event.duration_s:.1f} s)"))
            # Text, not markup: the worker's words may hold brackets ("[rank 0]").
            elif isinstance(event, LogLine) and event.level in ("warning", "error"):
                bar.console.print(Text(f"{event.level}: {event.message}", style="yellow"))
            elif isinstance(event, LogLine):
                # Few, and each says what the states do not: where the job trains, the checkpoint
                # it resumed from, why it ended before its epochs did (early stopping).
                bar.console.print(Text(event.message, style="dim"))
            elif isinstance(event, JobError):
                bar.console.print(Text(f"error ({event.kind}): {event.message}", style="red"))


# Words that already say a state: a reason that starts with one is shown alone.
_STATE_WORDS = {
    JobState.QUEUED: ("queued", "re-queued"),
    JobState.RUNNING: ("running", "started", "resumed"),
    JobState.SUCCEEDED: ("succeeded", "finished"),
    JobState.FAILED: ("failed",),
    JobState.CANCELLED: ("cancelled",),
    JobState.INTERRUPTED: ("interrupted",),
}


def state_line(event: StateChanged) -> str:
    """A state change in words, the state said once: "queued behind 2 jobs", "started on
    cpu:0", "failed: CUDA out of memory" (never "queued: queued")."""
    reason = event.reason.strip()
    first_word = reason.split(maxsplit=1)[0].lower() if reason else ""
    if not reason:
        line = event.state.value
    elif first_word in _STATE_WORDS.get(event.state, (event.state.value,)):
        line = reason
    else:
        line = f"{event.state.value}: {reason}"
    if event.state == JobState.RUNNING and event.devices:
        line += f" on {', '.join(event.devices)}"
    return line


def stopped_early_text(stop: training_pb2.EarlyStop) -> str:
    """Why early stopping ended a job, as the worker's line says it."""
    epochs = f"{stop.patience} epoch{'s' if stop.patience != 1 else ''}"
    return (
        f"after epoch {stop.epoch}: {stop.metric} did not improve on its best, {stop.best:.6g} after "
        f"epoch {stop.best_epoch}, by more than {stop.min_delta:g} for {epochs} (early_stopping.patience)"
    )


def registered_text(job: training_pb2.Job) -> str:
    """The version a job registered and the alias that registration set, as its event says them."""
    alias = f" (alias {job.registered_alias})" if job.registered_alias else ""
    return f"{job.registered.model} v{job.registered.version}{alias}"


def summary_table(job: Job[Connection], curves: Curves, seconds: float) -> Table:
    """The end-of-job table: state, epochs, steps, final metrics, registered version."""
    table = Table(title=f"job {job.id}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    style = "green" if job.state == JobState.SUCCEEDED else "red"
    table.add_row("state", f"[{style}]{job.state.value}[/{style}]")
    if job.info.error:
        table.add_row("error", Text(job.info.error))
    table.add_row("epochs", str(job.info.epoch or curves.epochs))
    if job.stopped_early is not None:
        table.add_row("stopped early", stopped_early_text(job.stopped_early))
    table.add_row("steps", f"{job.info.step}/{job.info.total_steps}")
    for key, value in sorted({**curves.last_epoch_metrics, **dict(job.info.metrics)}.items()):
        # The job's "loss" is the last step's; the epoch figures are train_loss, val_loss, ...
        table.add_row("loss (last step)" if key == "loss" else key, f"{value:.5g}")
    if curves.samples_per_s:
        table.add_row("samples/s", f"{curves.samples_per_s:,.0f}")
    registered = curves.registered
    if not registered and job.registered is not None:
        registered = registered_text(job.info)
    if registered:
        table.add_row("registered", registered)
    table.add_row("followed for", f"{seconds:.1f} s")
    return table
