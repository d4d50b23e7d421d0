"""Training: jobs with live, resumable event streams; experiments, runs, metrics; sweeps."""

from __future__ import annotations

import asyncio
import numbers
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from google.protobuf import timestamp_pb2

from tessera.artifact_bytes import bytes_requests, check_figure, dict_bytes, figure_bytes
from tessera.calls import (
    C,
    Call,
    Chain,
    Given,
    JoinedPages,
    Op,
    Pages,
    Part,
    Resumable,
    ResumingDownload,
    SeqCursor,
    Upload,
    call,
    listing,
    stream,
)
from tessera.errors import (
    DeadlineExceeded,
    JobCancelled,
    JobFailed,
    NotFound,
    StillRunning,
    TesseraError,
    Unavailable,
    Unimplemented,
)
from tessera.events import JobEvent, JobState, StateChanged, event_from_proto
from tessera.messages import from_dict
from tessera.run_filter import (
    STATUS_ALIASES,
    RunFilter,
    RunOrderBy,
    is_order_string,
    parse_filter,
    parse_orders,
)
from tessera.run_logging import ActiveRun, MetricLogger, MetricPoint, forget_run
from tessera.runs import Leaderboard, MetricHistory, Run, RunComparison, runs_frame
from tessera.state_words import StateWord
from tessera.sweeps import Sweep
from tessera.transfer import (
    CHUNK_BYTES,
    NewFiles,
    Progress,
    SinkInDirectory,
    check_chunk_size,
    check_free,
    file_chunks,
    file_digest,
    is_download_directory,
)
from tessera.transport import (
    MODEL_CALL_TIMEOUT_S,
    AioConnection,
    Connection,
    RetryPolicy,
    call_timeout,
    timeout_or,
)
from tessera.v1 import common_pb2, job_spec_pb2
from tessera.v1 import training_pb2 as pb

LIST_ARTIFACTS_WORDS = "list them with list_artifacts"
"""What a message about an artifact not there says to do (the CLI's words: runs artifacts ls)."""

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

S = "Training"

T = TypeVar("T")
_V = TypeVar("_V", bound=int)
# The daemon's rule for a request id it keeps (tesserad.training.submit_requests): checked here
# too, since "" would be sent as no id at all while the channel still retries the submit.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _submit_request_id(request_id: str | None) -> str:
    """The request id a submit carries: `request_id`, or a new UUID4 for None; ValueError for an
    id the daemon would not keep."""
    if request_id is None:
        return str(uuid.uuid4())
    if not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(
            f"request_id: {request_id[:65]!r} is not a request id: pass None for a generated one, "
            "or 1 to 64 characters from A-Z a-z 0-9 - _"
        )
    return request_id


JobSpecLike = job_spec_pb2.JobSpec | Mapping[str, Any]
"""A JobSpec message, or a dict of the same fields (e.g. a parsed TOML file)."""


# The last millisecond of year 9999, the latest time a protobuf Timestamp (and so the daemon) takes.
MAX_TIMESTAMP_MS = 253_402_300_799_999


def metric_value(key: str, value: Any) -> float:
    """`value` as a float (a number, a numpy or torch scalar), or the error float() raised, of
    the same type, naming the metric: float()'s own names neither the key nor the value's type."""
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise type(err)(f"metric {key}: value must be a number, got {type(value).__name__} {shown}") from None


def metric_timestamp(timestamp: int) -> timestamp_pb2.Timestamp:
    """A point's time from MLflow's timestamp, whole milliseconds since the Unix epoch; ValueError
    (TypeError for another type than a whole number) naming what is taken."""
    # numbers.Integral takes numpy's integers too; a bool is an int Python-wise, never a time.
    if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Integral):
        raise TypeError(
            "timestamp must be whole milliseconds since the Unix epoch, as MLflow's "
            f"(int(time.time() * 1000)), got {type(timestamp).__name__} {timestamp!r}"
        )
    if not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise ValueError(
            f"timestamp must be milliseconds since the Unix epoch from 0 to {MAX_TIMESTAMP_MS} (the "
            f"end of year 9999), got {timestamp}"
        )
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(int(timestamp))
    return stamp


def enum_value(enum: _EnumTypeWrapper[_V], prefix: str, value: str | int) -> _V:
    """An enum number from a short name ("succeeded" -> RUN_STATUS_SUCCEEDED); ValueError if unknown."""
    if isinstance(value, int):
        # A number goes as given (the daemon rejects unknown ones). The stubs type an enum's
        # values as a NewType of int that nothing generic over the enum can construct.
        return cast(_V, value)
    name = prefix + value.upper()
    names = list(enum.keys())
    if name not in names:
        choices = ", ".join(k.removeprefix(prefix).lower() for k in names if not k.endswith("UNSPECIFIED"))
        raise ValueError(f"{value!r} is not one of {choices}")
    return enum.Value(name)


def run_status(value: str | int) -> pb.RunStatus.ValueType:
    """A RunStatus number from a word, MLflow's FINISHED and KILLED too (as filters read them)."""
    if isinstance(value, str):
        value = STATUS_ALIASES.get(value.lower(), value)
    return enum_value(pb.RunStatus, "RUN_STATUS_", value)


class MetricPointsReplaced(UserWarning):
    """Points logged at a key and step that held another value replaced it: a run keeps one point
    per key and step, the newest (MLflow keeps both)."""


def _warn_replaced(response: pb.LogMetricsResponse) -> None:
    if response.replaced:
        warnings.warn(
            MetricPointsReplaced(
                f"{response.replaced} of the {response.accepted} point(s) replaced another value logged "
                "before at the same key and step: a run keeps one point per key and step, the newest "
                "(log each step once, or the next value at a new step)"
            ),
            # Past this function, the call's convert, the call and the client's wrapper.
            stacklevel=5,
        )


def _accepted(response: pb.LogMetricsResponse) -> int:
    """A LogMetrics answer's count of points stored, warning once where some replaced others."""
    _warn_replaced(response)
    return int(response.accepted)


Points = Iterable[MetricPoint | pb.MetricPoint | tuple[Any, ...]]
"""Points of log_batch: each a `tessera.MetricPoint`, a (key, value, step[, timestamp]) tuple, or
a `tessera.v1` MetricPoint message."""


def metric_points(points: Points) -> list[pb.MetricPoint]:
    """`log_batch`'s points as messages."""
    made = []
    for given in points:
        if isinstance(given, pb.MetricPoint):
            made.append(given)
            continue
        point = MetricPoint(*given)
        stamp = metric_timestamp(point.timestamp) if point.timestamp is not None else None
        made.append(
            pb.MetricPoint(
                key=point.key, value=metric_value(point.key, point.value), step=point.step, time=stamp
            )
        )
    return made


class RunStatus(StateWord):
    """A run's status (`Run.status`, a number in the message) as a word: "running", "succeeded";
    `runs(statuses=...)` and `update_run(status=...)` take these too. Each is also equal to its `tessera.v1` RunStatus
    number (see `StateWord`)."""

    UNSPECIFIED = "unspecified"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @staticmethod
    def _numbers() -> type[pb.RunStatus]:
        return pb.RunStatus

    @property
    def finished(self) -> bool:
        """True for the statuses a run never leaves."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


def _as_text(values: Mapping[str, Any] | None, what: str) -> dict[str, str]:
    """Params and tags as the daemon keeps them: text (3 -> "3", True -> "True"). TypeError for
    what is no mapping (the argument `what`): a list of pairs may give a key twice, which the
    request's map would keep once, silently."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{what}: give a mapping of key to value, such as a dict, not {type(values).__name__}: "
            "pairs may give a key twice, and the request keeps one value of each key"
        )
    return {key: str(value) for key, value in values.items()}


def _add_filter(request: pb.ListRunsRequest, found: RunFilter) -> None:
    """A filter string's conditions into `request`; ValueError where the request already has
    conditions of the same kind, as it is not said whether the two should both hold."""
    kinds = (
        ("attributes.status", "statuses", found.statuses),
        ("params", "params", found.params),
        ("tags", "tags", found.tags),
        ("metrics", "metrics", found.metrics),
    )
    for written, argument, conditions in kinds:
        if conditions and getattr(request, argument):
            raise ValueError(
                f"{written} is filtered twice, in filter and in {argument}=; give the conditions in one of them"
            )
    request.statuses.extend(enum_value(pb.RunStatus, "RUN_STATUS_", s) for s in found.statuses)
    request.params.extend(pb.ParamFilter(key=k, value=v) for k, v in found.params.items())
    request.tags.extend(pb.TagFilter(key=k, value=v) for k, v in found.tags.items())
    request.metrics.extend(found.metrics)
    request.texts.extend(found.texts)
    request.times.extend(found.times)


