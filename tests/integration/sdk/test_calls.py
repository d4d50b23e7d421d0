"""Status-code mapping, retries, deadlines, tokens and watch() resumption, against an in-test
gRPC server that can be told to fail in each way (the real daemon is covered elsewhere)."""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import pytest

import tessera
import tessera.aio
from tessera.errors import ERROR_BY_CODE
from tessera.v1 import training_pb2

FAST_RETRY = tessera.RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
NO_RETRY = tessera.RetryPolicy(attempts=1)


@pytest.mark.parametrize("code", list(ERROR_BY_CODE), ids=lambda code: code.name)
def test_every_status_code_raises_its_own_exception_with_the_server_message(fake, code):
    fake.system.failures = [code]
    with tessera.Client(fake.target, retry=NO_RETRY) as client, pytest.raises(tessera.TesseraError) as caught:
        client.system.info()
    assert type(caught.value) is ERROR_BY_CODE[code]
    assert caught.value.code == code.name
    assert caught.value.message == f"fake {code.name} for the test"
    assert str(caught.value) == f"{code.name}: fake {code.name} for the test"


def test_the_exception_classes_are_distinct_and_exported():
    classes = set(ERROR_BY_CODE.values())
    assert len(classes) == len(ERROR_BY_CODE) == len(grpc.StatusCode) - 1
    assert all(getattr(tessera, cls.__name__) is cls for cls in classes)


def test_unavailable_idempotent_call_is_retried_until_it_succeeds(fake):
    fake.system.failures = [grpc.StatusCode.UNAVAILABLE] * 2
    with tessera.Client(fake.target, retry=FAST_RETRY) as client:
        assert client.system.info().version == "fake"
    assert fake.system.calls == 3


def test_retries_stop_after_the_policy_attempts(fake):
    fake.system.failures = [grpc.StatusCode.UNAVAILABLE] * 10
    with tessera.Client(fake.target, retry=FAST_RETRY) as client, pytest.raises(tessera.Unavailable):
        client.system.info()
    assert fake.system.calls == 3


def test_other_codes_are_never_retried(fake):
    fake.system.failures = [grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL]
    with tessera.Client(fake.target, retry=FAST_RETRY) as client, pytest.raises(tessera.Internal):
        client.system.info()
    assert fake.system.calls == 1


def test_a_non_idempotent_call_is_not_retried_on_unavailable(fake):
    # CreateRun keeps no request id: a resend after its answer was lost could create a second
    # run. (SubmitJob and SubmitSweep are retried, with the request ids the SDK sends.)
    with (
        tessera.Client(fake.target, retry=FAST_RETRY) as client,
        pytest.raises(tessera.Unavailable) as caught,
    ):
        client.training.create_run("exp", name="once", create_experiment=True)
    assert fake.training.run_creates == 1
    assert "not creating runs" in caught.value.message


def test_a_submit_is_retried_on_unavailable_with_one_request_id(fake):
    with tessera.Client(fake.target, retry=FAST_RETRY) as client, pytest.raises(tessera.Unavailable):
        client.training.submit({"epochs": 1})
    assert fake.training.submits == FAST_RETRY.attempts
    assert len(set(fake.training.request_ids)) == 1 and fake.training.request_ids[0]


def test_a_sweep_submit_is_retried_on_unavailable_with_one_request_id(fake):
    with tessera.Client(fake.target, retry=FAST_RETRY) as client, pytest.raises(tessera.Unavailable):
        client.training.submit_sweep({"max_trials": 2})
    assert fake.training.sweep_submits == FAST_RETRY.attempts
    assert len(set(fake.training.sweep_request_ids)) == 1 and fake.training.sweep_request_ids[0]


def test_a_call_past_its_deadline_raises_deadline_exceeded(fake):
    fake.system.stall_s = 3
    with tessera.Client(fake.target, timeout=0.3) as client, pytest.raises(tessera.DeadlineExceeded):
        client.system.info()


