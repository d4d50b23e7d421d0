"""Logging to one run as a training loop does, as MLflow's fluent API: `ActiveRun` (the run of
`client.training.start_run`, a context manager that ends it), and `MetricLogger`, which gathers
points and sends them in batches from one thread (MLflow's `log_metric(..., synchronous=False)`)."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from tessera.errors import FailedPrecondition
from tessera.runs import Run
from tessera.v1 import training_pb2 as pb

if TYPE_CHECKING:
    from tessera.training import Points, Training
    from tessera.transport import Connection


EXIT_CLOSE_S = 10.0
"""At interpreter exit, how long the loggers left open get, all together, to store what is queued
(a daemon that does not answer would otherwise hold the exit up to the client's retries)."""
EXIT_END_S = 3.0
"""At interpreter exit, after that, how long the runs left open get, all together, to be ended."""

# Loggers not closed yet, for the exit hook; weak, so that the hook keeps none alive.
_open_loggers: weakref.WeakSet[MetricLogger] = weakref.WeakSet()
# Runs of start_run not ended yet, by id: held, as MLflow's active run, so that a run whose object
# the script dropped is ended at exit too.
_open_runs: dict[str, ActiveRun] = {}
_exit_hook = threading.Lock()
_exit_hook_registered = False
# The exception sys.excepthook was last given: the uncaught one the interpreter exits on. Not
# sys.last_value, which pytest and code.InteractiveInterpreter set for errors they went on after.
_uncaught: list[BaseException] = []


def _forget_in_child() -> None:
    """A forked child holds copies of the parent's runs and loggers (without their threads):
    its exit must not end the runs the parent is still logging to."""
    _open_runs.clear()
    _open_loggers.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def ending_of(error: BaseException | None) -> str:
    """How a run ends on `error`, the exception a block ended on: SUCCEEDED on none or on
    sys.exit() with code 0 or None, CANCELLED on KeyboardInterrupt, else FAILED."""
    if error is None or (isinstance(error, SystemExit) and error.code in (None, 0)):
        return "succeeded"
    return "cancelled" if isinstance(error, KeyboardInterrupt) else "failed"


def _exit_status() -> str:
    """How a run left open ends at exit: FAILED where the interpreter exits on an uncaught
    exception (seen by sys.excepthook, before the exit hooks run), CANCELLED on an uncaught
    KeyboardInterrupt, else SUCCEEDED (sys.exit() too, whatever its code: no hook sees it)."""
    if not _uncaught or hasattr(sys, "ps1"):
        # An interactive session shows its errors through the hook too, and goes on.
        return "succeeded"
    return ending_of(_uncaught[-1])


def _watch_uncaught() -> None:
    """Wrap sys.excepthook to keep the exception it is given, then show it as before."""
    shown = sys.excepthook

    def keeping(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        _uncaught[:] = [error]
        shown(kind, error, traceback)

    sys.excepthook = keeping


def _close_at_exit() -> None:
    """Close the loggers a script left open, as MLflow flushes its async logging at exit, then
    end the runs of start_run it left open, as MLflow ends its active run."""
    _end_left_open(list(_open_loggers), list(_open_runs.values()), _exit_status(), "at exit")


def end_runs_left_open(conn: object, error: BaseException | None) -> None:
    """End the runs of start_run made through `conn` and left open, as its client closes (`error`:
    the exception a `with` block of the client ended on), as at exit."""
    runs = [run for run in list(_open_runs.values()) if run._training._conn is conn]
    # Every logger of the connection, those of metric_logger() too, whose points go first.
    loggers = [logger for logger in list(_open_loggers) if logger._training._conn is conn]
    _end_left_open(loggers, runs, ending_of(error), "as its client closed")


def _end_left_open(loggers: list[MetricLogger], runs: list[ActiveRun], status: str, when: str) -> None:
    """Close `loggers` within EXIT_CLOSE_S, then end `runs` as `status` (FAILED where their points
    could not be stored) within EXIT_END_S; say on stderr which points could not be stored and
    which runs not ended."""
    deadline = time.monotonic() + EXIT_CLOSE_S
    unstored: set[str] = set()
    for logger in loggers:
        try:
            logger._close(deadline)
        except BaseException as error:
            unstored.add(logger.run_id)
            lost = "; ".join(getattr(error, "__notes__", ()))
            print(f"tessera: {when}, {lost} ({type(error).__name__}: {error})", file=sys.stderr)
    deadline = time.monotonic() + EXIT_END_S
    for run in runs:
        # A run whose end() failed ends as it asked.
        ending = "failed" if run.id in unstored else run._ending or status
        try:
            run._end_at_exit(ending, deadline)
        except BaseException as error:
            # Said once: the exit hook does not try again a run its client's close could not end.
            forget_run(run.id)
            print(
                f"tessera: {when}, run {run.id} could not be ended {ending.upper()} and stays RUNNING "
                f"({type(error).__name__}: {error}); end it with client.training.update_run",
                file=sys.stderr,
            )


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        # Registered after the client's channel is made, so it runs before grpc's own hooks.
        atexit.register(_close_at_exit)
        _watch_uncaught()
        _exit_hook_registered = True


def _watch_at_exit(logger: MetricLogger) -> None:
    with _exit_hook:
        _open_loggers.add(logger)
        _register_exit_hook()


def _watch_run_at_exit(run: ActiveRun) -> None:
    with _exit_hook:
        _open_runs[run.id] = run
        _register_exit_hook()


def forget_run(run_id: str) -> None:
    """Stop watching the run `run_id`: ended, by update_run or otherwise."""
    with _exit_hook:
        _open_runs.pop(run_id, None)


def _unstored(run_id: str, points: Sequence[pb.MetricPoint], sending: int) -> str:
    """Which points of a logger that gave up are not stored, by key and steps."""
    steps: dict[str, list[int]] = {}
    for point in points:
        steps.setdefault(point.key, []).append(point.step)
    keys = [
        f"{key} at step {held[0]}"
        if len(held) == 1
        else f"{key} at {len(held)} steps from {min(held)} to {max(held)}"
        for key, held in steps.items()
    ]
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more keys" if len(keys) > 5 else "")
    text = f"{len(points)} metric point(s) of run {run_id} are not stored" + (f" ({shown})" if keys else "")
    if sending:
        text += f"; {sending} more were being sent when it gave up, and may be"
    return text


class MetricPoint(NamedTuple):
    """One point of `log_batch` and `MetricLogger.log_batch`: `timestamp` in whole milliseconds
    since the Unix epoch, as MLflow's (None: the daemon's clock when it stores it). Not MLflow's
    `Metric`, whose third field is the timestamp: here it is the step."""

    key: str
    value: float
    step: int
    timestamp: int | None = None


class MetricLogger:
    """Points of one run sent in the background: `log` and `log_batch` queue them (blocking while
    `max_queued` are waiting, so none is ever dropped), and one thread sends them in batches of
    up to `flush_points` points, at the latest `flush_ms` milliseconds after the first of a batch
    was queued. `flush()` returns once every point queued before it is stored; `close()` flushes
    and ends the thread. A batch the daemon refuses, or that fails past the client's retries,
    stays queued, first, and its error is raised by the next `log`, `log_batch` or `flush`
    (once per failure): a flush after it sends the batch again (a point stored twice changes
    nothing, but one logged without a step, where the failed try had stored it, is stored again
    at the next step). `close()` sends what is queued once more, even after such a failure no call has
    raised yet (a daemon briefly unavailable), and raises only where that fails too, saying
    which points are left unstored. A logger left open is closed at interpreter exit, within
    EXIT_CLOSE_S, what could not be stored then said on stderr. Values are checked as they are
    queued (a value that is no number raises there, at its caller)."""

    def __init__(
        self,
        training: Training[Connection],
        run_id: str,
        *,
        flush_points: int = 1000,
        flush_ms: float = 1000,
        max_queued: int = 100_000,
    ) -> None:
        from tessera.training import MAX_BATCH_POINTS  # a cycle: training imports this module

        if not 1 <= flush_points <= MAX_BATCH_POINTS:
            raise ValueError(f"flush_points must be in 1..{MAX_BATCH_POINTS}, got {flush_points}")
        if not flush_ms > 0:
            raise ValueError(f"flush_ms must be above 0, got {flush_ms}")
        if max_queued < flush_points:
            raise ValueError(f"max_queued must be at least flush_points ({flush_points}), got {max_queued}")
        self._training = training
        self.run_id = run_id
        self._flush_points = flush_points
        self._flush_s = flush_ms / 1000
        self._max_queued = max_queued
        self._queued: deque[pb.MetricPoint] = deque()
        self._first_queued_at = 0.0  # monotonic time the oldest queued point arrived
        self._sent = 0  # points stored, in the order queued
        self._taken = 0  # points taken from the queue: stored, or in the batch being sent
        self._sending = 0  # points in the batch being sent
        self._asked = 0  # flush() waits until _sent reaches the points queued before it
        self._error: BaseException | None = None
        self._closed = False
        self._abandoned = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._send_loop, name=f"tessera-metrics-{run_id}", daemon=True)
        self._thread.start()
        _watch_at_exit(self)

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def log(
        self, metrics: Mapping[str, float], step: int | None = None, *, timestamp: int | None = None
    ) -> None:
        """Queue metric values at a step; without one, each at the step after its key's last
        (see `client.training.log_metrics`)."""
        from tessera.training import metric_points

        made = metric_points(MetricPoint(key, value, step or 0, timestamp) for key, value in metrics.items())
        for point in made:
            point.next_step = step is None
        self._queue(made)

    def log_batch(self, points: Points) -> None:
        """Queue points, (key, value, step[, timestamp]) each."""
        from tessera.training import metric_points

        self._queue(metric_points(points))

    def _queue(self, made: list[pb.MetricPoint]) -> None:
        with self._changed:
            self._raise_error()
            if self._closed:
                raise RuntimeError(f"the metric logger of run {self.run_id} is closed")
            for point in made:
                while len(self._queued) >= self._max_queued and self._error is None:
                    self._changed.notify_all()
                    self._changed.wait()
                self._raise_error()
                if not self._queued:
                    self._first_queued_at = time.monotonic()
                self._queued.append(point)
            self._changed.notify_all()

    def flush(self) -> None:
        """Return once every point queued so far is stored; raise the error of a batch that failed."""
        self._flush(None)

    def close(self) -> None:
        """Flush, then end the sending thread; a repeat does nothing. A batch that failed before
        is sent again first, whether or not a call raised its error. Where the points cannot be
        stored, raise the error, with a note saying which are left unstored."""
        self._close(None)

    def _flush(self, deadline: float | None) -> None:
        """`flush`, giving up with TimeoutError at the monotonic time `deadline` (None: never)."""
        with self._changed:
            self._raise_error()
            target = self._taken + len(self._queued)
            self._asked = max(self._asked, target)
            self._changed.notify_all()
            while self._sent < target and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the daemon did not store them within {EXIT_CLOSE_S:g} s")
                self._changed.wait(left)
            self._raise_error()

    def _close(self, deadline: float | None) -> None:
        if self._closed:
            return
        _open_loggers.discard(self)
        with self._changed:
            # A failure no call has raised yet (a daemon briefly unavailable) is not the end:
            # the flush below sends its batch again.
            earlier, self._error = self._error, None
        failure: BaseException | None = None
        try:
            self._flush(deadline)
        except BaseException as error:
            failure = error
        with self._changed:
            self._closed = True
            self._abandoned = failure is not None
            self._changed.notify_all()
        # A batch being sent ends within the client's deadline and retries, or at `deadline`.
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if failure is None:
            return
        with self._changed:
            failure.add_note(
                _unstored(self.run_id, list(self._queued), self._sending if self._thread.is_alive() else 0)
            )
        if earlier is not None and earlier is not failure:
            failure.add_note(f"before, a batch had failed: {type(earlier).__name__}: {earlier}")
        raise failure

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._changed.notify_all()
            raise error

    def _next_batch(self) -> list[pb.MetricPoint] | None:
        """Wait (holding the lock) until a batch should go, and take it; None when the thread
        should end: closed with nothing queued, or abandoned by a close that failed."""
        while True:
            if self._abandoned or (self._closed and not self._queued):
                return None
            if self._error is None and self._queued:
                waited = time.monotonic() - self._first_queued_at
                if (
                    len(self._queued) >= self._flush_points
                    or self._closed
                    or self._asked > self._taken
                    or waited >= self._flush_s
                ):
                    batch = [
                        self._queued.popleft() for _ in range(min(self._flush_points, len(self._queued)))
                    ]
                    self._taken += len(batch)
                    self._sending = len(batch)
                    self._first_queued_at = time.monotonic()
                    return batch
                self._changed.wait(self._flush_s - waited)
            else:
                # Nothing queued, or a failure no caller has seen yet: sent again once one has.
                self._changed.wait()

    def _send_loop(self) -> None:
        while True:
            with self._changed:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                self._training.log_batch(self.run_id, batch)
            except BaseException as error:
                with self._changed:
                    # Kept, first, for a later flush to send again; raised by the next call.
                    self._sending = 0
                    self._queued.extendleft(reversed(batch))
                    self._taken -= len(batch)
                    self._asked = min(self._asked, self._taken)
                    self._error = error
                    self._changed.notify_all()
                continue
            with self._changed:
                self._sent += len(batch)
                self._sending = 0
                self._changed.notify_all()


class ActiveRun(Run):
    """The run of `client.training.start_run`: a `tessera.Run` (its `info`, as when it started,
    or as `refresh()` last read it) whose methods log to it without its id. As a context manager
    (`with client.training.start_run("exp") as run:`) it ends the run when the block ends:
    SUCCEEDED, FAILED where the block raised (the exception goes on), CANCELLED on Ctrl-C
    (KeyboardInterrupt), and on sys.exit() SUCCEEDED for code 0 or None, else FAILED; points
    logged with `synchronous=False` are stored first. One left open
    (never ended) is ended at interpreter exit, as MLflow ends its active run: SUCCEEDED, FAILED
    where the interpreter exits on an uncaught exception (or its queued points could not be
    stored), CANCELLED on an uncaught KeyboardInterrupt; within EXIT_CLOSE_S for its points and
    EXIT_END_S for its end, a run that could not be ended then said on stderr; or as its client
    closes, if that comes first (FAILED or CANCELLED where the client's `with` block raised, or
    close() runs while an exception is handled). At exit sys.exit() is SUCCEEDED whatever its
    code, which no exit hook sees: use `with` for it to count. A process killed (SIGKILL,
    os._exit, a SIGTERM it does not handle) leaves it RUNNING; a forked child's exit leaves the
    parent's runs alone."""

    def __init__(self, training: Training[Connection], info: pb.Run) -> None:
        super().__init__(info)
        self._training = training
        self._logger: MetricLogger | None = None
        self._ending: str | None = None  # the status end() was asked for
        _watch_run_at_exit(self)

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        status = ending_of(error)
        if error is None:
            self.end(status)
            return
        try:
            self.end(status)
        except Exception as ending:
            # The block's own exception goes on; why the run could not be ended rides along.
            error.add_note(f"run {self.id} could not be ended {status}: {ending}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record params (see `client.training.log_params`)."""
        self._training.log_params(self.id, params)

    def log_param(self, key: str, value: Any) -> None:
        """One param, as MLflow's `log_param` (see `log_params`)."""
        self.log_params({key: value})

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        *,
        timestamp: int | None = None,
        synchronous: bool = True,
    ) -> int | None:
        """Record metric values at a step (None: each at the step after its key's last; see
        `client.training.log_metrics`): how many points were stored; with `synchronous=False`,
        queued for a background thread instead (None; see `MetricLogger`), stored at the latest
        by `flush()` or the run's end."""
        if not synchronous:
            self._metric_logger().log(metrics, step, timestamp=timestamp)
            return None
        return self._training.log_metrics(self.id, metrics, step, timestamp=timestamp)

    def log_metric(
        self,
        key: str,
        value: float,
        step: int | None = None,
        *,
        timestamp: int | None = None,
        synchronous: bool = True,
    ) -> None:
        """One metric value at a step, as MLflow's `log_metric`; without a step, at the step after
        the key's last, where MLflow's 0 would replace it here (see `log_metrics`, whose count of
        points stored would show as `Out: 1` in a notebook)."""
        self.log_metrics({key: value}, step, timestamp=timestamp, synchronous=synchronous)

    def log_batch(self, points: Points, *, synchronous: bool = True) -> int | None:
        """Record many points in one call (see `client.training.log_batch`), or queue them with
        `synchronous=False`."""
        if not synchronous:
            self._metric_logger().log_batch(points)
            return None
        return self._training.log_batch(self.id, points)

    def flush(self) -> None:
        """Store every point queued with `synchronous=False` so far."""
        if self._logger is not None:
            self._logger.flush()

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> pb.RunArtifact:
        """Store a file with the run (see `client.training.log_artifact`)."""
        return self._training.log_artifact(self.id, local_path, artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> list[pb.RunArtifact]:
        """Store a directory's files with the run (see `client.training.log_artifacts`)."""
        return self._training.log_artifacts(self.id, local_dir, artifact_path)

    def log_dict(self, dictionary: Any, artifact_file: str) -> pb.RunArtifact:
        """Store a dict as a JSON or YAML file with the run (see `client.training.log_dict`)."""
        return self._training.log_dict(self.id, dictionary, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> pb.RunArtifact:
        """Store text as a file with the run (see `client.training.log_text`)."""
        return self._training.log_text(self.id, text, artifact_file)

    def log_figure(
        self, figure: Any, artifact_file: str, *, save_kwargs: Mapping[str, Any] | None = None
    ) -> pb.RunArtifact:
        """Store a figure's image with the run (see `client.training.log_figure`)."""
        return self._training.log_figure(self.id, figure, artifact_file, save_kwargs=save_kwargs)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as text)."""
        self.info = self._training.update_run(self.id, set_tags=tags).info

    def set_tag(self, key: str, value: Any) -> None:
        """One tag, as MLflow's `set_tag` (see `set_tags`)."""
        self.set_tags({key: value})

    def refresh(self) -> ActiveRun:
        """Read the run again: its status, params and metric summaries as they are now."""
        self.info = self._training.run(self.id).info
        return self

    def end(self, status: str = "succeeded") -> None:
        """Store the points still queued, then end the run as `status` ("succeeded", "failed",
        "cancelled"). Where the queued points cannot be stored, the run is ended FAILED and
        their error raised."""
        self._ending = status
        try:
            if self._logger is not None:
                self._logger.close()
        except BaseException:
            self._ending = "failed"
            self._ended(self._training.update_run(self.id, "failed"))
            raise
        finally:
            self._logger = None
        self._ended(self._training.update_run(self.id, status))

    def _end_at_exit(self, status: str, deadline: float) -> None:
        """End the run as `status` by the monotonic time `deadline`, its logger closed already;
        one ended meanwhile by another call (update_run with its id) is left as it is."""
        self._logger = None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no time was left of the {EXIT_END_S:g} s given to end runs at exit")
        try:
            self._ended(self._training.update_run(self.id, status, timeout=left))
        except FailedPrecondition:
            now = self._training.run(self.id, timeout=max(deadline - time.monotonic(), 0.1))
            if now.info.status == pb.RUN_STATUS_RUNNING:
                raise
            self._ended(now)

    def _ended(self, run: Run) -> None:
        self.info = run.info
        forget_run(self.id)

    def _metric_logger(self) -> MetricLogger:
        if self._logger is None:
            self._logger = MetricLogger(self._training, self.id)
        return self._logger
