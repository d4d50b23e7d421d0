"""The SDK's pure parts: tensor encoding, spec parsing, typed events, errors, retries, the plot."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import subprocess
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

import tessera
import tessera.aio
from tessera import run_logging
from tessera.calls import Reconnects
from tessera.datasets import ArraysSink, SplitIndicesSink, SplitRows, split_spec
from tessera.errors import ERROR_BY_CODE, Unavailable, error_from_status_number, sent_by_a_server
from tessera.events import event_from_proto
from tessera.listings import messages_frame
from tessera.messages import dataset_ref, from_dict, version_ref
from tessera.plot import line_plot
from tessera.run_logging import _exit_status
from tessera.tensors import from_tensor, to_tensor, to_tensors
from tessera.training import enum_value
from tessera.transport import RetryPolicy
from tessera.v1 import common_pb2, datasets_pb2, job_spec_pb2, training_pb2


@pytest.mark.parametrize(
    "dtype",
    [
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
    ],
)
def test_tensors_round_trip_every_dtype(dtype):
    array = (
        np.arange(24).reshape(2, 3, 4) % 2 if dtype == "bool" else np.arange(24).reshape(2, 3, 4)
    ).astype(dtype)
    tensor = to_tensor("x", array)
    assert list(tensor.shape) == [2, 3, 4] and len(tensor.data) == array.nbytes
    back = from_tensor(tensor)
    assert back.dtype == array.dtype and np.array_equal(back, array)
    back[0, 0, 0] = 1  # a writable copy the caller owns


def test_tensors_are_little_endian_and_c_ordered():
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3).T  # (3, 2), not contiguous
    tensor = to_tensor("x", big_endian)
    assert tensor.data == np.ascontiguousarray(big_endian.astype("<f4")).tobytes()
    assert np.array_equal(from_tensor(tensor), big_endian)


def test_scalars_lone_arrays_and_bfloat16():
    scalar = to_tensor("s", np.float32(2.5))
    assert list(scalar.shape) == [] and from_tensor(scalar) == np.float32(2.5)
    assert [t.name for t in to_tensors(np.zeros(2))] == ["input"]
    bf16 = common_pb2.Tensor(
        name="b", dtype=common_pb2.DATA_TYPE_BFLOAT16, shape=[2], data=b"\x80\x3f\x00\x40"
    )
    assert from_tensor(bf16).tolist() == [1.0, 2.0]


def test_unsupported_dtypes_are_refused_naming_the_input():
    # Text is sent to the daemon's Open Inference Protocol, which carries strings.
    for words in (np.array(["a"]), np.array([b"a"]), np.array(["a"], dtype=object)):
        with pytest.raises(
            ValueError,
            match=f"input 'words': dtype {words.dtype} cannot be sent: it is text or objects.*datatype BYTES",
        ):
            to_tensor("words", words)
    with pytest.raises(ValueError, match="complex"):
        to_tensor("z", np.zeros(2, np.complex64))


def test_the_refusal_of_a_dtype_lists_bfloat16_which_is_sent_too():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert to_tensor("b", np.ones(2, ml_dtypes.bfloat16)).dtype == common_pb2.DATA_TYPE_BFLOAT16
    with pytest.raises(ValueError, match=r"use one of bfloat16 \(ml_dtypes\), bool, float16"):
        to_tensor("z", np.zeros(2, np.complex64))


def test_specs_from_dicts_take_short_enum_names_and_dataset_strings():
    spec = from_dict(
        job_spec_pb2.JobSpec,
        {
            "task": "regression",
            "data": {"dataset": "clips:3"},
            "early_stopping": {"mode": "max", "patience": 2},
            "architecture": {"input_shape": [1, 4, 4, 4, 4], "cnn4d": {"channels": [4]}},
        },
    )
    assert spec.task == job_spec_pb2.TASK_REGRESSION
    assert (spec.data.dataset.name, spec.data.dataset.version) == ("clips", 3)
    assert spec.early_stopping.mode == job_spec_pb2.OPTIMIZE_MODE_MAX
    assert list(spec.architecture.cnn4d.channels) == [4]
    with pytest.raises(ValueError, match=r"spec: .*epoks"):
        from_dict(job_spec_pb2.JobSpec, {"epoks": 3})
    assert from_dict(job_spec_pb2.JobSpec, spec) is spec


def test_refs_and_enum_names():
    assert version_ref("m", alias="prod").alias == "prod"
    assert version_ref("m").WhichOneof("selector") is None
    with pytest.raises(ValueError, match="not both"):
        version_ref("m", 1, "prod")
    assert dataset_ref("clips") == common_pb2.DatasetRef(name="clips", version=0)
    assert enum_value(training_pb2.RunStatus, "RUN_STATUS_", "failed") == training_pb2.RUN_STATUS_FAILED
    with pytest.raises(ValueError, match="running, succeeded"):
        enum_value(training_pb2.RunStatus, "RUN_STATUS_", "done")


def test_every_job_event_kind_becomes_its_typed_class():
    kinds = {
        "state": (
            training_pb2.StateChanged(state=training_pb2.JOB_STATE_RUNNING, devices=["cpu:0"]),
            tessera.StateChanged,
        ),
        "step": (training_pb2.StepMetrics(step=3, loss=0.5), tessera.StepMetrics),
        "epoch": (training_pb2.EpochMetrics(epoch=1, metrics={"val_loss": 0.4}), tessera.EpochMetrics),
        "progress": (training_pb2.Progress(fraction=0.5, eta_s=3), tessera.Progress),
        "resources": (training_pb2.ResourceUsage(gpu_memory_bytes={"cuda:0": 7}), tessera.ResourceUsage),
        "checkpoint": (training_pb2.CheckpointSaved(reason="best"), tessera.CheckpointSaved),
        "log": (training_pb2.LogLine(level="info", message="hi"), tessera.LogLine),
        "error": (training_pb2.JobError(kind="crash", message="died"), tessera.JobError),
        "registered": (training_pb2.VersionRegistered(model="m", version=2), tessera.VersionRegistered),
    }
    for seq, (kind, (message, cls)) in enumerate(kinds.items(), start=1):
        event = event_from_proto(training_pb2.JobEvent(seq=seq, attempt=1, **{kind: message}))
        assert type(event) is cls and event.seq == seq and event.attempt == 1 and event.time is None
    state = event_from_proto(training_pb2.JobEvent(seq=1, state=kinds["state"][0]))
    assert state.state == tessera.JobState.RUNNING and state.devices == ["cpu:0"]
    assert type(event_from_proto(training_pb2.JobEvent(seq=9))) is tessera.JobEvent
    assert tessera.JobState.CANCELLED.finished and not tessera.JobState.RUNNING.finished


def test_status_numbers_map_like_status_codes():
    for code, cls in ERROR_BY_CODE.items():
        assert type(error_from_status_number(code.value[0], "m")) is cls
    assert type(error_from_status_number(999, "m")) is tessera.Unknown
    assert issubclass(tessera.NotFound, tessera.TesseraError)
    assert grpc.StatusCode.OK not in ERROR_BY_CODE


def test_backoff_grows_within_its_ceiling():
    policy = tessera.RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (6, 0.5)):
        assert ceiling / 2 <= policy.backoff_s(retry) <= ceiling


def test_a_stream_that_gives_up_counts_its_reconnects_not_its_tries():
    """The stream's first try is not a reconnect: with three tries, it gave up after two (as
    the Node client says), naming the last try's status and keeping its trailers."""
    reconnects = Reconnects("watching job j-1", "watch again", RetryPolicy(attempts=3), None)
    for _ in range(2):
        assert reconnects.resume_after(Unavailable("cut")) > 0
    with pytest.raises(Unavailable) as gave_up:
        reconnects.resume_after(Unavailable("cut", {"tessera-unanswered-not-run": "true"}))
    assert gave_up.value.message == (
        "cut (gave up watching job j-1 after 2 reconnects, the last failing UNAVAILABLE; watch again)"
    )
    assert gave_up.value.trailers == {"tessera-unanswered-not-run": "true"}


