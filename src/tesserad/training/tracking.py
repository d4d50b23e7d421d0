"""Experiment tracking: experiments, runs, params and metrics.

Metrics are stored as `run | key | step -> (value, timestamp)` with a per-(run, key) summary
(last, min, max, best, count) and multi-resolution buckets (`metric_buckets`) updated in the
same transaction, through the store's group commit, so an ingest of many small batches costs a
handful of fsyncs and a history read costs what it returns.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import struct
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tessera.param_values import same_param_value
from tesserad.config import format_size
from tesserad.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tesserad.ids import new_id
from tesserad.names import closest, did_you_mean, validate_name, validate_name_prefix
from tesserad.numbers import epoch_milliseconds
from tesserad.paging import MAX_PAGE_BYTES, Page, PageFill, foreign_token, make_token, read_page, resume_after
from tesserad.run_params import flatten_params, without_early_stopping_off
from tesserad.store import (
    Key,
    ReadTxn,
    Store,
    WriteTxn,
    decode_metric_point,
    decode_record,
    each_row_once,
    encode_metric_point,
    encode_record,
    pack,
    trailing_int,
    unpack,
)
from tesserad.text import (
    ENTRY_WIRE_BYTES,
    MAX_PARAM_VALUE,
    MAX_TAG_KEY,
    check_entries,
    check_label,
    check_record_text,
    check_tag_update,
    entries_wire_bytes,
    hidden_character_problem,
)
from tesserad.training import metric_buckets, run_order
from tesserad.training.job_records import decode_job
from tesserad.training.metric_buckets import MAX_STEP, Grouping, Sample, metric_prefix, point_key
from tesserad.training.run_search import (
    SortKey,
    TextFilter,
    TimeFilter,
    check_like_budget,
    check_sort_key,
    check_text_filter,
    sort_position,
)
from tesserad.training.spec import PARENT_TAG, default_mode

log = logging.getLogger(__name__)

# experiment -> its active runs (a signed 8-byte integer), moved in the transaction that
# creates, deletes or restores runs, so an experiment's run_count reads one row.
RUN_COUNTS = "experiment_run_counts"
_RUN_COUNT = struct.Struct(">q")
# run -> its distinct metric keys (a signed 8-byte integer), moved in the transaction that adds
# or drops a key's summary, so refusing a key past MAX_RUN_METRICS reads one row.
METRIC_COUNTS = "run_metric_counts"

TABLES = [
    "experiments",
    "runs",
    "run_names",
    "experiment_runs",
    "deleted_runs",
    RUN_COUNTS,
    METRIC_COUNTS,
    "metrics",
    "metric_summaries",
    run_order.TABLE,
    run_order.DELETED_TABLE,
    metric_buckets.TABLE,
]

RUN_STATUSES = ("running", "succeeded", "failed", "cancelled", "interrupted")
# Which soft-deleted experiments or runs a list shows.
VIEWS = ("active", "deleted", "all")
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_KEY_LENGTH = 250
# With the run id and two integers, a metric key of this many UTF-8 bytes stays within LMDB's
# 511-byte keys (250 characters may take 1000).
MAX_KEY_BYTES = 400
# A run's params and tags together, in UTF-8 and counting what each entry adds on the wire: with
# its metric summaries a run stays within the 4 MiB a GetRun answer may take, however many calls
# added to it.
MAX_RUN_TEXT = 2 * 2**20
# Distinct metric keys a run holds: per-class metrics of a thousand classes take thousands.
MAX_RUN_METRICS = 10_000
# Points one LogMetrics request (or one LogMetricsStream batch) carries: a step of every key a
# run may hold. Bounded only by the message size, a million points held the daemon for seconds.
MAX_BATCH_POINTS = 10_000
# Metric summaries an answer carries for a run, the first by key; the rest are counted
# (metrics_left_out) and read with GetMetricHistory. A summary of a key of MAX_KEY_BYTES takes at
# most about 460 bytes on the wire, so these take under 1 MB: with MAX_RUN_TEXT of params and
# tags a run stays within the 4 MiB of a GetRun answer, and ListRuns, CompareRuns and Leaderboard
# can carry it, however many keys it holds.
MAX_ANSWERED_METRICS = 2000
# Filters of each kind (params, tags, metric conditions) one ListRuns takes: every run listed is
# checked against each, so their number bounds a listing's work, far above any query a person writes.
MAX_LIST_FILTERS = 1000
# Keys one ListRuns orders by: a page token carries each one's value for the last run (a param's
# up to MAX_PARAM_VALUE characters), so their number bounds a token's size.
MAX_ORDER_KEYS = 10
DEFAULT_LEADERBOARD_LIMIT = 10
DEFAULT_HISTORY_PAGE = 10_000
MAX_HISTORY_PAGE = 100_000
# A history page stays within gRPC's default message limit in every language (4 MiB); a point
# takes at most its key plus 40 bytes on the wire.
_HISTORY_PAGE_BYTES = 4 * 2**20 - 4096
_POINT_WIRE_BYTES = 40
_SUMMARY_WIRE_BYTES = 64
_EVERY_POINT = -1  # the level in a history page token that means "every point, no buckets"
# In the "meta" table once every metric has its buckets (stores from before them are backfilled).
BUCKETS_BUILT = ("metric_buckets_built",)
# In the "meta" table once the metrics holding NaN or infinite points that jobs stored before
# write_points refused them have their buckets and summaries rebuilt by today's rules (a daemon
# between dropped those points, under this marker).
NONFINITE_PURGED = ("metric_nonfinite_purged",)
# In the "meta" table once every summary is in run_metric_order (stores from before it are
# indexed once at start).
ORDER_INDEXED = ("run_metric_order_indexed",)
# In the "meta" table once deleted runs' rows are out of run_metric_order (stores from before
# deletion moved them are sorted once at start).
DELETED_ORDER_MOVED = ("deleted_run_metric_order_moved",)
# The summary fields a ListRuns can order by, each indexed in run_metric_order.
ORDER_FIELDS = ("last", "min", "max")
# In the "meta" table once every experiment has its count (stores from before the counts are
# counted once at start).
RUNS_COUNTED = ("experiment_runs_counted",)
# In the "meta" table once every run has its count of metric keys (stores from before the counts
# are counted once at start).
METRICS_COUNTED = ("run_metrics_counted",)
# In the "meta" table once no job's run holds the early_stopping.* params of a spec without early
# stopping, which jobs recorded before they recorded them only for a spec that turns it on (runs
# compared by their params differed by a section neither set).
EARLY_STOPPING_OFF_DROPPED = ("run_early_stopping_off_dropped",)
# The start-up markers above, each with the store schema from which every daemon keeps what it
# marks (tesserad.store.schema drops those an older daemon may have broken).
MARKERS: dict[Key, int] = {
    BUCKETS_BUILT: 1,
    NONFINITE_PURGED: 1,
    ORDER_INDEXED: 1,
    DELETED_ORDER_MOVED: 1,
    RUNS_COUNTED: 1,
    METRICS_COUNTED: 1,
    # Schema 4: a tesserad of it from before the change may write such params again after the
    # pass; they differ by absence only, short of a schema that older ones could not open.
    EARLY_STOPPING_OFF_DROPPED: 4,
}
# What the start-up passes' progress logs call the rows of the tables they go through.
_PASS_ROWS = {
    "metric_summaries": "metrics",
    "experiments": "experiments",
    "deleted_runs": "runs",
    "runs": "runs",
}


@dataclass(frozen=True)
class _Pass:
    """What one of the start-up passes over a table went through."""

    rows: int  # rows of its table counted before it began
    done: int
    seconds: float


@dataclass
class MetricSummary:
    key: str
    last: float
    min: float
    max: float
    best: float
    count: int
    last_step: int

    def field(self, name: str) -> float:
        return {"last": self.last, "min": self.min, "max": self.max, "best": self.best}[name]


@dataclass
class Experiment:
    name: str
    description: str
    tags: dict[str, str]
    created_at: float
    run_count: int = 0
    deleted_at: float | None = None


@dataclass
class Run:
    run_id: str
    experiment: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    start_time: float
    end_time: float | None
    attempts: int
    job_id: str
    metrics: list[MetricSummary] = field(default_factory=list)
    # Summaries not in `metrics`: those past the first MAX_ANSWERED_METRICS by key.
    metrics_left_out: int = 0
    deleted_at: float | None = None
    # Deleted by its experiment's deletion, which a restore of the experiment undoes.
    deleted_with_experiment: bool = False
    parent_run_id: str = ""


@dataclass
class RunComparison:
    """Runs side by side: `metric_keys` are the first MAX_ANSWERED_METRICS of the runs' metric
    keys together, by key (each in the `metrics` of every run that has it), and
    `metrics_left_out` counts their distinct keys past those."""

    runs: list[Run]
    metric_keys: list[str]
    metrics_left_out: int


class MetricPoint(NamedTuple):
    """One point; a named tuple because ingest builds a hundred thousand of them a second."""

    key: str
    value: float
    step: int
    time: float | None = None  # wall clock; server time when None
    # At the step after the highest its key holds (MLflow's log_metric without a step).
    next_step: bool = False


class Logged(NamedTuple):
    """What a batch of points did: `accepted` points stored, `replaced` of them over a different
    value at their key and step (the newest point of a key and step wins)."""

    accepted: int
    replaced: int


class BatchSequence:
    """The batches of one stream of metric batches, queued in order: once one fails, those queued
    after it are refused unstored, so what a failed stream stored is exactly the batches before
    its first failure, and a client resends from there."""

    def __init__(self) -> None:
        self.failed = False
        self.last: Future[Logged] | None = None  # the outcome of the batch queued last

    def watch(self, outcome: Future[Logged]) -> None:
        """Mark the sequence failed when `outcome` fails after its work ran (a commit that
        failed as a whole), its callback run before the next commit begins; or when it is
        cancelled, as its stream's call was, and so not stored (the next batch also reads that
        from `last`: a cancel runs its callbacks after the committer may have seen it)."""
        self.last = outcome
        outcome.add_done_callback(self._note)

    def _note(self, outcome: Future[Logged]) -> None:
        if outcome.cancelled() or outcome.exception() is not None:
            self.failed = True


@dataclass(frozen=True)
class MetricFilter:
    key: str
    field: str  # last, min, max
    op: str  # lt, le, gt, ge, eq, ne
    value: float


@dataclass(frozen=True)
class RunOrder:
    metric: str
    field: str  # last, min, max
    descending: bool | None  # None: the metric's own direction (default_mode)


@dataclass
class HistoryPage:
    points: list[MetricPoint]
    total: int  # points stored in the range
    downsampled: bool
    next_token: str


def history_page_size(requested: int, key: str) -> int:
    """Points in one history page: 0 means the default; capped to what fits the byte budget."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must be >= 0 (0 for the default of {DEFAULT_HISTORY_PAGE} points), got {requested}"
        )
    fits = _HISTORY_PAGE_BYTES // (len(key.encode()) + _POINT_WIRE_BYTES)
    return min(requested or DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE, fits)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}
_RANK_VALUE = struct.Struct(">d")
# An ordered listing's phase of runs whose ordered field is NaN, after those with a number and
# before those without the metric (phase 1, so that tokens from before it keep their meaning).
_NAN_PHASE = 2
# The order index's tables each view reads: deleted runs' rows are apart (run_order).
_VIEW_TABLES = {"active": (False,), "deleted": (True,), "all": (False, True)}
# A run that may log a key yet: running, or interrupted and waiting for its job to resume it.
_MAY_LOG_YET = frozenset({"running", "interrupted"})
# Runs, newest first, whose metric keys a refusal of a key no run has logged reads for the nearest,
# and the keys it names without one: bounded in an experiment of thousands of runs and keys.
_RUNS_READ_FOR_KEYS = 100
_KEYS_NAMED = 20


