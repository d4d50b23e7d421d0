"""ExportOnnx as a user pinning an opset or exporting again would call it."""

from __future__ import annotations

from typing import Any

import grpc
import onnx

from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from tesserad.registry import export as export_module
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import (
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
    upload_requests,
)
from tests.integration.security.conftest import bearer

R = registry_pb2


def source(version: int = 1) -> common_pb2.VersionRef:
    return common_pb2.VersionRef(model="mlp", version=version)


def test_an_opset_past_the_newest_onnx_knows_is_an_invalid_argument(stub, weights, data_dir):
    upload(stub, safetensors_header("mlp", weights), weights)
    before = stored_blobs(data_dir)
    newest = onnx.defs.onnx_opset_version()
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source(), opset=newest + 1), timeout=120)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"opset {newest + 1}" in error.details() and str(newest) in error.details()
    assert stored_blobs(data_dir) == before
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [1]
    newest_ok = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), opset=newest), timeout=120)
    assert newest_ok.opset == newest


def test_exporting_the_same_version_again_returns_the_first_export(stub, weights, data_dir):
    upload(stub, safetensors_header("mlp", weights), weights)
    first = stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120)
    assert first.version.version == 2 and not first.reused
    blobs = stored_blobs(data_dir)
    again = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), alias="serving"), timeout=120)
    assert again.reused and again.version.version == 2 and again.version.sha256 == first.version.sha256
    assert (again.opset, again.conv4d) == (first.opset, first.conv4d)
    moved = again.alias_moved
    assert (moved.alias, moved.from_version, moved.to_version) == ("serving", 0, 2)
    assert "serving" in again.version.aliases
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [2, 1]
    assert stored_blobs(data_dir) == blobs
    # Other settings write other bytes: a new version.
    native = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), opset=first.opset - 1), timeout=120)
    assert native.version.version == 3 and not native.reused


def test_an_export_found_made_already_moves_an_alias_onto_it_only_for_a_caller_that_may_set_it(
    tmp_path, weights, monkeypatch
):
    """A new export takes its alias for a trainer, as an upload does; moving one onto the export
    an earlier call made is SetAlias's, which needs the admin role."""
    clear = {role: new_token() for role in Role}
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("".join(format_entry(f"{r.label}-holder", r, hash_token(t)) for r, t in clear.items()))
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir, **{"security.tokens_file": str(tokens)})).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        trainer, admin = bearer(clear[Role.TRAINER]), bearer(clear[Role.ADMIN])
        header = safetensors_header("mlp", weights)
        stub.UploadVersion(upload_requests(header, weights), metadata=trainer, timeout=60)
        first = stub.ExportOnnx(
            R.ExportOnnxRequest(source=source(), alias="edge"), metadata=trainer, timeout=120
        )
        assert not first.reused and "edge" in first.version.aliases
        # Already the export's alias: nothing moves, nothing is refused.
        assert stub.ExportOnnx(R.ExportOnnxRequest(source=source(), alias="edge"), metadata=trainer).reused
        blobs = stored_blobs(data_dir)
        error = rpc_error(
            stub.ExportOnnx,
            R.ExportOnnxRequest(source=source(), alias="serving"),
            metadata=trainer,
            timeout=120,
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == (
            "mlp v2 is this export of v1 already: moving alias 'serving' onto that existing version is "
            "SetAlias's, and SetAlias needs the admin role (the caller 'trainer-holder' has the trainer "
            "role); export it without the alias, or have an admin set it"
        )
        stored = stub.GetVersion(R.GetVersionRequest(ref={"model": "mlp", "version": 2}), metadata=admin)
        assert sorted(stored.aliases) == ["edge", "latest"]
        assert stored_blobs(data_dir) == blobs
        again = stub.ExportOnnx(
            R.ExportOnnxRequest(source=source(), alias="serving"), metadata=admin, timeout=120
        )
        assert again.reused and sorted(again.version.aliases) == ["edge", "latest", "serving"]
        # An admin moves (or deletes) the alias just after a trainer's export found v2 holding it:
        # the export leaves the alias where the admin put it, never moving it back.
        admin_calls = iter(
            [
                lambda: stub.SetAlias(
                    R.SetAliasRequest(model="mlp", alias="edge", version=1), metadata=admin
                ),
                lambda: stub.DeleteAlias(R.DeleteAliasRequest(model="mlp", alias="serving"), metadata=admin),
            ]
        )
        found = export_module._earlier_export

        def found_then_admin_calls(*args: Any) -> Any:
            record = found(*args)
            next(admin_calls)()
            return record

        monkeypatch.setattr(export_module, "_earlier_export", found_then_admin_calls)
        for alias in ("edge", "serving"):
            raced = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), alias=alias), metadata=trainer)
            assert raced.reused and not raced.HasField("alias_moved")
        assert stub.GetAlias(R.GetAliasRequest(model="mlp", alias="edge"), metadata=admin).version == 1
        gone = rpc_error(stub.GetAlias, R.GetAliasRequest(model="mlp", alias="serving"), metadata=admin)
        assert gone.code() == grpc.StatusCode.NOT_FOUND
    finally:
        daemon.stop()