def test_a_stream_whose_timeout_ends_before_its_next_reconnect_says_how_many_it_made():
    # It raised the last error as it was, without a word of the reconnects before it.
    policy = RetryPolicy(attempts=5, initial_backoff_s=1000, max_backoff_s=1000)
    reconnects = Reconnects("watching job j-1", "watch again", policy, timeout=60)
    with pytest.raises(Unavailable) as gave_up:
        reconnects.resume_after(Unavailable("cut", {"k": "v"}))
    assert gave_up.value.message == (
        "cut (gave up watching job j-1 after 0 reconnects, the last failing UNAVAILABLE: its timeout "
        "ends before the next; watch again)"
    )
    assert gave_up.value.trailers == {"k": "v"}


def test_line_plot_draws_each_series_with_its_mark():
    plot = line_plot({"train_loss": [(0, 2.0), (10, 1.0)], "val_loss": [(10, 1.5)]}, width=20, height=5)
    lines = plot.splitlines()
    assert lines[0].strip().startswith("2 │•")
    assert "x" in plot and "• train_loss" in lines[-1] and "x val_loss" in lines[-1]
    assert line_plot({"empty": [], "nan": [(1, float("nan"))]}) == ""


def test_the_sdk_imports_without_torch_tesserad_or_the_oip_package():
    blocked = "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'tesserad', 'inference')]"
    code = f"{blocked}; import tessera, tessera.aio, tessera.cli.runner; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _run_python(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_sdk_package_imports_its_parts_on_first_use():
    # The daemon imports tessera.backup (the archive format): the package itself pulls nothing.
    _run_python(
        "import sys, tessera, tessera.backup; assert 'grpc' not in sys.modules, 'grpc'; "
        "from tessera import Client, NotFound; import tessera.client, tessera.errors; "
        "assert Client is tessera.client.Client and tessera.NotFound is tessera.errors.NotFound; "
        "assert all(getattr(tessera, name) is not None for name in tessera.__all__); "
        "assert set(tessera.__all__) <= set(dir(tessera)); "
        "assert not hasattr(tessera, 'nothing')"
    )


