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
