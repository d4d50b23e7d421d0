"""A submit whose spec has resume_from, answered by a daemon that dropped it (one older than the
field): the SDK cancels that job, which would train from scratch. Where the cancel fails, the
Unimplemented still says so, and names the job left running and how to cancel it."""

from __future__ import annotations

import asyncio

import pytest

import tessera
import tessera.aio
from tessera.errors import Unimplemented
from tessera.events import JobState
from tessera.v1 import job_spec_pb2
from tessera.v1 import training_pb2 as pb
from tests.integration.sdk.test_node_client import small_spec, table

__all__ = ["table"]

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


def test_a_full_resume_a_daemon_started_from_the_weights_alone_is_cancelled_and_unimplemented(
    client: tessera.Client, table
) -> None:
    # A daemon from before the full resume keeps resume_from, but its job's run records no
    # resume_from.mode: it started from the checkpoint's weights alone. Its answer, for a job
    # whose run has no mode.
    spec = job_spec_pb2.JobSpec(experiment="e", resume_from="job-elsewhere")
    made = client.training.submit({**small_spec(table), "epochs": 500})
    answered = pb.Job(job_id=made.id, run_id=made.info.run_id, spec=spec)
    with pytest.raises(Unimplemented) as raised:
        client.training._answered(spec, answered).run(client.training._conn)
    assert str(raised.value).endswith(
        "starts a resume_from job from the checkpoint's weights alone, not going on in full (older than "
        "the client); upgrade it, or set resume_weights_only = true for that start. "
        f"Its job {made.id} would have trained from the weights alone, and is cancelled"
    )
    assert made.wait(check=False).state == JobState.CANCELLED
    # Asked for the weights alone, it is answered as it is.
    alone = job_spec_pb2.JobSpec(experiment="e", resume_from="job-elsewhere", resume_weights_only=True)
    assert client.training._answered(alone, answered).run(client.training._conn).id == made.id
