"""The request path every inference protocol shares, on the daemon's asyncio loop: route and queue
a request, hold it while the rest of its burst arrives so they batch, load its version first
when it is not loaded (and autoload is on), and await the answer.

Protocol-free: the deadline is a time.monotonic() instant and failures are tesserad.errors.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future

import numpy as np

from tesserad.errors import NotLoaded, StillLoading, TesseraError, Unavailable
from tesserad.serving.batcher import DynamicBatcher, Prediction
from tesserad.serving.pool import LoadedVersion
from tesserad.serving.service import REROUTE_ROUNDS, InferenceService, Target

# Held requests wait at most this many event-loop iterations for the rest of their burst; each
# iteration runs other calls' handlers (tens to hundreds of microseconds).
_MAX_HOLD_TICKS = 16


async def predict(
    service: InferenceService,
    target: Target,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    deadline: float | None,
    request_id: str,
    *,
    started: int,
    within_max_batch: bool = False,
    dtype_names: Mapping[np.dtype, str] | None = None,
    strings: bool = False,
    not_ready: Callable[[Target, NotLoaded | StillLoading], TesseraError] | None = None,
) -> tuple[int, Prediction]:
    """(version that served, prediction); loads the version first if needed and allowed.

    `deadline` is a time.monotonic() instant, or None for none. `started` (the request's arrival,
    perf_counter_ns), `within_max_batch`, `dtype_names` and `strings`: see InferenceService.submit.
    `not_ready`: what the caller's protocol answers for a version that is not ready (not loaded
    and not loaded for the request, or still loading); None: those errors as they are.
    """
    if service.in_flight == 0 and service.may_hold(target.model):
        # Alone so far: yield once, so that the loop can begin the calls that arrived with this
        # one (the server takes them one loop iteration at a time) and this request can see
        # them. One loop iteration, 6-12 us on the 2-core dev box (15-25 us of CPU in the served
        # path, caches cold): paid only where a held request could gather others.
        service.in_flight = 1
        try:
            await asyncio.sleep(0)
        finally:
            service.in_flight -= 1
    # One coroutine for the whole path (each level of await costs the event loop's thread a frame).
    service.in_flight += 1
    try:
        checked: LoadedVersion | None = None
        rerouted = False
        # A request whose autoload races an unload is submitted again too, within these rounds.
        for _ in range(REROUTE_ROUNDS):
            # Signs of load, both public: other requests waiting here, or calls begun after this one.
            others = service.in_flight > 1 or service.calls.begun_after_this_one()
            submitted = service.submit(
                target,
                inputs,
                output_names,
                deadline,
                request_id,
                started=started,
                hold=others,
                within_max_batch=within_max_batch,
                dtype_names=dtype_names,
                strings=strings,
                checked=checked,
            )
            future = submitted.future
            if future is None:
                try:
                    checked = await asyncio.to_thread(service.autoload_routed, target, submitted.version)
                except (NotLoaded, StillLoading) as exc:
                    if not_ready is None:
                        raise
                    raise not_ready(target, exc) from None
                rerouted = checked is None
                continue
            if future.done():  # ran inline (never held)
                return submitted.version, future.result()
            # Only off the inline path: get_running_loop makes a system call (getpid).
            loop = asyncio.get_running_loop()
            batcher = submitted.entry.batcher if submitted.entry is not None else None
            if submitted.held and batcher is not None and batcher.held_rows == submitted.rows:
                # The first held request of a burst schedules the release for all of them.
                loop.call_soon(_release_when_settled, loop, batcher, batcher.held_rows, _MAX_HOLD_TICKS)
            waiter = loop.create_future()
            future.add_done_callback(functools.partial(_settle, loop, threading.get_ident(), waiter))
            try:
                return submitted.version, await waiter
            except asyncio.CancelledError:
                future.cancel()  # the client went away: take it off the queue
                raise
        if rerouted:
            raise Unavailable(
                f"the versions of model {target.model!r} changed while this request was routed (the "
                "version it was routed to last was deleted, or no longer routed to, before it loaded); "
                "retry it"
            )
        raise Unavailable(f"model {target.model!r} was unloaded while it loaded for this request; retry it")
    finally:
        service.in_flight -= 1


def _settle(
    loop: asyncio.AbstractEventLoop,
    loop_thread: int,
    waiter: asyncio.Future[Prediction],
    done: Future[Prediction],
) -> None:
    """Pass a batcher future's outcome to the handler awaiting it.

    A batch released on the event loop's own thread completes there: setting the waiter
    directly skips `call_soon_threadsafe`'s self-pipe write and the extra loop wake-up it causes
    (asyncio.wrap_future pays both for every request).
    """
    if threading.get_ident() == loop_thread:
        _copy_outcome(done, waiter)
    else:
        loop.call_soon_threadsafe(_copy_outcome, done, waiter)


def _copy_outcome(done: Future[Prediction], waiter: asyncio.Future[Prediction]) -> None:
    if waiter.done() or done.cancelled():  # the handler was cancelled first
        return
    error = done.exception()
    if error is None:
        waiter.set_result(done.result())
    else:
        waiter.set_exception(error)


def _release_when_settled(
    loop: asyncio.AbstractEventLoop, batcher: DynamicBatcher, rows_seen: int, ticks: int
) -> None:
    """Release `batcher`'s held requests once an event-loop iteration brought no more of them
    (the other requests of the burst reach their submit over the next few iterations), or the
    batch is full."""
    rows = batcher.held_rows
    if ticks > 0 and not batcher.full and rows > rows_seen:
        loop.call_soon(_release_when_settled, loop, batcher, rows, ticks - 1)
    else:
        batcher.release()
