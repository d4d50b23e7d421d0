"""Dynamic batcher: one queue per loaded version, drained by one worker thread per instance.

- Row-aware: a request carries one or more rows; a batch gathers whole requests up to
  `max_batch_size` rows. A request larger than that queues as one request that batches take
  slices of, at most `max_batch_size` rows each (a batch over it could run a GPU out of memory),
  and at most the rows a batch has room for: answered as one, their outputs joined in order, or
  failed at the first slice to fail (its rows still queued never run); counted one request, its
  rows in the batches that ran them (see `_Sliced`).
- No added delay: a worker takes everything that queued while the model was busy at once
  (with other instances idle, its share, so they run in parallel instead of waiting).
  `max_queue_delay_us` only holds a batch open when the model was idle as its first request
  arrived. With no delay configured and the model idle, a lone request of a fast model runs at
  once in the caller's thread: on the 2-core dev box that cut tiny-model p50 from ~1.5x to
  1.15-1.3x of a bare echo server (handler time 70 us inline vs 246 us with a thread hop).
- Held submissions: a caller that knows more requests are about to arrive (serving.predict sees
  other requests waiting in it, or calls the server began after this one) submits with
  `hold=True` and calls `release()` once they are all in. Without that, a fast model run inline on the one event-loop thread is always
  idle when the next request arrives, and under load no batch ever forms.
- Batching never loses: the batcher keeps its model's cost per row (`RowCosts`: CPU time on a
  CPU, wall time on a GPU) for batches of one row and for batches of more, and gathers requests
  only while `batching_pays` says the batched rows are cheaper (see there). A model that gains
  nothing from batches then runs as with batching off; one batch in `_EXPLORE_EVERY` still
  gathers (or, while batching pays, runs one row alone), to notice when that changes.
- Bounded: beyond `max_queue_size` queued requests, QueueFull (RESOURCE_EXHAUSTED; the Open Inference Protocol answers UNAVAILABLE).
- Deadline-aware: a request whose deadline has passed is answered DeadlineExceeded and never run,
  at its deadline even while its batch is held open for more rows.
- Cancellation: cancelling a request's future removes it from the queue.
- A failing batch is rerun request by request, so only the bad request gets the error.
- Every request it fails, refuses or drops is counted a failure of its version once, with
  Triton's reason (`FailureReason`): REJECTED (queue full, deadline passed, unloaded first),
  CANCELED, BACKEND (the model's run failed).
- Warm-up: a request submitted with `warmup` (an ensemble warming up through its members'
  batchers, the path its requests take) runs like any, but only in batches of warm-ups, which
  count in none of the version's figures nor in its cost estimates, as its own warm-up (run on
  its runtimes) does not.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import NamedTuple

import numpy as np

from tesserad.errors import DeadlineExceeded, InvalidArgument, QueueFull, TesseraError, Unavailable
from tesserad.serving.runtimes import Runtime
from tesserad.serving.stats import FailureReason, ServingStats

log = logging.getLogger(__name__)

# Compute-time smoothing for the inline and batching decisions: each batch weighs 10%.
_EWMA_WEIGHT = 0.1
# What a request held for its burst costs the daemon beyond its model's time, which the batcher
# cannot see: about one event-loop iteration (6 us on the 2-core dev box, serve_bench's
# tiny_mlp_python_path_stages_us) for its asyncio Future, its wake-up and the release.
HOLD_COST_NS = 6_000.0
# Batches must save at least this share of a row's time alone: within it, the estimates' noise
# (batches run while other instances compete for the cores) could make either answer.
PAYS_MARGIN = 0.05
# While batching does not pay, every this-many-th batch still gathers, to re-measure (and while
# it pays, runs one row alone); until both estimates exist, every _COST_EVERY-th batch does.
_EXPLORE_EVERY = 64
# An exploring batch gathers at most this many rows: cnn4d at concurrency 32 gathered 30 (1.26x
# the CPU per row of a row alone), a third of all rows, and lost 0.67x of batching off's requests/s.
EXPLORE_ROWS = 4
# Once a batch size's estimate exists, the cost of every this-many-th batch is measured (the
# exploring ones among them, _EXPLORE_EVERY being a multiple): reading a thread's CPU time is a
# system call (0.9 us on the dev box), twice a batch.
_COST_EVERY = 8


def batching_pays(single_ns_per_row: float, batched_ns_per_row: float) -> bool:
    """Whether gathering requests into batches pays for a model, from its own measured times:
    a row in a batch of more than one (plus what holding its request costs, HOLD_COST_NS) must
    take less than a row run alone, by PAYS_MARGIN.

    The costs are what `cost_clock` reads (CPU time on a CPU, its runtime's helper threads
    included) over all of the batcher's work on a batch: a small model saves its per-run
    overhead by batching (tiny MLP on the 2-core dev box:
    15 us of CPU for a row alone, 7.4 a row in batches of 8), a big one saves nothing or loses
    (cnn4d: 2.0 ms alone, 2.05 in batches of 8; in-process, 1.2x alone's in batches of 20-30).
    """
    return batched_ns_per_row + HOLD_COST_NS <= single_ns_per_row * (1 - PAYS_MARGIN)


def cost_clock(device: str) -> Callable[[], int]:
    """The clock a batch's cost is read from, in ns: on a CPU, the running thread's CPU time
    (wall time there counts the waits for cores that the shared machine's other threads cause:
    on the 2-core dev box it made cnn4d's batches look cheaper per row than single rows, while
    their CPU time per row was 1.2x; batching then cost 0.72x of the requests/s at concurrency 32);
    on a GPU, wall time (the device's time is what batching saves, and the thread mostly waits).
    The thread's CPU time leaves out the runtime's own intra-op threads: the batcher adds what
    `Runtime.helper_cpu_ns` reports for them."""
    return time.thread_time_ns if device == "cpu" else time.perf_counter_ns


class RowCosts:
    """A version's cost per row for batches of one row and for batches of more, and whether
    batching pays (`batching_pays` on them). Pure: fed each batch's (rows, cost) by the batcher.

    Smoothed as logarithms (a geometric mean, each batch weighing _EWMA_WEIGHT): a run slowed 10x
    by a busy machine moves an estimate 1.26x, not 1.9x as it would a plain average. Until both
    sizes are measured, batching is taken to pay (the batcher behaves as configured).
    """

    __slots__ = ("_batched_log", "_single_log", "pays")

    def __init__(self) -> None:
        self._single_log: float | None = None
        self._batched_log: float | None = None
        self.pays = True

    def observe(self, rows: int, cost_ns: float) -> None:
        """Add a batch of `rows` that cost `cost_ns` in all."""
        log_ns = math.log(max(1.0, cost_ns / rows))
        if rows == 1:
            self._single_log = _smoothed(self._single_log, log_ns)
        else:
            self._batched_log = _smoothed(self._batched_log, log_ns)
        if self._single_log is not None and self._batched_log is not None:
            self.pays = batching_pays(math.exp(self._single_log), math.exp(self._batched_log))

    def known(self, rows: int) -> bool:
        """Whether the cost per row of a batch of `rows` has an estimate."""
        return (self._single_log if rows == 1 else self._batched_log) is not None

    @property
    def decided(self) -> bool:
        """Whether both sizes were measured (until then `pays` is True)."""
        return self._single_log is not None and self._batched_log is not None

    @property
    def single_ns_per_row(self) -> float | None:
        return None if self._single_log is None else math.exp(self._single_log)

    @property
    def batched_ns_per_row(self) -> float | None:
        return None if self._batched_log is None else math.exp(self._batched_log)


def _smoothed(estimate: float | None, value: float) -> float:
    return value if estimate is None else estimate + _EWMA_WEIGHT * (value - estimate)


def row_limit(pays: bool, decided: bool, batches_run: int, max_rows: int) -> int:
    """Rows the next batch may gather: all while batching pays, one while it does not; an
    exploring batch does the other (at most EXPLORE_ROWS), so that both estimates stay measured
    (under steady load a batcher that gathers may otherwise never run a row alone again). One
    batch in _EXPLORE_EVERY explores, one in _COST_EVERY until both estimates exist (`decided`)."""
    every = _EXPLORE_EVERY if decided else _COST_EVERY
    if batches_run % every != every - 1:
        return max_rows if pays else 1
    return 1 if pays else min(max_rows, EXPLORE_ROWS)


class Prediction(NamedTuple):
    """A request's answer (a NamedTuple: one is made per request, and it builds 2x faster than
    a frozen dataclass)."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    compute_ns: int
    batch_rows: int
    # When its batch began, had joined its inputs, and had taken its outputs (perf_counter_ns; 0
    # for an answer from the response cache): the trace extension's timestamps.
    started_ns: int = 0
    joined_ns: int = 0
    ended_ns: int = 0
    # An ensemble's: each member's answer to its rows (the trace extension's child traces).
    members: tuple[MemberAnswer, ...] = ()


class MemberAnswer(NamedTuple):
    """An ensemble member's answer to one request's rows."""

    model: str
    version: int
    prediction: Prediction


_new_tuple = tuple.__new__


class Answered:
    """The answer of a request run inline, in the caller's thread: what the caller reads of a
    Future, without its Condition and RLock (building a Future per request cost a few
    microseconds of the event loop's thread, for every request of a fast model)."""

    __slots__ = ("_error", "_result")

    def __init__(self) -> None:
        self._result: Prediction | None = None
        self._error: BaseException | None = None

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: Prediction) -> None:
        self._result = result

    def set_exception(self, error: BaseException) -> None:
        self._error = error

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._error

    def result(self, timeout: float | None = None) -> Prediction:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def add_done_callback(self, callback: Callable[[Answered], object]) -> None:
        callback(self)


