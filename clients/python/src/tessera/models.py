"""The model registry: models, versions and their artifacts, aliases, lineage, export, deployments."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tessera.messages import from_dict, version_ref
from tessera.transfer import CHUNK_BYTES, DownloadSink, Progress, file_chunks, file_digest
from tessera.transport import Connection, Op, pages
from tessera.v1 import architecture_pb2, common_pb2
from tessera.v1 import registry_pb2 as pb

S = "Registry"

_FORMAT_BY_SUFFIX = {".onnx": pb.ARTIFACT_FORMAT_ONNX, ".safetensors": pb.ARTIFACT_FORMAT_SAFETENSORS}

VersionSelector = int | str
"""A version by number (int) or by alias (str)."""


def ref(model: str, selector: VersionSelector | None) -> common_pb2.VersionRef:
    """VersionRef from a number or an alias; None: the RPC's default ("latest")."""
    if isinstance(selector, str):
        return version_ref(model, alias=selector)
    return version_ref(model, version=selector)


def create_op(name: str, description: str, tags: Mapping[str, str] | None) -> Op[pb.Model]:
    return Op(S, "CreateModel", pb.CreateModelRequest(name=name, description=description, tags=tags))


def get_op(name: str) -> Op[pb.Model]:
    return Op(S, "GetModel", pb.GetModelRequest(name=name))


def list_op(prefix: str, tags: Mapping[str, str] | None, page_size: int, token: str) -> Op[Any]:
    request = pb.ListModelsRequest(name_prefix=prefix, tags=tags, page_size=page_size, page_token=token)
    return Op(S, "ListModels", request)


def update_op(
    name: str, description: str | None, set_tags: Mapping[str, str] | None, remove_tags: Sequence[str]
) -> Op[pb.Model]:
    request = pb.UpdateModelRequest(name=name, set_tags=set_tags, remove_tags=list(remove_tags))
    if description is not None:
        request.description = description
    return Op(S, "UpdateModel", request)


def delete_op(name: str, force: bool) -> Op[int]:
    request = pb.DeleteModelRequest(name=name, force=force)
    return Op(S, "DeleteModel", request, lambda response: response.deleted_versions)


def upload_header(
    name: str,
    path: Path,
    *,
    format: str | None,
    architecture: architecture_pb2.Architecture | Mapping[str, Any] | None,
    signature: common_pb2.Signature | Mapping[str, Any] | None,
    create: bool,
    alias: str | None,
    description: str,
    params: Mapping[str, str] | None,
    metrics: Mapping[str, float] | None,
    tags: Mapping[str, str] | None,
) -> pb.UploadVersionHeader:
    """The header of an artifact upload; the file is hashed here so the daemon can verify it."""
    if format is None:
        artifact_format = _FORMAT_BY_SUFFIX.get(path.suffix.lower())
        if artifact_format is None:
            raise ValueError(
                f"{path}: cannot tell the format from the suffix; pass format='onnx' or 'safetensors'"
            )
    else:
        artifact_format = pb.ArtifactFormat.Value(f"ARTIFACT_FORMAT_{format.upper()}")
    if artifact_format == pb.ARTIFACT_FORMAT_SAFETENSORS and architecture is None:
        raise ValueError(
            f"{path}: safetensors weights need the architecture that built them (architecture=...)"
        )
    sha256, size = file_digest(path)
    header = pb.UploadVersionHeader(
        model=name,
        create_model=create,
        format=artifact_format,
        description=description,
        params=params,
        metrics=metrics,
        tags=tags,
        sha256=sha256,
        size_bytes=size,
        alias=alias or "",
    )
    if architecture is not None:
        header.architecture.CopyFrom(from_dict(architecture_pb2.Architecture, architecture, "architecture"))
    if signature is not None:
        header.signature.CopyFrom(from_dict(common_pb2.Signature, signature, "signature"))
    return header


def upload_requests(
    header: pb.UploadVersionHeader, path: Path, chunk_size: int, progress: Progress | None
) -> Iterator[pb.UploadVersionRequest]:
    yield pb.UploadVersionRequest(header=header)
    for chunk in file_chunks(path, header.size_bytes, chunk_size, progress):
        yield pb.UploadVersionRequest(chunk=chunk)


def download_request(
    model: str, selector: VersionSelector | None, chunk_size: int
) -> pb.DownloadVersionRequest:
    return pb.DownloadVersionRequest(ref=ref(model, selector), chunk_size=chunk_size)


def version_op(model: str, selector: VersionSelector | None) -> Op[pb.ModelVersion]:
    return Op(S, "GetVersion", pb.GetVersionRequest(ref=ref(model, selector)))


def versions_op(model: str, page_size: int, token: str) -> Op[Any]:
    request = pb.ListVersionsRequest(model=model, page_size=page_size, page_token=token)
    return Op(S, "ListVersions", request)