def _run_from(data: dict[str, Any]) -> Run:
    return Run(**{k: v for k, v in data.items() if k != "metrics"})


def _run_data(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "experiment": run.experiment,
        "name": run.name,
        "status": run.status,
        "params": run.params,
        "tags": run.tags,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "attempts": run.attempts,
        "job_id": run.job_id,
    }
    # Optional fields, present only on deleted runs: records of active runs keep their shape.
    if run.deleted_at is not None:
        data["deleted_at"] = run.deleted_at
        data["deleted_with_experiment"] = run.deleted_with_experiment
    if run.parent_run_id:
        data["parent_run_id"] = run.parent_run_id
    return data


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise InvalidArgument(f"view {view[:40]!r} is not one of {', '.join(VIEWS)}")


def _in_view(deleted_at: float | None, view: str) -> bool:
    return view == "all" or (deleted_at is not None) == (view == "deleted")


def _tag_changes(set_tags: dict[str, str], remove_tags: Iterable[str]) -> set[str]:
    """Check an update's tags; the keys to remove. A key both set and removed is refused; one
    removed that is not there is no error."""
    check_entries("set_tags", set_tags)
    removed = set(remove_tags)
    check_tag_update(set_tags, removed)
    return removed


def param_matches(stored: str | None, wanted: str) -> bool:
    """Whether a run's param `stored` meets a filter's `wanted`: one value as same_param_value
    reads it (a comparison on read keeps the stored text as it was logged)."""
    return stored is not None and same_param_value(stored, wanted)


def _changed_param_advice(txn: ReadTxn, run: Run, key: str) -> str:
    """What to do about a change to `run`'s param `key`: its job's own params (its spec's) are
    named as the job's, with a key of the user's own to log under instead."""
    raw = txn.get("jobs", (run.job_id,)) if run.job_id else None
    if raw is not None and key in flatten_params(decode_job(raw).config):
        return (
            f", which its job {run.job_id} set from its spec; a logged param cannot change: log yours "
            f"under another key, such as {'user.' + key!r}"
        )
    return "; a logged param cannot change (start a new run for a new value)"


def _refuse_deleted_run(run: Run) -> None:
    """FailedPrecondition for a change to a deleted run, saying how to bring it back."""
    if run.deleted_at is None:
        return
    if run.deleted_with_experiment:
        raise FailedPrecondition(
            f"run {run.run_id!r} is deleted with its experiment {run.experiment!r}; restore the "
            "experiment with RestoreExperiment to change the run"
        )
    raise FailedPrecondition(f"run {run.run_id!r} is deleted; restore it with RestoreRun to change it")


def _no_experiment(txn: ReadTxn, name: str) -> NotFound:
    """NotFound for the experiment `name`, a stored name close to it first (as models say it)."""
    return NotFound(
        f"experiment {name!r} does not exist; {did_you_mean(txn, 'experiments', name)}ListExperiments lists them"
    )


def _deleted_at(txn: ReadTxn, name: str) -> float | None:
    """When the experiment `name` was deleted (None: it is not), from its record alone (its run
    count, which Tracking._experiment reads too, is not needed); NotFound when unknown."""
    raw = txn.get("experiments", (name,))
    if raw is None:
        raise _no_experiment(txn, name)
    deleted_at: float | None = decode_record(raw, "experiment", 1)[1].get("deleted_at")
    return deleted_at


def _refuse_parent_tag_change(run: Run, set_tags: dict[str, str], removed: Collection[str]) -> None:
    """FailedPrecondition for a change of the tag mlflow.parentRunId: it names the run's parent
    (parent_run_id), fixed when the run is created, and the two must never disagree. Setting it
    to the value it holds, or dropping it where it is not, changes nothing and passes; so does
    dropping it from a run without a parent (one created before the two were kept together)."""
    held = run.tags.get(PARENT_TAG)
    wanted = set_tags.get(PARENT_TAG, held)
    if PARENT_TAG in removed and held is not None:
        wanted = None
    if wanted is None and not run.parent_run_id:
        return
    if wanted != held:
        parent = f"parent run {run.parent_run_id!r}" if run.parent_run_id else "no parent"
        raise FailedPrecondition(
            f"tags: {PARENT_TAG} cannot change after a run is created; it names the run's parent "
            f"(run {run.run_id!r} has {parent}); create a new run to nest it elsewhere"
        )


def _refuse_deleted_experiment(experiment: Experiment, then: str = "first") -> None:
    """FailedPrecondition for a use of a deleted experiment, saying how to bring it back (`then`:
    what for, e.g. "to rank its runs")."""
    if experiment.deleted_at is not None:
        raise FailedPrecondition(
            f"experiment {experiment.name!r} is deleted; restore it with RestoreExperiment {then}"
        )


def _refuse_running_sweeps(experiment: str, sweep_ids: list[str]) -> None:
    """As DeleteDataset refuses a dataset a running sweep holds: the sweep, and how to end it."""
    if len(sweep_ids) == 1:
        raise FailedPrecondition(
            f"experiment {experiment!r} is in use by running sweep {sweep_ids[0]}, whose trials' runs "
            f"go to it; wait for the sweep to end or cancel it with `tessera sweeps cancel {sweep_ids[0]}`, "
            "then delete"
        )
    if sweep_ids:
        listed = ", ".join(sweep_ids[:10]) + (
            f" and {len(sweep_ids) - 10} more" if len(sweep_ids) > 10 else ""
        )
        raise FailedPrecondition(
            f"experiment {experiment!r} is in use by running sweeps {listed}, whose trials' runs go "
            "to it; wait for the sweeps to end or cancel each with `tessera sweeps cancel SWEEP_ID`, "
            "then delete"
        )


def _refuse_unended_job(run: Run) -> None:
    """A job's run follows the job; its status is an ended one exactly when the job has ended."""
    if run.job_id and run.status not in ENDED_STATUSES:
        raise FailedPrecondition(
            f"run {run.run_id!r} belongs to job {run.job_id}, which has not ended; cancel the job "
            "(CancelJob) or wait for it to end, then delete"
        )


def _summary_from(data: dict[str, Any]) -> MetricSummary:
    return MetricSummary(**data)


def check_metric_key(key: str, where: str) -> None:
    if (
        not key
        or len(key) > MAX_KEY_LENGTH
        or len(key.encode()) > MAX_KEY_BYTES
        or any(c in key for c in "\x00\n")
    ):
        raise InvalidArgument(
            f"{where}: metric key {key[:80]!r} must be 1 to {MAX_KEY_LENGTH} characters (at most "
            f"{MAX_KEY_BYTES} bytes in UTF-8) without NUL or newlines"
        )


def run_text_problem(params: dict[str, str], tags: dict[str, str]) -> str:
    """Why a run's params and tags take too much together (over MAX_RUN_TEXT); "" when they fit."""
    size = entries_wire_bytes(params) + entries_wire_bytes(tags)
    if size <= MAX_RUN_TEXT:
        return ""
    return (
        f"a run's params and tags take at most {format_size(MAX_RUN_TEXT)} together, these would "
        f"take {format_size(size)} ({size} bytes, counting {ENTRY_WIRE_BYTES} bytes an entry "
        "beside its UTF-8); keep large values in a run artifact (UploadRunArtifact) and log its path"
    )


def _check_run_text(run: Run) -> None:
    """InvalidArgument when `run_text_problem` finds one."""
    problem = run_text_problem(run.params, run.tags)
    if problem:
        raise InvalidArgument(problem)


def _with_summaries(txn: ReadTxn, run: Run) -> Run:
    """`run` answering its first MAX_ANSWERED_METRICS summaries (in key order), so that a run of
    many keys still fits in one answer; the rest are counted, and read by their history. Reads
    what it answers and the run's count of keys, not every summary."""
    run.metrics = [
        _summary_from(decode_record(raw, "metric_summary", 1)[1])
        for _, raw in txn.scan("metric_summaries", (run.run_id,), limit=MAX_ANSWERED_METRICS)
    ]
    run.metrics_left_out = _metric_count(txn, run.run_id) - len(run.metrics)
    return run


def _distinct_keys(txn: ReadTxn, runs: list[Run]) -> Iterator[str]:
    """The metric keys of `runs` together, in key order, each once. A run's answered keys come
    from its summaries; only a run whose answer is full is read further, past its last answered key.

    Each of the first MAX_ANSWERED_METRICS keys of runs together is among the answered keys of
    every run that has it (no run has that many keys before it), so those keys' summaries are
    in the runs' `metrics`.
    """

    def keys_of(run: Run) -> Iterator[str]:
        yield from (summary.key for summary in run.metrics)
        if len(run.metrics) == MAX_ANSWERED_METRICS:
            after = (run.run_id, run.metrics[-1].key)
            yield from (str(key[1]) for key, _ in txn.scan("metric_summaries", (run.run_id,), after=after))

    for key, _ in itertools.groupby(heapq.merge(*(keys_of(run) for run in runs))):
        yield key


def _unlogged_metrics(txn: ReadTxn, names: list[str], view: str, metrics: Iterable[str]) -> list[str]:
    """The `metrics` no run of the experiments `names` in `view` has, from the order index."""
    return [
        metric
        for metric in dict.fromkeys(metrics)
        if not any(
            run_order.logged(txn, name, metric, deleted) for name in names for deleted in _VIEW_TABLES[view]
        )
    ]


def _unlogged(
    kind: str, key: str, experiment: str, logged: set[str], purpose: str = "", view: str = ""
) -> NotFound:
    """NotFound for a `kind` ("metric", "param") key no run of `experiment` ("": of any) has
    logged: where runs outside `view` (given then) have, saying which view shows them; else
    naming the nearest logged key, else those logged."""
    of = f" of experiment {experiment!r}" if experiment else ""
    if view:
        others = "deleted" if view == "active" else "active"
        return NotFound(
            f"only {others} runs{of} have logged {kind} {key[:80]!r}{purpose}, no {view} one; "
            f"ask with view {others} or all (runs ls --view {others})"
        )
    said = (
        f"no run{of} has logged {kind} {key[:80]!r}{purpose}, and none is running or waiting to "
        "resume that may log it yet; "
    )
    near = closest(sorted(logged), key)
    if near:
        return NotFound(said + near.rstrip())
    if not logged:
        return NotFound(f"{said}they have logged no {kind}")
    named = sorted(logged)
    more = f" and {len(named) - _KEYS_NAMED} more" if len(named) > _KEYS_NAMED else ""
    return NotFound(f"{said}they have logged {', '.join(named[:_KEYS_NAMED])}{more}")


def _summary(txn: ReadTxn, run_id: str, key: str) -> MetricSummary | None:
    """The run's summary of `key`, answered or left out; None if the run has no such key."""
    raw = txn.get("metric_summaries", (run_id, key))
    return None if raw is None else _summary_from(decode_record(raw, "metric_summary", 1)[1])


def _run_bytes(run: Run) -> int:
    """About what `run` takes in a ListRuns answer: its text, and each metric summary's key and
    six numbers; the fixed fields are small beside a page's bound."""
    metrics = sum(len(summary.key.encode()) + _SUMMARY_WIRE_BYTES for summary in run.metrics)
    return entries_wire_bytes(run.params) + entries_wire_bytes(run.tags) + metrics