def test_split_fractions_may_be_numpy_numbers_and_may_not_be_mixed_with_indices():
    spec = split_spec({"train": np.float32(0.75), "val": np.float64(0.25)}, seed=2)
    assert spec is not None and [(s.name, s.fraction) for s in spec.fractions.splits] == [
        ("train", 0.75),
        ("val", 0.25),
    ]
    indices = split_spec({"a": np.array([0, 1]), "b": [2]}, seed=0)
    assert indices is not None and [list(s.indices) for s in indices.indices.splits] == [[0, 1], [2]]
    with pytest.raises(ValueError, match="'b'"):
        split_spec({"a": 0.5, "b": [1]}, seed=0)


def test_channels_try_an_absent_daemon_again_every_few_seconds():
    # gRPC's default waits up to 120 s between attempts and fails calls at once meanwhile, so a
    # follow riding out a restart (it asks every second for 120 s) could miss the daemon's return.
    from tessera.transport import DEFAULT_KEEPALIVE_S, MAX_RECONNECT_BACKOFF_MS, RetryPolicy, _channel_options

    assert MAX_RECONNECT_BACKOFF_MS <= 5000
    options = dict(_channel_options(None, RetryPolicy(), DEFAULT_KEEPALIVE_S))
    assert options["grpc.max_reconnect_backoff_ms"] == MAX_RECONNECT_BACKOFF_MS


@pytest.mark.parametrize(
    ("target", "said"),
    [
        (
            "http://127.0.0.1:50051",
            "'http://127.0.0.1:50051' is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. "
            "127.0.0.1:50051, in env TESSERA_TARGET",
        ),
        (
            "https://tessera.example.com",
            "'https://tessera.example.com' is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. "
            "tessera.example.com:50051 (with tls=True for TLS), in env TESSERA_TARGET",
        ),
        (
            "127.0.0.1",
            "'127.0.0.1' has no port: write HOST:PORT, e.g. 127.0.0.1:50051, in env TESSERA_TARGET",
        ),
    ],
)
def test_a_target_in_the_environment_that_is_a_url_or_lacks_a_port_is_refused_as_the_cli_refuses_it(
    monkeypatch, target, said
):
    """gRPC would resolve "http://127.0.0.1:50051" as a host name, and dial 443 without a port:
    every call would fail UNAVAILABLE with nothing saying why."""
    monkeypatch.setenv("TESSERA_TARGET", target)
    with pytest.raises(ValueError, match="write HOST:PORT") as raised:
        tessera.Client()
    assert str(raised.value) == said

    async def made_in_a_loop() -> None:
        tessera.aio.Client()

    with pytest.raises(ValueError, match="write HOST:PORT") as raised:
        asyncio.run(made_in_a_loop())
    assert str(raised.value) == said
    monkeypatch.setenv("TESSERA_TARGET", "dns:///tesserad.default.svc:50051")
    client = tessera.Client()
    assert client.target == "dns:///tesserad.default.svc:50051"
    client.close()