def delete_version_op(model: str, version: int) -> Op[None]:
    request = pb.DeleteVersionRequest(model=model, version=version)
    return Op(S, "DeleteVersion", request, lambda _: None)


def set_alias_op(model: str, alias: str, version: int, expected_version: int | None) -> Op[pb.Alias]:
    request = pb.SetAliasRequest(model=model, alias=alias, version=version)
    if expected_version is not None:
        request.expected_version = expected_version
    return Op(S, "SetAlias", request)


def alias_op(model: str, alias: str) -> Op[pb.Alias]:
    return Op(S, "GetAlias", pb.GetAliasRequest(model=model, alias=alias))


def aliases_op(model: str) -> Op[list[pb.Alias]]:
    request = pb.ListAliasesRequest(model=model)
    return Op(S, "ListAliases", request, lambda response: list(response.aliases))


def delete_alias_op(model: str, alias: str) -> Op[None]:
    request = pb.DeleteAliasRequest(model=model, alias=alias)
    return Op(S, "DeleteAlias", request, lambda _: None)


def alias_history_op(model: str, alias: str, page_size: int, token: str) -> Op[Any]:
    request = pb.ListAliasHistoryRequest(model=model, alias=alias, page_size=page_size, page_token=token)
    return Op(S, "ListAliasHistory", request)


def lineage_op(model: str, selector: VersionSelector | None) -> Op[pb.GetLineageResponse]:
    return Op(S, "GetLineage", pb.GetLineageRequest(ref=ref(model, selector)))


def compare_op(
    model: str, a: VersionSelector, b: VersionSelector, model_b: str | None
) -> Op[pb.CompareVersionsResponse]:
    request = pb.CompareVersionsRequest(a=ref(model, a), b=ref(model_b or model, b))
    return Op(S, "CompareVersions", request)


def export_onnx_op(
    model: str,
    selector: VersionSelector | None,
    opset: int,
    conv4d: str,
    alias: str | None,
    description: str,
) -> Op[pb.ExportOnnxResponse]:
    request = pb.ExportOnnxRequest(
        source=ref(model, selector), opset=opset, conv4d=conv4d, alias=alias or "", description=description
    )
    return Op(S, "ExportOnnx", request)


def deploy_op(
    model: str,
    routes: Mapping[VersionSelector, int],
    shadow: VersionSelector | None,
    shadow_percent: int,
    comment: str,
) -> Op[pb.Deployment]:
    request = pb.DeployRequest(model=model, comment=comment)
    for target, weight in routes.items():
        route = request.routes.add(weight=weight)
        if isinstance(target, str):
            route.alias = target
        else:
            route.version = target
    if shadow is not None:
        if isinstance(shadow, str):
            request.shadow.alias = shadow
        else:
            request.shadow.version = shadow
        request.shadow.percent = shadow_percent
    return Op(S, "Deploy", request)


def deployment_op(model: str) -> Op[pb.Deployment]:
    return Op(S, "GetDeployment", pb.GetDeploymentRequest(model=model))


def deployments_op(model: str, page_size: int, token: str) -> Op[Any]:
    request = pb.ListDeploymentsRequest(model=model, page_size=page_size, page_token=token)
    return Op(S, "ListDeployments", request)


def rollback_op(model: str) -> Op[pb.Deployment]:
    return Op(S, "Rollback", pb.RollbackRequest(model=model))


