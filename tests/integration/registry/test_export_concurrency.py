"""Exports run on threads of their own, at most registry.max_concurrent_exports at once: many at
once leave the rest of the daemon answering, a caller that goes away leaves the queue,
beyond registry.max_queued_exports waiting a new export is refused, and a stop waits for a
running export no longer than its grace period."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import tesserad.nn
from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.store import BlobStore
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    mlp_weights,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)
from tests.integration.serving.serving_models import delete_model_numbered_as_before

R = registry_pb2
SOURCE = R.ExportOnnxRequest(source=common_pb2.VersionRef(model="mlp", version=1))


class Gate:
    """Holds every ONNX export at its start (or, `written`, once its file is written) until
    opened; counts those that got there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, written: bool = False) -> None:
        self.opened = threading.Event()
        self.started = 0
        self._lock = threading.Lock()
        real = tesserad.nn.export_onnx

        def held(*args: Any, **kwargs: Any) -> Any:
            report = real(*args, **kwargs) if written else None
            with self._lock:
                self.started += 1
            self.opened.wait(120)
            return report or real(*args, **kwargs)

        monkeypatch.setattr(tesserad.nn, "export_onnx", held)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def one_at_a_time(data_dir: Path) -> Iterator[InProcessDaemon]:
    settings = daemon_settings(
        data_dir, **{"registry.max_concurrent_exports": 1, "registry.max_queued_exports": 64}
    )
    running = InProcessDaemon(settings).start()
    yield running
    running.stop()


@pytest.fixture
def two_at_a_time(data_dir: Path) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(daemon_settings(data_dir, **{"registry.max_concurrent_exports": 2})).start()
    yield running
    running.stop()


@pytest.fixture
def stub(one_at_a_time: InProcessDaemon) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(one_at_a_time.channel())


def test_exports_in_progress_leave_registry_calls_answering(one_at_a_time, stub, weights, monkeypatch):
    upload(stub, safetensors_header("mlp", weights), weights)
    gate = Gate(monkeypatch)
    exports = one_at_a_time.daemon.exports
    # More exports than asyncio's default executor has threads (min(32, cores + 4)), which they
    # all held before they had their own.
    count = min(32, (os.cpu_count() or 1) + 4) + 2
    calls = [stub.ExportOnnx.future(SOURCE, timeout=300) for _ in range(count)]
    try:
        wait_for(
            lambda: (exports.running, exports.waiting) == (1, count - 1),
            "one export running, the rest queued",
        )
        model = stub.GetModel(R.GetModelRequest(name="mlp"), timeout=30)
        assert model.name == "mlp" and not any(call.done() for call in calls)
        assert gate.started == 1
    finally:
        gate.opened.set()
    results = [call.result() for call in calls]
    assert {r.version.version for r in results} == {2}
    assert sorted(r.reused for r in results) == [False] + [True] * (count - 1)


def test_a_caller_that_goes_away_leaves_the_export_queue_unstarted(one_at_a_time, stub, weights, monkeypatch):
    upload(stub, safetensors_header("mlp", weights), weights)
    gate = Gate(monkeypatch)
    exports = one_at_a_time.daemon.exports
    try:
        first = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: gate.started == 1, "the first export to start")
        cancelled = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: exports.waiting == 1, "the second export to queue")
        cancelled.cancel()
        wait_for(lambda: exports.waiting == 0, "the cancelled export to leave the queue")
        expired = rpc_error(stub.ExportOnnx, SOURCE, timeout=2)
        assert expired.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: exports.waiting == 0, "the expired export to leave the queue")
    finally:
        gate.opened.set()
    assert first.result().version.version == 2
    # The export's thread counts itself out just after the answer has gone.
    wait_for(lambda: exports.running == 0, "the export to end")
    assert gate.started == 1
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [2, 1]