def test_a_calls_timeout_overrides_the_clients_either_way(fake):
    fake.system.stall_s = 2
    with tessera.Client(fake.target, timeout=0.2) as hurried:
        assert hurried.system.info(timeout=30).version == "fake"
    with tessera.Client(fake.target, timeout=30) as patient, pytest.raises(tessera.DeadlineExceeded):
        patient.system.info(timeout=0.2)


def test_the_asyncio_clients_calls_override_it_alike(fake):
    fake.system.stall_s = 2

    async def scenario() -> None:
        async with tessera.aio.Client(fake.target, timeout=0.2) as hurried:
            assert (await hurried.system.info(timeout=30)).version == "fake"
        async with tessera.aio.Client(fake.target, timeout=30) as patient:
            with pytest.raises(tessera.DeadlineExceeded):
                await patient.system.info(timeout=0.2)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_unreachable_daemon_is_unavailable_after_the_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        tessera.Client(f"127.0.0.1:{port}", timeout=5, retry=FAST_RETRY) as client,
        pytest.raises(tessera.Unavailable),
    ):
        client.system.info()


def test_token_is_sent_as_bearer_metadata(fake):
    with tessera.Client(fake.target, token="s3cret") as client:
        client.system.info()
    assert fake.system.metadata[-1]["authorization"] == "Bearer s3cret"


def test_token_defaults_to_the_environment(fake, monkeypatch):
    monkeypatch.setenv("TESSERA_TOKEN", "from-env")
    with tessera.Client(fake.target) as client:
        client.system.info()
    monkeypatch.delenv("TESSERA_TOKEN")
    with tessera.Client(fake.target) as client:
        client.system.info()
    assert fake.system.metadata[0]["authorization"] == "Bearer from-env"
    assert "authorization" not in fake.system.metadata[1]


def test_a_token_read_with_its_line_end_is_sent_without_it(fake, monkeypatch):
    # A token from a file or a Kubernetes secret often ends in a newline, which no header may carry.
    monkeypatch.setenv("TESSERA_TOKEN", "from-env\n")
    with tessera.Client(fake.target) as client:
        client.system.info()
    with tessera.Client(fake.target, token=" s3cret\r\n") as client:
        client.system.info()
    assert [m["authorization"] for m in fake.system.metadata] == ["Bearer from-env", "Bearer s3cret"]


@pytest.mark.parametrize("token", ["tsr_\u00e9t\u00e9", "tsr_a\nb", "tsr_a\tb", "tsr_a\x00b"])
def test_a_token_no_header_can_carry_is_refused_without_showing_it(token):
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        tessera.Client("127.0.0.1:1", token=token)
    assert "TESSERA_TOKEN" in str(caught.value)
    assert token not in str(caught.value) and "tsr_" not in str(caught.value)


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf")])
def test_timeouts_must_be_finite_seconds_above_0(seconds):
    with pytest.raises(ValueError, match="timeouts must be a finite number of seconds above 0"):
        tessera.Client("127.0.0.1:1", timeout=seconds)
    with pytest.raises(ValueError, match="timeouts must be a finite number of seconds above 0"):
        tessera.Client("127.0.0.1:1", transfer_timeout=seconds)


def test_a_response_over_the_clients_message_limit_says_what_to_do(fake):
    # gRPC's own words were "CLIENT: Received message larger than max (67108874 vs. 67108864)".
    fake.system.version = "v" * 2**26
    with (
        tessera.Client(fake.target, retry=NO_RETRY) as client,
        pytest.raises(tessera.ResourceExhausted) as caught,
    ):
        client.system.info()
    assert caught.value.message.startswith(
        "the response is 67,108,869 bytes, over the 67,108,864 bytes this client accepts in one message"
    )