def _run_order(
    order_by: str | Sequence[str], descending: bool | None, order_field: str | int | None
) -> tuple[pb.RunOrder | None, list[pb.RunOrder]]:
    """ListRuns' order from a metric's name or MLflow's order strings, and the direction and
    summary field given beside it: (order_by, None) for one metric, as ListRuns has long taken
    it, else (None, order_keys). ValueError where both say the same thing, or where either is
    given without one metric to apply to. Without a direction, a metric's name takes the
    metric's own (the daemon's default), an order string ascending, as MLflow's search_runs does."""
    orders = [order_by] if isinstance(order_by, str) else list(order_by)
    named = len(orders) == 1 and not is_order_string(orders[0])
    if named:
        keys = [RunOrderBy(orders[0], pb.SUMMARY_FIELD_UNSPECIFIED, None)] if orders[0] else []
    else:
        keys = parse_orders(orders)
    if len(keys) != 1 or keys[0].entity != "metrics":
        for name, value in (("descending", descending), ("order_field", order_field)):
            if value is not None:
                if not keys:
                    raise ValueError(f"{name}= applies to the metric order_by names: give order_by too")
                raise ValueError(
                    f"{name}= applies to an order_by of one metric: write ASC or DESC after each key in order_by"
                )
        return None, [key.to_proto() for key in keys]
    parsed = keys[0]
    if parsed.descending is not None and descending is not None:
        raise ValueError(f"order_by {orders[0]!r} gives its direction: leave out descending=")
    if parsed.field != pb.SUMMARY_FIELD_UNSPECIFIED and order_field is not None:
        raise ValueError(f"order_by {orders[0]!r} names the summary field: leave out order_field=")
    order = pb.RunOrder(metric=parsed.key, field=parsed.field)
    if order_field is not None:
        order.field = enum_value(pb.SummaryField, "SUMMARY_FIELD_", order_field)
    direction = parsed.descending if parsed.descending is not None else descending
    if direction is None and not named:
        direction = False
    if direction is not None:
        order.direction = pb.SORT_DIRECTION_DESCENDING if direction else pb.SORT_DIRECTION_ASCENDING
    return order, []


class WatchCursor(SeqCursor):
    """Where a job's event stream has got to (see `SeqCursor` for what is resumed)."""

    def __init__(self, job_id: str, from_seq: int, retry: RetryPolicy, timeout: float | None) -> None:
        super().__init__(f"job {job_id}", max(from_seq, 1), retry, timeout)
        self.job_id = job_id

    def request(self) -> pb.WatchJobRequest:
        return pb.WatchJobRequest(job_id=self.job_id, from_seq=self.next_seq)

    def accept(self, event: pb.JobEvent) -> bool:
        """Record a received event; False for a replayed one the caller already has."""
        return self.accept_seq(event.seq)


def job_failed(job: Job[Any], info: pb.Job) -> JobFailed:
    """The exception for `job`, ended in `info` without succeeding: JobCancelled where cancelled."""
    state = JobState.from_proto(info.state)
    why = f": {info.error}" if info.error else ""
    if state == JobState.CANCELLED:
        return JobCancelled(job, f"job {info.job_id} was cancelled{why}")
    return JobFailed(job, f"job {info.job_id} ended {state.value}{why}")


def artifact_requests(
    run_id: str, path: str, source: Path, chunk_size: int, progress: Progress | None
) -> Iterator[pb.UploadRunArtifactRequest]:
    """An artifact upload: the header with the file's sha256 and size (read here, before the
    call), then its chunks."""
    sha256, size = file_digest(source)
    header = pb.UploadRunArtifactHeader(run_id=run_id, path=path, sha256=sha256, size_bytes=size)

    def requests() -> Iterator[pb.UploadRunArtifactRequest]:
        yield pb.UploadRunArtifactRequest(header=header)
        for chunk in file_chunks(source, size, chunk_size, progress):
            yield pb.UploadRunArtifactRequest(chunk=chunk)

    return requests()


def artifact_target(artifact_path: str, dst: str | Path | None) -> Path:
    """Where download_artifact writes: `dst`, or in the directory `dst` (None: the current one;
    a str ending in a separator: a directory, made as the file is) under the artifact's own name."""
    if dst is None:
        return Path(Path(artifact_path).name)
    if is_download_directory(dst):
        return Path(dst) / Path(artifact_path).name
    return Path(dst)


def artifact_file(root: Path, artifact_path: str) -> Path:
    """Where a downloaded artifact goes under `root` (its directories made as the file is);
    ValueError for a path that would leave `root` (the daemon refuses to store one)."""
    local = root / artifact_path
    if not local.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"artifact path {artifact_path!r} leads outside {root}; not written")
    return local


def artifact_name(artifact: pb.RunArtifact) -> str:
    """How a download's messages and its partial file's record name an artifact."""
    return f"artifact {artifact.path} of run {artifact.run_id}"


@dataclass(frozen=True)
class ArtifactTree(Call[Path]):
    """Download every artifact `listing` gives under `root` at its own path; `missing` is the
    call that reports the error when the listing is empty (None: nothing to report). One failing
    (or stopped) removes the files written before it that were not there, and the directories
    made for them (see `NewFiles`): the destination is left as it was, not half a tree."""

    listing: Pages[pb.RunArtifact]
    download: Callable[[str, Path], ResumingDownload[pb.RunArtifact]]
    missing: Call[Any] | None
    root: Path
    result: Path
    overwrite: bool

    def _check_free(self, artifacts: Sequence[pb.RunArtifact]) -> None:
        """Every file refused before any is written: a refusal never leaves half a tree."""
        for artifact in artifacts:
            check_free(artifact_file(self.root, artifact.path), self.overwrite)

    def run(self, conn: Connection) -> Path:
        artifacts = list(self.listing.listing(conn))
        if not artifacts and self.missing is not None:
            self.missing.run(conn)
        self._check_free(artifacts)
        files = [artifact_file(self.root, artifact.path) for artifact in artifacts]
        written = NewFiles(files)
        try:
            for artifact, file in zip(artifacts, files, strict=True):
                self.download(artifact.path, file).run(conn)
                written.wrote(file)
        except BaseException:
            written.undo()
            raise
        return self.result

    async def run_async(self, conn: AioConnection) -> Path:
        artifacts = [artifact async for artifact in self.listing.listing_async(conn)]
        if not artifacts and self.missing is not None:
            await self.missing.run_async(conn)
        self._check_free(artifacts)
        files = [artifact_file(self.root, artifact.path) for artifact in artifacts]
        written = NewFiles(files)
        try:
            for artifact, file in zip(artifacts, files, strict=True):
                await self.download(artifact.path, file).run_async(conn)
                written.wrote(file)
        except BaseException:
            written.undo()
            raise
        return self.result


def artifact_tree(local_dir: Path) -> list[tuple[Path, str]]:
    """Every file under `local_dir` with its relative path ("/"-separated), in path order. As
    MLflow's log_artifacts (os.walk): a link to a file counts as that file, a link to a directory
    is not followed (no cycles, nothing from outside). Anything else that is not a regular file
    (a broken link, a FIFO, a socket) is refused before anything is stored."""
    if not local_dir.is_dir():
        if not local_dir.exists():
            raise FileNotFoundError(f"no directory {local_dir}; nothing stored")
        raise NotADirectoryError(f"{local_dir} is not a directory; log_artifact stores one file")
    files: list[tuple[Path, str]] = []
    odd: list[str] = []
    for folder, _, names in os.walk(local_dir):
        for name in names:
            local = Path(folder) / name
            relative = local.relative_to(local_dir).as_posix()
            if local.is_file():
                files.append((local, relative))
            else:
                odd.append(relative)
    if odd:
        raise ValueError(
            f"not regular files under {local_dir} ({len(odd)}: {', '.join(sorted(odd)[:5])}); "
            "nothing stored; remove them, or store the files one by one with log_artifact"
        )
    return sorted(files, key=lambda pair: pair[1])


def partly_stored(
    err: TesseraError | OSError, path: str, stored: Sequence[pb.RunArtifact], total: int
) -> TesseraError | OSError:
    """`err` (same type, so callers' handlers still match) saying which file failed and what
    was stored before it: a directory upload is never left half done without a word."""
    done = ", ".join(a.path for a in stored[:5]) + (", ..." if len(stored) > 5 else "")
    if stored:
        before = f"{len(stored)} of {total} files were stored before it ({done})"
    else:
        before = f"none of the {total} files was stored"
    message = f"storing {path} failed; {before}; {total - len(stored) - 1} after it not tried: "
    if isinstance(err, TesseraError):
        return type(err)(message + err.daemon_message)
    reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
    return type(err)(err.errno, message + reason) if err.errno is not None else type(err)(message + reason)


