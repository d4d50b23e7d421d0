"""A submit whose spec has resume_from, answered by a daemon that dropped it (one older than the
field): the SDK cancels that job, which would train from scratch. Where the cancel fails, the
Unimplemented still says so, and names the job left running and how to cancel it."""

from __future__ import annotations

import asyncio

import pytest

import tessera
import tessera.aio
from tessera.errors import Unimplemented
from tessera.v1 import job_spec_pb2
from tessera.v1 import training_pb2 as pb

# The answer of a daemon that dropped resume_from, for a job the cancel cannot find (gone, or
# the connection lost): the cancel fails NotFound.
ANSWERED = pb.Job(job_id="job-left", spec=job_spec_pb2.JobSpec(experiment="e"))
SENT = job_spec_pb2.JobSpec(experiment="e", resume_from="job-elsewhere")
LEFT_RUNNING = (
    r"does not know resume_from \(older than the client\); upgrade it\. Its job job-left trains from "
    r"scratch and could not be cancelled \(NOT_FOUND: .*\); cancel it: "
    r"client\.training\.job\('job-left'\)\.cancel\(\), or tessera jobs cancel job-left"
)


def test_a_failed_cancel_leaves_unimplemented_naming_the_job_left_running(client: tessera.Client) -> None:
    with pytest.raises(Unimplemented, match=LEFT_RUNNING):
        client.training._answered(SENT, ANSWERED).run(client.training._conn)


def test_the_asyncio_client_says_the_same(daemon) -> None:
    async def submit() -> None:
        async with tessera.aio.Client(daemon.target) as client:
            await client.training._answered(SENT, ANSWERED).run_async(client.training._conn)

    with pytest.raises(Unimplemented, match=LEFT_RUNNING):
        asyncio.run(submit())


# A sweep whose base job has resume_from, answered by a daemon that dropped it: its trials
# would train from scratch, so the sweep is cancelled alike.
SWEEP_ANSWERED = pb.Sweep(sweep_id="sweep-left", spec=pb.SweepSpec(base=job_spec_pb2.JobSpec(experiment="e")))
SWEEP_SENT = pb.SweepSpec(base=SENT)
SWEEP_LEFT_RUNNING = (
    r"does not know resume_from \(older than the client\); upgrade it\. Its sweep sweep-left trains "
    r"from scratch and could not be cancelled \(NOT_FOUND: .*\); cancel it: "
    r"client\.training\.cancel_sweep\('sweep-left'\), or tessera sweeps cancel sweep-left"
)


def test_a_sweep_whose_base_lost_resume_from_is_cancelled_and_unimplemented(client: tessera.Client) -> None:
    with pytest.raises(Unimplemented, match=SWEEP_LEFT_RUNNING):
        client.training._sweep_answered(SWEEP_SENT, SWEEP_ANSWERED).run(client.training._conn)


def test_a_sweep_that_kept_resume_from_is_answered_as_it_is(client: tessera.Client) -> None:
    kept = pb.Sweep(sweep_id="sweep-kept", spec=SWEEP_SENT)
    assert client.training._sweep_answered(SWEEP_SENT, kept).run(client.training._conn).id == "sweep-kept"