@pytest.mark.parametrize(
    ("target", "said"),
    [
        (
            "http://127.0.0.1:33125",
            "'http://127.0.0.1:33125' is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. "
            "127.0.0.1:33125, as the client's target",
        ),
        (
            "127.0.0.1",
            "'127.0.0.1' has no port: write HOST:PORT, e.g. 127.0.0.1:50051, as the client's target",
        ),
        ("50051", "'50051' has no host: write HOST:PORT, e.g. 127.0.0.1:50051, as the client's target"),
        ("", "the target is empty: write HOST:PORT, e.g. 127.0.0.1:50051, as the client's target"),
    ],
)
def test_a_target_given_that_is_a_url_or_lacks_a_port_is_refused_as_one_in_the_environment(
    monkeypatch, target, said
):
    """It went to gRPC unchecked: the first call failed UNAVAILABLE ("the host name ... does not
    resolve") where TESSERA_TARGET holding the same was refused at once."""
    monkeypatch.delenv("TESSERA_TARGET", raising=False)
    with pytest.raises(ValueError, match="write HOST:PORT") as raised:
        tessera.Client(target)
    assert str(raised.value) == said

    async def made_in_a_loop() -> None:
        tessera.aio.Client(target)

    with pytest.raises(ValueError, match="write HOST:PORT") as raised:
        asyncio.run(made_in_a_loop())
    assert str(raised.value) == said
    client = tessera.Client("dns:///tesserad.default.svc:50051")
    assert client.target == "dns:///tesserad.default.svc:50051"
    client.close()


@pytest.mark.parametrize("target", [50051, b"127.0.0.1:50051"])
def test_a_target_that_is_not_a_string_is_a_type_error_naming_the_string_wanted(target):
    # It was an AttributeError: 'int' object has no attribute 'startswith'.
    said = (
        "the target must be a string, HOST:PORT (e.g. 127.0.0.1:50051), not "
        f"{type(target).__name__}, as the client's target"
    )
    with pytest.raises(TypeError) as raised:
        tessera.Client(target)
    assert str(raised.value) == said

    async def made_in_a_loop() -> None:
        tessera.aio.Client(target)

    with pytest.raises(TypeError) as raised:
        asyncio.run(made_in_a_loop())
    assert str(raised.value) == said