class Tracking:
    """Experiments, runs, params and metrics on the daemon's store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._running_sweeps_into: Callable[[ReadTxn, str], list[str]] = lambda txn, name: []

    def keep_experiments_of_running_sweeps(
        self, running_sweeps_into: Callable[[ReadTxn, str], list[str]]
    ) -> None:
        """Refuse deleting an experiment while `running_sweeps_into(txn, name)` names a sweep whose
        trials' runs go to it: between two trials no job of the sweep runs, and each later trial
        would be refused, the sweep failing after a few."""
        self._running_sweeps_into = running_sweeps_into

    # -- experiments

    def create_experiment(
        self, name: str, description: str = "", tags: dict[str, str] | None = None
    ) -> Experiment:
        validate_name("name", name)
        check_entries("tags", tags or {})
        check_record_text("an experiment", description, tags or {})
        experiment = Experiment(name, description, dict(tags or {}), time.time())
        with self._store.write() as txn:
            if txn.exists("experiments", (name,)):
                if self._experiment(txn, name).deleted_at is not None:
                    raise AlreadyExists(
                        f"experiment {name!r} already exists and is deleted; restore it with "
                        "RestoreExperiment or pick another name"
                    )
                raise AlreadyExists(f"experiment {name!r} already exists")
            self._put_experiment(txn, experiment)
        return experiment

    def refuse_deleted_experiment(self, txn: ReadTxn, name: str) -> None:
        """FailedPrecondition if the experiment is deleted; one that does not exist yet is none
        (a job creates its experiment on first use)."""
        if txn.exists("experiments", (name,)):
            _refuse_deleted_experiment(self._experiment(txn, name))

    def ensure_experiment(self, txn: WriteTxn, name: str) -> None:
        """Create the experiment inside `txn` unless it exists (jobs create theirs on first use);
        FailedPrecondition if it is deleted."""
        if not txn.exists("experiments", (name,)):
            self._put_experiment(txn, Experiment(name, "", {}, time.time()))
        else:
            _refuse_deleted_experiment(self._experiment(txn, name))

    def _put_experiment(self, txn: WriteTxn, experiment: Experiment) -> None:
        data: dict[str, Any] = {
            "name": experiment.name,
            "description": experiment.description,
            "tags": experiment.tags,
            "created_at": experiment.created_at,
        }
        # Optional, present only while deleted: active experiments' records keep their shape.
        if experiment.deleted_at is not None:
            data["deleted_at"] = experiment.deleted_at
        txn.put("experiments", (experiment.name,), encode_record("experiment", 1, data))

    def update_experiment(
        self, name: str, description: str | None, set_tags: dict[str, str], remove_tags: Iterable[str]
    ) -> Experiment:
        """Change the description (None leaves it) and tags of an active experiment."""
        validate_name("name", name)
        removed = _tag_changes(set_tags, remove_tags)
        with self._store.write() as txn:
            experiment = self._experiment(txn, name)
            _refuse_deleted_experiment(experiment)
            if description is not None:
                experiment.description = description
            experiment.tags.update(set_tags)
            for key in removed:
                experiment.tags.pop(key, None)
            check_record_text("an experiment", experiment.description, experiment.tags)
            self._put_experiment(txn, experiment)
        return self.get_experiment(name)

    def delete_experiment(self, name: str) -> Experiment:
        """Soft-delete the experiment and its active runs; refused while one of its jobs or sweeps runs."""
        validate_name("name", name)
        with self._store.write() as txn:
            experiment = self._experiment(txn, name)
            if experiment.deleted_at is None:
                _refuse_running_sweeps(name, self._running_sweeps_into(txn, name))
                runs = [self.load_run(txn, str(key[1])) for key, _ in txn.scan("experiment_runs", (name,))]
                for run in runs:
                    _refuse_unended_job(run)
                now = time.time()
                active = [run for run in runs if run.deleted_at is None]
                for run in active:
                    run.deleted_at, run.deleted_with_experiment = now, True
                    self.put_run(txn, run)
                    txn.put("deleted_runs", (name, run.run_id), b"")
                    _move_order_rows(txn, name, run.run_id, deleted=True)
                _count_runs(txn, name, -len(active))
                experiment.deleted_at = now
                self._put_experiment(txn, experiment)
        return self.get_experiment(name)

    def restore_experiment(self, name: str) -> Experiment:
        """Undo a deletion: the experiment and the runs deleted with it."""
        validate_name("name", name)
        with self._store.write() as txn:
            experiment = self._experiment(txn, name)
            if experiment.deleted_at is not None:
                restored = 0
                for key, _ in list(txn.scan("deleted_runs", (name,))):
                    run = self.load_run(txn, str(key[1]))
                    if run.deleted_with_experiment:
                        run.deleted_at, run.deleted_with_experiment = None, False
                        self.put_run(txn, run)
                        txn.delete("deleted_runs", key)
                        _move_order_rows(txn, name, run.run_id, deleted=False)
                        restored += 1
                _count_runs(txn, name, restored)
                experiment.deleted_at = None
                self._put_experiment(txn, experiment)
        return self.get_experiment(name)

    def get_experiment(self, name: str) -> Experiment:
        validate_name("name", name)
        with self._store.read() as txn:
            return self._experiment(txn, name)

    def _experiment(self, txn: ReadTxn, name: str) -> Experiment:
        raw = txn.get("experiments", (name,))
        if raw is None:
            raise _no_experiment(txn, name)
        _, data = decode_record(raw, "experiment", 1)
        return Experiment(**data, run_count=_run_count(txn, name))

    def list_experiments(
        self, name_prefix: str = "", size: int = 0, token: str = "", view: str = "active"
    ) -> tuple[list[Experiment], str]:
        _check_view(view)
        validate_name_prefix("name_prefix", name_prefix)
        query = {"list": "experiments", "prefix": name_prefix}
        if view != "active":
            # Tokens of active-only lists, issued before views existed, stay valid.
            query["view"] = view
        fill: PageFill[Experiment] = PageFill(size, query)
        after = resume_after(token, query)
        with self._store.read() as txn:
            # Names with the prefix sort together from the prefix itself on.
            start = (name_prefix,) if name_prefix else None
            for key, _ in txn.scan("experiments", start=start, after=unpack(after) if after else None):
                name = str(key[0])
                if not name.startswith(name_prefix):
                    break
                experiment = self._experiment(txn, name)
                if not _in_view(experiment.deleted_at, view):
                    continue
                if not fill.room(entries_wire_bytes(experiment.tags) + len(experiment.description.encode())):
                    break
                fill.add(key, experiment)
        return fill.page.items, fill.page.next_page_token

    # -- runs

    def create_run(
        self,
        experiment: str,
        name: str = "",
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        job_id: str = "",
        status: str = "running",
        parent_run_id: str = "",
        create_experiment: bool = True,
    ) -> Run:
        """A new run, nested under `parent_run_id` (or the tag mlflow.parentRunId, as MLflow's
        nested runs send it) when given; the experiment is created on first use unless
        `create_experiment` is False (NotFound then, naming a close existing name)."""
        validate_name("experiment", experiment)
        run_id = new_id("run")
        name = name or run_id
        validate_name("name", name)
        check_entries("params", params or {}, MAX_PARAM_VALUE)
        check_entries("tags", tags or {})
        tags = dict(tags or {})
        parent_field = "parent_run_id"
        if parent_run_id:
            given = tags.setdefault(PARENT_TAG, parent_run_id)
            if given != parent_run_id:
                raise InvalidArgument(
                    f"tags: {PARENT_TAG} is {given[:80]!r} but parent_run_id is {parent_run_id[:80]!r}; "
                    "leave the tag out, it is set from parent_run_id"
                )
        elif PARENT_TAG in tags:
            parent_run_id, parent_field = tags[PARENT_TAG], f"tags: {PARENT_TAG}"
            if not parent_run_id:
                raise InvalidArgument(
                    f"tags: {PARENT_TAG} is empty; give the parent run's id, or leave the tag out for a "
                    "run without a parent"
                )
        run = Run(
            run_id,
            experiment,
            name,
            status,
            dict(params or {}),
            tags,
            time.time(),
            None,
            0,
            job_id,
            parent_run_id=parent_run_id,
        )
        _check_run_text(run)
        with self._store.write() as txn:
            if not create_experiment and not txn.exists("experiments", (experiment,)):
                raise NotFound(
                    f"experiment {experiment!r} does not exist; {did_you_mean(txn, 'experiments', experiment)}"
                    "create it with CreateExperiment, or set create_experiment to create it with the run"
                )
            if parent_run_id:
                self._check_parent(txn, parent_run_id, experiment, parent_field)
            self.ensure_experiment(txn, experiment)
            self.put_new_run(txn, run, reopenable=True)
        return run

    def _check_parent(self, txn: ReadTxn, parent_run_id: str, experiment: str, field: str) -> None:
        """NotFound, InvalidArgument or FailedPrecondition unless `parent_run_id` (given as
        `field`) can hold a nested run of `experiment`: it exists, is of that experiment and is
        not deleted."""
        raw = txn.get("runs", (parent_run_id,))
        if raw is None:
            raise NotFound(f"{field}: run {parent_run_id[:80]!r} does not exist; ListRuns lists them")
        parent = _run_from(decode_record(raw, "run", 1)[1])
        if parent.experiment != experiment:
            raise InvalidArgument(
                f"{field}: run {parent_run_id!r} is of experiment {parent.experiment!r}, not "
                f"{experiment!r}; a nested run goes in its parent's experiment"
            )
        if parent.deleted_at is not None:
            raise FailedPrecondition(
                f"{field}: run {parent_run_id!r} is deleted; restore it with RestoreRun to nest runs under it"
            )

    def put_new_run(self, txn: WriteTxn, run: Run, reopenable: bool = False) -> None:
        """`reopenable`: a run created by a client, whose name taken by another such run is
        answered with how to log to that one again (a notebook cell run twice names it again)."""
        if not txn.put("run_names", (run.experiment, run.name), run.run_id.encode(), overwrite=False):
            holder = (txn.get("run_names", (run.experiment, run.name)) or b"").decode()
            if txn.exists("deleted_runs", (run.experiment, holder)):
                raise AlreadyExists(
                    f"experiment {run.experiment!r} has a deleted run named {run.name!r} ({holder}); "
                    "restore it with RestoreRun, pick another name or leave it empty to generate one"
                )
            if reopenable and not self.load_run(txn, holder).job_id:
                raise AlreadyExists(
                    f"experiment {run.experiment!r} already has a run named {run.name!r} ({holder}); "
                    f"to log to it again, reopen it: start_run(run_id={holder!r}) in the Python SDK "
                    "(UpdateRun to RUNNING); or pick another name or leave it empty to generate one"
                )
            raise AlreadyExists(
                f"experiment {run.experiment!r} already has a run named {run.name!r}; pick another name "
                "or leave it empty to generate one"
            )
        txn.put("experiment_runs", (run.experiment, run.run_id), b"")
        _count_runs(txn, run.experiment, 1)
        self.put_run(txn, run)

    def put_run(self, txn: WriteTxn, run: Run) -> None:
        txn.put("runs", (run.run_id,), encode_record("run", 1, _run_data(run)))

    def load_run(self, txn: ReadTxn, run_id: str) -> Run:
        if not run_id:
            raise InvalidArgument("run_id is required")
        raw = txn.get("runs", (run_id,))
        if raw is None:
            raise NotFound(f"run {run_id[:80]!r} does not exist; ListRuns lists them")
        return _run_from(decode_record(raw, "run", 1)[1])

    def writable_run(self, txn: ReadTxn, run_id: str) -> Run:
        """The run, for a change: NotFound when unknown, FailedPrecondition when deleted."""
        run = self.load_run(txn, run_id)
        _refuse_deleted_run(run)
        return run

    def runs_here(self, run_ids: Iterable[str]) -> set[str]:
        """Those of `run_ids` that name runs of this daemon, deleted ones too (a version's lineage
        may name another tracker's run, unchecked)."""
        # This daemon's ids are short ASCII; a lineage's may be 250 characters of any script,
        # past the 511 bytes an LMDB key may have.
        wanted = [run_id for run_id in run_ids if 0 < len(run_id.encode()) <= MAX_TAG_KEY]
        with self._store.read() as txn:
            return {run_id for run_id in wanted if txn.get("runs", (run_id,)) is not None}

    def get_run(self, run_id: str) -> Run:
        with self._store.read() as txn:
            run = _with_summaries(txn, self.load_run(txn, run_id))
        return run

    def update_run(
        self, run_id: str, status: str | None, set_tags: dict[str, str], remove_tags: Iterable[str] = ()
    ) -> Run:
        """End an external run (status + end time), reopen an ended one ("running": its end time
        cleared, as MLflow's start_run(run_id=...) does), or change its tags; one transaction
        reads and writes the run, so a change made meanwhile is never undone."""
        if status is not None and status not in ENDED_STATUSES and status != "running":
            raise InvalidArgument(
                f"status: a run can be ended as SUCCEEDED, FAILED or CANCELLED, or reopened as RUNNING, "
                f"not {status.upper()}"
            )
        removed = _tag_changes(set_tags, remove_tags)
        with self._store.write() as txn:
            run = self.load_run(txn, run_id)
            _refuse_deleted_run(run)
            if status is not None:
                if run.job_id:
                    raise FailedPrecondition(
                        f"run {run_id!r} belongs to job {run.job_id}; its status follows the job "
                        "(cancel the job with CancelJob instead)"
                    )
                if run.status in ENDED_STATUSES and status != "running" and run.status != status:
                    raise FailedPrecondition(
                        f"run {run_id!r} has already ended ({run.status}); reopen it (status RUNNING) "
                        "to end it otherwise"
                    )
                # Ending it again as it ended, or reopening a running run, is a repeat (a retried
                # call): the times stay.
                if run.status != status:
                    run.status = status
                    run.end_time = None if status == "running" else time.time()
            _refuse_parent_tag_change(run, set_tags, removed)
            run.tags.update(set_tags)
            for key in removed:
                run.tags.pop(key, None)
            _check_run_text(run)
            self.put_run(txn, run)
        return self.get_run(run_id)

    def delete_run(self, run_id: str) -> Run:
        """Soft-delete a run; refused while the job it belongs to has not ended."""
        with self._store.write() as txn:
            run = self.load_run(txn, run_id)
            if run.deleted_at is None:
                _refuse_unended_job(run)
                run.deleted_at, run.deleted_with_experiment = time.time(), False
                self.put_run(txn, run)
                txn.put("deleted_runs", (run.experiment, run_id), b"")
                _move_order_rows(txn, run.experiment, run_id, deleted=True)
                _count_runs(txn, run.experiment, -1)
        return self.get_run(run_id)

    def restore_run(self, run_id: str) -> Run:
        with self._store.write() as txn:
            run = self.load_run(txn, run_id)
            if run.deleted_at is not None:
                experiment = self._experiment(txn, run.experiment)
                if experiment.deleted_at is not None:
                    raise FailedPrecondition(
                        f"run {run_id!r} is in the deleted experiment {run.experiment!r}; restore the "
                        "experiment with RestoreExperiment (which restores the runs deleted with it)"
                    )
                run.deleted_at, run.deleted_with_experiment = None, False
                self.put_run(txn, run)
                txn.delete("deleted_runs", (run.experiment, run_id))
                _move_order_rows(txn, run.experiment, run_id, deleted=False)
                _count_runs(txn, run.experiment, 1)
        return self.get_run(run_id)

    def list_runs(
        self,
        experiment: str = "",
        statuses: Iterable[str] = (),
        params: dict[str, str] | None = None,
        metric_filters: Iterable[MetricFilter] = (),
        size: int = 0,
        token: str = "",
        tags: dict[str, str] | None = None,
        order: RunOrder | None = None,
        view: str = "active",
        texts: Iterable[TextFilter] = (),
        times: Iterable[TimeFilter] = (),
        orders: Iterable[SortKey] = (),
    ) -> tuple[list[Run], str]:
        """Newest first, or by a metric with `order`, or by the keys of `orders` in turn (equal
        runs by run id); every condition must hold."""
        if experiment:
            validate_name("experiment", experiment)
        wanted = set(statuses)
        unknown = sorted(wanted.difference(RUN_STATUSES))
        if unknown:
            raise InvalidArgument(
                f"status {unknown[0][:40]!r} is not a run status; use one of {', '.join(RUN_STATUSES)}"
            )
        _check_view(view)
        params = params or {}
        tags = tags or {}
        filters = list(metric_filters)
        text_filters, time_filters, sort_keys = list(texts), list(times), list(orders)
        for name, kind, count in (
            ("params", "params", len(params)),
            ("tags", "tags", len(tags)),
            ("metrics", "metric conditions", len(filters)),
            ("texts", "text conditions", len(text_filters)),
            ("times", "time conditions", len(time_filters)),
        ):
            if count > MAX_LIST_FILTERS:
                raise InvalidArgument(
                    f"{name}: a listing filters on at most {MAX_LIST_FILTERS:,} {kind}, got {count:,}; filter "
                    "on the ones that tell runs apart"
                )
        if len(sort_keys) > MAX_ORDER_KEYS:
            raise InvalidArgument(
                f"order_keys: a listing orders by at most {MAX_ORDER_KEYS} keys, got {len(sort_keys):,}; "
                "order by the ones that tell runs apart"
            )
        for i, f in enumerate(filters):
            check_metric_key(f.key, f"metrics[{i}].key")
            if math.isnan(f.value):
                raise InvalidArgument(
                    f"metrics[{i}].value is NaN, which no metric value compares true against; give a number"
                )
        text_tests = [check_text_filter(f, f"texts[{i}]") for i, f in enumerate(text_filters)]
        check_like_budget(text_filters)
        for i, t in enumerate(time_filters):
            if t.attribute not in ("start_time", "end_time"):
                raise InvalidArgument(
                    f"times[{i}].attribute: {t.attribute[:40]!r} is no time; use start_time or end_time"
                )
            if t.op not in _COMPARE:
                raise InvalidArgument(f"times[{i}].op: set a comparison (LT, LE, GT, GE, EQ or NE)")
        for i, k in enumerate(sort_keys):
            check_sort_key(k, f"order_keys[{i}]")
            if k.entity == "metrics":
                check_metric_key(k.key, f"order_keys[{i}].metric")
        if sort_keys and order is not None:
            raise InvalidArgument("order_by and order_keys are both set: give the order in one of them")
        if len(sort_keys) == 1 and sort_keys[0].entity == "metrics":
            # One metric: the order index answers it, as order_by.
            order = RunOrder(sort_keys[0].key, sort_keys[0].field, sort_keys[0].descending)
            sort_keys = []
        if order is not None:
            check_metric_key(order.metric, "order_by.metric")
            if order.descending is None:
                order = RunOrder(order.metric, order.field, default_mode(order.metric) == "max")
        query: dict[str, Any] = {
            "list": "runs",
            "experiment": experiment,
            "statuses": sorted(wanted),
            "params": params,
            "metrics": [f.__dict__ for f in filters],
        }
        # Added only when used, so tokens issued before these filters existed stay valid.
        for name, value in (
            ("tags", tags),
            ("order", order and order.__dict__),
            ("view", view),
            ("texts", [f.__dict__ for f in text_filters]),
            ("times", [t.__dict__ for t in time_filters]),
            ("orders", [k.__dict__ for k in sort_keys]),
        ):
            if value and value != "active":
                query[name] = value
        fill: PageFill[Run] = PageFill(size, query)
        after = resume_after(token, query)

        def matched(txn: ReadTxn, run_id: str) -> Run | None:
            """The run with its metric summaries when every condition holds."""
            run = self.load_run(txn, run_id)
            if not _in_view(run.deleted_at, view):
                return None
            if wanted and run.status not in wanted:
                return None
            if not all(param_matches(run.params.get(k), v) for k, v in params.items()) or not all(
                run.tags.get(k) == v for k, v in tags.items()
            ):
                return None
            for text_filter, test in zip(text_filters, text_tests, strict=True):
                stored = _text_of(run, text_filter)
                if stored is None or not test(stored):
                    return None
            for t in time_filters:
                at = run.start_time if t.attribute == "start_time" else run.end_time
                if at is None or not _COMPARE[t.op](epoch_milliseconds(at), t.value_ms):
                    return None
            for f in filters:
                summary = _summary(txn, run_id, f.key)
                if summary is None or not _COMPARE[f.op](summary.field(f.field), f.value):
                    return None
            return _with_summaries(txn, run)

        with self._store.read() as txn:
            # A first page says whether the experiment exists; a later page's token came from a
            # listing that found it, and an experiment's record is never removed.
            gone = bool(experiment) and not token and _deleted_at(txn, experiment) is not None
            # Keys are checked on a first page only. A deleted experiment's runs went with it,
            # which the client says with how to restore it: no key is doubted there.
            searched_params = list(params) + [f.key for f in text_filters if f.entity == "params"]
            check_keys = (
                not token
                and not (gone and view == "active")
                and bool(order or filters or searched_params or sort_keys)
            )
            names: list[str] = []
            if check_keys:
                names = [experiment] if experiment else [str(key[0]) for key, _ in txn.scan("experiments")]
            if check_keys and order is not None:
                unordered = _unlogged_metrics(txn, names, view, [order.metric])
                self._refuse_unlogged_keys(txn, experiment, names, view, unordered, purpose=" to order by")
            if check_keys and sort_keys:
                metric_keys = [k.key for k in sort_keys if k.entity == "metrics"]
                unordered = _unlogged_metrics(txn, names, view, metric_keys)
                self._refuse_unlogged_keys(txn, experiment, names, view, unordered, purpose=" to order by")
            # A filter on a metric no run in the view has logged matches none: the listing is skipped.
            unlogged = _unlogged_metrics(txn, names, view, [f.key for f in filters]) if check_keys else []
            candidates: Iterator[tuple[Key, Run]]
            if unlogged:
                candidates = iter(())
            elif sort_keys:
                candidates = self._sorted(txn, experiment, sort_keys, view, after, matched)
            elif order is None:
                newest = _newest_first(txn, experiment, unpack(after) if after else None, view)
                candidates = ((key, run) for key, run_id in newest if (run := matched(txn, run_id)))
            else:
                candidates = self._ordered(txn, experiment, order, view, after, matched)
            for key, run in candidates:
                if not fill.room(_run_bytes(run)):
                    break
                fill.add(key, run)
            if check_keys and not fill.page.items:
                self._refuse_unlogged_keys(txn, experiment, names, view, unlogged, searched_params)
        return fill.page.items, fill.page.next_page_token

    def _refuse_unlogged_keys(
        self,
        txn: ReadTxn,
        experiment: str,
        names: list[str],
        view: str,
        metrics: list[str],
        params: Iterable[str] = (),
        purpose: str = "",
    ) -> None:
        """NotFound for a metric (`metrics`: those the order index has no row of in `view`) or a
        param key that no run of the searched experiments (`names`) in `view` has logged, while
        none is running or interrupted (a daemon stopped mid-job; the job resumes it) and so may
        log it yet, as the CLI's leaderboard answers a metric no run has logged: a filter on it
        matches nothing and an order by it orders nothing, which an empty answer or an unchanged
        order would not tell from a misspelt key. Where the runs in `view` have logged no metric
        (their newest 100) or no param, there is no key to doubt, as on the leaderboard. The keys
        the message names are those of the runs in `view`, newest first."""
        unseen = dict.fromkeys(params)
        if not metrics and not unseen:
            return
        param_keys: set[str] = set()
        metric_keys: set[str] = set()
        read = 0
        for _, run_id in _newest_first(txn, experiment, None, view):
            run = self.load_run(txn, run_id)
            if not _in_view(run.deleted_at, view):
                continue
            if run.status in _MAY_LOG_YET:
                return
            param_keys.update(run.params)
            for key in unseen.keys() & run.params.keys():
                del unseen[key]
            if not metrics and not unseen:
                return
            if read < _RUNS_READ_FOR_KEYS:
                metric_keys.update(str(key[1]) for key, _ in txn.scan("metric_summaries", (run_id,)))
            read += 1
        if metrics and metric_keys:
            metric = metrics[0]
            elsewhere = any(
                run_order.logged(txn, name, metric, deleted)
                for name in names
                for deleted in (False, True)
                if deleted not in _VIEW_TABLES[view]
            )
            raise _unlogged("metric", metric, experiment, metric_keys, purpose, view if elsewhere else "")
        if unseen and param_keys:
            param = next(iter(unseen))
            elsewhere = any(param in run.params for run in self._outside_view(txn, experiment, view))
            raise _unlogged("param", param, experiment, param_keys, view=view if elsewhere else "")

    def _outside_view(self, txn: ReadTxn, experiment: str, view: str) -> Iterator[Run]:
        """The searched runs outside `view`, newest first."""
        if view == "all":
            return
        for _, run_id in _newest_first(txn, experiment, None, "deleted" if view == "active" else "active"):
            run = self.load_run(txn, run_id)
            if not _in_view(run.deleted_at, view):
                yield run

    @staticmethod
    def _ordered(
        txn: ReadTxn,
        experiment: str,
        order: RunOrder,
        view: str,
        after: bytes | None,
        matched: Callable[[ReadTxn, str], Run | None],
    ) -> Iterator[tuple[Key, Run]]:
        """The matching runs by `order` with their token keys (phase, rank, run id): the runs with
        a number from the order index, then those whose field is NaN newest first (phase 2), then
        those without the metric newest first (phase 1, as tokens from before NaN was kept say).

        Equal ranks keep newest first, so (rank, run id) orders runs totally and a page resumes
        exactly after the last run it showed, whatever was logged in between.
        """
        descending = bool(order.descending)
        last_id: str | None = None
        resume: tuple[bytes, str] | None = None
        missing = 0
        if after is not None:
            missing, rank, last_id = _order_position(after)
            resume = (run_order.order_value(-rank if descending else rank), last_id)
        names = [experiment] if experiment else [str(key[0]) for key, _ in txn.scan("experiments")]
        # The view picks the tables: active runs' rows and deleted runs' rows are apart.
        sources = [(name, deleted) for name in names for deleted in _VIEW_TABLES[view]]
        if missing == 0:
            ranked = run_order.ranked_across(txn, sources, order.metric, order.field, descending, resume)
            for _, run_id in ranked:
                run = matched(txn, run_id)
                if run is not None:
                    missing_now, value = _rank(txn, run_id, order)
                    yield (missing_now, _RANK_VALUE.pack(value), run_id), run
            last_id = None
        without = _RANK_VALUE.pack(0.0)
        if missing in (0, _NAN_PHASE):
            nan_after = None if last_id is None else (run_order.NAN_ROW, last_id)
            nan_field = run_order.nan_field(order.field)
            for _, run_id in run_order.ranked_across(txn, sources, order.metric, nan_field, True, nan_after):
                run = matched(txn, run_id)
                if run is not None:
                    yield (_NAN_PHASE, without, run_id), run
            last_id = None
        after_key: Key | None = None
        if last_id is not None:
            after_key = (experiment, last_id) if experiment else (last_id,)
        for _, run_id in _newest_first(txn, experiment, after_key, view):
            if txn.exists("metric_summaries", (run_id, order.metric)):
                continue
            run = matched(txn, run_id)
            if run is not None:
                yield (1, without, run_id), run

    @staticmethod
    def _sorted(
        txn: ReadTxn,
        experiment: str,
        keys: list[SortKey],
        view: str,
        after: bytes | None,
        matched: Callable[[ReadTxn, str], Run | None],
    ) -> Iterator[tuple[Key, Run]]:
        """The matching runs by `keys` in turn, then by run id, with their token keys (each key's
        value as the run had it, then the run id): a page resumes after the last run it showed,
        whatever was logged in between. Every matching run is read and sorted for each page."""
        last = _sort_values(after, keys) if after is not None else None
        found = []
        for _, run_id in _newest_first(txn, experiment, None, view):
            run = matched(txn, run_id)
            if run is None:
                continue
            values = [_sort_value(txn, run, k) for k in keys]
            position = sort_position(values, keys, run_id)
            if last is None or position > sort_position(last[0], keys, last[1]):
                found.append((position, values, run))
        found.sort(key=lambda item: item[0])
        for _, values, run in found:
            yield _sort_token_key(values, run.run_id), run

    def compare_runs(self, run_ids: list[str]) -> RunComparison:
        if len(run_ids) < 2:
            raise InvalidArgument(f"run_ids: compare needs two or more runs, got {len(run_ids)}")
        if "" in run_ids:
            raise InvalidArgument(
                f"run_ids[{run_ids.index('')}] is empty: give the id of each run to compare (see ListRuns)"
            )
        first_of: dict[str, int] = {}
        for i, run_id in enumerate(run_ids):
            if run_id in first_of:
                raise InvalidArgument(
                    f"run_ids[{i}]: run {run_id[:80]!r} is listed twice (run_ids[{first_of[run_id]}] names it "
                    "too); list each run once"
                )
            first_of[run_id] = i
        with self._store.read() as txn:
            runs = [_with_summaries(txn, self.load_run(txn, run_id)) for run_id in run_ids]
            # The answer carries each param and last metric twice: in its run and in the comparison.
            size = 2 * sum(_run_bytes(run) for run in runs)
            if size > MAX_PAGE_BYTES:
                # Two runs near their limits of params, tags and metric keys fit no comparison.
                instead = "compare fewer runs at a time" if len(runs) > 2 else "read each with GetRun"
                raise ResourceExhausted(
                    f"run_ids: the {len(runs)} runs take about {format_size(size)} compared, more than "
                    f"one answer holds ({format_size(MAX_PAGE_BYTES)}); {instead}"
                )
            # Counted once the runs fit one answer: only runs whose 2,000 answered summaries are
            # full are read past them, and about a dozen such runs fill an answer.
            keys = _distinct_keys(txn, runs)
            metric_keys = list(itertools.islice(keys, MAX_ANSWERED_METRICS))
            metrics_left_out = sum(1 for _ in keys)
        return RunComparison(runs, metric_keys, metrics_left_out)

    def list_run_metrics(self, run_id: str, size: int = 0, token: str = "") -> Page[MetricSummary]:
        """One page of the run's metric summaries in key order, those its answers leave out too."""
        with self._store.read() as txn:
            self.load_run(txn, run_id)
            return read_page(
                txn,
                "metric_summaries",
                (run_id,),
                query={"list": "metric_summaries", "run": run_id},
                page_token=token,
                requested_size=size,
                item=lambda _, raw: _summary_from(decode_record(raw, "metric_summary", 1)[1]),
            )

    def leaderboard(
        self, experiment: str, metric: str, mode: str | None, summary_field: str | None, limit: int
    ) -> list[tuple[Run, float]]:
        validate_name("experiment", experiment)
        check_metric_key(metric, "metric")
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0 for {DEFAULT_LEADERBOARD_LIMIT}), got {limit}")
        mode = mode or default_mode(metric)
        summary_field = summary_field or mode
        if summary_field == "best":
            # The order index holds no "best" rows: best is the metric's own extreme.
            summary_field = default_mode(metric)
        if summary_field not in ORDER_FIELDS:
            raise InvalidArgument(f"field {summary_field[:20]!r} is not one of last, min, max or best")
        limit = limit or DEFAULT_LEADERBOARD_LIMIT
        ranked: list[tuple[Run, float]] = []
        with self._store.read() as txn:
            # Its runs are deleted with it: an empty board would read as no run having the metric.
            _refuse_deleted_experiment(self._experiment(txn, experiment), "to rank its runs")
            leaders = run_order.leaders(txn, experiment, metric, summary_field, mode == "max")
            size = 0
            for run_id in itertools.islice(leaders, limit):
                run = _with_summaries(txn, self.load_run(txn, run_id))
                summary = _summary(txn, run_id, metric)
                assert summary is not None, "a run in the order index has the metric's summary"
                size += _run_bytes(run)
                # As a ListRuns page, a board holds one run whatever its size.
                if ranked and size > MAX_PAGE_BYTES:
                    raise ResourceExhausted(
                        f"limit: the top {len(ranked) + 1} runs by {metric!r} take more than one answer "
                        f"holds ({format_size(MAX_PAGE_BYTES)}); ask for limit {len(ranked)} or less, "
                        f"or page through ListRuns ordered by {metric!r}"
                    )
                ranked.append((run, summary.field(summary_field)))
        return ranked

    # -- params

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Add params to a run, running or ended (as MLflow does: a score measured after training
        belongs with the run); a param once logged cannot change value, and logging it again
        with its value is a repeat that holds (the SDK retries this call)."""
        check_entries("params", params, MAX_PARAM_VALUE)
        with self._store.write() as txn:
            run = self.load_run(txn, run_id)
            _refuse_deleted_run(run)
            for key, value in params.items():
                if key in run.params and run.params[key] != value:
                    raise FailedPrecondition(
                        f"params[{key!r}]: run {run_id!r} already has {key} = {run.params[key]!r}"
                        + _changed_param_advice(txn, run, key)
                    )
            run.params.update(params)
            _check_run_text(run)
            self.put_run(txn, run)

    # -- metrics

    @staticmethod
    def check_batch_length(count: int) -> None:
        """InvalidArgument for a batch of more than MAX_BATCH_POINTS points, checked before they
        are read."""
        if count > MAX_BATCH_POINTS:
            raise InvalidArgument(
                f"a LogMetrics request holds at most {MAX_BATCH_POINTS} points, this one {count}: send "
                "them in several calls (or LogMetricsStream batches), none of these is stored"
            )

    @staticmethod
    def check_points(points: list[MetricPoint]) -> None:
        checked: set[str] = set()
        for i, point in enumerate(points):
            if point.key not in checked:
                check_metric_key(point.key, f"points[{i}].key")
                # Only where a key is stored: reads still name keys stored before this rule.
                if hidden := hidden_character_problem(point.key):
                    raise InvalidArgument(f"points[{i}].key: metric key {point.key[:80]!r} {hidden}")
                checked.add(point.key)
            if point.step < 0:
                raise InvalidArgument(f"points[{i}].step must be >= 0, got {point.step}")
            if point.next_step and point.step:
                raise InvalidArgument(
                    f"points[{i}]: step is {point.step} and next_step is set; set the step, or next_step "
                    "alone for the step after the key's last"
                )

    def log_metrics(
        self,
        run_id: str,
        points: list[MetricPoint],
        *,
        external: bool = True,
        sequence: BatchSequence | None = None,
    ) -> Future[Logged]:
        """Queue a batch for the next group commit; the future gives what it stored once durable.

        External callers may log to a run that is not deleted, running or ended (a test-set score
        after training, as in MLflow): nothing reads an ended run's points as frozen, a sweep
        ranking its trials by their jobs' epoch events, not by their runs. Jobs log through the
        same path. A batch of a `sequence` is refused unstored once an earlier batch of it failed.
        """
        self.check_points(points)
        now = time.time()
        previous = None if sequence is None else sequence.last

        def work(txn: WriteTxn) -> Logged:
            if sequence is None:
                return store(txn)
            if sequence.failed or (previous is not None and previous.cancelled()):
                sequence.failed = True
                raise FailedPrecondition("an earlier batch of the stream failed; this one is not stored")
            try:
                return store(txn)
            except BaseException:
                sequence.failed = True
                raise

        def store(txn: WriteTxn) -> Logged:
            raw = txn.get("runs", (run_id,))
            if raw is None:
                raise NotFound(f"run {run_id[:80]!r} does not exist; create it with CreateRun first")
            data = decode_record(raw, "run", 1)[1]
            if external and "deleted_at" in data:
                _refuse_deleted_run(_run_from(data))
            _check_metric_room(txn, run_id, (point.key for point in points))
            return Logged(len(points), write_points(txn, data["experiment"], run_id, points, now))

        outcome = self._store.submit(work)
        if sequence is not None:
            sequence.watch(outcome)
        return outcome

    def metric_history(
        self,
        run_id: str,
        key: str,
        max_points: int,
        start_step: int,
        end_step: int | None,
        size: int = 0,
        token: str = "",
    ) -> HistoryPage:
        """One page of a metric's points in a step range (`end_step` None: to the last step):
        every point, or when the range holds more than `max_points`, exactly `max_points` of
        them: the first and last point, and the rest chosen over groups of equal step ranges,
        each group's extremes first (`_downsampled`).

        The first page fixes the answer (the steps of the range's first and last points, and
        the bucket level); the token carries it, so pages join into one answer.
        """
        check_metric_key(key, "key")
        if max_points < 0 or 0 < max_points < 4:
            raise InvalidArgument(
                f"max_points must be 0 (every point) or >= 4 (first, last, min and max are always "
                f"kept), got {max_points}"
            )
        if start_step < 0 or (end_step is not None and not 0 <= start_step <= end_step):
            raise InvalidArgument(
                f"start_step and end_step must be >= 0 with start_step <= end_step (end_step unset "
                f"for every step from start_step on), got {start_step} and {end_step}"
            )
        limit = history_page_size(size, key)
        query: dict[str, Any] = {
            "history": run_id,
            "key": key,
            "max": max_points,
            "start": start_step,
            "end": end_step or 0,
        }
        if end_step == 0:
            # Step 0 alone; an unset end keeps "end": 0, so tokens issued before it could be set
            # stay valid.
            query["end_set"] = True
        after = resume_after(token, query)
        groups = (max_points - 2) // 2
        metric = metric_prefix(run_id, key)
        position: tuple[int, ...]
        with self._store.read() as txn:
            self.load_run(txn, run_id)
            if after is None:
                last_step = MAX_STEP if end_step is None else end_step
                ends = metric_buckets.end_steps(txn, metric, start_step, last_step)
                if ends is None:
                    return HistoryPage([], 0, False, "")
                first, last = ends
                total = metric_buckets.count(txn, metric, first, last)
                if max_points == 0 or total <= max_points:
                    level, position = _EVERY_POINT, (first,)
                else:
                    level, position = Grouping.plan(first, last, groups).level, (0, 0, 0, 0)
            else:
                level, first, last, position = _history_position(after, groups)
                total = metric_buckets.count(txn, metric, first, last)
            following: tuple[int, ...] | None
            if level == _EVERY_POINT:
                points, step = _every_point(txn, metric, key, position[0], last, limit)
                following = (step,) if step >= 0 else None
            else:
                grouping = Grouping(first, last, level, groups)
                points, cursor = _downsampled(
                    txn, metric, key, grouping, max_points, total, _Cursor._make(position), limit
                )
                following = None if cursor is None else tuple(cursor)
        next_token = "" if following is None else make_token(pack((level, first, last, *following)), query)
        return HistoryPage(points, total, level != _EVERY_POINT, next_token)

    def truncate_metrics_after(self, txn: WriteTxn, run_id: str, step: int) -> None:
        """Drop every point after `step` (a resumed attempt supersedes them); buckets and
        summaries are brought along exactly."""
        experiment = _experiment_of(txn, run_id)
        for key, _ in list(txn.scan("metric_summaries", (run_id,))):
            metric = str(key[1])
            doomed = [k for k, _ in txn.scan("metrics", (run_id, metric), after=(run_id, metric, step))]
            if not doomed:
                continue
            for k in doomed:
                txn.delete("metrics", k)
            metric_buckets.truncate(txn, metric_prefix(run_id, metric), step)
            _refresh_summary(txn, experiment, run_id, metric)

    def copy_metrics_through(
        self,
        source_run_id: str,
        run_id: str,
        step: int,
        finish: Callable[[WriteTxn], object],
        chunk_points: int = MAX_BATCH_POINTS,
        at_step_only: Collection[str] | None = None,
    ) -> None:
        """Copy `source_run_id`'s points up to `step`, with their times, into `run_id` (a job
        resumed from that run's job's checkpoint of `step`: its curve is one from the start), at
        most `chunk_points` per write transaction, so that a long curve neither builds in memory
        nor holds the store's writer; `finish` runs in the last one. Copying again writes the
        same points: a copy cut off goes on by starting over. `at_step_only`: the keys whose
        points at `step` itself are copied, the others' only up to the step before (a checkpoint
        part way through an epoch: the resumed job logs that epoch's metrics at its end)."""
        with self._store.read() as txn:
            keys = [str(key[1]) for key, _ in txn.scan("metric_summaries", (source_run_id,))]
        last = {key: step if at_step_only is None or key in at_step_only else step - 1 for key in keys}
        position: tuple[int, int] | None = (0, 0)
        while position is not None:
            with self._store.write() as txn:
                position = self._copy_chunk(txn, source_run_id, run_id, last, keys, position, chunk_points)
                if position is None:
                    finish(txn)

    @staticmethod
    def _copy_chunk(
        txn: WriteTxn,
        source_run_id: str,
        run_id: str,
        last: dict[str, int],
        keys: list[str],
        position: tuple[int, int],
        chunk_points: int,
    ) -> tuple[int, int] | None:
        """Copy up to `chunk_points` points from `position` (the key's index, its first step), each
        key's up to its `last` step; returns where the next chunk starts, None when every key is
        done."""
        experiment = _experiment_of(txn, run_id)
        points: list[MetricPoint] = []
        index, first = position
        while index < len(keys) and len(points) < chunk_points:
            metric = metric_prefix(source_run_id, keys[index])
            wanted = chunk_points - len(points)
            taken = 0
            for raw_key, raw in txn.packed_range(
                "metrics", point_key(metric, first), point_key(metric, last[keys[index]]), limit=wanted
            ):
                value, at = decode_metric_point(raw)
                first = trailing_int(raw_key) + 1
                points.append(MetricPoint(keys[index], value, first - 1, at))
                taken += 1
            if taken < wanted:
                index, first = index + 1, 0
        if points:
            write_points(txn, experiment, run_id, points, time.time())
        return (index, first) if index < len(keys) else None

    def build_missing_buckets(self, progress_every_s: float = 5.0) -> None:
        """Build the buckets of every metric once, for a store written before they existed.

        Runs at start, before anything reads or writes metrics; logs progress every few seconds.
        An interrupted build starts over at the next start (rebuilding a key is idempotent).
        """
        points = 0

        def rebuild(txn: WriteTxn, key: Key, raw: bytes) -> None:
            nonlocal points
            run_id, metric = str(key[0]), str(key[1])
            points += metric_buckets.rebuild(txn, metric_prefix(run_id, metric))
            _refresh_summary(txn, _experiment_of(txn, run_id), run_id, metric)

        passed = self._each_row_once(
            "metric_summaries",
            BUCKETS_BUILT,
            64,
            rebuild,
            "building metric history summaries",
            lambda: {"points": points},
            progress_every_s,
            started_message="building metric history summaries (once, for a store from an older tesserad)",
        )
        if passed is not None and passed.rows:
            log.info(
                "built metric history summaries",
                extra={"metrics": passed.done, "points": points, "seconds": passed.seconds},
            )

    def rebuild_nonfinite_metrics(self, progress_every_s: float = 5.0) -> None:
        """Rebuild, once, the buckets and summary of each metric holding NaN or infinite points
        that jobs stored before tracking refused them (a daemon of that time extended its buckets
        as if NaN compared like a number), so its extremes skip NaN as one written today does; the
        points themselves stay, as MLflow keeps them. Its marker is the one of the purge that
        daemons between dropped such points with: a store they went through holds none. An
        interrupted rebuild starts over at the next start (it is idempotent)."""
        affected = 0

        def rebuild(txn: WriteTxn, summary_key: Key, raw: bytes) -> None:
            nonlocal affected
            run_id, key = str(summary_key[0]), str(summary_key[1])
            metric = metric_prefix(run_id, key)
            if not metric_buckets.nonfinite_points(txn, metric):
                return
            metric_buckets.rebuild(txn, metric)
            _refresh_summary(txn, _experiment_of(txn, run_id), run_id, key)
            affected += 1

        passed = self._each_row_once(
            "metric_summaries",
            NONFINITE_PURGED,
            64,
            rebuild,
            "looking for non-finite metric points (once, for a store from an older tesserad)",
            dict,
            progress_every_s,
        )
        if passed is not None and affected:
            log.warning(
                "rebuilt the summaries of metrics holding non-finite points",
                extra={"metrics": affected, "seconds": passed.seconds},
            )

    def index_run_order(self, progress_every_s: float = 5.0) -> None:
        """Build the order index anew from every stored summary once, for a store written before
        it or since by a daemon that did not keep it.

        Runs at start, after the other metric upgrades; logs progress every few seconds. An
        interrupted pass starts over at the next start (it empties the index first).
        """
        experiments: dict[str, tuple[str, bool]] = {}

        def index(txn: WriteTxn, summary_key: Key, raw: bytes) -> None:
            nonlocal experiments
            run_id, key = str(summary_key[0]), str(summary_key[1])
            if run_id not in experiments:
                # Summaries come run by run: one run's experiment is enough to keep.
                experiment = _experiment_of(txn, run_id)
                experiments = {run_id: (experiment, txn.exists("deleted_runs", (experiment, run_id)))}
            experiment, deleted = experiments[run_id]
            summary = decode_record(raw, "metric_summary", 1)[1]
            run_order.update(txn, experiment, run_id, key, None, _order_fields(summary), deleted)

        passed = self._each_row_once(
            "metric_summaries",
            ORDER_INDEXED,
            512,
            index,
            "indexing runs by their metrics",
            dict,
            progress_every_s,
            started_message="indexing runs by their metrics (once, for a store from an older tesserad)",
            rebuilt=(run_order.TABLE, run_order.DELETED_TABLE),
        )
        if passed is not None and passed.rows:
            log.info(
                "indexed runs by their metrics", extra={"metrics": passed.done, "seconds": passed.seconds}
            )

    def move_deleted_runs_order(self, progress_every_s: float = 5.0) -> None:
        """Move deleted runs' rows out of the order index once, for a store written while they
        stayed there (Leaderboard read through them).

        Runs at start, after the order index is built; an interrupted pass starts over at the
        next start (a moved row stays moved).
        """

        def move(txn: WriteTxn, key: Key, raw: bytes) -> None:
            _move_order_rows(txn, str(key[0]), str(key[1]), deleted=True)

        passed = self._each_row_once(
            "deleted_runs",
            DELETED_ORDER_MOVED,
            64,
            move,
            "moving deleted runs out of the order index",
            dict,
            progress_every_s,
            started_message="moving deleted runs out of the order index (once, for a store from an "
            "older tesserad)",
        )
        if passed is not None and passed.rows:
            log.info(
                "moved deleted runs out of the order index",
                extra={"runs": passed.done, "seconds": passed.seconds},
            )

    def count_experiment_runs(self, progress_every_s: float = 5.0) -> None:
        """Count every experiment's active runs once, for a store written before the counts.

        Runs at start; an interrupted pass starts over at the next start (a count is written
        whole, from the experiment's runs less its deleted ones).
        """

        def count(txn: WriteTxn, key: Key, raw: bytes) -> None:
            name = str(key[0])
            active = txn.count("experiment_runs", (name,)) - txn.count("deleted_runs", (name,))
            _put_run_count(txn, name, active)

        passed = self._each_row_once(
            "experiments",
            RUNS_COUNTED,
            64,
            count,
            "counting the runs of experiments",
            dict,
            progress_every_s,
            started_message="counting the runs of experiments (once, for a store from an older tesserad)",
        )
        if passed is not None and passed.rows:
            log.info(
                "counted the runs of experiments",
                extra={"experiments": passed.done, "seconds": passed.seconds},
            )

    def count_run_metrics(self, progress_every_s: float = 5.0) -> None:
        """Count every run's metric keys once, for a store written before the counts.

        Runs at start, after the passes that may drop summaries; an interrupted pass starts over
        at the next start (a count is written whole, from the run's summaries). Runs from before
        the cap that hold more keys than it keep them, take no new ones, and are logged.
        """
        over: list[str] = []

        def count(txn: WriteTxn, key: Key, raw: bytes) -> None:
            run_id = str(key[0])
            held = txn.count("metric_summaries", (run_id,))
            _put_metric_count(txn, run_id, held)
            if held > MAX_RUN_METRICS:
                over.append(run_id)

        passed = self._each_row_once(
            "runs",
            METRICS_COUNTED,
            64,
            count,
            "counting the metric keys of runs",
            dict,
            progress_every_s,
            started_message="counting the metric keys of runs (once, for a store from an older tesserad)",
        )
        if passed is not None and passed.rows:
            log.info(
                "counted the metric keys of runs", extra={"runs": passed.done, "seconds": passed.seconds}
            )
        if over:
            log.warning(
                "runs hold more metric keys than a run may now take; they take no new keys, and "
                "answer the first of them by key (the rest by their history)",
                extra={"runs": len(over), "run_ids": over[:10], "max_run_metrics": MAX_RUN_METRICS},
            )

    def drop_early_stopping_off_params(self, progress_every_s: float = 5.0) -> None:
        """Drop, once, the early_stopping.* params of each job's run whose spec left early stopping
        off (patience 0), which jobs recorded before they recorded them only for a spec that turns
        it on: runs from before and after then compare and filter alike. A run not made by a job
        keeps the params it was given. An interrupted pass starts over at the next start."""
        dropped = 0

        def drop(txn: WriteTxn, key: Key, raw: bytes) -> None:
            nonlocal dropped
            data = decode_record(raw, "run", 1)[1]
            kept = without_early_stopping_off(data["params"]) if data["job_id"] else None
            if kept is not None:
                txn.put("runs", key, encode_record("run", 1, {**data, "params": kept}))
                dropped += 1

        passed = self._each_row_once(
            "runs",
            EARLY_STOPPING_OFF_DROPPED,
            64,
            drop,
            "dropping the early_stopping params of runs without early stopping",
            lambda: {"dropped": dropped},
            progress_every_s,
        )
        if passed is not None and dropped:
            log.info(
                "dropped the early_stopping params of job runs without early stopping",
                extra={"runs": dropped, "seconds": passed.seconds},
            )

    def _each_row_once(
        self,
        table: str,
        marker: tuple[str],
        batch: int,
        visit: Callable[[WriteTxn, Key, bytes], None],
        progress_message: str,
        progress_extra: Callable[[], dict[str, Any]],
        progress_every_s: float,
        started_message: str | None = None,
        rebuilt: tuple[str, ...] = (),
    ) -> _Pass | None:
        """The store's `each_row_once` for the start-up upgrades, logging as it goes: None when
        `marker` was there already; progress every `progress_every_s` seconds."""
        noun = _PASS_ROWS[table]
        with self._store.read() as txn:
            if txn.exists("meta", marker):
                return None
            total = txn.count(table)
        if total and started_message is not None:
            log.info(started_message, extra={noun: total})
        started = reported = time.monotonic()

        def visit_row(txn: WriteTxn, key: Key, raw: bytes) -> bool:
            visit(txn, key, raw)
            return True  # each_row_once then counts the rows visited

        def progress(done: int) -> None:
            nonlocal reported
            if time.monotonic() - reported >= progress_every_s:
                reported = time.monotonic()
                log.info(progress_message, extra={f"{noun}_done": done, noun: total, **progress_extra()})

        done = each_row_once(
            self._store, table, marker, visit_row, batch=batch, rebuilt=rebuilt, committed=progress
        )
        return _Pass(total, done, round(time.monotonic() - started, 1))


