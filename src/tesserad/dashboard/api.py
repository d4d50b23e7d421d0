"""The dashboard's JSON API, /api/v1 (documented in docs/dashboard-api.md).

Each handler parses its query, calls the same domain method the gRPC servicer calls, and
answers with `json_forms`; domain errors become HTTP statuses in server.py's one table.
Job events and system samples stream as server-sent events; run artifacts stream as files.
The only changes are restores, each held to the role its gRPC method needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import math
import mimetypes
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tessera.run_filter import RunFilterError, parse_filter, parse_orders
from tesserad.api.convert_training import (
    metric_filters_from_proto,
    summary_field_from_proto,
    text_filters_from_proto,
    time_filters_from_proto,
)
from tesserad.dashboard import json_forms as forms
from tesserad.dashboard.access import CHANGE_HEADER, ROLE_KEY, SESSION_KEY, Handler
from tesserad.dashboard.listener import COUNTED_STATUS, ExpectHandler
from tesserad.errors import DataLoss, InvalidArgument, PermissionDenied, ResourceExhausted, Unavailable
from tesserad.names import validate_name
from tesserad.numbers import INT64_MAX, whole_number
from tesserad.registry import Registry
from tesserad.security import Role
from tesserad.security.limits import ConcurrencyGate
from tesserad.security.roles import ROLE_TABLE
from tesserad.serving.service import InferenceService
from tesserad.system import SystemService
from tesserad.text import MAX_PARAM_VALUE
from tesserad.training.artifacts import RunArtifact, RunArtifacts
from tesserad.training.events import EventLog, JobEvent
from tesserad.training.jobs import STATES as JOB_STATES
from tesserad.training.jobs import Jobs
from tesserad.training.run_search import SortKey, TextFilter, TimeFilter
from tesserad.training.sweeps import Sweeps
from tesserad.training.tracking import HistoryPage, MetricFilter, Tracking
from tesserad.training.watch import watch_job

PREFIX = "/api/" + forms.API_VERSION
DEFAULT_HISTORY_POINTS = 1000
MAX_HISTORY_POINTS = 20_000
MAX_HISTORY_PAGES = 64
MAX_SEQ = 2**62  # sequence numbers and steps: room to add one and stay within int64
SYSTEM_INTERVAL_MS = (250, 60_000, 1000)  # least, most, default
# How often a client whose event stream ended (a reconnect, a cut-off watcher) tries again.
SSE_RETRY_MS = 1000
ENCODED_EVENTS = 4096
_METRIC_FIELDS = ("last", "min", "max")
_METRIC_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
ARTIFACT_CHUNK_BYTES = 256 * 1024
# Previews are read whole into the page; bigger artifacts are only downloaded.
PREVIEW_MAX_BYTES = 1024 * 1024
PREVIEW_IMAGE_TYPES = frozenset({"image/png", "image/svg+xml"})
PREVIEW_TEXT_TYPES = frozenset(
    {"application/json", "application/xml", "application/yaml", "application/toml"}
)
# Python's own table only: the system's mime.types would make the answer depend on the host.
_TYPES = mimetypes.MimeTypes()
for _suffix, _type in ((".log", "text/plain"), (".yaml", "application/yaml"), (".yml", "application/yaml")):
    _TYPES.add_type(_type, _suffix)
_TYPES.add_type("application/toml", ".toml")
# An artifact is someone's file: never run as a page of this origin (an SVG or HTML artifact
# may hold script), never sniffed into another type, never embedded by another site.
ARTIFACT_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "private, no-cache",
}
_VIEWS = ("active", "deleted", "all")
_RUNS_QUERY = (
    "experiment",
    "filter",
    "order_by",
    "status",
    "param",
    "metric",
    "view",
    "page_size",
    "page_token",
)
# The dashboard form's own conditions, which a filter string holds too (one or the other).
_RUNS_CONDITIONS = ("status", "param", "metric")
_RESTORE_RUN_ROLE = ROLE_TABLE["tessera.v1.Training"]["RestoreRun"]
_RESTORE_EXPERIMENT_ROLE = ROLE_TABLE["tessera.v1.Training"]["RestoreExperiment"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """The domain services the dashboard reads: the same objects the gRPC servicers hold."""

    jobs: Jobs
    events: EventLog
    tracking: Tracking
    artifacts: RunArtifacts
    sweeps: Sweeps
    registry: Registry
    inference: InferenceService
    system: SystemService
    stopping: asyncio.Event


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(forms.finite(data), status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    return whole_number(name, raw, low, high)


def _required(request: web.Request, name: str, what: str, usage: str) -> str:
    """The query parameter `name`; InvalidArgument saying what it is and how the route takes it
    when it is left out or empty (the domain would name its field, not the parameter)."""
    value = request.query.get(name, "")
    if not value:
        raise InvalidArgument(f"the query parameter {name} is required: {what}, as in GET {PREFIX}{usage}")
    return value


def _page_args(request: web.Request) -> tuple[int, str]:
    return _int(request, "page_size", 0, 0, 1000), request.query.get("page_token", "")


def _param_filters(values: Iterable[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"param filter {raw[:80]!r} must be KEY=VALUE")
        if len(value) > MAX_PARAM_VALUE:
            raise InvalidArgument(
                f"param filter {key[:80]!r}: its value is {len(value)} characters long; a run's param value "
                f"is at most {MAX_PARAM_VALUE}, so it would match no run"
            )
        if key in params and params[key] != value:
            raise InvalidArgument(f"param {key[:80]!r} is filtered twice with different values")
        params[key] = value
    return params


def _metric_filters(values: Iterable[str]) -> list[MetricFilter]:
    filters = []
    for raw in values:
        parts = raw.rsplit(":", 3)
        if len(parts) != 4 or parts[1] not in _METRIC_FIELDS or parts[2] not in _METRIC_OPS:
            raise InvalidArgument(
                f"metric filter {raw[:80]!r} must be KEY:FIELD:OP:VALUE with FIELD one of "
                f"{', '.join(_METRIC_FIELDS)} and OP one of {', '.join(_METRIC_OPS)}, e.g. val_loss:last:lt:0.5"
            )
        key, field, op, value = parts
        # ASCII and no "_": float() also reads other scripts' digits ("٣" as 3) and "1_0" as 10.
        try:
            number = float(value) if value.isascii() and "_" not in value else None
        except ValueError:
            number = None
        # NaN reads as a float, but compares true against no value.
        if number is None or math.isnan(number):
            raise InvalidArgument(f"metric filter {raw[:80]!r}: {value[:40]!r} is not a number")
        filters.append(MetricFilter(key, field, op, number))
    return filters


@dataclass(frozen=True)
class RunSearch:
    """The conditions of GET /runs as list_runs takes them."""

    statuses: list[str]
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[MetricFilter]
    texts: list[TextFilter]
    times: list[TimeFilter]


def _refuse_unknown(request: web.Request, route: str, known: Iterable[str]) -> None:
    """InvalidArgument for a query parameter `route` does not take (a misspelt one would be
    ignored, answering as if it were not there), naming the nearest and those it takes."""
    known = tuple(known)
    for name in request.query:
        if name not in known:
            near = difflib.get_close_matches(name, known, 1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise InvalidArgument(
                f"unknown query parameter {name[:40]!r}; {hint}GET {PREFIX}{route} takes {', '.join(known)}"
            )


def _run_search(request: web.Request) -> RunSearch:
    """The conditions to list runs by: from `filter`, MLflow's search string as the SDK and CLI
    read it, or from the form's status, param and metric."""
    text = request.query.get("filter", "")
    if not text:
        params = _param_filters(request.query.getall("param", []))
        metrics = _metric_filters(request.query.getall("metric", []))
        return RunSearch(request.query.getall("status", []), params, {}, metrics, [], [])
    given = [name for name in _RUNS_CONDITIONS if name in request.query]
    if given:
        raise InvalidArgument(
            f"give conditions either as filter= or as {'=, '.join(given)}=, not both: filter= takes them "
            "all, e.g. filter=attributes.status = 'succeeded' and params.lr = '0.1'"
        )
    try:
        found = parse_filter(text)
    except RunFilterError as e:
        raise InvalidArgument(f"filter: {e}") from None
    return RunSearch(
        found.statuses,
        found.params,
        found.tags,
        metric_filters_from_proto(found.metrics),
        text_filters_from_proto(found.texts),
        time_filters_from_proto(found.times),
    )


