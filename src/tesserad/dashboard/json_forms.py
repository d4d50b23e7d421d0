"""Domain records as the JSON the dashboard API answers with (see docs/dashboard-api.md).

Plain dicts from the domain's own dataclasses; nothing here reads the store. Non-finite floats
(a diverged loss) become null, since JSON has no NaN or Infinity.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Set
from typing import Any

from tesserad.host import HostSample
from tesserad.registry.records import (
    AliasEvent,
    AliasRecord,
    DeploymentRecord,
    ModelRecord,
    VersionKey,
    VersionRecord,
)
from tesserad.serving.histogram import Percentiles
from tesserad.serving.pool import LoadedVersion
from tesserad.system import ServerFacts
from tesserad.training.artifacts import RunArtifact
from tesserad.training.events import JobEvent
from tesserad.training.job_records import JobRecord, stopped_early
from tesserad.training.sweeps import Sweep
from tesserad.training.tracking import Experiment, HistoryPage, Run

API_VERSION = "v1"


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _plain(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(record)
    return data


def job_json(job: JobRecord) -> dict[str, Any]:
    """A job with its estimated seconds left (from its progress so far; null until it has some),
    and why early stopping ended it (null if it did not)."""
    data = _plain(job)
    data["stopped_early"] = stopped_early(job)
    del data["stopped_early_recorded"]
    eta_s = None
    if job.state == "running" and job.started_at and 0 < job.progress < 1:
        # started_at is stored as wall-clock time, so the elapsed time is read on the same clock.
        elapsed = time.time() - job.started_at
        eta_s = elapsed * (1 - job.progress) / job.progress
    data["eta_s"] = eta_s
    return data


def job_summary_json(job: JobRecord) -> dict[str, Any]:
    """A job without its spec and config, for lists."""
    data = job_json(job)
    del data["spec"], data["config"], data["checkpoints"]
    return data


def event_json(event: JobEvent) -> dict[str, Any]:
    return {"seq": event.seq, "time": event.time, "attempt": event.attempt, "kind": event.kind, **event.data}


def experiment_json(experiment: Experiment) -> dict[str, Any]:
    return _plain(experiment)


def run_json(run: Run) -> dict[str, Any]:
    return _plain(run)


def artifact_json(artifact: RunArtifact) -> dict[str, Any]:
    return _plain(artifact)


def history_json(run_id: str, key: str, pages: list[HistoryPage]) -> dict[str, Any]:
    steps: list[int] = []
    values: list[float] = []
    for page in pages:
        for point in page.points:
            steps.append(point.step)
            values.append(point.value)
    return {
        "run_id": run_id,
        "key": key,
        "total_points": pages[0].total if pages else 0,
        "downsampled": bool(pages and pages[0].downsampled),
        "steps": steps,
        "values": values,
    }


def sweep_json(sweep: Sweep) -> dict[str, Any]:
    data = _plain(sweep)
    for trial in data["trials"]:
        del trial["raw"], trial["document"]
    return data


def model_json(model: ModelRecord) -> dict[str, Any]:
    return _plain(model)


def version_json(version: VersionRecord, runs_here: Set[str]) -> dict[str, Any]:
    """A version; its lineage's `run_tracked` says whether its run_id names a run of this daemon
    (`runs_here`), whose page the dashboard links, or another tracker's."""
    data = _plain(version)
    del data["alias_moved"], data["alias_refused"], data["deployment_warnings"], data["same_bytes"]
    data["lineage"]["run_tracked"] = version.lineage.run_id in runs_here
    return data


def alias_json(alias: AliasRecord) -> dict[str, Any]:
    return _plain(alias)


def alias_event_json(event: AliasEvent) -> dict[str, Any]:
    return _plain(event)


def deployment_json(deployment: DeploymentRecord) -> dict[str, Any]:
    data = _plain(deployment)
    data["undeployed"] = deployment.undeployed
    data["warnings"] = list(deployment.warnings)
    return data


def lineage_json(version: VersionRecord, derived: list[VersionKey], runs_here: Set[str]) -> dict[str, Any]:
    return {"version": version_json(version, runs_here), "derived": [_plain(key) for key in derived]}


def _percentiles(summary: Percentiles) -> dict[str, Any]:
    return {
        "count": summary.count,
        "mean_us": summary.mean,
        "p50_us": summary.p50,
        "p95_us": summary.p95,
        "p99_us": summary.p99,
        "p999_us": summary.p999,
        "max_us": summary.max,
    }


def loaded_json(entry: LoadedVersion) -> dict[str, Any]:
    """A loaded version: how it runs, how deep its queue is, and its latency since it loaded."""
    stats = entry.stats.snapshot()
    batcher = entry.batcher
    return {
        "model": entry.model,
        "version": entry.version,
        "state": entry.state.value,
        "config": _plain(entry.config),
        "memory_bytes": entry.memory_bytes,
        "loaded_at": entry.loaded_at,
        "error": entry.error,
        "queued": batcher.queued if batcher is not None else 0,
        "stats": {
            "request_count": stats.request_count,
            "error_count": stats.error_count,
            "row_count": stats.row_count,
            "throughput_rps": stats.throughput_rps,
            "queue": _percentiles(stats.queue),
            "compute": _percentiles(stats.compute),
            "total": _percentiles(stats.total),
            "batch_sizes": [{"rows": rows, "count": n} for rows, (n, _) in stats.batches.items()],
            "since": stats.since,
        },
    }


def facts_json(facts: ServerFacts) -> dict[str, Any]:
    """The server's facts without its data directory's path (a server path is nobody's business)."""
    usage = _plain(facts.data_dir)
    del usage["path"]
    return {
        "version": facts.version,
        "started_at": facts.started_at,
        "uptime_s": facts.uptime_s,
        "cpu": _plain(facts.cpu),
        "gpus": [_plain(gpu) for gpu in facts.gpus],
        "data_dir": usage,
        "hostname": facts.hostname,
        "runtime_versions": facts.runtime_versions,
    }


def sample_json(sample: HostSample) -> dict[str, Any]:
    return _plain(sample)