def _rank(txn: ReadTxn, run_id: str, order: RunOrder) -> tuple[int, float]:
    """Where a run sorts: (0, value, negated when descending), or (1, 0.0) without the metric.
    Read from the summary's row: the metric may be one a run answers without (metrics_left_out)."""
    summary = _summary(txn, run_id, order.metric)
    if summary is None:
        return 1, 0.0
    value = summary.field(order.field)
    return 0, -value if order.descending else value


def _newest_first(txn: ReadTxn, experiment: str, after: Key | None, view: str) -> Iterator[tuple[Key, str]]:
    """(key, run id) of the experiment's runs, or of all runs, newest first, after `after` (a key
    of the table read: experiment_runs with an experiment, runs without). An experiment's deleted
    runs are read from deleted_runs, keyed as experiment_runs is, so its active runs cost nothing."""
    if experiment:
        table = "deleted_runs" if view == "deleted" else "experiment_runs"
        for key, _ in txn.scan(table, (experiment,), after=after, reverse=True):
            yield key, str(key[1])
    else:
        for key, _ in txn.scan("runs", after=after, reverse=True):
            yield key, str(key[0])


def _text_of(run: Run, f: TextFilter) -> str | None:
    """The text a TextFilter reads from `run`; None when the run has no such key."""
    if f.entity == "params":
        return run.params.get(f.key)
    if f.entity == "tags":
        return run.tags.get(f.key)
    if f.key == "parent_run_id":
        return run.parent_run_id or None
    return run.name if f.key == "run_name" else run.run_id


