"""Triton's trace settings as tesserad takes them: each refused by name with what to send, the
sampling that trace_rate and trace_count make, a model's own settings over the global ones, and
the files the traces go to (Triton's FILE.N for log_frequency, FILE at the stop), written off the
caller's thread, in order, dropping (and counting) what a stuck disk cannot take."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tesserad.errors import FailedPrecondition, InvalidArgument, Unavailable
from tesserad.serving.batcher import MemberAnswer, Prediction
from tesserad.serving.open_inference import OIP_NAME_BY_DTYPE
from tesserad.serving.trace import (
    CLOSE_WAIT_MIN_S,
    TraceMetrics,
    Tracer,
    TraceSettings,
    parsed_changes,
    usable_trace_file,
)

X = {"x": np.array([[1.0, 0.1]], dtype=np.float32)}
# What a close waits for the writer here: a working disk writes in moments.
WAIT_S = 60
# A request queued at 100, batched with others at 110 (inputs joined at 115), the model run
# returning at 140, its outputs taken at 142.
PREDICTION = Prediction({"y": np.array([[True, False]])}, 10, 30, 2, 110, 115, 142)


def answer(tracer: Tracer, model: str = "m", request_id: str = "") -> None:
    tracer.trace(model, 1, request_id, 90, PREDICTION, X, 150)


def written(path: Path) -> list[dict[str, object]]:
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"trace_rate": ["0"]},
            "trace setting 'trace_rate' must be one whole number from 1 to 4294967295 (1 traces",
        ),
        ({"trace_rate": ["4294967296"]}, "got '4294967296'"),
        ({"trace_rate": ["+5"]}, "got '+5'"),
        ({"trace_rate": ["1e3"]}, "got '1e3'"),
        ({"trace_rate": []}, "got 0 values"),
        (
            {"trace_count": ["-2"]},
            "'trace_count' must be one whole number from -1 to 2147483647 (-1: no limit)",
        ),
        (
            {"log_frequency": ["-1"]},
            "'log_frequency' must be one whole number from 0 to 4294967295 (0: write",
        ),
        ({"trace_rate": 2.5}, 'must be a string (such as "1000") or a list of strings, got a number'),
        ({"trace_rate": {"a": 1}}, "got an object"),
        (
            {"trace_level": ["timestamps"]},
            "cannot be 'timestamps'; the levels are OFF, TIMESTAMPS and TENSORS",
        ),
        ({"trace_level": ["OFF", "OFF"]}, "'trace_level' OFF goes alone, got OFF, OFF"),
        ({"trace_mode": "opentelemetry"}, "can only be 'triton'"),
        ({"trace_file": "other.json"}, "this tesserad's is '/srv/trace.json'"),
        ({"trace": ["OFF"]}, "unknown trace setting 'trace'"),
    ],
)
def test_a_bad_setting_is_refused_by_name(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parsed_changes(changes, "/srv/trace.json")
    assert message in refused.value.message


def test_settings_take_strings_lists_and_whole_numbers() -> None:
    assert parsed_changes(
        {
            "trace_level": ["TENSORS", "TIMESTAMPS"],
            "trace_rate": "7",
            "trace_count": -1,
            "log_frequency": [" 3"],
            "trace_file": ["/srv/trace.json"],
            "trace_mode": None,
        },
        "/srv/trace.json",
    ) == {"levels": ("TIMESTAMPS", "TENSORS"), "rate": 7, "count": -1, "log_frequency": 3}
    assert parsed_changes({"trace_level": "OFF", "trace_rate": None}, "") == {"levels": (), "rate": None}


def test_one_request_in_rate_is_traced_until_the_count_runs_out(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    assert not tracer.on
    answer(tracer)  # tracing off: not even counted
    settings = tracer.update(
        "", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["3"], "trace_count": ["2"]}, "t"
    )
    assert tracer.on and settings["trace_count"] == ["2"]
    for n in range(9):
        answer(tracer, request_id=str(n))
    # The 3rd and 6th were traced; the count ran out, so they were written to FILE.0, and tracing
    # stopped.
    assert tracer.settings()["trace_count"] == ["0"] and not tracer.on
    # Sending the count again takes that many more.
    tracer.update("", {"trace_count": ["2"]}, "t")
    assert tracer.on
    tracer.close(WAIT_S)
    assert not file.exists()
    entries = written(tmp_path / "trace.json.0")
    assert [e.get("request_id") for e in entries if "model_name" in e] == ["2", "5"]
    assert entries[1] == {
        "id": 1,
        "timestamps": [
            {"name": "REQUEST_START", "ns": 90},
            {"name": "QUEUE_START", "ns": 100},
            {"name": "COMPUTE_START", "ns": 110},
            {"name": "COMPUTE_INPUT_END", "ns": 115},
            {"name": "COMPUTE_OUTPUT_START", "ns": 140},
            {"name": "COMPUTE_END", "ns": 142},
            {"name": "REQUEST_END", "ns": 150},
        ],
    }


def test_a_cached_answer_has_the_request_timestamps_only(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path / "trace.json", OIP_NAME_BY_DTYPE)
    tracer.update(
        "", {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": ["1"], "log_frequency": ["1"]}, "t"
    )
    tracer.trace("m", 2, "", 5, Prediction({"y": np.zeros((1,), dtype=np.float16)}, 0, 0, 0), X, 9)
    tracer.close(WAIT_S)
    head, stamps, queued, answered = written(tmp_path / "trace.json.0")
    assert head == {"id": 1, "model_name": "m", "model_version": 2}
    assert stamps["timestamps"] == [{"name": "REQUEST_START", "ns": 5}, {"name": "REQUEST_END", "ns": 9}]
    assert queued["tensor"] == {"name": "x", "data": "1.0,0.1", "shape": "1,2", "dtype": "FP32"}
    assert answered["activity"] == "TENSOR_BACKEND_OUTPUT"
    assert answered["tensor"] == {"name": "y", "data": "0.0", "shape": "1", "dtype": "FP16"}


def test_a_models_own_settings_and_their_clearing(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    own = tracer.update("m", {"trace_level": ["TENSORS"], "trace_rate": ["1"]}, "t")
    assert own["trace_level"] == ["TENSORS"] and own["trace_rate"] == ["1"]
    assert tracer.settings()["trace_level"] == ["OFF"] and tracer.on
    answer(tracer, "other")
    answer(tracer, "m")
    # A global change reaches what the model did not set; the model's count starts again.
    tracer.update("", {"trace_rate": ["50"], "log_frequency": ["4"]}, "t")
    assert tracer.settings("m")["log_frequency"] == ["4"] and tracer.settings("m")["trace_rate"] == ["1"]
    # Its trace taken under log_frequency 0 was appended to FILE as its settings changed.
    tracer.update("m", {"trace_level": None, "trace_rate": None}, "t")
    assert tracer.settings("m") == tracer.settings() and not tracer.on
    tracer.close(WAIT_S)
    (head, tensors_in, tensors_out) = written(file)
    assert head["model_name"] == "m" and tensors_in["activity"] == "TENSOR_QUEUE_INPUT"
    assert tensors_out["tensor"]["data"] == "1,0"  # booleans as Triton writes them


def test_without_a_trace_file_tracing_cannot_start() -> None:
    tracer = Tracer(None, OIP_NAME_BY_DTYPE)
    assert tracer.settings()["trace_file"] == [""]
    tracer.update("", {"trace_rate": ["1"]}, "t")
    for model in ("", "m"):
        with pytest.raises(FailedPrecondition, match=r"serving\.trace_file"):
            tracer.update(model, {"trace_level": ["TIMESTAMPS"]}, "t")
    assert tracer.settings() == tracer.settings("m") and tracer.settings()["trace_level"] == ["OFF"]
    assert tracer.settings()["trace_rate"] == ["1"]


def test_the_trace_file_must_be_a_file_in_a_directory_that_exists(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert usable_trace_file(tmp_path / "trace.json", data_dir) == tmp_path / "trace.json"
    with pytest.raises(ValueError, match="is a directory"):
        usable_trace_file(tmp_path, data_dir)
    with pytest.raises(ValueError, match="its directory does not exist"):
        usable_trace_file(tmp_path / "absent" / "trace.json", data_dir)


def test_a_trace_file_in_the_data_directory_the_start_makes_is_taken(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    assert usable_trace_file(data_dir / "trace.json", data_dir) == data_dir / "trace.json"
    assert usable_trace_file(tmp_path / "new" / "trace.json", data_dir) == tmp_path / "new" / "trace.json"
    # The start makes the data directory, not directories below it.
    with pytest.raises(ValueError, match="its directory does not exist"):
        usable_trace_file(data_dir / "traces" / "trace.json", data_dir)
    # A trace file named as the data directory (or one above it) would be a directory.
    for directory in (data_dir, data_dir.parent):
        with pytest.raises(ValueError, match="is a directory"):
            usable_trace_file(directory, data_dir)
    assert not (tmp_path / "new").exists()


def test_defaults_are_tritons() -> None:
    assert TraceSettings() == TraceSettings(levels=(), rate=1000, count=-1, log_frequency=0)


def test_a_change_is_logged_with_who_made_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.serving.trace")
    tracer = Tracer(tmp_path / "trace.json", OIP_NAME_BY_DTYPE)
    tracer.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1000"]}, "admin-holder")
    # Sent again, nothing changes: nothing is logged.
    tracer.update("m", {"trace_rate": ["1000"]}, "admin-holder")
    (record,) = caplog.records
    assert (
        record.getMessage()
        == "trace settings changed at runtime, until tesserad stops (its settings are unchanged)"
    )
    assert record.by == "admin-holder" and record.model == "m"  # type: ignore[attr-defined]
    assert record.changes == {"trace_level": {"from": ["OFF"], "to": ["TIMESTAMPS"]}}  # type: ignore[attr-defined]
    tracer.close(WAIT_S)


def test_many_traces_are_written_complete_and_in_order(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "log_frequency": ["3"]}, "t")
    for n in range(600):
        answer(tracer, request_id=str(n))
    # Under log_frequency 0 the traces are appended to FILE at each change, and the rest at the stop.
    tracer.update("", {"log_frequency": ["0"]}, "t")
    for n in range(600, 1000):
        answer(tracer, request_id=str(n))
        if n % 100 == 0:
            tracer.update("", {"trace_rate": ["1"]}, "t")
    tracer.close(WAIT_S)
    indexed = [written(file.with_name(f"trace.json.{i}")) for i in range(200)]
    assert not file.with_name("trace.json.200").exists()
    heads = [e for entries in indexed for e in entries if "model_name" in e]
    assert [(h["id"], h["request_id"]) for h in heads] == [(n + 1, str(n)) for n in range(600)]
    appended = [e for e in written(file) if "model_name" in e]
    assert [(h["id"], h["request_id"]) for h in appended] == [(n + 1, str(n)) for n in range(600, 1000)]


def test_the_stop_writes_every_trace_taken(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    tracer.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "log_frequency": ["5"]}, "t")
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}, "t")
    for _ in range(7):
        answer(tracer, "m")
    answer(tracer, "other")
    tracer.close(WAIT_S)
    assert not tracer.on
    # m's first 5 went to FILE.0 as they were taken, its last 2 to FILE.1 at the stop; other's
    # (log_frequency 0) to FILE, its array closed.
    assert [len(written(file.with_name(f"trace.json.{i}"))) for i in (0, 1)] == [10, 4]
    assert [e["model_name"] for e in written(file) if "model_name" in e] == ["other"]
    tracer.close(WAIT_S)  # a second close finds nothing to write


def test_traces_are_dropped_and_counted_while_the_writer_is_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.serving.trace")
    file = tmp_path / "trace.json"
    # FILE.0 a FIFO: the writer's open of it waits until something reads it, as on a stuck disk.
    fifo = file.with_name("trace.json.0")
    os.mkfifo(fifo)
    tracer = Tracer(file, OIP_NAME_BY_DTYPE, queue_size=2)
    metrics = CollectorRegistry()
    TraceMetrics(tracer, metrics)
    assert metrics.get_sample_value("tessera_traces_dropped_total") == 0
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "log_frequency": ["1"]}, "t")
    for n in range(20):
        answer(tracer, request_id=str(n))  # never waits for the writer
    # The first trace holds the writer; at most the queue's 2 more wait behind it.
    dropped = tracer.dropped
    assert 17 <= dropped <= 18
    assert metrics.get_sample_value("tessera_traces_dropped_total") == dropped
    assert "traces are dropped: writing them to" in caplog.text
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()))
    reader.start()
    tracer.close(WAIT_S)
    reader.join()
    # Each run of drops is logged as it ends; the writer may take a trace between the runs.
    runs = re.findall(r"dropped (\d+) traces: the trace writer was behind", caplog.text)
    assert runs and sum(map(int, runs)) == dropped
    # What was not dropped was written in order, with no gap in the FILE.N numbers.
    first = [e["request_id"] for e in json.loads(read[0]) if "model_name" in e]
    rest = [written(file.with_name(f"trace.json.{i}")) for i in range(1, 20 - dropped)]
    assert not file.with_name(f"trace.json.{20 - dropped}").exists()
    kept = first + [e["request_id"] for entries in rest for e in entries if "model_name" in e]
    # Which traces are kept depends on when the writer took the first one; those kept are in order.
    assert (
        len(kept) == 20 - dropped
        and sorted(kept, key=int) == kept
        and set(kept) <= {str(n) for n in range(20)}
    )


def test_a_stop_gives_up_on_a_disk_that_takes_no_write_and_logs_what_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tesserad.serving.trace")
    file = tmp_path / "trace.json"
    # FILE a FIFO nobody reads: the writer's open of it never returns, as on a hung mount.
    os.mkfifo(file)
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}, "t")
    for n in range(3):
        answer(tracer, request_id=str(n))
    tracer.update("", {"trace_rate": ["1"]}, "t")  # hands the 3 to the writer, which hangs on them
    for n in range(3, 5):
        answer(tracer, request_id=str(n))
    tracer.close(0)  # grace_period_s = 0: the writer still gets CLOSE_WAIT_MIN_S
    (record,) = [r for r in caplog.records if "the trace writer did not finish" in r.getMessage()]
    assert record.unwritten_traces == 5  # type: ignore[attr-defined]
    assert f"within the stop's {CLOSE_WAIT_MIN_S:g}s (grace_period_s)" in record.getMessage()
    assert not tracer.on
    (writer,) = [t for t in threading.enumerate() if t.name == "tessera-trace-writer" and t.is_alive()]
    assert writer.daemon  # it cannot keep the process alive
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(file.read_text()))
    reader.start()
    writer.join()
    reader.join()
    # The disk back, the writer finishes what it had.
    assert [e["request_id"] for e in json.loads(read[0]) if "model_name" in e] == list("01234")


def test_a_stop_with_no_grace_period_still_writes_a_working_disk_s_last_traces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tesserad.serving.trace")
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}, "t")
    for n in range(3):
        answer(tracer, request_id=str(n))
    tracer.update("", {"trace_rate": ["1"]}, "t")  # the 3 queued for the writer
    for n in range(3, 5):
        answer(tracer, request_id=str(n))  # 2 still pending at the stop
    tracer.close(0)
    assert "the trace writer did not finish" not in caplog.text
    assert [e["request_id"] for e in written(file) if "model_name" in e] == list("01234")


def test_once_closed_the_settings_no_longer_change(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path / "trace.json", OIP_NAME_BY_DTYPE)
    tracer.close(WAIT_S)
    for model in ("", "m"):
        with pytest.raises(Unavailable) as refused:
            tracer.update(model, {"trace_level": ["TIMESTAMPS"]}, "t")
        assert refused.value.message.startswith("tesserad is shutting down: its trace writer has stopped")
    assert tracer.settings()["trace_level"] == ["OFF"] and not tracer.on


def test_a_deleted_models_own_settings_are_dropped(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    tracer.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}, "t", identity=1)
    answer(tracer, "m")
    assert tracer.kept("m") == 1 and tracer.kept("other") is None
    tracer.forget("m", 1)
    assert tracer.kept("m") is None
    assert tracer.settings("m", 2) == tracer.settings() and not tracer.on
    answer(tracer, "m")  # a new model of its name: traced with the global settings (OFF)
    tracer.forget("never-traced", 1)
    tracer.close(WAIT_S)
    # What its settings took was written as they went.
    assert [e["model_name"] for e in written(file) if "model_name" in e] == ["m"]


def test_a_model_created_again_is_not_given_the_deleted_ones_settings(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path / "trace.json", OIP_NAME_BY_DTYPE)
    tracer.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}, "t", identity=1)
    # Before serving learns of the deletion, the new model "m" (identity 2) reads the global
    # settings, and its own start from them.
    assert tracer.settings("m", 2) == tracer.settings()
    assert tracer.settings("m", 1)["trace_level"] == ["TIMESTAMPS"]
    own = tracer.update("m", {"trace_count": ["5"]}, "t", identity=2)
    assert (own["trace_level"], own["trace_rate"], own["trace_count"]) == (["OFF"], ["1000"], ["5"])
    # The old model's deletion, told late, leaves the new one's settings.
    tracer.forget("m", 1)
    assert tracer.kept("m") == 2 and tracer.settings("m", 2) == own
    tracer.close(WAIT_S)


def test_an_ensembles_members_get_child_traces(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    tracer = Tracer(file, OIP_NAME_BY_DTYPE)
    tracer.update(
        "", {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": ["1"], "log_frequency": ["1"]}, "t"
    )
    # Each member queued at 111 (inside the ensemble's batch), run from 112 to 120.
    members = tuple(
        MemberAnswer(name, 3, Prediction({"y": np.array([[2.0]], dtype=np.float32)}, 1, 6, 1, 112, 112, 120))
        for name in ("a", "b")
    )
    tracer.trace("ens", 1, "r", 90, PREDICTION._replace(members=members), X, 150)
    answer(tracer, "plain")
    tracer.close(WAIT_S)
    entries = written(file.with_name("trace.json.0"))
    heads = [e for e in entries if "model_name" in e]
    assert heads == [
        {"id": 1, "model_name": "ens", "model_version": 1, "request_id": "r"},
        {"id": 2, "model_name": "a", "model_version": 3, "request_id": "r", "parent_id": 1},
        {"id": 3, "model_name": "b", "model_version": 3, "request_id": "r", "parent_id": 1},
    ]
    (child_stamps,) = [e["timestamps"] for e in entries if e["id"] == 2 and "timestamps" in e]
    assert [(t["name"], t["ns"]) for t in child_stamps] == [
        ("REQUEST_START", 111),
        ("QUEUE_START", 111),
        ("COMPUTE_START", 112),
        ("COMPUTE_INPUT_END", 112),
        ("COMPUTE_OUTPUT_START", 118),
        ("COMPUTE_END", 120),
        ("REQUEST_END", 120),
    ]
    child_tensors = [e for e in entries if e["id"] == 2 and "activity" in e]
    assert [(e["activity"], e["tensor"]["data"]) for e in child_tensors] == [
        ("TENSOR_QUEUE_INPUT", "1.0,0.1"),
        ("TENSOR_BACKEND_OUTPUT", "2.0"),
    ]
    # The next trace's id follows its children's.
    assert [e["id"] for e in written(file.with_name("trace.json.1")) if "model_name" in e] == [4]
