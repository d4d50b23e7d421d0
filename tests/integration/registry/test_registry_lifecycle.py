"""Models, aliases, lineage, comparison, deployments and ExportOnnx over gRPC."""

from __future__ import annotations

import grpc

from tessera.v1 import common_pb2, datasets_pb2_grpc, registry_pb2
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import (
    mlp_weights,
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)

R = registry_pb2


def ref(model: str, version: int = 0, alias: str = "") -> common_pb2.VersionRef:
    if version:
        return common_pb2.VersionRef(model=model, version=version)
    return common_pb2.VersionRef(model=model, alias=alias) if alias else common_pb2.VersionRef(model=model)


def two_versions(stub, weights) -> None:
    upload(
        stub,
        safetensors_header("mlp", weights, params={"lr": "0.1", "opt": "sgd"}, metrics={"acc": 0.8}),
        weights,
    )
    other = mlp_weights(seed=1)
    upload(
        stub,
        safetensors_header("mlp", other, params={"lr": "0.2", "opt": "sgd"}, metrics={"acc": 0.9, "f1": 0.5}),
        other,
    )


def test_models_crud_filters_and_pages(stub):
    for name, team in [("a-1", "x"), ("a-2", "y"), ("a-3", "x"), ("b-1", "x")]:
        stub.CreateModel(R.CreateModelRequest(name=name, description="d", tags={"team": team}))
    error = rpc_error(stub.CreateModel, R.CreateModelRequest(name="a-1"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "'a-1' already exists" in error.details()
    first = stub.ListModels(R.ListModelsRequest(name_prefix="a-", page_size=2))
    assert [m.name for m in first.models] == ["a-1", "a-2"] and first.next_page_token
    rest = stub.ListModels(
        R.ListModelsRequest(name_prefix="a-", page_size=2, page_token=first.next_page_token)
    )
    assert [m.name for m in rest.models] == ["a-3"] and not rest.next_page_token
    tagged = stub.ListModels(R.ListModelsRequest(tags={"team": "x"}))
    assert [m.name for m in tagged.models] == ["a-1", "a-3", "b-1"]
    any_team = stub.ListModels(R.ListModelsRequest(tags={"team": ""}))
    assert len(any_team.models) == 4
    no_key = rpc_error(stub.ListModels, R.ListModelsRequest(tags={"": "x"}))
    assert (no_key.code(), no_key.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tags: key '' must be 1 to 250 characters without NUL or newlines",
    )
    bad = rpc_error(stub.ListModels, R.ListModelsRequest(name_prefix="b", page_token=first.next_page_token))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "different query" in bad.details()
    updated = stub.UpdateModel(
        R.UpdateModelRequest(name="a-1", description="new", set_tags={"k": "v"}, remove_tags=["team"])
    )
    assert updated.description == "new" and dict(updated.tags) == {"k": "v"}
    # A tag both set and removed was removed: which the caller meant is unclear.
    both = rpc_error(
        stub.UpdateModel,
        R.UpdateModelRequest(name="a-1", description="newer", set_tags={"k": "w"}, remove_tags=["k"]),
    )
    assert (both.code(), both.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tag 'k' is both in set_tags and remove_tags; give it once",
    )
    unchanged = stub.GetModel(R.GetModelRequest(name="a-1"))
    assert unchanged.description == "new" and dict(unchanged.tags) == {"k": "v"}
    assert stub.DeleteModel(R.DeleteModelRequest(name="a-1")).deleted_versions == 0
    assert rpc_error(stub.GetModel, R.GetModelRequest(name="a-1")).code() == grpc.StatusCode.NOT_FOUND


def test_versions_list_newest_first_and_delete_guards(stub, weights, data_dir):
    two_versions(stub, weights)
    page = stub.ListVersions(R.ListVersionsRequest(model="mlp", page_size=1))
    assert [v.version for v in page.versions] == [2]
    page = stub.ListVersions(R.ListVersionsRequest(model="mlp", page_size=1, page_token=page.next_page_token))
    assert [v.version for v in page.versions] == [1] and not page.next_page_token
    stub.SetAlias(R.SetAliasRequest(model="mlp", alias="production", version=1))
    error = rpc_error(stub.DeleteVersion, R.DeleteVersionRequest(model="mlp", version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "version 1 of model 'mlp' is in use by alias 'production'; first move the aliases to another "
        "version (SetAlias) or drop them (DeleteAlias)"
    )
    error = rpc_error(stub.DeleteModel, R.DeleteModelRequest(name="mlp"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "model 'mlp' is in use by alias 'production'; delete it first (DeleteAlias) or pass force to "
        "delete it with the model"
    )
    stub.DeleteVersion(R.DeleteVersionRequest(model="mlp", version=2))
    assert stub.GetModel(R.GetModelRequest(name="mlp")).latest_version == 1
    assert stub.DeleteModel(R.DeleteModelRequest(name="mlp", force=True)).deleted_versions == 1
    assert stored_blobs(data_dir) == []
    # Numbers are never reused, even by the model created again under the name: it numbers on.
    upload(stub, safetensors_header("mlp", weights), weights)
    assert stub.GetVersion(R.GetVersionRequest(ref=ref("mlp"))).version == 3


def test_aliases_move_with_audit_history(stub, weights):
    two_versions(stub, weights)
    stub.SetAlias(R.SetAliasRequest(model="mlp", alias="production", version=1))
    stub.SetAlias(R.SetAliasRequest(model="mlp", alias="staging", version=2))
    moved = stub.SetAlias(R.SetAliasRequest(model="mlp", alias="production", version=2, expected_version=1))
    assert moved.version == 2 and moved.updated_by == "anonymous"
    stale = rpc_error(
        stub.SetAlias, R.SetAliasRequest(model="mlp", alias="production", version=1, expected_version=1)
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION and "points at version 2" in stale.details()
    reserved = rpc_error(stub.SetAlias, R.SetAliasRequest(model="mlp", alias="latest", version=1))
    assert reserved.code() == grpc.StatusCode.INVALID_ARGUMENT and "reserved" in reserved.details()
    missing = rpc_error(stub.SetAlias, R.SetAliasRequest(model="mlp", alias="x", version=7))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "has no version 7" in missing.details()
    assert stub.GetAlias(R.GetAliasRequest(model="mlp", alias="latest")).version == 2
    assert stub.GetVersion(R.GetVersionRequest(ref=ref("mlp", alias="staging"))).version == 2
    aliases = {a.alias: a.version for a in stub.ListAliases(R.ListAliasesRequest(model="mlp")).aliases}
    assert aliases == {"production": 2, "staging": 2, "latest": 2}
    stub.DeleteAlias(R.DeleteAliasRequest(model="mlp", alias="staging"))
    events = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="mlp")).events
    assert [(e.alias, e.from_version, e.to_version) for e in events] == [
        ("staging", 2, 0),
        ("production", 1, 2),
        ("staging", 0, 2),
        ("production", 0, 1),
    ]
    assert all(e.actor == "anonymous" and e.time.seconds > 0 for e in events)
    only = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="mlp", alias="production", page_size=1))
    assert [(e.from_version, e.to_version) for e in only.events] == [(1, 2)]
    rest = stub.ListAliasHistory(
        R.ListAliasHistoryRequest(
            model="mlp", alias="production", page_size=1, page_token=only.next_page_token
        )
    )
    assert [(e.from_version, e.to_version) for e in rest.events] == [(0, 1)]
    gone = rpc_error(stub.GetAlias, R.GetAliasRequest(model="mlp", alias="staging"))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


def test_lineage_derived_versions_and_compare(stub, weights, channel):
    datasets = datasets_pb2_grpc.DatasetsStub(channel)
    dataset = upload_dataset(datasets, "clips", npz_bytes())
    lineage = R.Lineage(
        run_id="run-1",
        job_id="job-1",
        experiment="e",
        datasets=[R.DatasetLineage(name="clips", version=1, sha256=dataset.sha256)],
    )
    upload(
        stub,
        safetensors_header("mlp", weights, lineage=lineage, params={"lr": "0.1"}, metrics={"acc": 0.8}),
        weights,
    )
    child = mlp_weights(seed=3)
    upload(
        stub,
        safetensors_header(
            "mlp",
            child,
            lineage=R.Lineage(parent_version=1, run_id="run-2"),
            params={"lr": "0.2", "wd": "0"},
            metrics={"acc": 0.9},
        ),
        child,
    )
    response = stub.GetLineage(R.GetLineageRequest(ref=ref("mlp", 1)))
    assert response.version.lineage.datasets[0].sha256 == dataset.sha256
    assert [(d.model, d.version) for d in response.derived] == [("mlp", 2)]
    unknown = rpc_error(
        upload, stub, safetensors_header("mlp", child, lineage=R.Lineage(parent_version=9)), child
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "lineage.parent_version" in unknown.details()
    wrong_sha = R.Lineage(datasets=[R.DatasetLineage(name="clips", version=1, sha256="a" * 64)])
    error = rpc_error(upload, stub, safetensors_header("mlp", child, lineage=wrong_sha), child)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "has sha256" in error.details()

    comparison = stub.CompareVersions(R.CompareVersionsRequest(a=ref("mlp", 1), b=ref("mlp", 2)))
    assert [(d.key, d.a, d.b, d.present_a) for d in comparison.params] == [
        ("lr", "0.1", "0.2", True),
        ("wd", "", "0", False),
    ]
    assert comparison.metrics[0].key == "acc" and abs(comparison.metrics[0].delta - 0.1) < 1e-9
    assert comparison.same_signature and comparison.size_delta == 0
    assert {d.key for d in comparison.lineage} == {
        "run_id",
        "job_id",
        "experiment",
        "parent",
        "dataset.clips",
    }
    graph = onnx_identity(width=3)
    upload(stub, onnx_header("mlp", graph), graph)
    differs = stub.CompareVersions(R.CompareVersionsRequest(a=ref("mlp", 1), b=ref("mlp")))
    assert not differs.same_signature
    assert "input 'input': shape [-1, 4] vs [-1, 3]" in differs.signature_differences

    # The dataset is held by the model version's lineage.
    from tessera.v1 import datasets_pb2

    held = rpc_error(datasets.DeleteDataset, datasets_pb2.DeleteDatasetRequest(name="clips"))
    assert (
        held.code() == grpc.StatusCode.FAILED_PRECONDITION and "model mlp v1's lineage (v1)" in held.details()
    )


def test_deployments_rollback_and_guards(stub, weights):
    two_versions(stub, weights)
    stub.SetAlias(R.SetAliasRequest(model="mlp", alias="production", version=1))
    none = rpc_error(stub.GetDeployment, R.GetDeploymentRequest(model="mlp"))
    assert none.code() == grpc.StatusCode.NOT_FOUND
    never = rpc_error(stub.Rollback, R.RollbackRequest(model="mlp"))
    assert never.code() == grpc.StatusCode.FAILED_PRECONDITION and "never deployed" in never.details()
    bad = rpc_error(
        stub.Deploy,
        R.DeployRequest(model="mlp", routes=[R.Route(version=1, weight=60), R.Route(version=2, weight=30)]),
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "sum to 100, got 90" in bad.details()
    zero = rpc_error(
        stub.Deploy,
        R.DeployRequest(model="mlp", routes=[R.Route(version=1, weight=0), R.Route(version=2, weight=100)]),
    )
    assert (
        zero.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "routes[0].weight must be 1..100" in zero.details()
    )
    missing = rpc_error(
        stub.Deploy, R.DeployRequest(model="mlp", routes=[R.Route(alias="canary", weight=100)])
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "no alias 'canary'" in missing.details()

    first = stub.Deploy(
        R.DeployRequest(model="mlp", routes=[R.Route(alias="production", weight=100)], comment="v1")
    )
    assert first.revision == 1 and first.routes[0].resolved_version == 1
    second = stub.Deploy(
        R.DeployRequest(
            model="mlp",
            routes=[R.Route(alias="production", weight=90), R.Route(version=2, weight=10)],
            shadow=R.Shadow(alias="latest"),
        )
    )
    assert second.revision == 2 and second.shadow.percent == 100 and second.shadow.resolved_version == 2
    in_use = rpc_error(stub.DeleteVersion, R.DeleteVersionRequest(model="mlp", version=2))
    assert in_use.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert in_use.details() == (
        "version 2 of model 'mlp' is in use by deployment revision 2 (shadow follows 'latest', which "
        "names version 2 until it is deleted); first deploy routes that do not serve it (Deploy), or "
        "roll back to a deployment that does not (Rollback)"
    )
    alias_in_use = rpc_error(stub.DeleteAlias, R.DeleteAliasRequest(model="mlp", alias="production"))
    assert alias_in_use.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert alias_in_use.details() == (
        "alias 'production' is used by deployment revision 2 of model 'mlp'; first deploy routes that "
        "do not name it (Deploy), or roll back to a deployment that does not (Rollback)"
    )

    rolled = stub.Rollback(R.RollbackRequest(model="mlp"))
    assert (rolled.revision, rolled.rolled_back_from) == (3, 2)
    assert [(r.alias, r.weight) for r in rolled.routes] == [("production", 100)] and not rolled.HasField(
        "shadow"
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="mlp")).revision == 3
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="mlp"))
    assert [d.revision for d in history.deployments] == [3, 2, 1]
    # Moving the alias moves the traffic.
    stub.SetAlias(R.SetAliasRequest(model="mlp", alias="production", version=2))
    assert stub.GetDeployment(R.GetDeploymentRequest(model="mlp")).routes[0].resolved_version == 2
    deployed = rpc_error(stub.DeleteModel, R.DeleteModelRequest(name="mlp"))
    assert deployed.code() == grpc.StatusCode.FAILED_PRECONDITION and "a deployment" in deployed.details()
    # Revision 3 restored revision 1, the first: rolling it back leaves no deployment.
    undeployed = stub.Rollback(R.RollbackRequest(model="mlp"))
    assert (undeployed.revision, undeployed.rolled_back_from, undeployed.undeployed) == (4, 3, True)
    assert "no deployment" in undeployed.comment
    in_use = rpc_error(stub.DeleteModel, R.DeleteModelRequest(name="mlp"))
    assert "alias 'production';" in in_use.details() and "deployment" not in in_use.details()
    assert stub.DeleteModel(R.DeleteModelRequest(name="mlp", force=True)).deleted_versions == 2


def test_export_onnx_registers_a_derived_version(stub, weights):
    upload(stub, safetensors_header("mlp", weights, params={"lr": "0.1"}), weights)
    response = stub.ExportOnnx(R.ExportOnnxRequest(source=ref("mlp", 1), alias="serving"), timeout=120)
    version = response.version
    assert (version.version, version.format) == (2, R.ARTIFACT_FORMAT_ONNX)
    assert version.lineage.parent_version == 1 and version.params == {"lr": "0.1"}
    assert sorted(version.aliases) == ["latest", "serving"]
    moved = response.alias_moved
    assert (moved.alias, moved.from_version, moved.to_version) == ("serving", 0, 2)
    assert response.max_abs_error < 1e-4 and response.opset > 0
    assert [
        (d.model, d.version) for d in stub.GetLineage(R.GetLineageRequest(ref=ref("mlp", 1))).derived
    ] == [("mlp", 2)]
    already = rpc_error(stub.ExportOnnx, R.ExportOnnxRequest(source=ref("mlp", 2)))
    assert already.code() == grpc.StatusCode.FAILED_PRECONDITION and "already onnx" in already.details()
    # Weights that do not fit the architecture are refused at upload, naming the tensor.
    wider = mlp_weights(hidden=16)
    misfit = rpc_error(upload, stub, safetensors_header("mlp", wider), wider)
    assert misfit.code() == grpc.StatusCode.INVALID_ARGUMENT and "tensor '" in misfit.details()