def _sort_value(txn: ReadTxn, run: Run, key: SortKey) -> float | str | None:
    """The value a run sorts by for `key`; None when it has none."""
    if key.entity == "metrics":
        summary = _summary(txn, run.run_id, key.key)
        return None if summary is None else summary.field(key.field)
    if key.entity == "params":
        return run.params.get(key.key)
    value: float | str | None = {
        "start_time": run.start_time,
        "end_time": run.end_time,
        "run_name": run.name,
        "status": run.status,
    }[key.key]
    return value


def _is_number_key(key: SortKey) -> bool:
    return key.entity == "metrics" or key.key in ("start_time", "end_time")


def _sort_token_key(values: list[float | str | None], run_id: str) -> Key:
    """A run's place in a sorted listing as a token key: per sort key 1 and "" without a
    value, else 0 and the value (a number as its 8 bytes); then the run id."""
    parts: list[int | str | bytes] = []
    for value in values:
        if value is None:
            parts += [1, ""]
        else:
            parts += [0, _RANK_VALUE.pack(value) if isinstance(value, float) else value]
    parts.append(run_id)
    return tuple(parts)


def _sort_values(after: bytes, keys: list[SortKey]) -> tuple[list[float | str | None], str]:
    """The values and run id `_sort_token_key` packed; InvalidArgument for a token of another shape."""
    key = unpack(after)
    if len(key) != 2 * len(keys) + 1 or not isinstance(key[-1], str):
        raise foreign_token()
    values: list[float | str | None] = []
    for i, k in enumerate(keys):
        missing, raw = key[2 * i], key[2 * i + 1]
        if missing == 1 and raw == "":
            values.append(None)
        elif missing == 0 and _is_number_key(k) and isinstance(raw, bytes) and len(raw) == _RANK_VALUE.size:
            values.append(_RANK_VALUE.unpack(raw)[0])
        elif missing == 0 and not _is_number_key(k) and isinstance(raw, str):
            values.append(raw)
        else:
            raise foreign_token()
    return values, key[-1]


