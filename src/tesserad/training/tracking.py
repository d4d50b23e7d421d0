"""Experiment tracking: experiments, runs, params and metrics.

Metrics are stored as `run | key | step -> (value, timestamp)` with a per-(run, key) summary
(last, min, max, best, count) updated in the same transaction, through the store's group
commit, so an ingest of many small batches costs a handful of fsyncs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tesserad.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tesserad.ids import new_id
from tesserad.names import validate_name
from tesserad.paging import make_token, page_size, resume_after
from tesserad.store import (
    ReadTxn,
    Store,
    WriteTxn,
    decode_metric_point,
    decode_record,
    encode_metric_point,
    encode_record,
    pack,
    unpack,
)

TABLES = ["experiments", "runs", "run_names", "experiment_runs", "metrics", "metric_summaries"]

RUN_STATUSES = ("running", "succeeded", "failed", "cancelled", "interrupted")
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
DEFAULT_LEADERBOARD_LIMIT = 10


def default_mode(metric: str) -> str:
    """min for names containing "loss" or "error", else max."""
    lowered = metric.lower()
    return "min" if "loss" in lowered or "error" in lowered else "max"


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


class MetricPoint(NamedTuple):
    """One point; a named tuple because ingest builds a hundred thousand of them a second."""

    key: str
    value: float
    step: int
    time: float | None = None  # wall clock; server time when None


@dataclass(frozen=True)
class MetricFilter:
    key: str
    field: str  # last, min, max
    op: str  # lt, le, gt, ge, eq
    value: float


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
}


def _run_from(data: dict[str, Any]) -> Run:
    return Run(**{k: v for k, v in data.items() if k != "metrics"})


def _run_data(run: Run) -> dict[str, Any]:
    return {
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


def _summary_from(data: dict[str, Any]) -> MetricSummary:
    return MetricSummary(**data)


def check_metric_key(key: str, where: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or any(c in key for c in "\x00\n"):
        raise InvalidArgument(
            f"{where}: metric key {key[:80]!r} must be 1 to {MAX_KEY_LENGTH} characters without "
            "NUL or newlines"
        )


class Tracking:
    """Experiments, runs, params and metrics on the daemon's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- experiments

    def create_experiment(
        self, name: str, description: str = "", tags: dict[str, str] | None = None
    ) -> Experiment:
        validate_name("name", name)
        experiment = Experiment(name, description, dict(tags or {}), time.time())
        with self._store.write() as txn:
            if txn.exists("experiments", (name,)):
                raise AlreadyExists(f"experiment {name!r} already exists")
            self._put_experiment(txn, experiment)
        return experiment

    def ensure_experiment(self, txn: WriteTxn, name: str) -> None:
        """Create the experiment inside `txn` unless it exists (jobs create theirs on first use)."""
        if not txn.exists("experiments", (name,)):
            self._put_experiment(txn, Experiment(name, "", {}, time.time()))

    def _put_experiment(self, txn: WriteTxn, experiment: Experiment) -> None:
        data = {
            "name": experiment.name,
            "description": experiment.description,
            "tags": experiment.tags,
            "created_at": experiment.created_at,
        }
        txn.put("experiments", (experiment.name,), encode_record("experiment", 1, data))

    def get_experiment(self, name: str) -> Experiment:
        validate_name("name", name)
        with self._store.read() as txn:
            return self._experiment(txn, name)

    def _experiment(self, txn: ReadTxn, name: str) -> Experiment:
        raw = txn.get("experiments", (name,))
        if raw is None:
            raise NotFound(f"experiment {name!r} does not exist")
        _, data = decode_record(raw, "experiment", 1)
        return Experiment(**data, run_count=txn.count("experiment_runs", (name,)))

    def list_experiments(
        self, name_prefix: str = "", size: int = 0, token: str = ""
    ) -> tuple[list[Experiment], str]:
        limit = page_size(size)
        query = {"list": "experiments", "prefix": name_prefix}
        after = resume_after(token, query)
        out: list[Experiment] = []
        with self._store.read() as txn:
            for key, _ in txn.scan("experiments", after=unpack(after) if after else None):
                name = str(key[0])
                if not name.startswith(name_prefix):
                    if name > name_prefix:
                        break
                    continue
                out.append(self._experiment(txn, name))
                if len(out) == limit + 1:
                    break
        if len(out) > limit:
            out = out[:limit]
            return out, make_token(pack((out[-1].name,)), query)
        return out, ""

    # -- runs

    def create_run(
        self,
        experiment: str,
        name: str = "",
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        job_id: str = "",
        status: str = "running",
    ) -> Run:
        """A new run; the experiment is created on first use."""
        validate_name("experiment", experiment)
        run_id = new_id("run")
        name = name or run_id
        validate_name("name", name)
        self._check_params(params or {})
        run = Run(
            run_id,
            experiment,
            name,
            status,
            dict(params or {}),
            dict(tags or {}),
            time.time(),
            None,
            0,
            job_id,
        )
        with self._store.write() as txn:
            self.ensure_experiment(txn, experiment)
            self.put_new_run(txn, run)
        return run

    def put_new_run(self, txn: WriteTxn, run: Run) -> None:
        if not txn.put("run_names", (run.experiment, run.name), run.run_id.encode(), overwrite=False):
            raise AlreadyExists(
                f"experiment {run.experiment!r} already has a run named {run.name!r}; pick another name "
                "or leave it empty to generate one"
            )
        txn.put("experiment_runs", (run.experiment, run.run_id), b"")
        self.put_run(txn, run)

    def put_run(self, txn: WriteTxn, run: Run) -> None:
        txn.put("runs", (run.run_id,), encode_record("run", 1, _run_data(run)))

    def load_run(self, txn: ReadTxn, run_id: str) -> Run:
        raw = txn.get("runs", (run_id,))
        if raw is None:
            raise NotFound(f"run {run_id!r} does not exist")
        return _run_from(decode_record(raw, "run", 1)[1])

    def get_run(self, run_id: str) -> Run:
        with self._store.read() as txn:
            run = self.load_run(txn, run_id)
            run.metrics = self._summaries(txn, run_id)
        return run

    def update_run(self, run_id: str, status: str | None, set_tags: dict[str, str]) -> Run:
        """End an external run (status + end time) or change its tags."""
        if status is not None and status not in ENDED_STATUSES:
            raise InvalidArgument(
                f"status: a run can be ended as SUCCEEDED, FAILED or CANCELLED, not {status.upper()}"
            )
        with self._store.write() as txn:
            run = self.load_run(txn, run_id)
            if status is not None:
                if run.job_id:
                    raise FailedPrecondition(
                        f"run {run_id!r} belongs to job {run.job_id}; its status follows the job "
                        "(cancel the job with CancelJob instead)"
                    )
                if run.status in ENDED_STATUSES:
                    raise FailedPrecondition(f"run {run_id!r} has already ended ({run.status.upper()})")
                run.status = status
                run.end_time = time.time()
            run.tags.update(set_tags)
            self.put_run(txn, run)
        return self.get_run(run_id)

    def list_runs(
        self,
        experiment: str = "",
        statuses: Iterable[str] = (),
        params: dict[str, str] | None = None,
        metric_filters: Iterable[MetricFilter] = (),
        size: int = 0,
        token: str = "",
    ) -> tuple[list[Run], str]:
        """Newest first; every condition must hold."""
        if experiment:
            validate_name("experiment", experiment)
        wanted = set(statuses)
        params = params or {}
        filters = list(metric_filters)
        for i, f in enumerate(filters):
            check_metric_key(f.key, f"metrics[{i}].key")
        limit = page_size(size)
        query = {
            "list": "runs",
            "experiment": experiment,
            "statuses": sorted(wanted),
            "params": params,
            "metrics": [f.__dict__ for f in filters],
        }
        after = resume_after(token, query)
        out: list[Run] = []
        last_key: bytes = b""
        with self._store.read() as txn:
            if experiment:
                self._experiment(txn, experiment)
                keys = (
                    (key, str(key[1]))
                    for key, _ in txn.scan(
                        "experiment_runs", (experiment,), after=unpack(after) if after else None, reverse=True
                    )
                )
            else:
                keys = (
                    (key, str(key[0]))
                    for key, _ in txn.scan("runs", after=unpack(after) if after else None, reverse=True)
                )
            for key, run_id in keys:
                run = self.load_run(txn, run_id)
                if wanted and run.status not in wanted:
                    continue
                if any(run.params.get(k) != v for k, v in params.items()):
                    continue
                summaries = {s.key: s for s in self._summaries(txn, run_id)}
                if not all(
                    f.key in summaries and _COMPARE[f.op](summaries[f.key].field(f.field), f.value)
                    for f in filters
                ):
                    continue
                if len(out) == limit:
                    return out, make_token(last_key, query)
                run.metrics = list(summaries.values())
                out.append(run)
                last_key = pack(key)
        return out, ""

    def compare_runs(self, run_ids: list[str]) -> list[Run]:
        if len(run_ids) < 2:
            raise InvalidArgument(f"run_ids: compare needs two or more runs, got {len(run_ids)}")
        if len(set(run_ids)) != len(run_ids):
            raise InvalidArgument("run_ids: a run is listed twice")
        return [self.get_run(run_id) for run_id in run_ids]

    def leaderboard(
        self, experiment: str, metric: str, mode: str | None, summary_field: str | None, limit: int
    ) -> list[tuple[Run, float]]:
        validate_name("experiment", experiment)
        check_metric_key(metric, "metric")
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0 for {DEFAULT_LEADERBOARD_LIMIT}), got {limit}")
        mode = mode or default_mode(metric)
        summary_field = summary_field or mode
        ranked: list[tuple[Run, float]] = []
        with self._store.read() as txn:
            self._experiment(txn, experiment)
            for key, _ in txn.scan("experiment_runs", (experiment,)):
                run_id = str(key[1])
                raw = txn.get("metric_summaries", (run_id, metric))
                if raw is None:
                    continue
                value = _summary_from(decode_record(raw, "metric_summary", 1)[1]).field(summary_field)
                run = self.load_run(txn, run_id)
                run.metrics = self._summaries(txn, run_id)
                ranked.append((run, value))
        ranked.sort(key=lambda item: item[1], reverse=mode == "max")
        return ranked[: limit or DEFAULT_LEADERBOARD_LIMIT]

    # -- params

    @staticmethod
    def _check_params(params: dict[str, str]) -> None:
        for key, value in params.items():
            if not key or len(key) > MAX_KEY_LENGTH:
                raise InvalidArgument(f"params: key {key[:80]!r} must be 1 to {MAX_KEY_LENGTH} characters")
            if len(value) > MAX_PARAM_LENGTH:
                raise InvalidArgument(f"params[{key!r}]: value is longer than {MAX_PARAM_LENGTH} characters")

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Add params; a param once logged cannot change value."""
        self._check_params(params)
        with self._store.write() as txn:
            run = self.load_run(txn, run_id)
            for key, value in params.items():
                if key in run.params and run.params[key] != value:
                    raise FailedPrecondition(
                        f"params[{key!r}]: run {run_id!r} already has {key} = {run.params[key]!r}; a "
                        "logged param cannot change (start a new run for a new value)"
                    )
            run.params.update(params)
            self.put_run(txn, run)

    # -- metrics

    @staticmethod
    def check_points(points: list[MetricPoint]) -> None:
        checked: set[str] = set()
        for i, point in enumerate(points):
            if point.key not in checked:
                check_metric_key(point.key, f"points[{i}].key")
                checked.add(point.key)
            if not math.isfinite(point.value):
                raise InvalidArgument(
                    f"points[{i}].value: {point.key} = {point.value} is not a finite number"
                )
            if point.step < 0:
                raise InvalidArgument(f"points[{i}].step must be >= 0, got {point.step}")

    def log_metrics(self, run_id: str, points: list[MetricPoint], *, external: bool = True) -> Future[int]:
        """Queue a batch for the next group commit; the future gives the count once durable.

        External callers may only log to a running run; jobs log through the same path.
        """
        self.check_points(points)
        now = time.time()

        def work(txn: WriteTxn) -> int:
            raw = txn.get("runs", (run_id,))
            if raw is None:
                raise NotFound(f"run {run_id!r} does not exist; create it with CreateRun first")
            if external:
                status = decode_record(raw, "run", 1)[1]["status"]
                if status in ENDED_STATUSES:
                    raise FailedPrecondition(
                        f"run {run_id!r} has ended ({status.upper()}); log metrics to a running run"
                    )
            write_points(txn, run_id, points, now)
            return len(points)

        return self._store.submit(work)

    def metric_history(
        self, run_id: str, key: str, max_points: int, start_step: int, end_step: int
    ) -> tuple[list[MetricPoint], int, bool]:
        """(points, total in range, downsampled)."""
        check_metric_key(key, "key")
        if max_points < 0 or 0 < max_points < 4:
            raise InvalidArgument(
                f"max_points must be 0 (every point) or >= 4 (first, last, min and max are always "
                f"kept), got {max_points}"
            )
        if start_step < 0 or end_step < 0 or (end_step and end_step < start_step):
            raise InvalidArgument(
                f"start_step and end_step must be >= 0 with start_step <= end_step (0 and 0 for all), "
                f"got {start_step} and {end_step}"
            )
        with self._store.read() as txn:
            self.load_run(txn, run_id)
            scan = txn.scan("metrics", (run_id, key), start=(run_id, key, start_step))
            points = []
            for k, raw in scan:
                step = int(k[2])
                if end_step and step > end_step:
                    break
                value, ts = decode_metric_point(raw)
                points.append(MetricPoint(key, value, step, ts))
        total = len(points)
        if max_points and total > max_points:
            return downsample(points, max_points), total, True
        return points, total, False

    def truncate_metrics_after(self, txn: WriteTxn, run_id: str, step: int) -> None:
        """Drop every point after `step` (a resumed attempt supersedes them) and rebuild summaries."""
        for key, _ in list(txn.scan("metric_summaries", (run_id,))):
            metric = str(key[1])
            doomed = [k for k, _ in txn.scan("metrics", (run_id, metric), after=(run_id, metric, step))]
            if not doomed:
                continue
            for k in doomed:
                txn.delete("metrics", k)
            summary: MetricSummary | None = None
            mode = default_mode(metric)
            for k, raw in txn.scan("metrics", (run_id, metric)):
                value, _ = decode_metric_point(raw)
                summary = _fold(summary, metric, value, int(k[2]), mode)
            if summary is None:
                txn.delete("metric_summaries", key)
            else:
                txn.put("metric_summaries", key, encode_record("metric_summary", 1, summary.__dict__))

    def _summaries(self, txn: ReadTxn, run_id: str) -> list[MetricSummary]:
        return [
            _summary_from(decode_record(raw, "metric_summary", 1)[1])
            for _, raw in txn.scan("metric_summaries", (run_id,))
        ]


def _fold(summary: MetricSummary | None, key: str, value: float, step: int, mode: str) -> MetricSummary:
    if summary is None:
        return MetricSummary(key, value, value, value, value, 1, step)
    summary.count += 1
    summary.min = min(summary.min, value)
    summary.max = max(summary.max, value)
    summary.best = summary.min if mode == "min" else summary.max
    if step >= summary.last_step:
        summary.last = value
        summary.last_step = step
    return summary


def write_points(txn: WriteTxn, run_id: str, points: list[MetricPoint], now: float) -> None:
    """Store the points and fold them into their keys' summaries, in `txn`.

    Summaries are folded once per key per batch (min/max over the batch's values), which keeps
    ingest near the cost of the puts themselves.
    """
    by_key: dict[str, list[MetricPoint]] = {}
    put = txn.put
    for point in points:
        put("metrics", (run_id, point.key, point.step), encode_metric_point(point.value, point.time or now))
        by_key.setdefault(point.key, []).append(point)
    for key, batch in by_key.items():
        raw = txn.get("metric_summaries", (run_id, key))
        values = [p.value for p in batch]
        # Of equal steps the batch's last wins, as it does in the store.
        newest = max(reversed(batch), key=lambda p: p.step)
        low, high = min(values), max(values)
        if raw is None:
            summary = MetricSummary(key, newest.value, low, high, low, len(batch), newest.step)
        else:
            summary = _summary_from(decode_record(raw, "metric_summary", 1)[1])
            summary.count += len(batch)
            summary.min, summary.max = min(summary.min, low), max(summary.max, high)
            if newest.step >= summary.last_step:
                summary.last, summary.last_step = newest.value, newest.step
        summary.best = summary.min if default_mode(key) == "min" else summary.max
        txn.put("metric_summaries", (run_id, key), encode_record("metric_summary", 1, summary.__dict__))


def downsample(points: list[MetricPoint], max_points: int) -> list[MetricPoint]:
    """At most max_points: the first, last, min and max always, then min and max of even buckets."""
    n = len(points)
    values = [p.value for p in points]
    keep = {0, n - 1, values.index(min(values)), values.index(max(values))}
    buckets = (max_points - len(keep)) // 2
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        chunk = values[lo:hi]
        keep.add(lo + chunk.index(min(chunk)))
        keep.add(lo + chunk.index(max(chunk)))
    return [points[i] for i in sorted(keep)]
