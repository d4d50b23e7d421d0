"""`tessera.aio.Client`: the asyncio twin of `tessera.Client`, with the same parts and names.

async with tessera.aio.Client("127.0.0.1:50051") as client:
    info = await client.system.info()
    async for model in client.models.list():
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from tessera import datasets as _datasets
from tessera import inference as _inference
from tessera import models as _models
from tessera import system as _system
from tessera import training as _training
from tessera.errors import JobFailed, TesseraError, error_from_rpc
from tessera.events import JobEvent, JobState, event_from_proto
from tessera.inference import Inputs, Prediction
from tessera.messages import dataset_ref
from tessera.models import VersionSelector
from tessera.transfer import CHUNK_BYTES, DownloadSink, Progress
from tessera.transport import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_TRANSFER_TIMEOUT_S,
    TLS,
    AioConnection,
    RetryPolicy,
    aio_pages,
)
from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    datasets_pb2,
    inference_pb2,
    registry_pb2,
    system_pb2,
    training_pb2,
)

__all__ = ["Client", "Datasets", "Inference", "Job", "Models", "System", "Training"]


async def _download(
    conn: AioConnection, responses: AsyncIterator[Any], path: Path, progress: Progress | None
) -> Any:
    header = (await anext(responses)).header
    sink = DownloadSink(path, header.sha256, header.size_bytes, progress)
    try:
        async for response in responses:
            sink.write(response.chunk)
    except BaseException:
        sink.abort()
        raise
    sink.finish()
    return header


class Models:
    """Asyncio twin of `tessera.models.Models`."""

    def __init__(self, conn: AioConnection) -> None:
        self._conn = conn

    async def create(
        self, name: str, description: str = "", tags: Mapping[str, str] | None = None
    ) -> registry_pb2.Model:
        """Create an empty model."""
        return await self._conn.call(_models.create_op(name, description, tags))

    async def get(self, name: str) -> registry_pb2.Model:
        """A model with its latest version number and aliases."""
        return await self._conn.call(_models.get_op(name))

    def list(
        self, prefix: str = "", tags: Mapping[str, str] | None = None, page_size: int = 0
    ) -> AsyncIterator[registry_pb2.Model]:
        """Every model, fetched page by page."""
        return aio_pages(self._conn, lambda token: _models.list_op(prefix, tags, page_size, token), "models")

    async def update(
        self,
        name: str,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        remove_tags: Sequence[str] = (),
    ) -> registry_pb2.Model:
        """Change a model's description and tags."""
        return await self._conn.call(_models.update_op(name, description, set_tags, remove_tags))

    async def delete(self, name: str, force: bool = False) -> int:
        """Delete a model with all its versions."""
        return await self._conn.call(_models.delete_op(name, force))

    async def push(
        self,
        name: str,
        path: str | Path,
        *,
        format: str | None = None,
        architecture: architecture_pb2.Architecture | Mapping[str, Any] | None = None,
        signature: common_pb2.Signature | Mapping[str, Any] | None = None,
        create: bool = True,
        alias: str | None = None,
        description: str = "",
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> registry_pb2.ModelVersion:
        """Register an ONNX or safetensors file as the model's next version."""
        path = Path(path)
        header = await asyncio.to_thread(
            _models.upload_header,
            name,
            path,
            format=format,
            architecture=architecture,
            signature=signature,
            create=create,
            alias=alias,
            description=description,
            params=params,
            metrics=metrics,
            tags=tags,
        )
        requests = _models.upload_requests(header, path, chunk_size, progress)
        return await self._conn.client_stream(
            _models.S, "UploadVersion", requests, timeout or self._conn.transfer_timeout
        )

    async def download(
        self,
        name: str,
        path: str | Path,
        version: VersionSelector | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> registry_pb2.ModelVersion:
        """Write a version's artifact to `path`, verified against its sha256."""
        request = _models.download_request(name, version, chunk_size)
        responses = self._conn.server_stream(
            _models.S, "DownloadVersion", request, timeout or self._conn.transfer_timeout
        )
        return await _download(self._conn, responses, Path(path), progress)

    async def version(self, name: str, version: VersionSelector | None = None) -> registry_pb2.ModelVersion:
        """One version by number or alias; "latest" when None."""
        return await self._conn.call(_models.version_op(name, version))

    def versions(self, name: str, page_size: int = 0) -> AsyncIterator[registry_pb2.ModelVersion]:
        """The model's versions, newest first."""
        return aio_pages(self._conn, lambda token: _models.versions_op(name, page_size, token), "versions")

    async def delete_version(self, name: str, version: int) -> None:
        """Delete one version."""
        await self._conn.call(_models.delete_version_op(name, version))

    async def set_alias(
        self, name: str, alias: str, version: int, expected_version: int | None = None
    ) -> registry_pb2.Alias:
        """Point `alias` at `version` (compare-and-set with `expected_version`)."""
        return await self._conn.call(_models.set_alias_op(name, alias, version, expected_version))

    async def alias(self, name: str, alias: str) -> registry_pb2.Alias:
        """Where an alias points."""
        return await self._conn.call(_models.alias_op(name, alias))

    async def aliases(self, name: str) -> Sequence[registry_pb2.Alias]:
        """Every alias of the model."""
        return await self._conn.call(_models.aliases_op(name))

    async def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        await self._conn.call(_models.delete_alias_op(name, alias))

    def alias_history(
        self, name: str, alias: str = "", page_size: int = 0
    ) -> AsyncIterator[registry_pb2.AliasEvent]:
        """Every move of the model's aliases, newest first."""
        return aio_pages(
            self._conn, lambda token: _models.alias_history_op(name, alias, page_size, token), "events"
        )

    async def lineage(
        self, name: str, version: VersionSelector | None = None
    ) -> registry_pb2.GetLineageResponse:
        """Where a version came from and what derives from it."""
        return await self._conn.call(_models.lineage_op(name, version))

    async def compare(
        self, name: str, a: VersionSelector, b: VersionSelector, model_b: str | None = None
    ) -> registry_pb2.CompareVersionsResponse:
        """Differences between two versions."""
        return await self._conn.call(_models.compare_op(name, a, b, model_b))

    async def export_onnx(
        self,
        name: str,
        version: VersionSelector | None = None,
        *,
        opset: int = 0,
        conv4d: str = "auto",
        alias: str | None = None,
        description: str = "",
        timeout: float | None = None,
    ) -> registry_pb2.ExportOnnxResponse:
        """Export a safetensors version to ONNX as a new version."""
        return await self._conn.call(
            _models.export_onnx_op(name, version, opset, conv4d, alias, description),
            timeout or max(self._conn.timeout, 300.0),
        )

    async def deploy(
        self,
        name: str,
        routes: Mapping[VersionSelector, int],
        shadow: VersionSelector | None = None,
        shadow_percent: int = 100,
        comment: str = "",
    ) -> registry_pb2.Deployment:
        """Route un-pinned Predict calls across versions."""
        return await self._conn.call(_models.deploy_op(name, routes, shadow, shadow_percent, comment))

    async def deployment(self, name: str) -> registry_pb2.Deployment:
        """The model's current deployment."""
        return await self._conn.call(_models.deployment_op(name))

    def deployments(self, name: str, page_size: int = 0) -> AsyncIterator[registry_pb2.Deployment]:
        """Deployment history, newest first."""
        return aio_pages(
            self._conn, lambda token: _models.deployments_op(name, page_size, token), "deployments"
        )

    async def rollback(self, name: str) -> registry_pb2.Deployment:
        """Restore the previous deployment."""
        return await self._conn.call(_models.rollback_op(name))


class Datasets:
    """Asyncio twin of `tessera.datasets.Datasets`."""

    def __init__(self, conn: AioConnection) -> None:
        self._conn = conn

    async def push(
        self,
        name: str,
        path: str | Path | None = None,
        *,
        splits: _datasets.Splits | None = None,
        seed: int = 0,
        array_name: str = "",
        allow_nonfinite: bool = False,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
        **arrays: np.typing.ArrayLike,
    ) -> datasets_pb2.DatasetVersion:
        """Upload a new version from arrays or a .npz/.npy file, streamed in chunks."""
        body = await asyncio.to_thread(_datasets.payload, path, arrays)
        requests = _datasets.upload_requests(
            name,
            body,
            splits=splits,
            seed=seed,
            array_name=array_name,
            allow_nonfinite=allow_nonfinite,
            description=description,
            tags=tags,
            chunk_size=chunk_size,
            progress=progress,
        )
        return await self._conn.client_stream(
            _datasets.S, "UploadDataset", requests, timeout or self._conn.transfer_timeout
        )

    async def get(self, name: str) -> datasets_pb2.Dataset:
        """A dataset's summary."""
        return await self._conn.call(_datasets.get_op(name))

    def list(self, prefix: str = "", page_size: int = 0) -> AsyncIterator[datasets_pb2.Dataset]:
        """Every dataset, fetched page by page."""
        return aio_pages(self._conn, lambda token: _datasets.list_op(prefix, page_size, token), "datasets")

    async def version(self, ref: str | common_pb2.DatasetRef) -> datasets_pb2.DatasetVersion:
        """One version ("name" or "name:3")."""
        return await self._conn.call(_datasets.version_op(ref))

    def versions(self, name: str, page_size: int = 0) -> AsyncIterator[datasets_pb2.DatasetVersion]:
        """A dataset's versions, newest first."""
        return aio_pages(self._conn, lambda token: _datasets.versions_op(name, page_size, token), "versions")

    async def delete(self, name: str, version: int = 0, force: bool = False) -> int:
        """Delete one version, or all with version 0."""
        return await self._conn.call(_datasets.delete_op(name, version, force))

    async def download(
        self,
        ref: str | common_pb2.DatasetRef,
        path: str | Path,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> datasets_pb2.DatasetVersion:
        """Write a version's stored file to `path`, verified against its sha256."""
        request = datasets_pb2.DownloadDatasetRequest(ref=dataset_ref(ref), chunk_size=chunk_size)
        responses = self._conn.server_stream(
            _datasets.S, "DownloadDataset", request, timeout or self._conn.transfer_timeout
        )
        return await _download(self._conn, responses, Path(path), progress)

    async def load(
        self, ref: str | common_pb2.DatasetRef, timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """A version's arrays in memory, by name."""
        request = datasets_pb2.DownloadDatasetRequest(ref=dataset_ref(ref))
        responses = self._conn.server_stream(
            _datasets.S, "DownloadDataset", request, timeout or self._conn.transfer_timeout
        )
        header = (await anext(responses)).header
        data = b"".join([response.chunk async for response in responses])
        return _datasets.parse_arrays(header, data)


class Job:
    """Asyncio twin of `tessera.Job`."""

    def __init__(self, conn: AioConnection, info: training_pb2.Job) -> None:
        self._conn = conn
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
    def registered(self) -> common_pb2.VersionRef | None:
        """The model version registered on success, if any."""
        return self.info.registered if self.info.HasField("registered") else None

    async def refresh(self) -> Job:
        """Fetch the job's current state into `info`."""
        self.info = await self._conn.call(_training.get_job_op(self.id))
        return self

    async def watch(self, from_seq: int = 1, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """The job's events from `from_seq`, then live; resumed across disconnects."""
        cursor = _training.WatchCursor(self.id, from_seq, self._conn.retry, timeout)
        while True:
            try:
                async for event in self._conn.server_stream(
                    _training.S, "WatchJob", cursor.request(), cursor.remaining()
                ):
                    if cursor.accept(event):
                        yield event_from_proto(event)
                return
            except TesseraError as error:
                await asyncio.sleep(cursor.resume_after(error))

    async def wait(self, timeout: float | None = None, check: bool = True) -> Job:
        """Wait until the job ends; with `check`, raise JobFailed when it did not succeed."""
        async for _ in self.watch(from_seq=max(self.info.last_seq + 1, 1), timeout=timeout):
            pass
        await self.refresh()
        if check and self.state != JobState.SUCCEEDED:
            raise JobFailed(self, _training.failure_message(self.info))
        return self

    async def cancel(self) -> Job:
        """Ask the job to stop at its next step boundary."""
        self.info = await self._conn.call(_training.cancel_job_op(self.id))
        return self


class Training:
    """Asyncio twin of `tessera.training.Training`."""

    def __init__(self, conn: AioConnection) -> None:
        self._conn = conn

    async def submit(self, spec: _training.JobSpecLike) -> Job:
        """Queue a training job."""
        return Job(self._conn, await self._conn.call(_training.submit_op(spec)))

    async def job(self, job_id: str) -> Job:
        """A job by id."""
        return Job(self._conn, await self._conn.call(_training.get_job_op(job_id)))

    async def jobs(
        self, states: Iterable[str | int] = (), experiment: str = "", sweep_id: str = "", page_size: int = 0
    ) -> AsyncIterator[Job]:
        """Jobs, newest first, optionally only in `states`."""
        async for info in aio_pages(
            self._conn,
            lambda token: _training.list_jobs_op(states, experiment, sweep_id, page_size, token),
            "jobs",
        ):
            yield Job(self._conn, info)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job."""
        return Job(self._conn, await self._conn.call(_training.cancel_job_op(job_id)))

    def watch(self, job_id: str, from_seq: int = 1, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """A job's events, resumed across disconnects."""
        return Job(self._conn, training_pb2.Job(job_id=job_id)).watch(from_seq, timeout)

    async def create_experiment(
        self, name: str, description: str = "", tags: Mapping[str, str] | None = None
    ) -> training_pb2.Experiment:
        """Create an experiment."""
        return await self._conn.call(_training.create_experiment_op(name, description, tags))

    async def experiment(self, name: str) -> training_pb2.Experiment:
        """An experiment with its run count."""
        return await self._conn.call(_training.experiment_op(name))

    def experiments(self, prefix: str = "", page_size: int = 0) -> AsyncIterator[training_pb2.Experiment]:
        """Every experiment."""
        return aio_pages(
            self._conn, lambda token: _training.experiments_op(prefix, page_size, token), "experiments"
        )

    async def create_run(
        self,
        experiment: str,
        name: str = "",
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> training_pb2.Run:
        """Start a run for an external training script."""
        return await self._conn.call(_training.create_run_op(experiment, name, params, tags))

    async def update_run(
        self, run_id: str, status: str | int | None = None, set_tags: Mapping[str, str] | None = None
    ) -> training_pb2.Run:
        """End a run or change its tags."""
        return await self._conn.call(_training.update_run_op(run_id, status, set_tags))

    async def run(self, run_id: str) -> training_pb2.Run:
        """A run with its params and metric summaries."""
        return await self._conn.call(_training.run_op(run_id))

    def runs(
        self,
        experiment: str = "",
        statuses: Iterable[str | int] = (),
        params: Mapping[str, str] | None = None,
        metrics: Sequence[training_pb2.MetricFilter] = (),
        page_size: int = 0,
    ) -> AsyncIterator[training_pb2.Run]:
        """Runs matching every filter given."""
        return aio_pages(
            self._conn,
            lambda token: _training.runs_op(experiment, statuses, params, metrics, page_size, token),
            "runs",
        )

    async def compare_runs(self, run_ids: Sequence[str]) -> training_pb2.CompareRunsResponse:
        """Params and metrics of runs side by side."""
        return await self._conn.call(_training.compare_runs_op(run_ids))

    async def leaderboard(
        self, experiment: str, metric: str, mode: str | None = None, limit: int = 10
    ) -> Sequence[training_pb2.LeaderboardEntry]:
        """An experiment's runs ranked by a metric."""
        return await self._conn.call(_training.leaderboard_op(experiment, metric, mode, limit))

    async def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Record params of a run."""
        await self._conn.call(_training.log_params_op(run_id, params))

    async def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> int:
        """Record metric values at a step."""
        return await self._conn.call(_training.log_metrics_op(run_id, metrics, step))

    async def metric_history(
        self, run_id: str, key: str, max_points: int = 0, start_step: int = 0, end_step: int = 0
    ) -> training_pb2.MetricHistory:
        """One metric's points."""
        return await self._conn.call(
            _training.metric_history_op(run_id, key, max_points, start_step, end_step)
        )

    async def submit_sweep(self, spec: training_pb2.SweepSpec | Mapping[str, Any]) -> training_pb2.Sweep:
        """Start a hyperparameter sweep."""
        return await self._conn.call(_training.submit_sweep_op(spec))

    async def sweep(self, sweep_id: str) -> training_pb2.Sweep:
        """A sweep with its trials."""
        return await self._conn.call(_training.sweep_op(sweep_id))

    def sweeps(self, page_size: int = 0) -> AsyncIterator[training_pb2.Sweep]:
        """Every sweep."""
        return aio_pages(self._conn, lambda token: _training.sweeps_op(page_size, token), "sweeps")

    async def cancel_sweep(self, sweep_id: str) -> training_pb2.Sweep:
        """Cancel a sweep."""
        return await self._conn.call(_training.cancel_sweep_op(sweep_id))


class Inference:
    """Asyncio twin of `tessera.inference.Inference`."""

    def __init__(self, conn: AioConnection) -> None:
        self._conn = conn

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | None = None,
        alias: str | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Prediction:
        """Run the model on a batch of inputs."""
        request = _inference.predict_request(model, inputs, version, alias, outputs)
        return await self._conn.call(_inference.predict_op(request), timeout)

    async def predict_stream(
        self,
        model: str,
        items: Iterable[Inputs | tuple[str, Inputs]],
        *,
        version: int | None = None,
        alias: str | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> AsyncIterator[Prediction]:
        """Many predictions over one stream, in completion order (match by `request_id`)."""
        call = self._conn.method(_inference.S, "PredictStream")(
            _inference.stream_requests(model, items, version, alias, outputs),
            timeout=timeout,
            metadata=self._conn.metadata,
        )
        try:
            async for response in call:
                yield Prediction.from_proto(response)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        finally:
            call.cancel()

    async def load(
        self, model: str, version: VersionSelector | None = None, **config: Any
    ) -> inference_pb2.LoadedModel:
        """Load and warm up a version with ServingConfig fields in `config`."""
        return await self._conn.call(
            _inference.load_op(model, version, config), max(self._conn.timeout, 300.0)
        )

    async def unload(
        self, model: str, version: VersionSelector | None = None
    ) -> Sequence[inference_pb2.LoadedModel]:
        """Drain and free a version (all of the model's when None)."""
        return await self._conn.call(_inference.unload_op(model, version), max(self._conn.timeout, 120.0))

    async def loaded(self, model: str = "") -> Sequence[inference_pb2.LoadedModel]:
        """Loaded versions with state, config and signature."""
        return await self._conn.call(_inference.loaded_op(model))

    async def stats(
        self, model: str = "", version: VersionSelector | None = None, reset: bool = False
    ) -> Sequence[inference_pb2.ModelStats]:
        """Latency percentiles, batch sizes and throughput per loaded version."""
        return await self._conn.call(_inference.stats_op(model, version, reset))

    async def shadow_results(self, model: str, limit: int = 100) -> Sequence[inference_pb2.ShadowResult]:
        """The latest shadow comparisons, newest first."""
        return await self._conn.call(_inference.shadow_results_op(model, limit))


class System:
    """Asyncio twin of `tessera.system.System`."""

    def __init__(self, conn: AioConnection) -> None:
        self._conn = conn

    async def info(self) -> system_pb2.ServerInfo:
        """Version, uptime, devices, data directory usage, services."""
        return await self._conn.call(_system.info_op())

    def watch(
        self, interval_ms: int = 1000, max_samples: int = 0, timeout: float | None = None
    ) -> AsyncIterator[system_pb2.SystemSample]:
        """A resource sample every `interval_ms` until `max_samples` (0: until you stop)."""
        return self._conn.server_stream(
            _system.S, "WatchSystem", _system.watch_request(interval_ms, max_samples), timeout
        )


class Client:
    """The asyncio client: `async with tessera.aio.Client(target) as client: ...`. Same
    arguments and parts as `tessera.Client`; create it inside a running event loop."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._conn = AioConnection(target, token, tls, timeout, transfer_timeout, retry)
        self.models = Models(self._conn)
        self.datasets = Datasets(self._conn)
        self.training = Training(self._conn)
        self.inference = Inference(self._conn)
        self.system = System(self._conn)

    @property
    def target(self) -> str:
        """The daemon address this client talks to."""
        return self._conn.target

    async def close(self) -> None:
        """Close the channel."""
        await self._conn.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