def _run_order(request: web.Request) -> list[SortKey]:
    """`order_by`, MLflow's order string as the SDK reads it: one key or more apart by commas,
    each ascending unless it says DESC."""
    try:
        keys = parse_orders(request.query.get("order_by", ""))
    except RunFilterError as e:
        raise InvalidArgument(f"order_by: {e}") from None
    return [
        SortKey(
            k.entity,
            k.key,
            (summary_field_from_proto(k.field) or "last") if k.entity == "metrics" else "",
            bool(k.descending),
        )
        for k in keys
    ]


def _view(request: web.Request) -> str:
    view = request.query.get("view", "") or "active"
    if view not in _VIEWS:
        raise InvalidArgument(f"view {view[:40]!r} is not one of {', '.join(_VIEWS)}")
    return view


def _allow_change(request: web.Request, what: str, needed: Role) -> None:
    """PermissionDenied unless the request may make this change: sent by the dashboard's own
    page (CHANGE_HEADER; the listener has checked its Origin) by a caller with `needed`."""
    if request.headers.get(CHANGE_HEADER) != "1":
        raise PermissionDenied(
            f"a change must carry the header {CHANGE_HEADER}: 1, as the dashboard's pages send"
        )
    role = request.get(ROLE_KEY, Role.READER)
    if role < needed:
        raise PermissionDenied(
            f"{what} needs the {needed.label} role (as on gRPC); this token has the {role.label} role. "
            f"Log in with an {needed.label} token, or ask an operator"
        )


