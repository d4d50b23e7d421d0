"""ListJobs and ListSweeps pages end at MAX_PAGE_BYTES of the answer, sized as every listing
sizes its items (paging.answer_bytes), not by the stored rows: a job's row holds its spec twice
(as given and checked), a sweep's each trial's spec twice, and neither is answered."""

from __future__ import annotations

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.paging import MAX_PAGE_BYTES
from tests.integration.training.conftest import job_spec, submit, sweep_values

S = training_pb2


def _tags(total_bytes: int) -> dict[str, str]:
    value = "x" * 7000
    return {f"t{i:05d}": value for i in range(total_bytes // len(value))}


def _long_spec(tags: dict[str, str], experiment: str) -> training_pb2.JobSpec:
    """A job that runs until it is cancelled."""
    spec = job_spec("mlp", epochs=0, max_steps=1_000_000, experiment=experiment)
    spec.tags.update(tags)
    return spec


def test_a_list_jobs_page_holds_as_many_jobs_as_their_answer_has_room_for(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # Each job's answer takes about 1.2 MB, its stored row twice that: two fit a page.
    spec = _long_spec(_tags(1_200_000), "paging-jobs")
    jobs = [submit(training, spec) for _ in range(3)]
    try:
        request = S.ListJobsRequest(experiment="paging-jobs", page_size=10)
        first = training.ListJobs(request)
        assert [j.job_id for j in first.jobs] == [j.job_id for j in reversed(jobs)][:2]
        assert first.next_page_token
        answered = sum(j.ByteSize() for j in first.jobs)
        assert answered <= MAX_PAGE_BYTES < answered + jobs[0].ByteSize()
        request.page_token = first.next_page_token
        second = training.ListJobs(request)
        assert ([j.job_id for j in second.jobs], second.next_page_token) == ([jobs[0].job_id], "")
    finally:
        for job in jobs:
            training.CancelJob(S.CancelJobRequest(job_id=job.job_id))


def test_a_list_sweeps_page_is_not_cut_short_by_the_trials_stored_specs(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # Nine trials: each sweep's stored row holds its 200 kB spec some twenty times over (over
    # MAX_PAGE_BYTES), its answer once.
    spec = S.SweepSpec(
        base=_long_spec(_tags(200_000), "paging-sweeps"),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", *[str(seed) for seed in range(1, 10)])],
        max_concurrent=1,
        metric="train_loss",
    )
    sweeps = [training.SubmitSweep(S.SubmitSweepRequest(spec=spec)) for _ in range(3)]
    try:
        page = training.ListSweeps(S.ListSweepsRequest(page_size=3))
        assert [s.sweep_id for s in page.sweeps] == [s.sweep_id for s in reversed(sweeps)]
        assert sum(s.ByteSize() for s in page.sweeps) <= MAX_PAGE_BYTES
    finally:
        for sweep in sweeps:
            training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