@pytest.mark.parametrize("goes", ["cancels", "times out"])
def test_a_caller_that_goes_away_once_its_export_started_gets_no_version_and_no_alias_move(
    one_at_a_time, stub, weights, data_dir, monkeypatch, goes
):
    # The export ran to its end and registered its version, moving the alias, although its caller
    # had been told the call failed: `export onnx --alias production` interrupted moved production.
    upload(stub, safetensors_header("mlp", weights, alias="production"), weights)
    before = stored_blobs(data_dir)
    gate = Gate(monkeypatch)
    exports = one_at_a_time.daemon.exports
    request = R.ExportOnnxRequest(source=SOURCE.source, alias="production")
    try:
        call = stub.ExportOnnx.future(request, timeout=300 if goes == "cancels" else 5)
        wait_for(lambda: gate.started == 1, "the export to start")
        if goes == "cancels":
            call.cancel()
        else:
            assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: exports.withdrawn == 1, "the daemon to see its caller gone")
    finally:
        gate.opened.set()
    wait_for(lambda: exports.running == 0, "the export to end")
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [1]
    assert stub.GetAlias(R.GetAliasRequest(model="mlp", alias="production")).version == 1
    assert stored_blobs(data_dir) == before
    again = stub.ExportOnnx(request, timeout=300)
    assert again.version.version == 2 and not again.reused and again.alias_moved.from_version == 1


# A fresh interpreter: the test's own has imported onnx already, and an import is seen only once.
FIRST_EXPORT_OF_A_FRESH_DAEMON = """
import json, sys, threading
from pathlib import Path

importers = []
sys.addaudithook(
    lambda event, args: importers.append(threading.current_thread().name)
    if event == "import" and args[0] == "onnx"
    else None
)

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.conftest import _LOOP_THREAD, InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import safetensors_header, upload

weights = Path(sys.argv[2]).read_bytes()
daemon = InProcessDaemon(daemon_settings(Path(sys.argv[1]))).start()
try:
    stub = registry_pb2_grpc.RegistryStub(daemon.channel())
    upload(stub, safetensors_header("mlp", weights), weights)
    source = common_pb2.VersionRef(model="mlp", version=1)
    stub.ExportOnnx(registry_pb2.ExportOnnxRequest(source=source), timeout=300)
finally:
    daemon.stop()
print(json.dumps({"importers": importers, "loop": _LOOP_THREAD}))
"""