def _order_position(after: bytes) -> tuple[int, float, str]:
    """(0 with the metric or 1 without, rank, run id) from an ordered page token."""
    key = unpack(after)
    if not (
        len(key) == 3
        and key[0] in (0, 1, _NAN_PHASE)
        and isinstance(key[1], bytes)
        and len(key[1]) == _RANK_VALUE.size
        and isinstance(key[2], str)
    ):
        raise foreign_token()
    rank = _RANK_VALUE.unpack(key[1])[0]
    if math.isnan(rank):
        raise foreign_token()
    return int(key[0]), rank, key[2]


def _order_fields(summary: dict[str, Any]) -> dict[str, float]:
    return {name: summary[name] for name in ORDER_FIELDS}


def _refresh_summary(txn: WriteTxn, experiment: str, run_id: str, key: str) -> None:
    """Recompute a key's summary from its top-level buckets and its last point, and move the
    run's rows in the order index with it."""
    metric = metric_prefix(run_id, key)
    raw = txn.get("metric_summaries", (run_id, key))
    old = None if raw is None else _order_fields(decode_record(raw, "metric_summary", 1)[1])
    deleted = txn.exists("deleted_runs", (experiment, run_id))
    totals = metric_buckets.totals(txn, metric)
    last = metric_buckets.last_point(txn, metric)
    if totals is None or last is None:
        if txn.delete("metric_summaries", (run_id, key)):
            _count_metrics(txn, run_id, -1)
        run_order.update(txn, experiment, run_id, key, old, None, deleted)
        return
    if raw is None:
        _count_metrics(txn, run_id, 1)
    low, high = totals.low.value, totals.high.value
    best = low if default_mode(key) == "min" else high
    summary = MetricSummary(key, last.value, low, high, best, totals.points, last.step)
    txn.put("metric_summaries", (run_id, key), encode_record("metric_summary", 1, summary.__dict__))
    run_order.update(txn, experiment, run_id, key, old, _order_fields(summary.__dict__), deleted)


