"""Training service: jobs, live job events, and experiment tracking."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future

import grpc

from tessera.param_values import param_values_differ
from tessera.v1 import training_pb2 as pb
from tessera.v1 import training_pb2_grpc
from tesserad.api.auth import alias_move_denied, caller
from tesserad.api.convert_registry import version_to_proto
from tesserad.api.convert_training import (
    artifact_to_proto,
    event_to_proto,
    experiment_to_proto,
    job_spec_from_proto,
    job_states_from_proto,
    job_to_proto,
    key_value_filters,
    metric_filters_from_proto,
    mode_from_proto,
    point_to_proto,
    points_from_proto,
    run_order_from_proto,
    run_status_from_proto,
    run_statuses_from_proto,
    run_to_proto,
    sort_keys_from_proto,
    summary_field_from_proto,
    summary_to_proto,
    sweep_request_from_proto,
    sweep_to_proto,
    text_filters_from_proto,
    time_filters_from_proto,
    view_from_proto,
)
from tesserad.api.transfers import (
    chunk_size,
    client_stream,
    download_offset,
    read_header,
    receive_chunks,
    stream_chunks,
)
from tesserad.errors import Internal, InvalidArgument, TesseraError, logged_internal
from tesserad.registry.validation import check_job_spec_size
from tesserad.store import BlobStore
from tesserad.text import MAX_PARAM_VALUE, MAX_TAG_VALUE
from tesserad.training.artifacts import RunArtifacts
from tesserad.training.events import EventLog
from tesserad.training.jobs import Jobs
from tesserad.training.search_space import check_base_size, check_search_space_size
from tesserad.training.sweeps import Sweeps
from tesserad.training.tracking import BatchSequence, Logged, Tracking
from tesserad.training.watch import watch_job

log = logging.getLogger(__name__)

# LogMetricsStream keeps at most this many batches waiting for their group commit.
_MAX_PENDING_BATCHES = 64
# Trailing metadata of a failed LogMetricsStream: how many batches, from the first, are stored
# (none after them is), and how many points they hold.
STORED_BATCHES_HEADER = "tessera-stored-batches"
STORED_POINTS_HEADER = "tessera-stored-points"


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is required: the id SubmitJob returned (see ListJobs)")
    return job_id


def _sweep_id(sweep_id: str) -> str:
    if not sweep_id:
        raise InvalidArgument("sweep_id is required: the id SubmitSweep returned (see ListSweeps)")
    return sweep_id


def _stream_stored(batches: int, points: int) -> str:
    """What a failed LogMetricsStream stored, for its message: the batches before the one that
    failed, counted from 0, and none after it."""
    if batches == 0:
        return "batch 0 of the stream failed and nothing of the stream is stored; resend from batch 0"
    counted = "1 point" if points == 1 else f"{points:,} points"
    stored = (
        f"batch 0 ({counted}) is stored and nothing after it"
        if batches == 1
        else f"batches 0 to {batches - 1} ({counted}) are stored and nothing after them"
    )
    return (
        f"batch {batches} of the stream (counting from 0) failed; {stored}; resend from batch {batches} "
        "(resending a stored point changes nothing: points are kept by key and step)"
    )


def _retrieve_outcome(future: asyncio.Future[Logged]) -> None:
    if not future.cancelled():
        future.exception()


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(
        self,
        jobs: Jobs,
        events: EventLog,
        tracking: Tracking,
        sweeps: Sweeps,
        artifacts: RunArtifacts,
        blobs: BlobStore,
        default_chunk_size: int,
    ) -> None:
        self._jobs = jobs
        self._sweeps = sweeps
        self._events = events
        self._tracking = tracking
        self._artifacts = artifacts
        self._blobs = blobs
        self._chunk_size = default_chunk_size

    # -- jobs

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext[pb.SubmitJobRequest, pb.Job]
    ) -> pb.Job:
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required")
        if request.spec.register_as.model:
            check_job_spec_size("spec (with register_as)", request.spec.ByteSize())
        raw, document = job_spec_from_proto(request.spec)
        job = await asyncio.to_thread(
            self._jobs.submit, raw, document, caller(context), request_id=request.request_id
        )
        return job_to_proto(job)

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[pb.GetJobRequest, pb.Job]
    ) -> pb.Job:
        return job_to_proto(await asyncio.to_thread(self._jobs.get, _job_id(request.job_id)))

    async def ListJobs(
        self,
        request: pb.ListJobsRequest,
        context: grpc.aio.ServicerContext[pb.ListJobsRequest, pb.ListJobsResponse],
    ) -> pb.ListJobsResponse:
        jobs, token = await asyncio.to_thread(
            self._jobs.list,
            job_states_from_proto(request.states),
            request.experiment,
            request.sweep_id,
            request.page_size,
            request.page_token,
        )
        return pb.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext[pb.CancelJobRequest, pb.Job]
    ) -> pb.Job:
        return job_to_proto(await asyncio.to_thread(self._jobs.cancel, _job_id(request.job_id)))

    async def RegisterJobWeights(
        self,
        request: pb.RegisterJobWeightsRequest,
        context: grpc.aio.ServicerContext[pb.RegisterJobWeightsRequest, pb.RegisterJobWeightsResponse],
    ) -> pb.RegisterJobWeightsResponse:
        # A new version takes the alias as an upload's does (a trainer's call); moving it onto the
        # version the job registered before is SetAlias's, as for any existing version.
        version, reused = await asyncio.to_thread(
            self._jobs.register_weights,
            _job_id(request.job_id),
            request.model,
            request.alias,
            request.description,
            caller(context),
            alias_move_denied(context),
        )
        return pb.RegisterJobWeightsResponse(version=version_to_proto(version), reused=reused)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext[pb.WatchJobRequest, pb.JobEvent]
    ) -> AsyncIterator[pb.JobEvent]:
        batches = await watch_job(self._jobs, self._events, _job_id(request.job_id), request.from_seq)
        async for batch in batches:
            for event in batch:
                yield event_to_proto(event)

    # -- tracking

    async def CreateExperiment(
        self,
        request: pb.CreateExperimentRequest,
        context: grpc.aio.ServicerContext[pb.CreateExperimentRequest, pb.Experiment],
    ) -> pb.Experiment:
        experiment = await asyncio.to_thread(
            self._tracking.create_experiment, request.name, request.description, dict(request.tags)
        )
        return experiment_to_proto(experiment)

    async def GetExperiment(
        self,
        request: pb.GetExperimentRequest,
        context: grpc.aio.ServicerContext[pb.GetExperimentRequest, pb.Experiment],
    ) -> pb.Experiment:
        return experiment_to_proto(await asyncio.to_thread(self._tracking.get_experiment, request.name))

    async def ListExperiments(
        self,
        request: pb.ListExperimentsRequest,
        context: grpc.aio.ServicerContext[pb.ListExperimentsRequest, pb.ListExperimentsResponse],
    ) -> pb.ListExperimentsResponse:
        experiments, token = await asyncio.to_thread(
            self._tracking.list_experiments,
            request.name_prefix,
            request.page_size,
            request.page_token,
            view_from_proto(request.view),
        )
        return pb.ListExperimentsResponse(
            experiments=[experiment_to_proto(e) for e in experiments], next_page_token=token
        )

    async def UpdateExperiment(
        self,
        request: pb.UpdateExperimentRequest,
        context: grpc.aio.ServicerContext[pb.UpdateExperimentRequest, pb.Experiment],
    ) -> pb.Experiment:
        experiment = await asyncio.to_thread(
            self._tracking.update_experiment,
            request.name,
            request.description if request.HasField("description") else None,
            dict(request.set_tags),
            list(request.remove_tags),
        )
        return experiment_to_proto(experiment)

    async def DeleteExperiment(
        self,
        request: pb.DeleteExperimentRequest,
        context: grpc.aio.ServicerContext[pb.DeleteExperimentRequest, pb.Experiment],
    ) -> pb.Experiment:
        return experiment_to_proto(await asyncio.to_thread(self._tracking.delete_experiment, request.name))

    async def RestoreExperiment(
        self,
        request: pb.RestoreExperimentRequest,
        context: grpc.aio.ServicerContext[pb.RestoreExperimentRequest, pb.Experiment],
    ) -> pb.Experiment:
        return experiment_to_proto(await asyncio.to_thread(self._tracking.restore_experiment, request.name))

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: grpc.aio.ServicerContext[pb.CreateRunRequest, pb.Run]
    ) -> pb.Run:
        run = await asyncio.to_thread(
            self._tracking.create_run,
            request.experiment,
            request.name,
            dict(request.params),
            dict(request.tags),
            parent_run_id=request.parent_run_id,
            create_experiment=request.create_experiment if request.HasField("create_experiment") else True,
        )
        return run_to_proto(run)

    async def UpdateRun(
        self, request: pb.UpdateRunRequest, context: grpc.aio.ServicerContext[pb.UpdateRunRequest, pb.Run]
    ) -> pb.Run:
        run = await asyncio.to_thread(
            self._tracking.update_run,
            request.run_id,
            run_status_from_proto(request.status),
            dict(request.set_tags),
            list(request.remove_tags),
        )
        return run_to_proto(run)

    async def GetRun(
        self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext[pb.GetRunRequest, pb.Run]
    ) -> pb.Run:
        return run_to_proto(await asyncio.to_thread(self._tracking.get_run, request.run_id))

    async def DeleteRun(
        self, request: pb.DeleteRunRequest, context: grpc.aio.ServicerContext[pb.DeleteRunRequest, pb.Run]
    ) -> pb.Run:
        return run_to_proto(await asyncio.to_thread(self._tracking.delete_run, request.run_id))

    async def RestoreRun(
        self, request: pb.RestoreRunRequest, context: grpc.aio.ServicerContext[pb.RestoreRunRequest, pb.Run]
    ) -> pb.Run:
        return run_to_proto(await asyncio.to_thread(self._tracking.restore_run, request.run_id))

    async def ListRuns(
        self,
        request: pb.ListRunsRequest,
        context: grpc.aio.ServicerContext[pb.ListRunsRequest, pb.ListRunsResponse],
    ) -> pb.ListRunsResponse:
        runs, token = await asyncio.to_thread(
            self._tracking.list_runs,
            request.experiment,
            run_statuses_from_proto(request.statuses),
            key_value_filters(request.params, "params", MAX_PARAM_VALUE),
            metric_filters_from_proto(request.metrics),
            request.page_size,
            request.page_token,
            key_value_filters(request.tags, "tags", MAX_TAG_VALUE),
            run_order_from_proto(request),
            view_from_proto(request.view),
            text_filters_from_proto(request.texts),
            time_filters_from_proto(request.times),
            sort_keys_from_proto(request.order_keys),
        )
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    async def CompareRuns(
        self,
        request: pb.CompareRunsRequest,
        context: grpc.aio.ServicerContext[pb.CompareRunsRequest, pb.CompareRunsResponse],
    ) -> pb.CompareRunsResponse:
        comparison = await asyncio.to_thread(self._tracking.compare_runs, list(request.run_ids))
        runs = comparison.runs
        response = pb.CompareRunsResponse(
            runs=[run_to_proto(r) for r in runs], metrics_left_out=comparison.metrics_left_out
        )
        for key in sorted({k for r in runs for k in r.params}):
            values = [r.params.get(key) for r in runs]
            response.params.append(
                pb.ParamComparison(
                    key=key,
                    values=[v or "" for v in values],
                    present=[v is not None for v in values],
                    differs=param_values_differ(values),
                )
            )
        lasts = [{s.key: s.last for s in r.metrics} for r in runs]
        for key in comparison.metric_keys:
            response.metrics.append(
                pb.MetricComparison(
                    key=key, values=[m.get(key, 0.0) for m in lasts], present=[key in m for m in lasts]
                )
            )
        return response

    async def Leaderboard(
        self,
        request: pb.LeaderboardRequest,
        context: grpc.aio.ServicerContext[pb.LeaderboardRequest, pb.LeaderboardResponse],
    ) -> pb.LeaderboardResponse:
        ranked = await asyncio.to_thread(
            self._tracking.leaderboard,
            request.experiment,
            request.metric,
            mode_from_proto(request.mode),
            summary_field_from_proto(request.field),
            request.limit,
        )
        return pb.LeaderboardResponse(
            entries=[
                pb.LeaderboardEntry(rank=i + 1, run=run_to_proto(run), value=value)
                for i, (run, value) in enumerate(ranked)
            ]
        )

    async def LogParams(
        self,
        request: pb.LogParamsRequest,
        context: grpc.aio.ServicerContext[pb.LogParamsRequest, pb.LogParamsResponse],
    ) -> pb.LogParamsResponse:
        await asyncio.to_thread(self._tracking.log_params, request.run_id, dict(request.params))
        return pb.LogParamsResponse()

    async def LogMetrics(
        self,
        request: pb.LogMetricsRequest,
        context: grpc.aio.ServicerContext[pb.LogMetricsRequest, pb.LogMetricsResponse],
    ) -> pb.LogMetricsResponse:
        logged = await asyncio.wrap_future(self._log(request))
        return pb.LogMetricsResponse(accepted=logged.accepted, replaced=logged.replaced)

    async def LogMetricsStream(
        self,
        request_iterator: AsyncIterator[pb.LogMetricsRequest],
        context: grpc.aio.ServicerContext[pb.LogMetricsRequest, pb.LogMetricsResponse],
    ) -> pb.LogMetricsResponse:
        # Batches are queued for group commit as they arrive and awaited together, so a stream
        # costs a few commits however many batches it carries. They commit in order, and once
        # one fails the rest are refused (BatchSequence): a failed stream stored exactly the
        # batches before the failure, which its answer counts.
        sequence = BatchSequence()
        pending: deque[asyncio.Future[Logged]] = deque()
        batches = points = replaced = 0  # stored so far, in stream order
        try:
            async for request in request_iterator:
                pending.append(self._queue(request, sequence))
                if pending[-1].done() and pending[-1].exception() is not None:
                    break  # refused before it was queued: read no further
                if len(pending) >= _MAX_PENDING_BATCHES:
                    logged = await pending.popleft()
                    batches, points, replaced = (
                        batches + 1,
                        points + logged.accepted,
                        replaced + logged.replaced,
                    )
            while pending:
                logged = await pending.popleft()
                batches, points, replaced = batches + 1, points + logged.accepted, replaced + logged.replaced
        except grpc.aio.AbortError:
            raise  # the call is aborted already, its status set
        except Exception as exc:
            # The batches after the failed one are refused unstored; wait for them, so that
            # the answer is final when the client resends. An unexpected error (one the store
            # does not map, such as a damaged database) ends the stream the same way, saying
            # what it stored, so that a client still knows where to resend from.
            await asyncio.gather(*pending, return_exceptions=True)
            pending.clear()
            context.set_trailing_metadata(
                ((STORED_BATCHES_HEADER, str(batches)), (STORED_POINTS_HEADER, str(points)))
            )
            stored = _stream_stored(batches, points)
            if isinstance(exc, TesseraError):
                raise type(exc)(f"{stored}: {exc.message}") from exc
            internal = logged_internal(log, "a metric stream", exc, stored_batches=batches)
            raise Internal(f"{stored}: {internal.message}") from exc
        finally:
            # A call cancelled or aborted leaves batches in flight; their outcome is read so that
            # asyncio does not log it as unretrieved.
            for future in pending:
                future.add_done_callback(_retrieve_outcome)
        return pb.LogMetricsResponse(accepted=points, replaced=replaced)

    def _queue(self, request: pb.LogMetricsRequest, sequence: BatchSequence) -> asyncio.Future[Logged]:
        """The batch's outcome: queued for commit, or already failed when it is refused at once."""
        try:
            return asyncio.wrap_future(self._log(request, sequence))
        except TesseraError as exc:
            refused: asyncio.Future[Logged] = asyncio.get_running_loop().create_future()
            refused.set_exception(exc)
            return refused

    def _log(self, request: pb.LogMetricsRequest, sequence: BatchSequence | None = None) -> Future[Logged]:
        if not request.run_id:
            raise InvalidArgument("run_id is required")
        self._tracking.check_batch_length(len(request.points))
        return self._tracking.log_metrics(
            request.run_id, points_from_proto(request.points), sequence=sequence
        )

    async def ListRunMetrics(
        self,
        request: pb.ListRunMetricsRequest,
        context: grpc.aio.ServicerContext[pb.ListRunMetricsRequest, pb.ListRunMetricsResponse],
    ) -> pb.ListRunMetricsResponse:
        page = await asyncio.to_thread(
            self._tracking.list_run_metrics, request.run_id, request.page_size, request.page_token
        )
        return pb.ListRunMetricsResponse(
            metrics=[summary_to_proto(s) for s in page.items], next_page_token=page.next_page_token
        )

    async def GetMetricHistory(
        self,
        request: pb.GetMetricHistoryRequest,
        context: grpc.aio.ServicerContext[pb.GetMetricHistoryRequest, pb.MetricHistory],
    ) -> pb.MetricHistory:
        page = await asyncio.to_thread(
            self._tracking.metric_history,
            request.run_id,
            request.key,
            request.max_points,
            request.start_step,
            request.end_step if request.HasField("end_step") else None,
            request.page_size,
            request.page_token,
        )
        return pb.MetricHistory(
            run_id=request.run_id,
            key=request.key,
            points=[point_to_proto(p) for p in page.points],
            total_points=page.total,
            downsampled=page.downsampled,
            next_page_token=page.next_token,
        )

    # -- run artifacts

    async def UploadRunArtifact(
        self,
        request_iterator: AsyncIterator[pb.UploadRunArtifactRequest],
        context: grpc.aio.ServicerContext[pb.UploadRunArtifactRequest, pb.RunArtifact],
    ) -> pb.RunArtifact:
        messages = client_stream(request_iterator, context)
        header: pb.UploadRunArtifactHeader = await read_header(messages)
        limit = await asyncio.to_thread(
            self._artifacts.upload_limit, header.run_id, header.path, header.size_bytes, header.sha256
        )
        with self._blobs.writer(limit, "limits.max_run_artifact_size", header.size_bytes or None) as writer:
            artifact = await receive_chunks(
                messages,
                writer,
                header.sha256 or None,
                header.size_bytes or None,
                lambda blob: self._artifacts.register(header.run_id, header.path, blob),
            )
        return artifact_to_proto(artifact)

    async def ListRunArtifacts(
        self,
        request: pb.ListRunArtifactsRequest,
        context: grpc.aio.ServicerContext[pb.ListRunArtifactsRequest, pb.ListRunArtifactsResponse],
    ) -> pb.ListRunArtifactsResponse:
        page = await asyncio.to_thread(
            self._artifacts.list, request.run_id, request.path, request.page_size, request.page_token
        )
        return pb.ListRunArtifactsResponse(
            artifacts=[artifact_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def DownloadRunArtifact(
        self,
        request: pb.DownloadRunArtifactRequest,
        context: grpc.aio.ServicerContext[pb.DownloadRunArtifactRequest, pb.DownloadRunArtifactResponse],
    ) -> AsyncIterator[pb.DownloadRunArtifactResponse]:
        size = chunk_size(request.chunk_size, self._chunk_size)
        artifact = await asyncio.to_thread(self._artifacts.get, request.run_id, request.path)
        offset = download_offset(
            request.offset, artifact.size_bytes, f"artifact {artifact.path} of run {artifact.run_id}"
        )
        yield pb.DownloadRunArtifactResponse(header=artifact_to_proto(artifact))
        async for chunk in stream_chunks(self._artifacts.read_chunks(artifact, size, offset)):
            yield pb.DownloadRunArtifactResponse(chunk=chunk)

    # -- sweeps

    async def SubmitSweep(
        self,
        request: pb.SubmitSweepRequest,
        context: grpc.aio.ServicerContext[pb.SubmitSweepRequest, pb.Sweep],
    ) -> pb.Sweep:
        if not request.spec.HasField("base"):
            raise InvalidArgument("spec.base is required: the job spec every trial starts from")
        if request.spec.base.register_as.model:
            check_job_spec_size("spec.base (with register_as)", request.spec.base.ByteSize())
        check_base_size(request.spec.base.ByteSize())
        check_search_space_size(sum(p.ByteSize() for p in request.spec.parameters))
        sweep = sweep_request_from_proto(request.spec)
        base, _ = job_spec_from_proto(request.spec.base)
        result = await asyncio.to_thread(
            self._sweeps.submit, sweep, base, caller(context), request_id=request.request_id
        )
        return sweep_to_proto(result)

    async def GetSweep(
        self, request: pb.GetSweepRequest, context: grpc.aio.ServicerContext[pb.GetSweepRequest, pb.Sweep]
    ) -> pb.Sweep:
        return sweep_to_proto(await asyncio.to_thread(self._sweeps.get, _sweep_id(request.sweep_id)))

    async def ListSweeps(
        self,
        request: pb.ListSweepsRequest,
        context: grpc.aio.ServicerContext[pb.ListSweepsRequest, pb.ListSweepsResponse],
    ) -> pb.ListSweepsResponse:
        sweeps, token = await asyncio.to_thread(self._sweeps.list, request.page_size, request.page_token)
        return pb.ListSweepsResponse(sweeps=[sweep_to_proto(s) for s in sweeps], next_page_token=token)

    async def CancelSweep(
        self,
        request: pb.CancelSweepRequest,
        context: grpc.aio.ServicerContext[pb.CancelSweepRequest, pb.Sweep],
    ) -> pb.Sweep:
        return sweep_to_proto(await asyncio.to_thread(self._sweeps.cancel, _sweep_id(request.sweep_id)))