def test_the_first_export_of_a_fresh_daemon_imports_onnx_off_the_event_loop(tmp_path, weights):
    # Its opset check imported onnx on the event loop: every other call waited a fraction of a second.
    weights_file = tmp_path / "weights.safetensors"
    weights_file.write_bytes(weights)
    result = subprocess.run(
        [sys.executable, "-c", FIRST_EXPORT_OF_A_FRESH_DAEMON, str(tmp_path / "data"), str(weights_file)],
        cwd=Path(__file__).parents[3],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert len(seen["importers"]) == 1 and seen["importers"] != [seen["loop"]], seen


def test_a_conv4d_no_export_writes_is_refused_before_it_queues(one_at_a_time, stub, weights, monkeypatch):
    # It waited its turn behind the running export (minutes, for a large model) to be refused then.
    upload(stub, safetensors_header("mlp", weights), weights)
    gate = Gate(monkeypatch)
    exports = one_at_a_time.daemon.exports
    try:
        running = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: gate.started == 1, "the first export to start")
        refused = rpc_error(
            stub.ExportOnnx, R.ExportOnnxRequest(source=SOURCE.source, conv4d="decompose"), timeout=30
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == "conv4d: must be auto, decomposed or native, got 'decompose'"
        assert exports.waiting == 0
    finally:
        gate.opened.set()
    assert running.result().version.version == 2


def test_two_exports_at_once_both_succeed(two_at_a_time, weights, monkeypatch):
    stub = registry_pb2_grpc.RegistryStub(two_at_a_time.channel())
    upload(stub, safetensors_header("mlp", weights), weights)
    default = stub.ExportOnnx(SOURCE, timeout=300)
    gate = Gate(monkeypatch)
    older = R.ExportOnnxRequest(source=SOURCE.source, opset=default.opset - 1)
    calls = [stub.ExportOnnx.future(request, timeout=300) for request in (older, SOURCE)]
    try:
        wait_for(lambda: gate.started == 2, "both exports to start")
    finally:
        gate.opened.set()
    results = [call.result() for call in calls]
    assert [(r.version.version, r.reused) for r in results] == [(3, False), (2, True)]
    assert [r.opset for r in results] == [default.opset - 1, default.opset]


def test_identical_exports_at_once_add_one_version(two_at_a_time, weights, monkeypatch):
    stub = registry_pb2_grpc.RegistryStub(two_at_a_time.channel())
    upload(stub, safetensors_header("mlp", weights), weights)
    gate = Gate(monkeypatch, written=True)
    calls = [stub.ExportOnnx.future(SOURCE, timeout=300) for _ in range(2)]
    try:
        wait_for(lambda: gate.started == 2, "both exports to write their file")
    finally:
        gate.opened.set()
    results = [call.result() for call in calls]
    assert [r.version.version for r in results] == [2, 2]
    assert sorted(r.reused for r in results) == [False, True]
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [2, 1]


def test_an_export_beyond_the_queue_limit_is_refused(data_dir, weights, monkeypatch):
    settings = daemon_settings(
        data_dir, **{"registry.max_concurrent_exports": 1, "registry.max_queued_exports": 2}
    )
    running = InProcessDaemon(settings).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(running.channel())
        upload(stub, safetensors_header("mlp", weights), weights)
        gate = Gate(monkeypatch)
        exports = running.daemon.exports
        try:
            calls = [stub.ExportOnnx.future(SOURCE, timeout=300)]
            wait_for(lambda: gate.started == 1, "the first export to start")
            calls += [stub.ExportOnnx.future(SOURCE, timeout=300) for _ in range(2)]
            wait_for(lambda: exports.waiting == 2, "two exports to queue")
            refused = rpc_error(stub.ExportOnnx, SOURCE, timeout=30)
        finally:
            gate.opened.set()
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.details()
        assert "2 ONNX exports are waiting for the 1 export thread(s)" in details
        assert "registry.max_queued_exports" in details and "retry" in details
        assert [call.result().version.version for call in calls] == [2, 2, 2]
        # The refused export took no place: the queue takes exports again once it drains.
        assert stub.ExportOnnx(SOURCE, timeout=300).reused
    finally:
        running.stop()


def test_a_stop_abandons_an_export_still_running_after_the_grace_period(
    data_dir, weights, monkeypatch, caplog
):
    running = InProcessDaemon(daemon_settings(data_dir)).start()
    stub = registry_pb2_grpc.RegistryStub(running.channel())
    upload(stub, safetensors_header("mlp", weights), weights)
    gate = Gate(monkeypatch)
    exports = running.daemon.exports
    try:
        call = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: gate.started == 1, "the export to start")
        queued = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: exports.waiting == 1, "a second export to queue")
        with caplog.at_level(logging.WARNING, logger="tesserad.registry.export"):
            # Returns while the export is still held at its start, on its thread.
            running.stop(grace=0.5, outliving=("registry-export",))
    finally:
        gate.opened.set()
    assert call.exception() is not None and queued.exception() is not None
    assert exports.waiting == 0 and gate.started == 1  # the queued one never started
    assert "ONNX export of mlp v1 finished" in caplog.text and "export it again" in caplog.text
    wait_for(lambda: exports.running == 0, "the abandoned export to end")
    assert not [name for name in stored_blobs(data_dir) if name.startswith("tmp/")]

    restarted = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(restarted.channel())
        assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [1]
    finally:
        restarted.stop()


