"""Each limit answers RESOURCE_EXHAUSTED naming it: calls and streams in flight, message sizes."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tesserad.oip import grpc_service_pb2 as oip_pb2
from tesserad.oip import grpc_service_pb2_grpc as oip_pb2_grpc
from tesserad.security import Role
from tests.integration.security.conftest import bearer

INFO = "/tessera.v1.System/GetServerInfo"


def open_stream(channel: grpc.Channel):
    """A WatchSystem stream that stays open; returns it once its first sample arrived."""
    stream = system_pb2_grpc.SystemStub(channel).WatchSystem(
        system_pb2.WatchSystemRequest(interval_ms=100, max_samples=10_000), timeout=60
    )
    next(stream)
    return stream


def exhausted(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return err.value.details()


def test_streams_over_the_limit_are_refused_naming_it(start_daemon):
    daemon = start_daemon(**{"limits.max_concurrent_streams": 1})
    channel = daemon.channel()
    first = open_stream(channel)
    message = exhausted(lambda: open_stream(channel))
    assert "limits.max_concurrent_streams = 1" in message
    assert "TESSERA_LIMITS_MAX_CONCURRENT_STREAMS" in message
    # Unary calls are not streams.
    channel.unary_unary(INFO)(b"", timeout=10)
    first.cancel()
    # The slot is given back once the server sees the cancellation, which takes a moment.
    codes = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            open_stream(channel).cancel()
            break
        except grpc.RpcError as exc:
            codes.append(exc.code())
            time.sleep(0.05)
    else:
        pytest.fail("the stream slot was never given back after the first stream was cancelled")
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_calls_over_the_limit_are_refused_naming_it_but_health_still_answers(start_daemon):
    daemon = start_daemon(**{"limits.max_concurrent_calls": 1})
    channel = daemon.channel()
    stream = open_stream(channel)
    message = exhausted(lambda: channel.unary_unary(INFO)(b"", timeout=10))
    assert "limits.max_concurrent_calls = 1" in message
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


def test_open_health_watch_streams_are_limited_apart_from_token_holders_streams(start_daemon, tokens):
    """Open to callers without a token, so uncounted they would let anyone hold streams without
    end; counted with the token holders' streams, anyone could take every slot from them."""
    daemon = start_daemon(**{"limits.max_concurrent_streams": 1, "security.tokens_file": str(tokens.file)})
    channel = daemon.channel()
    stub = health_pb2_grpc.HealthStub(channel)
    first = stub.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(first).status == health_pb2.HealthCheckResponse.SERVING
    message = exhausted(lambda: next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
    assert "health Watch streams" in message and "limits.max_concurrent_streams = 1" in message
    # A token holder's stream still opens, and its slot is its own.
    reader = system_pb2_grpc.SystemStub(channel).WatchSystem(
        system_pb2.WatchSystemRequest(interval_ms=100, max_samples=10_000),
        metadata=bearer(tokens.token[Role.READER]),
        timeout=60,
    )
    next(reader)
    # Probes that ask once are never turned away.
    health = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reader.cancel()
    first.cancel()


def test_a_response_over_max_message_size_is_refused_naming_it(start_daemon):
    # A ServerInfo (devices, versions, services) is well over 256 bytes.
    daemon = start_daemon(max_message_size="256B")
    message = exhausted(lambda: daemon.channel().unary_unary(INFO)(b"", timeout=10))
    assert "over max_message_size = 256 B" in message
    assert "TESSERA_MAX_MESSAGE_SIZE" in message


def oversized_points(run_id: str, count: int) -> training_pb2.LogMetricsRequest:
    return training_pb2.LogMetricsRequest(
        run_id=run_id,
        points=[training_pb2.MetricPoint(key="big", value=float(i), step=i) for i in range(count)],
    )


def test_a_request_over_max_message_size_is_refused_naming_it_and_changes_nothing(start_daemon):
    daemon = start_daemon(max_message_size="1KiB")
    training = training_pb2_grpc.TrainingStub(daemon.channel())
    training.CreateExperiment(training_pb2.CreateExperimentRequest(name="limits"), timeout=10)
    run = training.CreateRun(training_pb2.CreateRunRequest(experiment="limits"), timeout=10)
    request = oversized_points(run.run_id, 200)
    assert request.ByteSize() > 1024

    message = exhausted(lambda: training.LogMetrics(request, timeout=10))
    assert "the request to tessera.v1.Training/LogMetrics is" in message
    assert "over max_message_size = 1 KiB" in message and "TESSERA_MAX_MESSAGE_SIZE" in message

    # One oversized message in a client stream ends the stream the same way.
    small = training_pb2.LogMetricsRequest(
        run_id=run.run_id, points=[training_pb2.MetricPoint(key="small", value=1.0, step=1)]
    )
    message = exhausted(lambda: training.LogMetricsStream(iter([small, request]), timeout=10))
    assert "the request to tessera.v1.Training/LogMetricsStream is" in message
    assert "max_message_size" in message

    history = training.GetMetricHistory(
        training_pb2.GetMetricHistoryRequest(run_id=run.run_id, key="big"), timeout=10
    )
    assert history.total_points == 0
    # The daemon is unharmed and requests under the limit still pass.
    assert training.LogMetrics(oversized_points(run.run_id, 3), timeout=10).accepted == 3


def test_requests_of_callers_turned_away_are_never_read_whatever_their_size(start_daemon, tokens):
    daemon = start_daemon(max_message_size="1KiB", **{"security.tokens_file": str(tokens.file)})
    training = training_pb2_grpc.TrainingStub(daemon.channel())
    with pytest.raises(grpc.RpcError) as err:
        training.LogMetrics(oversized_points("r", 200), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "rpc", ["/tessera.v1.Inference/PredictStream", "/inference.GRPCInferenceService/ModelStreamInfer"]
)
def test_a_bad_message_in_an_inference_stream_ends_it_with_its_status(start_daemon, rpc):
    # Each request of these streams is answered in a task of its own, apart from the loop that
    # reads them: a message refused while it is read must still end the stream, not stall it.
    daemon = start_daemon(max_message_size="1KiB")
    stream = daemon.channel().stream_stream(rpc)
    message = exhausted(lambda: list(stream(iter([b"\n" + b"\x80\x10" + b"m" * 2048]), timeout=10)))
    assert f"the request to {rpc.lstrip('/')} is" in message and "max_message_size" in message
    # 0xff is no valid field tag: the message does not parse.
    with pytest.raises(grpc.RpcError) as err:
        list(stream(iter([b"\xff\xff\xff"]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "not a valid protobuf message" in err.value.details()


def test_an_inference_request_over_max_message_size_is_told_to_send_fewer_rows(start_daemon):
    # Inference requests have no chunked form: the fix is fewer rows (or, over the Open
    # Inference Protocol, inputs in system shared memory); uploads keep their chunking advice.
    daemon = start_daemon(max_message_size="1KiB")
    rows = np.zeros((100, 4), dtype=np.float32).tobytes()
    infer = oip_pb2.ModelInferRequest(model_name="linear", raw_input_contents=[rows])
    message = exhausted(
        lambda: oip_pb2_grpc.GRPCInferenceServiceStub(daemon.channel()).ModelInfer(infer, timeout=10)
    )
    assert message == (
        "the request to inference.GRPCInferenceService/ModelInfer is 1.57 KiB, over max_message_size = "
        "1 KiB; send fewer rows per request, or put the inputs in system shared memory "
        "(register_system_shared_memory), or ask the operator to raise max_message_size (env "
        "TESSERA_MAX_MESSAGE_SIZE)"
    )
    predict = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model="linear"),
        inputs=[common_pb2.Tensor(name="x", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[100, 4], data=rows)],
    )
    message = exhausted(
        lambda: inference_pb2_grpc.InferenceStub(daemon.channel()).Predict(predict, timeout=10)
    )
    assert message == (
        "the request to tessera.v1.Inference/Predict is 1.59 KiB, over max_message_size = 1 KiB; send "
        "fewer rows per request, or ask the operator to raise max_message_size (env "
        "TESSERA_MAX_MESSAGE_SIZE)"
    )
    upload = registry_pb2.UploadVersionRequest(chunk=rows)
    message = exhausted(
        lambda: registry_pb2_grpc.RegistryStub(daemon.channel()).UploadVersion(iter([upload]), timeout=10)
    )
    assert "send large data in chunks (the SDK's upload calls do)" in message


def test_a_connection_holding_every_slot_makes_its_next_call_wait_for_a_stream(start_daemon):
    """gRPC core queues calls before any interceptor sees them: a connection may open only the
    streams the limits could admit (calls and health Watch streams), so one client cannot queue
    calls, and their memory, without bound. The next call waits for a stream, not refused."""
    daemon = start_daemon(**{"limits.max_concurrent_calls": 1, "limits.max_concurrent_streams": 1})
    channel = daemon.channel()
    watch = open_stream(channel)
    health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(health).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(INFO)(b"", timeout=2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    # Another connection (channels to one target share theirs unless told not to) reaches the
    # daemon, whose limit refuses the call.
    with grpc.insecure_channel(daemon.target, options=[("grpc.use_local_subchannel_pool", 1)]) as other:
        assert "limits.max_concurrent_calls = 1" in exhausted(
            lambda: other.unary_unary(INFO)(b"", timeout=10)
        )
    watch.cancel()
    codes = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            channel.unary_unary(INFO)(b"", timeout=10)
            break
        except grpc.RpcError as exc:
            codes.append(exc.code())
            time.sleep(0.05)
    else:
        pytest.fail("the connection's stream was never given back after the watch was cancelled")
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    health.cancel()
