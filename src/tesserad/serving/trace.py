"""Triton's trace extension as tesserad honours it: which inference requests are traced (the Open
Inference Protocol's, and tessera's own Predict and PredictStream: every answer the daemon gives a
model), and their traces, written as Triton's "triton" trace mode writes them (TraceSetting over
gRPC, /v2[/models/NAME]/trace/setting over HTTP). The transports turn their messages into a plain
{name: value} mapping (None for a setting sent without a value) and back.

Traces are written by a thread of their own, in the order they were taken, so that a slow disk
never holds up a request: past WRITE_QUEUE_SIZE writes waiting, traces are dropped, logged and
counted (tessera_traces_dropped). The stop writes every trace taken, waiting for the writer up to a
time it is given (the daemon's grace period, and at least CLOSE_WAIT_MIN_S): past it, a disk that does not take a write (a hung
mount) gets no more waiting, and what is left unwritten is logged. Once stopped, the settings can
no longer change (Unavailable: tracing could start again with nothing to write its traces). A
model's own settings go with the model when it is deleted, also when a model of its name was
created since: they are kept with the model's identity (its creation in the registry).

The settings, each answered as a list of strings (as Triton's):
- trace_level: OFF, or TIMESTAMPS and/or TENSORS (the request's input and output tensors).
- trace_rate: one answered request in this many is traced (the rate-th, the 2*rate-th, ...).
- trace_count: traces still to take, counting down as they are taken; -1: no limit.
- log_frequency: every this many traces are written to FILE.0, FILE.1, ...; 0 keeps them until
  the settings change (or the count runs out, then FILE.N) or the daemon stops, then appends them
  to FILE (a JSON array, closed at the stop).
- trace_file: the daemon's serving.trace_file setting. A client cannot change it: a file name
  from the network would let any admin token make the daemon overwrite any file it may write
  (recent Triton refuses it too). What a client reads goes back unchanged.
- trace_mode: "triton" (OpenTelemetry is not offered).

A model may have settings of its own: the others are the global ones, and a setting sent as null
clears the model's own back to the global one (a global one back to its default). Each set of
settings at work counts its own requests and traces, and a change starts the count again, as
Triton's does. A request counts once answered: a failed request is neither counted nor traced.

Timestamps are time.perf_counter_ns() (CLOCK_MONOTONIC, as Triton's steady clock), from the
request's path: REQUEST_START as the transport has the request (for HTTP its body read), before
decoding it; QUEUE_START as its version's batcher took it; COMPUTE_START as its batch began;
COMPUTE_INPUT_END once the batch's inputs were joined (COMPUTE_START for a request run alone:
its decoded inputs go to the model as they are); COMPUTE_OUTPUT_START as the model's run returned;
COMPUTE_END once its outputs were taken from the batch's; REQUEST_END once its answer was encoded.
An answer from the response cache has REQUEST_START and REQUEST_END only.

A traced ensemble request is followed by a child trace for each member (parent_id: its id), as
Triton writes one for each composing model's request: the member's timestamps for the ensemble
batch it answered (REQUEST_START at its QUEUE_START, REQUEST_END at its COMPUTE_END), and at TENSORS
the request's inputs and the member's outputs for its rows.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from tesserad.errors import FailedPrecondition, InvalidArgument, Unavailable
from tesserad.log_settings import json_kind
from tesserad.serving.batcher import Prediction

log = logging.getLogger(__name__)

TRACE_FILE = "trace_file"
TRACE_LEVEL = "trace_level"
TRACE_RATE = "trace_rate"
TRACE_COUNT = "trace_count"
LOG_FREQUENCY = "log_frequency"
TRACE_MODE = "trace_mode"
OFF = "OFF"
TIMESTAMPS = "TIMESTAMPS"
TENSORS = "TENSORS"
TRITON_MODE = "triton"
# Where the daemon's settings name the file; the refusal of a client's trace_file says so.
FILE_SETTING = (
    "serving.trace_file (env TESSERA_SERVING_TRACE_FILE, or trace_file under [serving] in the config file)"
)
# Writes waiting for the writer's thread: past these, traces are dropped (and counted) rather
# than the requests that take them waiting on the disk. Not a setting, as it is not one in Triton:
# a write is a whole FILE.N or a settings change's traces, so 256 of them ride out a disk's stall
# of seconds at any trace_rate a server can take, and what a longer stall drops is counted in
# tessera_traces_dropped and logged, which tells an operator to lower trace_rate or raise
# log_frequency: a bigger queue would only hold more traces in memory for a disk that is not coming
# back.
WRITE_QUEUE_SIZE = 256
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1

_NAMES = (TRACE_FILE, TRACE_LEVEL, TRACE_RATE, TRACE_COUNT, LOG_FREQUENCY, TRACE_MODE)
# The whole-number settings: their field, least and most value, and what the ends mean.
_NUMBERS = {
    TRACE_RATE: ("rate", 1, UINT32_MAX, "1 traces every request, 1000 one in 1000"),
    TRACE_COUNT: ("count", -1, INT32_MAX, "-1: no limit"),
    LOG_FREQUENCY: (
        "log_frequency",
        0,
        UINT32_MAX,
        "0: write the traces when the settings change or tesserad stops",
    ),
}


@dataclass(frozen=True)
class TraceSettings:
    """One set of trace settings; `levels` () is OFF."""

    levels: tuple[str, ...] = ()
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0


DEFAULTS = TraceSettings()


def _strings(name: str, value: object) -> list[str]:
    """A setting's value as its list of strings: gRPC sends a list, HTTP a string, a list (the
    levels) or, leniently, a whole number."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidArgument(
        f'trace setting {name!r} must be a string (such as "1000") or a list of strings, got {json_kind(value)}'
    )


