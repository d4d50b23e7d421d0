"""Runs and metric histories as a notebook reads them, as MLflow's are: `Run` (its message's
fields, and `metrics["val_loss"]`, the latest value), `MetricHistory` (steps, values and times
as numpy arrays), `Leaderboard` and `RunComparison` (their messages' fields, their runs as
`Run`), and a runs listing, a history, a leaderboard or a comparison `to_pandas()`. pandas is not a dependency
of the SDK: it is imported when a frame is asked for."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, KeysView, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from google.protobuf.message import Message

from tessera.listings import pandas_module
from tessera.messages import to_datetime
from tessera.state_words import number_word
from tessera.v1 import training_pb2 as pb

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # optional, and without its stubs here


class _Forwarded:
    """Reads what the wrapper lacks from its message `info`: the calls returned that message
    before, so code written for it still reads the wrapper."""

    info: Any

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name the wrapper lacks. "_" names and `info` itself are the
        # wrapper's own (a copy or an unpickling asks before `info` is set).
        if name.startswith("_") or name == "info":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.info, name)

    def __eq__(self, other: object) -> bool:
        # Compared by value, as its message is, and equal to that message too.
        if isinstance(other, type(self)):
            return bool(self.info == other.info)
        if isinstance(other, Message):
            return bool(self.info == other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class RunMetrics(Sequence[pb.MetricSummary]):
    """A run's metric summaries, in key order, read by key as a dict of the latest values
    (`metrics["val_loss"]`, `dict(metrics)`, `"val_loss" in metrics`, `get`, `keys`, `items`),
    and by position, iterated and counted as the list of `tessera.v1` MetricSummary messages
    the run's message holds (`metrics[0].min`, `for m in metrics: m.key`). `summary(key)` is a
    key's summary (last, min, max, count, last_step)."""

    def __init__(self, summaries: Iterable[pb.MetricSummary], left_out: int = 0) -> None:
        self._summaries = list(summaries)
        self._by_key = {summary.key: summary for summary in self._summaries}
        self._left_out = left_out

    @overload
    def __getitem__(self, index: str) -> float: ...
    @overload
    def __getitem__(self, index: int) -> pb.MetricSummary: ...
    @overload
    def __getitem__(self, index: slice) -> list[pb.MetricSummary]: ...
    def __getitem__(self, index: str | int | slice) -> float | pb.MetricSummary | list[pb.MetricSummary]:
        if isinstance(index, str):
            return self.summary(index).last
        return self._summaries[index]

    def __len__(self) -> int:
        return len(self._summaries)

    def __iter__(self) -> Iterator[pb.MetricSummary]:
        return iter(self._summaries)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_key
        return item in self._summaries

    def __eq__(self, other: object) -> bool:
        # Equal to the list of summaries it was (`run.metrics == []`), and to a dict of latest values.
        if isinstance(other, RunMetrics):
            return self._summaries == other._summaries
        if isinstance(other, dict):
            return dict(self.items()) == other
        if isinstance(other, list | tuple):
            return self._summaries == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RunMetrics({dict(self.items())!r})"

    def summary(self, key: str) -> pb.MetricSummary:
        """The summary of `key`; KeyError naming the keys there are."""
        found = self._by_key.get(key)
        if found is None:
            more = (
                f" and {self._left_out} more past the first 2,000 (client.training.list_metrics lists them)"
                if self._left_out
                else ""
            )
            raise KeyError(f"{key!r}: the run's metrics are {sorted(self._by_key)}{more}")
        return found

    def get(self, key: str, default: float | None = None) -> float | None:
        """The latest value of `key`, `default` where the run has none."""
        found = self._by_key.get(key)
        return default if found is None else found.last

    def keys(self) -> KeysView[str]:
        """The metric keys, in order."""
        return self._by_key.keys()

    def values(self) -> list[float]:
        """The latest value of each metric, in key order."""
        return [summary.last for summary in self._summaries]

    def items(self) -> list[tuple[str, float]]:
        """(key, latest value) of each metric, in key order."""
        return [(summary.key, summary.last) for summary in self._summaries]