def artifact_type(path: str) -> str:
    return _TYPES.guess_type(path, strict=False)[0] or "application/octet-stream"


def preview_type(artifact: RunArtifact) -> str | None:
    """The type an artifact is previewed as (text of any kind as plain text, so HTML shows as
    its source), or None when it is not previewed."""
    kind = artifact_type(artifact.path)
    if artifact.size_bytes > PREVIEW_MAX_BYTES:
        return None
    if kind in PREVIEW_IMAGE_TYPES:
        return kind
    if kind.startswith("text/") or kind in PREVIEW_TEXT_TYPES:
        return "text/plain; charset=utf-8"
    return None


def _artifact_json(artifact: RunArtifact) -> dict[str, Any]:
    data = forms.artifact_json(artifact)
    data["content_type"] = artifact_type(artifact.path)
    data["preview"] = preview_type(artifact) is not None
    return data


def _disposition(kind: str, path: str) -> str:
    """RFC 6266: an ASCII name for old clients and the UTF-8 one (RFC 8187) for the rest."""
    name = path.rsplit("/", 1)[-1]
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\%' else "_" for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def _sse(seq: int | None, kind: str, data: Any) -> bytes:
    lines = [] if seq is None else [f"id: {seq}"]
    lines += [f"event: {kind}", f"data: {_dumps(forms.finite(data))}", "", ""]
    return "\n".join(lines).encode()