def test_a_loaded_dataset_is_parsed_without_keeping_its_chunks():
    """load() holds the file in memory: its bytes, then parsed. Kept to the end, the bytes
    received made a third copy of the file at the peak."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(4 * 2**20, np.float64))  # 32 MiB
    data = buffer.getvalue()
    header = datasets_pb2.DatasetVersion(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=datasets_pb2.DATASET_FORMAT_NPY,
        arrays=[datasets_pb2.ArrayInfo(name="x")],
    )
    tracemalloc.start()
    try:
        sink = ArraysSink()
        sink.start(header)
        for start in range(0, len(data), 2**20):
            sink.write(data[start : start + 2**20])
        del data, buffer
        arrays = sink.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert arrays["x"].shape == (4 * 2**20,)
    assert peak < 80 * 2**20, f"{peak / 2**20:.0f} MiB at the peak"


def _split_header(sha256: str = "a" * 64) -> datasets_pb2.DatasetVersion:
    return datasets_pb2.DatasetVersion(
        name="d",
        version=1,
        sha256=sha256,
        size_bytes=10,
        splits=[datasets_pb2.SplitInfo(name="val", count=3)],
    )


def test_split_indices_are_held_to_the_headers_count_of_them():
    whole = np.array([2, 5, 7], dtype="<i8").tobytes()
    sink = SplitIndicesSink("val")
    sink.start(_split_header())
    # Chunks need not end on an index: the bytes are joined.
    sink.write(whole[:13])
    sink.write(whole[13:])
    assert sink.finish().indices.tolist() == [2, 5, 7]
    short = SplitIndicesSink("val")
    short.start(_split_header())
    short.write(whole[:16])
    with pytest.raises(
        tessera.DataLoss, match="sent 16 bytes of the indices of split 'val' of d:1, not the 24"
    ):
        short.finish()
    long = SplitIndicesSink("val")
    long.start(_split_header())
    with pytest.raises(tessera.DataLoss, match="more than the 24 bytes of split 'val' of d:1"):
        long.write(whole + whole[:8])
    unlisted = SplitIndicesSink("test")
    unlisted.start(_split_header())
    with pytest.raises(
        tessera.DataLoss, match="split 'test' of d:1, which it does not list among its splits"
    ):
        unlisted.write(whole)


def test_a_splits_rows_are_taken_from_the_file_its_indices_are_of_alone():
    buffer = io.BytesIO()
    np.save(buffer, np.arange(10, dtype=np.float32) * 10)
    data = buffer.getvalue()
    header = datasets_pb2.DatasetVersion(
        name="d",
        version=1,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=datasets_pb2.DATASET_FORMAT_NPY,
        arrays=[datasets_pb2.ArrayInfo(name="x")],
    )
    rows = SplitRows(header, "val", np.array([1, 4, 8]))
    sink = ArraysSink(rows)
    sink.start(header)
    sink.write(data)
    assert sink.finish()["x"].tolist() == [10.0, 40.0, 80.0]
    other = ArraysSink(SplitRows(_split_header(), "val", np.array([1])))
    with pytest.raises(tessera.DataLoss, match="d:1 changed while it was loading"):
        other.start(header)


def test_work_that_fails_after_its_await_was_cancelled_leaves_no_error_never_retrieved():
    """The cancel is raised once the work has ended; the work's own error went to asyncio's
    handler as "Future exception was never retrieved" when the future was collected."""
    from tessera.calls import _off_the_loop

    started, fail = threading.Event(), threading.Event()
    reported: list[dict] = []

    def write_failing() -> None:
        started.set()
        fail.wait(30)
        raise OSError(28, "No space left on device")

    async def cancel_mid_write() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        waiting = asyncio.create_task(_off_the_loop(write_failing))
        await asyncio.to_thread(started.wait)
        waiting.cancel()
        await asyncio.sleep(0)
        fail.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        del waiting
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(cancel_mid_write())
    assert [c["message"] for c in reported] == []


class _Parsed:
    """What a load's parse made, held by a weak reference to see when it is let go."""


def _cancel_mid_work(
    work: Callable[[], Any], started: threading.Event, end: threading.Event, held: list[BaseException] | None
) -> list[str]:
    """Runs `work` by `_left_on_cancel`, cancelled once it has started, and lets it end only after
    the cancel was raised (into `held`, where the caller keeps it); waits for the worker to end
    and its future's callbacks to run. What asyncio's handler was told ("never retrieved")."""
    from tessera.calls import _left_on_cancel

    reported: list[str] = []

    async def cancel_mid_work() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
        loading = asyncio.create_task(_left_on_cancel(work))
        await asyncio.to_thread(started.wait)
        loading.cancel()
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await loading
        if held is not None:
            held.append(cancelled.value)
        del loading, cancelled
        end.set()
        # The worker thread has ended, its result set on the future; one turn runs the callbacks.
        await loop.shutdown_default_executor()
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(cancel_mid_work())
    return reported


def test_a_cancelled_load_whose_parse_then_fails_leaves_no_error_never_retrieved():
    """The cancel is raised at once and the parse goes on alone; its error, no one's now, went to
    asyncio's handler as "Future exception was never retrieved" when the future was collected."""
    started, end = threading.Event(), threading.Event()

    def parse_failing() -> None:
        started.set()
        end.wait(30)
        raise ValueError("the file is no npz")

    assert _cancel_mid_work(parse_failing, started, end, held=None) == []


def test_a_cancelled_load_lets_go_of_what_its_parse_made_while_the_cancel_is_held():
    """The cancel's traceback holds `_left_on_cancel`'s frame: where that kept the future, a
    dataset parsed after the cancel stayed in memory as long as the caller held the error."""
    started, end = threading.Event(), threading.Event()
    made: list[weakref.ref[_Parsed]] = []

    def parse() -> _Parsed:
        started.set()
        end.wait(30)
        parsed = _Parsed()
        made.append(weakref.ref(parsed))
        return parsed

    held: list[BaseException] = []
    _cancel_mid_work(parse, started, end, held)
    assert held[0].__traceback__ is not None
    assert made[0]() is None