class Models:
    """`client.models`: the registry. Versions are chosen by number (int) or alias (str);
    leaving the version out means "latest"."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def create(self, name: str, description: str = "", tags: Mapping[str, str] | None = None) -> pb.Model:
        """Create an empty model (AlreadyExists if the name is taken)."""
        return self._conn.call(create_op(name, description, tags))

    def get(self, name: str) -> pb.Model:
        """A model with its latest version number and aliases."""
        return self._conn.call(get_op(name))

    def list(
        self, prefix: str = "", tags: Mapping[str, str] | None = None, page_size: int = 0
    ) -> Iterator[pb.Model]:
        """Every model (optionally by name prefix and tags), fetched page by page as you iterate."""
        return pages(self._conn, lambda token: list_op(prefix, tags, page_size, token), "models")

    def update(
        self,
        name: str,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        remove_tags: Sequence[str] = (),
    ) -> pb.Model:
        """Change a model's description and tags."""
        return self._conn.call(update_op(name, description, set_tags, remove_tags))

    def delete(self, name: str, force: bool = False) -> int:
        """Delete a model with all its versions; returns how many versions went. `force` also
        removes aliases and deployments that point into it."""
        return self._conn.call(delete_op(name, force))

    def push(
        self,
        name: str,
        path: str | Path,
        *,
        format: str | None = None,
        architecture: architecture_pb2.Architecture | Mapping[str, Any] | None = None,
        signature: common_pb2.Signature | Mapping[str, Any] | None = None,
        create: bool = True,
        alias: str | None = None,
        description: str = "",
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> pb.ModelVersion:
        """Register an artifact file as the model's next version: an ONNX model, or safetensors
        weights with the `architecture` that builds them. Streamed in chunks; `progress(done,
        total)` is called after each. `alias` moves that alias to the new version."""
        path = Path(path)
        header = upload_header(
            name,
            path,
            format=format,
            architecture=architecture,
            signature=signature,
            create=create,
            alias=alias,
            description=description,
            params=params,
            metrics=metrics,
            tags=tags,
        )
        return self._conn.client_stream(
            S,
            "UploadVersion",
            upload_requests(header, path, chunk_size, progress),
            timeout or self._conn.transfer_timeout,
        )

    def download(
        self,
        name: str,
        path: str | Path,
        version: VersionSelector | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> pb.ModelVersion:
        """Write a version's artifact to `path`, verified against its sha256 (DataLoss if not)."""
        responses = self._conn.server_stream(
            S,
            "DownloadVersion",
            download_request(name, version, chunk_size),
            timeout or self._conn.transfer_timeout,
        )
        header = next(responses).header
        sink = DownloadSink(Path(path), header.sha256, header.size_bytes, progress)
        try:
            for response in responses:
                sink.write(response.chunk)
        except BaseException:
            sink.abort()
            raise
        sink.finish()
        return header

    def version(self, name: str, version: VersionSelector | None = None) -> pb.ModelVersion:
        """One version by number or alias; "latest" when `version` is None."""
        return self._conn.call(version_op(name, version))

    def versions(self, name: str, page_size: int = 0) -> Iterator[pb.ModelVersion]:
        """The model's versions, newest first."""
        return pages(self._conn, lambda token: versions_op(name, page_size, token), "versions")

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version (FailedPrecondition while an alias or deployment uses it)."""
        self._conn.call(delete_version_op(name, version))

    def set_alias(self, name: str, alias: str, version: int, expected_version: int | None = None) -> pb.Alias:
        """Point `alias` at `version`; with `expected_version`, only if it points there now
        (0: only if it does not exist yet)."""
        return self._conn.call(set_alias_op(name, alias, version, expected_version))

    def alias(self, name: str, alias: str) -> pb.Alias:
        """Where an alias points."""
        return self._conn.call(alias_op(name, alias))

    def aliases(self, name: str) -> Sequence[pb.Alias]:
        """Every alias of the model."""
        return self._conn.call(aliases_op(name))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        self._conn.call(delete_alias_op(name, alias))

    def alias_history(self, name: str, alias: str = "", page_size: int = 0) -> Iterator[pb.AliasEvent]:
        """Every move of the model's aliases (or one alias), newest first."""
        return pages(self._conn, lambda token: alias_history_op(name, alias, page_size, token), "events")

    def lineage(self, name: str, version: VersionSelector | None = None) -> pb.GetLineageResponse:
        """Where a version came from (run, datasets, parent) and the versions derived from it."""
        return self._conn.call(lineage_op(name, version))

    def compare(
        self, name: str, a: VersionSelector, b: VersionSelector, model_b: str | None = None
    ) -> pb.CompareVersionsResponse:
        """Differences between two versions (of one model, or of `name` and `model_b`)."""
        return self._conn.call(compare_op(name, a, b, model_b))

    def export_onnx(
        self,
        name: str,
        version: VersionSelector | None = None,
        *,
        opset: int = 0,
        conv4d: str = "auto",
        alias: str | None = None,
        description: str = "",
        timeout: float | None = None,
    ) -> pb.ExportOnnxResponse:
        """Export a safetensors version to ONNX as a new version; `alias` moves to the export."""
        return self._conn.call(
            export_onnx_op(name, version, opset, conv4d, alias, description),
            timeout or max(self._conn.timeout, 300.0),
        )

    def deploy(
        self,
        name: str,
        routes: Mapping[VersionSelector, int],
        shadow: VersionSelector | None = None,
        shadow_percent: int = 100,
        comment: str = "",
    ) -> pb.Deployment:
        """Route un-pinned Predict calls: `routes` maps a version or alias to a percent of traffic
        (summing to 100); `shadow` gets a copy of `shadow_percent` of requests."""
        return self._conn.call(deploy_op(name, routes, shadow, shadow_percent, comment))

    def deployment(self, name: str) -> pb.Deployment:
        """The model's current deployment."""
        return self._conn.call(deployment_op(name))

    def deployments(self, name: str, page_size: int = 0) -> Iterator[pb.Deployment]:
        """Deployment history, newest first."""
        return pages(self._conn, lambda token: deployments_op(name, page_size, token), "deployments")

    def rollback(self, name: str) -> pb.Deployment:
        """Restore the deployment before the current one (as a new revision); rolling back the
        first leaves none (the returned revision has `undeployed` set)."""
        return self._conn.call(rollback_op(name))
