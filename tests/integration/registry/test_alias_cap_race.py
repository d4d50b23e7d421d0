"""A registration with an alias races the model's 1,000-alias cap: the alias is checked before the
work (the artifact's checks, an export) and again as the version is committed. An upload or an
export whose model another client filled meanwhile fails as it would have at its start,
RESOURCE_EXHAUSTED, with nothing of it left: no version, no blob, no version number used. Its
client asked for the alias in the same call, as with a version registered with an alias in
MLflow, and may make room and send again. (A training job's registration keeps the trained
version without the alias instead: tests/integration/training/test_register_alias_cap.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

import tesserad.registry.versions
from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.conftest import InProcessDaemon
from tests.integration.registry.conftest import (
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)

R = registry_pb2
CAP = 1000


def fill_while_checking(monkeypatch: pytest.MonkeyPatch, check: str, fill: Callable[[], object]) -> None:
    """Run `fill` (another client's call) once, the first time the daemon has run the artifact
    check `check` of a registration: after the checks at its start, before its commit."""
    real = getattr(tesserad.registry.versions, check)
    pending = [fill]

    def checked(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if pending:
            pending.pop()()
        return result

    monkeypatch.setattr(tesserad.registry.versions, check, checked)


def one_alias_short(daemon: InProcessDaemon, model: str) -> Callable[[], object]:
    """Give version 1 of `model` CAP - 1 aliases; the call by which a second client sets the last."""
    registry = daemon.daemon.registry
    assert registry is not None
    for i in range(CAP - 1):
        registry.set_alias(model, f"held-{i:04}", 1)
    second = registry_pb2_grpc.RegistryStub(daemon.channel())
    return lambda: second.SetAlias(
        R.SetAliasRequest(model=model, alias="the-last-one", version=1), timeout=30
    )


def cap_message(model: str, alias: str) -> str:
    return (
        f"model {model!r} has 1,000 aliases; a model holds at most 1,000, so that one answer can carry "
        f"them all. Delete aliases it no longer uses (DeleteAlias), or move one of them instead of "
        f"adding {alias!r}"
    )


def versions_of(stub: registry_pb2_grpc.RegistryStub, model: str) -> list[int]:
    return [v.version for v in stub.ListVersions(R.ListVersionsRequest(model=model)).versions]


@pytest.mark.parametrize("inline", [False, True], ids=["streamed", "inline"])
def test_an_upload_whose_model_reached_the_cap_meanwhile_leaves_nothing(
    daemon, stub, data_dir, monkeypatch, inline: bool
):
    first = onnx_identity()
    upload(stub, onnx_header("capped", first), first)
    fill = one_alias_short(daemon, "capped")
    blobs = stored_blobs(data_dir)
    fill_while_checking(monkeypatch, "check_onnx", fill)
    data = onnx_identity(width=5)
    header = onnx_header("capped", data, alias="fresh")
    if inline:
        request = R.UploadVersionInlineRequest(header=header, artifact=data)
        error = rpc_error(stub.UploadVersionInline, request, timeout=60)
    else:
        error = rpc_error(upload, stub, header, data)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == cap_message("capped", "fresh")
    assert stub.GetAlias(R.GetAliasRequest(model="capped", alias="the-last-one")).version == 1
    assert stored_blobs(data_dir) == blobs
    assert versions_of(stub, "capped") == [1]
    # Sent again without the alias, it takes the number the refused one would have had.
    assert upload(stub, onnx_header("capped", data), data).version == 2


def test_an_export_whose_model_reached_the_cap_meanwhile_leaves_nothing(
    daemon, stub, weights, data_dir, monkeypatch
):
    upload(stub, safetensors_header("mlp", weights), weights)
    fill = one_alias_short(daemon, "mlp")
    blobs = stored_blobs(data_dir)
    fill_while_checking(monkeypatch, "check_onnx", fill)
    source = common_pb2.VersionRef(model="mlp", version=1)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source, alias="onnx"), timeout=120)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == cap_message("mlp", "onnx")
    assert stored_blobs(data_dir) == blobs
    assert versions_of(stub, "mlp") == [1]
    assert stub.ExportOnnx(R.ExportOnnxRequest(source=source), timeout=120).version.version == 2