# A request's answer: a Future while it queues, Answered when it ran inline.
Answer = Future[Prediction] | Answered


class BatcherClosed(Exception):
    """The batcher no longer takes requests (swapped out or unloading); route to the current one."""


class _Sliced:
    """A request over max_batch_size, queued as one request (one of max_queue_size's) whose rows
    `_gather` cuts slices off as batches take them: one queue entry, however many slices, so a
    batch's gathering costs the same whatever their number. Its answer settles once: its slices'
    outputs joined in order when the last of them answers, or the first failure (a slice's run,
    its deadline, its cancellation, an unload), its rows still queued then dropped unrun; it is
    counted then, once. Touched holding its batcher's lock."""

    __slots__ = ("answers", "parts", "request", "settled", "taken")

    def __init__(self, request: _Request) -> None:
        self.request = request
        # Rows cut off so far (the request's `rows` are those still queued), and the slices they
        # were cut as, in order, with the answers of those that ran.
        self.taken = 0
        self.parts: list[_Request] = []
        self.answers: dict[_Request, Prediction] = {}
        self.settled = False


class _Request:
    __slots__ = (
        "deadline",
        "enqueued_ns",
        "future",
        "inputs",
        "output_names",
        "rows",
        "shadow",
        "shape_key",
        "slices",
        "waits",
        "warmup",
    )

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        rows: int,
        deadline: float | None,
        shadow: bool,
        waits: bool,
        warmup: bool,
        future: Answer,
    ) -> None:
        self.inputs = inputs
        self.output_names = output_names
        self.rows = rows
        # Requests stack into one batch only when every non-batch dimension agrees, and a warm-up
        # only with warm-ups (their batch then counts nowhere). One that runs inline (its answer
        # is Answered) never queues: it needs none.
        shape = () if isinstance(future, Answered) else tuple((n, a.shape[1:]) for n, a in inputs.items())
        self.shape_key = ("warm-up", shape) if warmup else shape
        self.future = future
        self.enqueued_ns = time.perf_counter_ns()
        self.deadline = deadline
        self.shadow = shadow
        # True when the model was idle at arrival: only then may the queue delay hold it.
        self.waits = waits
        self.warmup = warmup
        # A request over max_batch_size, or a slice cut off one: that request's slicing.
        self.slices: _Sliced | None = None