def _levels(values: list[str]) -> tuple[str, ...]:
    if not values:
        raise InvalidArgument(
            f"trace setting {TRACE_LEVEL!r} needs a level: {OFF}, or {TIMESTAMPS} and/or {TENSORS}"
        )
    for value in values:
        if value not in (OFF, TIMESTAMPS, TENSORS):
            raise InvalidArgument(
                f"trace setting {TRACE_LEVEL!r} cannot be {value[:40]!r}; the levels are {OFF}, "
                f"{TIMESTAMPS} and {TENSORS} (in capitals)"
            )
    if OFF in values:
        if len(values) > 1:
            raise InvalidArgument(f"trace setting {TRACE_LEVEL!r} {OFF} goes alone, got {', '.join(values)}")
        return ()
    return tuple(level for level in (TIMESTAMPS, TENSORS) if level in values)


def _number(name: str, values: list[str]) -> int:
    _, low, high, meaning = _NUMBERS[name]
    text = values[0].strip() if len(values) == 1 else ""
    digits = text.removeprefix("-")
    if len(values) == 1 and digits.isascii() and digits.isdigit() and len(digits) <= 10:
        number = int(text)
        if low <= number <= high:
            return number
    got = repr(values[0][:40]) if len(values) == 1 else f"{len(values)} values"
    raise InvalidArgument(
        f"trace setting {name!r} must be one whole number from {low} to {high} ({meaning}), got {got}"
    )


def parsed_changes(changes: Mapping[str, object], file: str) -> dict[str, Any]:
    """`changes` as TraceSettings fields: a value, or None to clear. InvalidArgument naming the
    first setting that is unknown, of the wrong form or one tesserad cannot honour. `file`: the
    trace file a client reads, which it may send back unchanged."""
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        if name == TRACE_FILE:
            if value is not None and _strings(name, value) != [file]:
                raise InvalidArgument(
                    f"trace setting {TRACE_FILE!r} cannot be changed by a client: tesserad writes "
                    f"traces only to the file its operator names in its setting {FILE_SETTING}, "
                    f"read at start; this tesserad's is {file!r}"
                    + ("" if file else " (none: tracing is off)")
                )
        elif name == TRACE_MODE:
            if value is not None and _strings(name, value) != [TRITON_MODE]:
                raise InvalidArgument(
                    f"trace setting {TRACE_MODE!r} can only be {TRITON_MODE!r} on tesserad (traces "
                    "written as JSON to its trace file); OpenTelemetry is not offered"
                )
        elif name == TRACE_LEVEL:
            fields["levels"] = None if value is None else _levels(_strings(name, value))
        elif name in _NUMBERS:
            fields[_NUMBERS[name][0]] = None if value is None else _number(name, _strings(name, value))
        else:
            raise InvalidArgument(
                f"unknown trace setting {name[:80]!r}; the trace settings are {', '.join(_NAMES)}"
            )
    return fields