@dataclass(frozen=True)
class ArtifactUploads(Call[list[pb.RunArtifact]]):
    """Every file under `local_dir` stored one after another with `upload(local, relative)`
    (one single-file upload each, in path order); on a failure, `partly_stored` says where."""

    local_dir: Path
    upload: Callable[[Path, str], Upload[pb.RunArtifact]]

    def run(self, conn: Connection) -> list[pb.RunArtifact]:
        files = artifact_tree(self.local_dir)
        stored: list[pb.RunArtifact] = []
        for local, relative in files:
            upload = self.upload(local, relative)
            try:
                stored.append(upload.run(conn))
            except (TesseraError, OSError) as err:
                raise partly_stored(err, relative, stored, len(files)) from err
        return stored

    async def run_async(self, conn: AioConnection) -> list[pb.RunArtifact]:
        files = await asyncio.to_thread(artifact_tree, self.local_dir)
        stored: list[pb.RunArtifact] = []
        for local, relative in files:
            upload = self.upload(local, relative)
            try:
                stored.append(await upload.run_async(conn))
            except (TesseraError, OSError) as err:
                raise partly_stored(err, relative, stored, len(files)) from err
        return stored


# The most points the daemon takes in one LogMetrics request or LogMetricsStream batch.
MAX_BATCH_POINTS = 10_000

# Trailing metadata of a failed LogMetricsStream: how many of its batches, from the first, the
# daemon stored (none after them).
STORED_BATCHES = "tessera-stored-batches"


class _MetricBatches:
    """The batches of a metric stream, made from `steps` as they are sent and kept until an
    answer says they are stored, so that a cut stream is sent again from the first batch not
    known to be stored.

    Each try of the stream reads `requests()` anew. A cut try's iterator may still be read by
    gRPC's thread once more: a lock and the try's number keep it from taking steps the next try
    would miss, and everything taken from `steps` is kept here, never in an iterator's locals.
    """

    def __init__(
        self, run_id: str, steps: Iterable[tuple[int, Mapping[str, float]]], batch_points: int
    ) -> None:
        self._run_id = run_id
        self._steps = iter(steps)
        self._batch_points = batch_points
        self._kept: list[pb.LogMetricsRequest] = []  # made and not known stored, in order
        self._taken: list[pb.MetricPoint] = []  # from steps read, not yet in a batch
        self._try = 0
        self._lock = threading.Lock()
        self.stored_points = 0
        self.last_stored_step: int | None = None

    def requests(self) -> Iterator[pb.LogMetricsRequest]:
        """The kept batches, then new ones from `steps`, for one try of the stream."""
        with self._lock:
            self._try += 1
            this_try, again = self._try, list(self._kept)
        yield from again
        while True:
            with self._lock:
                if this_try != self._try:
                    return
                batch = self._next_batch()
            if batch is None:
                return
            yield batch

    def _next_batch(self) -> pb.LogMetricsRequest | None:
        """A batch of the next points of `steps`, kept; None when they are all sent."""
        while len(self._taken) < self._batch_points:
            item = next(self._steps, None)
            if item is None:
                break
            step, metrics = item
            self._taken += [
                pb.MetricPoint(key=key, value=metric_value(key, value), step=step)
                for key, value in metrics.items()
            ]
        if not self._taken:
            return None
        batch = pb.LogMetricsRequest(run_id=self._run_id, points=self._taken[: self._batch_points])
        del self._taken[: self._batch_points]
        self._kept.append(batch)
        return batch

    def stored(self, batches: int) -> bool:
        """Drop the first `batches` kept batches, which an answer says are stored; True if any."""
        with self._lock:
            for batch in self._kept[:batches]:
                self.stored_points += len(batch.points)
                self.last_stored_step = batch.points[-1].step
            del self._kept[:batches]
        return batches > 0

    def failed(self, error: TesseraError, gave_up: str = "") -> TesseraError:
        """`error` (same type) saying what of the whole stream is stored; `gave_up` follows
        gRPC's words, where the stream was resent and gave up."""
        if STORED_BATCHES not in error.trailers:
            # Cut without the daemon's answer: what was sent after the known batches may be stored.
            done = f"at least {_points_stored(self.stored_points)}, the rest may be"
        elif self.last_stored_step is None:
            done = "no point of the stream is stored"
        else:
            done = (
                f"{_points_stored(self.stored_points)}, up to step {self.last_stored_step} (in "
                "the order sent), and none after them"
            )
        return type(error)(
            f"{done}; resend from there (resending a stored point changes nothing): {error.daemon_message}{gave_up}",
            error.trailers,
        )


def _points_stored(count: int) -> str:
    return "1 point is stored" if count == 1 else f"{count:,} points are stored"


@dataclass(frozen=True)
class _RunStart(Call[ActiveRun]):
    """`start_run`'s: the run created or reopened by `begin`, as an ActiveRun logging through
    `training` (a blocking client's: its methods return results, not awaitables)."""

    begin: Op[pb.Run]
    training: Training[Any]

    def run(self, conn: Connection) -> ActiveRun:
        return ActiveRun(self.training, self.begin.run(conn))

    async def run_async(self, conn: AioConnection) -> ActiveRun:
        raise TypeError(
            "start_run needs the blocking tessera.Client; on tessera.aio.Client use create_run, the "
            "log_* methods with its id, and update_run to end it"
        )


@dataclass(frozen=True)
class MetricSteps(Call[int]):
    """Metric points of many steps over LogMetricsStream, in batches of `batch_points`.

    The daemon stores a stream's batches in order and, when one fails, answers how many before
    it are stored (none after them). A stream cut UNAVAILABLE (the connection lost, the daemon
    restarting) is sent again after a backoff from its first batch not known to be stored, up to
    the client's `RetryPolicy.attempts` tries in a row: a cut without an answer sends again what
    may be stored, which changes nothing, as the daemon keeps one point per key and step. Any
    other failure raises the daemon's error, saying which points are stored. The warning of
    points that replaced others (MetricPointsReplaced) counts the last try's alone: a cut try's
    answer, and so what its stored batches replaced, never comes.
    """

    run_id: str
    steps: Iterable[tuple[int, Mapping[str, float]]]
    batch_points: int
    timeout: float

    def _after(self, batches: _MetricBatches, error: TesseraError, failures: int, retry: RetryPolicy) -> int:
        """The failures in a row after `error`, or raise it when it is not to be resent."""
        if batches.stored(int(error.trailers.get(STORED_BATCHES, "0"))):
            failures = 0
        failures += 1
        if not isinstance(error, Unavailable):
            raise batches.failed(error) from None
        if failures >= retry.attempts:
            # The first of the failed tries was the stream itself, not a resend.
            resends = failures - 1
            raise batches.failed(
                error,
                f" (gave up logging metrics to run {self.run_id} after {resends} "
                f"resend{'' if resends == 1 else 's'}, the last failing {error.code})",
            ) from None
        return failures

    def run(self, conn: Connection) -> int:
        batches = _MetricBatches(self.run_id, self.steps, self.batch_points)
        failures = 0
        while True:
            try:
                response = conn.client_stream(S, "LogMetricsStream", batches.requests(), self.timeout)
                _warn_replaced(response)
                return batches.stored_points + int(response.accepted)
            except TesseraError as error:
                failures = self._after(batches, error, failures, conn.retry)
                time.sleep(conn.retry.backoff_s(failures))

    async def run_async(self, conn: AioConnection) -> int:
        batches = _MetricBatches(self.run_id, self.steps, self.batch_points)
        failures = 0
        while True:
            try:
                response = await conn.client_stream(S, "LogMetricsStream", batches.requests(), self.timeout)
                _warn_replaced(response)
                return batches.stored_points + int(response.accepted)
            except TesseraError as error:
                failures = self._after(batches, error, failures, conn.retry)
                await asyncio.sleep(conn.retry.backoff_s(failures))