@pytest.mark.parametrize(
    ("code", "details", "sent"),
    [
        (grpc.StatusCode.NOT_FOUND, "model affine not found", True),
        (grpc.StatusCode.INVALID_ARGUMENT, "limit must be positive", True),
        (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token", True),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False),
        (grpc.StatusCode.CANCELLED, "Locally cancelled", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT: Received message larger than max (9 vs. 4)", False),
        (grpc.StatusCode.INTERNAL, "Failed parsing HTTP/2", False),
        (grpc.StatusCode.UNKNOWN, "Exception iterating requests!", False),
        (grpc.StatusCode.UNIMPLEMENTED, "Received http2 header with status: 404", False),
        # Another gRPC service, or a proxy with no route (Envoy), answers so over HTTP 200, as an
        # older tesserad does for a method added since: never proof that tesserad answered.
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found: tessera.v1.System/GetServerInfo", False),
        (grpc.StatusCode.UNIMPLEMENTED, "", False),
        (grpc.StatusCode.PERMISSION_DENIED, "Received http2 header with status: 403", False),
    ],
)
def test_only_a_status_no_grpc_client_makes_says_a_server_answered(code, details, sent):
    assert sent_by_a_server(code, details) is sent


def test_a_flat_line_plot_labels_its_y_axis_around_its_value():
    plot = line_plot({"best so far": [(1, 7.269e-06), (2, 7.269e-06)]}, width=20, height=5)
    labels = [line.split("│")[0].strip() for line in plot.splitlines() if "│" in line]
    assert [labels[0], labels[len(labels) // 2], labels[-1]] == ["7.996e-06", "7.269e-06", "6.542e-06"]


def test_a_verify_stream_that_ends_without_its_report_is_an_error_not_a_clean_check():
    from tessera.errors import Internal
    from tessera.system import _verify_report
    from tessera.v1 import system_pb2

    with pytest.raises(Internal, match="without its report"):
        _verify_report(system_pb2.VerifyStoreProgress(bytes_checked=5, bytes_total=10))
    clean = system_pb2.VerifyStoreProgress(report=system_pb2.VerifyStoreReport())
    assert _verify_report(clean) == system_pb2.VerifyStoreReport()


@pytest.mark.parametrize(
    ("uncaught", "interactive", "status"),
    [
        (None, False, "succeeded"),
        (ValueError("boom"), False, "failed"),
        (KeyboardInterrupt(), False, "cancelled"),
        (ValueError("shown, then the session went on"), True, "succeeded"),
    ],
)
def test_a_run_left_open_ends_at_exit_as_the_interpreter_exits(
    monkeypatch: pytest.MonkeyPatch, uncaught: BaseException | None, interactive: bool, status: str
) -> None:
    # The interpreter gives the uncaught exception to sys.excepthook before the exit hooks run;
    # an interactive session (sys.ps1) shows its errors there too, and goes on.
    shown: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, tb: shown.append(error))
    monkeypatch.setattr(run_logging, "_uncaught", [])
    monkeypatch.delattr(sys, "ps1", raising=False)
    # pytest and code.InteractiveInterpreter set sys.last_value for errors they went on after.
    monkeypatch.setattr(sys, "last_value", ValueError("a test that failed"), raising=False)
    run_logging._watch_uncaught()
    if uncaught is not None:
        sys.excepthook(type(uncaught), uncaught, None)
        assert shown == [uncaught]
    if interactive:
        monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    assert _exit_status() == status


def test_a_listing_s_frame_has_a_column_per_field_of_one_value_map_or_list():
    pandas = pytest.importorskip("pandas")
    job = training_pb2.Job(job_id="j1", state=training_pb2.JOB_STATE_RUNNING, devices=["cpu:0"])
    job.metrics["loss"] = 0.5
    newer = training_pb2.Job(job_id="j2", state=99)  # a state this SDK does not know
    with tessera.Client("127.0.0.1:1") as client:  # a job is listed as a tessera.Job, its message `info`
        frame = messages_frame([tessera.Job(client.training._conn, job), newer])
    assert frame["job_id"].tolist() == ["j1", "j2"] and frame["state"].tolist() == ["running", 99]
    assert frame["devices"].tolist() == [["cpu:0"], []] and frame["metrics"][0] == {"loss": 0.5}
    assert frame["created_at"].isna().all() and str(frame["created_at"].dt.tz) == "UTC"
    assert "spec" not in frame.columns and "checkpoints" not in frame.columns
    assert messages_frame([]).equals(pandas.DataFrame())