def usable_trace_file(path: Path, data_dir: Path) -> Path:
    """`path` made absolute; ValueError saying what is wrong when the daemon could not write it.
    Checked before the start makes `data_dir` (and the directories above it), so a file in one
    of those is taken though its directory does not exist yet."""
    path = path.absolute()
    directory = path.parent.resolve()
    made = data_dir.resolve()
    to_be_made = (made, *made.parents)
    if path.is_dir() or directory / path.name in to_be_made:
        raise ValueError(f"serving.trace_file {path} is a directory; name a file in it")
    if not path.parent.is_dir() and directory not in to_be_made:
        raise ValueError(f"serving.trace_file {path}: its directory does not exist; create it first")
    return path


def _loggable(settings: TraceSettings) -> dict[str, object]:
    """`settings` by the protocol's names, for the log."""
    return {
        TRACE_LEVEL: list(settings.levels) or [OFF],
        TRACE_RATE: settings.rate,
        TRACE_COUNT: settings.count,
        LOG_FREQUENCY: settings.log_frequency,
    }


class _Scope:
    """One set of settings at work (the global one, or a model's): its requests and traces."""

    __slots__ = ("left", "pending", "seen", "settings")

    def __init__(self, settings: TraceSettings) -> None:
        self.settings = settings
        self.seen = 0
        self.left = settings.count
        # Traces taken and not yet written: each a JSON text of its entries, without brackets.
        self.pending: list[str] = []

    @property
    def on(self) -> bool:
        return bool(self.settings.levels) and self.left != 0

    def sampled(self) -> bool:
        """Count an answered request; whether it is traced."""
        if not self.on:
            return False
        self.seen += 1
        if self.seen % self.settings.rate:
            return False
        if self.left > 0:
            self.left -= 1
        return True