@dataclass(frozen=True)
class JobEnd(Call[T]):
    """`Job.wait`'s: the job's `events` to its end, then `then`. Where `timeout` runs out first,
    StillRunning says that the job goes on (in the state last seen, from `state` on) and what to
    do, rather than gRPC's words for a deadline; where it runs out after the state that ends the
    job came but before the stream closed, `then` is made still."""

    job_id: str
    events: Resumable[JobEvent]
    then: Call[T]
    state: JobState
    timeout: float | None

    def run(self, conn: Connection) -> T:
        state = self.state
        try:
            for event in self.events.iterate(conn):
                state = event.state if isinstance(event, StateChanged) else state
        except DeadlineExceeded as error:
            if self.timeout is None:
                raise
            if not state.finished:
                raise self._still(state, error) from error
        return self.then.run(conn)

    async def run_async(self, conn: AioConnection) -> T:
        state = self.state
        try:
            async for event in self.events.iterate_async(conn):
                state = event.state if isinstance(event, StateChanged) else state
        except DeadlineExceeded as error:
            if self.timeout is None:
                raise
            if not state.finished:
                raise self._still(state, error) from error
        return await self.then.run_async(conn)

    def _still(self, state: JobState, error: DeadlineExceeded) -> StillRunning:
        return StillRunning(
            f"job {self.job_id} is still {state.value} after {self.timeout:g} s, the timeout given to "
            "wait(); it goes on: call wait() again to wait longer, or cancel() to stop it",
            error.trailers,
            job_id=self.job_id,
        )


class Job(Part[C]):
    """A training job on the daemon. `info` is its latest known state (refresh() updates it)."""

    def __init__(self, conn: C, info: pb.Job) -> None:
        Part.__init__(self, conn)
        self.info = info

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self.state.value!r}, progress={self.info.progress:.2f})"

    @property
    def id(self) -> str:
        """The job id."""
        return self.info.job_id

    @property
    def state(self) -> JobState:
        """The state when `info` was last fetched."""
        return JobState.from_proto(self.info.state)

    @property
    def run_id(self) -> str:
        """The id of the tracking run the job logs its params and metrics to (made at submit):
        `client.training.run(job.run_id)`, `tessera runs show RUN_ID`."""
        return self.info.run_id

    @property
    def registered(self) -> common_pb2.VersionRef | None:
        """The model version registered on success, if any."""
        return self.info.registered if self.info.HasField("registered") else None

    @property
    def registered_alias(self) -> str:
        """The alias the job's registration set on `registered` ("" when none was asked for, or
        when the model had no room for it)."""
        return self.info.registered_alias

    @property
    def stopped_early(self) -> pb.EarlyStop | None:
        """Why early stopping ended the job's training (its metric, best value and epoch, the epoch
        it stopped after, the patience), if it did, once the job has ended: SUCCEEDED mostly, or
        FAILED (registering its weights failed after) or CANCELLED; every job the daemon answers has it
        (`job()`, `jobs()`, `refresh()`, `wait()`)."""
        return self.info.stopped_early if self.info.HasField("stopped_early") else None

    @call
    def refresh(self, *, timeout: float | None = None) -> Op[Job[C]]:
        """Fetch the job's current state into `info`; returns self."""
        return Op(S, "GetJob", pb.GetJobRequest(job_id=self.id), self._updated, timeout=timeout)

    @stream
    def watch(self, from_seq: int = 1, timeout: float | None = None) -> Resumable[JobEvent]:
        """The job's events from `from_seq` (1, or 0 too: the first), then live until the job ends.
        A cut connection, a stream reset (RST_STREAM, as a proxy gives), or a daemon restart
        within the client's RetryPolicy (its `attempts` reconnects in a row: about 2 s with the
        defaults; raise it to ride out a longer restart), is resumed from the last event seen, so
        no event is missed or repeated. A daemon that
        stops gracefully interrupts the job without ending it (the next start resumes it): the
        watch is resumed as for a restart, and raises Unavailable once those reconnects fail; it
        never ends on an INTERRUPTED state. `timeout` bounds the whole watch (None: no deadline).
        OutOfRange when `from_seq` is past the job's last event + 1."""
        return self._events(from_seq, timeout)

    @call
    def wait(self, timeout: float | None = None, check: bool = True) -> JobEnd[Job[C]]:
        """Block until the job ends; returns self with `info` final. With `check`, raises
        JobFailed when it did not succeed (JobCancelled, a JobFailed, when it was cancelled).
        It waits as `watch` does: a daemon stopped gracefully (the job interrupted, to be
        resumed by the next start) raises Unavailable once the client's RetryPolicy reconnects
        fail, rather than returning the job INTERRUPTED; call
        `wait()` again once the daemon runs again. `timeout` (seconds; None: no limit) ends the
        wait, not the job: past it, StillRunning (a DeadlineExceeded and a TimeoutError) says so;
        call `wait()` again to wait longer, or `cancel()` to stop the job."""

        def ended(info: pb.Job) -> Job[C]:
            self.info = info
            if check and self.state != JobState.SUCCEEDED:
                raise job_failed(self, info)
            return self

        events = self._events(max(self.info.last_seq + 1, 1), timeout)
        then = Op(S, "GetJob", pb.GetJobRequest(job_id=self.id), ended)
        return JobEnd(self.id, events, then, self.state, timeout)

    @call
    def cancel(self, *, timeout: float | None = None) -> Op[Job[C]]:
        """Ask the job to stop at its next step boundary; returns self, refreshed."""
        return Op(S, "CancelJob", pb.CancelJobRequest(job_id=self.id), self._updated, timeout=timeout)

    def _updated(self, info: pb.Job) -> Job[C]:
        self.info = info
        return self

    def _events(self, from_seq: int, timeout: float | None) -> Resumable[JobEvent]:
        cursor = WatchCursor(self.id, from_seq, self._conn.retry, timeout)
        return Resumable(S, "WatchJob", cursor, event_from_proto)


@dataclass(frozen=True)
class _CancelledFromScratch(Call[Any]):
    """Cancel the job (or, `sweep`, the sweep) a daemon older than resume_from made without it
    (it would train from scratch), then raise Unimplemented saying so; where the cancel fails,
    the Unimplemented names what it left running and how to cancel it, and the cancel's error is
    its cause."""

    made_id: str
    timeout: float | None
    sweep: bool = False
    # A daemon that kept resume_from but starts from the checkpoint's weights alone (one from
    # before the full resume), where the spec asked for the full resume.
    weights_alone: bool = False

    def _cancel(self) -> Op[Any]:
        if self.sweep:
            return Op(S, "CancelSweep", pb.CancelSweepRequest(sweep_id=self.made_id), timeout=self.timeout)
        return Op(S, "CancelJob", pb.CancelJobRequest(job_id=self.made_id), timeout=self.timeout)

    def _refused(self, cancel_error: TesseraError | None) -> Unimplemented:
        said = (
            "this tesserad starts a resume_from job from the checkpoint's weights alone, not going on "
            "in full (older than the client); upgrade it, or set resume_weights_only = true for that start. "
            if self.weights_alone
            else "this tesserad does not know resume_from (older than the client); upgrade it. "
        )
        made = f"{'sweep' if self.sweep else 'job'} {self.made_id}"
        start = "from the weights alone" if self.weights_alone else "from scratch"
        if cancel_error is None:
            return Unimplemented(f"{said}Its {made} would have trained {start}, and is cancelled")
        how = (
            f"client.training.cancel_sweep({self.made_id!r}), or tessera sweeps cancel {self.made_id}"
            if self.sweep
            else f"client.training.job({self.made_id!r}).cancel(), or tessera jobs cancel {self.made_id}"
        )
        return Unimplemented(
            f"{said}Its {made} trains {start} and could not be cancelled ({cancel_error}); cancel it: {how}"
        )

    def run(self, conn: Connection) -> Any:
        try:
            self._cancel().run(conn)
        except TesseraError as error:
            raise self._refused(error) from error
        raise self._refused(None)

    async def run_async(self, conn: AioConnection) -> Any:
        try:
            await self._cancel().run_async(conn)
        except TesseraError as error:
            raise self._refused(error) from error
        raise self._refused(None)


def _ended_run(reply: pb.Run) -> Run:
    forget_run(reply.run_id)
    return Run(reply)