def test_a_daemon_on_a_relative_data_dir_exports(tmp_path, weights, monkeypatch):
    # `make run` starts the daemon with --data-dir ./var: the exporter's temp file was named
    # absolutely and the blob store took it for a file outside its tmp directory (INTERNAL).
    monkeypatch.chdir(tmp_path)
    running = InProcessDaemon(daemon_settings(Path("var"))).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(running.channel())
        upload(stub, safetensors_header("mlp", weights), weights)
        assert stub.ExportOnnx(SOURCE, timeout=300).version.version == 2
    finally:
        running.stop()


@pytest.mark.parametrize("deleted", ["version", "model", "model pushed again"])
def test_exports_whose_source_is_deleted_meanwhile_register_nothing_and_leave_no_blob(
    one_at_a_time, stub, weights, data_dir, monkeypatch, deleted
):
    # The running export stored its ONNX file, then failed looking for the source's earlier
    # exports and left the file on disk, held by nothing, until the next start; the queued one
    # found the source's weights gone and answered DATA_LOSS, as for a damaged blob. A model
    # deleted as a tesserad from before numbers went on across a delete did it, and pushed again,
    # has a v1 of its own: the exports registered the deleted v1's weights as v2 of it, derived
    # from the new v1.
    upload(stub, safetensors_header("mlp", weights), weights)
    gate = Gate(monkeypatch)
    exports = one_at_a_time.daemon.exports
    try:
        running = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: gate.started == 1, "the first export to start")
        queued = stub.ExportOnnx.future(SOURCE, timeout=300)
        wait_for(lambda: exports.waiting == 1, "a second export to queue")
        if deleted == "version":
            stub.DeleteVersion(R.DeleteVersionRequest(model="mlp", version=1))
        elif deleted == "model":
            stub.DeleteModel(R.DeleteModelRequest(name="mlp", force=True))
        else:
            delete_model_numbered_as_before(one_at_a_time, "mlp", force=True)
            other = mlp_weights(seed=1)
            upload(stub, safetensors_header("mlp", other), other)
        kept = [name for name in stored_blobs(data_dir) if not name.startswith("tmp/")]
    finally:
        gate.opened.set()
    for call in (running, queued):
        error = call.exception()
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.NOT_FOUND, error
        assert error.details() == (
            "mlp v1 was deleted during its ONNX export, so nothing was registered; export a version that exists"
        )
    assert stored_blobs(data_dir) == kept
    if deleted == "version":
        assert stub.GetModel(R.GetModelRequest(name="mlp")).version_count == 0
    if deleted == "model pushed again":
        assert len(kept) == 1
        assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [1]


@pytest.mark.parametrize("export", ["new", "reused"])
def test_a_caller_that_goes_away_while_the_export_is_stored_gets_no_version_and_no_alias_move(
    one_at_a_time, stub, weights, data_dir, monkeypatch, export
):
    # The caller's withdrawal was looked at once, before the ONNX file was hashed into the
    # store: a cancel that came during that hashing still registered the version and moved the
    # alias, or moved the alias to the earlier export holding the same bytes.
    upload(stub, safetensors_header("mlp", weights, alias="production"), weights)
    versions = [1]
    if export == "reused":
        versions = [stub.ExportOnnx(SOURCE, timeout=300).version.version, 1]
    before = stored_blobs(data_dir)
    storing, stored = threading.Event(), threading.Event()
    put_moved = BlobStore.put_moved

    def held(self: BlobStore, source: Path) -> Any:
        storing.set()
        stored.wait(120)
        return put_moved(self, source)

    monkeypatch.setattr(BlobStore, "put_moved", held)
    exports = one_at_a_time.daemon.exports
    try:
        call = stub.ExportOnnx.future(
            R.ExportOnnxRequest(source=SOURCE.source, alias="production"), timeout=300
        )
        assert storing.wait(120), "the export never stored its file"
        call.cancel()
        wait_for(lambda: exports.withdrawn == 1, "the daemon to see its caller gone")
    finally:
        stored.set()
    wait_for(lambda: exports.running == 0, "the export to end")
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == versions
    assert stub.GetAlias(R.GetAliasRequest(model="mlp", alias="production")).version == 1
    assert stored_blobs(data_dir) == before