class Run(_Forwarded):
    """A run: `info` is its `tessera.v1` Run message, whose fields read here too (`run.params`,
    `run.start_time`, `run.status`, a RunStatus number) as they did when the calls returned
    the message. `metrics` reads by key as the latest values (`run.metrics["val_loss"]`) and
    by position as the message's summaries (see `RunMetrics`)."""

    info: pb.Run

    def __init__(self, info: pb.Run) -> None:
        self.info = info

    def __repr__(self) -> str:
        return f"Run({self.id!r}, name={self.info.name!r}, status={number_word(pb.RunStatus, self.info.status)!r})"

    @property
    def id(self) -> str:
        """The run id."""
        return self.info.run_id

    @property
    def metrics(self) -> RunMetrics:
        """Its metrics' latest values by key, and their summaries (the first 2,000 keys; see
        `client.training.list_metrics` for a run of more)."""
        return RunMetrics(self.info.metrics, self.info.metrics_left_out)


class MetricHistory(_Forwarded):
    """One metric's points, in step order: `steps` (int64), `values` (float64) and
    `timestamps` (datetime64[ns], UTC) as numpy arrays, or all three as `to_pandas()`. `info` is
    the `tessera.v1` MetricHistory message, whose fields read here too (`points`,
    `total_points`, `downsampled`) as they did when the call returned the message. The daemon
    keeps no epoch with a metric's points: their step is what places them."""

    info: pb.MetricHistory

    def __init__(self, info: pb.MetricHistory) -> None:
        self.info = info

    def __len__(self) -> int:
        return len(self.info.points)

    def __repr__(self) -> str:
        return f"MetricHistory({self.info.key!r} of run {self.info.run_id!r}, {len(self)} points)"

    @functools.cached_property
    def steps(self) -> np.ndarray:
        """Each point's step."""
        return np.fromiter((p.step for p in self.info.points), dtype=np.int64, count=len(self))

    @functools.cached_property
    def values(self) -> np.ndarray:
        """Each point's value."""
        return np.fromiter((p.value for p in self.info.points), dtype=np.float64, count=len(self))

    @functools.cached_property
    def timestamps(self) -> np.ndarray:
        """When each point was logged, in UTC (numpy's datetimes carry no zone)."""
        nanos = (p.time.seconds * 1_000_000_000 + p.time.nanos for p in self.info.points)
        return np.fromiter(nanos, dtype=np.int64, count=len(self)).astype("datetime64[ns]")

    def to_pandas(self) -> pd.DataFrame:
        """The points as a DataFrame of `step`, `value` and `timestamp` (UTC) columns; ImportError
        where pandas is not installed."""
        pandas = pandas_module()
        return pandas.DataFrame(
            {
                "step": self.steps,
                "value": self.values,
                "timestamp": pandas.to_datetime(self.timestamps, utc=True),
            }
        )


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Runs as a DataFrame, one row per run, as MLflow's search_runs: run_id, experiment, name,
    status (a word), start_time and end_time (UTC; NaT while running), job_id, then a
    `params.KEY` column per param (text, as logged), a `metrics.KEY` column per metric (its
    latest value) and a `tags.KEY` column per tag; a run without one has NA there."""
    pandas = pandas_module()
    rows: list[dict[str, Any]] = []
    params: set[str] = set()
    metrics: set[str] = set()
    tags: set[str] = set()
    for run in runs:
        info = run.info
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "experiment": info.experiment,
            "name": info.name,
            "status": number_word(pb.RunStatus, info.status),
            "start_time": to_datetime(info.start_time),
            "end_time": to_datetime(info.end_time),
            "job_id": info.job_id,
        }
        row.update({f"params.{key}": value for key, value in info.params.items()})
        row.update({f"metrics.{summary.key}": summary.last for summary in info.metrics})
        row.update({f"tags.{key}": value for key, value in info.tags.items()})
        params.update(info.params)
        metrics.update(summary.key for summary in info.metrics)
        tags.update(info.tags)
        rows.append(row)
    columns = ["run_id", "experiment", "name", "status", "start_time", "end_time", "job_id"]
    columns += [f"params.{key}" for key in sorted(params)]
    columns += [f"metrics.{key}" for key in sorted(metrics)]
    columns += [f"tags.{key}" for key in sorted(tags)]
    frame = pandas.DataFrame(rows, columns=columns)
    for when in ("start_time", "end_time"):
        frame[when] = pandas.to_datetime(frame[when], utc=True)
    return frame


class LeaderboardEntry(_Forwarded):
    """A run's place on a leaderboard: `rank` (1 first), `value` (the metric ranked by) and `run`,
    a `tessera.Run`. `info` is the `tessera.v1` LeaderboardEntry message, whose fields read here
    too, as they did when the call returned the messages."""

    info: pb.LeaderboardEntry

    def __init__(self, info: pb.LeaderboardEntry) -> None:
        self.info = info

    def __repr__(self) -> str:
        return f"LeaderboardEntry(rank={self.info.rank}, value={self.info.value!r}, run={self.run!r})"

    @property
    def run(self) -> Run:
        """The run ranked."""
        return Run(self.info.run)


class Leaderboard(Sequence[LeaderboardEntry]):
    """`client.training.leaderboard()`: the entries (`LeaderboardEntry`), best first, indexed,
    iterated and counted as the list of messages it was (`board[0].run.run_id`), and equal to that
    list; `to_pandas()` makes a DataFrame of them."""

    def __init__(self, response: pb.LeaderboardResponse) -> None:
        self._entries = [LeaderboardEntry(entry) for entry in response.entries]

    @overload
    def __getitem__(self, index: int) -> LeaderboardEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[LeaderboardEntry]: ...
    def __getitem__(self, index: int | slice) -> LeaderboardEntry | list[LeaderboardEntry]:
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LeaderboardEntry]:
        return iter(self._entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Leaderboard):
            return self._entries == other._entries
        if isinstance(other, list | tuple):
            return len(other) == len(self._entries) and all(
                mine == theirs for mine, theirs in zip(self._entries, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Leaderboard({self._entries!r})"

    @property
    def runs(self) -> list[Run]:
        """The runs ranked, best first."""
        return [entry.run for entry in self._entries]

    def to_pandas(self) -> pd.DataFrame:
        """The entries as a DataFrame, best first: `rank` and `value` (the metric ranked by), then
        each run's columns as `runs_frame` makes them."""
        frame = runs_frame(self.runs)
        frame.insert(0, "value", [entry.info.value for entry in self._entries])
        frame.insert(0, "rank", [entry.info.rank for entry in self._entries])
        return frame