class DynamicBatcher:
    def __init__(
        self,
        label: str,
        runtimes: Sequence[Runtime],
        stats: ServingStats,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        batchable: bool,
        inline_max_compute_us: float,
        initial_compute_us: float,
        output_names: Sequence[str],
    ) -> None:
        self.label = label
        self._stats = stats
        self._max_rows = max_batch_size if batchable else 1
        # The rows a request's slices hold at most: max_batch_size, also once batches of several
        # requests are off (see _run's check of the answers' rows).
        self._slice_rows = max_batch_size
        self._batchable = batchable
        self._delay_ns = max_queue_delay_us * 1000
        self._max_queue = max_queue_size
        self._inline_max_ns = inline_max_compute_us * 1000
        # Smoothed wall time per row: a request runs inline (holding the event loop's thread
        # for that long) only if its estimate is small.
        self._compute_ns_per_row = initial_compute_us * 1000
        # Whether batching pays, from each batch's cost on the runtimes' device.
        self.costs = RowCosts()
        device = runtimes[0].device if runtimes else "cpu"
        self._cost_clock = cost_clock(device)
        # On a CPU a batch's cost also counts the runtime's own helper threads (intra-op pools).
        self._cpu_costs = device == "cpu"
        self._batches_run = 0
        self._all_outputs = list(output_names)
        # An RLock: a cancelled future's callback may re-enter. Taken as `with self._lock`, not
        # `with self._cond` (the same lock, without the Condition's Python-level __enter__ and
        # __exit__ frames, twice on every request).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        # The queued requests' rows, kept as they come and go: summing them took each batch time
        # in proportion to the queue's length.
        self._queued_rows = 0
        self._idle: list[Runtime] = list(runtimes)
        self._runtimes = list(runtimes)
        self._busy = 0
        self._held_rows = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher {label} #{i}", daemon=True)
            for i in range(len(runtimes))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def held_rows(self) -> int:
        """Rows submitted with `hold` since the last `release()`."""
        return self._held_rows

    @property
    def full(self) -> bool:
        """True when the held rows fill a batch: waiting for more gains nothing."""
        return self._held_rows >= self._max_rows

    @property
    def batches(self) -> bool:
        """True when requests can be gathered into batches of more than one."""
        return self._max_rows > 1

    @property
    def pays(self) -> bool:
        """Whether batching pays for this model as last measured (see batching_pays)."""
        return self.costs.pays

    def _row_limit(self) -> int:
        return row_limit(self.costs.pays, self.costs.decided, self._batches_run, self._max_rows)

    def holds(self, rows: int) -> bool:
        """Whether holding a request of `rows` for its burst pays: only while the held batch would
        run inline (a fast model). A slow model runs in worker threads, which take everything that
        queued while they were busy; holding its requests would only leave it idle meanwhile
        (cnn4d at concurrency 32: 0.81x of batching off with holds)."""
        return (
            self._max_rows > 1
            and self._row_limit() > 1
            and self._delay_ns == 0
            and self._compute_ns_per_row * (self._held_rows + rows) <= self._inline_max_ns
        )

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        rows: int,
        deadline: float | None = None,
        *,
        shadow: bool = False,
        allow_inline: bool = True,
        hold: bool = False,
        warmup: bool = False,
    ) -> Answer:
        """Queue a validated request; the answer holds its Prediction or a domain error.

        `deadline` is a time.monotonic() instant. The answer is Answered, and done, when the
        request ran inline; else a Future. With `hold`, the request only queues (the workers are not
        woken) until `release()`, so requests submitted in a burst gather into one batch. With
        `warmup`, it runs as any request but is counted nowhere, answered or failed.
        Raises BatcherClosed once closed, QueueFull when full.
        """
        sliced = self._batchable and rows > self._slice_rows
        with self._lock:
            if self._closed:
                raise BatcherClosed(self.label)
            inline = allow_inline and not hold and not sliced and not self._queue and self._fast_now(rows)
            request = _Request(
                inputs,
                output_names or self._all_outputs,
                rows,
                deadline,
                shadow,
                self._busy == 0,
                warmup,
                Answered() if inline else Future(),
            )
            if not inline:
                if len(self._queue) >= self._max_queue:
                    self._failed(request, FailureReason.REJECTED)
                    raise QueueFull(
                        f"{self.label} has {len(self._queue)} requests queued, its max_queue_size; "
                        "retry later, or load it with a larger max_queue_size or more instances"
                    )
                self._queue.append(request)
                self._queued_rows += rows
                assert isinstance(request.future, Future)
                if sliced:
                    request.slices = _Sliced(request)
                    request.future.add_done_callback(functools.partial(self._drop_if_cancelled, request))
                else:
                    request.future.add_done_callback(self._forget_if_cancelled)
                if hold:
                    self._held_rows += rows
                else:
                    self._cond.notify()
                return request.future
            runtime = self._idle.pop()
            self._busy += 1
        self._run_here(runtime, [request])
        return request.future

    def release(self) -> None:
        """Start what held submissions queued: at once in this thread when the model is idle and
        the gathered batch is fast (as for a lone request), else in a worker thread."""
        with self._lock:
            self._held_rows = 0
            if not self._queue:
                return
            if not self._fast_now(self._queued_rows):
                self._cond.notify()
                return
            runtime = self._idle.pop()
            self._busy += 1
            batch = self._gather()
        if batch:
            self._run_here(runtime, batch)
        else:
            self._return(runtime)

    def _fast_now(self, rows: int) -> bool:
        """Whether `rows` may run in the caller's thread now (called holding the lock)."""
        return (
            self._delay_ns == 0
            and bool(self._idle)
            and self._compute_ns_per_row * rows <= self._inline_max_ns
        )

    def _run_here(self, runtime: Runtime, batch: list[_Request]) -> None:
        try:
            self._run(runtime, batch)
        finally:
            self._return(runtime)

    def _return(self, runtime: Runtime) -> None:
        with self._lock:
            self._idle.append(runtime)
            self._busy -= 1
            self._wake_for_queue()
            if self._closed and not self._busy:
                self._cond.notify_all()  # close() waits for the runs in callers' threads

    def _wake_for_queue(self) -> None:
        """Wake one worker if requests wait (called holding the lock). Waking one for nothing
        costs the event-loop thread a GIL hand-off on every inline request."""
        if self._queue:
            self._cond.notify()

    def _wake_all_if_drained(self) -> None:
        """Once closed, wake every worker when the queue empties (called holding the lock): one
        that waits for a runtime while another takes the last request would otherwise never see
        the queue empty, and never exit. Off the request path: a closed batcher takes no requests."""
        if self._closed and not self._queue:
            self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Stop taking requests, finish the queued ones and those running inline, stop the
        workers, free the runtimes.

        What is still queued after `timeout` seconds is answered Unavailable.
        """
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._wake_all_if_drained()
        for request in left:
            self._refuse(request, Unavailable(f"{self.label} was unloaded before this request ran; retry it"))
        for thread in self._threads:
            thread.join()
        with self._lock:
            # A request run inline (submit, release) runs in its caller's thread, which the joins
            # above do not wait for: its runtime must not be freed under it.
            while self._busy:
                self._cond.wait()
        for runtime in self._runtimes:
            runtime.close()

    def _forget_if_cancelled(self, future: Future[Prediction]) -> None:
        """Take a cancelled request off the queue, and count it: whichever of this and `_gather`
        takes it off (both hold the lock) counts it, so it counts once."""
        if not future.cancelled():
            return
        with self._lock:
            for request in self._queue:
                if request.future is future:
                    self._queue.remove(request)
                    self._queued_rows -= request.rows
                    self._failed(request, FailureReason.CANCELED)
                    self._wake_all_if_drained()
                    break

    def _drop_if_cancelled(self, request: _Request, future: Future[Prediction]) -> None:
        """Take a cancelled request over max_batch_size off the queue with the rows it has left, and
        count it, once (see _Sliced): its slices already running run on, unanswered."""
        if future.cancelled():
            self._fail_sliced(request, None, FailureReason.CANCELED)

    def _unqueue(self, request: _Request) -> None:
        """Take `request` off the queue if it is there (called holding the lock)."""
        try:
            self._queue.remove(request)
        except ValueError:
            return  # taken off already: being gathered, expired or closed
        self._queued_rows -= request.rows
        self._wake_all_if_drained()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not (self._queue and self._idle):
                    if self._closed and not self._queue:
                        self._wake_all_if_drained()
                        return
                    self._cond.wait()
                runtime = self._idle.pop()
                self._busy += 1
                batch = self._gather(share=True)
                if self._queue and self._idle:
                    self._cond.notify()  # an idle instance takes what this batch left
            try:
                if batch:
                    self._run(runtime, batch)
            finally:
                self._return(runtime)

    def _share_rows(self) -> int:
        """This worker's fair share of the queued rows when other instances are idle too
        (called holding the lock, after taking its runtime): taking everything would leave
        them idle while it computes (cnn4d, 2 instances of 1 thread, concurrency 8: 0.78-0.89x
        of batching off when one instance took the whole queue)."""
        limit = self._row_limit()
        if not self._idle:
            return limit
        share = -(-self._queued_rows // (len(self._idle) + 1))
        return max(1, min(limit, share))

    def _gather(self, share: bool = False) -> list[_Request]:
        """Take the next batch off the queue (called holding the lock); with `share`, at most
        this worker's share of the queued rows."""
        head = self._queue[0]
        gathers = self._row_limit()
        if head.waits and self._delay_ns and gathers > 1 and not self._closed:
            # The model was idle when the head arrived: hold the batch open up to the delay, or
            # until the nearest deadline of a queued request, which is answered then (as
            # Triton's scheduler wakes at it), not at the delay's end.
            until_ns = head.enqueued_ns + self._delay_ns
            while self._rows_like(head) < gathers and not self._closed:
                remaining = (until_ns - time.perf_counter_ns()) / 1e9
                if remaining <= 0:
                    break
                deadlines = [r.deadline for r in self._queue if r.deadline is not None]
                if deadlines:
                    remaining = min(remaining, min(deadlines) - time.monotonic())
                if remaining > 0:
                    self._cond.wait(remaining)
                if deadlines and min(deadlines) <= time.monotonic():
                    now = time.monotonic()
                    self._queue = deque(r for r in list(self._queue) if not self._expired(r, now))
                    self._queued_rows = sum(r.rows for r in self._queue)
                if not self._queue:
                    return []
                head = self._queue[0]
        limit = self._share_rows() if share else gathers
        now = time.monotonic()
        batch: list[_Request] = []
        rows = 0
        queue = self._queue
        # Requests this batch passes over, back at the queue's head after it, in order.
        passed: list[_Request] = []
        while queue:
            request = queue.popleft()
            if self._expired(request, now):
                self._queued_rows -= request.rows
                continue
            if request.slices is not None:
                # The first of a batch takes a whole slice, as any request fits there; a later one
                # the rows left to fill the batch.
                if not batch:
                    room = self._slice_rows
                elif request.shape_key == batch[0].shape_key:
                    room = limit - rows
                else:
                    room = 0
                if not room:
                    passed.append(request)
                    continue
                if request.future.cancelled():
                    self._queued_rows -= request.rows
                    self._fail_sliced(request, None, FailureReason.CANCELED)
                    continue
                part = self._cut(request, room)
                if request.rows:
                    passed.append(request)  # its rest stays at the head
                batch.append(part)
                rows += part.rows
                if rows >= limit:
                    break
                continue
            fits = not batch or (
                self._batchable and request.shape_key == batch[0].shape_key and rows + request.rows <= limit
            )
            if not fits:
                passed.append(request)
                if rows >= limit:
                    break
                continue
            self._queued_rows -= request.rows
            if not request.future.set_running_or_notify_cancel():
                self._failed(request, FailureReason.CANCELED)
                continue
            batch.append(request)
            rows += request.rows
            if rows >= limit:
                break
        queue.extendleft(reversed(passed))
        return batch

    def _cut(self, request: _Request, most: int) -> _Request:
        """A slice of at most `most` rows off the head of `request`, queued as slices (called
        holding the lock): views of its inputs, answered through `_slice_answered`."""
        sliced = request.slices
        assert sliced is not None
        start = sliced.taken
        rows = min(most, request.rows)
        part = _Request(
            {name: array[start : start + rows] for name, array in request.inputs.items()},
            request.output_names,
            rows,
            None,
            request.shadow,
            False,
            request.warmup,
            request.future,
        )
        part.enqueued_ns = request.enqueued_ns
        part.slices = sliced
        sliced.parts.append(part)
        sliced.taken += rows
        request.rows -= rows
        self._queued_rows -= rows
        return part

    def _expired(self, request: _Request, now: float) -> bool:
        """Whether `request`'s deadline has passed by `now`; if so it is answered
        DeadlineExceeded (or, cancelled meanwhile, counted so) and must leave the queue."""
        if request.deadline is None or now < request.deadline:
            return False
        self._refuse(
            request, DeadlineExceeded("the request's deadline passed while it was queued; it was not run")
        )
        return True

    def _refuse(self, request: _Request, error: TesseraError) -> None:
        """Answer a queued request `error` without running it (or what of it is still queued, for
        one queued as slices), counted a failure: REJECTED, or CANCELED if its caller went away."""
        if request.slices is not None:
            self._fail_sliced(request, error, FailureReason.REJECTED)
        elif request.future.set_running_or_notify_cancel():
            request.future.set_exception(error)
            self._failed(request, FailureReason.REJECTED)
        else:
            self._failed(request, FailureReason.CANCELED)

    def _rows_like(self, head: _Request) -> int:
        """The queued rows that may batch with `head`'s."""
        return sum(r.rows for r in self._queue if r.shape_key == head.shape_key)

    def _run(self, runtime: Runtime, batch: list[_Request]) -> None:
        """Run one batch and answer each request; never raises."""
        alone = len(batch) == 1
        rows = batch[0].rows if alone else sum(r.rows for r in batch)
        # The batch's cost for RowCosts: all of the batch's work here, which batching shares
        # among its rows (for a tiny model, more than the model's run), up to its answers. Only
        # where batches can form, and for a batch of a size whose cost is known, one in
        # _COST_EVERY: each reading of the clock is a system call.
        warmup = batch[0].warmup  # a batch holds warm-ups only or none (see _Request.shape_key)
        measured = (
            self._max_rows > 1
            and not warmup
            and (not self.costs.known(rows) or self._batches_run % _COST_EVERY == _COST_EVERY - 1)
        )
        cost_started = self._cost_now(runtime) if measured else 0
        if alone:
            names = batch[0].output_names
        else:
            wanted = {n for r in batch for n in r.output_names}
            names = [n for n in self._all_outputs if n in wanted]
        started = time.perf_counter_ns()
        try:
            if alone:
                inputs = batch[0].inputs
                joined = started
            else:
                inputs = {name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs}
                joined = time.perf_counter_ns()
            outputs = runtime.run(inputs, names)
            # An ensemble's runtime keeps its members' answers to the batch it last ran.
            members: tuple[MemberAnswer, ...] = getattr(runtime, "member_answers", ())
        except Exception as exc:  # a runtime's own errors; one bad request must not fail the others
            if not alone:
                for request in batch:
                    self._run(runtime, [request])
                return
            self._fail(batch[0], exc)
            return
        if not alone and not _follows_rows(outputs, names, rows):
            # A model that answers a batch with other than one row per input row (one that
            # reduces over the batch) cannot be batched: split by rows, its answer would give each
            # request another's. Each runs alone, and so do its requests from now on.
            if self._max_rows > 1:
                log.warning(
                    "%s answered a batch of %d rows with outputs of other row counts; its requests "
                    "run alone from now on (batching them would mix their answers)",
                    self.label, rows,
                )  # fmt: skip
            self._max_rows = 1
            for request in batch:
                self._run(runtime, [request])
            return
        compute_ns = time.perf_counter_ns() - started
        answered: list[tuple[int, int, int, bool]] = []
        # Each request's answer; None for a slice whose request other slices have yet to answer
        # (or that already failed).
        predictions: list[Prediction | None] = []
        # Rows of slices that do not settle their request: in the batch's rows, not in a request.
        slice_rows = 0
        offset = 0
        for request in batch:
            if alone:
                mine = outputs
                mine_members = members
            else:
                mine = {n: outputs[n][offset : offset + request.rows] for n in request.output_names}
                mine_members = _rows_of(members, offset, request.rows)
            offset += request.rows
            queue_ns = started - request.enqueued_ns
            ended = time.perf_counter_ns()
            # tuple.__new__ skips the NamedTuple's Python-level __new__: 156 ns a request instead
            # of 290 on the dev box (timeit; 265 for the four fields before the trace timestamps).
            prediction = _new_tuple(
                Prediction, (mine, queue_ns, compute_ns, rows, started, joined, ended, mine_members)
            )
            if request.slices is None:
                answered.append((queue_ns, ended - request.enqueued_ns, request.rows, request.shadow))
                predictions.append(prediction)
                continue
            whole = self._slice_answered(request, prediction)
            if whole is None:
                slice_rows += request.rows
            else:
                answered.append((queue_ns, ended - request.enqueued_ns, request.rows, request.shadow))
            predictions.append(whole)
        # Counted before answered: a caller that reads the stats after its answer finds it there.
        # A warm-up's batch (an ensemble's, of its sizes, not its requests') teaches the estimates
        # that decide batching and holds nothing either.
        if not warmup:
            self._stats.record_batch(compute_ns, answered, slice_rows)
            self._learn(compute_ns / rows, self._cost_now(runtime) - cost_started if measured else None, rows)
        for request, answer in zip(batch, predictions, strict=True):
            if answer is not None:
                request.future.set_result(answer)

    def _cost_now(self, runtime: Runtime) -> int:
        return self._cost_clock() + (runtime.helper_cpu_ns() if self._cpu_costs else 0)

    def _learn(self, ns_per_row: float, cost_ns: int | None, rows: int) -> None:
        """Update the wall time per row, and the costs with a batch's measured cost. Unlocked: a
        lost update among threads only delays the estimates by one batch."""
        self._batches_run += 1
        self._compute_ns_per_row += _EWMA_WEIGHT * (ns_per_row - self._compute_ns_per_row)
        if cost_ns is not None:
            self.costs.observe(rows, cost_ns)

    def _slice_answered(self, part: _Request, prediction: Prediction) -> Prediction | None:
        """Keep a slice's answer; once its request's every row has answered, and none failed, the
        request's answer (its future then running: a caller that went away first has it counted
        CANCELED here, once)."""
        sliced = part.slices
        assert sliced is not None
        request = sliced.request
        with self._lock:
            sliced.answers[part] = prediction
            if sliced.settled or request.rows or len(sliced.answers) < len(sliced.parts):
                return None
            sliced.settled = True
            if not request.future.set_running_or_notify_cancel():
                self._failed(request, FailureReason.CANCELED)
                return None
        return _joined([sliced.answers[p] for p in sliced.parts])

    def _fail_sliced(self, request: _Request, error: TesseraError | None, reason: FailureReason) -> None:
        """Fail a request queued as slices, once (see _Sliced): take its rows still queued off the
        queue, answer it `error` and count it for `reason` (None, or its caller gone: CANCELED)."""
        sliced = request.slices
        assert sliced is not None
        with self._lock:
            if sliced.settled:
                return
            sliced.settled = True
            self._unqueue(request)
            answered = error is not None and request.future.set_running_or_notify_cancel()
        if answered:
            assert error is not None
            request.future.set_exception(error)
        self._failed(request, reason if answered else FailureReason.CANCELED)

    def _fail(self, request: _Request, exc: Exception) -> None:
        log.warning("%s failed on a request: %s", self.label, exc)
        # A domain error (an ensemble's member refusing the request) already says what to fix.
        error = (
            exc
            if isinstance(exc, TesseraError)
            else InvalidArgument(f"{self.label} could not run this request: {_first_line(exc)}")
        )
        if request.slices is not None:
            self._fail_sliced(request.slices.request, error, FailureReason.BACKEND)
            return
        request.future.set_exception(error)
        self._failed(request, FailureReason.BACKEND)

    def _failed(self, request: _Request, reason: FailureReason) -> None:
        """Count a request the batcher failed, its time from its queueing (a warm-up not)."""
        if not request.warmup:
            self._stats.record_failure(time.perf_counter_ns() - request.enqueued_ns, request.shadow, reason)