class Training(Part[C]):
    """`client.training`: jobs (submit, watch, wait, cancel), experiment tracking, sweeps."""

    @call
    def submit(
        self, spec: JobSpecLike, *, request_id: str | None = None, timeout: float | None = None
    ) -> Chain[Job[C]]:
        """Queue a training job; the spec is checked before it is accepted (InvalidArgument or
        FailedPrecondition naming the field). Enum fields take short names ("regression").

        The submit carries `request_id` (a new UUID4 unless given), so it is retried on
        UNAVAILABLE like the idempotent calls: a retry of a submit the daemon had committed
        answers that job instead of creating a second. Pass your own id (1 to 64 of A-Z a-z 0-9
        - _) to send the same submit again yourself, within 24 hours; the same id with another
        spec is AlreadyExists. Ids are each caller's own. ValueError for an id the daemon would
        not keep, "" included (the daemon reads it as none, and a retry would make a second job).
        The retry needs a daemon that keeps request ids: an older one ignores the field.
        A daemon older than `resume_from` drops it and would train from scratch, and one older
        than its full resume would start from the checkpoint's weights alone (unless the spec
        sets resume_weights_only): its job is cancelled and Unimplemented says so."""
        sent = from_dict(job_spec_pb2.JobSpec, spec, "spec")
        request = pb.SubmitJobRequest(spec=sent, request_id=_submit_request_id(request_id))
        return Chain(
            Op(S, "SubmitJob", request, timeout=timeout),
            lambda info: self._answered(sent, info, timeout),
        )

    def _answered(
        self, sent: job_spec_pb2.JobSpec, info: pb.Job, timeout: float | None = None
    ) -> Call[Job[C]]:
        """The submitted job; where the daemon dropped the spec's resume_from (one older than the
        field, which keeps no field it does not know), or kept it but started from the weights
        alone where the spec asked for the full resume (its run's param resume_from.mode is not
        "full": a daemon from before the full resume records none), that job cancelled and
        Unimplemented."""
        if not sent.resume_from:
            return Given(self._job(info))
        if not info.spec.resume_from:
            return _CancelledFromScratch(info.job_id, timeout)
        if sent.resume_weights_only:
            return Given(self._job(info))
        return Chain(
            Op(S, "GetRun", pb.GetRunRequest(run_id=info.run_id), timeout=timeout),
            lambda run: (
                Given(self._job(info))
                if run.params.get("resume_from.mode") == "full"
                else _CancelledFromScratch(info.job_id, timeout, weights_alone=True)
            ),
        )

    @call
    def job(self, job_id: str, *, timeout: float | None = None) -> Op[Job[C]]:
        """A job by id."""
        return Op(S, "GetJob", pb.GetJobRequest(job_id=job_id), self._job, timeout=timeout)

    @listing
    def jobs(
        self,
        states: Iterable[str | int] = (),
        experiment: str = "",
        sweep_id: str = "",
        page_size: int = 0,
        *,
        timeout: float | None = None,
    ) -> Pages[Job[C]]:
        """Jobs, newest first, optionally only in `states` ("running", "queued", ...)."""
        # Read once, here: every page, and every read of the listing, asks the same (a generator
        # of states read by the first page alone would leave the rest listing every job).
        request = pb.ListJobsRequest(
            states=[enum_value(pb.JobState, "JOB_STATE_", s) for s in states],
            experiment=experiment,
            sweep_id=sweep_id,
            page_size=page_size,
        )

        def page(token: str) -> Op[pb.ListJobsResponse]:
            paged = pb.ListJobsRequest()
            paged.CopyFrom(request)
            paged.page_token = token
            return Op(S, "ListJobs", paged, timeout=timeout)

        return Pages(page, "jobs", self._job)

    @call
    def cancel(self, job_id: str, *, timeout: float | None = None) -> Op[Job[C]]:
        """Cancel a job (FailedPrecondition if it already ended)."""
        return Op(S, "CancelJob", pb.CancelJobRequest(job_id=job_id), self._job, timeout=timeout)

    @call
    def register(
        self,
        job_id: str,
        model: str,
        *,
        set_alias: str | None = None,
        description: str = "",
        timeout: float | None = None,
    ) -> Op[pb.RegisterJobWeightsResponse]:
        """Register a succeeded job's trained weights (its final checkpoint's) as a new version of
        `model`, made where missing, as the spec's register_as would have: for a job trained
        without it, or its weights under another model. The answer's `version` has the job, its run
        and its dataset versions in its lineage; `set_alias` moves that alias onto it. Once per job
        and model: where the model holds the job's version already (register_as's or an earlier
        call's), that version is returned with `reused` set, its own description kept, and
        `set_alias` moved onto it. NotFound for an unknown job; FailedPrecondition for a job that did
        not succeed (cancelled ones included) or whose final checkpoint its checkpoint retention
        released. A refused call registers nothing."""
        request = pb.RegisterJobWeightsRequest(
            job_id=job_id, model=model, alias=set_alias or "", description=description
        )
        # The daemon reads the checkpoint with torch, which its first such call imports.
        return Op(
            S,
            "RegisterJobWeights",
            request,
            timeout=timeout_or(timeout, max(self._conn.timeout, MODEL_CALL_TIMEOUT_S)),
        )

    @stream
    def watch(self, job_id: str, from_seq: int = 1, timeout: float | None = None) -> Resumable[JobEvent]:
        """A job's events, resumed across disconnects (see `Job.watch`)."""
        return Job(self._conn, pb.Job(job_id=job_id))._events(from_seq, timeout)

    @call
    def create_experiment(
        self,
        name: str,
        description: str = "",
        tags: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Op[pb.Experiment]:
        """Create an experiment (jobs create theirs on first use); tag values as text."""
        request = pb.CreateExperimentRequest(name=name, description=description, tags=_as_text(tags, "tags"))
        return Op(S, "CreateExperiment", request, timeout=timeout)

    @call
    def experiment(self, name: str, *, timeout: float | None = None) -> Op[pb.Experiment]:
        """An experiment with its run count."""
        return Op(S, "GetExperiment", pb.GetExperimentRequest(name=name), timeout=timeout)

    @listing
    def experiments(
        self,
        prefix: str = "",
        page_size: int = 0,
        view: str | int = "active_only",
        *,
        timeout: float | None = None,
    ) -> Pages[pb.Experiment]:
        """Every experiment, optionally by name prefix; `view` "deleted_only" or "all" shows
        deleted ones."""

        def page(token: str) -> Op[pb.ListExperimentsResponse]:
            request = pb.ListExperimentsRequest(
                name_prefix=prefix,
                page_size=page_size,
                page_token=token,
                view=enum_value(pb.LifecycleView, "LIFECYCLE_VIEW_", view),
            )
            return Op(S, "ListExperiments", request, timeout=timeout)

        return Pages(page, "experiments")

    @call
    def update_experiment(
        self,
        name: str,
        description: str | None = None,
        set_tags: Mapping[str, Any] | None = None,
        remove_tags: Iterable[str] = (),
        *,
        timeout: float | None = None,
    ) -> Op[pb.Experiment]:
        """Change an experiment's description (None leaves it) and tags (values as text)."""
        request = pb.UpdateExperimentRequest(
            name=name, set_tags=_as_text(set_tags, "set_tags"), remove_tags=list(remove_tags)
        )
        if description is not None:
            request.description = description
        return Op(S, "UpdateExperiment", request, timeout=timeout)

    @call
    def delete_experiment(self, name: str, *, timeout: float | None = None) -> Op[pb.Experiment]:
        """Soft-delete an experiment and its runs (hidden, read-only, kept until restored)."""
        return Op(S, "DeleteExperiment", pb.DeleteExperimentRequest(name=name), timeout=timeout)

    @call
    def restore_experiment(self, name: str, *, timeout: float | None = None) -> Op[pb.Experiment]:
        """Bring back a deleted experiment and the runs deleted with it."""
        return Op(S, "RestoreExperiment", pb.RestoreExperimentRequest(name=name), timeout=timeout)

    @call
    def create_run(
        self,
        experiment: str,
        name: str = "",
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        parent_run_id: str = "",
        create_experiment: bool = False,
        timeout: float | None = None,
    ) -> Op[Run]:
        """Start a run for a training script outside the daemon; log to it, then end it. Param
        and tag values as text. `parent_run_id` (or the tag mlflow.parentRunId) nests it under a
        run of the same experiment, as MLflow's nested runs (the tag says so too). An experiment
        that does not exist raises NotFound naming a close existing one (a misspelt name makes
        no new experiment), as MLflow's create_run; `create_experiment=True` creates it instead,
        as MLflow's set_experiment."""
        request = pb.CreateRunRequest(
            experiment=experiment,
            name=name,
            params=_as_text(params, "params"),
            tags=_as_text(tags, "tags"),
            parent_run_id=parent_run_id,
            create_experiment=create_experiment,
        )
        return Op(S, "CreateRun", request, Run, timeout=timeout)

    @call
    def update_run(
        self,
        run_id: str,
        status: str | int | None = None,
        set_tags: Mapping[str, Any] | None = None,
        remove_tags: Iterable[str] = (),
        *,
        timeout: float | None = None,
    ) -> Op[Run]:
        """End a run ("succeeded", "failed", "cancelled"; MLflow's "finished" and "killed" are
        succeeded and cancelled), reopen an ended one ("running": its end time cleared; a job's
        run is refused, FailedPrecondition naming the job), or change its tags (values as text;
        `remove_tags` drops these keys, one not there is no error). A run of `start_run` ended
        here is not ended again at exit."""
        request = pb.UpdateRunRequest(
            run_id=run_id, set_tags=_as_text(set_tags, "set_tags"), remove_tags=list(remove_tags)
        )
        if status is not None:
            request.status = run_status(status)
            if request.status != pb.RUN_STATUS_RUNNING:
                return Op(S, "UpdateRun", request, _ended_run, timeout=timeout)
        return Op(S, "UpdateRun", request, Run, timeout=timeout)

    @call
    def run(self, run_id: str, *, timeout: float | None = None) -> Op[Run]:
        """A run with its params and metric summaries: `run.metrics["val_loss"]` is the latest
        value (see `tessera.Run`)."""
        return Op(S, "GetRun", pb.GetRunRequest(run_id=run_id), Run, timeout=timeout)

    @call
    def delete_run(self, run_id: str, *, timeout: float | None = None) -> Op[Run]:
        """Soft-delete a run (hidden, read-only, kept until restored); a job's once it ended."""
        return Op(S, "DeleteRun", pb.DeleteRunRequest(run_id=run_id), Run, timeout=timeout)

    @call
    def restore_run(self, run_id: str, *, timeout: float | None = None) -> Op[Run]:
        """Bring back a deleted run."""
        return Op(S, "RestoreRun", pb.RestoreRunRequest(run_id=run_id), Run, timeout=timeout)

    @listing
    def runs(
        self,
        experiment: str = "",
        statuses: Iterable[str | int] = (),
        params: Mapping[str, Any] | None = None,
        metrics: Sequence[pb.MetricFilter] = (),
        page_size: int = 0,
        tags: Mapping[str, Any] | None = None,
        order_by: str | Sequence[str] = "",
        descending: bool | None = None,
        view: str | int = "active_only",
        order_field: str | int | None = None,
        filter: str = "",
        *,
        timeout: float | None = None,
    ) -> Pages[Run]:
        """Runs matching every filter given (param and tag values as text), newest first, or by a
        metric, fetched page by page as iterated; `.to_pandas()` of the listing is a DataFrame of
        them, one row per run, as MLflow's search_runs (see `tessera.runs.runs_frame`; awaited on
        `tessera.aio.Client`). `filter` is MLflow's search string, e.g. "metrics.val_acc > 0.9 and params.lr =
        '0.01'" (see tessera.run_filter), in place of the structured argument of each kind it
        uses. `order_by` names a metric ("val_loss") or is MLflow's "metrics.val_loss ASC" (a
        list of one too); `order_field` "last" (default), "min" or "max"; `descending` None: for
        a metric's name, the metric's own direction, e.g. lowest loss first, and for an order
        string without ASC or DESC, ascending, as in MLflow (both need order_by). `view`
        "deleted_only" or "all" shows deleted runs. A filter or order that cannot be read raises
        RunFilterError (a ValueError) naming the column."""
        request = pb.ListRunsRequest(
            experiment=experiment,
            statuses=[run_status(s) for s in statuses],
            params=[pb.ParamFilter(key=k, value=v) for k, v in _as_text(params, "params").items()],
            tags=[pb.TagFilter(key=k, value=v) for k, v in _as_text(tags, "tags").items()],
            metrics=list(metrics),
            page_size=page_size,
            view=enum_value(pb.LifecycleView, "LIFECYCLE_VIEW_", view),
        )
        if filter:
            _add_filter(request, parse_filter(filter))
        order, order_keys = _run_order(order_by, descending, order_field)
        if order is not None:
            request.order_by.CopyFrom(order)
        request.order_keys.extend(order_keys)

        def page(token: str) -> Op[pb.ListRunsResponse]:
            paged = pb.ListRunsRequest()
            paged.CopyFrom(request)
            paged.page_token = token
            return Op(S, "ListRuns", paged, timeout=timeout)

        return Pages(page, "runs", Run, runs_frame)

    @call
    def compare_runs(self, run_ids: Sequence[str], *, timeout: float | None = None) -> Op[RunComparison]:
        """Params and metrics of two or more runs side by side, as a `tessera.RunComparison`
        (`.runs`, `.params`, `.metrics`, `.to_pandas()`): the first 2,000 metric keys of the runs
        together, its metrics_left_out counting the rest (list_metrics lists them)."""
        request = pb.CompareRunsRequest(run_ids=list(run_ids))
        return Op(S, "CompareRuns", request, RunComparison, timeout=timeout)

    @call
    def leaderboard(
        self,
        experiment: str,
        metric: str,
        mode: str | None = None,
        limit: int = 10,
        field: str | int | None = None,
        *,
        timeout: float | None = None,
    ) -> Op[Leaderboard]:
        """An experiment's runs ranked by `metric` ("min" or "max" is better; default by name), by
        its summary's `field` ("last", "min" or "max"; default: the one `mode` names), as a
        `tessera.Leaderboard` of entries (`rank`, `value`, `run`, a `tessera.Run`), best first;
        `.to_pandas()` makes a DataFrame of them."""
        request = pb.LeaderboardRequest(experiment=experiment, metric=metric, limit=limit)
        if mode is not None:
            request.mode = enum_value(job_spec_pb2.OptimizeMode, "OPTIMIZE_MODE_", mode)
        if field is not None:
            request.field = enum_value(pb.SummaryField, "SUMMARY_FIELD_", field)
        return Op(S, "Leaderboard", request, Leaderboard, timeout=timeout)

    @call
    def log_params(self, run_id: str, params: Mapping[str, Any], *, timeout: float | None = None) -> Op[None]:
        """Record params of a run (values as text; a logged param cannot change)."""
        request = pb.LogParamsRequest(run_id=run_id, params=_as_text(params, "params"))
        return Op(S, "LogParams", request, lambda _: None, timeout=timeout)

    @call
    def log_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int | None = None,
        *,
        timestamp: int | None = None,
        timeout: float | None = None,
    ) -> Op[int]:
        """Record metric values at a step; returns how many points were accepted. NaN and
        infinite values are stored, as MLflow stores them (a diverged loss says so; summaries'
        min, max and best skip NaN). `timestamp`: the points' time, as MLflow's, in whole
        milliseconds since the Unix epoch (None: the daemon's clock when it stores them). A run
        keeps one point per key and step, the newest: a value logged again at a step replaces the
        one there, and warns (MetricPointsReplaced) once per call, while resending the same value
        changes nothing. So `step` None (its default) is not MLflow's 0, which would make every
        call replace the last: each key's point goes at the step after the highest the run holds
        for it (0 for a new key), so calls without a step keep every value, as MLflow's history
        does. Many steps in one call: `log_batch`; in the background: `metric_logger`."""
        stamp = metric_timestamp(timestamp) if timestamp is not None else None
        points = [
            pb.MetricPoint(
                key=key, value=metric_value(key, value), step=step or 0, time=stamp, next_step=step is None
            )
            for key, value in metrics.items()
        ]
        request = pb.LogMetricsRequest(run_id=run_id, points=points)
        return Op(S, "LogMetrics", request, _accepted, timeout=timeout)

    @call
    def log_batch(self, run_id: str, points: Points, *, timeout: float | None = None) -> Op[int]:
        """Record points of any keys and steps in one call, stored all or none, as MLflow's
        log_batch: each a `tessera.MetricPoint` or a (key, value, step[, timestamp]) tuple
        (`timestamp` as log_metrics'). Returns how many were accepted; at most MAX_BATCH_POINTS
        (ValueError beyond: log_metrics_stream takes any number). Values and replacements as
        for log_metrics. A call costs a round trip and a commit (a disk flush on a daemon with
        store.durability "full", its default): about 7 ms per step logged alone, on the 2-core box
        of bench/metric_batch_bench.py, where 100 steps a call stored 100x the points per second."""
        made = metric_points(points)
        if len(made) > MAX_BATCH_POINTS:
            raise ValueError(
                f"log_batch takes at most {MAX_BATCH_POINTS} points, got {len(made)}: send them in "
                "several calls, or over log_metrics_stream"
            )
        request = pb.LogMetricsRequest(run_id=run_id, points=made)
        return Op(S, "LogMetrics", request, _accepted, timeout=timeout)

    def metric_logger(
        self, run_id: str, *, flush_points: int = 1000, flush_ms: float = 1000, max_queued: int = 100_000
    ) -> MetricLogger:
        """A background logger of the run's points (MLflow's `synchronous=False`): `log(metrics,
        step)` queues them and returns at once, one thread sends them in batches of `flush_points`
        or every `flush_ms`; `flush()`, and `close()` (or the end of a `with` block), store them
        all, and raise any batch's error (see `tessera.run_logging.MetricLogger`). The blocking
        client only."""
        if not isinstance(self._conn, Connection):
            raise TypeError(
                "metric_logger needs the blocking tessera.Client; on tessera.aio.Client await log_batch"
            )
        return MetricLogger(self, run_id, flush_points=flush_points, flush_ms=flush_ms, max_queued=max_queued)

    @call
    def start_run(
        self,
        experiment: str = "",
        name: str = "",
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        create_experiment: bool = False,
        timeout: float | None = None,
    ) -> Call[ActiveRun]:
        """Start a run, or reopen the ended run `run_id` (its status back to running, its end time
        cleared, as MLflow's start_run(run_id=...); a job's run is refused, FailedPrecondition
        naming the job), as an `ActiveRun` whose methods log to it without its id. In a `with`
        block it ends the run as the block ends: SUCCEEDED, FAILED where the block raised (the
        exception goes on), CANCELLED on KeyboardInterrupt. A run left open is ended at
        interpreter exit (see `ActiveRun`). An experiment that does not exist raises NotFound
        unless `create_experiment=True` (see `create_run`). The blocking client only.

            with client.training.start_run("mnist", params={"lr": 0.01}) as run:
                for step in range(100):
                    run.log_metrics({"loss": train_step()}, step, synchronous=False)
        """
        if run_id is not None:
            if experiment or name or params or tags or create_experiment:
                raise ValueError(
                    "start_run(run_id=...) reopens a run as it is: leave experiment, name, params, tags and create_experiment "
                    "out (log_params and set_tags on the run add to it)"
                )
            begin = pb.UpdateRunRequest(run_id=run_id, status=pb.RUN_STATUS_RUNNING)
            return _RunStart(Op(S, "UpdateRun", begin, timeout=timeout), self)
        if not experiment:
            raise ValueError("start_run needs an experiment (or run_id= to reopen a run)")
        create = pb.CreateRunRequest(
            experiment=experiment,
            name=name,
            params=_as_text(params, "params"),
            tags=_as_text(tags, "tags"),
            create_experiment=create_experiment,
        )
        return _RunStart(Op(S, "CreateRun", create, timeout=timeout), self)

    @call
    def log_metrics_stream(
        self,
        run_id: str,
        steps: Iterable[tuple[int, Mapping[str, float]]],
        batch_points: int = 1000,
        timeout: float | None = None,
    ) -> MetricSteps:
        """Record the metrics of many steps, `(step, {key: value})` in order, over one stream in
        batches of `batch_points` points; returns how many points were accepted. A cut stream
        is resent from its first batch not known to be stored; a failure says which points are
        stored (resending them is harmless: the daemon keeps one point per key and step); after
        a resend, MetricPointsReplaced counts only what the last try replaced. Values
        must be finite, as for log_metrics: a batch with a NaN fails the stream there.
        `batch_points` is at most MAX_BATCH_POINTS, the daemon's limit for one batch."""
        if not 1 <= batch_points <= MAX_BATCH_POINTS:
            raise ValueError(f"batch_points must be in 1..{MAX_BATCH_POINTS}, got {batch_points}")
        return MetricSteps(run_id, steps, batch_points, timeout_or(timeout, self._conn.transfer_timeout))

    @listing
    def list_metrics(
        self, run_id: str, page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.MetricSummary]:
        """Every metric summary of a run in key order: those `run()` leaves out past its first
        2,000 keys (its metrics_left_out) too."""

        def page(token: str) -> Op[pb.ListRunMetricsResponse]:
            request = pb.ListRunMetricsRequest(run_id=run_id, page_size=page_size, page_token=token)
            return Op(S, "ListRunMetrics", request, timeout=timeout)

        return Pages(page, "metrics")

    @call
    def metric_history(
        self,
        run_id: str,
        key: str,
        max_points: int = 0,
        start_step: int = 0,
        end_step: int | None = None,
        *,
        timeout: float | None = None,
    ) -> Chain[MetricHistory]:
        """One metric's points from `start_step` to `end_step` (inclusive; None: to the last
        step, so end_step=0 reads step 0 alone), downsampled by the daemon to `max_points` when
        set; the daemon's pages are joined into one `tessera.MetricHistory`: `steps`, `values`
        and `timestamps` as numpy arrays, `to_pandas()`, and the message's fields (`points`)."""

        def page(token: str) -> Op[pb.MetricHistory]:
            request = pb.GetMetricHistoryRequest(
                run_id=run_id,
                key=key,
                max_points=max_points,
                start_step=start_step,
                end_step=end_step,
                page_token=token,
            )
            return Op(S, "GetMetricHistory", request, timeout=timeout)

        return Chain(JoinedPages(page), lambda joined: Given(MetricHistory(joined)))

    @call
    def log_artifact(
        self,
        run_id: str,
        local_path: str | Path,
        artifact_path: str | None = None,
        *,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> Upload[pb.RunArtifact]:
        """Store a file with a run, as MLflow's log_artifact: under the run's directory
        `artifact_path` ("plots"; None for the top) with the file's own name. Streamed in chunks
        with its sha256; storing to a path again replaces what was there."""
        source = Path(local_path)
        path = f"{artifact_path.removesuffix('/')}/{source.name}" if artifact_path else source.name
        return self._artifact_upload(run_id, source, path, progress, chunk_size, timeout)

    @call
    def log_artifacts(
        self,
        run_id: str,
        local_dir: str | Path,
        artifact_path: str | None = None,
        *,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> ArtifactUploads:
        """Store every file under `local_dir` with a run, as MLflow's log_artifacts: at its path
        relative to `local_dir`, under the run's directory `artifact_path` (None: the top; the
        directory's own name is not kept). Links to files are stored as those files, links to
        directories are not followed (as MLflow's os.walk). One upload per file, in path order;
        returns what was stored ([] for a directory with no files). A path that is not a
        directory raises NotADirectoryError or FileNotFoundError; a failed file raises its own
        error, saying which file and how many were stored before it."""
        # Refused before the walk: a directory with no files makes no upload to refuse it.
        call_timeout(timeout)
        root = Path(local_dir)
        prefix = f"{artifact_path.removesuffix('/')}/" if artifact_path else ""

        def upload(local: Path, relative: str) -> Upload[pb.RunArtifact]:
            return self._artifact_upload(run_id, local, prefix + relative, None, chunk_size, timeout)

        return ArtifactUploads(root, upload)

    @call
    def log_dict(
        self,
        run_id: str,
        dictionary: Any,
        artifact_file: str,
        *,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> Upload[pb.RunArtifact]:
        """Store `dictionary` with a run as the file `artifact_file` ("config/train.json"), as
        MLflow's log_dict: YAML for a .yaml or .yml name (ImportError without PyYAML, which
        tessera does not install), else JSON indented by 2. A value JSON cannot write raises
        TypeError before anything is sent."""
        data = dict_bytes(dictionary, artifact_file)
        return self._bytes_upload(run_id, data, artifact_file, chunk_size, timeout)

    @call
    def log_text(
        self,
        run_id: str,
        text: str,
        artifact_file: str,
        *,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> Upload[pb.RunArtifact]:
        """Store `text` with a run as the UTF-8 file `artifact_file` ("notes/summary.md"), as
        MLflow's log_text."""
        if not isinstance(text, str):
            raise TypeError(f"log_text takes a str, not {type(text).__name__}")
        return self._bytes_upload(run_id, text.encode(), artifact_file, chunk_size, timeout)

    @call
    def log_figure(
        self,
        run_id: str,
        figure: Any,
        artifact_file: str,
        *,
        save_kwargs: Mapping[str, Any] | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> Upload[pb.RunArtifact]:
        """Store a figure with a run as the image `artifact_file` ("plots/loss.png"), as MLflow's
        log_figure: any object with a `savefig(path, **save_kwargs)` method, a matplotlib Figure
        for one (matplotlib picks the format from the extension). tessera does not install
        matplotlib. On the asyncio client the figure is saved in a thread."""
        check_figure(figure)
        check_chunk_size(chunk_size)

        def requests() -> Iterator[pb.UploadRunArtifactRequest]:
            data = figure_bytes(figure, artifact_file, save_kwargs)
            return bytes_requests(run_id, artifact_file, data, chunk_size)

        return Upload(S, "UploadRunArtifact", requests, timeout_or(timeout, self._conn.transfer_timeout))

    def _bytes_upload(
        self, run_id: str, data: bytes, path: str, chunk_size: int, timeout: float | None
    ) -> Upload[pb.RunArtifact]:
        check_chunk_size(chunk_size)
        return Upload(
            S,
            "UploadRunArtifact",
            lambda: bytes_requests(run_id, path, data, chunk_size),
            timeout_or(timeout, self._conn.transfer_timeout),
        )

    def _artifact_upload(
        self,
        run_id: str,
        source: Path,
        path: str,
        progress: Progress | None,
        chunk_size: int,
        timeout: float | None,
    ) -> Upload[pb.RunArtifact]:
        check_chunk_size(chunk_size)
        return Upload(
            S,
            "UploadRunArtifact",
            lambda: artifact_requests(run_id, path, source, chunk_size, progress),
            timeout_or(timeout, self._conn.transfer_timeout),
        )

    @listing
    def list_artifacts(
        self, run_id: str, path: str = "", page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.RunArtifact]:
        """A run's artifacts in path order: every one, or those under the directory `path`."""

        def page(token: str) -> Op[pb.ListRunArtifactsResponse]:
            request = pb.ListRunArtifactsRequest(
                run_id=run_id, path=path, page_size=page_size, page_token=token
            )
            return Op(S, "ListRunArtifacts", request, timeout=timeout)

        return Pages(page, "artifacts")

    @call
    def download_artifact(
        self,
        run_id: str,
        path: str,
        dst: str | Path | None = None,
        *,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
        overwrite: bool = True,
        resume: bool = False,
    ) -> ResumingDownload[pb.RunArtifact]:
        """Write one artifact to `dst` (a file, or a directory to put it in under its own name:
        one that exists, or a str ending in "/"; None: the current directory), verified against
        its sha256; returns its description. Directories missing are made as the file is written,
        and removed again where the download fails leaving them empty. `overwrite` False: a file there is refused with
        FileExistsError. A stream that breaks (UNAVAILABLE) is made again within the client's
        RetryPolicy and goes on from the bytes written. One that gives up or times out keeps
        them in a hidden partial file beside the file, with a record of the artifact's sha256, as
        does one asked to `resume` however it ends but in a file whose sha256 is not the
        artifact's (stopped, refused, on a full disk: its error says how many);
        `resume` True goes on from them where the artifact at `path` still has that sha256
        (ValueError where it was stored again since, leaving them as they are), and without
        `resume` the download starts again from the first byte."""
        return self._artifact_download(
            run_id, path, artifact_target(path, dst), progress, chunk_size, timeout, overwrite, resume
        )

    @call
    def download_artifacts(
        self,
        run_id: str,
        path: str = "",
        dst_path: str | Path = ".",
        *,
        timeout: float | None = None,
        overwrite: bool = True,
        resume: bool = False,
    ) -> ArtifactTree:
        """As MLflow's download_artifacts: the artifact at `path`, or every one under the
        directory `path` ("" for all), written under `dst_path` at their own paths and each
        verified; returns the local path of `path`. `overwrite` False: a file already at one of
        those paths is refused with FileExistsError before any is written. Each file is
        reconnected and resumed as by `download_artifact`, `resume` True going on from the
        bytes an earlier download of it kept."""
        # "plots/" names the directory "plots", as the listing takes it; the daemon refuses a
        # trailing "/" in one artifact's path, so the NOT_FOUND for nothing there names "plots".
        path = path.removesuffix("/")
        root = Path(dst_path)
        # Refused before the listing is asked for, not at the first download.
        call_timeout(timeout)

        def download(artifact_path: str, local: Path) -> ResumingDownload[pb.RunArtifact]:
            return self._artifact_download(
                run_id, artifact_path, local, None, CHUNK_BYTES, timeout, overwrite, resume
            )

        listing: Pages[pb.RunArtifact] = Pages(
            lambda token: Op(
                S, "ListRunArtifacts", pb.ListRunArtifactsRequest(run_id=run_id, path=path, page_token=token)
            ),
            "artifacts",
        )
        # Nothing at or under a path named: NOT_FOUND for the path says so.
        missing = self._artifact_lookup(run_id, path, timeout) if path else None
        return ArtifactTree(listing, download, missing, root, root / path, overwrite)

    def _artifact_lookup(self, run_id: str, path: str, timeout: float | None) -> Op[pb.RunArtifact]:
        """The artifact at `path` (NotFound where there is none), without downloading it."""

        def the_artifact(page: pb.ListRunArtifactsResponse) -> pb.RunArtifact:
            # The listing of a path starts with the artifact at that path itself, if there is one.
            if not page.artifacts or page.artifacts[0].path != path:
                raise NotFound(f"run {run_id!r} has no artifact at {path!r}; {LIST_ARTIFACTS_WORDS}")
            return page.artifacts[0]

        listing = pb.ListRunArtifactsRequest(run_id=run_id, path=path, page_size=1)
        return Op(S, "ListRunArtifacts", listing, the_artifact, timeout=timeout)

    def _artifact_to(
        self, run_id: str, path: str, target: Path, chunk_size: int, timeout: float
    ) -> Chain[Path]:
        """The call that writes the artifact `path` to the file `target`, giving `target`
        (`models.push` of "runs:/RUN_ID/PATH")."""
        download = self._artifact_download(run_id, path, target, None, chunk_size, timeout, True, False)
        return Chain(download, lambda _: Given(target))

    def _artifact_download(
        self,
        run_id: str,
        path: str,
        target: Path,
        progress: Progress | None,
        chunk_size: int,
        timeout: float | None,
        overwrite: bool,
        resume: bool,
    ) -> ResumingDownload[pb.RunArtifact]:
        def request(header: pb.RunArtifact | None, offset: int) -> pb.DownloadRunArtifactRequest:
            return pb.DownloadRunArtifactRequest(
                run_id=run_id, path=path, chunk_size=chunk_size, offset=offset
            )

        return ResumingDownload(
            S,
            "DownloadRunArtifact",
            request,
            self._artifact_lookup(run_id, path, timeout),
            timeout_or(timeout, self._conn.transfer_timeout),
            # The CLI names a file in a directory it was asked to make ("out/"): the directories
            # missing are made as the file is, and removed again where it fails leaving them empty.
            lambda: SinkInDirectory(target, progress, overwrite, resume, artifact_name),
            self._conn.retry,
            f"downloading artifact {path} of run {run_id}",
        )

    @call
    def submit_sweep(
        self,
        spec: pb.SweepSpec | Mapping[str, Any],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Chain[Sweep[C]]:
        """Start a hyperparameter sweep over a base job spec: grid, random, TPE, CMA-ES or PBT trials,
        optionally pruned by ASHA or Hyperband; returns its `Sweep` (wait, trials, best, cancel).

        As `submit`, it carries `request_id` (a new UUID4 unless given) and is retried on
        UNAVAILABLE: a retry of a submit the daemon had committed answers that sweep instead of
        starting a second. Your own id (1 to 64 of A-Z a-z 0-9 - _) sends the same submit again
        within 24 hours; the same id with another spec is AlreadyExists naming the sweep. Sweep
        ids and job ids are apart. ValueError for an id the daemon would not keep. The retry
        needs a daemon that keeps sweep request ids: an older one ignores the field. A daemon
        older than the base's `resume_from` drops it and its trials would train from scratch: the
        sweep is cancelled and Unimplemented says so."""
        sent = from_dict(pb.SweepSpec, spec, "sweep")
        request = pb.SubmitSweepRequest(spec=sent, request_id=_submit_request_id(request_id))
        return Chain(
            Op(S, "SubmitSweep", request, timeout=timeout),
            lambda info: self._sweep_answered(sent, info, timeout),
        )

    def _sweep_answered(
        self, sent: pb.SweepSpec, info: pb.Sweep, timeout: float | None = None
    ) -> Call[Sweep[C]]:
        """The submitted sweep; where the daemon dropped its base's resume_from (as `_answered`),
        that sweep cancelled and Unimplemented: its trials would train from scratch."""
        if not sent.base.resume_from or info.spec.base.resume_from:
            return Given(self._sweep(info))
        return _CancelledFromScratch(info.sweep_id, timeout, sweep=True)

    @call
    def sweep(self, sweep_id: str, *, timeout: float | None = None) -> Op[Sweep[C]]:
        """A sweep with its trials."""
        return Op(S, "GetSweep", pb.GetSweepRequest(sweep_id=sweep_id), self._sweep, timeout=timeout)

    @listing
    def sweeps(self, page_size: int = 0, *, timeout: float | None = None) -> Pages[Sweep[C]]:
        """Every sweep."""
        return Pages(
            lambda token: Op(
                S, "ListSweeps", pb.ListSweepsRequest(page_size=page_size, page_token=token), timeout=timeout
            ),
            "sweeps",
            self._sweep,
        )

    @call
    def cancel_sweep(self, sweep_id: str, *, timeout: float | None = None) -> Op[Sweep[C]]:
        """Cancel a sweep and its running trials."""
        return Op(S, "CancelSweep", pb.CancelSweepRequest(sweep_id=sweep_id), self._sweep, timeout=timeout)

    def _job(self, info: pb.Job) -> Job[C]:
        return Job(self._conn, info)

    def _sweep(self, info: pb.Sweep) -> Sweep[C]:
        return Sweep(self._conn, info)