def test_tls_needs_both_halves_of_a_client_certificate(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("not used")
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        tessera.Client("127.0.0.1:1", tls=tessera.TLS(cert_file=cert))


def test_watch_resumes_from_the_last_event_after_the_server_ends_the_stream(fake):
    fake.training.cut_after = [4, 3]
    with tessera.Client(fake.target, retry=FAST_RETRY) as client:
        events = list(client.training.watch("job-1"))
    assert [event.seq for event in events] == list(range(1, 11))
    assert all(isinstance(event, tessera.StepMetrics) for event in events)
    assert fake.training.requests == [1, 5, 8]


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
        (grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8"),
    ],
)
def test_watch_resumes_after_a_stream_reset(fake, code, details):
    """A proxy or a restarting daemon resets the stream (gRPC's INTERNAL or CANCELLED saying
    RST_STREAM): the watch ended there with an error, where a cut UNAVAILABLE was resumed."""
    fake.training.cut_with = (code, details)
    fake.training.cut_after = [4]
    with tessera.Client(fake.target, retry=FAST_RETRY) as client:
        events = list(client.training.watch("job-1"))
    assert [event.seq for event in events] == list(range(1, 11))
    assert fake.training.requests == [1, 5]


def test_watch_ends_on_the_daemons_own_internal_error(fake):
    """Not a reset: a bug in the daemon, which a watch made again would meet again."""
    fake.training.cut_with = (grpc.StatusCode.INTERNAL, "internal error (error id 1234abcd)")
    fake.training.cut_after = [4]
    with tessera.Client(fake.target, retry=FAST_RETRY) as client, pytest.raises(tessera.Internal):
        list(client.training.watch("job-1"))
    assert fake.training.requests == [1]


def test_watch_resumes_after_the_connection_is_cut(fake, proxy_to):
    proxy = proxy_to(fake.port)
    fake.training.gate = threading.Event()
    fake.training.gate_seq = 5
    seen = []
    with tessera.Client(
        proxy.target, retry=tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05)
    ) as client:
        for event in client.training.watch("job-1"):
            seen.append(event.seq)
            if event.seq == 4:
                proxy.cut()
                fake.training.gate.set()
    assert seen == list(range(1, 11))
    assert fake.training.requests[0] == 1
    assert fake.training.requests[-1] == 5


def test_watch_gives_up_after_the_retry_attempts_with_where_to_resume(fake):
    fake.training.cut_after = [2, 0, 0, 0]
    seen = []
    with (
        tessera.Client(fake.target, retry=FAST_RETRY) as client,
        pytest.raises(tessera.Unavailable) as caught,
    ):
        for event in client.training.watch("job-1"):
            seen.append(event.seq)
    assert seen == [1, 2]
    assert "watch again from seq 3" in caught.value.message


def test_wait_returns_the_final_job_or_raises_job_failed(fake):
    with tessera.Client(fake.target) as client:
        job = client.training.job("job-1").wait()
        assert job.state == tessera.JobState.SUCCEEDED
        fake.training.final_state = training_pb2.JOB_STATE_FAILED
        with pytest.raises(tessera.JobFailed, match="job job-1 ended failed"):
            client.training.job("job-1").wait()
        assert client.training.job("job-1").wait(check=False).state == tessera.JobState.FAILED


def test_aio_client_maps_errors_retries_and_resumes_watch(fake):
    fake.system.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND]
    fake.training.cut_after = [3]

    async def scenario() -> tuple[list[int], str]:
        async with tessera.aio.Client(fake.target, retry=FAST_RETRY) as client:
            with pytest.raises(tessera.NotFound) as caught:
                await client.system.info()
            seqs = [event.seq async for event in client.training.watch("job-1")]
            job = await (await client.training.job("job-1")).wait()
            assert job.state == tessera.JobState.SUCCEEDED
            return seqs, caught.value.message

    seqs, message = asyncio.run(scenario())
    assert message == "fake NOT_FOUND for the test"
    assert fake.system.calls == 2
    assert seqs == list(range(1, 11))
    assert fake.training.requests[:2] == [1, 4]