class Tracer:
    """The daemon's trace settings and the traces they take. Called on the event loop's thread
    (the transports' handlers), and on the serving swaps' as a model is deleted (forget): the
    lock keeps it right."""

    def __init__(
        self, file: Path | None, dtype_names: Mapping[np.dtype, str], queue_size: int = WRITE_QUEUE_SIZE
    ) -> None:
        """`file`: serving.trace_file (checked by usable_trace_file), None where tracing is off;
        `dtype_names`: the protocol's datatype names, for TENSORS; `queue_size`: the writes that
        may wait for the disk before traces are dropped."""
        self._file = file
        self._writer = None if file is None else _Writer(file, queue_size)
        self._dtype_names = dtype_names
        self._lock = threading.Lock()
        self._global = _Scope(DEFAULTS)
        # A model's own settings, by field (what the global ones are for the rest), and the
        # identity (VersionSource.model_identity) of the model they were set for.
        self._own: dict[str, dict[str, Any]] = {}
        self._identities: dict[str, Hashable] = {}
        self._models: dict[str, _Scope] = {}
        self._next_id = 1
        # Set by close: the writer has stopped, and the settings stay as they are.
        self._closed = False
        # The one check a request's path makes: whether any set of settings takes traces now.
        self.on = False

    @property
    def file_text(self) -> str:
        return "" if self._file is None else str(self._file)

    def settings(self, model: str = "", identity: Hashable = None) -> dict[str, list[str]]:
        """The settings `model` (empty: the global ones; `identity`: its identity) is traced
        with, as the protocol answers them; trace_count is what is left. A model created again
        since it was given settings of its own has the global ones."""
        with self._lock:
            scope = self._models.get(model, self._global) if self._is_kept(model, identity) else self._global
            return {
                TRACE_FILE: [self.file_text],
                TRACE_LEVEL: list(scope.settings.levels) or [OFF],
                TRACE_RATE: [str(scope.settings.rate)],
                TRACE_COUNT: [str(scope.left)],
                LOG_FREQUENCY: [str(scope.settings.log_frequency)],
                TRACE_MODE: [TRITON_MODE],
            }

    def update(
        self, model: str, changes: Mapping[str, object], who: str, identity: Hashable = None
    ) -> dict[str, list[str]]:
        """Apply `changes` (all or none; see parsed_changes) to `model`'s settings (empty: the
        global ones; `identity`: its identity) for the caller `who`; the settings after them.
        Settings kept for a model of its name deleted since are not built on. Unavailable once
        closed."""
        fields = parsed_changes(changes, self.file_text)
        with self._lock:
            if self._closed:
                raise Unavailable(
                    "tesserad is shutting down: its trace writer has stopped, so the trace settings "
                    "can no longer change; change them once it is back"
                )
            before = self._effective(model) if self._is_kept(model, identity) else self._global.settings
            global_settings = self._global.settings
            own = dict(self._own)
            if model:
                mine = dict(own.get(model, {})) if self._is_kept(model, identity) else {}
                for name, value in fields.items():
                    if value is None:
                        mine.pop(name, None)
                    else:
                        mine[name] = value
                if mine:
                    own[model] = mine
                else:
                    own.pop(model, None)
            else:
                global_settings = replace(
                    global_settings,
                    **{n: getattr(DEFAULTS, n) if v is None else v for n, v in fields.items()},
                )
            every = [global_settings, *(replace(global_settings, **o) for o in own.values())]
            if self._file is None and any(s.levels for s in every):
                raise FailedPrecondition(
                    f"tracing needs a trace file, and this tesserad has none: its operator names one "
                    f"in its setting {FILE_SETTING} (off by default); until then {TRACE_LEVEL} stays {OFF}"
                )
            self._own = own
            if model:
                self._identities[model] = identity
            self._identities = {name: self._identities[name] for name in own}
            # The settings sent start their count again even where they equal the ones before
            # (sending trace_count again takes that many more traces).
            if global_settings != self._global.settings or (fields and not model):
                self._retire(self._global)
                self._global = _Scope(global_settings)
            for name in list(self._models):
                if name not in self._own:
                    self._retire(self._models.pop(name))
            for name in self._own:
                self._renew_model(name, bool(fields) and name == model)
            self._update_on()
            after = self._effective(model)
        if after != before:
            old, new = _loggable(before), _loggable(after)
            log.warning(
                "trace settings changed at runtime, until tesserad stops (its settings are unchanged)",
                extra={
                    "by": who,
                    "model": model or None,
                    "changes": {n: {"from": old[n], "to": new[n]} for n in old if old[n] != new[n]},
                },
            )
        return self.settings(model, identity)

    def kept(self, model: str) -> Hashable | None:
        """The identity of the model `model` has settings of its own for, None when it has none
        (read unlocked: one dict lookup)."""
        return self._identities.get(model)

    def forget(self, model: str, identity: Hashable) -> None:
        """Drop `model`'s own settings, set for the model of `identity`, that model deleted: a
        new model of its name is traced with the global ones. What they took is written."""
        with self._lock:
            if not self._is_kept(model, identity) or self._own.pop(model, None) is None:
                return
            self._identities.pop(model, None)
            scope = self._models.pop(model, None)
            if scope is not None:
                self._retire(scope)
            self._update_on()
        log.info("dropped the trace settings of model %r: it was deleted", model, extra={"model": model})

    def _is_kept(self, model: str, identity: Hashable) -> bool:
        """Whether settings kept for `model` (if any) are for the model of `identity`."""
        return self._identities.get(model, identity) == identity

    def _effective(self, model: str) -> TraceSettings:
        """`model`'s settings (empty: the global ones)."""
        return replace(self._global.settings, **self._own.get(model, {}))

    def _renew_model(self, model: str, sent: bool) -> None:
        """Give `model` a fresh scope where its settings changed or were `sent` (called holding
        the lock)."""
        settings = self._effective(model)
        scope = self._models.get(model)
        if scope is not None and scope.settings == settings and not sent:
            return
        if scope is not None:
            self._retire(scope)
        self._models[model] = _Scope(settings)

    def _update_on(self) -> None:
        self.on = not self._closed and (self._global.on or any(s.on for s in self._models.values()))

    def trace(
        self,
        model: str,
        version: int,
        request_id: str,
        started: int,
        prediction: Prediction,
        inputs: Mapping[str, np.ndarray],
        ended: int,
    ) -> None:
        """Count an answered request, and trace it if its settings sample it. `started` and
        `ended`: REQUEST_START and REQUEST_END (perf_counter_ns)."""
        with self._lock:
            scope = self._models.get(model, self._global)
            if not scope.sampled():
                return
            trace_id = self._next_id
            self._next_id += 1
            texts = [
                self._entries(
                    trace_id, model, version, request_id, scope.settings, started, prediction, inputs, ended
                )
            ]
            # An ensemble's members: a child trace each, as Triton writes a trace for each
            # composing model's request. A member's request starts as it is queued, and ends
            # once its outputs are taken.
            for member in prediction.members:
                child = member.prediction
                texts.append(
                    self._entries(
                        self._next_id,
                        member.model,
                        member.version,
                        request_id,
                        scope.settings,
                        child.started_ns - child.queue_ns,
                        child,
                        inputs,
                        child.ended_ns,
                        parent_id=trace_id,
                    )
                )
                self._next_id += 1
            scope.pending.append(",".join(texts))
            frequency = scope.settings.log_frequency
            if scope.left == 0 or (frequency and len(scope.pending) >= frequency):
                self._write(scope, indexed=True)
            if scope.left == 0:
                self._update_on()

    def _entries(
        self,
        trace_id: int,
        model: str,
        version: int,
        request_id: str,
        settings: TraceSettings,
        started: int,
        prediction: Prediction,
        inputs: Mapping[str, np.ndarray],
        ended: int,
        parent_id: int = 0,
    ) -> str:
        head: dict[str, object] = {"id": trace_id, "model_name": model, "model_version": version}
        if request_id:
            head["request_id"] = request_id
        if parent_id:
            head["parent_id"] = parent_id
        entries: list[dict[str, object]] = [head]
        if TIMESTAMPS in settings.levels:
            times = [("REQUEST_START", started)]
            if prediction.started_ns:
                times += [
                    ("QUEUE_START", prediction.started_ns - prediction.queue_ns),
                    ("COMPUTE_START", prediction.started_ns),
                    ("COMPUTE_INPUT_END", prediction.joined_ns),
                    ("COMPUTE_OUTPUT_START", prediction.started_ns + prediction.compute_ns),
                    ("COMPUTE_END", prediction.ended_ns),
                ]
            times.append(("REQUEST_END", ended))
            entries.append({"id": trace_id, "timestamps": [{"name": n, "ns": ns} for n, ns in times]})
        if TENSORS in settings.levels:
            for activity, tensors in (
                ("TENSOR_QUEUE_INPUT", inputs),
                ("TENSOR_BACKEND_OUTPUT", prediction.outputs),
            ):
                entries.extend(
                    {"id": trace_id, "activity": activity, "tensor": self._tensor(name, array)}
                    for name, array in tensors.items()
                )
        return ",".join(json.dumps(e, separators=(",", ":")) for e in entries)

    def _tensor(self, name: str, array: np.ndarray) -> dict[str, str]:
        # As Triton writes a tensor: its values, and shape, as comma-separated text. Each value as
        # its own dtype prints it (float32 0.1 is "0.1", not the float64 it widens to).
        values = array.astype(np.uint8) if array.dtype == np.bool_ else array
        return {
            "name": name,
            "data": ",".join(map(str, values.ravel())),
            "shape": ",".join(str(d) for d in array.shape),
            "dtype": self._dtype_names.get(array.dtype, str(array.dtype)),
        }

    def _retire(self, scope: _Scope) -> None:
        """Hand what a scope no longer at work has taken to the writer, as Triton writes it: to
        the next FILE.N with a log_frequency, else appended to FILE (called holding the lock)."""
        if scope.pending:
            self._write(scope, indexed=bool(scope.settings.log_frequency))

    def _write(self, scope: _Scope, indexed: bool) -> None:
        assert self._writer is not None, "no trace is taken without a trace file"
        traces, scope.pending = scope.pending, []
        self._writer.submit(_Write(indexed, traces))

    @property
    def dropped(self) -> int:
        """Traces taken and dropped: the writer's queue was full (the disk too slow for them)."""
        return 0 if self._writer is None else self._writer.dropped

    def close(self, timeout: float) -> None:
        """Stop tracing: write every trace taken and not yet written, and close the trace file's
        array, waiting for the writer at most `timeout` seconds, never less than CLOSE_WAIT_MIN_S
        (never call it on the event loop's thread); past them what is left unwritten is logged. The settings no longer change."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.on = False
            if self._writer is None:
                return
            last = []
            for scope in (self._global, *self._models.values()):
                if scope.pending:
                    last.append(_Write(bool(scope.settings.log_frequency), scope.pending))
                    scope.pending = []
        self._writer.close(last, timeout)


# The least a stop waits for the writer, whatever its grace period (grace_period_s = 0 included):
# a working disk writes the last traces in moments, and only waiting at all lets it; a disk that
# takes no write costs the stop this much more, once.
CLOSE_WAIT_MIN_S = 1.0


class _Write(NamedTuple):
    """Traces to write: to the next FILE.N (`indexed`), else appended to FILE."""

    indexed: bool
    traces: list[str]


class _Writer:
    """Writes traces to the trace files on a thread of its own, in the order they were handed to
    it: a slow disk must not stall the event loop's thread, which takes the traces. What finds
    the queue full is dropped, counted, and logged once a run of drops ends."""

    def __init__(self, file: Path, queue_size: int) -> None:
        self._file = file
        self._queue: queue.Queue[_Write | None] = queue.Queue(queue_size)
        self._next_index = 0
        # The trace file, once traces were appended to it (it ends with "]" at the close).
        self._appending: TextIO | None = None
        self.dropped = 0
        self._dropped_unlogged = 0
        # Traces queued and not yet written (or failed): what a stop that gives up leaves.
        self._unwritten = 0
        self._unwritten_lock = threading.Lock()
        # A daemon thread: one held by a write that never returns (a hung disk) must not keep the
        # process alive once the stop has given up on it.
        self._thread = threading.Thread(target=self._run, name="tessera-trace-writer", daemon=True)
        self._thread.start()

    def submit(self, write: _Write) -> None:
        """Queue `write`; dropped if the queue is full (called holding the tracer's lock, so
        writes queue in the order they were taken)."""
        if not self._queued(write, 0.0):
            if not self._dropped_unlogged:
                log.warning(
                    "traces are dropped: writing them to %s is slower than they are taken "
                    "(lower trace_rate, or raise log_frequency)",
                    self._file,
                )
            self.dropped += len(write.traces)
            self._dropped_unlogged += len(write.traces)
            return
        self._log_dropped()

    def _queued(self, write: _Write | None, timeout: float) -> bool:
        """Put `write` (None: the end) on the queue, waiting for room at most `timeout` seconds
        (0: not at all); whether it was put."""
        traces = 0 if write is None else len(write.traces)
        with self._unwritten_lock:
            self._unwritten += traces
        try:
            self._queue.put(write, timeout=timeout)
        except queue.Full:
            with self._unwritten_lock:
                self._unwritten -= traces
            return False
        return True

    def _log_dropped(self) -> None:
        if self._dropped_unlogged:
            log.warning(
                "dropped %d traces: the trace writer was behind",
                self._dropped_unlogged,
                extra={"dropped": self._dropped_unlogged, "dropped_in_all": self.dropped},
            )
            self._dropped_unlogged = 0

    def close(self, last: list[_Write], timeout: float) -> None:
        """Write what is queued and `last`, close FILE's array, and end the thread, waiting at
        most `timeout` seconds, and never less than CLOSE_WAIT_MIN_S: past them the thread is left
        to its write (it cannot keep the process alive) and what it has not written is logged."""
        timeout = max(timeout, CLOSE_WAIT_MIN_S)
        deadline = time.monotonic() + timeout
        self._log_dropped()
        left_out = 0
        for write in (*last, None):
            if not self._queued(write, max(0.0, deadline - time.monotonic())):
                left_out += 0 if write is None else len(write.traces)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return
        with self._unwritten_lock:
            unwritten = self._unwritten + left_out
        log.error(
            "the trace writer did not finish within the stop's %gs (grace_period_s): the disk of %s "
            "takes no write (a hung mount?), and tesserad stops without it: %d traces taken are not "
            "written, and the trace file may be left without its closing ']'",
            timeout,
            self._file,
            unwritten,
            extra={"unwritten_traces": unwritten, "trace_file": str(self._file)},
        )

    def _run(self) -> None:
        while (write := self._queue.get()) is not None:
            if write.indexed:
                self._write_indexed(write.traces)
            else:
                self._append(write.traces)
            with self._unwritten_lock:
                self._unwritten -= len(write.traces)
        if self._appending is not None:
            try:
                self._appending.write("]")
                self._appending.close()
            except OSError as exc:
                log.error("could not write traces to %s: %s", self._file, exc)
            self._appending = None

    def _write_indexed(self, traces: list[str]) -> None:
        path = self._file.with_name(f"{self._file.name}.{self._next_index}")
        self._next_index += 1
        try:
            path.write_text("[" + ",".join(traces) + "]")
        except OSError as exc:
            log.error("could not write traces to %s: %s", path, exc)

    def _append(self, traces: list[str]) -> None:
        text = ",".join(traces)
        try:
            if self._appending is None:
                self._appending = self._file.open("w")
                self._appending.write("[" + text)
            else:
                self._appending.write("," + text)
            self._appending.flush()
        except OSError as exc:
            log.error("could not write traces to %s: %s", self._file, exc)


class TraceMetrics(Collector):
    """tessera_traces_dropped: traces the writer could not keep up with, read at scrape time."""

    def __init__(self, tracer: Tracer, registry: CollectorRegistry) -> None:
        self._tracer = tracer
        registry.register(self)

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        family.add_metric([], self._tracer.dropped)
        yield family

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "tessera_traces_dropped",
            "Traces taken (Triton's trace extension) and dropped: writing them fell behind.",
        )