def _joined(parts: list[Prediction]) -> Prediction:
    """One answer of a request's slices' answers, in order: their outputs (and an ensemble's
    members') joined, their compute times summed, the largest batch one ran in."""
    first = parts[0]
    members = tuple(
        MemberAnswer(
            member.model,
            member.version,
            _joined([part.members[i].prediction for part in parts]),
        )
        for i, member in enumerate(first.members)
    )
    return Prediction(
        {name: np.concatenate([part.outputs[name] for part in parts]) for name in first.outputs},
        first.queue_ns,
        sum(part.compute_ns for part in parts),
        max(part.batch_rows for part in parts),
        min(part.started_ns for part in parts),
        first.joined_ns,
        max(part.ended_ns for part in parts),
        members,
    )


def _follows_rows(outputs: Mapping[str, np.ndarray], names: Sequence[str], rows: int) -> bool:
    """Whether each of the outputs `names` has one row per input row of the batch."""
    return all(
        (array := outputs.get(name)) is not None and array.ndim > 0 and len(array) == rows for name in names
    )


def _rows_of(members: tuple[MemberAnswer, ...], offset: int, rows: int) -> tuple[MemberAnswer, ...]:
    """The members' answers to one request's rows of a batch."""
    return tuple(
        MemberAnswer(
            m.model,
            m.version,
            m.prediction._replace(
                outputs={n: a[offset : offset + rows] for n, a in m.prediction.outputs.items()}
            ),
        )
        for m in members
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