def nan_weights() -> bytes:
    """Weights of the MLP `safetensors_header` names whose first tensor (by name) holds a NaN."""
    from safetensors.torch import save

    from tesserad.nn import build_model, spec_from_dict

    spec = {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [8]}
    state = {k: v.contiguous() for k, v in build_model(spec_from_dict(spec)).state_dict().items()}
    state[sorted(state)[0]].view(-1)[0] = float("nan")  # as a diverged training leaves them
    return save(state)


def test_weights_holding_nan_are_a_failed_precondition_naming_the_tensor(stub, data_dir):
    from tesserad.nn import build_model, spec_from_dict

    spec = {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [8]}
    poisoned = sorted(build_model(spec_from_dict(spec)).state_dict())[0]
    data = nan_weights()
    upload(stub, safetensors_header("mlp", data), data)
    before = stored_blobs(data_dir)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source()), timeout=120)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "NaN" in error.details() and repr(poisoned) in error.details()
    assert stored_blobs(data_dir) == before
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [1]


def test_an_opset_past_the_newest_is_refused_at_submit_before_the_weights_are_read(stub):
    newest = onnx.defs.onnx_opset_version()
    # Weights the export would refuse once it runs: an opset refused at submit is told first.
    data = nan_weights()
    upload(stub, safetensors_header("mlp", data), data)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source(), opset=newest + 1), timeout=120)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"opset {newest + 1} is past the newest this daemon's onnx knows ({newest}); ask for 13 to "
        f"{newest}, or 0 for the exporter's default",
    )


def test_an_opset_below_the_oldest_the_exporter_writes_is_refused_at_submit(stub):
    newest = onnx.defs.onnx_opset_version()
    data = nan_weights()  # refused once the export runs: the opset is told first
    upload(stub, safetensors_header("mlp", data), data)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source(), opset=7), timeout=120)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"opset 7 is below the oldest this daemon's ONNX exporter writes (13); ask for 13 to {newest}, "
        "or 0 for the exporter's default",
    )


def test_an_opset_the_model_cannot_be_converted_to_is_a_failed_precondition_not_another_opset(
    stub, weights, data_dir
):
    # The MLP's Relu has no converter adapter below opset 14: the exporter would write 18 instead.
    upload(stub, safetensors_header("mlp", weights), weights)
    before = stored_blobs(data_dir)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source(), opset=13), timeout=120)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot write this model at opset 13" in error.details() and "opset 18" in error.details()
    assert stored_blobs(data_dir) == before
    assert [v.version for v in stub.ListVersions(R.ListVersionsRequest(model="mlp")).versions] == [1]
    assert stub.ExportOnnx(R.ExportOnnxRequest(source=source(), opset=14), timeout=120).opset == 14


def test_exporting_latest_after_an_export_names_the_version_to_export(stub, weights):
    upload(stub, safetensors_header("mlp", weights), weights)
    stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=common_pb2.VersionRef(model="mlp")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "mlp v2 is already onnx, derived from v1" in error.details() and "version 1" in error.details()


