"""Triton's trace extension (TraceSetting over gRPC, /v2[/models/NAME]/trace/setting over HTTP)
through a real daemon: what a client reads and changes, who may change it, what is refused, and the
traces the daemon writes for the requests it samples (tessera's Predict too; an ensemble's members
as child traces), and what becomes of a model's own settings when it is deleted."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from serving_models import W, linear_model, predict_request, upload
from test_serving_deleted_versions import HeldRefreshes
from test_serving_oip import X, infer_request
from test_serving_prometheus import samples, scrape

import tessera
from tessera.v1 import inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.security import Role
from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens, bearer
from tests.integration.security.conftest import tokens as tokens  # one token per role
from tests.integration.serving.test_serving_oip_http import call, error

DEFAULTS = {
    "trace_file": [""],
    "trace_level": ["OFF"],
    "trace_rate": ["1000"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
    "trace_mode": ["triton"],
}
ORDER = [
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
]


def settings_of(response: pb.TraceSettingResponse) -> dict[str, list[str]]:
    return {name: list(value.value) for name, value in response.settings.items()}


def request_of(model: str = "", **settings: str | list[str] | None) -> pb.TraceSettingRequest:
    """As tritonclient builds it: each value a list of strings, None an entry without values."""
    request = pb.TraceSettingRequest(model_name=model)
    for name, value in settings.items():
        entry = request.settings[name]
        if value is not None:
            entry.value.extend(value if isinstance(value, list) else [value])
    return request


def written(path: Path, timeout: float = 60) -> list[dict[str, Any]]:
    """A trace file's entries, once written whole: the daemon writes traces on a thread of its
    own, after the answers of the requests they trace."""
    ends = time.monotonic() + timeout
    while True:
        try:
            entries: list[dict[str, Any]] = json.loads(path.read_text())
            return entries
        except (FileNotFoundError, json.JSONDecodeError):
            if time.monotonic() > ends:
                raise
            time.sleep(0.01)


def traces_in(path: Path) -> dict[int, dict[str, Any]]:
    """The traces of a trace file by id (waiting for it to be written): the head's fields,
    `timestamps` by name, `tensors`."""
    traces: dict[int, dict[str, Any]] = {}
    for entry in written(path):
        trace = traces.setdefault(entry["id"], {"timestamps": {}, "tensors": []})
        if "timestamps" in entry:
            trace["timestamps"].update({t["name"]: t["ns"] for t in entry["timestamps"]})
        elif "activity" in entry:
            trace["tensors"].append((entry["activity"], entry["tensor"]))
        else:
            trace.update(entry)
    return traces


@pytest.fixture
def traced(start_daemon, tmp_path: Path) -> tuple[InProcessDaemon, Path]:
    """A daemon whose serving.trace_file is tmp_path/trace.json, serving HTTP too, with "linear"."""
    file = tmp_path / "trace.json"
    daemon = start_daemon(**{"serving.trace_file": str(file), "serving.oip_http_listen": "127.0.0.1:0"})
    upload(daemon.channel(), "linear", linear_model(1.0))
    return daemon, file


def test_grpc_reads_changes_and_refuses_by_name(
    oip, linear, expect_rpc_error: Callable[..., grpc.RpcError]
) -> None:
    assert "trace" in oip.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert settings_of(oip.TraceSetting(pb.TraceSettingRequest())) == DEFAULTS
    # What it reads it takes back unchanged.
    assert settings_of(oip.TraceSetting(request_of(**DEFAULTS))) == DEFAULTS
    changed = settings_of(oip.TraceSetting(request_of(trace_rate="10", log_frequency="5")))
    assert changed == {**DEFAULTS, "trace_rate": ["10"], "log_frequency": ["5"]}
    # A model without settings of its own is traced with the global ones.
    assert settings_of(oip.TraceSetting(request_of("linear"))) == changed

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for request, text in (
        (
            request_of(trace_rate="-1"),
            "trace setting 'trace_rate' must be one whole number from 1 to 4294967295",
        ),
        (request_of(trace_rate="0"), "got '0'"),
        (request_of(trace_rate="ten"), "got 'ten'"),
        (request_of(trace_rate=["1", "2"]), "got 2 values"),
        (request_of(trace_count="-2"), "trace setting 'trace_count' must be one whole number from -1 to"),
        (request_of(log_frequency="1.5"), "trace setting 'log_frequency' must be one whole number from 0 to"),
        (request_of(trace_level="TIMESTAMP"), "trace setting 'trace_level' cannot be 'TIMESTAMP'"),
        (request_of(trace_level=["OFF", "TENSORS"]), "'trace_level' OFF goes alone"),
        (request_of(trace_levels="OFF"), "unknown trace setting 'trace_levels'; the trace settings are"),
        (request_of(trace_mode="opentelemetry"), "OpenTelemetry is not offered"),
        (
            request_of(trace_file="/etc/passwd"),
            "trace setting 'trace_file' cannot be changed by a client: tesserad writes traces only to "
            "the file its operator names in its setting serving.trace_file",
        ),
        (request_of(trace_rate="5", trace_file="t.json"), "(none: tracing is off)"),
    ):
        expect_rpc_error(lambda request=request: oip.TraceSetting(request), invalid, text)
    # Without a trace file nothing can turn tracing on.
    expect_rpc_error(
        lambda: oip.TraceSetting(request_of(trace_level="TIMESTAMPS")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "tracing needs a trace file, and this tesserad has none: its operator names one in its "
        "setting serving.trace_file",
    )
    expect_rpc_error(
        lambda: oip.TraceSetting(request_of("absent")),
        grpc.StatusCode.NOT_FOUND,
        "model 'absent' does not exist",
    )
    # Nothing of a refused request was applied.
    assert settings_of(oip.TraceSetting(pb.TraceSettingRequest())) == changed
    # Clearing a global setting puts back its default.
    assert settings_of(oip.TraceSetting(request_of(trace_rate=None, log_frequency=None))) == DEFAULTS


def test_sampled_requests_write_ordered_timestamps(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, file = traced
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
    settings = settings_of(
        oip.TraceSetting(request_of(trace_level="TIMESTAMPS", trace_rate="2", trace_count="2"))
    )
    assert settings == {
        **DEFAULTS,
        "trace_file": [str(file)],
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": ["2"],
        "trace_count": ["2"],
    }
    # CLOCK_MONOTONIC, the daemon's clock for timestamps, is the whole machine's.
    brackets = []
    for _ in range(6):
        before = time.perf_counter_ns()
        oip.ModelInfer(infer_request("linear", X))
        brackets.append((before, time.perf_counter_ns()))
    # The 2nd and 4th requests were traced; then the count ran out and they were written, to
    # FILE.0 as Triton writes them then.
    assert settings_of(oip.TraceSetting(pb.TraceSettingRequest()))["trace_count"] == ["0"]
    assert not file.exists()
    traces = traces_in(file.with_name("trace.json.0"))
    assert sorted(traces) == [1, 2]
    for trace, (before, after) in zip(traces.values(), (brackets[1], brackets[3]), strict=True):
        assert trace["model_name"] == "linear" and trace["model_version"] == 1
        assert trace["request_id"] == "req-1"
        stamps = trace["timestamps"]
        assert list(stamps) == ORDER
        times = [stamps[name] for name in ORDER]
        assert times == sorted(times), stamps
        assert before <= times[0] and times[-1] <= after


def test_streamed_requests_are_traced_too(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, file = traced
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
    oip.TraceSetting(request_of(trace_level="TIMESTAMPS", trace_rate="1", log_frequency="2"))
    answers = list(oip.ModelStreamInfer(iter([infer_request("linear", X), infer_request("linear", X)])))
    assert [a.error_message for a in answers] == ["", ""]
    traces = traces_in(file.with_name("trace.json.0"))
    assert len(traces) == 2 and all(list(t["timestamps"]) == ORDER for t in traces.values())


def test_log_frequency_writes_every_n_traces_and_the_rest_at_the_stop(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data", **{"serving.trace_file": str(file)})).start()
    try:
        channel = daemon.channel()
        upload(channel, "linear", linear_model(1.0))
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        oip.TraceSetting(request_of(trace_level="TIMESTAMPS", trace_rate="1", log_frequency="2"))
        for _ in range(5):
            oip.ModelInfer(infer_request("linear", X))
        assert [len(traces_in(file.with_name(f"trace.json.{i}"))) for i in (0, 1)] == [2, 2]
        assert not file.with_name("trace.json.2").exists()
        # With log_frequency 0 the traces wait for a change or the stop, then go to FILE.
        oip.TraceSetting(request_of(log_frequency="0"))
        # The fifth trace, taken under log_frequency 2, went to the next FILE.N as they changed.
        assert len(traces_in(file.with_name("trace.json.2"))) == 1
        for _ in range(3):
            oip.ModelInfer(infer_request("linear", X))
        assert not file.exists()
    finally:
        daemon.stop()
    traces = traces_in(file)
    assert sorted(traces) == [6, 7, 8]
    assert all(list(t["timestamps"]) == ORDER for t in traces.values())


def test_a_stop_goes_on_when_the_trace_files_disk_takes_no_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tesserad.serving.trace")
    file = tmp_path / "trace.json"
    # A FIFO nobody reads: the trace writer's open of it never returns, as on a hung mount.
    os.mkfifo(file)
    threads_before = set(threading.enumerate())
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"serving.trace_file": str(file), "grace_period_s": 0.5})
    ).start()
    read: list[str] = []
    try:
        channel = daemon.channel()
        upload(channel, "linear", linear_model(1.0))
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        oip.TraceSetting(request_of(trace_level="TIMESTAMPS", trace_rate="1"))
        for _ in range(2):
            oip.ModelInfer(infer_request("linear", X))
        oip.TraceSetting(request_of(trace_rate="1"))  # hands the 2 traces to the writer: it hangs
        oip.ModelInfer(infer_request("linear", X))
    finally:
        (writer,) = [
            t for t in set(threading.enumerate()) - threads_before if t.name == "tessera-trace-writer"
        ]
        # The stop gives the writer grace_period_s, then goes on without it.
        daemon.stop(outliving=("tessera-trace-writer",))
        assert writer.is_alive() and writer.daemon  # a daemon thread: it cannot keep the process alive
        reader = threading.Thread(target=lambda: read.append(file.read_text()))
        reader.start()
        writer.join()
        reader.join()
    (record,) = [r for r in caplog.records if "the trace writer did not finish" in r.getMessage()]
    assert record.unwritten_traces == 3  # type: ignore[attr-defined]
    # Given its disk back, the writer still writes what it had.
    assert len([e for e in json.loads(read[0]) if "model_name" in e]) == 3


def test_once_the_trace_writer_stopped_a_change_is_unavailable(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, _ = traced
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
    # As the stop closes it, after the calls it waited for: one still answered then is refused.
    daemon.daemon._tracer.close(60)
    message = (
        "tesserad is shutting down: its trace writer has stopped, so the trace settings can no longer "
        "change; change them once it is back"
    )
    for model in ("", "linear"):
        with pytest.raises(grpc.RpcError) as refused:
            oip.TraceSetting(request_of(model, trace_level="TIMESTAMPS"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == message
    served = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
    for path in ("/v2/trace/setting", "/v2/models/linear/trace/setting"):
        assert error(served + path, {"trace_level": ["TIMESTAMPS"]}) == (503, message)
    # Reading them is still answered: tracing is off.
    assert settings_of(oip.TraceSetting(pb.TraceSettingRequest()))["trace_level"] == ["OFF"]


def test_a_model_has_settings_of_its_own_until_cleared(
    traced: tuple[InProcessDaemon, Path], expect_rpc_error: Callable[..., grpc.RpcError]
) -> None:
    daemon, file = traced
    channel = daemon.channel()
    upload(channel, "other", linear_model(2.0))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    own = settings_of(
        oip.TraceSetting(
            request_of("linear", trace_level=["TENSORS", "TIMESTAMPS"], trace_rate="1", log_frequency="1")
        )
    )
    assert own == {
        **DEFAULTS,
        "trace_file": [str(file)],
        "trace_level": ["TIMESTAMPS", "TENSORS"],
        "trace_rate": ["1"],
        "log_frequency": ["1"],
    }
    assert settings_of(oip.TraceSetting(pb.TraceSettingRequest()))["trace_level"] == ["OFF"]
    oip.ModelInfer(infer_request("other", X))
    oip.ModelInfer(infer_request("linear", X))
    (trace,) = traces_in(file.with_name("trace.json.0")).values()
    assert trace["model_name"] == "linear" and list(trace["timestamps"]) == ORDER
    (queued, x), (answered, y) = trace["tensors"]
    assert queued == "TENSOR_QUEUE_INPUT" and answered == "TENSOR_BACKEND_OUTPUT"
    assert x == {"name": "x", "data": "0.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0", "shape": "2,4", "dtype": "FP32"}
    assert (y["name"], y["shape"], y["dtype"]) == ("y", "2,3", "FP32")
    np.testing.assert_allclose([float(v) for v in y["data"].split(",")], (X @ W).ravel(), rtol=1e-6)
    # A global change reaches the settings the model has not set itself.
    oip.TraceSetting(request_of(trace_count="7"))
    assert settings_of(oip.TraceSetting(request_of("linear")))["trace_count"] == ["7"]
    # null clears a model's own setting back to the global one; with none left it is traced as
    # every other model.
    cleared = settings_of(oip.TraceSetting(request_of("linear", trace_level=None)))
    assert cleared["trace_level"] == ["OFF"] and cleared["trace_rate"] == ["1"]
    cleared = settings_of(oip.TraceSetting(request_of("linear", trace_rate=None, log_frequency=None)))
    assert cleared == settings_of(oip.TraceSetting(pb.TraceSettingRequest()))
    oip.ModelInfer(infer_request("linear", X))
    assert not file.with_name("trace.json.1").exists()


def test_grpc_reading_needs_reader_and_changing_admin(start_daemon, tokens: Tokens) -> None:
    daemon = start_daemon(**{"security.tokens_file": str(tokens.file)})
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
    reader, admin = bearer(tokens.token[Role.READER]), bearer(tokens.token[Role.ADMIN])
    assert settings_of(stub.TraceSetting(pb.TraceSettingRequest(), metadata=reader)) == DEFAULTS
    for role in (Role.READER, Role.TRAINER):
        with pytest.raises(grpc.RpcError) as refused:
            stub.TraceSetting(request_of(trace_rate="1"), metadata=bearer(tokens.token[role]))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == (
            f"changing the trace settings needs the admin role; the caller '{role.label}-holder' has "
            f"the {role.label} role; a request without settings reads them"
        )
    assert settings_of(stub.TraceSetting(pb.TraceSettingRequest(), metadata=reader)) == DEFAULTS
    changed = stub.TraceSetting(request_of(trace_rate="1"), metadata=admin)
    assert settings_of(changed)["trace_rate"] == ["1"]
    with pytest.raises(grpc.RpcError) as refused:
        stub.TraceSetting(pb.TraceSettingRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_http_reads_changes_and_refuses(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, file = traced
    served = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
    url, model_url = f"{served}/v2/trace/setting", f"{served}/v2/models/linear/trace/setting"
    defaults = {
        "trace_file": str(file),
        "trace_level": ["OFF"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_mode": "triton",
    }
    status, _, body = call(url)
    assert status == 200 and json.loads(body) == defaults
    status, _, body = call(
        model_url, {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "1"}
    )
    assert status == 200
    assert json.loads(body) == {
        **defaults,
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "1",
        "log_frequency": "1",
    }
    status, _, _ = call(
        f"{served}/v2/models/linear/infer",
        {"id": "h1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
    )
    assert status == 200
    (trace,) = traces_in(file.with_name("trace.json.0")).values()
    assert trace["request_id"] == "h1" and list(trace["timestamps"]) == ORDER
    for body_sent, text in (
        ({"trace_rate": "-5"}, "trace setting 'trace_rate' must be one whole number from 1 to 4294967295"),
        ({"trace_count": "many"}, "got 'many'"),
        ({"trace_rate": True}, "trace setting 'trace_rate' must be a string (such as \"1000\") or a list"),
        ({"trace_level": "VERBOSE"}, "trace setting 'trace_level' cannot be 'VERBOSE'"),
        ({"trace_level": []}, "trace setting 'trace_level' needs a level"),
        ({"trace_file": "/tmp/elsewhere.json"}, "cannot be changed by a client"),
        ({"log_verbose_level": 1}, "unknown trace setting 'log_verbose_level'"),
        (b"[]", "the request body must be a JSON object"),
    ):
        status, message = error(url, body_sent)
        assert status == 400 and text in message, message
    assert error(f"{served}/v2/models/absent/trace/setting") == (
        404,
        "model 'absent' does not exist; a model's trace settings are for a model of the registry "
        "(the repository index lists them)",
    )
    # What it reads goes back unchanged; null clears the model's own settings.
    status, _, body = call(url, defaults)
    assert status == 200 and json.loads(body) == defaults
    status, _, body = call(model_url, {"trace_level": None, "trace_rate": None, "log_frequency": None})
    assert status == 200 and json.loads(body) == defaults


def test_http_reading_needs_reader_and_changing_admin(start_daemon, tokens: Tokens) -> None:
    daemon = start_daemon(
        **{"serving.oip_http_listen": "127.0.0.1:0", "security.tokens_file": str(tokens.file)}
    )
    url = f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/trace/setting"
    as_reader = {"Authorization": f"Bearer {tokens.token[Role.READER]}"}
    as_admin = {"Authorization": f"Bearer {tokens.token[Role.ADMIN]}"}
    assert call(url)[0] == 401
    status, _, body = call(url, headers=as_reader)
    assert status == 200 and json.loads(body)["trace_level"] == ["OFF"]
    assert error(url, {"trace_rate": "1"}, as_reader) == (
        403,
        "POST /v2/trace/setting needs the admin role; the token 'reader-holder' has the reader role",
    )
    status, _, body = call(url, {"trace_rate": "1"}, as_admin)
    assert status == 200 and json.loads(body)["trace_rate"] == "1"


def test_a_trace_file_in_a_missing_directory_stops_the_start(tmp_path: Path) -> None:
    file = tmp_path / "absent" / "trace.json"
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data", **{"serving.trace_file": str(file)}))
    with pytest.raises(StartupError, match="its directory does not exist; create it first"):
        daemon.start()


def test_predict_requests_are_traced_with_the_same_settings(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, file = traced
    channel = daemon.channel()
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)
    oip.TraceSetting(request_of("linear", trace_level="TIMESTAMPS", trace_rate="1", log_frequency="3"))
    request = predict_request("linear", X)
    request.request_id = "tessera-1"
    before = time.perf_counter_ns()
    inference.Predict(request)
    after = time.perf_counter_ns()
    answers = list(inference.PredictStream(iter([request, request])))
    assert [a.request_id for a in answers] == ["tessera-1", "tessera-1"]
    traces = traces_in(file.with_name("trace.json.0"))
    assert sorted(traces) == [1, 2, 3]
    for trace in traces.values():
        assert (trace["model_name"], trace["model_version"], trace["request_id"]) == (
            "linear",
            1,
            "tessera-1",
        )
        assert list(trace["timestamps"]) == ORDER
        times = [trace["timestamps"][name] for name in ORDER]
        assert times == sorted(times)
    assert (
        before <= traces[1]["timestamps"]["REQUEST_START"] <= traces[1]["timestamps"]["REQUEST_END"] <= after
    )
    # Nothing was dropped: the writer kept up.
    assert samples(scrape(daemon)[1])["tessera_traces_dropped_total"] == 0


def test_a_deleted_models_own_settings_go_with_it(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, _ = traced
    channel = daemon.channel()
    upload(channel, "other", linear_model(2.0))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    oip.TraceSetting(request_of("other", trace_level="TIMESTAMPS", trace_rate="1"))
    global_settings = settings_of(oip.TraceSetting(pb.TraceSettingRequest()))
    registry_pb2_grpc.RegistryStub(channel).DeleteModel(
        registry_pb2.DeleteModelRequest(name="other", force=True)
    )
    upload(channel, "other", linear_model(3.0))
    # The daemon learns of the deletion in the background, as serving does of every change.
    ends = time.monotonic() + 60
    while (now := settings_of(oip.TraceSetting(request_of("other")))) != global_settings:
        assert time.monotonic() < ends, f"a new model 'other' still has the deleted one's settings: {now}"
        time.sleep(0.05)
    assert settings_of(oip.TraceSetting(request_of("linear"))) == global_settings


def test_a_model_deleted_and_created_again_between_refreshes_loses_the_old_ones_settings(
    traced: tuple[InProcessDaemon, Path],
) -> None:
    daemon, file = traced
    channel = daemon.channel()
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "other", linear_model(2.0))
    # Each trace written to the next FILE.N at once.
    every_request = {"trace_level": "TIMESTAMPS", "trace_rate": "1", "log_frequency": "1"}
    oip.TraceSetting(request_of("other", **every_request))
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("linear", lambda: upload(channel, "linear", linear_model(2.0))):
        registry_pb2_grpc.RegistryStub(channel).DeleteModel(
            registry_pb2.DeleteModelRequest(name="other", force=True)
        )
        upload(channel, "other", linear_model(3.0))
        # The one refresh of both changes finds a model "other": another one.
        refreshes.release_and_wait("other")
    request = infer_request("other", X)
    request.id = "global-settings"  # trace_level OFF: not traced
    oip.ModelInfer(request)
    # Its own settings start from the global ones, not from the deleted model's.
    assert settings_of(oip.TraceSetting(request_of("other", trace_rate="1")))["trace_level"] == ["OFF"]
    oip.TraceSetting(request_of("other", **every_request))
    request.id = "own-settings"
    oip.ModelInfer(request)
    traces = traces_in(file.with_name("trace.json.0"))
    assert [t["request_id"] for t in traces.values()] == ["own-settings"]


def test_an_ensembles_members_get_child_traces(traced: tuple[InProcessDaemon, Path]) -> None:
    daemon, file = traced
    channel = daemon.channel()
    for name, scale in (("a", 1.0), ("b", 2.0)):
        upload(channel, name, linear_model(scale))
    with tessera.Client(daemon.target, timeout=60) as client:
        client.models.register_ensemble("ens", ["a:1", "b:1"], "mean")
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    oip.TraceSetting(request_of(trace_level=["TIMESTAMPS", "TENSORS"], trace_rate="1", log_frequency="1"))
    oip.ModelInfer(infer_request("ens", X))
    traces = traces_in(file.with_name("trace.json.0"))
    assert sorted(traces) == [1, 2, 3]
    parent = traces[1]
    assert (parent["model_name"], parent.get("parent_id")) == ("ens", None)
    children = [traces[2], traces[3]]
    assert [(c["model_name"], c["model_version"], c["parent_id"]) for c in children] == [
        ("a", 1, 1),
        ("b", 1, 1),
    ]
    for child, scale in zip(children, (1.0, 2.0), strict=True):
        stamps = child["timestamps"]
        assert list(stamps) == ORDER
        # Each member ran inside the ensemble's compute.
        assert parent["timestamps"]["COMPUTE_START"] <= stamps["QUEUE_START"]
        assert stamps["COMPUTE_END"] <= parent["timestamps"]["COMPUTE_OUTPUT_START"]
        (_, x), (_, y) = child["tensors"]
        assert x["shape"] == "2,4" and y["shape"] == "2,3"
        np.testing.assert_allclose(
            [float(v) for v in y["data"].split(",")], (X @ W * scale).ravel(), rtol=1e-6
        )