def _move_order_rows(txn: WriteTxn, experiment: str, run_id: str, deleted: bool) -> None:
    """Move the run's rows in the order index to the deleted runs' table or back, in `txn`."""
    for key, raw in txn.scan("metric_summaries", (run_id,)):
        summary = decode_record(raw, "metric_summary", 1)[1]
        run_order.move(txn, experiment, run_id, str(key[1]), _order_fields(summary), deleted)


def _run_count(txn: ReadTxn, experiment: str) -> int:
    raw = txn.get(RUN_COUNTS, (experiment,))
    return 0 if raw is None else int(_RUN_COUNT.unpack(raw)[0])


def _put_run_count(txn: WriteTxn, experiment: str, count: int) -> None:
    txn.put(RUN_COUNTS, (experiment,), _RUN_COUNT.pack(count))


def _count_runs(txn: WriteTxn, experiment: str, change: int) -> None:
    """Move the experiment's count of active runs by `change`, in the caller's transaction."""
    if change:
        _put_run_count(txn, experiment, _run_count(txn, experiment) + change)


def _metric_count(txn: ReadTxn, run_id: str) -> int:
    raw = txn.get(METRIC_COUNTS, (run_id,))
    return 0 if raw is None else int(_RUN_COUNT.unpack(raw)[0])