def test_a_regression_model_with_large_outputs_exports(stub):
    # Outputs near 3000 (prices, temperatures in K): float32 rounding alone differs by 1e-4 there.
    import torch
    from safetensors.torch import save

    from tesserad.nn import build_model, spec_from_dict

    spec = {
        "family": "mlp",
        "input_shape": [64],
        "output_size": 1,
        "hidden_sizes": [256, 256],
        "norm": "layer",
        "activation": "gelu",
    }
    torch.manual_seed(0)
    model = build_model(spec_from_dict(spec))
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(1e3)
        head.bias.fill_(3e3)
    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    arch = architecture_pb2.Architecture(
        input_shape=[64],
        output_size=1,
        mlp=architecture_pb2.MlpSpec(hidden_sizes=[256, 256], norm="layer", activation="gelu"),
    )
    upload(stub, safetensors_header("mlp", data, architecture=arch, signature=None), data)
    exported = stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120)
    assert exported.version.version == 2 and 0 < exported.max_abs_error < 1e-2


def test_an_opset_the_exporter_writes_an_invalid_graph_for_is_a_failed_precondition(stub, data_dir):
    # torch's exporter writes the transformer's attention as an op onnx's checker refuses at 26.
    import torch
    from safetensors.torch import save

    from tesserad.api.convert_registry import architecture_to_dict
    from tesserad.nn import build_model, spec_from_dict

    arch = architecture_pb2.Architecture(
        input_shape=[6, 4],
        output_size=3,
        transformer=architecture_pb2.TransformerSpec(d_model=16, num_heads=2, pooling="cls"),
    )
    torch.manual_seed(0)
    model = build_model(spec_from_dict(architecture_to_dict(arch)))
    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    upload(stub, safetensors_header("mlp", data, architecture=arch, signature=None), data)
    before = stored_blobs(data_dir)
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=source(), opset=26), timeout=120)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "opset 26" in error.details() and "opset 0" in error.details()
    assert stored_blobs(data_dir) == before
    assert stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120).version.version == 2


def test_exporting_an_export_whose_source_is_deleted_does_not_name_the_deleted_source(stub, weights):
    upload(stub, safetensors_header("mlp", weights), weights)
    stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120)
    stub.DeleteVersion(R.DeleteVersionRequest(model="mlp", version=1))
    error = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=common_pb2.VersionRef(model="mlp")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "mlp v2 is already onnx, derived from v1, which is deleted; export a safetensors version"
    )


def test_exporting_again_with_another_description_keeps_the_first(stub, weights):
    upload(stub, safetensors_header("mlp", weights), weights)
    first = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), description="for the edge box"), timeout=120)
    again = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), description="for the cloud"), timeout=120)
    assert again.reused and again.version.version == first.version.version
    assert again.version.description == "for the edge box"
    stored = stub.GetVersion(R.GetVersionRequest(ref=source(first.version.version)), timeout=30)
    assert stored.description == "for the edge box"


def test_an_export_that_found_its_bytes_registered_leaves_them_to_go_with_that_version(
    stub, weights, data_dir
):
    # The second export's put of the same bytes claims them as any put does; a claim left
    # behind kept the blob on disk after its version was deleted, until the next start.
    upload(stub, safetensors_header("mlp", weights), weights)
    before = stored_blobs(data_dir)
    first = stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120)
    again = stub.ExportOnnx(R.ExportOnnxRequest(source=source(), alias="serving"), timeout=120)
    assert again.reused and again.version.version == first.version.version == 2
    stub.DeleteAlias(R.DeleteAliasRequest(model="mlp", alias="serving"))
    stub.DeleteVersion(R.DeleteVersionRequest(model="mlp", version=2))
    assert stored_blobs(data_dir) == before


def test_a_version_whose_training_data_was_force_deleted_still_exports(stub, weights, channel):
    # The export carries its source's lineage, whose dataset versions were checked when the
    # source was registered; checked again, the deleted one refused the export for good ("upload
    # it with UploadDataset", which could never bring that version back).
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    trained_on = upload_dataset(ds, "clips", npz_bytes(10))
    lineage = R.Lineage(datasets=[R.DatasetLineage(name="clips", version=1)])
    upload(stub, safetensors_header("mlp", weights, lineage=lineage), weights)
    ds.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name="clips", force=True))

    exported = stub.ExportOnnx(R.ExportOnnxRequest(source=source()), timeout=120).version
    assert exported.version == 2 and exported.lineage.parent_version == 1
    assert [(d.name, d.version, d.sha256, d.deleted) for d in exported.lineage.datasets] == [
        ("clips", 1, trained_on.sha256, True)
    ]
