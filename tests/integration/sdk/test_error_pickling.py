"""The SDK's exceptions cross a process boundary: a multiprocessing pool pickles the exception a
worker raised to hand it to the parent, which must get the same class, code, message, trailers
and words, not a TypeError in the pool's result thread."""

from __future__ import annotations

import pickle

import grpc
import pytest

import tessera
from tessera.v1 import training_pb2

NO_RETRY = tessera.RetryPolicy(attempts=1)


def test_an_error_a_call_raised_comes_back_from_pickle_alike(fake):
    fake.system.failures = [grpc.StatusCode.NOT_FOUND]
    with tessera.Client(fake.target, retry=NO_RETRY) as client, pytest.raises(tessera.NotFound) as caught:
        client.system.info()
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is tessera.NotFound and back.code == "NOT_FOUND"
    assert (back.message, back.trailers) == (caught.value.message, caught.value.trailers)
    assert (str(back), repr(back)) == (str(caught.value), repr(caught.value))


def test_an_errors_trailers_come_back_from_pickle():
    back = pickle.loads(pickle.dumps(tessera.ResourceExhausted("stored 3 of 5", {"tessera-stored": "3"})))
    assert back.trailers == {"tessera-stored": "3"} and str(back) == "RESOURCE_EXHAUSTED: stored 3 of 5"


def test_job_failed_comes_back_from_pickle_with_the_jobs_final_state(fake):
    fake.training.final_state = training_pb2.JOB_STATE_FAILED
    with tessera.Client(fake.target) as client, pytest.raises(tessera.JobFailed) as caught:
        client.training.job("job-1").wait()
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is tessera.JobFailed and str(back) == str(caught.value)
    assert back.job == caught.value.job.info
    assert back.job.state == training_pb2.JOB_STATE_FAILED


def test_job_cancelled_and_still_running_come_back_from_pickle_alike(fake):
    fake.training.final_state = training_pb2.JOB_STATE_CANCELLED
    with tessera.Client(fake.target) as client, pytest.raises(tessera.JobCancelled) as caught:
        client.training.job("job-1").wait()
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is tessera.JobCancelled and str(back) == str(caught.value)
    assert back.job.state == training_pb2.JOB_STATE_CANCELLED
    still = pickle.loads(pickle.dumps(tessera.StillRunning("job job-1 is still running", job_id="job-1")))
    assert type(still) is tessera.StillRunning and still.job_id == "job-1"
    assert str(still) == "DEADLINE_EXCEEDED: job job-1 is still running"