def _put_metric_count(txn: WriteTxn, run_id: str, count: int) -> None:
    if count:
        txn.put(METRIC_COUNTS, (run_id,), _RUN_COUNT.pack(count))
    else:
        txn.delete(METRIC_COUNTS, (run_id,))


def _count_metrics(txn: WriteTxn, run_id: str, change: int) -> None:
    """Move the run's count of metric keys by `change`, in the caller's transaction."""
    _put_metric_count(txn, run_id, _metric_count(txn, run_id) + change)


def _new_keys(txn: ReadTxn, run_id: str, keys: Iterable[str]) -> list[str]:
    """The distinct `keys` the run has no summary of yet, in their order."""
    return [key for key in dict.fromkeys(keys) if not txn.exists("metric_summaries", (run_id, key))]


def _check_metric_room(txn: ReadTxn, run_id: str, keys: Iterable[str]) -> None:
    """ResourceExhausted when the keys new to the run would take it past MAX_RUN_METRICS."""
    new = _new_keys(txn, run_id, keys)
    held = _metric_count(txn, run_id)
    if new and held + len(new) > MAX_RUN_METRICS:
        raise ResourceExhausted(
            f"points: run {run_id!r} has {held:,} metric keys and this batch adds {len(new):,} new ones "
            f"({new[0][:80]!r} first); a run holds at most {MAX_RUN_METRICS:,} distinct metric keys. "
            "Log to the keys the run has, or log these to another run (CreateRun)"
        )


def tracked_run_experiment(txn: ReadTxn, run_id: str) -> str:
    """The experiment of the run a registered version names as its own (UploadVersionHeader.run_id):
    NotFound when there is none, FailedPrecondition when it is deleted."""
    check_label("run_id", run_id)
    raw = txn.get("runs", (run_id,))
    if raw is None:
        raise NotFound(
            f"run_id: run {run_id[:80]!r} does not exist; ListRuns lists them (`tessera runs ls`). A run "
            "of another tracker goes in lineage.run_id, which is not checked"
        )
    run = _run_from(decode_record(raw, "run", 1)[1])
    if run.deleted_at is not None:
        raise FailedPrecondition(
            f"run_id: run {run_id!r} is deleted; restore it with RestoreRun (`tessera runs restore "
            f"{run_id}`) to register a version from it"
        )
    return run.experiment


def _experiment_of(txn: ReadTxn, run_id: str) -> str:
    """The experiment of a stored run (every summary belongs to one)."""
    raw = txn.get("runs", (run_id,))
    if raw is None:
        raise NotFound(f"run {run_id[:80]!r} does not exist")
    return str(decode_record(raw, "run", 1)[1]["experiment"])


def write_points(txn: WriteTxn, experiment: str, run_id: str, points: list[MetricPoint], now: float) -> int:
    """Store the points (of points at one step, the last written wins; a `next_step` point at the
    step after its key's highest) and update their keys' buckets and summaries, in `txn`; returns
    how many points replaced a different value (stored before, or earlier in `points`), which a
    caller is told: MLflow keeps both. A point whose value is already there changes nothing, its
    time included: a resend (a retried call, whose points may take the daemon's clock again) keeps
    the time first stored. A `next_step` point sent again is stored again, at the next step, as
    MLflow's history keeps a retried log_metric twice.

    NaN and infinite values are kept, as MLflow keeps them (a loss that diverged says so): buckets
    and summaries skip NaN for their extremes (`metric_buckets`), the order index keeps NaN apart
    (`run_order`). Buckets and summaries are updated once per key per batch, which keeps ingest
    near the cost of the puts themselves.
    """
    by_key: dict[str, dict[int, Sample]] = {}
    # Per key a next_step point reads, the point at its highest step so far (None: it has none).
    last_of: dict[str, Sample | None] = {}
    replaced = 0
    for point in points:
        samples = by_key.setdefault(point.key, {})
        step = point.step
        if point.next_step:
            if point.key not in last_of:
                last_of[point.key] = metric_buckets.last_point(txn, metric_prefix(run_id, point.key))
                for sample in samples.values():
                    _note_last(last_of, point.key, sample)
            last = last_of[point.key]
            step = 0 if last is None else last.step + 1
        earlier = samples.get(step)
        if earlier is not None and same_value(earlier.value, point.value):
            continue
        replaced += earlier is not None
        sample = Sample(step, point.value, now if point.time is None else point.time)
        samples[step] = sample
        if point.key in last_of:
            _note_last(last_of, point.key, sample)
    # A job's keys past the cap stay in its events, as LogMetrics refuses them to a caller.
    room = MAX_RUN_METRICS - _metric_count(txn, run_id)
    for key in _new_keys(txn, run_id, by_key)[max(room, 0) :]:
        del by_key[key]
    put = txn.put_packed
    for key, batch in by_key.items():
        metric = metric_prefix(run_id, key)
        written, rewritten = [], []
        for sample in batch.values():
            raw_key = point_key(metric, sample.step)
            value = encode_metric_point(sample.value, sample.time)
            if not put("metrics", raw_key, value, overwrite=False):
                stored = txn.get_packed("metrics", raw_key)
                if stored is not None and same_value(decode_metric_point(stored)[0], sample.value):
                    continue
                replaced += stored is not None
                put("metrics", raw_key, value)
                rewritten.append(sample.step)
            written.append(sample)
        if written:
            metric_buckets.add(txn, metric, written, rewritten)
            _refresh_summary(txn, experiment, run_id, key)
    return replaced


def same_value(a: float, b: float) -> bool:
    """Whether two metric values are the same point's: equal, or both NaN."""
    return a == b or (a != a and b != b)


def _note_last(last_of: dict[str, Sample | None], key: str, sample: Sample) -> None:
    """Keep `sample` as `key`'s point at its highest step where it is higher."""
    last = last_of[key]
    if last is None or sample.step >= last.step:
        last_of[key] = sample


def _history_position(after: bytes, groups: int) -> tuple[int, int, int, tuple[int, ...]]:
    """(level, first step, last step, where the next page starts) from a history page token:
    (step,) for every point, the fields of a `_Cursor` for a downsampled answer."""
    try:
        position = unpack(after)
    except (ValueError, IndexError):
        raise foreign_token() from None
    if len(position) not in (4, 7) or not all(isinstance(part, int) for part in position):
        raise foreign_token()
    level, first, last, *rest = (int(part) for part in position)
    if not 0 <= first <= last <= MAX_STEP:
        raise foreign_token()
    if level == _EVERY_POINT:
        within = len(rest) == 1 and first <= rest[0] <= last
    else:
        # The level is the one the first page planned: any other would read more than planned.
        # At most 2 * groups + 1 interior points are chosen (max_points - 2).
        group, taken, seen, sent = rest if len(rest) == 4 else (-1, -1, -1, -1)
        within = (
            0 <= group < groups
            and 0 <= taken <= 2 * groups + 1
            and seen >= 0
            and sent >= 0
            and level == Grouping.plan(first, last, groups).level
        )
    if not within:
        raise foreign_token()
    return level, first, last, tuple(rest)


def _every_point(
    txn: ReadTxn, metric: bytes, key: str, first: int, last: int, limit: int
) -> tuple[list[MetricPoint], int]:
    """Up to `limit` points from step `first` to `last`, and the step the next page starts at
    (-1: none)."""
    points: list[MetricPoint] = []
    for raw_key, raw in txn.packed_range(
        "metrics", point_key(metric, first), point_key(metric, last), limit=limit + 1
    ):
        step = trailing_int(raw_key)
        if len(points) == limit:
            return points, step
        value, at = decode_metric_point(raw)
        points.append(MetricPoint(key, value, step, at))
    return points, -1


class _Cursor(NamedTuple):
    """Where a page of a downsampled answer starts: the group, the interior points chosen in the
    groups before it and those the groups before it hold, and how many of the group's own points
    earlier pages sent."""

    group: int
    taken: int
    seen: int
    sent: int


def interior_quota(budget: int, remaining: int, points: int, groups_left: int) -> int:
    """How many of a group's `points` interior points (neither the range's first nor its last
    point) a downsampled answer keeps, with `budget` interior points still to choose in this
    group and the groups after it (`groups_left` in all), which hold `remaining` of them.

    An even share of the budget, but at least what the later groups are short of and at most
    what the group holds: so sparse groups pass their share on to later ones, and where the
    later ones are sparse, earlier ones keep more. Group by group this chooses exactly the
    budget when it is at most the points there are.
    """
    share = budget // groups_left
    short = budget - (remaining - points)
    return max(0, min(max(share, short), points, budget))


def _downsampled(
    txn: ReadTxn,
    metric: bytes,
    key: str,
    grouping: Grouping,
    max_points: int,
    total: int,
    cursor: _Cursor,
    limit: int,
) -> tuple[list[MetricPoint], _Cursor | None]:
    """Up to `limit` points of a downsampled answer from `cursor`, and where the next page
    starts (None: the answer is complete).

    The answer holds the range's first and last point and max_points - 2 interior points,
    chosen group by group (`interior_quota`); `total` (> max_points) is the range's points.
    """
    better_low = default_mode(key) == "min"
    points: list[MetricPoint] = []
    group, taken, seen, sent = cursor
    span = 0
    while group < grouping.groups:
        # Groups keep about two points each: fetch the extremes of about as many as fill the
        # page, and of twice as many after a run of empty groups, which sparse steps leave.
        span = max(1, (limit - len(points) + 1) // 2, 2 * span)
        stop = min(grouping.groups, group + span)
        for g, held, low, high in grouping.extremes(txn, metric, group, stop):
            span = 0
            interior = held - (g == 0) - (g == grouping.groups - 1)
            quota = interior_quota(max_points - 2 - taken, total - 2 - seen, interior, grouping.groups - g)
            extremes = (low, high) if better_low else (high, low)
            chosen = _group_points(txn, metric, grouping, g, held, quota, extremes)
            page = chosen[sent : sent + limit - len(points)]
            points.extend(MetricPoint(key, s.value, s.step, s.time) for s in page)
            if sent + len(page) < len(chosen):
                return points, _Cursor(g, taken, seen, sent + len(page))
            taken, seen, sent = taken + quota, seen + interior, 0
            if len(points) == limit:
                return points, _Cursor(g + 1, taken, seen, 0) if g + 1 < grouping.groups else None
        group = stop
    return points, None


def _group_points(
    txn: ReadTxn,
    metric: bytes,
    grouping: Grouping,
    group: int,
    held: int,
    quota: int,
    extremes: tuple[Sample, Sample],
) -> list[Sample]:
    """A group's points in a downsampled answer, in step order: the range's first or last point
    where the group holds it, and `quota` of its other points: its extremes (the metric's better
    one first), then points at evenly spaced ranks among the rest."""
    first, last = group == 0, group == grouping.groups - 1
    if not (first or last) and (quota < 2 or (quota == 2 and extremes[0].step != extremes[1].step)):
        # Most groups: their extremes alone (a read of a thousand groups makes no more objects).
        return sorted(extremes[:quota])
    ends: dict[int, Sample] = {}
    for end, held_here in ((grouping.first, first), (grouping.last, last)):
        raw = txn.get_packed("metrics", point_key(metric, end)) if held_here else None
        if raw is not None:
            ends[end] = Sample(end, *decode_metric_point(raw))
    chosen: dict[int, Sample] = {}
    for sample in extremes:
        if len(chosen) < quota and sample.step not in ends:
            chosen.setdefault(sample.step, sample)
    if len(chosen) < quota:
        low, high = grouping.steps(group, group + 1)
        taken = ends.keys() | chosen.keys()
        for sample in metric_buckets.spread(txn, metric, low, high, held, taken, quota - len(chosen)):
            chosen[sample.step] = sample
    return sorted([*ends.values(), *chosen.values()])
