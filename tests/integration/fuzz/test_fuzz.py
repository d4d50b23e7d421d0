"""Fuzz every RPC of every service: random bytes and well-typed random messages.

Each answer must be a deliberate status code: never UNKNOWN (an exception gRPC caught for
us) nor INTERNAL (a bug the daemon caught), and the daemon must stay healthy and keep its
data. Bounded: a fixed number of examples per RPC, one daemon for the whole module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.v1 import datasets_pb2, inference_pb2, registry_pb2, system_pb2, training_pb2
from tesserad.oip import grpc_service_pb2
from tests.conftest import InProcessDaemon, daemon_settings

MODULES = [system_pb2, registry_pb2, datasets_pb2, training_pb2, inference_pb2, grpc_service_pb2]
METHODS = [
    method
    for module in MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
UNARY = [m for m in METHODS if not m.client_streaming and not m.server_streaming]
STREAMING = [m for m in METHODS if m.client_streaming or m.server_streaming]
UNDELIBERATE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
EXAMPLES = 25
STREAM_EXAMPLES = 5
# No RPC may take this long on a small request; longer means the daemon hangs (a deadlock).
HANG_S = 20.0
# Waiting for a stream's first answer may take its whole interval; the client's own deadline
# (DEADLINE_EXCEEDED) or our cancel (CANCELLED) then ends it, which is a deliberate end.
STREAM_TIMEOUT_S = 1.0


def path_of(method: pbd.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def method_id(method: pbd.MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


# -- well-typed random messages, built from the descriptors ---------------------------------

_NAMES = st.sampled_from(
    [
        "",
        "a",
        "model-1",
        "latest",
        "production",
        "..",
        "../../etc/passwd",
        "/abs",
        "a/b",
        "x" * 300,
        "\x00",
        "é",
    ]
)
_INT_RANGES = {
    pbd.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    pbd.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: pbd.FieldDescriptor) -> st.SearchStrategy:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.one_of(st.integers(low, high), st.sampled_from([0, 1, -1 if low else 2, high]))
    if kind == pbd.FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == pbd.FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == pbd.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == pbd.FieldDescriptor.TYPE_STRING:
        return st.one_of(_NAMES, st.text(max_size=40))
    if kind == pbd.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == pbd.FieldDescriptor.TYPE_ENUM:
        # Proto3 enums are open: unknown numbers arrive too.
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 50))
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _is_map(field: pbd.FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def messages(descriptor: pbd.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random instances of `descriptor`: any subset of fields, nested up to three levels."""
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy] = {}
    for field in descriptor.fields:
        if _is_map(field):
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if value.message_type is not None and depth >= 2:
                continue
            values = _scalar(value) if value.message_type is None else messages(value.message_type, depth + 1)
            fields[field.name] = st.dictionaries(_scalar(key), values, max_size=3)
            continue
        if field.message_type is not None:
            if depth >= 2:
                continue
            element = messages(field.message_type, depth + 1)
        else:
            element = _scalar(field)
        repeated = field.is_repeated
        fields[field.name] = st.lists(element, max_size=4) if repeated else element
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict) -> Message:
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if _is_map(field):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            for item in value:
                target.add().CopyFrom(item) if isinstance(item, Message) else target.append(item)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def payloads(method: pbd.MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Serialised well-typed requests, or random bytes (mostly not a valid message)."""
    typed = messages(method.input_type).map(lambda m: m.SerializeToString())
    return st.one_of(typed, st.binary(max_size=256))


# -- the daemon and the checks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_daemon: InProcessDaemon) -> grpc.Channel:
    return fuzz_daemon.channel()


def assert_deliberate(
    method: pbd.MethodDescriptor, payload: object, error: grpc.RpcError, deadline_is_a_hang: bool = False
) -> None:
    code = error.code()
    assert code not in UNDELIBERATE, (
        f"{path_of(method)} answered {code.name}: {error.details()!r} to {payload!r}"
    )
    assert "Traceback" not in (error.details() or "")
    if deadline_is_a_hang:
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, (
            f"{path_of(method)} did not answer {payload!r} within {HANG_S} s: the daemon hangs"
        )


def assert_healthy(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def sentinel(fuzz_channel: grpc.Channel) -> str | None:
    """A model stored before fuzzing, to check afterwards that fuzzing lost no data; None while
    the registry is not built."""
    try:
        fuzz_channel.unary_unary(
            "/tessera.v1.Registry/CreateModel",
            request_serializer=registry_pb2.CreateModelRequest.SerializeToString,
        )(registry_pb2.CreateModelRequest(name="fuzz-sentinel"), timeout=10)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise
    return "fuzz-sentinel"


@pytest.mark.parametrize("method", UNARY, ids=method_id)
def test_unary_rpcs_answer_random_requests_deliberately(fuzz_channel, sentinel, method):
    call = fuzz_channel.unary_unary(path_of(method))

    @settings(max_examples=EXAMPLES, database=None)
    @given(payload=payloads(method))
    def fuzz(payload: bytes) -> None:
        try:
            call(payload, timeout=HANG_S)
        except grpc.RpcError as exc:
            assert_deliberate(method, payload, exc, deadline_is_a_hang=True)

    fuzz()
    assert_healthy(fuzz_channel)


@pytest.mark.parametrize("method", STREAMING, ids=method_id)
def test_streaming_rpcs_answer_random_requests_deliberately(fuzz_channel, sentinel, method):
    path = path_of(method)

    @settings(max_examples=STREAM_EXAMPLES, database=None)
    @given(requests=st.lists(payloads(method), min_size=1, max_size=3))
    def fuzz(requests: list[bytes]) -> None:
        try:
            if method.server_streaming:
                kind = fuzz_channel.stream_stream if method.client_streaming else fuzz_channel.unary_stream
                argument = iter(requests) if method.client_streaming else requests[0]
                responses = kind(path)(argument, timeout=STREAM_TIMEOUT_S)
                try:
                    next(responses, None)
                finally:
                    responses.cancel()
            else:
                fuzz_channel.stream_unary(path)(iter(requests), timeout=HANG_S)
        except grpc.RpcError as exc:
            assert_deliberate(method, requests, exc)

    fuzz()
    assert_healthy(fuzz_channel)


def test_fuzzing_lost_no_stored_data(fuzz_channel, sentinel):
    """Runs after the fuzz tests of this module (pytest keeps file order)."""
    assert_healthy(fuzz_channel)
    if sentinel is None:
        pytest.skip("the registry is not built yet, so no data was stored to check")
    model = fuzz_channel.unary_unary(
        "/tessera.v1.Registry/GetModel",
        request_serializer=registry_pb2.GetModelRequest.SerializeToString,
        response_deserializer=registry_pb2.Model.FromString,
    )(registry_pb2.GetModelRequest(name=sentinel), timeout=10)
    assert model.name == sentinel