class RunComparison(_Forwarded):
    """`client.training.compare_runs()`: `runs` (each a `tessera.Run`), and the message's
    `params` and `metrics` (ParamComparison, MetricComparison: a value per run, in the order of
    `runs`) and `metrics_left_out`, which read here as they did when the call returned the
    message. `info` is the `tessera.v1` CompareRunsResponse; `to_pandas()` makes a DataFrame."""

    info: pb.CompareRunsResponse

    def __init__(self, info: pb.CompareRunsResponse) -> None:
        self.info = info

    def __repr__(self) -> str:
        return f"RunComparison({[run.run_id for run in self.info.runs]!r})"

    @property
    def runs(self) -> list[Run]:
        """The runs compared, in the order asked for."""
        return [Run(run) for run in self.info.runs]

    def to_pandas(self) -> pd.DataFrame:
        """One row per run, in the order compared: run_id, name, status, then a `params.KEY` column
        per param compared (text, as logged) and a `metrics.KEY` column per metric compared (its
        last value); a run without one has NA there."""
        pandas = pandas_module()
        info = self.info
        frame = pandas.DataFrame(
            {
                "run_id": [run.run_id for run in info.runs],
                "name": [run.name for run in info.runs],
                "status": [number_word(pb.RunStatus, run.status) for run in info.runs],
            }
        )
        compared: list[pb.ParamComparison | pb.MetricComparison] = [*info.params, *info.metrics]
        for comparison in compared:
            kind = "params" if isinstance(comparison, pb.ParamComparison) else "metrics"
            frame[f"{kind}.{comparison.key}"] = pandas.Series(
                [
                    value if there else None
                    for value, there in zip(comparison.values, comparison.present, strict=True)
                ],
                dtype="object" if kind == "params" else "float64",
            )
        return frame