class DashboardApi:
    """The /api/v1 routes."""

    def __init__(self, services: Services, max_streams: int) -> None:
        self._s = services
        # Event streams are long-lived like gRPC's watch streams, and held to the same setting.
        self._streams = ConcurrencyGate(max_streams, "limits.max_concurrent_streams", "event streams")
        # Every open Job page of a job gets the same events: each is encoded once, on the event
        # loop (so no lock), and the newest ENCODED_EVENTS are kept for the other pages.
        self._encoded: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def _event_bytes(self, job_id: str, event: JobEvent) -> bytes:
        key = (job_id, event.seq)
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._encoded[key] = _sse(event.seq, event.kind, forms.event_json(event))
            if len(self._encoded) > ENCODED_EVENTS:
                self._encoded.popitem(last=False)
        return encoded

    def routes(self, expect_handler: ExpectHandler) -> list[web.RouteDef]:
        """The routes, each answering an Expect header with `expect_handler`."""

        def get(path: str, handler: Handler) -> web.RouteDef:
            return web.get(path, handler, expect_handler=expect_handler)

        def post(path: str, handler: Handler) -> web.RouteDef:
            return web.post(path, handler, expect_handler=expect_handler)

        return [
            get(PREFIX + "/jobs", self.list_jobs),
            get(PREFIX + "/jobs/{job_id}", self.get_job),
            get(PREFIX + "/jobs/{job_id}/events", self.job_events),
            get(PREFIX + "/experiments", self.list_experiments),
            get(PREFIX + "/runs", self.list_runs),
            get(PREFIX + "/runs/{run_id}", self.get_run),
            get(PREFIX + "/runs/{run_id}/metrics/{key}", self.metric_history),
            get(PREFIX + "/runs/{run_id}/artifacts", self.list_artifacts),
            get(PREFIX + "/runs/{run_id}/artifact", self.download_artifact),
            get(PREFIX + "/session", self.session),
            post(PREFIX + "/runs/{run_id}/restore", self.restore_run),
            post(PREFIX + "/experiments/{name}/restore", self.restore_experiment),
            get(PREFIX + "/leaderboard", self.leaderboard),
            get(PREFIX + "/sweeps", self.list_sweeps),
            get(PREFIX + "/sweeps/{sweep_id}", self.get_sweep),
            get(PREFIX + "/models", self.list_models),
            get(PREFIX + "/models/{model}", self.get_model),
            get(PREFIX + "/models/{model}/versions/{version}/lineage", self.lineage),
            get(PREFIX + "/serving", self.serving),
            get(PREFIX + "/system", self.system),
            get(PREFIX + "/system/events", self.system_events),
        ]

    # -- training

    async def list_jobs(self, request: web.Request) -> web.Response:
        size, token = _page_args(request)
        states = request.query.getall("state", [])
        # A misspelt state would list no job, as if none were in it.
        unknown = sorted(set(states).difference(JOB_STATES))
        if unknown:
            raise InvalidArgument(
                f"state {unknown[0][:40]!r} is not a job state; use one of {', '.join(JOB_STATES)}"
            )
        jobs, next_token = await asyncio.to_thread(
            self._s.jobs.list,
            states,
            request.query.get("experiment", ""),
            request.query.get("sweep_id", ""),
            size,
            token,
        )
        return json_response(
            {"jobs": [forms.job_summary_json(j) for j in jobs], "next_page_token": next_token}
        )

    async def get_job(self, request: web.Request) -> web.Response:
        job = await asyncio.to_thread(self._s.jobs.get, request.match_info["job_id"])
        return json_response(forms.job_json(job))

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        """The job's events from `from_seq` (or after the Last-Event-ID a reconnecting browser
        sends), then live ones; an `end` event once the job has ended."""
        job_id = request.match_info["job_id"]
        last_id = request.headers.get("Last-Event-ID", "")
        if last_id:
            from_seq = whole_number("Last-Event-ID (an event's sequence number)", last_id, 0, MAX_SEQ) + 1
        else:
            from_seq = _int(request, "from_seq", 0, 0, MAX_SEQ)
        batches = await watch_job(self._s.jobs, self._s.events, job_id, from_seq)
        async with self._event_stream(request) as response:
            try:
                async for batch in batches:
                    # One write per batch: the write, not the encoding, is what each open page costs.
                    await response.write(b"".join(self._event_bytes(job_id, event) for event in batch))
                await response.write(_sse(None, "end", {}))
            except (ResourceExhausted, Unavailable):
                # The browser reconnects on its own with the Last-Event-ID it has, and resumes there.
                pass
        return response

    async def list_experiments(self, request: web.Request) -> web.Response:
        size, token = _page_args(request)
        experiments, next_token = await asyncio.to_thread(
            self._s.tracking.list_experiments,
            request.query.get("name_prefix", ""),
            size,
            token,
            _view(request),
        )
        return json_response(
            {"experiments": [forms.experiment_json(e) for e in experiments], "next_page_token": next_token}
        )

    async def list_runs(self, request: web.Request) -> web.Response:
        _refuse_unknown(request, "/runs", _RUNS_QUERY)
        size, token = _page_args(request)
        search = _run_search(request)
        runs, next_token = await asyncio.to_thread(
            self._s.tracking.list_runs,
            request.query.get("experiment", ""),
            search.statuses,
            search.params,
            search.metrics,
            size,
            token,
            search.tags,
            None,
            _view(request),
            search.texts,
            search.times,
            _run_order(request),
        )
        return json_response({"runs": [forms.run_json(r) for r in runs], "next_page_token": next_token})

    async def get_run(self, request: web.Request) -> web.Response:
        run = await asyncio.to_thread(self._s.tracking.get_run, request.match_info["run_id"])
        return json_response(forms.run_json(run))

    async def list_artifacts(self, request: web.Request) -> web.Response:
        """A page of the run's artifacts in path order: all, or those under `path`."""
        size, token = _page_args(request)
        page = await asyncio.to_thread(
            self._s.artifacts.list, request.match_info["run_id"], request.query.get("path", ""), size, token
        )
        return json_response(
            {"artifacts": [_artifact_json(a) for a in page.items], "next_page_token": page.next_page_token}
        )

    async def download_artifact(self, request: web.Request) -> web.StreamResponse:
        """The artifact at `path` as a file (an attachment), or with `preview=1` shown in the
        page when it is a small text, PNG or SVG file; either way sandboxed (ARTIFACT_HEADERS).

        The bytes come from the domain's download, which holds back the last chunk until the
        hash checks out: damage found before the first byte is a 500; later, the connection is
        cut short of Content-Length, so no client takes the file as whole, and counted 500.
        A client that leaves part way ends the download, no error of the daemon's: counted as
        the 200 it was sent."""
        run_id = request.match_info["run_id"]
        path = _required(
            request,
            "path",
            "the artifact's path in the run",
            f"/runs/RUN_ID/artifact?path=PATH (GET {PREFIX}/runs/RUN_ID/artifacts lists them)",
        )
        preview = request.query.get("preview", "") == "1"
        artifact = await asyncio.to_thread(self._s.artifacts.get, run_id, path)
        kind = preview_type(artifact) if preview else artifact_type(path)
        if kind is None:
            raise InvalidArgument(
                f"{path[:80]!r} is not previewed (only text, PNG and SVG artifacts up to "
                f"{PREVIEW_MAX_BYTES // 1024} KiB are); download it instead"
            )
        chunks = self._s.artifacts.read_chunks(artifact, ARTIFACT_CHUNK_BYTES)
        # Damage found before the first byte is a DataLoss the error middleware answers 500 and
        # logs at ERROR under the error id the answer names; found later, it is logged below.
        first = await asyncio.to_thread(next, chunks, b"")
        headers = {
            **ARTIFACT_HEADERS,
            "Content-Type": kind,
            "Content-Disposition": _disposition("inline" if preview else "attachment", path),
            "X-Tessera-Sha256": artifact.sha256,
        }
        response = web.StreamResponse(headers=headers)
        response.content_length = artifact.size_bytes
        await response.prepare(request)
        try:
            # aiohttp raises ConnectionError, from a write or its wait for the buffer to drain.
            with contextlib.suppress(ConnectionError):
                chunk = first
                while chunk:
                    await response.write(chunk)
                    chunk = await asyncio.to_thread(next, chunks, b"")
        except DataLoss as exc:
            log.error("run artifact download cut short", extra={"run_id": run_id, "error": exc.message})
            request[COUNTED_STATUS] = 500
            response.force_close()
            if request.transport is not None:
                request.transport.close()
        return response

    async def session(self, request: web.Request) -> web.Response:
        """What this caller may change, so a page offers only the actions it may take."""
        role = request.get(ROLE_KEY, Role.READER)
        return json_response(
            {
                "role": role.label,
                "can_restore_runs": role >= _RESTORE_RUN_ROLE,
                "can_restore_experiments": role >= _RESTORE_EXPERIMENT_ROLE,
                "restore_role": _RESTORE_RUN_ROLE.label,
                "can_log_out": request.get(SESSION_KEY, False),
            }
        )

    async def restore_run(self, request: web.Request) -> web.Response:
        _allow_change(request, "restoring a run", _RESTORE_RUN_ROLE)
        run = await asyncio.to_thread(self._s.tracking.restore_run, request.match_info["run_id"])
        return json_response(forms.run_json(run))

    async def restore_experiment(self, request: web.Request) -> web.Response:
        _allow_change(request, "restoring an experiment", _RESTORE_EXPERIMENT_ROLE)
        experiment = await asyncio.to_thread(self._s.tracking.restore_experiment, request.match_info["name"])
        return json_response(forms.experiment_json(experiment))

    async def metric_history(self, request: web.Request) -> web.Response:
        """A metric's points, downsampled by the store to at most `max_points` (first, last, and
        each step range's extremes kept)."""
        run_id, key = request.match_info["run_id"], request.match_info["key"]
        max_points = _int(request, "max_points", DEFAULT_HISTORY_POINTS, 4, MAX_HISTORY_POINTS)
        start = _int(request, "start_step", 0, 0, MAX_SEQ)
        end = _int(request, "end_step", 0, 0, MAX_SEQ) if request.query.get("end_step") else None

        def read() -> list[HistoryPage]:
            pages = [self._s.tracking.metric_history(run_id, key, max_points, start, end)]
            while pages[-1].next_token and len(pages) < MAX_HISTORY_PAGES:
                pages.append(
                    self._s.tracking.metric_history(
                        run_id, key, max_points, start, end, token=pages[-1].next_token
                    )
                )
            return pages

        pages = await asyncio.to_thread(read)
        return json_response(forms.history_json(run_id, key, pages))

    async def leaderboard(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "")
        field = request.query.get("field", "")
        if mode not in ("", "min", "max"):
            raise InvalidArgument(f"mode must be min or max, got {mode[:20]!r}")
        if field not in ("", "last", "min", "max", "best"):
            raise InvalidArgument(f"field must be last, min, max or best, got {field[:20]!r}")
        usage = "/leaderboard?experiment=NAME&metric=KEY"
        experiment = _required(request, "experiment", "the experiment whose runs to rank", usage)
        metric = _required(request, "metric", "the metric key to rank the runs by", usage)
        ranked = await asyncio.to_thread(
            self._s.tracking.leaderboard,
            experiment,
            metric,
            mode or None,
            field or None,
            _int(request, "limit", 0, 0, 10_000),
        )
        return json_response(
            {
                "entries": [
                    {"rank": i + 1, "value": value, "run": forms.run_json(run)}
                    for i, (run, value) in enumerate(ranked)
                ]
            }
        )

    async def list_sweeps(self, request: web.Request) -> web.Response:
        size, token = _page_args(request)
        sweeps, next_token = await asyncio.to_thread(self._s.sweeps.list, size, token)
        return json_response({"sweeps": [forms.sweep_json(s) for s in sweeps], "next_page_token": next_token})

    async def get_sweep(self, request: web.Request) -> web.Response:
        sweep = await asyncio.to_thread(self._s.sweeps.get, request.match_info["sweep_id"])
        return json_response(forms.sweep_json(sweep))

    # -- registry

    async def list_models(self, request: web.Request) -> web.Response:
        size, token = _page_args(request)
        page = await asyncio.to_thread(
            self._s.registry.list_models, request.query.get("name_prefix", ""), None, size, token
        )
        return json_response(
            {"models": [forms.model_json(m) for m in page.items], "next_page_token": page.next_page_token}
        )

    async def get_model(self, request: web.Request) -> web.Response:
        """A model with its versions, aliases, alias history and deployments (each list newest first)."""
        name = request.match_info["model"]
        registry = self._s.registry

        def read() -> dict[str, Any]:
            model = registry.get_model(name)
            versions = registry.list_versions(name, 1000)
            history = registry.list_alias_history(name, "", 1000)
            deployments = registry.list_deployments(name, 1000)
            # Every alias: a page holds 1000 and a model as many, "latest" aside.
            page = registry.list_aliases(name, 1000)
            aliases = page.items
            while page.next_page_token:
                page = registry.list_aliases(name, 1000, page.next_page_token)
                aliases += page.items
            runs_here = self._s.tracking.runs_here({v.lineage.run_id for v in versions.items})
            return {
                "model": forms.model_json(model),
                "versions": [forms.version_json(v, runs_here) for v in versions.items],
                "aliases": [forms.alias_json(a) for a in aliases],
                "alias_history": [forms.alias_event_json(e) for e in history.items],
                "deployments": [forms.deployment_json(d) for d in deployments.items],
            }

        return json_response(await asyncio.to_thread(read))

    async def lineage(self, request: web.Request) -> web.Response:
        model, raw_version = request.match_info["model"], request.match_info["version"]
        version = whole_number("version", raw_version, 1, INT64_MAX)
        record, derived = await asyncio.to_thread(self._s.registry.get_lineage, model, version)
        runs_here = await asyncio.to_thread(self._s.tracking.runs_here, [record.lineage.run_id])
        return json_response(forms.lineage_json(record, derived, runs_here))

    # -- serving and system

    async def serving(self, request: web.Request) -> web.Response:
        model = request.query.get("model", "")
        if model:
            validate_name("model", model)
        entries = self._s.inference.pool.list(model)
        return json_response({"loaded": [forms.loaded_json(e) for e in entries]})

    async def system(self, request: web.Request) -> web.Response:
        facts = await asyncio.to_thread(self._s.system.facts)
        sample = await asyncio.to_thread(self._s.system.sampler().sample)
        return json_response({"server": forms.facts_json(facts), "sample": forms.sample_json(sample)})

    async def system_events(self, request: web.Request) -> web.StreamResponse:
        """A `sample` event every `interval_ms`, as WatchSystem streams them, until the daemon stops."""
        low, high, default = SYSTEM_INTERVAL_MS
        interval_s = _int(request, "interval_ms", default, low, high) / 1000
        sampler = self._s.system.sampler()
        async with self._event_stream(request) as response:
            while not self._s.stopping.is_set():
                sample = await asyncio.to_thread(sampler.sample)
                await response.write(_sse(None, "sample", forms.sample_json(sample)))
                try:
                    await asyncio.wait_for(self._s.stopping.wait(), interval_s)
                except TimeoutError:
                    continue
        return response

    @contextlib.asynccontextmanager
    async def _event_stream(self, request: web.Request) -> AsyncIterator[web.StreamResponse]:
        """An open server-sent event stream, counted against the limit while it lasts (a stream
        over the limit is a 429 before anything is sent); a page closed mid-stream ends it."""
        self._streams.enter()
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
            # A page closed: aiohttp raises ConnectionError, from a write or its wait for the
            # buffer to drain (only the first is a ConnectionResetError).
            with contextlib.suppress(ConnectionError):
                yield response
        finally:
            self._streams.leave()
